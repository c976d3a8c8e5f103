//! Sync through the real binary: `sync run`, `--dry-run`, `sync status`, and a job scheduled by
//! `serve`, against moto, with the bucket read back by boto3.

use bucketgate_testkit::moto::{Moto, ACCESS_KEY, SECRET_KEY};
use bucketgate_tests::gateway::{run, Gateway};
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

/// A TCP relay to `target` that holds every chunk of the server's answers for `delay`: a remote
/// far away, so that a sync run lasts long enough to be caught in the middle.
fn slow_relay(target: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpListener, TcpStream};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Detached: the relay lives as long as the test process.
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let pump = |mut from: TcpStream, mut to: TcpStream, delay: Option<Duration>| {
                move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match from.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if let Some(d) = delay {
                                    std::thread::sleep(d);
                                }
                                if to.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = to.shutdown(Shutdown::Write);
                }
            };
            let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(pump(client, server, None));
            std::thread::spawn(pump(s2, c2, Some(delay)));
        }
    });
    addr
}

// Enough that the run lasts several seconds behind the slow relay once the gateway's probe has
// answered and each copy is one PutObject (200 finished within the 1 s grace period).
const FILES: usize = 400;

/// A push job of `FILES` files to moto behind a slow relay, served by a real gateway.
struct SlowSync {
    moto: Moto,
    dir: tempfile::TempDir,
    gw: Gateway,
}

fn slow_sync_config(relay: std::net::SocketAddr, interval: &str, grace: &str) -> String {
    format!(
        r#"storage: {{ type: local, root: ./files }}
limits: {{ shutdown_grace: {grace} }}
remotes:
  - name: partner
    endpoint: http://{relay}
    bucket: feed
    access_key_id: {ACCESS_KEY}
    secret_access_key: {SECRET_KEY}
syncs:
  - name: outbound
    path: /out
    remote: partner
    prefix: incoming/
    direction: push
    interval: {interval}
"#
    )
}

impl SlowSync {
    /// Starts it and returns once the first run is in progress (the job's lock is held, as
    /// `sync status` says, and some files have reached the bucket), with the relay's address
    /// and the number of files uploaded by then.
    fn start(grace: &str) -> (SlowSync, std::net::SocketAddr, usize) {
        let moto = Moto::start();
        moto.create_bucket("feed");
        let relay = slow_relay(moto.addr, Duration::from_millis(150));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("files/out")).unwrap();
        for i in 0..FILES {
            std::fs::write(
                dir.path().join(format!("files/out/f{i:03}.txt")),
                format!("file {i}"),
            )
            .unwrap();
        }
        // One run only (the interval is long).
        let gw = Gateway::start(dir.path(), &slow_sync_config(relay, "1h", grace), &[]);
        let s = SlowSync { moto, dir, gw };
        let deadline = Instant::now() + Duration::from_secs(120);
        let in_progress = loop {
            assert!(Instant::now() < deadline, "the run never got going");
            if s.status().contains("(running now)") {
                let n = s.files().len();
                if n > 0 {
                    break n;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        (s, relay, in_progress)
    }

    /// The synced files in the bucket, read by boto3 (the job's lease object under
    /// `incoming/.bucketgate-sync/` is not one of them).
    fn files(&self) -> Vec<String> {
        self.moto
            .keys("feed")
            .into_iter()
            .filter(|k| k.starts_with("incoming/f"))
            .collect()
    }

    /// `bucketgate sync status`, from the persisted history.
    fn status(&self) -> String {
        let cfg = self.dir.path().join("bucketgate.yaml");
        let (code, out, err) = run(
            self.dir.path(),
            &["sync", "status", "--config", cfg.to_str().unwrap()],
            None,
        );
        assert_eq!(code, 0, "{err}");
        out
    }

    /// The recorded runs, oldest first: (result, files copied up).
    fn runs(&self) -> Vec<(String, String)> {
        let out = self.status();
        let mut v: Vec<(String, String)> = out
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 4 && (w[1] == "ok" || w[1] == "failed"))
                    .then(|| (w[1].to_string(), w[3].to_string()))
            })
            .collect();
        v.reverse();
        v
    }
}

#[test]
fn sigterm_lets_a_running_sync_finish() {
    // A grace period far longer than the run.
    let (mut s, _, at_signal) = SlowSync::start("600s");
    s.gw.signal("TERM");
    assert!(
        at_signal < FILES,
        "the run had already finished when SIGTERM was sent: the test proves nothing"
    );
    let code = s.gw.wait(Duration::from_secs(600));
    assert_eq!(code, Some(0), "{}", s.gw.log_text());
    // Every file is in the bucket, read back by boto3.
    assert_eq!(s.files().len(), FILES, "{:?}", s.files());
    assert_eq!(
        s.moto.get("feed", "incoming/f123.txt").unwrap(),
        b"file 123"
    );
    // The persisted history records that run as completed, every file copied.
    let out = s.status();
    assert!(
        out.contains("outbound: last run") && out.contains(" OK"),
        "{out}"
    );
    assert_eq!(
        s.runs(),
        [("ok".to_string(), FILES.to_string())],
        "one completed run: {out}"
    );
    assert!(
        s.gw.log_text()
            .contains("runs in progress finished within the grace period"),
        "{}",
        s.gw.log_text()
    );
}

#[test]
fn sighup_lets_a_running_sync_finish_before_the_new_schedule() {
    let (mut s, relay, at_signal) = SlowSync::start("600s");
    std::fs::write(
        s.dir.path().join("bucketgate.yaml"),
        slow_sync_config(relay, "2h", "600s"),
    )
    .unwrap();
    s.gw.signal("HUP");
    assert!(
        at_signal < FILES,
        "the run had already finished when SIGHUP was sent: the test proves nothing"
    );
    // The run in progress is recorded complete, with every file (not cut by the reload)...
    let deadline = Instant::now() + Duration::from_secs(600);
    let wait_runs = |n: usize| {
        while s.runs().len() < n {
            assert!(Instant::now() < deadline, "no run #{n}: {}", s.status());
            std::thread::sleep(Duration::from_millis(200));
        }
        s.runs()
    };
    let runs = wait_runs(1);
    assert_eq!(runs[0], ("ok".to_string(), FILES.to_string()), "{runs:?}");
    // ...and then the new schedule runs (nothing left to copy).
    let runs = wait_runs(2);
    assert_eq!(runs[1], ("ok".to_string(), "0".to_string()), "{runs:?}");
    assert_eq!(s.files().len(), FILES);
    assert!(s.gw.log_text().contains("reload: config applied"));
    s.gw.signal("TERM");
    assert_eq!(s.gw.wait(Duration::from_secs(600)), Some(0));
}

#[test]
fn a_run_longer_than_the_grace_period_is_cut_and_resumes_at_the_next_start() {
    // The run lasts several seconds behind the slow relay; the grace period is one.
    let (mut s, relay, at_signal) = SlowSync::start("1s");
    s.gw.signal("TERM");
    assert!(
        at_signal < FILES,
        "the run had already finished: the test proves nothing"
    );
    assert_eq!(
        s.gw.wait(Duration::from_secs(120)),
        Some(0),
        "{}",
        s.gw.log_text()
    );
    let log = s.gw.log_text();
    assert!(
        log.contains("runs still in progress after the grace period are cut"),
        "{log}"
    );
    assert!(log.contains("sync run cut by shutdown"), "{log}");
    let runs = s.runs();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].0, "failed", "{runs:?}");
    let left = s.files().len();
    assert!(left < FILES, "the cut run finished anyway");
    // The next start picks up where the cut run stopped: every file, no copy twice.
    let cfg = slow_sync_config(relay, "1h", "600s");
    s.gw = Gateway::start(s.dir.path(), &cfg, &[]);
    let deadline = Instant::now() + Duration::from_secs(600);
    while s.runs().len() < 2 {
        assert!(Instant::now() < deadline, "no run after the restart");
        std::thread::sleep(Duration::from_millis(200));
    }
    let runs = s.runs();
    assert_eq!(runs[1].0, "ok", "{runs:?}");
    assert_eq!(s.files().len(), FILES);
    let up: usize = runs[1].1.parse().unwrap();
    assert!(
        up <= FILES - left,
        "copied {up}, {left} were already there: {runs:?}"
    );
    s.gw.signal("TERM");
    assert_eq!(s.gw.wait(Duration::from_secs(600)), Some(0));
}

#[test]
fn mass_deletions_are_refused_until_forced_and_unknown_jobs_exit_2() {
    let moto = Moto::start();
    moto.create_bucket("feed");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("files/out");
    std::fs::create_dir_all(&out).unwrap();
    for i in 0..4 {
        std::fs::write(out.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    let cfg = config(&moto, "    delete: true");
    std::fs::write(dir.path().join("bucketgate.yaml"), cfg).unwrap();
    let (code, o, e) = run(dir.path(), &["sync", "run", "outbound"], None);
    assert_eq!(code, 0, "{o}{e}");
    let synced = |moto: &Moto| {
        moto.keys("feed")
            .into_iter()
            .filter(|k| k.starts_with("incoming/f"))
            .count()
    };
    assert_eq!(synced(&moto), 4);

    // Three of four files gone at the site: more than the default half of the bucket side.
    for i in 1..4 {
        std::fs::remove_file(out.join(format!("f{i}.txt"))).unwrap();
    }
    let (code, o, e) = run(dir.path(), &["sync", "run", "outbound"], None);
    assert_eq!(code, 1, "{o}{e}");
    assert!(
        e.contains("refused to delete 3 of the 4 files") && e.contains("--force"),
        "{o}{e}"
    );
    assert_eq!(synced(&moto), 4, "nothing was deleted");
    let (code, status, _) = run(dir.path(), &["sync", "status", "outbound"], None);
    assert_eq!(code, 0);
    assert!(
        status.contains("FAILED") && status.contains("max_delete"),
        "{status}"
    );

    let (code, o, e) = run(dir.path(), &["sync", "run", "outbound", "--force"], None);
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(synced(&moto), 1);
    assert_eq!(moto.get("feed", "incoming/f0.txt").unwrap(), b"file 0");

    let (code, o, e) = run(dir.path(), &["sync", "status", "NOSUCH"], None);
    assert_eq!(code, 2, "{o}{e}");
    assert!(e.contains("no sync job named \"NOSUCH\""), "{e}");
    // A site folder that is gone fails the run; the bucket keeps what it has.
    std::fs::remove_dir_all(&out).unwrap();
    let (code, o, e) = run(dir.path(), &["sync", "run", "outbound"], None);
    assert_eq!(code, 1, "{o}{e}");
    assert!(e.contains("site folder /out does not exist"), "{e}");
    assert_eq!(synced(&moto), 1);
}

#[test]
fn refused_and_killed_runs_show_in_status() {
    let (mut s, _, _) = SlowSync::start("600s");
    // The scheduled run holds the job: a run from the command line is refused, and recorded.
    let (code, o, e) = run(s.dir.path(), &["sync", "run", "outbound"], None);
    assert_eq!(code, 1, "{o}{e}");
    assert!(e.contains("already running"), "{e}");
    // The gateway dies in the middle of its run.
    s.gw.signal("KILL");
    s.gw.wait(Duration::from_secs(60));
    // The next run (straight to the server this time) finds the killed one and records it.
    let direct = slow_sync_config(s.moto.addr, "1h", "600s");
    std::fs::write(s.dir.path().join("bucketgate.yaml"), direct).unwrap();
    let (code, o, e) = run(s.dir.path(), &["sync", "run", "outbound"], None);
    assert_eq!(code, 0, "{o}{e}");
    assert_eq!(s.files().len(), FILES);
    let out = s.status();
    let results: Vec<&str> = out
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 2 && ["ok", "failed", "refused", "killed"].contains(&w[1])).then(|| w[1])
        })
        .collect();
    // Newest first.
    assert_eq!(results, ["ok", "killed", "refused"], "{out}");
}

/// History files written by an older release (`<state_dir>/sync/JOB.history.jsonl`) are moved
/// into the state store once: `sync status` lists their runs, the file is renamed
/// `.imported`, and a second look lists each run once.
#[test]
fn history_files_of_an_older_release_are_moved_into_the_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // No server is contacted: `sync status` reads the store only.
    let cfg = r#"storage: { type: local, root: ./files }
remotes:
  - { name: partner, endpoint: "http://127.0.0.1:9", bucket: feed, access_key_id: a, secret_access_key: b }
syncs:
  - { name: outbound, path: /out, remote: partner, prefix: incoming/, direction: push }
"#;
    std::fs::write(d.join("bucketgate.yaml"), cfg).unwrap();
    std::fs::create_dir_all(d.join("data/sync")).unwrap();
    let line = |start: &str, result: &str, up: u64| {
        format!(
            r#"{{"job":"outbound","start":"{start}","end":"{start}","result":"{result}","copied_up":{up},"copied_down":0,"deleted":0,"deleted_remote":0,"deleted_site":0,"conflicts":0,"skipped":0,"errors":0,"bytes":42,"elapsed_ms":1000}}"#
        )
    };
    let old = d.join("data/sync/outbound.history.jsonl");
    std::fs::write(
        &old,
        format!(
            "{}\n{}\n",
            line("2026-01-02T03:04:05Z", "ok", 3),
            line("2026-01-03T03:04:05Z", "killed", 0)
        ),
    )
    .unwrap();
    let status = || {
        let (code, out, err) = run(d, &["sync", "status", "outbound"], None);
        assert_eq!(code, 0, "{out}{err}");
        out
    };
    let out = status();
    let runs: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("2026-01-0"))
        .collect();
    assert_eq!(runs.len(), 2, "{out}");
    // Newest first.
    assert!(
        runs[0].contains("2026-01-03T03:04:05Z") && runs[0].contains("killed"),
        "{out}"
    );
    assert!(
        runs[1].contains("2026-01-02T03:04:05Z") && runs[1].contains("ok"),
        "{out}"
    );
    assert!(!old.exists(), "the history file is still there");
    assert!(d.join("data/sync/outbound.history.jsonl.imported").exists());
    assert_eq!(status(), out, "the second look differs");
}
