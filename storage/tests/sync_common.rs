//! Helpers shared by the sync tests (the `sync_*` modules of this test binary).
#![allow(dead_code)]

use bucketgate_storage::backend::Backend;
use bucketgate_storage::local::{LocalBackend, STAGING};
use bucketgate_storage::sync::{
    run_job, ConflictPolicy, Direction, Event, RunOptions, Summary, SyncJob,
};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Two local folders (site tree root and "remote" root) and a state folder.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub site: Arc<dyn Backend>,
    pub remote: Arc<dyn Backend>,
    pub state: PathBuf,
}

impl Default for Env {
    fn default() -> Self {
        Env::new()
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let site: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("site")).unwrap());
        let remote: Arc<dyn Backend> =
            Arc::new(LocalBackend::new(dir.path().join("remote")).unwrap());
        let state = dir.path().join("state");
        Env {
            dir,
            site,
            remote,
            state,
        }
    }

    /// The synced site folder on disk (`users/alice/inbound` in the site tree).
    pub fn s(&self) -> PathBuf {
        self.dir.path().join("site/users/alice/inbound")
    }

    /// The synced remote prefix on disk (`outbound/`).
    pub fn r(&self) -> PathBuf {
        self.dir.path().join("remote/outbound")
    }

    pub fn job(&self, direction: Direction, delete: bool, conflict: ConflictPolicy) -> SyncJob {
        SyncJob {
            name: "acme-inbound".into(),
            site: (self.site.clone(), "users/alice/inbound".into()),
            remote: (self.remote.clone(), "outbound/".into()),
            direction,
            delete,
            conflict,
            include: vec![],
            exclude: vec![],
            max_delete: Default::default(),
            lease: None,
            history: None,
        }
    }

    pub async fn run(&self, job: &SyncJob) -> Summary {
        run_job(job, &self.state, RunOptions::default())
            .await
            .expect("sync run")
    }
}

pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

pub fn write_at(root: &Path, rel: &str, content: &[u8], secs: u64) {
    write(root, rel, content);
    set_mtime(root, rel, secs);
}

pub fn set_mtime(root: &Path, rel: &str, secs: u64) {
    let f = std::fs::File::options()
        .write(true)
        .open(root.join(rel))
        .unwrap();
    f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

pub fn mkdir(root: &Path, rel: &str) {
    std::fs::create_dir_all(root.join(rel)).unwrap();
}

pub fn rm(root: &Path, rel: &str) {
    let p = root.join(rel);
    if p.is_dir() {
        std::fs::remove_dir_all(p).unwrap();
    } else {
        std::fs::remove_file(p).unwrap();
    }
}

pub fn read(root: &Path, rel: &str) -> Option<Vec<u8>> {
    std::fs::read(root.join(rel)).ok()
}

/// Every file (path → content) and folder (path ending in `/` → empty) below `root`.
pub fn tree(root: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if rel == STAGING {
                continue;
            }
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Names only, for short assertions.
pub fn names(root: &Path) -> Vec<String> {
    tree(root).into_keys().collect()
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A progress callback that keeps every event.
pub fn recorder() -> (RunOptions, Arc<Mutex<Vec<Event>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e2 = events.clone();
    let opts = RunOptions {
        progress: Some(Arc::new(move |p: bucketgate_storage::sync::Progress| {
            if let Some(ev) = p.event {
                e2.lock().unwrap().push(ev);
            }
        })),
        ..Default::default()
    };
    (opts, events)
}

/// The counts of a summary as a tuple: (up, down, del remote, del site, conflicts, skipped, errors).
pub fn counts(s: &Summary) -> (u64, u64, u64, u64, u64, u64, u64) {
    (
        s.copied_to_remote,
        s.copied_to_site,
        s.deleted_remote,
        s.deleted_site,
        s.conflicts,
        s.skipped,
        s.errors,
    )
}

/// Runs `cmd` with its output discarded, killing it (SIGKILL) after `delay` if it is still
/// running: (killed, time taken). An uninterrupted run must succeed.
pub fn run_or_kill(cmd: &mut std::process::Command, delay: Duration) -> (bool, Duration) {
    use std::process::Stdio;
    let t0 = std::time::Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert!(st.success(), "an uninterrupted child run failed");
            return (false, t0.elapsed());
        }
        if t0.elapsed() >= delay {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            return (true, t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// When to kill the next sync run, learnt from the runs so far, so that kills land in the
/// copying phase on any machine. A run that finished lowers the ceiling (`finished`); a kill
/// that landed before any copy (`landed_early`) raises the floor past its moment, and raises the
/// ceiling too when the floor reaches it: on a slow or busy machine start-up and listing take
/// longer than the first guess, and kills drawn below it would never reach a transfer (seen in
/// CI: 2 of 10 kills after listing in a round).
pub struct KillAim {
    ceiling: Duration,
    floor: Duration,
}

impl KillAim {
    pub fn new(first_guess: Duration) -> KillAim {
        KillAim {
            ceiling: first_guess,
            floor: Duration::ZERO,
        }
    }

    /// The delay for the next run: drawn between the floor and the ceiling.
    pub fn next(&self, rng: &mut impl rand::Rng) -> Duration {
        let hi = self.ceiling.as_millis().max(2) as u64;
        let lo = (self.floor.as_millis() as u64).clamp(1, hi - 1);
        Duration::from_millis(rng.random_range(lo..=hi))
    }

    /// The run finished after `took` without being killed: aim earlier.
    pub fn finished(&mut self, took: Duration) {
        self.ceiling = took.mul_f32(0.9).max(Duration::from_millis(20));
        self.floor = self.floor.min(self.ceiling / 2);
    }

    /// The run killed at `delay` had not started copying: aim later.
    pub fn landed_early(&mut self, delay: Duration) {
        self.floor = self.floor.max(delay);
        if self.floor.mul_f32(1.2) >= self.ceiling {
            self.ceiling = self.ceiling.mul_f32(1.3).min(Duration::from_secs(60));
        }
    }
}
