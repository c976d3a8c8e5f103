//! File handles over objects: a reader with read-ahead for random offsets, and a writer that
//! turns offset writes into one in-order upload.

use crate::backend::{Backend, ByteStream, CreateOptions, Entry, Upload};
use crate::budget::{MemoryBudget, MemoryPermit};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Transfer;
use crate::path::VPath;
use crate::perms::{Perm, PermSet};
use crate::writing::WriteClaim;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Bytes of writes that may wait ahead of the next offset to be sent, per open file (a bound on
/// memory: a later write over the same bytes replaces them, it does not add to them).
pub const REORDER_WINDOW: u64 = 8 * 1024 * 1024;
/// How far forward a read may jump and still reuse the running stream (skipping bytes).
const SKIP_LIMIT: u64 = 1024 * 1024;
/// Bytes the read-ahead task may hold ahead of the client, per open file. Counted in bytes,
/// not chunks: the HTTP stack's chunks range from a few KiB to hundreds, so a count of chunks
/// bounds nothing, and an idle or slow reader must hold a bounded amount.
pub const READ_AHEAD_BYTES: usize = 1024 * 1024;
/// Bytes a download stream must have delivered since it started for a break to be resumed
/// rather than fail the read: a remote that breaks every connection early fails fast, instead of
/// being asked again for every few bytes.
const RESUME_AFTER: u64 = 1024 * 1024;
/// Chunks in the read-ahead channel (a bound on the queue; the byte bound is what matters).
const READ_AHEAD_CHUNKS: usize = 256;

/// What a chunk read ahead holds until it is consumed: its share of the file's read-ahead
/// bytes, and of the process-wide memory budget (`None` for the one chunk a reader may always
/// hold when the budget is short, so that every reader makes progress).
struct Held {
    _room: tokio::sync::OwnedSemaphorePermit,
    _memory: Option<MemoryPermit>,
}

/// A chunk read ahead, with what it holds, returned when consumed.
type Ahead = Result<(Bytes, Option<Held>)>;

/// How a file is opened for writing (the SFTP pflags, or the FTP command's meaning).
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenMode {
    /// Create the file when missing.
    pub create: bool,
    /// Replace the content (SFTP TRUNC, FTP STOR).
    pub truncate: bool,
    /// Fail when the file exists (SFTP EXCL).
    pub exclusive: bool,
    /// Every write goes to the end of the file (SFTP APPEND, FTP APPE).
    pub append: bool,
    /// Total size announced up front.
    pub size_hint: Option<u64>,
    /// Keep what arrived if the upload is interrupted.
    pub keep_partial: bool,
}

/// A file opened for reading.
///
/// Every read returns bytes of the version seen at open, or fails: each stream it starts is
/// pinned to that version (`Backend::read_version` with the ETag of the open). Once the remote
/// has failed it beyond the backend's own retries, the handle is dead and every later read fails
/// at once with the same error: a client with many reads in flight gets its answer now, not
/// after each of them has retried on its own.
pub struct FileReader {
    backend: Arc<dyn Backend>,
    key: String,
    entry: Entry,
    shown: VPath,
    pos: u64,
    buf: Bytes,
    /// What `buf` holds of the read-ahead; released once it is consumed.
    buf_permit: Option<Held>,
    rx: Option<mpsc::Receiver<Ahead>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Bytes received since the running stream started (a stream that broke after
    /// [`RESUME_AFTER`] of them is resumed; one that broke sooner fails the read).
    received: u64,
    /// The failure that ended this handle: every later read fails with it, at once.
    dead: Option<(ErrorKind, String)>,
    /// The process-wide budget the read-ahead counts against, when the backend has one.
    budget: Option<Arc<MemoryBudget>>,
    /// Bytes handed to the client and the audit line written on drop.
    audit: Option<Transfer>,
}

impl FileReader {
    pub(crate) fn new(backend: Arc<dyn Backend>, key: String, entry: Entry, shown: VPath) -> Self {
        let budget = backend.memory_budget();
        FileReader {
            backend,
            key,
            entry,
            shown,
            pos: 0,
            buf: Bytes::new(),
            buf_permit: None,
            rx: None,
            task: None,
            received: 0,
            dead: None,
            budget,
            audit: None,
        }
    }

    pub(crate) fn with_audit(mut self, t: Transfer) -> Self {
        self.audit = Some(t);
        self
    }

    /// The file as it was at open.
    pub fn entry(&self) -> &Entry {
        &self.entry
    }

    /// The file's size at open.
    pub fn size(&self) -> u64 {
        self.entry.size
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.rx = None;
        self.buf = Bytes::new();
        self.buf_permit = None;
    }

    /// `e` as the client sees it: the user's path (a backend's error names its own key), the
    /// kind and the message; the original stays in the source chain for the log.
    fn shown_error(&self, e: Error) -> Error {
        Error::new(e.kind(), e.message().to_string())
            .set_retryable(e.is_retryable())
            .with_context("read", self.shown.to_string())
            .with_source(e)
    }

    /// Ends the handle: `e` and every later read fail with the same error.
    fn die(&mut self, e: Error) -> Error {
        self.stop();
        let e = self.shown_error(e);
        self.dead = Some((e.kind(), e.message().to_string()));
        e
    }

    async fn start(&mut self, offset: u64) -> Result<()> {
        self.stop();
        let size = self.entry.size;
        let mut stream = self
            .backend
            .read_version(&self.key, offset, Some(size), self.entry.etag.as_deref())
            .await?;
        let (tx, rx) = mpsc::channel::<Ahead>(READ_AHEAD_CHUNKS);
        let room = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BYTES));
        let budget = self.budget.clone();
        // Read-ahead: the backend stream runs ahead of the client's requests, bounded to
        // READ_AHEAD_BYTES, so a client that pipelines reads is not served one round trip at
        // a time. While the room is full the stream is not polled, and TCP back-pressure holds
        // the rest on the remote.
        let task = tokio::spawn(async move {
            let mut got = offset;
            while let Some(item) = stream.next().await {
                let item = match item {
                    Ok(b) => {
                        got += b.len() as u64;
                        match hold(&room, budget.as_deref(), b.len()).await {
                            Some(h) => Ok((b, Some(h))),
                            None => return,
                        }
                    }
                    Err(e) => Err(e),
                };
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
            if got < size {
                // A body that ends early must never look like the end of the file.
                let _ = tx
                    .send(Err(Error::new(
                        ErrorKind::Backend,
                        "the download ended before the end of the file",
                    )
                    .set_retryable(true)))
                    .await;
            }
        });
        self.rx = Some(rx);
        self.task = Some(task);
        self.pos = offset;
        self.received = 0;
        Ok(())
    }

    /// Reads up to `len` bytes at `offset`; an empty result means end of file.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Bytes> {
        let r = self.read_at_inner(offset, len).await;
        if let Some(a) = &mut self.audit {
            match &r {
                Ok(b) => a.add(b.len() as u64),
                Err(e) => a.failed(e),
            }
        }
        r
    }

    async fn read_at_inner(&mut self, offset: u64, len: usize) -> Result<Bytes> {
        let data = self.read_bytes(offset, len).await?;
        if !data.is_empty() && self.pos == self.entry.size && self.rx.is_some() {
            // The read that reaches the end of the file waits for the stream's own end: a
            // download checked against the object's checksum fails there, and the client must
            // get that failure on this read, not a clean end of file on the next.
            self.buf_permit = None;
            let rx = self.rx.as_mut().expect("checked above");
            match rx.recv().await {
                Some(Err(e)) => return Err(self.die(e)),
                Some(Ok((b, p))) => {
                    // More than the size seen at open: not possible for a version-pinned
                    // read; kept as the next bytes, as before.
                    self.buf = b;
                    self.buf_permit = p;
                }
                None => self.stop(),
            }
        }
        Ok(data)
    }

    async fn read_bytes(&mut self, offset: u64, len: usize) -> Result<Bytes> {
        if let Some((kind, msg)) = &self.dead {
            return Err(Error::new(*kind, msg.clone()).with_context("read", self.shown.to_string()));
        }
        let size = self.entry.size;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let want = (len as u64).min(size - offset) as usize;
        let reuse = self.rx.is_some() && offset >= self.pos && offset - self.pos <= SKIP_LIMIT;
        if !reuse {
            // The backend has already retried what was worth retrying.
            if let Err(e) = self.start(offset).await {
                return Err(self.die(e));
            }
        }
        let mut out = BytesMut::new();
        while self.pos < offset + want as u64 {
            if self.buf.is_empty() {
                // The consumed chunk's room goes back to the read-ahead before waiting on it.
                self.buf_permit = None;
                let rx = self.rx.as_mut().expect("started above");
                match rx.recv().await {
                    Some(Ok((b, p))) => {
                        self.received += b.len() as u64;
                        self.buf = b;
                        self.buf_permit = p;
                    }
                    Some(Err(e)) if e.is_retryable() && self.received >= RESUME_AFTER => {
                        // A stream that broke after a good run (a connection reset on a long
                        // download): resume it where it stopped, pinned to the same version.
                        // The new request has the backend's retries; if it fails too, or
                        // breaks again before its own good run, the handle is dead.
                        tracing::debug!(error = ?e, "resuming a broken download");
                        let at = self.pos;
                        if let Err(e) = self.start(at).await {
                            return Err(self.die(e));
                        }
                    }
                    Some(Err(e)) => return Err(self.die(e)),
                    None => {
                        return Err(self.die(Error::new(
                            ErrorKind::Backend,
                            "the download ended before the end of the file",
                        )));
                    }
                }
                continue;
            }
            if self.pos < offset {
                let skip = ((offset - self.pos) as usize).min(self.buf.len());
                let _ = self.buf.split_to(skip);
                self.pos += skip as u64;
                continue;
            }
            let take = (want - out.len()).min(self.buf.len());
            let chunk = self.buf.split_to(take);
            self.pos += take as u64;
            if out.is_empty() && take == want {
                return Ok(chunk);
            }
            if out.capacity() == 0 {
                // Spans chunks: one allocation of the answer's size, not a growing buffer.
                out.reserve(want);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out.freeze())
    }
}

/// Waits until a chunk of `len` bytes may be read ahead: room in the file's read-ahead, and
/// its size in the process-wide `budget`. When the budget is short, the read-ahead shrinks: the
/// chunk waits for the budget, or for the reader to have consumed everything else read ahead,
/// and then goes without a share of the budget (one chunk per reader is always allowed, so a
/// reader never waits on others forever). `None` when the reader is gone.
async fn hold(
    room: &Arc<tokio::sync::Semaphore>,
    budget: Option<&MemoryBudget>,
    len: usize,
) -> Option<Held> {
    // A chunk larger than the whole room takes all of it.
    let n = len.clamp(1, READ_AHEAD_BYTES) as u32;
    let held = room.clone().acquire_many_owned(n).await.ok()?;
    let Some(budget) = budget else {
        return Some(Held {
            _room: held,
            _memory: None,
        });
    };
    if let Some(p) = budget.try_acquire(len as u64) {
        return Some(Held {
            _room: held,
            _memory: Some(p),
        });
    }
    // The rest of the room is free once nothing else of this file is read ahead or unconsumed.
    let rest = READ_AHEAD_BYTES as u32 - n;
    let memory = tokio::select! {
        p = budget.acquire(len as u64), if budget.can_hold(len as u64) => p.ok(),
        r = room.clone().acquire_many_owned(rest) => {
            drop(r.ok()?);
            None
        }
    };
    Some(Held {
        _room: held,
        _memory: memory,
    })
}

impl Drop for FileReader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file opened for writing: offset writes become one in-order upload, committed at close.
///
/// The file is seen as its *base* (the object as it was at open, unless the open truncates it)
/// with this handle's writes laid over it, as on a local disk: the result at CLOSE is the base
/// with every written range replaced, the last write to a byte winning, and a gap beyond the
/// base's end read as zeros. An object cannot be patched, so the bytes are sent in file order:
///
/// - the untouched head of the base (before the first write) is copied server-side when large
///   (the append path of [`CreateOptions::append_to`] with `keep_head`);
/// - writes at the next offset go straight to the upload; writes ahead of it wait in a reorder
///   window of at most [`REORDER_WINDOW`] bytes (a later write over the same bytes replaces
///   them there); a gap that the window cannot hold is filled from the base;
/// - at CLOSE, gaps and the untouched tail of the base are read from the base and sent;
/// - a commit over a base is conditional on the base's version tag, so if the file changed
///   meanwhile nothing is changed and CLOSE fails.
///
/// A write over bytes already sent (behind the next offset) cannot be honoured and fails the
/// upload: the file stays as it was.
pub struct FileWriter {
    backend: Arc<dyn Backend>,
    key: String,
    existing: Option<Entry>,
    mode: OpenMode,
    perms: PermSet,
    shown: VPath,
    upload: Option<Box<dyn Upload>>,
    /// Bytes of the file handed to the upload so far (from offset 0).
    next: u64,
    /// Writes ahead of `next`, by offset, never overlapping each other.
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: u64,
    /// The lowest and highest offsets this handle wrote (for reads on a read-write handle).
    written: Option<(u64, u64)>,
    failed: Option<Error>,
    mtime: Option<SystemTime>,
    /// Commit only if the name is still free (exclusive create, or a user without the right to
    /// overwrite).
    if_absent: bool,
    /// This upload's hold on its name; tells whether the name was removed meanwhile.
    claim: Option<WriteClaim>,
    /// The session's recent facts, and the site paths of the file and its folder: a committed
    /// file is known to exist, and so is its folder.
    known: Option<(Arc<crate::known::Known>, String, String, u64)>,
    /// Bytes stored and the audit line written at close, abort or drop.
    audit: Option<Transfer>,
    /// Set by [`FileWriter::set_len`] before any write: how much of the base is kept (the
    /// least length set), and the length last set (zeros from the kept bytes up to it).
    keep: Option<u64>,
    length: Option<u64>,
}

impl FileWriter {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        key: String,
        existing: Option<Entry>,
        mode: OpenMode,
        perms: PermSet,
        shown: VPath,
    ) -> Self {
        let if_absent = existing.is_none() && (mode.exclusive || !perms.has(Perm::Overwrite));
        FileWriter {
            backend,
            key,
            existing,
            mode,
            perms,
            shown,
            upload: None,
            next: 0,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            written: None,
            failed: None,
            mtime: None,
            if_absent,
            claim: None,
            known: None,
            audit: None,
            keep: None,
            length: None,
        }
    }

    pub(crate) fn with_audit(mut self, t: Transfer) -> Self {
        self.audit = Some(t);
        self
    }

    pub(crate) fn with_claim(mut self, c: WriteClaim) -> Self {
        self.claim = Some(c);
        self
    }

    /// Records in `known` that the file (site path `path`, in folder `folder`) exists once it
    /// is committed; `removals`: the tree's count of removals when the open began.
    pub(crate) fn with_known(
        mut self,
        known: Arc<crate::known::Known>,
        path: String,
        folder: String,
        removals: u64,
    ) -> Self {
        self.known = Some((known, path, folder, removals));
        self
    }

    /// The file as it was at open, when it existed.
    pub fn existing(&self) -> Option<&Entry> {
        self.existing.as_ref()
    }

    /// The content the writes are laid over: the file as it was at open, unless truncated.
    fn base(&self) -> Option<&Entry> {
        if self.mode.truncate {
            None
        } else {
            self.existing.as_ref()
        }
    }

    fn base_size(&self) -> u64 {
        let size = self.base().map(|e| e.size).unwrap_or(0);
        self.keep.map_or(size, |k| size.min(k))
    }

    /// The size the file will have if closed now.
    pub fn size(&self) -> u64 {
        let ahead = self
            .pending
            .last_key_value()
            .map(|(o, d)| o + d.len() as u64)
            .unwrap_or(0);
        self.base_size()
            .max(self.next)
            .max(ahead)
            .max(self.length.unwrap_or(0))
    }

    /// True once someone else removed or replaced the name during this upload: its CLOSE
    /// will fail, and the name is no longer this upload's to show.
    pub fn is_superseded(&self) -> bool {
        self.claim.as_ref().is_some_and(|c| c.is_gone())
    }

    /// Describes the file as it will be if closed now (for the writing session's own stat).
    pub fn entry(&self) -> Entry {
        Entry {
            name: self.shown.name().unwrap_or("/").to_string(),
            kind: crate::backend::EntryKind::File,
            size: self.size(),
            mtime: Some(self.mtime.unwrap_or_else(SystemTime::now)),
            etag: None,
        }
    }

    /// Sets the modification time to record when the file is committed (SFTP fsetstat on an
    /// open handle).
    pub fn set_mtime(&mut self, t: SystemTime) {
        self.mtime = Some(t);
    }

    /// Cuts the file to `size` bytes, which only works for 0 before anything was written (an
    /// `ftruncate` right after open): the open then behaves as one with TRUNC. Returns false
    /// when it cannot be done.
    pub fn truncate_unwritten(&mut self, size: u64) -> bool {
        if size != 0 || self.upload.is_some() || !self.pending.is_empty() {
            return false;
        }
        self.mode.truncate = true;
        true
    }

    /// Sets the file's length as `ftruncate` does: bytes past `size` are dropped, and a file
    /// shorter than `size` reads as zeros up to it. Works before anything was written (what
    /// SETSTAT of a size on a closed file is: an open, this, a close), or when the size is
    /// already `size`; returns false otherwise (the bytes may already be in the upload).
    /// Shortening needs `overwrite` at close, growing `upload`.
    pub fn set_len(&mut self, size: u64) -> bool {
        if size == self.size() {
            return true;
        }
        if self.upload.is_some() || !self.pending.is_empty() {
            return false;
        }
        if size == 0 {
            return self.truncate_unwritten(0);
        }
        self.keep = Some(self.keep.map_or(size, |k| k.min(size)));
        self.length = Some(size);
        true
    }

    fn fail(&mut self, e: Error) -> Error {
        let e = e.with_context("write", self.shown.to_string());
        self.failed = Some(Error::new(e.kind(), e.message().to_string()));
        // The audit line of this upload says why it failed, however it ends.
        if let Some(a) = &mut self.audit {
            a.failed(&e);
        }
        e
    }

    fn refuse(&mut self, msg: &'static str) -> Error {
        self.fail(Error::new(ErrorKind::InvalidInput, msg))
    }

    async fn begin(&mut self, first_offset: u64) -> Result<()> {
        let base = self.base().cloned();
        let base_size = self.base_size();
        // How much of the base comes first, untouched: all of it for an append, else what
        // lies before the first write.
        let head = if self.mode.append {
            base_size
        } else {
            first_offset.min(base_size)
        };
        // Adding bytes after a file's content needs `upload`; changing any byte of it, or
        // replacing it, needs `overwrite`.
        let needed = match &self.existing {
            None => Perm::Upload,
            // Kept whole (not shortened by `set_len`) and extended.
            Some(e)
                if base.is_some() && head == base_size && base_size == e.size && base_size > 0 =>
            {
                Perm::Upload
            }
            Some(_) => Perm::Overwrite,
        };
        if !self.perms.has(needed) {
            return Err(Error::of(ErrorKind::PermissionDenied));
        }
        let opts = CreateOptions {
            // Over a base, the commit is guarded by its version tag even when none of its bytes
            // are kept in front (an in-place write at offset 0).
            append_to: base,
            keep_head: Some(head),
            size_hint: self.mode.size_hint,
            mtime: None,
            keep_partial: self.mode.keep_partial,
            // A client's bytes cannot be asked for again.
            resendable: false,
            if_absent: self.if_absent,
            if_match: None,
            // Its bytes are known only as they arrive.
            source_hash: None,
        };
        self.upload = Some(self.backend.create(&self.key, opts).await?);
        self.next = head;
        Ok(())
    }

    /// Writes `data` at `offset`. Writes must not reach behind the bytes already sent; anything
    /// else is laid over the file as on a disk (see the type's documentation).
    pub async fn write_at(&mut self, offset: u64, data: Bytes) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(Error::new(e.kind(), e.message().to_string())
                .with_context("write", self.shown.to_string()));
        }
        if data.is_empty() {
            return Ok(());
        }
        if self.upload.is_none() {
            if let Err(e) = self.begin(offset).await {
                return Err(self.fail(e));
            }
        }
        // With APPEND every write goes to the end, whatever its offset (as O_APPEND does).
        let offset = if self.mode.append {
            self.size()
        } else {
            offset
        };
        let len = data.len() as u64;
        let end = offset
            .checked_add(len)
            .ok_or_else(|| Error::new(ErrorKind::InvalidInput, "offset out of range"))?;
        if offset < self.next {
            return Err(
                self.refuse("write behind the data already sent: object storage cannot rewrite it")
            );
        }
        // A hole beyond the base's end would be sent as zeros: only a small one is accepted.
        let zeros_from = self.next.max(self.base_size());
        if offset > zeros_from && offset - zeros_from > REORDER_WINDOW {
            return Err(self.refuse(
                "write too far beyond the end of the file: object storage needs writes in order",
            ));
        }
        self.written = Some(match self.written {
            None => (offset, end),
            Some((lo, hi)) => (lo.min(offset), hi.max(end)),
        });
        if offset == self.next {
            // A write at the next offset is newer than anything waiting over the same bytes.
            self.drop_pending_below(end);
            self.push(data, true).await?;
        } else {
            self.insert_pending(offset, data);
        }
        self.drain().await?;
        // A window that grew too large is emptied in order, its gaps read from the base.
        while self.pending_bytes > REORDER_WINDOW
            || self
                .pending
                .last_key_value()
                .is_some_and(|(o, d)| o + d.len() as u64 - self.next > 2 * REORDER_WINDOW)
        {
            let Some(first) = self.pending.keys().next().copied() else {
                break;
            };
            self.fill_to(first).await?;
            self.drain().await?;
        }
        Ok(())
    }

    /// Keeps a write that arrived ahead of `next`; it replaces what waits over the same bytes.
    fn insert_pending(&mut self, offset: u64, data: Bytes) {
        let end = offset + data.len() as u64;
        // Entries that overlap [offset, end): the one starting before it, and those inside.
        let mut hits: Vec<u64> = self.pending.range(offset..end).map(|(o, _)| *o).collect();
        if let Some((o, d)) = self.pending.range(..offset).next_back() {
            if o + d.len() as u64 > offset {
                hits.push(*o);
            }
        }
        for o in hits {
            let d = self.pending.remove(&o).expect("listed");
            self.pending_bytes -= d.len() as u64;
            let d_end = o + d.len() as u64;
            if o < offset {
                let keep = d.slice(..(offset - o) as usize);
                self.pending_bytes += keep.len() as u64;
                self.pending.insert(o, keep);
            }
            if d_end > end {
                let keep = d.slice((end - o) as usize..);
                self.pending_bytes += keep.len() as u64;
                self.pending.insert(end, keep);
            }
        }
        self.pending_bytes += data.len() as u64;
        self.pending.insert(offset, data);
    }

    /// Forgets waiting bytes below `end` (a newer write at `next` covers them).
    fn drop_pending_below(&mut self, end: u64) {
        while let Some((&o, d)) = self.pending.first_key_value() {
            if o >= end {
                break;
            }
            let d_end = o + d.len() as u64;
            let d = self.pending.remove(&o).expect("first");
            self.pending_bytes -= d.len() as u64;
            if d_end > end {
                let keep = d.slice((end - o) as usize..);
                self.pending_bytes += keep.len() as u64;
                self.pending.insert(end, keep);
            }
        }
    }

    /// Sends the waiting writes that now continue the file.
    async fn drain(&mut self) -> Result<()> {
        while let Some((&o, _)) = self.pending.first_key_value() {
            if o > self.next {
                break;
            }
            let d = self.pending.remove(&o).expect("first");
            self.pending_bytes -= d.len() as u64;
            let skip = (self.next - o) as usize;
            if skip < d.len() {
                self.push(d.slice(skip..), true).await?;
            }
        }
        Ok(())
    }

    /// Sends the file from `next` up to `to` from the base: its old bytes where it has them,
    /// zeros beyond its end (a hole, as a disk reads it).
    async fn fill_to(&mut self, to: u64) -> Result<()> {
        let base_size = self.base_size();
        if self.next < to && self.next < base_size {
            let end = to.min(base_size);
            let etag = self.base().and_then(|b| b.etag.clone());
            let r = self
                .backend
                .read_version(&self.key, self.next, Some(end), etag.as_deref())
                .await;
            let mut stream = match r {
                Ok(s) => s,
                Err(e) => return Err(self.fail(e)),
            };
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(b) => {
                        let room = (end - self.next) as usize;
                        let b = if b.len() > room { b.slice(..room) } else { b };
                        if !b.is_empty() {
                            self.push(b, false).await?;
                        }
                    }
                    Err(e) => return Err(self.fail(e)),
                }
            }
            if self.next != end {
                // The base is shorter than at open: it changed, and the commit would be refused.
                return Err(self.fail(Error::new(
                    ErrorKind::Conflict,
                    "the file changed while it was being written; nothing was changed",
                )));
            }
        }
        while self.next < to {
            let n = (to - self.next).min(1024 * 1024) as usize;
            self.push(Bytes::from(vec![0u8; n]), false).await?;
        }
        Ok(())
    }

    async fn push(&mut self, data: Bytes, from_client: bool) -> Result<()> {
        let len = data.len() as u64;
        let up = self.upload.as_mut().expect("begun");
        if let Err(e) = up.write(data).await {
            return Err(self.fail(e));
        }
        self.next += len;
        if from_client {
            if let Some(a) = &mut self.audit {
                a.add(len);
            }
        }
        Ok(())
    }

    /// Answers a read on a handle opened for reading and writing. What this handle wrote is not
    /// readable before CLOSE (it may be in the bucket's upload already); the rest of the file
    /// reads as it was at open, and past the end as end of file.
    pub async fn read_at(&mut self, offset: u64, len: usize) -> Result<Bytes> {
        let size = self.size();
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + len as u64).min(size);
        let base_size = self.base_size();
        let untouched = match self.written {
            None => true,
            Some((lo, hi)) => end <= lo || offset >= hi,
        };
        if !untouched || end > base_size {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "reading back what this handle wrote is not possible before the file is closed",
            )
            .with_context("read", self.shown.to_string()));
        }
        let etag = self.base().and_then(|b| b.etag.clone());
        let mut stream = self
            .backend
            .read_version(&self.key, offset, Some(end), etag.as_deref())
            .await
            .map_err(|e| e.with_context("read", self.shown.to_string()))?;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(
                &chunk.map_err(|e| e.with_context("read", self.shown.to_string()))?,
            );
        }
        if out.len() as u64 != end - offset {
            return Err(
                Error::new(ErrorKind::Conflict, "the file changed since it was opened")
                    .with_context("read", self.shown.to_string()),
            );
        }
        Ok(out.freeze())
    }

    /// Commits the file; returns only once it is durable. On failure nothing is visible and
    /// the old content (if any) is untouched.
    pub async fn close(mut self) -> Result<Entry> {
        let audit = self.audit.take();
        let known = self.known.take();
        let r = self.close_inner().await;
        if let (Ok(_), Some((k, path, folder, removals))) = (&r, known) {
            k.written(&path, &folder, removals);
        }
        if let Some(mut a) = audit {
            a.end(&r);
        }
        r
    }

    /// The name was removed or replaced by someone else while this upload ran.
    fn discarded(&self) -> Option<Error> {
        self.claim.as_ref().filter(|c| c.is_gone()).map(|_| {
            Error::new(
                ErrorKind::Conflict,
                "the file was removed or replaced while it was being written; this upload was discarded",
            )
        })
    }

    async fn close_inner(mut self) -> Result<Entry> {
        let shown = self.shown.to_string();
        if let Some(e) = self.failed.take() {
            if let Some(up) = self.upload.take() {
                up.abort().await;
            }
            return Err(e.with_context("close", shown));
        }
        if self.upload.is_none() {
            if let Some(e) = self.discarded() {
                return Err(e.with_context("close", shown));
            }
            // `set_len` alone changed the size: the kept bytes, then zeros up to the length.
            let before = match (&self.existing, self.mode.truncate) {
                (Some(e), false) => e.size,
                _ => 0,
            };
            if self.length.is_some() && self.size() != before {
                let r = self.begin(self.base_size()).await;
                if let Err(e) = r {
                    return Err(self.fail(e).with_context("close", shown));
                }
            } else {
                if self.existing.is_some() && !self.mode.truncate {
                    // Opened for writing but nothing written: the file stays as it was.
                    if let (Some(t), Some(_)) = (self.mtime, &self.existing) {
                        self.backend.set_mtime(&self.key, t).await?;
                    }
                    return Ok(self.existing.clone().expect("checked"));
                }
                if self.existing.is_some() && !self.perms.has(Perm::Overwrite) {
                    return Err(Error::of(ErrorKind::PermissionDenied).with_context("close", shown));
                }
                let opts = CreateOptions {
                    mtime: self.mtime,
                    size_hint: Some(0),
                    if_absent: self.if_absent,
                    ..Default::default()
                };
                let up = self.backend.create(&self.key, opts).await?;
                return up
                    .finish()
                    .await
                    .map_err(|e| e.with_context("close", shown));
            }
        }
        // The rest of the file in order: waiting writes with the base's bytes between them,
        // then the base's untouched tail.
        let r = async {
            while let Some(first) = self.pending.keys().next().copied() {
                self.fill_to(first).await?;
                self.drain().await?;
            }
            // The base's tail, then zeros up to a length set longer (`set_len`).
            let end = self.base_size().max(self.length.unwrap_or(0));
            self.fill_to(end).await
        }
        .await;
        if let Err(e) = r {
            if let Some(up) = self.upload.take() {
                up.abort().await;
            }
            return Err(e.with_context("close", shown));
        }
        if let Some(e) = self.discarded() {
            if let Some(up) = self.upload.take() {
                up.abort().await;
            }
            return Err(e.with_context("close", shown));
        }
        let up = self.upload.take().expect("checked");
        let mut entry = up
            .finish()
            .await
            .map_err(|e| e.with_context("close", shown.clone()))?;
        if let Some(t) = self.mtime {
            self.backend
                .set_mtime(&self.key, t)
                .await
                .map_err(|e| e.with_context("close", shown))?;
            entry.mtime = Some(t);
        }
        Ok(entry)
    }

    /// Gives the upload up: nothing becomes visible (unless `keep_partial`).
    pub async fn abort(mut self) {
        if let Some(up) = self.upload.take() {
            up.abort().await;
        }
        if let Some(mut a) = self.audit.take() {
            a.finish("aborted");
        }
    }
}

/// A cancellation token for [`pump`], and the error it ends with when the token fires.
pub(crate) type Cancel<'a> = Option<(&'a CancellationToken, fn() -> Error)>;

/// Writes every chunk of `stream` into `up` until the stream ends, telling `on_chunk` the
/// length of each chunk once written, and returns the upload with the bytes written. An error
/// of either side, or `cancel` firing (the error then is `cancelled()`), aborts the upload:
/// nothing becomes visible, and the error is returned. The loop of every copy between backends
/// (a rename across backends, a sync copy).
pub(crate) async fn pump(
    stream: &mut ByteStream,
    mut up: Box<dyn Upload>,
    cancel: Cancel<'_>,
    mut on_chunk: impl FnMut(u64),
) -> Result<(Box<dyn Upload>, u64)> {
    let mut n = 0u64;
    loop {
        let next = match cancel {
            Some((token, cancelled)) => tokio::select! {
                c = stream.next() => c,
                _ = token.cancelled() => {
                    up.abort().await;
                    return Err(cancelled());
                }
            },
            None => stream.next().await,
        };
        match next {
            None => return Ok((up, n)),
            Some(Ok(b)) => {
                let len = b.len() as u64;
                if let Err(e) = up.write(b).await {
                    up.abort().await;
                    return Err(e);
                }
                n += len;
                on_chunk(len);
            }
            Some(Err(e)) => {
                up.abort().await;
                return Err(e);
            }
        }
    }
}

/// Streams file `from` of one backend into `to` of another (a rename across backends), with
/// its modification time `mtime`, as a rename within one backend keeps it.
///
/// The sync engine's copy (`sync::exec::transfer`) runs the same loop, [`pump`], but is not
/// built on this function, because what it adds is around the loop, not in it: it reads the
/// version the run listed (an object replaced since fails instead of being copied), creates
/// the target only if it is still what the run listed (`if_absent`/`if_match`: a file saved
/// there meanwhile is never replaced), sends the body's MD5 first where the server checks it,
/// stops when the run is cancelled, counts bytes for the progress bar, checks the source's
/// identity again before the commit, and copies server-side when both sides are one backend.
/// A rename is one client request whose target rules (`overwrite`, folders) `UserFs::rename`
/// has already checked, and whose source is removed only once this copy committed; it needs
/// none of that.
pub async fn stream_copy(
    src: &Arc<dyn Backend>,
    from: &str,
    dst: &Arc<dyn Backend>,
    to: &str,
    size: u64,
    mtime: Option<SystemTime>,
) -> Result<Entry> {
    let mut stream = src.read(from, 0, Some(size)).await?;
    let up = dst
        .create(
            to,
            CreateOptions {
                size_hint: Some(size),
                mtime,
                ..Default::default()
            },
        )
        .await?;
    let (up, n) = pump(&mut stream, up, None, |_| {}).await?;
    if n != size {
        up.abort().await;
        return Err(Error::new(ErrorKind::Backend, "the source ended early").set_retryable(true));
    }
    up.finish().await
}
