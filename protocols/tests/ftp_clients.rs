//! The programs people use, driven as subprocesses against the real server: curl, Python's
//! ftplib, lftp and rclone. The site tree is a bucket of an in-process S3 server, and every
//! check of what was stored reads the objects back through a separate S3 client. A missing
//! program fails the test (see `ftp_harness::tool`).

use crate::ftp_harness;

use bucketgate_protocols::ftp::TlsMode;
use ftp_harness::{path_str, run_fails, run_ok, tool, Harness, S3Server, Setup, PASSWORD, USER};
use std::process::Command;

fn userpass() -> String {
    format!("{USER}:{PASSWORD}")
}

/// A server whose site tree is a bucket of moto_server: every client here makes a folder
/// and then enters it or stores into it, which needs folder markers (s3s-fs hides them).
fn s3(setup: Setup) -> Setup {
    Setup {
        s3: Some(S3Server::Moto),
        ..setup
    }
}

fn curl() -> Command {
    let mut c = tool("curl");
    c.args(["-sS", "--fail", "--user"]).arg(userpass());
    c
}

#[tokio::test]
async fn curl_upload_download_resume_append() {
    let h = Harness::start(s3(Setup::default())).await;
    let base = format!("ftp://127.0.0.1:{}", h.addr.port());
    let local = h.dir.path().join("local.bin");
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 256) as u8).collect();
    std::fs::write(&local, &data).unwrap();

    // Upload, into a folder curl creates.
    let mut c = curl();
    c.arg("--ftp-create-dirs")
        .arg("-T")
        .arg(&local)
        .arg(format!("{base}/in/data.bin"));
    run_ok(c).await;
    assert_eq!(h.s3_read("in/data.bin").await, data);

    // Download.
    let out = h.dir.path().join("out.bin");
    let mut c = curl();
    c.arg("-o").arg(&out).arg(format!("{base}/in/data.bin"));
    run_ok(c).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Resumed download: REST + RETR from the local size.
    std::fs::write(&out, &data[..1000]).unwrap();
    let mut c = curl();
    c.args(["-C", "-", "-o"])
        .arg(&out)
        .arg(format!("{base}/in/data.bin"));
    run_ok(c).await;
    assert_eq!(std::fs::read(&out).unwrap(), data);

    // Resumed upload: curl asks SIZE and appends the rest.
    h.s3_write("part.bin", &data[..100_000]).await;
    let mut c = curl();
    c.args(["-C", "-", "-T"])
        .arg(&local)
        .arg(format!("{base}/part.bin"));
    run_ok(c).await;
    assert_eq!(h.s3_read("part.bin").await, data);

    // --append (APPE).
    let tail = h.dir.path().join("tail.txt");
    std::fs::write(&tail, b" and more").unwrap();
    h.s3_write("log.txt", b"first").await;
    let mut c = curl();
    c.arg("--append")
        .arg("-T")
        .arg(&tail)
        .arg(format!("{base}/log.txt"));
    run_ok(c).await;
    assert_eq!(h.s3_read("log.txt").await, b"first and more");

    // Listing, and a missing file is an error.
    let mut c = curl();
    c.arg(format!("{base}/"));
    let listing = run_ok(c).await;
    assert!(
        listing.contains("log.txt") && listing.contains(" in"),
        "{listing}"
    );
    let mut c = curl();
    c.arg(format!("{base}/nope.txt"));
    run_fails(c).await;

    // Wrong password.
    let mut c = tool("curl");
    c.args(["-sS", "--fail", "--user", "alice:wrong"])
        .arg(format!("{base}/"));
    run_fails(c).await;
}

#[tokio::test]
async fn curl_explicit_ftps() {
    // No folders involved, so the in-process s3s-fs will do.
    let h = Harness::start(Setup {
        tls: Some(TlsMode::Required),
        s3: Some(S3Server::S3sFs),
        ..Setup::default()
    })
    .await;
    let base = format!("ftp://127.0.0.1:{}", h.addr.port());
    let local = h.dir.path().join("s.txt");
    std::fs::write(&local, b"over tls").unwrap();
    let mut c = curl();
    c.args(["--ssl-reqd", "-k", "-T"])
        .arg(&local)
        .arg(format!("{base}/s.txt"));
    run_ok(c).await;
    assert_eq!(h.s3_read("s.txt").await, b"over tls");
    let mut c = curl();
    c.args(["--ssl-reqd", "-k"]).arg(format!("{base}/s.txt"));
    assert_eq!(run_ok(c).await, "over tls");
    // Without TLS the server refuses the login.
    let mut c = curl();
    c.arg(format!("{base}/s.txt"));
    run_fails(c).await;
}

const FTPLIB_SCRIPT: &str = r#"
import ftplib, io, os, sys
host, port = "127.0.0.1", int(os.environ["FTP_PORT"])
tls = os.environ.get("FTP_TLS") == "1"
active = os.environ.get("FTP_ACTIVE") == "1"
if tls:
    import ssl
    ctx = ssl.create_default_context(cafile=os.environ["FTP_CA"])
    ctx.check_hostname = False
    f = ftplib.FTP_TLS(context=ctx)
else:
    f = ftplib.FTP()
f.connect(host, port, timeout=20)
f.login(os.environ["FTP_USER"], os.environ["FTP_PASS"])
if tls:
    f.prot_p()
f.set_pasv(not active)
f.mkd("py")
f.cwd("py")
f.storbinary("STOR a.txt", io.BytesIO(b"from python"))
buf = io.BytesIO()
f.retrbinary("RETR a.txt", buf.write)
assert buf.getvalue() == b"from python", buf.getvalue()
assert f.size("a.txt") == 11
f.rename("a.txt", "b.txt")
names = f.nlst()
assert names == ["b.txt"], names
facts = list(f.mlsd())
assert any(n == "b.txt" and fa["type"] == "file" for n, fa in facts), facts
lines = []
f.retrlines("LIST", lines.append)
assert any(l.startswith("-") and l.endswith(" b.txt") for l in lines), lines
f.storbinary("APPE b.txt", io.BytesIO(b"!"))
try:
    f.retrbinary("RETR missing.txt", buf.write)
    sys.exit("RETR of a missing file succeeded")
except ftplib.error_perm as e:
    assert str(e).startswith("550"), e
f.cwd("..")
print(f.pwd())
f.quit()
"#;

async fn ftplib(h: &Harness, tls: bool, active: bool) {
    let mut py = tool("python3");
    py.arg("-c")
        .arg(FTPLIB_SCRIPT)
        .env("FTP_PORT", h.addr.port().to_string())
        .env("FTP_USER", USER)
        .env("FTP_PASS", PASSWORD)
        .env("FTP_TLS", if tls { "1" } else { "0" })
        .env("FTP_ACTIVE", if active { "1" } else { "0" });
    if let Some(ca) = &h.cert_pem {
        py.env("FTP_CA", ca);
    }
    assert_eq!(run_ok(py).await.trim(), "/");
    assert_eq!(h.s3_read("py/b.txt").await, b"from python!");
}

#[tokio::test]
async fn python_ftplib_passive() {
    let h = Harness::start(s3(Setup::default())).await;
    ftplib(&h, false, false).await;
}

#[tokio::test]
async fn python_ftplib_tls() {
    let h = Harness::start(s3(Setup {
        tls: Some(TlsMode::Explicit),
        ..Setup::default()
    }))
    .await;
    ftplib(&h, true, false).await;
}

#[tokio::test]
async fn python_ftplib_active() {
    let h = Harness::start(s3(Setup {
        active_mode: true,
        ..Setup::default()
    }))
    .await;
    ftplib(&h, false, true).await;
}

fn lftp(h: &Harness, script: &str) -> Command {
    let mut c = tool("lftp");
    // No ~/.lftprc or bookmarks: the test decides everything.
    c.env("HOME", h.dir.path()).arg("-c").arg(format!(
        "set net:max-retries 1; set net:timeout 20; set cmd:fail-exit yes; \
             open -u {USER},'{PASSWORD}' -p {} 127.0.0.1; {script}",
        h.addr.port()
    ));
    c
}

async fn lftp_session(h: &Harness, tls_settings: &str) {
    let work = h.dir.path().join("lftp");
    std::fs::create_dir_all(work.join("tree/sub")).unwrap();
    std::fs::write(work.join("tree/one.txt"), b"one").unwrap();
    std::fs::write(work.join("tree/sub/two.txt"), b"two").unwrap();
    std::fs::write(work.join("single.txt"), b"single").unwrap();
    let w = path_str(&work);
    let script = format!(
        "{tls_settings} \
         put {w}/single.txt -o single.txt; \
         get single.txt -o {w}/back.txt; \
         mirror -R {w}/tree tree; \
         mv single.txt renamed.txt; \
         rm tree/one.txt; \
         mirror tree {w}/mirrored; \
         cls -1"
    );
    let out = run_ok(lftp(h, &script)).await;
    assert!(out.contains("renamed.txt"), "{out}");
    assert_eq!(std::fs::read(work.join("back.txt")).unwrap(), b"single");
    assert_eq!(h.s3_read("renamed.txt").await, b"single");
    assert!(!h.s3_exists("single.txt").await);
    assert!(!h.s3_exists("tree/one.txt").await);
    assert_eq!(h.s3_read("tree/sub/two.txt").await, b"two");
    assert_eq!(
        std::fs::read(work.join("mirrored/sub/two.txt")).unwrap(),
        b"two"
    );
}

#[tokio::test]
async fn lftp_plain() {
    let h = Harness::start(s3(Setup::default())).await;
    lftp_session(&h, "set ftp:ssl-allow no;").await;
}

#[tokio::test]
async fn lftp_explicit_ftps() {
    let h = Harness::start(s3(Setup {
        tls: Some(TlsMode::Required),
        ..Setup::default()
    }))
    .await;
    let ca = path_str(h.cert_pem.as_ref().unwrap()).to_string();
    lftp_session(
        &h,
        &format!(
            "set ftp:ssl-force true; set ftp:ssl-protect-data true; \
             set ssl:ca-file {ca}; set ssl:check-hostname no;"
        ),
    )
    .await;
}

#[tokio::test]
async fn rclone_copy_and_ls() {
    let h = Harness::start(s3(Setup::default())).await;
    let mut obscure = tool("rclone");
    obscure.args(["obscure", PASSWORD]);
    let pass = run_ok(obscure).await.trim().to_string();
    let src = h.dir.path().join("rsrc");
    std::fs::create_dir_all(src.join("deep")).unwrap();
    std::fs::write(src.join("r1.txt"), b"rclone one").unwrap();
    std::fs::write(src.join("deep/r2.txt"), vec![7u8; 100_000]).unwrap();
    let rclone = |args: &[&str]| {
        let mut c = tool("rclone");
        c.env("HOME", h.dir.path())
            .env("RCLONE_CONFIG", h.dir.path().join("rclone.conf"))
            .args(args)
            .args(["--ftp-host", "127.0.0.1", "--ftp-user", USER])
            .args(["--ftp-port", &h.addr.port().to_string()])
            .args([
                "--ftp-pass",
                &pass,
                "--retries",
                "1",
                "--low-level-retries",
                "1",
            ]);
        c
    };
    run_ok(rclone(&["copy", path_str(&src), ":ftp:backup"])).await;
    assert_eq!(h.s3_read("backup/r1.txt").await, b"rclone one");
    assert_eq!(h.s3_read("backup/deep/r2.txt").await, vec![7u8; 100_000]);
    let ls = run_ok(rclone(&["ls", ":ftp:backup"])).await;
    assert!(ls.contains("10 r1.txt"), "{ls}");
    assert!(ls.contains("100000 deep/r2.txt"), "{ls}");
    let dst = h.dir.path().join("rdst");
    run_ok(rclone(&["copy", ":ftp:backup", path_str(&dst)])).await;
    assert_eq!(std::fs::read(dst.join("r1.txt")).unwrap(), b"rclone one");
    // A second copy finds nothing to do (sizes and times match).
    run_ok(rclone(&["check", path_str(&src), ":ftp:backup"])).await;
}
