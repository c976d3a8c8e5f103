//! The command line as users meet it: the quick start, `check`, `hash-password`, signals.

use bucketgate_tests::clients::{assert_ok, curl, keygen, sftp_batch, sftp_batch_password};
use bucketgate_tests::gateway::{run, Gateway};
use std::time::Duration;

fn user_block(name: &str, hash: &str, key: &str, home: &str) -> String {
    format!(
        "  - username: {name}\n    password_hash: \"{hash}\"\n    public_keys: [\"{key}\"]\n    home: {home}\n"
    )
}

fn hash(password: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run(
        dir.path(),
        &["hash-password"],
        Some(&format!("{password}\n")),
    );
    assert_eq!(code, 0, "{err}");
    let h = out.trim().to_string();
    assert!(h.starts_with("$argon2id$"), "{h}");
    assert!(!out.contains(password) && !err.contains(password));
    h
}

#[test]
fn hash_password_reads_stdin() {
    let h = hash("correct horse battery staple");
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(dir.path(), &["hash-password"], Some(""));
    assert_eq!(code, 2, "an empty password is refused: {err}");
    assert_ne!(h, hash("correct horse battery staple"), "salted");
}

#[test]
fn a_named_config_that_does_not_exist_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(dir.path(), &["serve", "--config", "nope.yaml"], None);
    assert_eq!(code, 2);
    assert!(
        err.contains("nope.yaml") && err.contains("does not exist"),
        "{err}"
    );
    let (code, _, _) = run(dir.path(), &["check", "--config", "nope.yaml"], None);
    assert_eq!(code, 2);
}

#[test]
fn check_lists_every_planted_mistake_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    // A mount point that already holds a file: only a listing of the site tree can tell.
    std::fs::create_dir_all(dir.path().join("files/full")).unwrap();
    std::fs::write(dir.path().join("files/full/x.txt"), b"x").unwrap();
    let cfg = r#"sftp:
  listen: "127.0.0.1:0"
  bogus_key: 1
limits:
  login_grace: 30 parsecs
transfers:
  memory_limit: lots
storage:
  type: local
  root: ./files
remotes:
  - name: r1
    endpoint: http://127.0.0.1:9
    bucket: bucket-one
    access_key_id: ${BUCKETGATE_TEST_UNSET_VARIABLE}
    secret_access_key: "s3cr3t-value-never-shown"
mounts:
  - path: /full
    remote: r1
  - path: /m
    remote: nowhere
  - path: /a
    remote: r1
    prefix: shared/
  - path: /b
    remote: r1
    prefix: shared/sub/
users:
  - username: alice
    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    home: /users/alice
  - username: alice
    password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA"
    home: ../outside
syncs:
  - name: s1
    path: /a/inside
    remote: r1
    direction: push
"#;
    std::fs::write(dir.path().join("bad.yaml"), cfg).unwrap();
    let (code, out, err) = run(dir.path(), &["check", "--config", "bad.yaml"], None);
    assert_eq!(code, 2, "stdout:{out}\nstderr:{err}");
    let line_of = |needle: &str| {
        cfg.lines()
            .position(|l| l.contains(needle))
            .map(|i| i + 1)
            .unwrap()
    };
    for (what, line) in [
        ("bogus_key", line_of("bogus_key")),
        ("login_grace", line_of("login_grace")),
        ("memory_limit", line_of("memory_limit")),
        (
            "BUCKETGATE_TEST_UNSET_VARIABLE",
            line_of("BUCKETGATE_TEST_UNSET_VARIABLE"),
        ),
        ("nowhere", line_of("remote: nowhere")),
    ] {
        assert!(
            err.lines().any(|l| l.contains(&format!("(line {line})"))),
            "no error at line {line} for {what}:\n{err}"
        );
    }
    // Duplicate user, home outside the tree, overlapping mounts, sync inside a mount.
    for needle in ["alice", "home", "overlap", "sync"] {
        assert!(
            err.to_lowercase().contains(needle),
            "missing {needle}:\n{err}"
        );
    }
    assert!(
        !err.contains("s3cr3t-value-never-shown"),
        "a secret leaked:\n{err}"
    );
    // The mount point that holds a file is reported once the rest is valid.
    let ok_but_full = r#"storage: { type: local, root: ./files }
remotes:
  - { name: r1, endpoint: "http://127.0.0.1:9", bucket: bucket-one }
mounts:
  - path: /full
    remote: r1
"#;
    std::fs::write(dir.path().join("full.yaml"), ok_but_full).unwrap();
    let (code, _, err) = run(dir.path(), &["check", "--config", "full.yaml"], None);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("mounts[0].path (line 5)") && err.contains("not empty"),
        "{err}"
    );
    let good = r#"storage: { type: local, root: ./files }
remotes:
  - { name: r1, endpoint: "http://127.0.0.1:9", bucket: bucket-one }
mounts:
  - { path: /empty-or-absent, remote: r1 }
"#;
    std::fs::write(dir.path().join("good.yaml"), good).unwrap();
    let (code, out, err) = run(dir.path(), &["check", "--config", "good.yaml"], None);
    assert_eq!(code, 0, "{out}{err}");
}

/// The README's quick start: no config at all serves the embedded default with a demo user.
#[test]
fn quick_start_serves_the_embedded_default() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::spawn(dir.path(), &["serve"], &["sftp", "ftp"], &[]);
    assert_eq!(gw.addr("sftp").to_string(), "127.0.0.1:2222");
    assert_eq!(gw.addr("ftp").to_string(), "127.0.0.1:2121");
    let out = gw.stdout.lock().unwrap().join("\n");
    let password = out
        .lines()
        .find_map(|l| l.split("password: ").nth(1))
        .unwrap_or_else(|| panic!("no demo password on stdout: {out}"))
        .trim()
        .to_string();
    assert!(
        !gw.log_text().contains(&password),
        "the password went through the logger"
    );
    std::fs::write(dir.path().join("hello.txt"), b"hello from ftp").unwrap();
    let up = curl(&[
        "-T",
        dir.path().join("hello.txt").to_str().unwrap(),
        &format!("ftp://demo:{password}@127.0.0.1:2121/"),
    ]);
    assert_ok("curl upload", &up);
    assert_eq!(
        std::fs::read(dir.path().join("data/files/hello.txt")).unwrap(),
        b"hello from ftp"
    );
    let got = sftp_batch_password(
        gw.addr("sftp"),
        "demo",
        &password,
        "get hello.txt back.txt\n",
        dir.path(),
    );
    assert_ok("sftp get", &got);
    assert_eq!(
        std::fs::read(dir.path().join("back.txt")).unwrap(),
        b"hello from ftp"
    );
    drop(gw);
    // A second start keeps the same password and does not print it again.
    let gw = Gateway::spawn(dir.path(), &["serve"], &["sftp", "ftp"], &[]);
    let out = gw.stdout.lock().unwrap().join("\n");
    assert!(!out.contains(&password), "{out}");
    let ls = curl(&[&format!("ftp://demo:{password}@127.0.0.1:2121/")]);
    assert_ok("curl list", &ls);
}

#[test]
fn sigterm_drains_and_sighup_reloads_users() {
    let dir = tempfile::tempdir().unwrap();
    let (key_a, pub_a) = keygen(dir.path(), "key_a");
    let (key_b, pub_b) = keygen(dir.path(), "key_b");
    let h = hash("pw-a");
    let base =
        "sftp:\n  listen: \"127.0.0.1:0\"\nstorage: { type: local, root: ./files }\nusers:\n"
            .to_string();
    let one = base.clone() + &user_block("alice", &h, &pub_a, "/alice");
    let mut gw = Gateway::start(dir.path(), &one, &["sftp"]);
    let sftp = gw.addr("sftp");
    assert_ok(
        "alice",
        &sftp_batch(sftp, "alice", &key_a, "ls\n", dir.path()),
    );
    assert!(!sftp_batch(sftp, "bob", &key_b, "ls\n", dir.path())
        .status
        .success());
    // An invalid config is refused and the old one kept.
    std::fs::write(
        dir.path().join("bucketgate.yaml"),
        "users: [ {username: x} ]\n",
    )
    .unwrap();
    gw.signal("HUP");
    assert!(
        gw.wait_log("reload refused", Duration::from_secs(20)),
        "{}",
        gw.log_text()
    );
    assert_ok(
        "alice after refused reload",
        &sftp_batch(sftp, "alice", &key_a, "ls\n", dir.path()),
    );
    let two = one + &user_block("bob", &h, &pub_b, "/bob");
    std::fs::write(dir.path().join("bucketgate.yaml"), two).unwrap();
    gw.signal("HUP");
    assert!(
        gw.wait_log("reload: config applied", Duration::from_secs(20)),
        "{}",
        gw.log_text()
    );
    std::fs::write(dir.path().join("b.txt"), b"bob's").unwrap();
    assert_ok(
        "bob after reload",
        &sftp_batch(sftp, "bob", &key_b, "put b.txt\n", dir.path()),
    );
    assert_eq!(
        std::fs::read(dir.path().join("files/bob/b.txt")).unwrap(),
        b"bob's"
    );
    gw.signal("TERM");
    assert_eq!(
        gw.wait(Duration::from_secs(40)),
        Some(0),
        "{}",
        gw.log_text()
    );
}
