//! More real clients through the binary onto an S3 mount (moto): curl's SFTP, rclone as an
//! SFTP client, WinSCP's upload pattern, and a reload that must not cut a running transfer.

use bucketgate_testkit::gateway_config::{GatewayConfig, User};
use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::clients::{assert_ok, curl, keygen, sftp_batch};
use bucketgate_tests::gateway::{passive_range, require, run, Gateway};
use std::process::Command;
use std::time::Duration;

fn start(moto: &Moto, dir: &std::path::Path, public: &str, extra_users: &str) -> Gateway {
    let (_, hash, _) = run(dir, &["hash-password"], Some("pw-alice\n"));
    let cfg = GatewayConfig::new()
        .sftp()
        .ftp(&passive_range())
        .remote(
            "acme",
            &moto.endpoint,
            "exchange",
            ACCESS_KEY,
            SECRET_KEY,
            "",
        )
        .mount("/acme", "acme", "")
        .user(User::new("alice", &hash).key(public).home("/"))
        .yaml()
        + extra_users;
    Gateway::start(dir, &cfg, &["sftp", "ftp"])
}

#[test]
fn curl_sftp_rclone_sftp_and_winscp_pattern() {
    let moto = Moto::start();
    moto.create_bucket("exchange");
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let gw = start(&moto, dir.path(), &public, "");
    let sftp = gw.addr("sftp");

    // curl speaks SFTP through libssh2.
    std::fs::write(dir.path().join("c.txt"), b"via curl sftp").unwrap();
    let up = curl(&[
        "-u",
        "alice:",
        "--key",
        key.to_str().unwrap(),
        "--pubkey",
        &format!("{}.pub", key.display()),
        "-k",
        "-T",
        dir.path().join("c.txt").to_str().unwrap(),
        &format!("sftp://{sftp}/acme/c.txt"),
    ]);
    assert_ok("curl sftp upload", &up);
    assert_eq!(moto.get("exchange", "c.txt").unwrap(), b"via curl sftp");
    let down = curl(&[
        "-u",
        "alice:",
        "--key",
        key.to_str().unwrap(),
        "--pubkey",
        &format!("{}.pub", key.display()),
        "-k",
        &format!("sftp://{sftp}/acme/c.txt"),
    ]);
    assert_ok("curl sftp download", &down);
    assert_eq!(down.stdout, b"via curl sftp");

    // rclone as an SFTP client: copy a tree up, keep times, list, copy back.
    require("rclone");
    let src = dir.path().join("tree");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("one.txt"), b"one").unwrap();
    std::fs::write(src.join("sub/two.txt"), b"two").unwrap();
    let when = "200101010000.00";
    let st = Command::new("touch")
        .args(["-t", when])
        .arg(src.join("one.txt"))
        .status()
        .unwrap();
    assert!(st.success());
    let remote = format!(
        ":sftp,host=127.0.0.1,port={},user=alice,key_file={},shell_type=none,disable_hashcheck=true:",
        sftp.port(),
        key.display()
    );
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(args)
            .args(["--config", "/dev/null", "--retries", "1"])
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .unwrap();
        assert_ok(&format!("rclone {args:?}"), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    rclone(&["copy", src.to_str().unwrap(), &format!("{remote}acme/tree")]);
    assert_eq!(moto.get("exchange", "tree/one.txt").unwrap(), b"one");
    assert_eq!(moto.get("exchange", "tree/sub/two.txt").unwrap(), b"two");
    let mtime = moto
        .mtime_meta("exchange", "tree/one.txt")
        .expect("mtime kept");
    assert!(mtime.starts_with("978307200"), "mtime metadata {mtime}");
    let listing = rclone(&["lsl", &format!("{remote}acme/tree")]);
    assert!(listing.contains("2001-01-01 00:00:00"), "{listing}");
    assert!(listing.contains("sub/two.txt"), "{listing}");
    let back = dir.path().join("back");
    rclone(&[
        "copy",
        &format!("{remote}acme/tree"),
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(back.join("sub/two.txt")).unwrap(), b"two");

    // WinSCP's default: upload to name.filepart, rename onto the name, then set the time.
    std::fs::write(dir.path().join("w.bin"), vec![7u8; 300_000]).unwrap();
    let out = sftp_batch(
        sftp,
        "alice",
        &key,
        "put -p w.bin /acme/w.bin.filepart\nrename /acme/w.bin.filepart /acme/w.bin\nls -l /acme\n",
        dir.path(),
    );
    assert_ok("winscp pattern", &out);
    assert_eq!(moto.get("exchange", "w.bin").unwrap(), vec![7u8; 300_000]);
    assert_eq!(moto.get("exchange", "w.bin.filepart"), None);
}

/// SIGHUP adds a user who can log in while an earlier session keeps transferring, and that
/// transfer completes intact.
#[test]
fn reload_adds_a_user_while_a_transfer_runs() {
    let moto = Moto::start();
    moto.create_bucket("exchange");
    let dir = tempfile::tempdir().unwrap();
    let (_, public) = keygen(dir.path(), "k");
    let gw = start(&moto, dir.path(), &public, "");
    let ftp = gw.addr("ftp");
    let big: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &big).unwrap();
    // A slow upload (about 6 s) is running when the config is reloaded.
    let path = dir.path().join("big.bin");
    let upload = std::thread::spawn(move || {
        curl(&[
            "--limit-rate",
            "1M",
            "-T",
            path.to_str().unwrap(),
            &format!("ftp://alice:pw-alice@{ftp}/acme/big.bin"),
        ])
    });
    std::thread::sleep(Duration::from_millis(1500));
    let (_, hash, _) = run(dir.path(), &["hash-password"], Some("pw-bob\n"));
    let cfg = std::fs::read_to_string(dir.path().join("bucketgate.yaml")).unwrap()
        + &format!(
            "  - username: bob\n    password_hash: \"{}\"\n    home: /acme\n",
            hash.trim()
        );
    std::fs::write(dir.path().join("bucketgate.yaml"), cfg).unwrap();
    gw.signal("HUP");
    assert!(
        gw.wait_log("reload: config applied", Duration::from_secs(30)),
        "{}",
        gw.log_text()
    );
    let bob = curl(&[&format!("ftp://bob:pw-bob@{ftp}/")]);
    assert_ok("bob lists after the reload", &bob);
    let up = upload.join().unwrap();
    assert_ok("the upload that spanned the reload", &up);
    assert_eq!(moto.get("exchange", "big.bin").unwrap(), big);
}

/// A large download with OpenSSH's pipelining (64 requests of 255 KiB in flight) completes:
/// replies that wait for the client's SSH window must not stop the server reading the
/// client's window adjustments (this hung before requests were read ahead of the handler).
#[test]
fn a_large_sftp_download_does_not_stall() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let (_, hash, _) = run(dir.path(), &["hash-password"], Some("pw\n"));
    let cfg = format!(
        "sftp:\n  listen: \"127.0.0.1:0\"\nstorage: {{ type: local, root: ./files }}\nusers:\n  - username: alice\n    password_hash: \"{}\"\n    public_keys: [\"{public}\"]\n    home: /\n",
        hash.trim()
    );
    std::fs::create_dir_all(dir.path().join("files")).unwrap();
    let data: Vec<u8> = (0..384 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(dir.path().join("files/big.bin"), &data).unwrap();
    let gw = Gateway::start(dir.path(), &cfg, &["sftp"]);
    let out = sftp_batch(
        gw.addr("sftp"),
        "alice",
        &key,
        "get big.bin got.bin\n",
        dir.path(),
    );
    assert_ok("sftp get of 384 MiB", &out);
    assert!(std::fs::read(dir.path().join("got.bin")).unwrap() == data);
}

/// lftp's own SFTP client (over OpenSSH's `ssh -s sftp`): put, get, ls, mv, rm and a mirror
/// onto the mount, each checked in the bucket.
#[test]
fn lftp_as_an_sftp_client() {
    require("lftp");
    let moto = Moto::start();
    moto.create_bucket("exchange");
    let dir = tempfile::tempdir().unwrap();
    let (key, public) = keygen(dir.path(), "k");
    let gw = start(&moto, dir.path(), &public, "");
    let sftp = gw.addr("sftp");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(dir.path().join("big.bin"), &data).unwrap();
    std::fs::create_dir_all(dir.path().join("tree/sub")).unwrap();
    std::fs::write(dir.path().join("tree/sub/t.txt"), b"mirrored").unwrap();
    let ssh = format!(
        "ssh -a -x -i {} -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        key.display()
    );
    let script = format!(
        "set sftp:connect-program \"{ssh}\"; set net:max-retries 1; \
         open -u alice, sftp://127.0.0.1:{port}; \
         mkdir acme/l; put big.bin -o acme/l/big.bin; get acme/l/big.bin -o got.bin; \
         mv acme/l/big.bin acme/l/moved.bin; put big.bin -o acme/l/gone.bin; rm acme/l/gone.bin; \
         mirror -R tree acme/l/tree; cls -1 acme/l; bye",
        port = sftp.port()
    );
    // A locale as CI's shell sets it: ssh sends each variable (Debian's `SendEnv LANG LC_*`)
    // as a request before the subsystem, and more of them than russh's channel queue holds
    // once hung every session.
    let out = Command::new("lftp")
        .args(["-c", &script])
        .env("LANG", "C.UTF-8")
        .env("LC_ALL", "C.UTF-8")
        .env("LC_CTYPE", "C.UTF-8")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_ok("lftp sftp session", &out);
    assert_eq!(moto.get("exchange", "l/moved.bin").unwrap(), data);
    assert_eq!(std::fs::read(dir.path().join("got.bin")).unwrap(), data);
    assert_eq!(
        moto.get("exchange", "l/tree/sub/t.txt").unwrap(),
        b"mirrored"
    );
    let keys = moto.keys("exchange");
    assert!(
        !keys
            .iter()
            .any(|k| k.contains("big.bin") || k.contains("gone.bin")),
        "{keys:?}"
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains("moved.bin") && listing.contains("tree"),
        "{listing}"
    );
}
