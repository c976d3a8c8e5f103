//! File handles over objects: a reader with read-ahead for random offsets, and a writer that
//! turns offset writes into one in-order upload.

use crate::backend::{Backend, CreateOptions, Entry, Upload};
use crate::budget::{MemoryBudget, MemoryPermit};
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Transfer;
use crate::path::VPath;
use crate::perms::{Perm, PermSet};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;

/// How far ahead of the next expected offset a write may arrive and be held for reordering.
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
                Err(e) => a.failed(e.kind()),
            }
        }
        r
    }

    async fn read_at_inner(&mut self, offset: u64, len: usize) -> Result<Bytes> {
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
pub struct FileWriter {
    backend: Arc<dyn Backend>,
    key: String,
    existing: Option<Entry>,
    mode: OpenMode,
    perms: PermSet,
    shown: VPath,
    upload: Option<Box<dyn Upload>>,
    next: u64,
    pending: BTreeMap<u64, Bytes>,
    pending_bytes: u64,
    failed: Option<Error>,
    mtime: Option<SystemTime>,
    /// Bytes stored and the audit line written at close, abort or drop.
    audit: Option<Transfer>,
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
            failed: None,
            mtime: None,
            audit: None,
        }
    }

    pub(crate) fn with_audit(mut self, t: Transfer) -> Self {
        self.audit = Some(t);
        self
    }

    /// The file as it was at open, when it existed.
    pub fn existing(&self) -> Option<&Entry> {
        self.existing.as_ref()
    }

    /// The size the file will have if closed now.
    pub fn size(&self) -> u64 {
        match &self.upload {
            Some(_) => self.next,
            None if self.mode.truncate => 0,
            None => self.existing.as_ref().map(|e| e.size).unwrap_or(0),
        }
    }

    /// Sets the modification time to record when the file is committed (SFTP fsetstat on an
    /// open handle).
    pub fn set_mtime(&mut self, t: SystemTime) {
        self.mtime = Some(t);
    }

    fn fail(&mut self, e: Error) -> Error {
        let e = e.with_context("write", self.shown.to_string());
        self.failed = Some(Error::new(e.kind(), e.message().to_string()));
        e
    }

    async fn begin(&mut self, first_offset: u64) -> Result<()> {
        let existing_size = self.existing.as_ref().map(|e| e.size);
        let append = match existing_size {
            Some(_) if self.mode.append => true,
            Some(sz) if !self.mode.truncate && first_offset >= sz && sz > 0 => true,
            _ => false,
        };
        let needed = if append || self.existing.is_none() {
            Perm::Upload
        } else {
            Perm::Overwrite
        };
        if !self.perms.has(needed) {
            return Err(Error::of(ErrorKind::PermissionDenied));
        }
        let opts = CreateOptions {
            append_to: if append { self.existing.clone() } else { None },
            size_hint: self.mode.size_hint,
            mtime: None,
            keep_partial: self.mode.keep_partial,
            // A client's bytes cannot be asked for again.
            resendable: false,
        };
        self.upload = Some(self.backend.create(&self.key, opts).await?);
        self.next = if append {
            existing_size.unwrap_or(0)
        } else {
            0
        };
        Ok(())
    }

    /// Writes `data` at `offset`. Writes must arrive at the current end of the file or within
    /// the reorder window ahead of it; anything else fails and aborts the upload.
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
        let offset = if self.mode.append && self.pending.is_empty() {
            self.next
        } else {
            offset
        };
        if offset < self.next {
            let e = Error::new(
                ErrorKind::InvalidInput,
                "write behind the end of the data already sent: object storage cannot rewrite it",
            );
            return Err(self.fail(e));
        }
        if offset > self.next {
            let end = offset + data.len() as u64;
            if end - self.next > REORDER_WINDOW || self.pending.contains_key(&offset) {
                let e = Error::new(
                    ErrorKind::InvalidInput,
                    "write too far beyond the end of the file: object storage needs writes in order",
                );
                return Err(self.fail(e));
            }
            self.pending_bytes += data.len() as u64;
            self.pending.insert(offset, data);
            return Ok(());
        }
        self.push(data).await?;
        while let Some(entry) = self.pending.first_entry() {
            if *entry.key() != self.next {
                if *entry.key() < self.next {
                    let e = Error::new(ErrorKind::InvalidInput, "overlapping writes");
                    return Err(self.fail(e));
                }
                break;
            }
            let d = entry.remove();
            self.pending_bytes -= d.len() as u64;
            self.push(d).await?;
        }
        Ok(())
    }

    async fn push(&mut self, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        let up = self.upload.as_mut().expect("begun");
        if let Err(e) = up.write(data).await {
            return Err(self.fail(e));
        }
        self.next += len;
        if let Some(a) = &mut self.audit {
            a.add(len);
        }
        Ok(())
    }

    /// Commits the file; returns only once it is durable. On failure nothing is visible and
    /// the old content (if any) is untouched.
    pub async fn close(mut self) -> Result<Entry> {
        let audit = self.audit.take();
        let r = self.close_inner().await;
        if let Some(mut a) = audit {
            a.finish(&crate::metrics::result_of(&r));
        }
        r
    }

    async fn close_inner(mut self) -> Result<Entry> {
        let shown = self.shown.to_string();
        if let Some(e) = self.failed.take() {
            if let Some(up) = self.upload.take() {
                up.abort().await;
            }
            return Err(e.with_context("close", shown));
        }
        if !self.pending.is_empty() {
            if let Some(up) = self.upload.take() {
                up.abort().await;
            }
            return Err(
                Error::new(ErrorKind::InvalidInput, "the writes left a gap in the file")
                    .with_context("close", shown),
            );
        }
        if self.upload.is_none() {
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
                ..Default::default()
            };
            let up = self.backend.create(&self.key, opts).await?;
            return up
                .finish()
                .await
                .map_err(|e| e.with_context("close", shown));
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

/// Streams file `from` of one backend into `to` of another (a rename across backends).
pub async fn stream_copy(
    src: &Arc<dyn Backend>,
    from: &str,
    dst: &Arc<dyn Backend>,
    to: &str,
    size: u64,
) -> Result<Entry> {
    let mut stream = src.read(from, 0, Some(size)).await?;
    let mut up = dst
        .create(
            to,
            CreateOptions {
                size_hint: Some(size),
                ..Default::default()
            },
        )
        .await?;
    let mut n = 0u64;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(b) => {
                n += b.len() as u64;
                if let Err(e) = up.write(b).await {
                    up.abort().await;
                    return Err(e);
                }
            }
            Err(e) => {
                up.abort().await;
                return Err(e);
            }
        }
    }
    if n != size {
        up.abort().await;
        return Err(Error::new(ErrorKind::Backend, "the source ended early").set_retryable(true));
    }
    up.finish().await
}
