//! One run of a job: lock, list, compare, act, record.

use super::exec::{self, planned_bytes, Counts, Ctx, Live, Outcome};
use super::filter::Filter;
use super::history::{self, FileRunLog, RunLog, RunRecord};
use super::lock::{HeldLease, JobLock};
use super::model::{Item, Keyed, Record};
use super::names::file_stem;
use super::plan::{self, Action, Decision, Rules, Seen, Side};
use super::spool::{Merge, Sorted, Spool, DEFAULT_CAP};
use super::state::{self, Baseline, BaselineIter, JEntry, Journal};
use super::{Direction, Event, EventKind, Phase, RunOptions, Summary, SyncJob};
use crate::backend::{passed_over, Backend, WalkNotes};
use crate::error::{Error, ErrorKind, Result};
use futures::StreamExt;
use std::io;
use std::iter::Peekable;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const DEFAULT_CONCURRENCY: usize = 8;
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(60);
const MAX_MESSAGES: usize = 20;

fn io_err(what: &str, e: io::Error) -> Error {
    Error::from(e).with_context("sync", what.to_string())
}

/// The files of one job under `state_dir`.
struct Files {
    state: PathBuf,
    journal: PathBuf,
    /// Present while a run is in progress: one found at the start is a run that was killed.
    running: PathBuf,
    tmp: PathBuf,
    lock: PathBuf,
}

impl Files {
    fn new(state_dir: &Path, job: &str) -> io::Result<Files> {
        let stem = file_stem(job);
        let dir = state_dir.join("sync");
        let tmp = dir.join("tmp").join(&stem);
        std::fs::create_dir_all(&tmp)?;
        Ok(Files {
            state: dir.join(format!("{stem}.state")),
            journal: dir.join(format!("{stem}.journal")),
            running: dir.join(format!("{stem}.running")),
            tmp,
            lock: super::lock_path(state_dir, job),
        })
    }

    /// Spool files of a killed run are left behind; under the lock nobody else uses them.
    fn clear_tmp(&self) {
        if let Ok(rd) = std::fs::read_dir(&self.tmp) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// This installation's identity as a lease holder, kept in the state folder: a restart after a
/// crash is the same holder, and may take back its own lease at once.
fn instance_id(state_dir: &Path) -> io::Result<String> {
    let p = state_dir.join("sync").join("instance-id");
    match std::fs::read_to_string(&p) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let id = format!("{host}-{:016x}", rand::random::<u64>());
    let tmp = tempfile::NamedTempFile::new_in(p.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(tmp.path(), &id)?;
    // First writer wins; a racing second one reads the winner's id.
    match tmp.persist_noclobber(&p) {
        Ok(_) => Ok(id),
        Err(_) => Ok(std::fs::read_to_string(&p)?.trim().to_string()),
    }
}

fn fingerprint(job: &SyncJob) -> String {
    format!(
        "{}|{}|{}|{}",
        job.site.0.describe(),
        norm_prefix(&job.site.1),
        job.remote.0.describe(),
        norm_prefix(&job.remote.1)
    )
}

fn norm_prefix(p: &str) -> String {
    p.trim_matches('/').to_string()
}

pub(crate) async fn run_job(job: &SyncJob, state_dir: &Path, opts: RunOptions) -> Result<Summary> {
    let started = SystemTime::now();
    let t0 = Instant::now();
    let files = Files::new(state_dir, &job.name).map_err(|e| io_err("state folder", e))?;
    let log: Arc<dyn RunLog> = match &job.history {
        Some(l) => l.clone(),
        None => Arc::new(FileRunLog::new(state_dir)),
    };
    let Some(_lock) = JobLock::try_acquire(&files.lock)? else {
        let e = Error::new(
            ErrorKind::Conflict,
            format!("sync job {} is already running", job.name),
        );
        if !opts.dry_run {
            let rec = RunRecord::refused(&job.name, started, &e.to_string());
            record(&*log, &rec).await;
        }
        return Err(e);
    };
    if !opts.dry_run {
        note_start(job, &*log, &files, started).await;
    }
    // A run refused by another instance's lease did nothing: recorded as refused, like one
    // refused by this installation's lock.
    let mut refused = false;
    let result = run_locked(job, state_dir, &files, &opts, &mut refused).await;
    files.clear_tmp();
    let result = result.map(|mut s| {
        s.elapsed = t0.elapsed();
        s
    });
    crate::metrics::sync_run(
        &job.name,
        match &result {
            _ if opts.dry_run => "dry_run",
            Ok(s) if s.errors == 0 => "ok",
            _ => "failed",
        },
    );
    if !opts.dry_run {
        let mut rec = RunRecord::of(
            &job.name,
            started,
            SystemTime::now(),
            &result
                .as_ref()
                .map(|s| s.clone())
                .map_err(|e| e.to_string()),
        );
        if refused {
            rec.result = "refused".into();
        }
        record(&*log, &rec).await;
        let _ = std::fs::remove_file(&files.running);
    }
    result
}

/// Appends `rec` to the job's history; a history that cannot be written is logged, and does
/// not fail the run.
async fn record(log: &dyn RunLog, rec: &RunRecord) {
    if let Err(e) = log.append(rec).await {
        tracing::warn!(job = %rec.job, error = %e, "could not write the sync history");
    }
}

/// Records a run that started and never ended (its marker is still there: the process was
/// killed), then marks this one as started. Called under the job lock.
async fn note_start(job: &SyncJob, log: &dyn RunLog, files: &Files, started: SystemTime) {
    if let Ok(start) = std::fs::read_to_string(&files.running) {
        let rec = RunRecord::killed(&job.name, start.trim(), SystemTime::now());
        record(log, &rec).await;
    }
    if let Err(e) = std::fs::write(&files.running, history::stamp(started)) {
        tracing::warn!(job = %job.name, error = ?e, "could not mark the sync run as started");
    }
}

async fn run_locked(
    job: &SyncJob,
    state_dir: &Path,
    files: &Files,
    opts: &RunOptions,
    refused: &mut bool,
) -> Result<Summary> {
    files.clear_tmp();
    let filter = Filter::new(&job.include, &job.exclude)?;
    let cancel = opts
        .cancel
        .as_ref()
        .map(|c| c.child_token())
        .unwrap_or_default();
    let mut lease = None;
    let r = run_planned(
        job,
        state_dir,
        files,
        opts,
        &filter,
        cancel,
        (&mut lease, refused),
    )
    .await;
    if let Some(l) = lease {
        let lost = l.is_lost();
        l.release().await;
        if lost {
            return Err(Error::new(
                ErrorKind::Conflict,
                format!("sync job {}: lost the lease to another instance", job.name),
            ));
        }
    }
    r
}

/// Takes the job's lease on the remote, when it has one. Only a run with work to do takes it
/// (after listing and planning): a dry run writes nothing, and a run that finds both sides in
/// step changes nothing, so it needs no round trips to the remote beyond its listing. Every
/// action re-checks its target just before it acts, so a plan made a moment before the lease
/// is as safe as one made under it.
async fn take_lease(
    job: &SyncJob,
    state_dir: &Path,
    opts: &RunOptions,
    cancel: &CancellationToken,
    slot: &mut Option<HeldLease>,
) -> Result<()> {
    let Some(store) = &job.lease else {
        return Ok(());
    };
    let holder = instance_id(state_dir).map_err(|e| io_err("instance id", e))?;
    *slot = Some(
        HeldLease::acquire(
            store.clone(),
            &job.name,
            &holder,
            opts.lease_ttl.unwrap_or(DEFAULT_LEASE_TTL),
            cancel.clone(),
        )
        .await?,
    );
    Ok(())
}

/// When the job's state was last written (a run that recorded something), else now: a version
/// changed since the state was written is newer than this, whatever its mtime claims.
fn last_recorded(state: &Path) -> i64 {
    let t = std::fs::metadata(state)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| SystemTime::now());
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// A site folder that is missing (a disk not mounted, a folder renamed) fails the run before
/// anything changes; only a pull job that never ran yet may create it.
async fn check_site_folder(job: &SyncJob, ctx: &Ctx, base: &Baseline) -> Result<()> {
    let shown = format!("/{}", ctx.site_prefix);
    match ctx.site.stat(&ctx.site_prefix).await {
        Ok(e) if e.is_dir() => Ok(()),
        Ok(_) => Err(Error::new(
            ErrorKind::NotADirectory,
            format!("sync job {}: the site folder {shown} is a file", job.name),
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let first_run = base
                .iter()
                .map_err(|e| io_err("state", e))?
                .next()
                .is_none();
            if job.direction == Direction::Pull && first_run {
                Ok(())
            } else {
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "sync job {}: the site folder {shown} does not exist; nothing was changed",
                        job.name
                    ),
                ))
            }
        }
        Err(e) => Err(e),
    }
}

async fn list_side(
    b: &Arc<dyn Backend>,
    prefix: &str,
    filter: &Filter,
    tmp: &Path,
    ctx: &Ctx,
    side: Side,
    notes: Arc<WalkNotes>,
) -> Result<(Sorted<Item>, u64)> {
    let mut spool = Spool::new(tmp, DEFAULT_CAP);
    let mut files = 0u64;
    let mut pages = b.walk_noting(prefix, notes);
    loop {
        let page = tokio::select! {
            p = pages.next() => p,
            _ = ctx.cancel.cancelled() => return Err(Error::new(ErrorKind::Backend, "sync run cancelled")),
        };
        let Some(page) = page else { break };
        let page = page.map_err(|e| {
            Error::new(
                e.kind(),
                format!("cannot list {} /{prefix}: {e}", b.describe()),
            )
            .set_retryable(e.is_retryable())
        })?;
        for e in page {
            if let Some(it) = Item::from_entry(e) {
                if filter.covers(&it.path) {
                    files += u64::from(!it.is_dir());
                    spool.push(it).map_err(|e| io_err("spool", e))?;
                }
            }
        }
        let n = spool.len();
        match side {
            Side::Site => ctx.live.listed_site.store(n, Ordering::Relaxed),
            Side::Remote => ctx.live.listed_remote.store(n, Ordering::Relaxed),
        }
        ctx.live.emit(None);
    }
    Ok((spool.finish().map_err(|e| io_err("spool", e))?, files))
}

/// Stats of files in flight while [`exact_times`] completes a listing.
const STATS_IN_FLIGHT: usize = 16;

/// Gives every file of `side`'s listing the time a stat shows, where the walk does not carry it
/// (S3 with `preserve_mtime`, whose `mtime` metadata needs a HEAD per object): a file whose size
/// and ETag are those the state recorded for this side is that recorded version, and takes the
/// recorded time (read when it was recorded); only the others (new, changed, or without an
/// ETag) are stat'ed. A run where nothing changed thus costs the listing pages alone.
async fn exact_times(
    ctx: &Ctx,
    side: Side,
    listed: Sorted<Item>,
    base: &Baseline,
    tmp: &Path,
) -> Result<Sorted<Item>> {
    let b = ctx.backend(side).clone();
    if b.walk_mtime_exact() {
        return Ok(listed);
    }
    let mut records = base.iter().map_err(|e| io_err("state", e))?.peekable();
    let mut recorded = move |path: &str| -> io::Result<Option<Record>> {
        while let Some(r) = records.peek() {
            match r {
                Ok(r) if r.path.as_str() < path => {
                    records.next();
                }
                Ok(r) if r.path == path => return records.next().transpose(),
                Ok(_) => return Ok(None),
                Err(_) => return records.next().transpose(),
            }
        }
        Ok(None)
    };
    // Each listed item, with the time to give it when the state already knows its version.
    let items = listed.iter().map_err(|e| io_err("spool", e))?.map(
        |it| -> io::Result<(Item, Option<Option<i64>>)> {
            let it = it?;
            if it.is_dir() {
                return Ok((it, Some(None)));
            }
            let rec = recorded(&it.path)?;
            let half = rec.map(|r| match side {
                Side::Site => r.site,
                Side::Remote => r.remote,
            });
            let same = half.filter(|h| h.size == it.size && h.etag.is_some() && h.etag == it.etag);
            Ok((it, same.map(|h| h.mtime_ns)))
        },
    );
    let mut spool = Spool::new(tmp, DEFAULT_CAP);
    let mut stats = 0u64;
    let mut out = futures::stream::iter(items)
        .map(|x| {
            let b = b.clone();
            async move {
                let (mut it, time) = x?;
                if let Some(t) = time {
                    if !it.is_dir() {
                        it.mtime_ns = t.or(it.mtime_ns);
                    }
                    return Ok((it, false));
                }
                match b.stat_file(&ctx.key(side, &it.path)).await {
                    Ok(e) if !e.is_dir() => {
                        let now = Item::from_written(&it.path, &e);
                        // Changed again since the listing: the copy finds out and skips it.
                        if now.size == it.size && now.etag == it.etag {
                            it.mtime_ns = now.mtime_ns;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(path = %it.path, error = ?e, "sync: no metadata time; using the listing's")
                    }
                }
                Ok::<_, io::Error>((it, true))
            }
        })
    .buffered(STATS_IN_FLIGHT);
    while let Some(next) = out.next().await {
        let (it, statted) = next.map_err(|e| io_err("state", e))?;
        if ctx.cancel.is_cancelled() {
            return Err(Error::new(ErrorKind::Backend, "sync run cancelled"));
        }
        stats += u64::from(statted);
        spool.push(it).map_err(|e| io_err("spool", e))?;
    }
    tracing::debug!(side = ?side, stats, "sync: metadata times read");
    spool.finish().map_err(|e| io_err("spool", e))
}

type Items = Peekable<Merge<Item>>;

/// Walks the two listings and the baseline together, one path at a time.
struct Triple {
    site: Items,
    remote: Items,
    base: Peekable<BaselineIter>,
    /// The folders each side lists above the current path (its ancestors), outermost first.
    site_dirs: Vec<String>,
    remote_dirs: Vec<String>,
}

/// Files of one side whose name is a folder on the other (`report` and `report/part1.txt`).
///
/// A folder `P/` sorts after its name `P` and after names like `P.txt` or `P (1)`, so each
/// side's files stay "pending" only until the walk passes the keys that start with `P/`
/// (a handful at a time: only names that extend `P` with a character below `/`).
#[derive(Default)]
struct Clashes {
    pending: [std::collections::BTreeSet<String>; 2],
    /// Clashing file paths, with the side that holds the file.
    found: std::collections::BTreeMap<String, Side>,
    /// Those whose file was moved out of the way this run.
    resolved: std::collections::BTreeSet<String>,
}

impl Clashes {
    fn observe(&mut self, s: &Seen, m: &Seen) {
        let Some(key) = s.item.as_ref().or(m.item.as_ref()).map(|i| i.path.as_str()) else {
            return;
        };
        for (i, side, here, there) in [(0, Side::Site, s, m), (1, Side::Remote, m, s)] {
            let pending = &mut self.pending[i];
            if pending.is_empty() && !is_file(key, here) {
                continue;
            }
            let found = &mut self.found;
            pending.retain(|p| {
                let (kb, pb) = (key.as_bytes(), p.as_bytes());
                if there.item.is_some()
                    && kb.len() > pb.len()
                    && kb.starts_with(pb)
                    && kb[pb.len()] == b'/'
                {
                    found.insert(p.clone(), side);
                }
                // Still pending while `key` sorts below `p0` (every key under `p/` does).
                if kb.starts_with(pb) {
                    kb.len() == pb.len() || kb[pb.len()] < b'0'
                } else {
                    kb < pb
                }
            });
            if is_file(key, here) {
                pending.insert(key.to_string());
            }
        }
    }

    /// The side holding a clashing file that `key` lies below, while that file is in the way.
    fn blocking(&self, key: &str) -> Option<Side> {
        key.match_indices('/')
            .map(|(i, _)| &key[..i])
            .find_map(|p| self.found.get(p).filter(|_| !self.resolved.contains(p)))
            .copied()
    }
}

fn is_file(key: &str, seen: &Seen) -> bool {
    seen.item
        .as_ref()
        .is_some_and(|i| !i.is_dir() && i.path == key)
}

/// True when carrying out `d` writes to or deletes from `side`.
fn writes_to(d: &Decision, side: Side) -> bool {
    match d {
        Decision::Keep(_) | Decision::Skip(_) => false,
        Decision::RemoveDir { side: s, .. } => *s == side,
        Decision::Act(Action::Copy { from, .. } | Action::Mkdir { from, .. }) => {
            from.other() == side
        }
        Decision::Act(Action::Delete { side: s, .. }) => *s == side,
        Decision::Act(Action::Reconcile { .. }) => true,
    }
}

/// The path and old record of a decision that does something.
fn decision_parts(d: Decision) -> (String, Option<Record>) {
    match d {
        Decision::Keep(r) | Decision::Skip(r) => {
            (r.as_ref().map(|r| r.path.clone()).unwrap_or_default(), r)
        }
        Decision::RemoveDir { item, old, .. } => (item.path, Some(old)),
        Decision::Act(Action::Copy { item, old, .. } | Action::Mkdir { item, old, .. }) => {
            (item.path, old)
        }
        Decision::Act(Action::Delete { item, old, .. }) => (item.path, Some(old)),
        Decision::Act(Action::Reconcile { site, old, .. }) => (site.path, old),
    }
}

/// Keeps `stack` to the folders that hold `key`, then adds `item` when it is a folder.
fn track_dirs(stack: &mut Vec<String>, key: &str, item: Option<&Item>) {
    while stack.last().is_some_and(|d| !key.starts_with(d.as_str())) {
        stack.pop();
    }
    if let Some(i) = item.filter(|i| i.is_dir()) {
        stack.push(i.path.clone());
    }
}

fn head<T: Keyed>(
    it: &mut Peekable<impl Iterator<Item = io::Result<T>>>,
) -> io::Result<Option<String>> {
    match it.peek() {
        None => Ok(None),
        Some(Ok(t)) => Ok(Some(t.key().to_string())),
        Some(Err(_)) => match it.next() {
            Some(Err(e)) => Err(e),
            _ => unreachable!("peeked an error"),
        },
    }
}

/// Takes the head if it has `key` (and drops duplicates a listing might hold).
fn take<T: Keyed>(
    it: &mut Peekable<impl Iterator<Item = io::Result<T>>>,
    key: &str,
) -> io::Result<Option<T>> {
    let mut out = None;
    while head(it)?.as_deref() == Some(key) {
        out = Some(it.next().expect("peeked")?);
    }
    Ok(out)
}

impl Triple {
    fn next(&mut self) -> io::Result<Option<(Seen, Seen, Option<Record>)>> {
        let keys = [
            head(&mut self.site)?,
            head(&mut self.remote)?,
            head(&mut self.base)?,
        ];
        let Some(key) = keys.iter().flatten().min().cloned() else {
            return Ok(None);
        };
        let s = take(&mut self.site, &key)?;
        let s_leaf = !head(&mut self.site)?.is_some_and(|n| n.starts_with(&key));
        let m = take(&mut self.remote, &key)?;
        let m_leaf = !head(&mut self.remote)?.is_some_and(|n| n.starts_with(&key));
        let r = take(&mut self.base, &key)?;
        track_dirs(&mut self.site_dirs, &key, s.as_ref());
        track_dirs(&mut self.remote_dirs, &key, m.as_ref());
        Ok(Some((
            Seen {
                item: s,
                leaf: s_leaf,
            },
            Seen {
                item: m,
                leaf: m_leaf,
            },
            r,
        )))
    }
}

struct Inputs {
    site: Sorted<Item>,
    remote: Sorted<Item>,
    base: Baseline,
}

impl Inputs {
    fn triple(&self) -> io::Result<Triple> {
        Ok(Triple {
            site: self.site.iter()?.peekable(),
            remote: self.remote.iter()?.peekable(),
            base: self.base.iter()?.peekable(),
            site_dirs: Vec::new(),
            remote_dirs: Vec::new(),
        })
    }
}

async fn run_planned(
    job: &SyncJob,
    state_dir: &Path,
    files: &Files,
    opts: &RunOptions,
    filter: &Filter,
    cancel: CancellationToken,
    (lease, refused): (&mut Option<HeldLease>, &mut bool),
) -> Result<Summary> {
    let site_prefix = norm_prefix(&job.site.1);
    let remote_prefix = norm_prefix(&job.remote.1);
    let same = std::ptr::eq(
        Arc::as_ptr(&job.site.0) as *const (),
        Arc::as_ptr(&job.remote.0) as *const (),
    );
    if same
        && (site_prefix.is_empty()
            || remote_prefix.is_empty()
            || site_prefix.starts_with(&format!("{remote_prefix}/"))
            || remote_prefix.starts_with(&format!("{site_prefix}/"))
            || site_prefix == remote_prefix)
    {
        return Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!("sync job {}: the two folders overlap", job.name),
        ));
    }
    let ctx = Arc::new(Ctx {
        site: job.site.0.clone(),
        site_prefix,
        remote: job.remote.0.clone(),
        remote_prefix,
        same,
        conflict: job.conflict,
        future_mtime_as: last_recorded(&files.state),
        dry_run: opts.dry_run,
        cancel: cancel.clone(),
        live: Live {
            cb: opts.progress.clone(),
            ..Default::default()
        },
    });
    let fp = fingerprint(job);
    let base = Baseline::open(&files.state, &files.journal, &fp, &files.tmp)
        .map_err(|e| io_err("state", e))?;
    check_site_folder(job, &ctx, &base).await?;

    // 1. Both listings, in full, before anything changes.
    ctx.live.set_phase(Phase::Listing);
    ctx.live.emit(None);
    let (site_notes, remote_notes) = (Arc::<WalkNotes>::default(), Arc::<WalkNotes>::default());
    let (site, remote) = tokio::join!(
        list_side(
            &ctx.site,
            &ctx.site_prefix,
            filter,
            &files.tmp,
            &ctx,
            Side::Site,
            site_notes.clone(),
        ),
        list_side(
            &ctx.remote,
            &ctx.remote_prefix,
            filter,
            &files.tmp,
            &ctx,
            Side::Remote,
            remote_notes.clone(),
        ),
    );
    let ((site, site_files), (remote, remote_files)) = (site?, remote?);
    let site = exact_times(&ctx, Side::Site, site, &base, &files.tmp).await?;
    let remote = exact_times(&ctx, Side::Remote, remote, &base, &files.tmp).await?;
    let inputs = Inputs { site, remote, base };

    // 2. A side that lists no file while the baseline remembers files is suspicious (an
    //    unmounted disk that shows only an empty `lost+found/`, a wrong prefix, a bucket emptied
    //    by mistake): it causes no deletions. Folders do not count: they hold nothing.
    let mut base_n = 0u64;
    for r in inputs.base.iter().map_err(|e| io_err("state", e))? {
        let r = r.map_err(|e| io_err("state", e))?;
        if !r.path.ends_with('/') && filter.covers(&r.path) {
            base_n += 1;
        }
    }
    let mut messages = Vec::new();
    let rules = Rules {
        direction: job.direction,
        delete: job.delete,
        site_suspect: site_files == 0 && base_n > 0,
        remote_suspect: remote_files == 0 && base_n > 0,
    };
    for (suspect, side) in [
        (rules.site_suspect, "site folder"),
        (rules.remote_suspect, "remote prefix"),
    ] {
        if suspect {
            let m = format!(
                "the {side} listed empty although {base_n} paths were synced before: no deletions are spread from it this run"
            );
            tracing::warn!(job = %job.name, "{m}");
            messages.push(m);
        }
    }

    // 3. Totals for the progress bar: a dry pass over the decisions.
    //    The same pass counts the files each side would lose, against `max_delete`.
    let (mut files_total, mut bytes_total) = (0u64, 0u64);
    let (mut del_site, mut del_remote) = (0u64, 0u64);
    let (mut copies_to_site, mut copies_to_remote) = (0u64, 0u64);
    let mut clashes = Clashes::default();
    let mut t = inputs.triple().map_err(|e| io_err("merge", e))?;
    while let Some((s, m, r)) = t.next().map_err(|e| io_err("merge", e))? {
        clashes.observe(&s, &m);
        match plan::decide(s, m, r, &rules) {
            Decision::Act(a) => {
                files_total += 1;
                bytes_total += planned_bytes(&a);
                match &a {
                    Action::Delete { side, .. } => match side {
                        Side::Site => del_site += 1,
                        Side::Remote => del_remote += 1,
                    },
                    Action::Copy { from, .. } => match from {
                        Side::Site => copies_to_remote += 1,
                        Side::Remote => copies_to_site += 1,
                    },
                    _ => {}
                }
            }
            Decision::RemoveDir { .. } => files_total += 1,
            _ => {}
        }
    }
    drop(t);
    if !opts.force {
        for (side, deletes, listed) in [
            ("site folder", del_site, site_files),
            ("remote prefix", del_remote, remote_files),
        ] {
            if job.max_delete.exceeded(deletes, listed) {
                return Err(Error::new(
                    ErrorKind::LimitReached,
                    format!(
                        "sync job {}: refused to delete {deletes} of the {listed} files in the {side} (more than max_delete, {}); nothing was changed. If these deletions are wanted, run `bucketgate sync run {} --force`",
                        job.name, job.max_delete, job.name
                    ),
                ));
            }
        }
    }
    ctx.live.files_total.store(files_total, Ordering::Relaxed);
    ctx.live.bytes_total.store(bytes_total, Ordering::Relaxed);
    if files_total > 0 && !opts.dry_run {
        if let Err(e) = take_lease(job, state_dir, opts, &cancel, lease).await {
            *refused = e.kind() == ErrorKind::Conflict;
            return Err(e);
        }
        // Many copies into a side are worth learning what its server checks first (S3: a
        // small probe, after which each new file's copy may need no HEAD before it).
        if !ctx.same {
            for (side, n) in [
                (Side::Site, copies_to_site),
                (Side::Remote, copies_to_remote),
            ] {
                if n > 0 {
                    ctx.backend(side)
                        .prepare_copies(&ctx.key(side, ""), n)
                        .await;
                }
            }
        }
    }
    ctx.live.set_phase(Phase::Transferring);
    ctx.live.emit(None);

    // 4. The work. The journal only records actions: a run without any needs none (nor
    //    its fsyncs), an earlier run's journal is already laid over the baseline.
    let mut journal = if opts.dry_run || files_total == 0 {
        None
    } else {
        Some(
            Journal::open(
                &files.journal,
                &fp,
                inputs.base.next_gen - 1,
                inputs.base.journal_valid,
            )
            .map_err(|e| io_err("journal", e))?,
        )
    };
    let mut acc = Acc {
        new_state: Spool::new(&files.tmp, DEFAULT_CAP),
        journal: journal.as_mut(),
        counts: Counts::default(),
        messages,
        ctx: ctx.clone(),
    };
    // What the listings passed over is not synced: each is counted and reported as skipped, so
    // that a run never says "ok, nothing skipped" while a file of either side was left out.
    for (side, notes) in [("site", &site_notes), ("remote", &remote_notes)] {
        for (name, why) in notes.take() {
            if !filter.covers(&name) {
                continue;
            }
            let shown = if why == passed_over::HIDDEN_BY_FOLDER {
                name
            } else {
                format!("{name:?}")
            };
            acc.passed_over(shown, format!("not synced: on the {side}, {why}"));
        }
    }
    let concurrency = if opts.concurrency == 0 {
        DEFAULT_CONCURRENCY
    } else {
        opts.concurrency
    };
    let mut tasks: JoinSet<Outcome> = JoinSet::new();
    let mut rmdirs = Vec::new();
    let mut t = inputs.triple().map_err(|e| io_err("merge", e))?;
    let cancelled = loop {
        if cancel.is_cancelled() {
            break true;
        }
        let Some((s, m, r)) = t.next().map_err(|e| io_err("merge", e))? else {
            break false;
        };
        // A file on one side where the other has a folder of that name (rare: the map is
        // usually empty, and then this costs nothing).
        let mut blocked = None;
        if !clashes.found.is_empty() {
            let key = s
                .item
                .as_ref()
                .or(m.item.as_ref())
                .map(|i| i.path.clone())
                .or_else(|| r.as_ref().map(|r| r.path.clone()))
                .unwrap_or_default();
            if let Some(&file_side) = clashes.found.get(&key) {
                let (here, there) = match file_side {
                    Side::Site => (s.item, m.item),
                    Side::Remote => (m.item, s.item),
                };
                let o = match here {
                    Some(item) if job.direction == Direction::TwoWay && there.is_none() => {
                        let o = exec::clash(&ctx, file_side, item, r).await;
                        if o.counts.errors == 0 && o.counts.skipped == 0 {
                            clashes.resolved.insert(key);
                        }
                        o
                    }
                    _ => exec::Outcome::skipped(
                        r,
                        &key,
                        "a file on one side, a folder of that name on the other: left alone \
                         (a one-way job replaces neither; rename one of them)",
                    ),
                };
                acc.absorb(o)?;
                continue;
            }
            blocked = clashes.blocking(&key);
        }
        let mut decision = plan::decide(s, m, r, &rules);
        if let Some(file_side) = blocked {
            // Inside a folder whose name is still a file on `file_side`: nothing is written
            // there until the file is out of the way.
            if writes_to(&decision, file_side) {
                let (path, old) = decision_parts(decision);
                acc.absorb(exec::Outcome::skipped(
                    old,
                    &path,
                    "its folder's name is a file on the other side",
                ))?;
                continue;
            }
        }
        if let Decision::Act(Action::Delete {
            side,
            item,
            keep_parent,
            ..
        }) = &mut decision
        {
            // A file deleted on one side whose folder that side keeps: the folder stays here.
            let other = match side {
                Side::Site => &t.remote_dirs,
                Side::Remote => &t.site_dirs,
            };
            if let Some((parent, _)) = item.path.rsplit_once('/') {
                *keep_parent = other.last().is_some_and(|d| d == &format!("{parent}/"));
            }
        }
        match decision {
            Decision::Keep(r) => acc.keep(r)?,
            Decision::Skip(r) => {
                acc.counts.skipped += 1;
                acc.keep(r)?;
            }
            Decision::RemoveDir { side, item, old } => rmdirs.push((side, item, old)),
            Decision::Act(a) => {
                while tasks.len() >= concurrency {
                    if !acc.join_one(&mut tasks, &cancel).await? {
                        break;
                    }
                }
                tasks.spawn(exec::run_action(ctx.clone(), a));
            }
        }
    };
    drop(t);
    if !cancelled {
        while !tasks.is_empty() {
            if !acc.join_one(&mut tasks, &cancel).await? {
                break;
            }
        }
    }
    if cancel.is_cancelled() {
        // Dropping the tasks aborts their uploads; what they verified is in the journal.
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if let Some(j) = acc.journal.as_mut() {
            let _ = j.sync();
        }
        return Err(Error::new(ErrorKind::Backend, "sync run cancelled"));
    }
    // Folders last, deepest first, once the files in them are gone.
    rmdirs.sort_by(|a, b| b.1.path.cmp(&a.1.path));
    for (side, item, old) in rmdirs {
        let o = exec::remove_dir(&ctx, side, item, old).await;
        acc.absorb(o)?;
    }

    // 5. The new state, atomically; then the journal is no longer needed.
    let Acc {
        new_state,
        counts,
        messages,
        ..
    } = acc;
    if !opts.dry_run {
        if let Some(j) = journal.as_mut() {
            j.sync().map_err(|e| io_err("journal", e))?;
        }
        drop(journal);
        let sorted = new_state.finish().map_err(|e| io_err("state", e))?;
        // A run that changed nothing usually records nothing new: the state on disk stays
        // (with no journal beside it), which spares two fsyncs per quiet run.
        let same = files_total == 0
            && !files.journal.exists()
            && inputs
                .base
                .state_holds(sorted.iter().map_err(|e| io_err("state", e))?)
                .map_err(|e| io_err("state", e))?;
        if !same {
            let iter = sorted.iter().map_err(|e| io_err("state", e))?;
            state::write_state(&files.state, &fp, inputs.base.next_gen, iter)
                .map_err(|e| io_err("state", e))?;
            state::remove_durably(&files.journal).map_err(|e| io_err("journal", e))?;
        }
    }
    // The totals were estimates (a comparison may copy nothing, a conflict two files, a failed
    // copy streams bytes it then throws away): the last report says what the summary says.
    ctx.live.bytes_total.store(counts.bytes, Ordering::Relaxed);
    ctx.live.bytes_done.store(counts.bytes, Ordering::Relaxed);
    ctx.live.set_phase(Phase::Done);
    ctx.live.emit(None);
    Ok(Summary {
        copied_to_remote: counts.to_remote,
        copied_to_site: counts.to_site,
        deleted_remote: counts.del_remote,
        deleted_site: counts.del_site,
        conflicts: counts.conflicts,
        skipped: counts.skipped,
        errors: counts.errors,
        bytes: counts.bytes,
        elapsed: Duration::ZERO,
        messages,
        dry_run: opts.dry_run,
    })
}

/// Gathers the outcomes of a run.
struct Acc<'a> {
    new_state: Spool<Record>,
    journal: Option<&'a mut Journal>,
    counts: Counts,
    messages: Vec<String>,
    ctx: Arc<Ctx>,
}

impl Acc<'_> {
    fn keep(&mut self, r: Option<Record>) -> Result<()> {
        if let Some(r) = r {
            self.new_state.push(r).map_err(|e| io_err("state", e))?;
        }
        Ok(())
    }

    /// A name a listing passed over: counted and reported as skipped. It is not one of the
    /// run's paths (the progress bar's files), and the state does not hold it.
    fn passed_over(&mut self, path: String, why: String) {
        self.counts.skipped += 1;
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(format!("{path}: {why}"));
        }
        self.ctx.live.emit(Some(Event {
            kind: EventKind::Skipped,
            path,
            bytes: 0,
            message: Some(why),
        }));
    }

    fn absorb(&mut self, o: Outcome) -> Result<()> {
        for r in o.keep {
            self.keep(Some(r))?;
        }
        for r in o.put {
            if let Some(j) = self.journal.as_mut() {
                j.append(&JEntry::Put(r.clone()))
                    .map_err(|e| io_err("journal", e))?;
            }
            self.keep(Some(r))?;
        }
        for p in o.del {
            if let Some(j) = self.journal.as_mut() {
                j.append(&JEntry::Del(p))
                    .map_err(|e| io_err("journal", e))?;
            }
        }
        self.counts.add(&o.counts);
        // The bar's total follows what the path really took.
        let total = &self.ctx.live.bytes_total;
        if o.counts.bytes >= o.planned {
            total.fetch_add(o.counts.bytes - o.planned, Ordering::Relaxed);
        } else {
            total.fetch_sub(o.planned - o.counts.bytes, Ordering::Relaxed);
        }
        self.ctx.live.files_done.fetch_add(1, Ordering::Relaxed);
        if o.events.is_empty() {
            self.ctx.live.emit(None);
        }
        for ev in o.events {
            if matches!(ev.kind, EventKind::Error | EventKind::Skipped)
                && self.messages.len() < MAX_MESSAGES
            {
                self.messages.push(format!(
                    "{}: {}",
                    ev.path,
                    ev.message.as_deref().unwrap_or("")
                ));
            }
            self.ctx.live.emit(Some(ev));
        }
        Ok(())
    }

    /// Waits for one task; `false` when the run was cancelled meanwhile.
    async fn join_one(
        &mut self,
        tasks: &mut JoinSet<Outcome>,
        cancel: &CancellationToken,
    ) -> Result<bool> {
        let joined = tokio::select! {
            j = tasks.join_next() => j,
            _ = cancel.cancelled() => return Ok(false),
        };
        match joined {
            Some(Ok(o)) => self.absorb(o)?,
            Some(Err(e)) => {
                // A panicked task's path is simply not recorded: the next run looks again.
                tracing::error!(error = ?e, "sync task failed");
                self.counts.errors += 1;
                if self.messages.len() < MAX_MESSAGES {
                    self.messages.push(format!("internal error: {e}"));
                }
            }
            None => {}
        }
        Ok(true)
    }
}
