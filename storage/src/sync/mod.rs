//! Sync jobs: copy files between a site folder and a remote prefix, as push, pull or two-way.
//!
//! # How a run works
//!
//! 1. It takes the job's `flock` (`state_dir/locks/<job>.lock`).
//! 2. It walks both sides into external sorts ([`spool`]), so both listings come back as sorted
//!    streams whatever order the backends list in, with bounded memory (see
//!    [`spool::DEFAULT_CAP`]). A listing that fails stops the run before anything changes.
//! 3. It walks the two listings and the baseline (the state, plus the journal of an
//!    interrupted run) together, path by path, and decides ([`plan::decide`]) what each path
//!    needs. Each side is compared only with its own half of the recorded pair.
//! 4. When there is anything to do and the job has a [`LeaseStore`], it takes the job's lease
//!    there (an object on the remote, or a row of the gateway's shared state store), renewed in
//!    the background (a run with nothing to do sends no request beyond its
//!    listings). Copies, deletions and conflict resolutions run with bounded concurrency; each verified
//!    pair is appended to the journal as it completes. Folders are removed last, deepest first.
//! 5. The new state (kept and new pairs) is written atomically and the journal dropped; the run
//!    is recorded in the job's history ([`RunLog`]: the gateway's state store, or jsonl files).
//!
//! # Crash safety
//!
//! Killing the process at any moment loses nothing: uploads appear whole or not at all, the
//! state is only replaced whole, and it (with the journal) only records pairs verified on both
//! sides. A copy that completed but was not recorded is found on the next run as "present on
//! both sides, changed since the record (or unrecorded)", which compares the two contents
//! (sizes, then MD5s where one side's is known: an MD5 ETag, or the one a record carries for a
//! side unchanged since, the other side hashed when its MD5 is unknown; without any MD5,
//! equal mtimes; else the bytes) and
//! records the pair instead of declaring a conflict. A deletion that completed but was not
//! recorded leaves the path absent on both sides: the record is simply dropped. Conflict copies
//! are named after the losing version's mtime, so a repeated attempt reuses the same name.
//!
//! # Memory
//!
//! Per run: three spools of at most [`spool::DEFAULT_CAP`] entries (site listing, remote
//! listing, new state) at ~150-250 bytes each, the journal's spool when one is replayed, one
//! entry per sorted run during merges, one transfer buffer per concurrent transfer, and the
//! list of folders to remove (only folders deleted on the other side).

mod exec;
mod filter;
pub mod history;
mod lock;
mod model;
mod names;
pub mod plan;
mod run;
pub mod spool;
mod state;

use crate::backend::Backend;
use crate::error::Result;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use history::{
    import_files, is_running, job_status, status, FileRunLog, JobStatus, RunLog, RunRecord,
};
pub use lock::{FileLeaseStore, Lease, LeaseStore};
pub use names::{conflict_name, is_conflict_name};

/// Which way files flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Site → remote.
    Push,
    /// Remote → site.
    Pull,
    /// Both ways; conflicts follow the job's [`ConflictPolicy`].
    TwoWay,
}

/// What a two-way job does with a path changed on both sides since the last run.
///
/// "Newer" compares modification times, but a time in the future is not believed: it counts as
/// the time the job's state was last written (the version is known to be newer than that, no
/// more), so a wrong clock cannot win every conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictPolicy {
    /// The version with the later mtime wins (the site's on a tie); the other is overwritten.
    Newer,
    /// The newer version keeps the name; the older is kept on both sides as
    /// `name (conflict YYYY-MM-DD HHMMSS UTC).ext`, dated by its own mtime (with ` #2`, ` #3`…
    /// after `UTC` when that name is taken by something else). Never overwrites anything.
    KeepBoth,
}

/// How many files one run may delete on either side before it refuses to run at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxDelete {
    /// At most this many files per side.
    Count(u64),
    /// At most this percentage of the files listed on that side (0-100).
    Percent(u8),
}

impl Default for MaxDelete {
    /// Half of a side, as rclone bisync.
    fn default() -> Self {
        MaxDelete::Percent(50)
    }
}

impl MaxDelete {
    /// True when deleting `deletes` of the `listed` files of a side goes past the limit.
    pub fn exceeded(self, deletes: u64, listed: u64) -> bool {
        match self {
            MaxDelete::Count(n) => deletes > n,
            MaxDelete::Percent(p) => deletes > 0 && deletes * 100 > u64::from(p) * listed,
        }
    }
}

impl std::fmt::Display for MaxDelete {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MaxDelete::Count(n) => write!(f, "{n} files"),
            MaxDelete::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// One sync job, as the gateway builds it from the config.
#[derive(Clone)]
pub struct SyncJob {
    /// Unique name (state, history and lock files are named after it).
    pub name: String,
    /// The site tree's backend and the key of the synced folder in it (`""` = its root).
    pub site: (Arc<dyn Backend>, String),
    /// The remote's backend and the key prefix in it.
    pub remote: (Arc<dyn Backend>, String),
    /// Which way files flow.
    pub direction: Direction,
    /// Spread deletions seen since the last good run.
    pub delete: bool,
    /// Two-way conflicts.
    pub conflict: ConflictPolicy,
    /// Globs of relative paths to cover (`**`, `*`, `?`); empty = everything.
    pub include: Vec<String>,
    /// Globs of relative paths to leave out.
    pub exclude: Vec<String>,
    /// The most files a run may delete on one side ([`RunOptions::force`] lifts it).
    pub max_delete: MaxDelete,
    /// Where instances sharing the remote take a lease on the job; `None`: local lock only.
    pub lease: Option<Arc<dyn LeaseStore>>,
    /// Where its runs are recorded; `None`: `state_dir/sync/<job>.history.jsonl`.
    pub history: Option<Arc<dyn RunLog>>,
}

impl std::fmt::Debug for SyncJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncJob")
            .field("name", &self.name)
            .field("site", &(self.site.0.describe(), &self.site.1))
            .field("remote", &(self.remote.0.describe(), &self.remote.1))
            .field("direction", &self.direction)
            .field("delete", &self.delete)
            .field("conflict", &self.conflict)
            .field("include", &self.include)
            .field("exclude", &self.exclude)
            .field("max_delete", &self.max_delete)
            .field("lease", &self.lease.as_ref().map(|l| l.describe()))
            .field("history", &self.history.is_some())
            .finish()
    }
}

/// Called with progress as a run goes (from several tasks; keep it quick).
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

/// How to run a job.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// Decide and report, but change nothing (no copy, no delete, no state, no history).
    pub dry_run: bool,
    /// Progress reports.
    pub progress: Option<ProgressFn>,
    /// Stops the run early (the scheduler's shutdown). What was verified is kept in the journal.
    pub cancel: Option<CancellationToken>,
    /// Transfers in flight at once; 0 = 8.
    pub concurrency: usize,
    /// Lease lifetime (renewed every third of it); `None` = 60 s.
    pub lease_ttl: Option<Duration>,
    /// Go ahead even when the run deletes more than the job's `max_delete`.
    pub force: bool,
}

impl std::fmt::Debug for RunOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("dry_run", &self.dry_run)
            .field("progress", &self.progress.is_some())
            .field("concurrency", &self.concurrency)
            .field("force", &self.force)
            .finish()
    }
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Walking both sides.
    Listing,
    /// Copying and deleting.
    Transferring,
    /// Done (the summary follows).
    Done,
}

/// What happened to one path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// Copied (or a folder created) site → remote.
    CopiedToRemote,
    /// Copied (or a folder created) remote → site.
    CopiedToSite,
    /// Deleted on the remote.
    DeletedRemote,
    /// Deleted on the site.
    DeletedSite,
    /// Changed on both sides: resolved by the conflict policy (the copies are reported too).
    Conflict,
    /// Left alone on purpose.
    Skipped,
    /// Failed; retried at the next run.
    Error,
}

/// One path's outcome. In a dry run, what would have happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The path relative to the synced folders (folders end with `/`).
    pub path: String,
    /// Bytes copied.
    pub bytes: u64,
    /// Why (skips, errors, conflicts).
    pub message: Option<String>,
}

/// A progress report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Where the run is.
    pub phase: Phase,
    /// Entries listed on the site so far.
    pub listed_site: u64,
    /// Entries listed on the remote so far.
    pub listed_remote: u64,
    /// Paths that need work (known once listing is done).
    pub files_total: u64,
    /// Of which done.
    pub files_done: u64,
    /// Bytes to copy (known once listing is done; conflicts may add some).
    pub bytes_total: u64,
    /// Bytes copied so far.
    pub bytes_done: u64,
    /// The path just finished, if this report is about one.
    pub event: Option<Event>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files and folders copied site → remote.
    pub copied_to_remote: u64,
    /// Files and folders copied remote → site.
    pub copied_to_site: u64,
    /// Paths deleted on the remote.
    pub deleted_remote: u64,
    /// Paths deleted on the site.
    pub deleted_site: u64,
    /// Conflicts resolved.
    pub conflicts: u64,
    /// Paths left alone on purpose.
    pub skipped: u64,
    /// Paths that failed (retried next run).
    pub errors: u64,
    /// Bytes copied.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// The first error messages and warnings (at most 20).
    pub messages: Vec<String>,
    /// True for a dry run: the counts are what would have happened.
    pub dry_run: bool,
}

impl Summary {
    /// True when no path failed.
    pub fn ok(&self) -> bool {
        self.errors == 0
    }
}

/// Runs `job` once now. Fails without touching anything when the job is already running here,
/// when it has work to do while another instance holds its lease, or when either side cannot
/// be listed; path errors are counted in the summary and retried at the next run.
pub async fn run_job(job: &SyncJob, state_dir: &Path, opts: RunOptions) -> Result<Summary> {
    run::run_job(job, state_dir, opts).await
}

/// Runs every job on its period until `shutdown`: a job's next run starts one interval after
/// its last one started (at once when that run took longer), never overlapping itself; a run
/// in progress at shutdown stops at once (its verified progress is journaled).
pub async fn run_scheduled(
    jobs: Vec<(SyncJob, Duration)>,
    state_dir: PathBuf,
    shutdown: CancellationToken,
) {
    run_scheduled_until(jobs, state_dir, shutdown.clone(), shutdown).await
}

/// Like [`run_scheduled`], with a drain: once `stop` is cancelled no new run starts and a run
/// in progress goes on to its end; `cut` (cancelled when the caller's grace period is over)
/// stops such a run at once. Returns when every job's loop has ended, so a caller awaiting it
/// knows no run is in progress. A cut run resumes safely at its next start (runs are
/// crash-safe); each run that straddles `stop` is logged as finished or cut.
pub async fn run_scheduled_until(
    jobs: Vec<(SyncJob, Duration)>,
    state_dir: PathBuf,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    let mut set = tokio::task::JoinSet::new();
    for (job, every) in jobs {
        let state_dir = state_dir.clone();
        let (stop, cut) = (stop.clone(), cut.clone());
        set.spawn(async move {
            // A zero interval would spin; a tenth of a second is the shortest period.
            let every = every.max(Duration::from_millis(100));
            // A schedule that replaces another (a reload) may be stopped before its first run.
            while !stop.is_cancelled() && !cut.is_cancelled() {
                let started = tokio::time::Instant::now();
                let opts = RunOptions {
                    cancel: Some(cut.child_token()),
                    ..Default::default()
                };
                tracing::info!(job = %job.name, "sync run started");
                let result = run_job(&job, &state_dir, opts).await;
                let draining = stop.is_cancelled();
                match result {
                    Ok(s) if s.ok() => tracing::info!(
                        job = %job.name, up = s.copied_to_remote, down = s.copied_to_site,
                        deleted = s.deleted_remote + s.deleted_site, conflicts = s.conflicts,
                        bytes = s.bytes, draining, "sync run done"
                    ),
                    Ok(s) => tracing::warn!(
                        job = %job.name, errors = s.errors, first = ?s.messages.first(),
                        draining, "sync run finished with errors"
                    ),
                    Err(e) if cut.is_cancelled() => tracing::warn!(
                        job = %job.name, error = %e,
                        "sync run cut by shutdown; it resumes at the next start"
                    ),
                    Err(e) => tracing::warn!(job = %job.name, error = %e, "sync run failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = cut.cancelled() => break,
                    _ = tokio::time::sleep_until(started + every) => {}
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// The lock file of job `name`.
pub(crate) fn lock_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir
        .join("locks")
        .join(format!("{}.lock", names::file_stem(name)))
}
