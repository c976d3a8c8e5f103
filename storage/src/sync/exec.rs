//! Carrying out one decision: copies, deletions, folder creation and removal, comparisons and
//! conflict resolution. Each returns an [`Outcome`]: the records to keep, the pairs newly
//! verified, the counts, and never a half-recorded state.

use super::model::{md5_like, Item, Record};
use super::names;
use super::plan::{Action, Side, Winner};
use super::{ConflictPolicy, Event, EventKind, Phase, Progress, ProgressFn};
use crate::backend::{Backend, CreateOptions, Entry, HashKind, SourceHash};
use crate::error::{Error, ErrorKind, Result};
use crate::transfer::pump;
use bytes::{Buf, Bytes};
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// Two mtimes this close are the same time (copies keep the mtime; some stores round it).
const MTIME_SLACK_NS: i64 = 1_000_000;

/// Progress shared by the tasks of a run.
#[derive(Default)]
pub(crate) struct Live {
    pub cb: Option<ProgressFn>,
    pub phase: AtomicU8,
    pub listed_site: AtomicU64,
    pub listed_remote: AtomicU64,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
}

impl Live {
    pub(crate) fn set_phase(&self, p: Phase) {
        self.phase.store(p as u8, Ordering::Relaxed);
    }

    pub(crate) fn emit(&self, event: Option<Event>) {
        let Some(cb) = &self.cb else { return };
        let phase = match self.phase.load(Ordering::Relaxed) {
            x if x == Phase::Listing as u8 => Phase::Listing,
            x if x == Phase::Transferring as u8 => Phase::Transferring,
            _ => Phase::Done,
        };
        cb(Progress {
            phase,
            listed_site: self.listed_site.load(Ordering::Relaxed),
            listed_remote: self.listed_remote.load(Ordering::Relaxed),
            files_total: self.files_total.load(Ordering::Relaxed),
            files_done: self.files_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total.load(Ordering::Relaxed),
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            event,
        });
    }

    fn add_bytes(&self, n: u64) {
        self.bytes_done.fetch_add(n, Ordering::Relaxed);
        self.emit(None);
    }
}

/// What the tasks of one run share.
pub(crate) struct Ctx {
    pub site: Arc<dyn Backend>,
    pub site_prefix: String,
    pub remote: Arc<dyn Backend>,
    pub remote_prefix: String,
    /// Both sides are one backend object: copy server-side.
    pub same: bool,
    pub conflict: ConflictPolicy,
    /// Conflicts: what a modification time in the future counts as (ns since the epoch).
    pub future_mtime_as: i64,
    pub dry_run: bool,
    pub cancel: CancellationToken,
    pub live: Live,
}

impl Ctx {
    pub(crate) fn backend(&self, s: Side) -> &Arc<dyn Backend> {
        match s {
            Side::Site => &self.site,
            Side::Remote => &self.remote,
        }
    }

    /// The backend key of relative path `rel` on side `s` (folders without their slash).
    pub(crate) fn key(&self, s: Side, rel: &str) -> String {
        let prefix = match s {
            Side::Site => &self.site_prefix,
            Side::Remote => &self.remote_prefix,
        };
        let rel = rel.trim_end_matches('/');
        if prefix.is_empty() {
            rel.to_string()
        } else if rel.is_empty() {
            prefix.clone()
        } else {
            format!("{prefix}/{rel}")
        }
    }
}

/// Counters of one or more paths.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Counts {
    pub to_remote: u64,
    pub to_site: u64,
    pub del_remote: u64,
    pub del_site: u64,
    pub conflicts: u64,
    pub skipped: u64,
    pub errors: u64,
    pub bytes: u64,
}

impl Counts {
    pub(crate) fn add(&mut self, o: &Counts) {
        self.to_remote += o.to_remote;
        self.to_site += o.to_site;
        self.del_remote += o.del_remote;
        self.del_site += o.del_site;
        self.conflicts += o.conflicts;
        self.skipped += o.skipped;
        self.errors += o.errors;
        self.bytes += o.bytes;
    }

    fn copied(&mut self, to: Side, bytes: u64) {
        match to {
            Side::Remote => self.to_remote += 1,
            Side::Site => self.to_site += 1,
        }
        self.bytes += bytes;
    }
}

/// The result of one action.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Records carried over unchanged (already in the baseline): new state only.
    pub keep: Vec<Record>,
    /// Pairs verified by this action: new state and journal.
    pub put: Vec<Record>,
    /// Paths now absent from both sides: journal.
    pub del: Vec<String>,
    pub counts: Counts,
    /// Events to report.
    pub events: Vec<Event>,
    /// The bytes the progress total counted for this action before it ran.
    pub planned: u64,
}

impl Outcome {
    fn event(&mut self, kind: EventKind, path: &str, bytes: u64, message: Option<String>) {
        self.events.push(Event {
            kind,
            path: path.to_string(),
            bytes,
            message,
        });
    }

    pub(crate) fn skipped(old: Option<Record>, path: &str, why: &str) -> Outcome {
        let mut o = Outcome {
            keep: old.into_iter().collect(),
            ..Default::default()
        };
        o.counts.skipped = 1;
        o.event(EventKind::Skipped, path, 0, Some(why.to_string()));
        o
    }

    fn copied(&mut self, to: Side, path: &str, bytes: u64) {
        self.counts.copied(to, bytes);
        let kind = match to {
            Side::Remote => EventKind::CopiedToRemote,
            Side::Site => EventKind::CopiedToSite,
        };
        self.event(kind, path, bytes, None);
    }
}

/// The record of a pair whose `side` half is `a` and other half `b`.
fn pair(side: Side, a: &Item, b: &Item) -> Record {
    match side {
        Side::Site => Record::pair(a, b),
        Side::Remote => {
            let mut r = Record::pair(b, a);
            r.path = a.path.clone();
            r
        }
    }
}

fn action_path(a: &Action) -> &str {
    match a {
        Action::Copy { item, .. } | Action::Delete { item, .. } | Action::Mkdir { item, .. } => {
            &item.path
        }
        Action::Reconcile { site, .. } => &site.path,
    }
}

fn action_old(a: &Action) -> Option<Record> {
    match a {
        Action::Copy { old, .. } | Action::Mkdir { old, .. } | Action::Reconcile { old, .. } => {
            old.clone()
        }
        Action::Delete { old, .. } => Some(old.clone()),
    }
}

/// The bytes an action is expected to copy, for the progress total (before it runs).
pub(crate) fn planned_bytes(a: &Action) -> u64 {
    match a {
        Action::Copy { item, .. } => item.size,
        Action::Reconcile { site, remote, .. } => site.size.max(remote.size),
        _ => 0,
    }
}

/// Carries out `a`. A failure keeps the old record, so the next run sees the same situation.
pub(crate) async fn run_action(ctx: Arc<Ctx>, a: Action) -> Outcome {
    let path = action_path(&a).to_string();
    let old = action_old(&a);
    let planned = planned_bytes(&a);
    let r = match a {
        Action::Copy {
            from,
            item,
            target,
            old,
        } => copy(&ctx, from, item, target, old).await,
        Action::Delete {
            side,
            item,
            old,
            keep_parent,
        } => delete(&ctx, side, item, old, keep_parent).await,
        Action::Mkdir { from, item, old } => mkdir(&ctx, from, item, old).await,
        Action::Reconcile {
            site,
            remote,
            old,
            winner,
        } => reconcile(&ctx, site, remote, old, winner).await,
    };
    let mut o = match r {
        Ok(o) => o,
        // A copy that lost a race at its commit (the destination changed or appeared while it
        // ran) or read a source that changed under it left everything as it was: the next run
        // sees both versions and decides by the job's policy.
        Err(e) if matches!(e.kind(), ErrorKind::Conflict | ErrorKind::AlreadyExists) => {
            tracing::info!(path = %path, error = %e, "sync: changed during the copy; left for the next run");
            Outcome::skipped(
                old,
                &path,
                &format!(
                    "changed during the copy, left for the next run: {}",
                    e.message()
                ),
            )
        }
        Err(e) => failed(old, &path, &e),
    };
    o.planned = planned;
    o
}

fn failed(old: Option<Record>, path: &str, e: &Error) -> Outcome {
    tracing::warn!(path = %path, error = ?e, "sync: path failed");
    let mut o = Outcome {
        keep: old.into_iter().collect(),
        ..Default::default()
    };
    o.counts.errors = 1;
    o.event(EventKind::Error, path, 0, Some(e.to_string()));
    o
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Backend, "sync run cancelled")
}

/// True when `key` on `side` still is what was listed (`None`: nothing). A target that vanished
/// since counts as unchanged: overwriting or deleting it then loses nothing.
async fn unchanged(ctx: &Ctx, side: Side, key: &str, listed: Option<&Item>) -> Result<bool> {
    let b = ctx.backend(side);
    // A file (or nothing) was listed: one HEAD tells whether a file changed or appeared.
    let now = if listed.is_some_and(|l| l.is_dir()) {
        b.stat(key).await
    } else {
        b.stat_file(key).await
    };
    match now {
        Ok(e) => Ok(match listed {
            None => false,
            Some(l) => {
                let now = Item::from_written(&l.path, &e);
                e.is_dir() == l.is_dir() && l.same_version(&now)
            }
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
        Err(e) => Err(e),
    }
}

/// Signed nanoseconds since the epoch: times before 1970 stay themselves, not 0.
fn signed_ns(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
}

fn close(a: Option<SystemTime>, b: Option<SystemTime>) -> bool {
    let ns = signed_ns;
    match (a, b) {
        (Some(a), Some(b)) => (ns(a) - ns(b)).abs() <= MTIME_SLACK_NS as i128,
        _ => false,
    }
}

/// A server-side copy within one backend, keeping the source's mtime.
async fn server_copy(b: &Arc<dyn Backend>, from: &str, to: &str, item: &Item) -> Result<Entry> {
    match b.copy_file(from, to).await {
        Ok(()) => {}
        // A local folder needs the target's parent first (object storage never does).
        Err(e) if e.kind() == ErrorKind::NotFound && to.contains('/') => {
            b.mkdir(to.rsplit_once('/').map(|(p, _)| p).unwrap_or(""))
                .await?;
            b.copy_file(from, to).await?;
        }
        Err(e) => return Err(e),
    }
    let mut e = b.stat(to).await?;
    if let Some(t) = item.mtime() {
        if !close(e.mtime, Some(t)) {
            b.set_mtime(to, t).await?;
            e = b.stat(to).await?;
        }
    }
    Ok(e)
}

/// Copies `item` from side `from` (key `src_key`) to `dst_key` on side `to`, with its mtime;
/// returns what was written. The loop is [`pump`], as in [`crate::transfer::stream_copy`] (a
/// rename across backends); that function's head says why this one is not built on it.
///
/// The copy commits only if the destination is still `target` (what the run listed there;
/// `None`: nothing): a file saved or uploaded there while the copy ran is never replaced, and
/// the copy fails with `Conflict` or `AlreadyExists` instead.
async fn transfer(
    ctx: &Ctx,
    from: Side,
    src_key: &str,
    item: &Item,
    to: Side,
    dst_key: &str,
    target: Option<&Item>,
) -> Result<Entry> {
    let src = ctx.backend(from);
    let dst = ctx.backend(to);
    if ctx.same {
        let e = server_copy(dst, src_key, dst_key, item).await?;
        ctx.live.add_bytes(item.size);
        return Ok(e);
    }
    // Where the destination takes the copy as one checked request when it knows the bytes'
    // checksum before they go (S3 on a server that refuses a body that does not match its
    // MD5 or CRC32C), the source is hashed first. The server then also refuses a source that
    // changed between its hashing and its upload, even one rewritten in place with its time
    // set back (which the identity check below cannot see).
    let hash = match dst.wants_source_hash(dst_key, item.size).await {
        Some(kind) if item.size > 0 => Some(source_hash(src, src_key, item, kind).await?),
        _ => None,
    };
    let mut stream = if item.size > 0 {
        // Only the version listed: an object replaced since is not copied as a mix of both.
        Some(
            src.read_version(src_key, 0, Some(item.size), item.etag.as_deref())
                .await?,
        )
    } else {
        None
    };
    let up = dst
        .create(
            dst_key,
            CreateOptions {
                size_hint: Some(item.size),
                mtime: item.mtime(),
                // A failed copy is sent again from the source (see `copy`).
                resendable: true,
                if_absent: target.is_none(),
                if_match: target.filter(|t| !t.is_dir()).and_then(|t| t.etag.clone()),
                source_hash: hash,
                ..Default::default()
            },
        )
        .await?;
    let (up, n) = match stream.as_mut() {
        Some(stream) => {
            let cancel = Some((&ctx.cancel, cancelled as fn() -> Error));
            pump(stream, up, cancel, |len| ctx.live.add_bytes(len)).await?
        }
        None => (up, 0),
    };
    if n != item.size {
        up.abort().await;
        // Not worth trying again at once: the next run sees the new size.
        return Err(Error::new(
            ErrorKind::Conflict,
            "the source changed size during the copy",
        )
        .with_context("sync", format!("/{src_key}")));
    }
    if item.size > 0 {
        // A site file rewritten in place while it was read would be stored as a mix of its
        // versions, and an object replaced meanwhile is not caught by servers that ignore
        // `If-Match` on a GET (s3s-fs): the source's identity (size, mtime, inode on disk; the
        // ETag on S3) must still be what was listed after the last byte was read, before the
        // copy commits. A stat on disk; one HEAD per copied object on S3.
        let now = src.stat_file(src_key).await;
        let same = match &now {
            Ok(e) => !e.is_dir() && item.same_version(&Item::from_written(&item.path, e)),
            Err(_) => false,
        };
        if !same {
            up.abort().await;
            return Err(source_changed(src_key));
        }
    }
    let mut e = match up.finish().await {
        Ok(e) => e,
        Err(e) => return Err(why_refused(src, src_key, item, hash, e).await),
    };
    if e.etag.is_none() {
        // The record needs the same stamp the next listing will show.
        e = dst.stat(dst_key).await?;
    }
    Ok(e)
}

/// A checksum being computed over a source.
enum Hashing {
    Md5(Box<md5::Md5>),
    Crc32c(u32),
}

impl Hashing {
    fn update(&mut self, b: &[u8]) {
        use md5::Digest;
        match self {
            Hashing::Md5(h) => h.update(b),
            Hashing::Crc32c(c) => *c = crc32c::crc32c_append(*c, b),
        }
    }

    fn finish(self) -> SourceHash {
        use md5::Digest;
        match self {
            Hashing::Md5(h) => SourceHash::Md5(h.finalize().into()),
            Hashing::Crc32c(c) => SourceHash::Crc32c(c),
        }
    }
}

/// The checksum (`kind`) of the version of `item` listed at `key` on `src`: an MD5 ETag where
/// that is one, else read in full, that version only (a version replaced since fails with
/// `Conflict`).
async fn source_hash(
    src: &Arc<dyn Backend>,
    key: &str,
    item: &Item,
    kind: HashKind,
) -> Result<SourceHash> {
    if let (HashKind::Md5, Some(t)) = (kind, item.etag.as_deref()) {
        if md5_like(t) && src.etags_are_md5() {
            let mut d = [0u8; 16];
            if hex::decode_to_slice(t, &mut d).is_ok() {
                return Ok(SourceHash::Md5(d));
            }
        }
    }
    // Hashed off the async threads, some MiB at a time: MD5 costs about 2 s of CPU per GiB,
    // which would otherwise hold up the transfers running beside this one. (At most one batch
    // per copy in flight, outside the memory budget: 4 MiB × the job's transfers.)
    const BATCH: usize = 4 * 1024 * 1024;
    let mut h = match kind {
        HashKind::Md5 => Hashing::Md5(Box::default()),
        HashKind::Crc32c => Hashing::Crc32c(0),
    };
    let mut n = 0u64;
    let mut st = src
        .read_version(key, 0, Some(item.size), item.etag.as_deref())
        .await?;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut held = 0usize;
    loop {
        let next = st.next().await.transpose()?;
        let end = next.is_none();
        if let Some(c) = next {
            n += c.len() as u64;
            held += c.len();
            batch.push(c);
        }
        if held >= BATCH || (end && held > 0) {
            let chunks = std::mem::take(&mut batch);
            held = 0;
            h = tokio::task::spawn_blocking(move || {
                for c in &chunks {
                    h.update(c);
                }
                h
            })
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Backend, "hashing the source failed").with_source(e)
            })?;
        }
        if end {
            break;
        }
    }
    if n != item.size {
        return Err(source_changed(key));
    }
    Ok(h.finish())
}

fn source_changed(key: &str) -> Error {
    Error::new(
        ErrorKind::Conflict,
        "the source changed while it was copied; it is copied again by the next run",
    )
    .with_context("sync", format!("/{key}"))
}

/// A copy that carried its source's checksum and was refused: if the source no longer has
/// that checksum (it changed after it was hashed), the copy is skipped as changed, like any
/// source changed during a copy; otherwise the bytes changed on the way (or the request failed
/// for another reason), and the error stands (a changed byte is retryable: `copy` sends again).
async fn why_refused(
    src: &Arc<dyn Backend>,
    key: &str,
    item: &Item,
    sent: Option<SourceHash>,
    e: Error,
) -> Error {
    let Some(sent) = sent else { return e };
    if matches!(e.kind(), ErrorKind::Conflict | ErrorKind::AlreadyExists) {
        return e;
    }
    match source_hash(src, key, item, sent.kind()).await {
        Ok(now) if now == sent => e,
        Ok(_) => source_changed(key).with_source(e),
        Err(r) if r.kind() == ErrorKind::Conflict => source_changed(key).with_source(e),
        Err(_) => e,
    }
}

/// Tries of one copy within a run (each failure a retryable one); the next run tries again.
const COPY_ATTEMPTS: u32 = 3;
const COPY_RETRY_DELAY: Duration = Duration::from_millis(500);

async fn copy(
    ctx: &Ctx,
    from: Side,
    item: Item,
    target: Option<Item>,
    old: Option<Record>,
) -> Result<Outcome> {
    let to = from.other();
    let dst_key = ctx.key(to, &item.path);
    // Never overwrite what changed at the target after it was listed: next run decides again.
    // An upload commits only if the name is still free, or the file still has the version tag
    // listed; where the destination checks that at the commit itself (a server that enforces
    // the condition, or the backend's own check just before), a check here would be one more
    // request per file (a HEAD on S3) for nothing. A server-side copy carries no condition.
    let conditioned = !ctx.same
        && target
            .as_ref()
            .is_none_or(|t| !t.is_dir() && t.etag.is_some());
    let checked_at_commit = conditioned && ctx.backend(to).checks_conditions_at_commit();
    if !checked_at_commit && !unchanged(ctx, to, &dst_key, target.as_ref()).await? {
        return Ok(Outcome::skipped(
            old,
            &item.path,
            "changed at the destination during the run",
        ));
    }
    let mut o = Outcome::default();
    if ctx.dry_run {
        o.keep.extend(old);
        o.copied(to, &item.path, item.size);
        return Ok(o);
    }
    let src_key = ctx.key(from, &item.path);
    let mut attempt = 1;
    let written = loop {
        match transfer(ctx, from, &src_key, &item, to, &dst_key, target.as_ref()).await {
            Ok(w) => break w,
            // The S3 client retries each request it can replay; a streamed upload it cannot,
            // so a copy that failed for a passing reason is sent again from the source here.
            Err(e) if e.is_retryable() && attempt < COPY_ATTEMPTS => {
                tracing::debug!(path = %item.path, attempt, error = ?e, "sync: copying again");
                tokio::select! {
                    _ = tokio::time::sleep(COPY_RETRY_DELAY * attempt) => {}
                    _ = ctx.cancel.cancelled() => return Err(cancelled()),
                }
                // The failed try wrote nothing; somebody else may have, meanwhile.
                if !unchanged(ctx, to, &dst_key, target.as_ref()).await? {
                    return Ok(Outcome::skipped(
                        old,
                        &item.path,
                        "changed at the destination during the run",
                    ));
                }
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    };
    let w = Item::from_written(&item.path, &written);
    if w.size != item.size {
        return Err(
            Error::new(ErrorKind::Backend, "the copy has the wrong size")
                .with_context("sync", format!("/{dst_key}")),
        );
    }
    // The source's half is what was listed: if it changed while being read, the next run sees
    // it changed and copies again.
    o.put.push(pair(from, &item, &w));
    o.copied(to, &item.path, item.size);
    Ok(o)
}

async fn delete(
    ctx: &Ctx,
    side: Side,
    item: Item,
    old: Record,
    keep_parent: bool,
) -> Result<Outcome> {
    let key = ctx.key(side, &item.path);
    if !unchanged(ctx, side, &key, Some(&item)).await? {
        // Changed after listing: the next run sees "changed here, deleted there" and keeps it.
        return Ok(Outcome::skipped(
            Some(old),
            &item.path,
            "changed during the run",
        ));
    }
    let mut o = Outcome::default();
    if !ctx.dry_run {
        match ctx.backend(side).remove_file(&key).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if keep_parent {
            // The folder stays, as it does on the other side: on object storage the last
            // file's key was all that made it exist.
            // A folder that still holds something needs no marker.
            if let Some((parent, _)) = key.rsplit_once('/') {
                let b = ctx.backend(side);
                match b.stat(parent).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => match b.mkdir(parent).await {
                        Ok(()) => {}
                        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                        Err(e) => return Err(e),
                    },
                    Err(e) => return Err(e),
                }
            }
        }
        o.del.push(item.path.clone());
    } else {
        o.keep.push(old);
    }
    deleted(&mut o, side, &item.path);
    Ok(o)
}

fn deleted(o: &mut Outcome, side: Side, path: &str) {
    let kind = match side {
        Side::Site => {
            o.counts.del_site += 1;
            EventKind::DeletedSite
        }
        Side::Remote => {
            o.counts.del_remote += 1;
            EventKind::DeletedRemote
        }
    };
    o.event(kind, path, 0, None);
}

async fn mkdir(ctx: &Ctx, from: Side, item: Item, old: Option<Record>) -> Result<Outcome> {
    let to = from.other();
    let mut o = Outcome::default();
    if ctx.dry_run {
        o.keep.extend(old);
    } else {
        ctx.backend(to).mkdir(&ctx.key(to, &item.path)).await?;
        o.put.push(Record::pair(&item, &item));
    }
    o.copied(to, &item.path, 0);
    Ok(o)
}

/// Removes folder `item` from `side` (the other side removed it). A folder that still holds
/// something (files the other side never had) stays.
pub(crate) async fn remove_dir(ctx: &Ctx, side: Side, item: Item, old: Record) -> Outcome {
    let mut o = Outcome::default();
    if ctx.dry_run {
        o.keep.push(old);
        deleted(&mut o, side, &item.path);
        return o;
    }
    match ctx
        .backend(side)
        .remove_dir(&ctx.key(side, &item.path))
        .await
    {
        Ok(()) => {
            o.del.push(item.path.clone());
            deleted(&mut o, side, &item.path);
            o
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            o.del.push(item.path.clone());
            o
        }
        Err(e) if e.kind() == ErrorKind::DirectoryNotEmpty => {
            o.keep.push(old);
            o
        }
        Err(e) => failed(Some(old), &item.path, &e),
    }
}

/// The MD5 of `item`'s content on `side`, when it is known without reading: its ETag is one,
/// or the side is unchanged since `old` recorded it beside an MD5 ETag of the other side (a
/// pair is only recorded when both sides hold the same bytes). An ETag counts only where its
/// backend's ETags are MD5s (not with SSE-KMS or SSE-C).
fn known_md5(ctx: &Ctx, side: Side, item: &Item, old: Option<&Record>) -> Option<String> {
    let other = match side {
        Side::Site => Side::Remote,
        Side::Remote => Side::Site,
    };
    if let Some(e) = item
        .etag
        .as_ref()
        .filter(|e| md5_like(e) && ctx.backend(side).etags_are_md5())
    {
        return Some(e.to_ascii_lowercase());
    }
    let old = old?;
    let (mine, theirs) = match side {
        Side::Site => (&old.site, &old.remote),
        Side::Remote => (&old.remote, &old.site),
    };
    if !mine.matches(item) {
        return None;
    }
    theirs
        .etag
        .as_ref()
        .filter(|e| md5_like(e) && ctx.backend(other).etags_are_md5())
        .map(|e| e.to_ascii_lowercase())
}

/// The MD5 of what `key` on `side` holds, read in full.
async fn read_md5(ctx: &Ctx, side: Side, key: &str, size: u64) -> Result<String> {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    let mut st = ctx.backend(side).read(key, 0, Some(size)).await?;
    while let Some(c) = st.next().await {
        h.update(&c?);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// True when the two sides hold the same bytes: sizes; then MD5s where one side's is known
/// (an MD5 ETag, or one carried by the record), the other side's read and hashed when not
/// known; then, where no MD5 exists (local to local, multipart ETags), equal mtimes (copies
/// keep them); else reading both.
async fn same_content(ctx: &Ctx, s: &Item, m: &Item, old: Option<&Record>) -> Result<bool> {
    if s.size != m.size {
        return Ok(false);
    }
    if s.is_dir() || s.size == 0 {
        return Ok(true);
    }
    match (
        known_md5(ctx, Side::Site, s, old),
        known_md5(ctx, Side::Remote, m, old),
    ) {
        (Some(a), Some(b)) => return Ok(a == b),
        (Some(a), None) => {
            let b = read_md5(ctx, Side::Remote, &ctx.key(Side::Remote, &m.path), m.size).await?;
            return Ok(a == b);
        }
        (None, Some(b)) => {
            let a = read_md5(ctx, Side::Site, &ctx.key(Side::Site, &s.path), s.size).await?;
            return Ok(a == b);
        }
        (None, None) => {}
    }
    if let (Some(a), Some(b)) = (s.mtime_ns, m.mtime_ns) {
        if (a - b).abs() <= MTIME_SLACK_NS {
            return Ok(true);
        }
    }
    let a = ctx
        .site
        .read(&ctx.key(Side::Site, &s.path), 0, Some(s.size))
        .await?;
    let b = ctx
        .remote
        .read(&ctx.key(Side::Remote, &m.path), 0, Some(m.size))
        .await?;
    streams_equal(a, b).await
}

/// Compares two byte streams whatever their chunk boundaries.
pub(crate) async fn streams_equal(
    mut a: crate::backend::ByteStream,
    mut b: crate::backend::ByteStream,
) -> Result<bool> {
    let (mut ab, mut bb) = (Bytes::new(), Bytes::new());
    let (mut a_end, mut b_end) = (false, false);
    loop {
        while ab.is_empty() && !a_end {
            match a.next().await {
                Some(c) => ab = c?,
                None => a_end = true,
            }
        }
        while bb.is_empty() && !b_end {
            match b.next().await {
                Some(c) => bb = c?,
                None => b_end = true,
            }
        }
        if ab.is_empty() || bb.is_empty() {
            return Ok(ab.is_empty() && bb.is_empty());
        }
        let n = ab.len().min(bb.len());
        if ab[..n] != bb[..n] {
            return Ok(false);
        }
        ab.advance(n);
        bb.advance(n);
    }
}

async fn reconcile(
    ctx: &Ctx,
    s: Item,
    m: Item,
    old: Option<Record>,
    winner: Winner,
) -> Result<Outcome> {
    if same_content(ctx, &s, &m, old.as_ref()).await? {
        // Already equal (a copy made by a run that could not record it): record, copy nothing.
        return Ok(Outcome {
            put: vec![Record::pair(&s, &m)],
            ..Default::default()
        });
    }
    // A time in the future (a wrong clock, a file dated 2100) cannot be true: it only says
    // that the version changed since the last run, so it counts as that time and loses to any
    // version dated truly since. It cannot win every conflict to come.
    let now = signed_ns(SystemTime::now()).min(i64::MAX as i128) as i64;
    let when = |i: &Item| {
        i.mtime_ns
            .map_or(i64::MIN, |t| if t > now { ctx.future_mtime_as } else { t })
    };
    let newer_is_remote = when(&m) > when(&s);
    match winner {
        Winner::Source(Side::Site) => copy(ctx, Side::Site, s, Some(m), old).await,
        Winner::Source(Side::Remote) => copy(ctx, Side::Remote, m, Some(s), old).await,
        Winner::Policy => {
            let mut o = match ctx.conflict {
                ConflictPolicy::Newer => {
                    let path = s.path.clone();
                    let mut o = if newer_is_remote {
                        copy(ctx, Side::Remote, m, Some(s), old).await?
                    } else {
                        copy(ctx, Side::Site, s, Some(m), old).await?
                    };
                    let won = if newer_is_remote { "remote" } else { "site" };
                    o.event(
                        EventKind::Conflict,
                        &path,
                        0,
                        Some(format!("changed on both sides; the newer ({won}) wins")),
                    );
                    o
                }
                ConflictPolicy::KeepBoth => {
                    if newer_is_remote {
                        keep_both(ctx, Side::Remote, m, s, old).await?
                    } else {
                        keep_both(ctx, Side::Site, s, m, old).await?
                    }
                }
            };
            if o.counts.skipped == 0 {
                o.counts.conflicts += 1;
            }
            Ok(o)
        }
    }
}

/// A file (`item`, on side `here`) whose name the other side now uses for a folder: neither
/// can replace the other, so the file moves aside on its own side to a conflict name and is
/// copied under that name to the other side. Both stay visible; nothing is deleted but the
/// file's old name, once its copies exist. Reported as a conflict whatever the policy.
pub(crate) async fn clash(ctx: &Ctx, here: Side, item: Item, old: Option<Record>) -> Outcome {
    let path = item.path.clone();
    let planned = item.size;
    let r = clash_inner(ctx, here, item, old.clone()).await;
    let mut o = r.unwrap_or_else(|e| failed(old, &path, &e));
    o.planned = planned;
    o
}

async fn clash_inner(ctx: &Ctx, here: Side, item: Item, old: Option<Record>) -> Result<Outcome> {
    let there = here.other();
    let path = item.path.clone();
    let key = ctx.key(here, &path);
    if !unchanged(ctx, here, &key, Some(&item)).await? {
        return Ok(Outcome::skipped(old, &path, "changed during the run"));
    }
    let cpath = free_conflict_name(ctx, here, &item, &key).await?;
    let msg = Some(format!(
        "a file here, a folder of that name on the other side: the file is kept as {cpath} on both sides"
    ));
    let mut o = Outcome::default();
    o.counts.conflicts = 1;
    if ctx.dry_run {
        o.keep.extend(old);
        o.event(EventKind::Conflict, &path, 0, msg);
        o.copied(there, &cpath, item.size);
        return Ok(o);
    }
    let ckey = ctx.key(here, &cpath);
    let moved = server_copy(ctx.backend(here), &key, &ckey, &item).await?;
    let moved = Item::from_written(&cpath, &moved);
    // A conflict name never replaces anything on the other side either.
    let copied = transfer(
        ctx,
        here,
        &ckey,
        &moved,
        there,
        &ctx.key(there, &cpath),
        None,
    )
    .await?;
    let copied = Item::from_written(&cpath, &copied);
    // Both copies exist: only now does the old name go, so the folder can take it.
    match ctx.backend(here).remove_file(&key).await {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    o.put.push(pair(here, &moved, &copied));
    if old.is_some() {
        o.del.push(path.clone());
    }
    o.copied(there, &cpath, moved.size);
    o.event(EventKind::Conflict, &path, 0, msg);
    Ok(o)
}

/// Conflict names tried for one losing version before the path is left for the next run.
const CONFLICT_NAME_TRIES: u32 = 100;

/// A conflict name for the losing version (`item`, at `key` on side `lose`) that holds nothing
/// on either side, or holds this very version (a repeated attempt of an interrupted run):
/// never the name of another version, which keeping this one would overwrite.
async fn free_conflict_name(ctx: &Ctx, lose: Side, item: &Item, key: &str) -> Result<String> {
    let when = item.mtime().unwrap_or(UNIX_EPOCH);
    for n in 1..=CONFLICT_NAME_TRIES {
        let cpath = names::conflict_name_n(&item.path, when, n);
        let mut usable = true;
        for side in [lose, lose.other()] {
            if !absent_or_holds(ctx, side, &ctx.key(side, &cpath), lose, key, item).await? {
                usable = false;
                break;
            }
        }
        if usable {
            return Ok(cpath);
        }
    }
    Err(Error::new(
        ErrorKind::AlreadyExists,
        format!(
            "no free name to keep the older version beside /{}",
            item.path
        ),
    ))
}

/// True when `key` on `side` is absent, or a file with the bytes of `item` (at `src` on `from`).
async fn absent_or_holds(
    ctx: &Ctx,
    side: Side,
    key: &str,
    from: Side,
    src: &str,
    item: &Item,
) -> Result<bool> {
    let e = match ctx.backend(side).stat(key).await {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    if e.is_dir() || e.size != item.size {
        return Ok(false);
    }
    if item.size == 0 {
        return Ok(true);
    }
    let a = ctx.backend(side).read(key, 0, Some(e.size)).await?;
    let b = ctx.backend(from).read(src, 0, Some(item.size)).await?;
    streams_equal(a, b).await
}

/// The winner (`win_item`, on side `win`) keeps the name on both sides; the loser is kept on
/// both sides under a conflict name that no other version holds.
async fn keep_both(
    ctx: &Ctx,
    win: Side,
    win_item: Item,
    lose_item: Item,
    old: Option<Record>,
) -> Result<Outcome> {
    let lose = win.other();
    let path = win_item.path.clone();
    let lose_key = ctx.key(lose, &path);
    if !unchanged(ctx, lose, &lose_key, Some(&lose_item)).await? {
        return Ok(Outcome::skipped(
            old,
            &path,
            "changed at the destination during the run",
        ));
    }
    let cpath = free_conflict_name(ctx, lose, &lose_item, &lose_key).await?;
    let mut o = Outcome::default();
    let msg = Some(format!(
        "changed on both sides; the older is kept as {cpath}"
    ));
    if ctx.dry_run {
        o.keep.extend(old);
        o.event(EventKind::Conflict, &path, 0, msg);
        o.copied(lose, &path, win_item.size);
        o.copied(win, &cpath, lose_item.size);
        return Ok(o);
    }
    // 1. The losing version is kept beside itself on its own side (server-side)...
    let ckey_lose = ctx.key(lose, &cpath);
    let lc = server_copy(ctx.backend(lose), &lose_key, &ckey_lose, &lose_item).await?;
    let lc = Item::from_written(&cpath, &lc);
    // 2. ...the winner replaces it...
    let src_key = ctx.key(win, &path);
    let lnew = transfer(
        ctx,
        win,
        &src_key,
        &win_item,
        lose,
        &lose_key,
        Some(&lose_item),
    )
    .await?;
    let lnew = Item::from_written(&path, &lnew);
    o.put.push(pair(win, &win_item, &lnew));
    o.copied(lose, &path, win_item.size);
    // 3. ...and the losing version reaches the winner's side under the conflict name.
    let ckey_win = ctx.key(win, &cpath);
    let wc = transfer(ctx, lose, &ckey_lose, &lc, win, &ckey_win, None).await?;
    let wc = Item::from_written(&cpath, &wc);
    o.put.push(pair(lose, &lc, &wc));
    o.copied(win, &cpath, lc.size);
    o.event(EventKind::Conflict, &path, 0, msg);
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(chunks: &[&'static [u8]]) -> crate::backend::ByteStream {
        let v: Vec<Result<Bytes>> = chunks.iter().map(|c| Ok(Bytes::from_static(c))).collect();
        Box::pin(futures::stream::iter(v))
    }

    #[tokio::test]
    async fn compares_streams_across_chunk_boundaries() {
        let eq = |a, b| async move { streams_equal(stream(a), stream(b)).await.unwrap() };
        assert!(eq(&[b"abc", b"def"], &[b"a", b"bcde", b"", b"f"]).await);
        assert!(!eq(&[b"abc", b"def"], &[b"abc", b"deg"]).await);
        assert!(!eq(&[b"abc"], &[b"abcd"]).await);
        assert!(!eq(&[b"abcd"], &[b"abc"]).await);
        assert!(eq(&[], &[b""]).await);
    }
}
