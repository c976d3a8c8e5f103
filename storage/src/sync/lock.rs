//! A job never runs twice at once: a `flock` on `state_dir/locks/<job>.lock` keeps out other
//! runs of this installation (the scheduler in `serve`, a `sync run` beside it), and a lease
//! keeps out other instances: a row of the shared state store (the gateway implements
//! [`LeaseStore`] over PostgreSQL, where each call is one atomic statement), or, without one, an
//! object on the remote they share.

use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// An exclusive `flock` on a job's lock file, released when dropped or when the process dies
/// (the kernel drops it, so a killed run never leaves a stale lock behind).
#[derive(Debug)]
pub(crate) struct JobLock {
    _file: File,
}

impl JobLock {
    /// Takes the lock at `path` without waiting; `None` when another run holds it.
    pub(crate) fn try_acquire(path: &Path) -> Result<Option<JobLock>> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)?;
        // A lock released a moment ago can still look held: a child process that another
        // thread of this process is starting shares our open files from its fork until its
        // exec closes them, the lock's included. So "held" is believed only after a few
        // tries over about a quarter of a second (a run that really holds it holds it longer).
        for attempt in 0..6 {
            match file.try_lock() {
                Ok(()) => {
                    // Who holds it, for an operator looking at the file; not used for locking.
                    let _ = file.set_len(0);
                    let _ = writeln!(file, "{}", std::process::id());
                    return Ok(Some(JobLock { _file: file }));
                }
                Err(std::fs::TryLockError::WouldBlock) if attempt < 5 => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    /// True when some process holds the lock at `path` now. One try: it only informs (the
    /// `running` flag of a job's status), and it is called from async handlers, which a wait
    /// would stall.
    pub(crate) fn is_held(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        match file.try_lock_shared() {
            Ok(()) => false,
            Err(std::fs::TryLockError::WouldBlock) => true,
            Err(_) => false,
        }
    }
}

/// Conditional writes of one small object, so that instances sharing a remote can agree on who
/// runs a job (a lease), without any coordinator.
///
/// `version` is an opaque tag naming one written state of the object (an S3 ETag). The S3
/// backend implements it with `PUT` + `If-None-Match: *` (create), `GET` (read),
/// `PUT` + `If-Match` (replace) and `DELETE` + `If-Match` (delete; where a server ignores the
/// condition a plain `DELETE` after a matching `GET` is acceptable: the lease then only guards
/// against overlapping runs until its expiry). A 412 answer is "the condition failed", not an
/// error. The key is a job name; the store decides where it lives, which must be outside any
/// synced prefix (the engine also ignores a top-level `.bucketgate-sync/` in listings).
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// A short name for logs.
    fn describe(&self) -> String;
    /// Creates the object only if it does not exist: `Some(version)`, or `None` when it does.
    async fn create_if_absent(&self, key: &str, body: Bytes) -> Result<Option<String>>;
    /// Reads the object and its version; `None` when it does not exist.
    async fn read(&self, key: &str) -> Result<Option<(Bytes, String)>>;
    /// Replaces the object only if it is still at `version`: `Some(new version)`, or `None`
    /// when it changed or vanished.
    async fn replace_if_match(
        &self,
        key: &str,
        version: &str,
        body: Bytes,
    ) -> Result<Option<String>>;
    /// Deletes the object only if it is still at `version`; `false` when it was not.
    async fn delete_if_match(&self, key: &str, version: &str) -> Result<bool>;
}

/// A [`LeaseStore`] in a local folder (tests, and instances sharing a file system): creation is
/// a hard link of a complete temporary file (atomic, fails when the name exists: `O_EXCL`
/// semantics without a half-written object), and compare-and-swap runs under a `flock`.
#[derive(Debug, Clone)]
pub struct FileLeaseStore {
    dir: PathBuf,
}

impl FileLeaseStore {
    /// A store in folder `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(FileLeaseStore { dir })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.dir
            .join(format!("{}.lease", super::names::file_stem(key)))
    }

    fn version(body: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body))
    }

    fn staged(&self, body: &[u8]) -> Result<tempfile::TempPath> {
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(body)?;
        tmp.as_file().sync_all()?;
        Ok(tmp.into_temp_path())
    }

    /// Runs `f` while holding the store's compare-and-swap lock.
    async fn exclusive<T: Send + 'static>(
        &self,
        f: impl FnOnce(&FileLeaseStore) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(me.dir.join(".cas.lock"))?;
            lock.lock()?;
            f(&me)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Backend, "lease store failed").with_source(e))?
    }

    fn read_now(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        match std::fs::read(self.path(key)) {
            Ok(b) => {
                let v = Self::version(&b);
                Ok(Some((Bytes::from(b), v)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[async_trait]
impl LeaseStore for FileLeaseStore {
    fn describe(&self) -> String {
        format!("file:{}", self.dir.display())
    }

    async fn create_if_absent(&self, key: &str, body: Bytes) -> Result<Option<String>> {
        let key = key.to_string();
        self.exclusive(move |s| {
            let tmp = s.staged(&body)?;
            match std::fs::hard_link(&tmp, s.path(&key)) {
                Ok(()) => Ok(Some(Self::version(&body))),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    async fn read(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        let key = key.to_string();
        self.exclusive(move |s| s.read_now(&key)).await
    }

    async fn replace_if_match(
        &self,
        key: &str,
        version: &str,
        body: Bytes,
    ) -> Result<Option<String>> {
        let (key, version) = (key.to_string(), version.to_string());
        self.exclusive(move |s| match s.read_now(&key)? {
            Some((_, v)) if v == version => {
                let tmp = s.staged(&body)?;
                tmp.persist(s.path(&key))
                    .map_err(|e| Error::from(e.error))?;
                Ok(Some(Self::version(&body)))
            }
            _ => Ok(None),
        })
        .await
    }

    async fn delete_if_match(&self, key: &str, version: &str) -> Result<bool> {
        let (key, version) = (key.to_string(), version.to_string());
        self.exclusive(move |s| match s.read_now(&key)? {
            Some((_, v)) if v == version => {
                std::fs::remove_file(s.path(&key))?;
                Ok(true)
            }
            _ => Ok(false),
        })
        .await
    }
}

/// What a lease object says.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseBody {
    job: String,
    holder: String,
    /// Milliseconds since the epoch after which anyone may take the lease over.
    expires_ms: u64,
    /// Makes every write distinct, so versions never repeat.
    nonce: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn body(job: &str, holder: &str, ttl: Duration) -> Bytes {
    let b = LeaseBody {
        job: job.to_string(),
        holder: holder.to_string(),
        expires_ms: now_ms() + ttl.as_millis() as u64,
        nonce: rand::random(),
    };
    Bytes::from(serde_json::to_vec(&b).expect("plain struct"))
}

/// A lease this run holds; renewed in the background until released.
pub(crate) struct HeldLease {
    store: Arc<dyn LeaseStore>,
    key: String,
    version: Arc<Mutex<String>>,
    renew: tokio::task::JoinHandle<()>,
    stop: CancellationToken,
    lost: Arc<AtomicBool>,
}

impl HeldLease {
    /// Takes the lease of `job` for `holder`, if it is free, expired, or already ours (this
    /// instance's earlier run was killed: the local lock proves it is not running any more).
    /// While held, it is renewed every `ttl / 3`; if a renewal finds it taken, or cannot
    /// reach the store until the lease would have expired, `on_lost` is cancelled.
    pub(crate) async fn acquire(
        store: Arc<dyn LeaseStore>,
        job: &str,
        holder: &str,
        ttl: Duration,
        on_lost: CancellationToken,
    ) -> Result<HeldLease> {
        let key = job.to_string();
        let mut version = None;
        for _ in 0..3 {
            if let Some(v) = store.create_if_absent(&key, body(job, holder, ttl)).await? {
                version = Some(v);
                break;
            }
            let Some((cur, v)) = store.read(&key).await? else {
                continue; // released meanwhile: try creating again
            };
            let cur: Option<LeaseBody> = serde_json::from_slice(&cur).ok();
            let takeable = match &cur {
                Some(c) => c.holder == holder || c.expires_ms < now_ms(),
                None => true, // unreadable: treat as expired junk
            };
            if !takeable {
                let c = cur.expect("checked");
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "sync job {job} is running on another instance ({}) until {}",
                        c.holder,
                        super::names::rfc3339(UNIX_EPOCH + Duration::from_millis(c.expires_ms))
                    ),
                ));
            }
            if let Some(nv) = store
                .replace_if_match(&key, &v, body(job, holder, ttl))
                .await?
            {
                version = Some(nv);
                break;
            }
        }
        let Some(version) = version else {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("sync job {job}: another instance is taking the lease"),
            ));
        };
        let version = Arc::new(Mutex::new(version));
        let lost = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        let renew = tokio::spawn(renew_loop(
            store.clone(),
            key.clone(),
            Renewal {
                job: job.to_string(),
                holder: holder.to_string(),
                ttl,
            },
            version.clone(),
            lost.clone(),
            on_lost,
            stop.clone(),
        ));
        Ok(HeldLease {
            store,
            key,
            version,
            renew,
            stop,
            lost,
        })
    }

    /// True when the lease was lost during the run.
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Stops renewing and deletes the lease object (if it is still ours).
    pub(crate) async fn release(self) {
        // Let a renewal in flight finish, so the version we delete is the one on the store.
        self.stop.cancel();
        let _ = self.renew.await;
        let v = self.version.lock().expect("not poisoned").clone();
        if let Err(e) = self.store.delete_if_match(&self.key, &v).await {
            tracing::warn!(job = %self.key, error = ?e, "could not release the sync lease; it lapses at its expiry");
        }
    }
}

/// A lease on a job, as a run holds it: taken on a [`LeaseStore`] (refused while another
/// holder's lease is live; a lapsed one, or this holder's own, is taken over), renewed in the
/// background every third of `ttl`, and marked lost when a renewal finds it taken over (or
/// cannot renew it before it lapses).
pub struct Lease {
    held: HeldLease,
    lost: CancellationToken,
}

impl Lease {
    /// Takes the lease on `job` for `holder`; a `Conflict` error while another holder has it.
    pub async fn acquire(
        store: Arc<dyn LeaseStore>,
        job: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease> {
        let lost = CancellationToken::new();
        let held = HeldLease::acquire(store, job, holder, ttl, lost.clone()).await?;
        Ok(Lease { held, lost })
    }

    /// True once a renewal found the lease gone to another holder.
    pub fn is_lost(&self) -> bool {
        self.held.is_lost()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        self.lost.cancelled().await
    }

    /// Stops renewing and deletes the lease (if it is still ours).
    pub async fn release(self) {
        self.held.release().await
    }
}

/// Who renews a lease, and for how long.
struct Renewal {
    job: String,
    holder: String,
    ttl: Duration,
}

async fn renew_loop(
    store: Arc<dyn LeaseStore>,
    key: String,
    r: Renewal,
    version: Arc<Mutex<String>>,
    lost: Arc<AtomicBool>,
    on_lost: CancellationToken,
    stop: CancellationToken,
) {
    let Renewal { job, holder, ttl } = r;
    let mut valid_until = now_ms() + ttl.as_millis() as u64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ttl / 3) => {}
            _ = stop.cancelled() => return,
        }
        let v = version.lock().expect("not poisoned").clone();
        let attempt_expiry = now_ms() + ttl.as_millis() as u64;
        match store
            .replace_if_match(&key, &v, body(&job, &holder, ttl))
            .await
        {
            Ok(Some(nv)) => {
                *version.lock().expect("not poisoned") = nv;
                valid_until = attempt_expiry;
            }
            Ok(None) => {
                tracing::error!(job = %job, "the sync lease was taken over by another instance; stopping the run");
                lost.store(true, Ordering::SeqCst);
                on_lost.cancel();
                return;
            }
            Err(e) => {
                // Keep trying while the lease is surely ours; stop before it may lapse.
                if now_ms() + (ttl / 3).as_millis() as u64 >= valid_until {
                    tracing::error!(job = %job, error = ?e, "could not renew the sync lease before its expiry; stopping the run");
                    lost.store(true, Ordering::SeqCst);
                    on_lost.cancel();
                    return;
                }
                tracing::warn!(job = %job, error = ?e, "could not renew the sync lease; retrying");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lease_lifecycle() {
        let d = tempfile::tempdir().unwrap();
        let store: Arc<dyn LeaseStore> = Arc::new(FileLeaseStore::new(d.path()).unwrap());
        let ttl = Duration::from_millis(600);
        let a = HeldLease::acquire(store.clone(), "j", "A", ttl, CancellationToken::new())
            .await
            .unwrap();
        // Another holder is refused while A renews, even past the first ttl.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let e = HeldLease::acquire(store.clone(), "j", "B", ttl, CancellationToken::new())
            .await
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        // The same holder (a restart of a killed run) takes it back at once.
        a.renew.abort();
        let a2 = HeldLease::acquire(store.clone(), "j", "A", ttl, CancellationToken::new())
            .await
            .unwrap();
        // A dead holder's lease lapses at its expiry.
        a2.renew.abort();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let lost = CancellationToken::new();
        let b = HeldLease::acquire(store.clone(), "j", "B", ttl, CancellationToken::new())
            .await
            .unwrap();
        // A holder whose lease was taken over notices at its next renewal.
        let c = HeldLease::acquire(store.clone(), "k", "C", ttl, lost.clone())
            .await
            .unwrap();
        let (_, v) = store.read("k").await.unwrap().unwrap();
        store
            .replace_if_match("k", &v, Bytes::from_static(b"{}"))
            .await
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_secs(2), lost.cancelled())
            .await
            .unwrap();
        assert!(c.is_lost());
        b.release().await;
        assert!(store.read("j").await.unwrap().is_none());
    }

    /// The two tests below run one at a time: the second starts child processes, which share
    /// every open file of this test process (the first one's lock included) until their exec.
    static LOCK_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn flock_excludes_a_second_holder() {
        let _one = LOCK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks/j.lock");
        let l = JobLock::try_acquire(&p).unwrap().unwrap();
        assert!(JobLock::is_held(&p));
        assert!(JobLock::try_acquire(&p).unwrap().is_none());
        drop(l);
        assert!(!JobLock::is_held(&p));
        assert!(JobLock::try_acquire(&p).unwrap().is_some());
    }

    /// A lock let go is free at once, also while another thread starts child processes (each
    /// shares the lock's open file from its fork until its exec): the storage tests saw "sync
    /// job ... is already running" from a run that followed another in the same test.
    #[test]
    fn a_released_lock_is_free_while_processes_start() {
        use std::sync::atomic::AtomicBool;
        let _one = LOCK_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks/j.lock");
        let stop = Arc::new(AtomicBool::new(false));
        let spawners: Vec<_> = (0..2)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = std::process::Command::new("true").status();
                    }
                })
            })
            .collect();
        let mut refused = 0;
        for _ in 0..100 {
            match JobLock::try_acquire(&p).unwrap() {
                Some(l) => drop(l),
                None => refused += 1,
            }
        }
        stop.store(true, Ordering::Relaxed);
        for s in spawners {
            s.join().unwrap();
        }
        assert_eq!(refused, 0, "a free lock looked held");
    }
}
