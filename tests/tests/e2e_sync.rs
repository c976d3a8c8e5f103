//! Sync through the real binary: `sync run`, `--dry-run`, `sync status`, and a job scheduled by
//! `serve`, against moto, with the bucket read back by boto3.

use bucketgate_tests::gateway::{run, Gateway};
use bucketgate_tests::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use std::time::{Duration, Instant};

fn config(moto: &Moto, interval: &str) -> String {
    format!(
        r#"storage: {{ type: local, root: ./files }}
remotes:
  - name: partner
    endpoint: {endpoint}
    bucket: feed
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
syncs:
  - name: outbound
    path: /out
    remote: partner
    prefix: incoming/
    direction: push
    exclude: ["**/*.tmp"]
{interval}
  - name: collect
    path: /in
    remote: partner
    prefix: reports/
    direction: pull
"#,
        endpoint = moto.endpoint
    )
}

#[test]
fn sync_run_dry_run_and_status() {
    let moto = Moto::start();
    moto.create_bucket("feed");
    moto.put("feed", "reports/r1.csv", b"report one");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files/out/sub")).unwrap();
    std::fs::write(dir.path().join("files/out/a.txt"), b"alpha").unwrap();
    std::fs::write(dir.path().join("files/out/sub/b.txt"), b"beta").unwrap();
    std::fs::write(dir.path().join("files/out/skip.tmp"), b"temp").unwrap();
    std::fs::write(dir.path().join("bucketgate.yaml"), config(&moto, "")).unwrap();

    let (code, out, err) = run(dir.path(), &["sync", "run", "outbound", "--dry-run"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        moto.keys("feed")
            .iter()
            .all(|k| !k.starts_with("incoming/")),
        "dry run wrote"
    );

    let (code, out, err) = run(dir.path(), &["sync", "run", "outbound"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(moto.get("feed", "incoming/a.txt").unwrap(), b"alpha");
    assert_eq!(moto.get("feed", "incoming/sub/b.txt").unwrap(), b"beta");
    assert_eq!(moto.get("feed", "incoming/skip.tmp"), None, "excluded");

    let (code, out, err) = run(dir.path(), &["sync", "run", "collect"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(dir.path().join("files/in/r1.csv")).unwrap(),
        b"report one"
    );

    let (code, out, _) = run(dir.path(), &["sync", "status"], None);
    assert_eq!(code, 0);
    assert!(out.contains("outbound") && out.contains("collect"), "{out}");
    let (code, _, err) = run(dir.path(), &["sync", "run", "nope"], None);
    assert_eq!(code, 2, "{err}");
    assert!(!err.contains(SECRET_KEY) && !out.contains(SECRET_KEY));
}

#[test]
fn serve_runs_interval_jobs() {
    let moto = Moto::start();
    moto.create_bucket("feed");
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("files/out")).unwrap();
    std::fs::write(dir.path().join("files/out/first.txt"), b"1").unwrap();
    let cfg = format!(
        "admin:\n  listen: \"127.0.0.1:0\"\n{}",
        config(&moto, "    interval: 1s")
    );
    std::fs::write(dir.path().join("bucketgate.yaml"), cfg).unwrap();
    let cfgpath = dir.path().join("bucketgate.yaml");
    let _gw = Gateway::spawn(
        dir.path(),
        &["serve", "--config", cfgpath.to_str().unwrap()],
        &["admin"],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while moto.get("feed", "incoming/first.txt").is_none() {
        assert!(Instant::now() < deadline, "the scheduled sync never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A file added later is picked up by a later run.
    std::fs::write(dir.path().join("files/out/second.txt"), b"2").unwrap();
    while moto.get("feed", "incoming/second.txt").is_none() {
        assert!(Instant::now() < deadline, "the second run never came");
        std::thread::sleep(Duration::from_millis(200));
    }
}
