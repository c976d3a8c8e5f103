//! File handles over objects: a reader with read-ahead for random offsets, and a writer that
//! turns offset writes into one in-order upload.

use crate::backend::{Backend, CreateOptions, Entry, Upload};
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
/// Chunks in the read-ahead channel (a bound on the queue; the byte bound is what matters).
const READ_AHEAD_CHUNKS: usize = 256;

/// A chunk read ahead, with its share of the file's read-ahead bytes, returned when consumed.
type Ahead = Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>)>;

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
pub struct FileReader {
    backend: Arc<dyn Backend>,
    key: String,
    entry: Entry,
    shown: VPath,
    pos: u64,
    buf: Bytes,
    /// The read-ahead bytes `buf` accounts for; released once it is consumed.
    buf_permit: Option<tokio::sync::OwnedSemaphorePermit>,
    rx: Option<mpsc::Receiver<Ahead>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Bytes handed to the client and the audit line written on drop.
    audit: Option<Transfer>,
}

impl FileReader {
    pub(crate) fn new(backend: Arc<dyn Backend>, key: String, entry: Entry, shown: VPath) -> Self {
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

    async fn start(&mut self, offset: u64) -> Result<()> {
        self.stop();
        let size = self.entry.size;
        let mut stream = self.backend.read(&self.key, offset, Some(size)).await?;
        let (tx, rx) = mpsc::channel::<Ahead>(READ_AHEAD_CHUNKS);
        let room = Arc::new(tokio::sync::Semaphore::new(READ_AHEAD_BYTES));
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
                        // A chunk larger than the whole room takes all of it.
                        let n = b.len().clamp(1, READ_AHEAD_BYTES) as u32;
                        match room.clone().acquire_many_owned(n).await {
                            Ok(p) => Ok((b, Some(p))),
                            Err(_) => return,
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
        let size = self.entry.size;
        if offset >= size || len == 0 {
            return Ok(Bytes::new());
        }
        let want = (len as u64).min(size - offset) as usize;
        let reuse = self.rx.is_some() && offset >= self.pos && offset - self.pos <= SKIP_LIMIT;
        if !reuse {
            self.start(offset)
                .await
                .map_err(|e| e.with_context("read", self.shown.to_string()))?;
        }
        let mut out = BytesMut::new();
        while self.pos < offset + want as u64 {
            if self.buf.is_empty() {
                // The consumed chunk's room goes back to the read-ahead before waiting on it.
                self.buf_permit = None;
                let rx = self.rx.as_mut().expect("started above");
                match rx.recv().await {
                    Some(Ok((b, p))) => {
                        self.buf = b;
                        self.buf_permit = p;
                    }
                    Some(Err(e)) => {
                        self.stop();
                        return Err(e.with_context("read", self.shown.to_string()));
                    }
                    None => {
                        self.stop();
                        return Err(Error::new(
                            ErrorKind::Backend,
                            "the download ended before the end of the file",
                        )
                        .with_context("read", self.shown.to_string()));
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
