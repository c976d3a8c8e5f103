//! Two instances racing for one sync job on one PostgreSQL state store (issue 19 item 5): the
//! job's lease is a row in the store, not an object in the bucket, so it holds on every S3
//! server (s3s-fs and moto here; Garage and Ceph RGW through `BUCKETGATE_TEST_S3_*` in
//! scripts/test.sh), whatever the server does with conditional writes.
//!
//! Instance A (`bucketgate sync run`, its own `state_dir`) reaches the server through a proxy
//! that holds its uploads, so it holds the lease for as long as the test wants; instance B (its
//! own `state_dir`, straight to the server) is refused while A lives, and still while A's lease
//! runs after A is killed; once the lease has lapsed B takes the job and copies everything.
//! Both instances list every run in `sync status`.

use bucketgate_testkit::http_proxy::{Action, HttpProxy, Seen};
use bucketgate_testkit::postgres::Postgres;
use bucketgate_testkit::s3::{list_all, names, servers, Server};
use bucketgate_tests::gateway::{run, Gateway};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::block_in_place;

const FILES: usize = 12;

/// An instance's config: the shared store, its own `state_dir`, job `job` pushing `/out` to
/// `race/` under the server's test prefix, through `endpoint`.
fn instance(dir: &Path, name: &str, job: &str, srv: &Server, endpoint: &str, url: &str) -> String {
    let region = srv
        .region
        .as_deref()
        .map(|r| format!(", region: \"{r}\""))
        .unwrap_or_default();
    let file = format!("{name}.yaml");
    std::fs::write(
        dir.join(&file),
        format!(
            r#"storage: {{ type: local, root: ./files }}
state_dir: ./state-{name}
state:
  url: "{url}"
remotes:
  - {{ name: partner, endpoint: "{endpoint}", bucket: "{bucket}", access_key_id: "{access}", secret_access_key: "{secret}"{region} }}
syncs:
  - name: {job}
    path: /out
    remote: partner
    prefix: {prefix}race/
    direction: push
"#,
            bucket = srv.bucket,
            access = srv.access,
            secret = srv.secret,
            prefix = srv.prefix,
        ),
    )
    .unwrap();
    file
}

/// The job's files in the bucket under its prefix (not a bucket lease's folder, which an
/// instance without a shared store writes there).
async fn copied(srv: &Server) -> Vec<String> {
    names(&list_all(&srv.backend(), &format!("{}race", srv.prefix)).await)
        .into_iter()
        .filter(|n| n.starts_with("race-"))
        .collect()
}

/// One server's race: A holding the job, B refused.
struct Race {
    /// The job's name: one per server, since all share the store.
    job: String,
    srv: Server,
    dir: tempfile::TempDir,
    a: Gateway,
    _proxy: HttpProxy,
    killed: Option<Instant>,
}

fn sync_run(dir: &Path, job: &str, cfg: &str) -> (i32, String, String) {
    block_in_place(|| run(dir, &["sync", "run", job, "--config", cfg], None))
}

/// `sync status` through `cfg`: (result, ...) of each listed run, newest first.
fn results(dir: &Path, job: &str, cfg: &str) -> Vec<String> {
    let (code, out, err) =
        block_in_place(|| run(dir, &["sync", "status", job, "--config", cfg], None));
    assert_eq!(code, 0, "{out}{err}");
    out.lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() >= 2 && ["ok", "failed", "refused", "killed"].contains(&w[1]))
                .then(|| w[1].to_string())
        })
        .collect()
}

async fn start_race(srv: Server, job: String, url: &str) -> Race {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("files/out")).unwrap();
    for i in 0..FILES {
        std::fs::write(
            d.join(format!("files/out/race-{i:03}.txt")),
            format!("file {i}"),
        )
        .unwrap();
    }
    // A's uploads of the job's files never get an answer: A is mid-run, holding the lease.
    let proxy = HttpProxy::start(
        srv.addr(),
        Arc::new(|s: &Seen| {
            if s.method == "PUT" && s.target.contains("race-0") {
                Action::Stall
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let a_cfg = instance(d, "a", &job, &srv, &format!("http://{}", proxy.addr), url);
    let b_cfg = instance(d, "b", &job, &srv, &srv.endpoint, url);
    let a =
        block_in_place(|| Gateway::spawn(d, &["sync", "run", &job, "--config", &a_cfg], &[], &[]));
    // A uploads only under the job's lease: once an upload reaches the proxy, A holds it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !proxy
        .seen()
        .iter()
        .any(|s| s.method == "PUT" && s.target.contains("race-0"))
    {
        assert!(
            Instant::now() < deadline,
            "[{}] A never started copying: {}",
            srv.name,
            a.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // B lists, finds the work, and is refused the job: it copies nothing.
    let (code, out, err) = sync_run(d, &job, &b_cfg);
    assert_eq!(
        code, 1,
        "[{}] B ran while A held the job: {out}{err}",
        srv.name
    );
    assert!(
        err.contains("running on another instance"),
        "[{}] B failed for another reason: {err}",
        srv.name
    );
    assert!(
        copied(&srv).await.is_empty(),
        "[{}] something was copied while A's uploads were held",
        srv.name
    );
    println!("[{}] B refused while A runs: {}", srv.name, err.trim());
    Race {
        job,
        srv,
        dir,
        a,
        _proxy: proxy,
        killed: None,
    }
}

/// On every S3 server: while A runs the job, B is refused and copies nothing; A is killed
/// (SIGKILL) and B is still refused until A's lease (60 s) lapses; then B copies every file.
/// Both instances' `sync status` list the same runs, A's killed one included once A starts
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_race_for_one_job_on_every_server() {
    let pg = Postgres::start();
    let url = pg.url();
    let mut races = Vec::new();
    for (i, srv) in servers().await.into_iter().enumerate() {
        races.push(start_race(srv, format!("race{i}"), &url).await);
    }
    // A dies mid-run, its lease still in force: B is refused again.
    for r in &mut races {
        r.a.signal("KILL");
        block_in_place(|| r.a.wait(Duration::from_secs(30)));
        r.killed = Some(Instant::now());
        let (code, out, err) = sync_run(r.dir.path(), &r.job, "b.yaml");
        assert_eq!(
            code, 1,
            "[{}] B ran at once after A was killed: {out}{err}",
            r.srv.name
        );
        assert!(err.contains("running on another instance"), "{err}");
    }
    // Once the lease has lapsed, B takes the job (bounded: a generous multiple of the 60 s
    // lease, so that a hung store fails the test instead of hanging it).
    for r in &races {
        let d = r.dir.path();
        let deadline = Instant::now() + Duration::from_secs(240);
        loop {
            let (code, out, err) = sync_run(d, &r.job, "b.yaml");
            if code == 0 {
                println!(
                    "[{}] B took the job {:.0?} after A was killed",
                    r.srv.name,
                    r.killed.unwrap().elapsed()
                );
                break;
            }
            assert!(
                err.contains("running on another instance"),
                "[{}] B failed for another reason: {out}{err}",
                r.srv.name
            );
            assert!(
                Instant::now() < deadline,
                "[{}] the killed instance's lease never lapsed",
                r.srv.name
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        let want: Vec<String> = (0..FILES).map(|i| format!("race-{i:03}.txt")).collect();
        assert_eq!(copied(&r.srv).await, want, "[{}]", r.srv.name);
        // A starts again: it finds its run killed and records it; nothing is left to copy.
        let (code, out, err) = sync_run(d, &r.job, "a.yaml");
        assert_eq!(code, 0, "[{}] {out}{err}", r.srv.name);
        // Newest first, the same on both instances: A's run, A's killed run, B's runs.
        let b = results(d, &r.job, "b.yaml");
        assert_eq!(b[..2], ["ok", "killed"], "[{}] {b:?}", r.srv.name);
        assert_eq!(b[2], "ok", "[{}] {b:?}", r.srv.name);
        assert!(
            b[3..].iter().all(|x| x == "refused") && b.len() >= 5,
            "[{}] {b:?}",
            r.srv.name
        );
        assert_eq!(results(d, &r.job, "a.yaml"), b, "[{}]", r.srv.name);
    }
}
