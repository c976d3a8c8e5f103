//! The client libraries that legacy applications embed, driven as subprocesses against the real
//! binary with an S3 mount (moto): paramiko, JSch 0.1.5x (with and without
//! `sftp.legacy_algorithms`) and Apache Commons Net (FTP and explicit FTPS). What each client
//! did is checked in the bucket through boto3, never through the gateway.

use crate::support;

use bucketgate_testkit::gateway_config::{GatewayConfig, User};
use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::clients::{assert_ok, java_program, keygen, paramiko};
use bucketgate_tests::gateway::{passive_range, require, Gateway};
use std::path::Path;
use std::process::{Command, Output};
use support::{HASH, PASSWORD};

const JSCH_JAR: &str = "/usr/share/java/jsch.jar";
const COMMONS_NET_JAR: &str = "/usr/share/java/commons-net.jar";

/// A gateway whose `/acme` is the moto bucket `exchange` (client times kept), with `servers`
/// (the `sftp:`/`ftp:` sections) and alice, who may only list and download in `/acme/ro`.
fn start(moto: &Moto, dir: &Path, servers: &str, public_key: &str) -> Gateway {
    let mut alice = User::new("alice", HASH)
        .home("/")
        .allow("/", "\"*\"")
        .allow("/acme/ro", "list, download");
    if !public_key.is_empty() {
        alice = alice.key(public_key.trim_matches('"'));
    }
    let cfg = GatewayConfig::new()
        .section(servers)
        .section("state_dir: ./data")
        .remote(
            "acme",
            &moto.endpoint,
            "exchange",
            ACCESS_KEY,
            SECRET_KEY,
            "preserve_mtime: true",
        )
        .mount("/acme", "acme", "")
        .user(alice)
        .yaml();
    let expect: Vec<&'static str> = ["sftp", "ftp"]
        .into_iter()
        .filter(|p| servers.lines().any(|l| l == format!("{p}:")))
        .collect();
    Gateway::start(dir, &cfg, &expect)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts that the client printed `line` as a whole line.
fn has_line(what: &str, out: &Output, line: &str) {
    assert!(
        stdout(out).lines().any(|l| l == line),
        "{what}: no line {line:?} in\n{}\nstderr:\n{}",
        stdout(out),
        stderr(out)
    );
}

/// Bytes that differ at every offset, so a misplaced range cannot compare equal.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// paramiko, the SFTP library of Python automation: password and ed25519 key logins, a
/// multipart upload, download, listings, stat, times kept in `mtime` metadata, rename, remove,
/// folders, a read-only folder and a wrong password refused.
#[test]
fn paramiko_sftp_on_an_s3_mount() {
    let moto = Moto::start();
    moto.create_bucket("exchange");
    moto.put("exchange", "ro/seed.txt", b"seed");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, public) = keygen(d, "k");
    let gw = start(
        &moto,
        d,
        "sftp:\n  listen: \"127.0.0.1:0\"",
        &format!("\"{public}\""),
    );
    let sftp = gw.addr("sftp");
    // 8 MiB + 3 bytes: more than one part of the default 8 MiB part size.
    let big = pattern(8 * 1024 * 1024 + 3, 1);
    std::fs::write(d.join("big.bin"), &big).unwrap();
    std::fs::write(d.join("small.txt"), b"small").unwrap();
    let password = format!("password:{PASSWORD}");
    let by_key = format!("key:{}", key.display());

    let out = paramiko(
        sftp,
        "alice",
        &password,
        "mkdir /acme/in\n\
         put big.bin /acme/in/big.bin\n\
         put small.txt /acme/in/small.txt\n\
         utime /acme/in/small.txt 978307200\n\
         stat /acme/in/small.txt\n\
         ls /acme/in\n\
         get /acme/in/big.bin got.bin\n\
         !put small.txt /acme/ro/x.txt\n\
         ls /acme/ro\n",
        d,
    );
    assert_ok("paramiko with a password", &out);
    has_line("paramiko", &out, "connected key=ssh-ed25519");
    has_line("stat after utime", &out, "stat 5 file 978307200");
    assert!(
        stdout(&out).contains(&format!("entry big.bin {} file ", big.len())),
        "{}",
        stdout(&out)
    );
    has_line("listdir_attr", &out, "entry small.txt 5 file 978307200");
    has_line(
        "put into the read-only folder",
        &out,
        "refused put PermissionError 13",
    );
    assert!(
        stdout(&out).contains("entry seed.txt 4 file "),
        "{}",
        stdout(&out)
    );
    assert!(std::fs::read(d.join("got.bin")).unwrap() == big, "get");
    assert!(moto.get("exchange", "in/big.bin").unwrap() == big);
    let etag = moto
        .py("print(s3.head_object(Bucket='exchange', Key='in/big.bin')['ETag'])")
        .unwrap();
    assert!(
        etag.trim().trim_matches('"').ends_with("-2"),
        "a multipart upload of two parts, ETag {etag}"
    );
    assert_eq!(moto.get("exchange", "in/small.txt").unwrap(), b"small");
    let mtime = moto.mtime_meta("exchange", "in/small.txt").expect("mtime");
    assert!(mtime.starts_with("978307200"), "mtime metadata {mtime}");
    assert_eq!(moto.get("exchange", "ro/x.txt"), None);
    assert!(moto.keys("exchange").contains(&"in/".to_string()));

    let out = paramiko(
        sftp,
        "alice",
        &by_key,
        "rename /acme/in/big.bin /acme/in/moved.bin\n\
         stat /acme/in/moved.bin\n\
         remove /acme/in/small.txt\n\
         ls /acme/in\n",
        d,
    );
    assert_ok("paramiko with an ed25519 key", &out);
    assert!(
        stdout(&out).contains(&format!("stat {} file ", big.len())),
        "{}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains("entry small.txt"),
        "{}",
        stdout(&out)
    );
    assert_eq!(moto.get("exchange", "in/big.bin"), None);
    assert!(moto.get("exchange", "in/moved.bin").unwrap() == big);
    assert_eq!(moto.get("exchange", "in/small.txt"), None);

    let out = paramiko(
        sftp,
        "alice",
        &by_key,
        "remove /acme/in/moved.bin\nrmdir /acme/in\nls /acme\n",
        d,
    );
    assert_ok("paramiko remove and rmdir", &out);
    assert!(!stdout(&out).contains("entry in "), "{}", stdout(&out));
    assert_eq!(moto.keys("exchange"), vec!["ro/seed.txt".to_string()]);

    let out = paramiko(sftp, "alice", "password:not-her-password", "ls /\n", d);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("AuthenticationException"),
        "{}",
        stdout(&out)
    );
}

/// Issue 13 items 1-3 with a real client: paramiko's `r+` writes into an existing object in
/// place (the rest of the object stays, it is never cut to what was written), `w+` creates a
/// file, and a file being written is seen by its own session before CLOSE.
#[test]
fn paramiko_in_place_writes_and_read_write_opens_on_an_s3_mount() {
    let moto = Moto::start();
    moto.create_bucket("exchange");
    // 6 MiB + 5 bytes: the untouched tail is larger than one part.
    let base = pattern(6 * 1024 * 1024 + 5, 3);
    moto.put("exchange", "small.txt", b"0123456789");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("base.bin"), &base).unwrap();
    let (_, public) = keygen(d, "k");
    let gw = start(
        &moto,
        d,
        "sftp:\n  listen: \"127.0.0.1:0\"",
        &format!("\"{public}\""),
    );
    let out = paramiko(
        gw.addr("sftp"),
        "alice",
        &format!("password:{PASSWORD}"),
        "put base.bin /acme/doc.bin\n\
         patch /acme/doc.bin 0 HEADER\n\
         patch /acme/doc.bin 5000000 MIDDLE\n\
         patch /acme/small.txt 8 ABCD\n\
         wplus /acme/new.txt hello- world\n\
         statopen /acme/open.txt twelve-bytes\n\
         put base.bin /acme/grow.bin\n\
         truncate /acme/grow.bin 7000000\n\
         put base.bin /acme/cut.bin\n\
         truncate /acme/cut.bin 5000003\n\
         put base.bin /acme/cutwrite.bin\n\
         ftruncate /acme/cutwrite.bin 10 20 TAIL\n\
         !truncate /acme 5\n",
        d,
    );
    assert_ok("paramiko in-place writes", &out);
    has_line("lstat before close", &out, "statopen 12 file");
    let mut want = base.clone();
    want[..6].copy_from_slice(b"HEADER");
    want[5_000_000..5_000_006].copy_from_slice(b"MIDDLE");
    let got = moto.get("exchange", "doc.bin").unwrap();
    assert_eq!(got.len(), want.len(), "an in-place write kept the size");
    assert!(got == want, "an in-place write changed only its bytes");
    assert_eq!(
        moto.get("exchange", "small.txt").unwrap(),
        b"01234567ABCD",
        "a write past the end extends the file"
    );
    assert_eq!(moto.get("exchange", "new.txt").unwrap(), b"hello-world");
    assert_eq!(moto.get("exchange", "open.txt").unwrap(), b"twelve-bytes");
    // A new length, as truncate(2): zeros past the old end; the bytes past a shorter one gone;
    // on a handle, laid under its writes (a gap of zeros). Before, every size but the
    // current one and 0 was refused.
    let mut grown = base.clone();
    grown.resize(7_000_000, 0);
    assert!(
        moto.get("exchange", "grow.bin").unwrap() == grown,
        "grown with zeros"
    );
    assert!(
        moto.get("exchange", "cut.bin").unwrap() == base[..5_000_003],
        "cut to its length"
    );
    let mut cw = base[..10].to_vec();
    cw.resize(20, 0);
    cw.extend_from_slice(b"TAIL");
    assert_eq!(moto.get("exchange", "cutwrite.bin").unwrap(), cw);
    assert!(
        stdout(&out).contains("refused truncate "),
        "a folder has no size: {}",
        stdout(&out)
    );
}

/// An SSH host key made with ssh-keygen (`rsa`, `ecdsa`), in OpenSSH format.
fn host_key(dir: &Path, kind: &str) -> String {
    require("ssh-keygen");
    let path = dir.join(format!("host_{kind}_key"));
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", kind, "-N", "", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    path.display().to_string()
}

/// JSch 0.1.5x (Debian's libjsch-java), the SFTP library of older Java applications: it knows
/// no ed25519, rsa-sha2 or curve25519. With `legacy_algorithms` and an RSA host key it logs in
/// with a password and uploads, lists, downloads, renames and removes; without them an
/// RSA-only server has no host key algorithm in common with it and it says so; an ecdsa host
/// key lets it connect without the SHA-1 algorithms.
#[test]
fn jsch_needs_legacy_algorithms_or_an_ecdsa_host_key() {
    let jsch = java_program("JschClient", &[JSCH_JAR]);
    let moto = Moto::start();
    moto.create_bucket("exchange");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rsa = host_key(d, "rsa");
    let data = pattern(300_000, 2);
    std::fs::write(d.join("data.bin"), &data).unwrap();

    // legacy_algorithms and an RSA host key.
    let legacy_dir = d.join("legacy");
    std::fs::create_dir_all(&legacy_dir).unwrap();
    let gw = start(
        &moto,
        &legacy_dir,
        &format!(
            "sftp:\n  listen: \"127.0.0.1:0\"\n  host_keys: [\"{rsa}\"]\n  legacy_algorithms: true"
        ),
        "",
    );
    let addr = gw.addr("sftp");
    let args = ["127.0.0.1", &addr.port().to_string(), "alice", PASSWORD].map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = jsch.run(
        &args,
        "mkdir /acme/j\nput data.bin /acme/j/data.bin\nls /acme/j\nget /acme/j/data.bin back.bin\n",
        d,
    );
    assert_ok("JSch with legacy algorithms", &out);
    // What it negotiates: ssh-rsa signatures, diffie-hellman-group14-sha1 (the fixed-group
    // exchange, KEXDH_INIT; the only one both sides know), hmac-sha1 (JSch's preference).
    assert!(
        stdout(&out).starts_with("connected hostkey=ssh-rsa version=0.1.5"),
        "{}",
        stdout(&out)
    );
    let log = stderr(&out);
    assert!(log.contains("SSH_MSG_KEXDH_INIT sent"), "{log}");
    assert!(
        log.contains("kex: client->server aes128-ctr hmac-sha1 none"),
        "{log}"
    );
    has_line(
        "JSch ls",
        &out,
        &format!("entry data.bin {} file", data.len()),
    );
    assert!(moto.get("exchange", "j/data.bin").unwrap() == data);
    assert!(std::fs::read(d.join("back.bin")).unwrap() == data);
    let out = jsch.run(&args, "rename /acme/j/data.bin /acme/j/moved.bin\n", d);
    assert_ok("JSch rename", &out);
    assert_eq!(moto.get("exchange", "j/data.bin"), None);
    assert!(moto.get("exchange", "j/moved.bin").unwrap() == data);
    let out = jsch.run(&args, "rm /acme/j/moved.bin\nls /acme/j\n", d);
    assert_ok("JSch rm", &out);
    assert!(
        !stdout(&out).contains("entry moved.bin"),
        "{}",
        stdout(&out)
    );
    assert_eq!(moto.get("exchange", "j/moved.bin"), None);
    drop(gw);

    // The same RSA host key without legacy_algorithms: only rsa-sha2-* signatures are offered.
    let modern_dir = d.join("modern");
    std::fs::create_dir_all(&modern_dir).unwrap();
    let gw = start(
        &moto,
        &modern_dir,
        &format!("sftp:\n  listen: \"127.0.0.1:0\"\n  host_keys: [\"{rsa}\"]"),
        "",
    );
    let port = gw.addr("sftp").port().to_string();
    let out = jsch.run(&["127.0.0.1", &port, "alice", PASSWORD], "ls /\n", d);
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("JSchException: Algorithm negotiation fail"),
        "{}",
        stdout(&out)
    );
    assert!(
        stderr(&out).contains("kex: server: rsa-sha2-512,rsa-sha2-256\n"),
        "{}",
        stderr(&out)
    );
    drop(gw);

    // Without legacy_algorithms but with an ecdsa host key next to the ed25519 one, JSch
    // negotiates ecdsa-sha2-nistp256, diffie-hellman-group-exchange-sha256 and hmac-sha2-256.
    let ecdsa = host_key(d, "ecdsa");
    let ecdsa_dir = d.join("ecdsa");
    std::fs::create_dir_all(&ecdsa_dir).unwrap();
    let gw = start(
        &moto,
        &ecdsa_dir,
        &format!(
            "sftp:\n  listen: \"127.0.0.1:0\"\n  host_keys: [\"./data/ssh_host_ed25519_key\", \"{ecdsa}\"]"
        ),
        "",
    );
    let port = gw.addr("sftp").port().to_string();
    let out = jsch.run(
        &["127.0.0.1", &port, "alice", PASSWORD],
        "put data.bin /acme/e.bin\n",
        d,
    );
    assert_ok("JSch with an ecdsa host key", &out);
    assert!(
        stdout(&out).starts_with("connected hostkey=ecdsa-sha2-nistp256 "),
        "{}",
        stdout(&out)
    );
    let log = stderr(&out);
    assert!(log.contains("SSH_MSG_KEX_DH_GEX_REQUEST"), "{log}");
    assert!(
        log.contains("kex: client->server aes128-ctr hmac-sha2-256 none"),
        "{log}"
    );
    assert!(moto.get("exchange", "e.bin").unwrap() == data);
}

/// Today's date in UTC (`YYYY-MM-DD`).
fn utc_day() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Apache Commons Net, the FTP library of Java applications, over plain FTP and explicit FTPS
/// (AUTH TLS, PROT P) in passive mode: store, retrieve, a restarted retrieve, append, the
/// default Unix LIST parser's names, sizes, types and dates, MFMT, rename, delete, folders,
/// and a wrong password refused.
#[test]
fn commons_net_ftp_and_explicit_ftps() {
    let client = java_program("CommonsNetClient", &[COMMONS_NET_JAR]);
    let moto = Moto::start();
    moto.create_bucket("exchange");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (cert, key) = bucketgate_tests::clients::self_signed_certificate(d);
    let gw = start(
        &moto,
        d,
        &format!(
            "ftp:\n  listen: \"127.0.0.1:0\"\n  passive_ports: \"{}\"\n  tls: {{ mode: explicit, cert: \"{cert}\", key: \"{key}\" }}",
            passive_range()
        ),
        "",
    );
    let port = gw.addr("ftp").port().to_string();
    let data = pattern(300_000, 3);
    std::fs::write(d.join("data.bin"), &data).unwrap();
    std::fs::write(d.join("more.txt"), b"more").unwrap();

    for mode in ["plain", "ftps"] {
        let run = |commands: &str| {
            let out = client.run(&[mode, "127.0.0.1", &port, "alice", PASSWORD], commands, d);
            assert_ok(&format!("Commons Net {mode}"), &out);
            has_line(
                "Commons Net",
                &out,
                &format!("connected secure={}", mode == "ftps"),
            );
            out
        };
        let before = utc_day();
        let out = run(&format!(
            "mkdir /acme/{mode}\n\
             put data.bin /acme/{mode}/data.bin\n\
             ls /acme/{mode}\n\
             ls /acme\n\
             get /acme/{mode}/data.bin got-{mode}.bin\n\
             getfrom 1000 /acme/{mode}/data.bin tail-{mode}.bin\n"
        ));
        let after = utc_day();
        assert!(moto.get("exchange", &format!("{mode}/data.bin")).unwrap() == data);
        assert!(std::fs::read(d.join(format!("got-{mode}.bin"))).unwrap() == data);
        assert!(std::fs::read(d.join(format!("tail-{mode}.bin"))).unwrap() == data[1000..]);
        let entry = format!("entry data.bin {} file ", data.len());
        let line = stdout(&out)
            .lines()
            .find(|l| l.starts_with(&entry))
            .unwrap_or_else(|| panic!("no {entry:?} in\n{}", stdout(&out)))
            .to_string();
        // Dated the day of the upload in UTC, as the JVM (user.timezone=UTC) parsed it.
        assert!(
            line.ends_with(&before) || line.ends_with(&after),
            "{line} is not dated {before}"
        );
        assert!(
            stdout(&out)
                .lines()
                .any(|l| l.starts_with(&format!("entry {mode} ")) && l.contains(" dir ")),
            "{mode} listed as a folder:\n{}",
            stdout(&out)
        );

        let out = run(&format!(
            "append more.txt /acme/{mode}/data.bin\n\
             mfmt 20010101000000 /acme/{mode}/data.bin\n\
             ls /acme/{mode}\n\
             rename /acme/{mode}/data.bin /acme/{mode}/renamed.bin\n"
        ));
        has_line(
            "LIST after APPE and MFMT",
            &out,
            &format!("entry data.bin {} file 2001-01-01", data.len() + 4),
        );
        let mut appended = data.clone();
        appended.extend_from_slice(b"more");
        assert_eq!(moto.get("exchange", &format!("{mode}/data.bin")), None);
        assert!(
            moto.get("exchange", &format!("{mode}/renamed.bin"))
                .unwrap()
                == appended
        );

        run(&format!(
            "delete /acme/{mode}/renamed.bin\nrmdir /acme/{mode}\n"
        ));
        assert!(
            moto.keys("exchange").iter().all(|k| !k.starts_with(mode)),
            "{:?}",
            moto.keys("exchange")
        );
    }

    let out = client.run(
        &["plain", "127.0.0.1", &port, "alice", "not-her-password"],
        "ls /\n",
        d,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("error: login: 530"),
        "{}",
        stdout(&out)
    );
}
