//! Crash safety: a two-way sync killed with SIGKILL at random moments, rerun each time, loses no
//! file, makes no conflict copy, and finishes.
//!
//! The killed process is this test binary run again with `BUCKETGATE_SYNC_CRASH_CHILD` set to
//! the test folder: then `crash_child` runs one sync and the other tests are filtered out.

use crate::sync_common as common;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::sync::{
    is_conflict_name, run_job, ConflictPolicy, Direction, FileLeaseStore, RunOptions, SyncJob,
};
use common::*;
use rand::Rng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

const CHILD_ENV: &str = "BUCKETGATE_SYNC_CRASH_CHILD";

fn job(dir: &Path) -> SyncJob {
    let site: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.join("site")).unwrap());
    let remote: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.join("remote")).unwrap());
    SyncJob {
        name: "crash".into(),
        site: (site, "folder".into()),
        remote: (remote, "prefix".into()),
        direction: Direction::TwoWay,
        delete: true,
        conflict: ConflictPolicy::KeepBoth,
        include: vec![],
        exclude: vec![],
        max_delete: Default::default(),
        // A killed run leaves its lease behind; the rerun (same instance) must take it back.
        lease: Some(Arc::new(FileLeaseStore::new(dir.join("leases")).unwrap())),
        history: None,
    }
}

/// The child: one sync run, to be killed at some point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // an ordinary test run: nothing to do
    };
    let dir = PathBuf::from(dir);
    let sum = run_job(&job(&dir), &dir.join("state"), RunOptions::default())
        .await
        .expect("sync run");
    assert_eq!((sum.errors, sum.conflicts), (0, 0), "{sum:?}");
}

struct Model {
    files: BTreeMap<String, Vec<u8>>,
    site: PathBuf,
    remote: PathBuf,
}

impl Model {
    fn put(&mut self, on_site: bool, rel: &str, content: Vec<u8>) {
        write(
            if on_site { &self.site } else { &self.remote },
            rel,
            &content,
        );
        self.files.insert(rel.to_string(), content);
    }
    fn del(&mut self, on_site: bool, rel: &str) {
        rm(if on_site { &self.site } else { &self.remote }, rel);
        self.files.remove(rel);
    }
}

fn content(rng: &mut impl Rng, max: usize) -> Vec<u8> {
    let n = rng.random_range(0..max);
    (0..n).map(|_| rng.random()).collect()
}

/// Runs the child once, killing it after `delay` if it is still running. True when killed.
fn run_child(dir: &Path, delay: Duration) -> (bool, Duration) {
    run_or_kill(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "sync_crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir),
        delay,
    )
}

fn complete_run(rt: &tokio::runtime::Runtime, dir: &Path) {
    let sum = rt
        .block_on(run_job(
            &job(dir),
            &dir.join("state"),
            RunOptions::default(),
        ))
        .expect("final run");
    assert_eq!((sum.errors, sum.conflicts), (0, 0), "{sum:?}");
}

fn check(m: &Model) {
    let (s, r) = (tree(&m.site), tree(&m.remote));
    assert!(
        !s.keys().any(|k| is_conflict_name(k)),
        "a conflict copy was made"
    );
    assert_eq!(
        s.keys().collect::<Vec<_>>(),
        r.keys().collect::<Vec<_>>(),
        "both sides hold the same paths"
    );
    let files = |t: &BTreeMap<String, Vec<u8>>| {
        t.iter()
            .filter(|(k, _)| !k.ends_with('/'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert!(files(&s) == m.files, "site differs from the expected files");
    assert!(
        files(&r) == m.files,
        "remote differs from the expected files"
    );
}

/// Kills runs until `want` of them were interrupted, at least [`MID_WANTED`] of them while
/// files were being copied, adding files on both sides each time.
fn kill_loop(
    dir: &Path,
    m: &mut Model,
    rng: &mut impl Rng,
    round: &str,
    want: u32,
    per_side: usize,
) -> (u32, u32) {
    let mut aim = KillAim::new(Duration::from_millis(400));
    let (mut killed, mut i, mut mid_transfer) = (0, 0, 0);
    while killed < want || mid_transfer < MID_WANTED {
        i += 1;
        assert!(i < 200, "could not interrupt enough runs");
        for k in 0..per_side {
            let c = content(rng, 48 * 1024);
            m.put(true, &format!("new/{round}-site-{i}-{k}.bin"), c);
            let c = content(rng, 48 * 1024);
            m.put(false, &format!("new/{round}-remote-{i}-{k}.bin"), c);
        }
        let delay = aim.next(rng);
        let (was_killed, took) = run_child(dir, delay);
        if was_killed {
            killed += 1;
            // A journal left behind means the kill hit while files were being copied.
            if dir.join("state/sync/crash.journal").exists() {
                mid_transfer += 1;
            } else if mid_transfer < MID_WANTED {
                aim.landed_early(delay);
            }
        } else {
            aim.finished(took);
        }
    }
    println!("{round}: {killed} runs killed in {i} attempts, {mid_transfer} after listing");
    (killed, mid_transfer)
}

/// Kills per round that must land while files are being copied.
const MID_WANTED: u32 = 3;

#[test]
fn sync_survives_sigkill_at_random_points() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut rng = rand::rng();
    let mut m = Model {
        files: BTreeMap::new(),
        site: dir.join("site/folder"),
        remote: dir.join("remote/prefix"),
    };
    for i in 0..300 {
        let c = content(&mut rng, 64 * 1024);
        m.put(true, &format!("s/d{}/s{i:03}.bin", i % 10), c);
    }
    for i in 0..100 {
        let c = content(&mut rng, 64 * 1024);
        m.put(false, &format!("r/r{i:03}.bin",), c);
    }

    // Round 1: a first sync of 400 files, interrupted again and again.
    let (mut killed, mut mid) = kill_loop(dir, &mut m, &mut rng, "a", 12, 4);
    complete_run(&rt, dir);
    check(&m);

    // Round 2: changes and deletions on both sides, each spread by interrupted runs.
    for i in 0..20 {
        let c = content(&mut rng, 64 * 1024);
        m.put(true, &format!("s/d{}/s{i:03}.bin", i % 10), c);
        let c = content(&mut rng, 64 * 1024);
        m.put(false, &format!("r/r{i:03}.bin"), c);
    }
    for i in 100..115 {
        m.del(true, &format!("s/d{}/s{i:03}.bin", i % 10));
    }
    for i in 50..65 {
        m.del(false, &format!("r/r{i:03}.bin"));
    }
    let (k, m2) = kill_loop(dir, &mut m, &mut rng, "b", 12, 12);
    (killed, mid) = (killed + k, mid + m2);
    complete_run(&rt, dir);
    check(&m);
    assert!(killed >= 20);
    // Kills must land in the copying phase too, not only at start-up and listing.
    assert!(mid >= 6, "only {mid} kills landed after listing");
}
