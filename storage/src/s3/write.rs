//! Uploads: one PutObject for small files, a write-behind multipart upload for the rest, and
//! appends composed server-side. A copy whose caller can send it again and whose size is known
//! streams files up to `single_put_max` as one PutObject ([`StreamedPut`]): with checksums
//! off, or with `checksum: md5` when the caller knows the bytes' MD5 before it sends them
//! ([`CreateOptions::content_md5`]) and the server was found to refuse a body that does not
//! match it before storing anything ([`super::Capabilities::put_content_md5`]).
//!
//! Memory: a part buffer holds a permit of the shared [`MemoryBudget`] for what it has
//! allocated, until it has been sent. The first part of an upload starts small
//! ([`FIRST_BUFFER`], or the announced size) and doubles as it fills, so a thousand small
//! uploads hold about their sizes, not a thousand part sizes; once a part has filled, the
//! upload is known to be large and each further part takes its whole size at its first byte.
//! A writer never waits for the budget while it can spill: a part whose memory is not free
//! when it opens, or whose growth is not free when it fills, goes to a temp file under the
//! spool folder (`<state_dir>/spool`, created when missing) and its permit is returned. So no
//! writer waits while holding a half-filled part, and uploads cannot deadlock each other, nor
//! with other holders of the budget (requests read ahead of an SFTP handler). Only when
//! spooling fails (a full or unwritable disk; logged with the reason) does a writer wait for
//! memory instead, so that the upload still succeeds. Parts larger than the whole budget go to
//! a temp file from their first byte (or, without a disk, shrink to the budget's size).
//!
//! [`MemoryBudget`]: crate::budget::MemoryBudget

use super::checksum::{self, Checksum};
use super::client::{Body, Request};
use super::list::head_entry;
use super::probe::{copy_if_match, if_match_value, EtagForm};
use super::time::{format_mtime, parse_http_date};
use super::xml::{self, EtagResult, InitiateResult};
use super::{Inner, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE, SPOOL_BROKEN, SPOOL_OK};
use crate::backend::{CreateOptions, Entry, Upload};
use crate::budget::MemoryPermit;
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use reqwest::Method;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

/// The first buffer of an upload whose size was not announced; it doubles up to the part size.
pub(crate) const FIRST_BUFFER: u64 = 64 * 1024;

/// Writes up to this size are hashed on the writer's task; larger ones on a blocking thread.
const INLINE_HASH: usize = 256 * 1024;

/// The part being filled.
enum Buf {
    Empty,
    Mem {
        data: BytesMut,
        /// Bytes allocated for `data` (what the permit covers, before its rounding).
        cap: u64,
        permit: MemoryPermit,
    },
    Disk {
        file: tokio::fs::File,
        len: u64,
    },
}

impl Buf {
    fn len(&self) -> u64 {
        match self {
            Buf::Empty => 0,
            Buf::Mem { data, .. } => data.len() as u64,
            Buf::Disk { len, .. } => *len,
        }
    }
}

/// A part sent: its number, its ETag, and its checksum where Complete must list it.
type Part = (u32, String, Option<String>);
type PartResult = Result<Part>;

/// Everything of an upload in progress; moved out on drop so that the clean-up can run in a
/// spawned task.
struct State {
    inner: Arc<Inner>,
    key: String,
    opts: CreateOptions,
    first_part_size: u64,
    buf: Buf,
    /// The checksum of the part being filled, updated as its bytes arrive, so that a full
    /// part goes out without a pass over its bytes first.
    sum: Option<checksum::Hasher>,
    /// Size of the part being filled (fixed when its first byte arrives).
    target: u64,
    /// A part has filled up: the upload is large, so further parts are allocated whole.
    large: bool,
    next_part: u32,
    upload_id: Option<String>,
    /// Marks the upload id as held by this process, so the stale clean-up leaves it alone.
    live: Option<super::live::LiveUpload>,
    tasks: JoinSet<PartResult>,
    parts: Vec<Part>,
    written: u64,
    failed: Option<Error>,
    /// The ETag of the appended-to object, which must still be current at commit.
    if_match: Option<String>,
}

/// An upload to S3; see the module documentation.
pub(crate) struct S3Upload {
    st: Option<State>,
}

fn same_etag(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    norm(a) == norm(b)
}

/// An upload whose target changed since it was opened.
fn changed() -> Error {
    Error::new(
        ErrorKind::Conflict,
        "the file changed during the append; nothing was changed",
    )
}

/// A create-only upload whose name was taken meanwhile.
fn taken() -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        "a file of this name was created meanwhile; the upload was not committed",
    )
}

fn copy_err(e: &Error) -> Error {
    Error::new(e.kind(), e.message().to_string()).set_retryable(e.is_retryable())
}

/// Starts an upload of `key`; for an append, checks the object and starts copying it.
pub(crate) async fn create(
    inner: Arc<Inner>,
    key: &str,
    opts: CreateOptions,
) -> Result<Box<dyn Upload>> {
    if let Some(len) = opts.size_hint {
        // Its body streams out before its last byte is known, so it can only carry a checksum
        // the caller knew before (a sync that hashed its source), and only where the server
        // was found to refuse a body that does not match it before storing anything. Other
        // uploads are buffered like the rest while checksums are on.
        let checked = match inner.opts.checksum {
            Checksum::Off => true,
            Checksum::Md5 => opts.content_md5.is_some() && inner.content_md5_verified(),
            Checksum::Crc32c => false,
        };
        if opts.resendable
            && checked
            && opts.append_to.is_none()
            && !opts.keep_partial
            && len > inner.opts.part_size
            && len <= inner.opts.single_put_max
        {
            return Ok(Box::new(StreamedPut::start(inner, key, &opts, len)));
        }
    }
    let mut first = inner.opts.part_size;
    if let Some(hint) = opts.size_hint {
        // Parts double every 1,000 anyway; this only spares very large announced files from
        // thousands of small parts.
        let need = hint
            .div_ceil(u64::from(MAX_PARTS))
            .next_multiple_of(1024 * 1024);
        first = first.max(need).clamp(MIN_PART_SIZE, MAX_PART_SIZE);
    }
    let append = opts.append_to.clone();
    let if_match = opts.if_match.clone();
    let mut st = State {
        inner,
        key: key.to_string(),
        opts,
        first_part_size: first,
        buf: Buf::Empty,
        sum: None,
        target: 0,
        large: false,
        next_part: 1,
        upload_id: None,
        live: None,
        tasks: JoinSet::new(),
        parts: Vec::new(),
        written: 0,
        failed: None,
        if_match,
    };
    if let Some(existing) = append {
        if let Err(e) = st.start_append(&existing).await {
            st.abort_multipart().await;
            return Err(e);
        }
    }
    Ok(Box::new(S3Upload { st: Some(st) }))
}

impl State {
    fn part_size_for(&self, n: u32) -> u64 {
        let tier = (n.saturating_sub(1) / 1000).min(20);
        (self.first_part_size << tier).min(MAX_PART_SIZE)
    }

    fn mtime_header(&self) -> Option<String> {
        if self.inner.opts.preserve_mtime {
            self.opts.mtime.map(format_mtime)
        } else {
            None
        }
    }

    /// The appended-to object must still be the one seen at open; a create-only upload's key
    /// must still be free.
    async fn check_unchanged(&self) -> Result<()> {
        if self.opts.if_absent {
            match head_entry(&self.inner, &self.key).await {
                Ok(_) => return Err(taken()),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let Some(expected) = &self.if_match else {
            return Ok(());
        };
        let now = match head_entry(&self.inner, &self.key).await {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the file was removed during the append",
                ))
            }
            Err(e) => return Err(e),
        };
        match now.etag {
            Some(t) if same_etag(&t, expected) => Ok(()),
            _ => Err(changed()),
        }
    }

    async fn start_append(&mut self, existing: &Entry) -> Result<()> {
        let etag = existing.etag.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::Conflict,
                "the file to append to has no version tag",
            )
        })?;
        self.if_match = Some(etag.clone());
        self.check_unchanged().await?;
        // An in-place write keeps only the head of the old object; what follows comes anew.
        let size = existing.size.min(self.opts.keep_head.unwrap_or(u64::MAX));
        if size >= MIN_PART_SIZE {
            // Server-side: the old bytes become the first parts, copied in ranges of at most
            // 5 GiB (`max_copy_range`, at least 10 MiB). The ranges are of equal size, so each is
            // at least 5 MiB (S3's minimum for every part but the last); the new bytes follow
            // as further parts, the last of which may be small. So no tail of the old object
            // needs to pass through this process.
            self.ensure_multipart().await?;
            let n = size.div_ceil(self.inner.opts.max_copy_range);
            let chunk = size.div_ceil(n);
            let mut start = 0;
            while start < size {
                let end = (start + chunk).min(size);
                self.wait_for_slot().await?;
                let part = self.next_part;
                self.next_part += 1;
                let inner = self.inner.clone();
                let req = Request::new(Method::PUT, Some(&self.key))
                    .query("partNumber", part.to_string())
                    .query("uploadId", self.upload_id.clone().unwrap_or_default())
                    .header("x-amz-copy-source", inner.client.copy_source(&self.key))
                    .header(
                        "x-amz-copy-source-range",
                        format!("bytes={start}-{}", end - 1),
                    );
                let req = copy_if_match(req, &etag, &inner.caps());
                self.tasks.spawn(async move {
                    let body = inner.client.send_xml(&req).await?;
                    let r: EtagResult = xml::parse(&body, "upload part copy")?;
                    let etag = r.etag.ok_or_else(|| {
                        Error::new(ErrorKind::Backend, "the remote sent no ETag for a part")
                    })?;
                    Ok((part, etag, r.checksum_crc32c))
                });
                start = end;
            }
        } else if size > 0 {
            // Small: read the old bytes (only if still the same object) and send them again,
            // as they come, through the same parts as the new bytes.
            let form = self.inner.caps().etag_form;
            let mut req = Request::new(Method::GET, Some(&self.key))
                .header("if-match", if_match_value(&etag, form));
            if size < existing.size {
                req = req.header("range", format!("bytes=0-{}", size - 1));
            }
            let mut old = Box::pin(self.inner.client.send(&req).await?.stream());
            let mut got = 0u64;
            while let Some(chunk) = old.next().await {
                let chunk = chunk?;
                got += chunk.len() as u64;
                if got > size {
                    break;
                }
                self.push(chunk).await?;
            }
            if got != size {
                return Err(Error::new(
                    ErrorKind::Conflict,
                    "the file changed during the append; nothing was changed",
                ));
            }
        }
        Ok(())
    }

    async fn ensure_multipart(&mut self) -> Result<()> {
        if self.upload_id.is_some() {
            return Ok(());
        }
        let mut req = checksum::apply_initiate(
            Request::new(Method::POST, Some(&self.key)).query("uploads", ""),
            self.inner.opts.checksum,
        );
        if let Some(m) = self.mtime_header() {
            req = req.header("x-amz-meta-mtime", m);
        }
        let body = self.inner.client.send_xml(&req).await?;
        let r: InitiateResult = xml::parse(&body, "create multipart upload")?;
        if r.upload_id.is_empty() {
            return Err(Error::new(
                ErrorKind::Backend,
                "the remote sent no upload id",
            ));
        }
        self.live = Some(super::live::register(&r.upload_id));
        self.upload_id = Some(r.upload_id);
        crate::metrics::multipart(&self.inner.opts.name, 1, false);
        Ok(())
    }

    fn record(&mut self, r: std::result::Result<PartResult, tokio::task::JoinError>) {
        match r {
            Ok(Ok(p)) => self.parts.push(p),
            Ok(Err(e)) => {
                if self.failed.is_none() {
                    self.failed = Some(e);
                }
            }
            Err(e) => {
                if self.failed.is_none() {
                    self.failed = Some(
                        Error::new(ErrorKind::Backend, "a part upload task failed").with_source(e),
                    );
                }
            }
        }
    }

    /// Collects finished parts without waiting; fails with the first background error.
    fn check(&mut self) -> Result<()> {
        while let Some(r) = self.tasks.try_join_next() {
            self.record(r);
        }
        match &self.failed {
            Some(e) => Err(copy_err(e)),
            None => Ok(()),
        }
    }

    /// Back-pressure: waits until fewer than `concurrency` parts are in flight.
    async fn wait_for_slot(&mut self) -> Result<()> {
        self.check()?;
        while self.tasks.len() >= self.inner.opts.concurrency {
            if let Some(r) = self.tasks.join_next().await {
                self.record(r);
            }
            self.check()?;
        }
        Ok(())
    }

    async fn wait_all(&mut self) -> Result<()> {
        while let Some(r) = self.tasks.join_next().await {
            self.record(r);
        }
        self.check()
    }

    /// Opens the next part's buffer: memory when the budget has it free now, else disk. When
    /// spooling is impossible (see [`spool_file`]), waits for the memory instead: this is the
    /// only place where a writer waits for the budget, and it holds nothing of its part then.
    ///
    /// Not waiting while the disk can take the part matters: other buffers of the process
    /// (requests read ahead of a session's handler) hold budget until their handler, and so
    /// perhaps this very writer, makes progress.
    async fn open_part(&mut self) -> Result<()> {
        let mut target = self.part_size_for(self.next_part);
        let budget = self.inner.budget.clone();
        if !budget.can_hold(target) {
            match spool_file(&self.inner).await {
                Ok(file) => {
                    self.target = target;
                    self.buf = Buf::Disk { file, len: 0 };
                    return Ok(());
                }
                // Parts need not all be the same size (every part but the last must reach
                // S3's minimum, 5 MiB): without a disk, a part is as large as the budget.
                Err(_) => target = budget.total(),
            }
        }
        self.target = target;
        let want = match self.opts.size_hint {
            _ if self.large => target,
            // A first part of a file announced as small only needs what was announced.
            Some(h) if self.next_part == 1 && self.written == 0 => target.min(h.max(1)),
            // A part that starts small grows, and a growth the budget cannot grant at once
            // spills to disk. Without a disk, it would have to wait holding its part, and
            // such waiters can hold the whole budget: so the part takes its size at once.
            _ if !spool_usable(&self.inner).await => target,
            _ => target.min(FIRST_BUFFER),
        };
        let permit = match budget.try_acquire(want) {
            Some(p) => p,
            None => match spool_file(&self.inner).await {
                Ok(file) => {
                    self.buf = Buf::Disk { file, len: 0 };
                    return Ok(());
                }
                Err(_) => {
                    let want = if self.opts.size_hint.is_some() {
                        want
                    } else {
                        target
                    };
                    budget.acquire(want).await?
                }
            },
        };
        let cap = permit.bytes().min(target).max(want);
        self.buf = Buf::Mem {
            data: BytesMut::with_capacity(cap as usize),
            cap,
            permit,
        };
        Ok(())
    }

    /// Makes room for `need` bytes in the memory buffer: doubles it (up to the part size) when
    /// the budget has the growth free right now; otherwise moves the part to disk, releasing
    /// its permit, since waiting here while holding the part could deadlock.
    async fn grow(&mut self, need: u64) -> Result<()> {
        let Buf::Mem { data, cap, permit } = &mut self.buf else {
            return Ok(());
        };
        if need <= *cap {
            return Ok(());
        }
        let new_cap = need.max(*cap * 2).min(self.target.max(need));
        if let Some(more) = self
            .inner
            .budget
            .try_acquire(new_cap.saturating_sub(permit.bytes()))
        {
            permit.merge(more);
            // One copy per doubling: at most log2(part size / first buffer) per part, and only
            // for the first part of an upload.
            let mut grown = BytesMut::with_capacity(new_cap as usize);
            grown.extend_from_slice(data);
            *data = grown;
            *cap = new_cap;
            return Ok(());
        }
        let mut file = match spool_file(&self.inner).await {
            Ok(f) => f,
            Err(_) => {
                // No disk to spill to (logged by `spool_file`): wait for the growth rather than
                // fail the upload. This can stall while every buffer of the budget waits the
                // same way, which is why spooling is the normal path.
                let more = self
                    .inner
                    .budget
                    .acquire(new_cap.saturating_sub(permit.bytes()))
                    .await?;
                permit.merge(more);
                let mut grown = BytesMut::with_capacity(new_cap as usize);
                grown.extend_from_slice(data);
                *data = grown;
                *cap = new_cap;
                return Ok(());
            }
        };
        let Buf::Mem { data, .. } = std::mem::replace(&mut self.buf, Buf::Empty) else {
            unreachable!("matched above");
        };
        file.write_all(&data).await?;
        self.buf = Buf::Disk {
            file,
            len: data.len() as u64,
        };
        Ok(())
    }

    async fn append_buf(&mut self, chunk: Bytes) -> Result<()> {
        let need = self.buf.len() + chunk.len() as u64;
        self.grow(need).await?;
        self.hash(&chunk).await?;
        match &mut self.buf {
            Buf::Empty => unreachable!("opened before"),
            Buf::Mem { data, .. } => data.extend_from_slice(&chunk),
            Buf::Disk { file, len } => {
                file.write_all(&chunk).await?;
                *len += chunk.len() as u64;
            }
        }
        Ok(())
    }

    /// Adds `chunk` to the part's checksum: on this task for the usual small writes (an SFTP
    /// WRITE is 32 KiB, about 70 µs of MD5), off the async threads for large ones.
    async fn hash(&mut self, chunk: &Bytes) -> Result<()> {
        let Some(mut h) = self
            .sum
            .take()
            .or_else(|| checksum::Hasher::new(self.inner.opts.checksum))
        else {
            return Ok(());
        };
        if chunk.len() <= INLINE_HASH {
            h.update(chunk);
        } else {
            let c = chunk.clone();
            h = tokio::task::spawn_blocking(move || {
                h.update(&c);
                h
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Backend, "hashing a part failed").with_source(e))?;
        }
        self.sum = Some(h);
        Ok(())
    }

    /// The filled part's body, what holds its memory, and its checksum.
    async fn take_body(&mut self) -> Result<(Body, Option<MemoryPermit>, Option<checksum::Digest>)> {
        let sum = self
            .sum
            .take()
            .or_else(|| checksum::Hasher::new(self.inner.opts.checksum))
            .map(checksum::Hasher::finish);
        Ok(match std::mem::replace(&mut self.buf, Buf::Empty) {
            Buf::Empty => (Body::Empty, None, sum),
            Buf::Mem { data, permit, .. } => (Body::Bytes(data.freeze()), Some(permit), sum),
            Buf::Disk { mut file, len } => {
                file.flush().await?;
                let std = file.into_std().await;
                (Body::File(Arc::new(std), len), None, sum)
            }
        })
    }

    /// Sends the filled buffer as the next part, in the background.
    async fn dispatch(&mut self) -> Result<()> {
        if self.next_part > MAX_PARTS {
            return Err(Error::new(
                ErrorKind::LimitReached,
                "the file needs more than 10,000 parts",
            ));
        }
        self.ensure_multipart().await?;
        self.wait_for_slot().await?;
        let (body, permit, sum) = self.take_body().await?;
        let part = self.next_part;
        self.next_part += 1;
        let inner = self.inner.clone();
        let req = Request::new(Method::PUT, Some(&self.key))
            .query("partNumber", part.to_string())
            .query("uploadId", self.upload_id.clone().unwrap_or_default());
        self.tasks.spawn(async move {
            let req = checksum::apply(req, sum.as_ref()).body(body);
            let resp = inner.client.send(&req).await?;
            drop(permit);
            checksum::check_etag(&resp, sum.as_ref(), inner.opts.encryption.etag_is_md5())?;
            let etag = resp.header("etag").map(str::to_string).ok_or_else(|| {
                Error::new(ErrorKind::Backend, "the remote sent no ETag for a part")
            })?;
            Ok((part, etag, sum.and_then(|s| s.part_value())))
        });
        Ok(())
    }

    /// Adds bytes to the object. A full part is sent only when the next byte arrives, so a
    /// file of exactly one part becomes a single PutObject.
    async fn push(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            if !matches!(self.buf, Buf::Empty) && self.buf.len() >= self.target {
                self.large = true;
                self.dispatch().await?;
            }
            if matches!(self.buf, Buf::Empty) {
                self.open_part().await?;
            }
            let space = (self.target - self.buf.len()) as usize;
            let chunk = data.split_to(space.min(data.len()));
            self.append_buf(chunk).await?;
        }
        Ok(())
    }

    async fn commit(&mut self) -> Result<Entry> {
        self.check()?;
        if self.upload_id.is_none() {
            let len = self.buf.len();
            let (body, _permit, sum) = self.take_body().await?;
            let mut req = checksum::apply(Request::new(Method::PUT, Some(&self.key)), sum.as_ref())
                .body(body);
            if let Some(m) = self.mtime_header() {
                req = req.header("x-amz-meta-mtime", m);
            }
            // A sync copy (resendable) checked its target a moment before it started; a client's
            // upload may have run for hours since its open, so it checks again now, unless the
            // server was found to enforce the request's conditions itself (then the PUT alone
            // decides, atomically, and the HEAD would only cost a round trip).
            let caps = self.inner.caps();
            let enforced = (self.if_match.is_none() || caps.put_if_match)
                && (!self.opts.if_absent || caps.put_if_none_match);
            if !enforced
                && (self.opts.append_to.is_some()
                    || (!self.opts.resendable && self.if_match.is_some())
                    || (!self.opts.resendable && self.opts.if_absent))
            {
                self.check_unchanged().await?;
            }
            // Servers with conditional writes close the last race window; others ignore it.
            req = self.conditions(req);
            let resp = self
                .inner
                .client
                .send(&req)
                .await
                .map_err(|e| self.lost_race(e))?;
            // A server that stored other bytes than those sent (one that does not verify the
            // checksum header): the file is not what the client sent, so the upload fails.
            checksum::check_etag(
                &resp,
                sum.as_ref(),
                self.inner.opts.encryption.etag_is_md5(),
            )?;
            // A client's new object is described by what it sent and the answer's ETag: its
            // CLOSE waits for nobody's HEAD. A sync copy records what a HEAD shows (the time
            // the next listing compares with).
            if !self.opts.resendable && self.opts.append_to.is_none() {
                if let Some(etag) = resp.header("etag") {
                    let mtime = self
                        .mtime_header()
                        .and(self.opts.mtime)
                        .or_else(|| resp.header("date").and_then(parse_http_date))
                        .unwrap_or_else(std::time::SystemTime::now);
                    return Ok(Entry {
                        name: self.key.rsplit('/').next().unwrap_or(&self.key).to_string(),
                        kind: crate::backend::EntryKind::File,
                        size: len,
                        mtime: Some(mtime),
                        etag: Some(etag.to_string()),
                    });
                }
            }
        } else {
            if self.buf.len() > 0 {
                self.dispatch().await?;
            }
            self.wait_all().await?;
            self.parts.sort_by_key(|p| p.0);
            // Where the server enforces the conditions on CompleteMultipartUpload the commit
            // decides alone; elsewhere a HEAD checks just before it.
            let caps = self.inner.caps();
            let enforced = (self.if_match.is_none() || caps.complete_if_match)
                && (!self.opts.if_absent || caps.complete_if_none_match);
            if !enforced {
                self.check_unchanged().await?;
            }
            let body = xml::complete_body_with_sums(&self.parts);
            let mut req = Request::new(Method::POST, Some(&self.key))
                .query("uploadId", self.upload_id.clone().unwrap_or_default())
                .header("content-type", "application/xml")
                .body(Body::Bytes(Bytes::from(body)));
            req = self.conditions(req);
            self.inner
                .client
                .send_xml(&req)
                .await
                .map_err(|e| self.lost_race(e))?;
            self.upload_id = None;
            crate::metrics::multipart(&self.inner.opts.name, -1, false);
        }
        head_entry(&self.inner, &self.key).await
    }

    /// The commit's conditions as headers.
    fn conditions(&self, mut req: Request) -> Request {
        let form = self.inner.caps().etag_form;
        if let Some(t) = &self.if_match {
            if form != EtagForm::Omit {
                req = req.header("if-match", if_match_value(t, form));
            }
        }
        if self.opts.if_absent {
            req = req.header("if-none-match", "*");
        }
        req
    }

    /// A refused condition of a create-only upload means the name was taken meanwhile.
    fn lost_race(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Conflict {
            e
        } else if self.opts.if_absent {
            taken().with_source(e)
        } else if self.if_match.is_some() {
            changed().with_source(e)
        } else {
            e
        }
    }

    async fn abort_multipart(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            crate::metrics::multipart(&self.inner.opts.name, -1, true);
            let req = Request::new(Method::DELETE, Some(&self.key)).query("uploadId", id);
            if let Err(e) = self.inner.client.send(&req).await {
                tracing::warn!(remote = %self.inner.opts.name, key = %self.key, error = ?e,
                    "could not abort a multipart upload; it will be cleaned up as stale");
            }
        }
        self.buf = Buf::Empty;
    }

    /// A "not found" while a multipart upload is open means the upload itself is gone: it was
    /// aborted by someone else, or the key was overwritten meanwhile (Garage drops the uploads
    /// of a key when a newer object lands there). For the writer that is a lost race.
    fn upload_lost(&self, e: Error) -> Error {
        if e.kind() == ErrorKind::NotFound && self.upload_id.is_some() {
            Error::new(
                ErrorKind::Conflict,
                "the upload was cancelled on the remote: the file was overwritten or the \
                 upload aborted meanwhile",
            )
            .with_source(e)
        } else {
            e
        }
    }

    async fn finish(mut self) -> Result<Entry> {
        match self.commit().await.map_err(|e| self.upload_lost(e)) {
            Ok(e) => Ok(e),
            Err(e) => {
                self.abort_multipart().await;
                Err(e)
            }
        }
    }

    async fn give_up(mut self) {
        if self.opts.keep_partial && self.failed.is_none() {
            let key = self.key.clone();
            let remote = self.inner.opts.name.clone();
            if let Err(e) = self.finish().await {
                tracing::warn!(%remote, %key, error = ?e, "could not keep the partial upload");
            }
            return;
        }
        self.abort_multipart().await;
    }
}

/// Whether parts can be spooled now, as far as the last attempt knows (the first asks the
/// disk).
async fn spool_usable(inner: &Inner) -> bool {
    match inner.spool.load(Ordering::Relaxed) {
        SPOOL_OK => true,
        SPOOL_BROKEN => false,
        _ => spool_file(inner).await.is_ok(),
    }
}

/// A temp file for a part under the spool folder (`<state_dir>/spool`), created when missing
/// (at start, and again here should someone remove it meanwhile). The file has no name: it is
/// gone with its last handle, even after a crash. When spooling starts failing, one line says
/// why; the callers then wait for memory instead.
async fn spool_file(inner: &Inner) -> Result<tokio::fs::File> {
    let dir = inner.opts.spool_dir.clone();
    let shown = dir.clone();
    let r = tokio::task::spawn_blocking(move || match dir {
        Some(d) => tempfile::tempfile_in(&d).or_else(|e| {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(e);
            }
            std::fs::create_dir_all(&d)?;
            tempfile::tempfile_in(&d)
        }),
        None => tempfile::tempfile(),
    })
    .await
    .map_err(std::io::Error::other)
    .and_then(|r| r);
    match r {
        Ok(f) => {
            if inner.spool.swap(SPOOL_OK, Ordering::Relaxed) == SPOOL_BROKEN {
                tracing::info!(remote = %inner.opts.name, "upload parts can be spooled to disk again");
            }
            Ok(tokio::fs::File::from_std(f))
        }
        Err(e) => {
            if inner.spool.swap(SPOOL_BROKEN, Ordering::Relaxed) != SPOOL_BROKEN {
                let shown = shown.unwrap_or_else(std::env::temp_dir);
                tracing::warn!(remote = %inner.opts.name, error = %e,
                    "cannot spool upload parts to {}: uploads wait for memory instead",
                    shown.display());
            }
            Err(Error::new(ErrorKind::Backend, "cannot spool to disk").with_source(e))
        }
    }
}

#[async_trait]
impl Upload for S3Upload {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let st = self
            .st
            .as_mut()
            .ok_or_else(|| Error::of(ErrorKind::InvalidInput))?;
        st.check()?;
        let len = data.len() as u64;
        if let Err(e) = st.push(data).await {
            let e = st.upload_lost(e);
            if st.failed.is_none() {
                st.failed = Some(copy_err(&e));
            }
            return Err(e);
        }
        st.written += len;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.st.as_ref().map(|s| s.written).unwrap_or(0)
    }

    async fn finish(mut self: Box<Self>) -> Result<Entry> {
        let st = self
            .st
            .take()
            .ok_or_else(|| Error::of(ErrorKind::InvalidInput))?;
        st.finish().await
    }

    async fn abort(mut self: Box<Self>) {
        if let Some(st) = self.st.take() {
            st.give_up().await;
        }
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped without finish or abort (a client vanished): clean up in the background so
        // that no multipart upload is left behind.
        if let Some(st) = self.st.take() {
            if st.upload_id.is_none() && !st.opts.keep_partial {
                return;
            }
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(st.give_up());
                }
                Err(_) => {
                    tracing::warn!(key = %st.key, "an upload was dropped outside the runtime; its multipart upload is left for the stale clean-up")
                }
            }
        }
    }
}

/// One PutObject of a size known up front, whose body is sent as it is written: no buffer, one
/// request. The last chunk is held back until [`Upload::finish`], so the server never receives
/// the whole body of an upload that is aborted or dropped, and stores nothing. A failure cannot
/// be retried here (the bytes are gone): only callers that can send again use it
/// ([`CreateOptions::resendable`]).
pub(crate) struct StreamedPut {
    inner: Arc<Inner>,
    key: String,
    len: u64,
    /// Accepted so far, `held` included.
    written: u64,
    held: Option<Bytes>,
    /// The commit's conditions, checked again just before the last chunk goes (for servers
    /// that ignore them on the request).
    if_absent: bool,
    if_match: Option<String>,
    tx: Option<tokio::sync::mpsc::Sender<std::io::Result<Bytes>>>,
    task: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl StreamedPut {
    fn start(inner: Arc<Inner>, key: &str, opts: &CreateOptions, len: u64) -> StreamedPut {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = Body::Stream(Arc::new(std::sync::Mutex::new(Some(rx))), len);
        let mut req = Request::new(Method::PUT, Some(key)).body(body);
        if inner.opts.preserve_mtime {
            if let Some(m) = opts.mtime {
                req = req.header("x-amz-meta-mtime", format_mtime(m));
            }
        }
        let caps = inner.caps();
        if let Some(t) = &opts.if_match {
            if caps.etag_form != EtagForm::Omit {
                req = req.header("if-match", if_match_value(t, caps.etag_form));
            }
        }
        if opts.if_absent {
            req = req.header("if-none-match", "*");
        }
        // The server verifies it before it stores anything (`create` made sure of that).
        let sum = opts
            .content_md5
            .filter(|_| inner.opts.checksum != Checksum::Off)
            .map(checksum::Digest::Md5);
        req = checksum::apply(req, sum.as_ref());
        let i = inner.clone();
        let task = tokio::spawn(async move {
            let resp = i.client.send(&req).await?;
            // Its ETag, where that is an MD5, must be the one sent (a server that stored other
            // bytes all the same cannot make them look sent).
            let checked =
                checksum::check_etag(&resp, sum.as_ref(), i.opts.encryption.etag_is_md5());
            // Read the (empty) answer, so that the connection goes back to the pool.
            resp.bytes().await?;
            checked
        });
        StreamedPut {
            inner,
            key: key.to_string(),
            len,
            written: 0,
            held: None,
            if_absent: opts.if_absent,
            if_match: opts.if_match.clone(),
            tx: Some(tx),
            task: Some(task),
        }
    }

    /// Why the request ended before its body did.
    async fn failure(&mut self) -> Error {
        self.tx = None;
        match self.task.take() {
            Some(t) => match t.await {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::new(
                    ErrorKind::Backend,
                    "the remote answered before the whole file was sent",
                ),
                Err(e) => Error::new(ErrorKind::Backend, "an upload task failed").with_source(e),
            },
            None => Error::new(ErrorKind::Backend, "the upload already failed"),
        }
    }

    async fn send(&mut self, chunk: Bytes) -> Result<()> {
        let sent = match &self.tx {
            Some(tx) => tx.send(Ok(chunk)).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure().await)
        }
    }

    /// Drops the request mid-body: the server sees a short body and keeps nothing.
    fn cut(&mut self) {
        self.held = None;
        self.tx = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

#[async_trait]
impl Upload for StreamedPut {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let n = data.len() as u64;
        if self.written + n > self.len {
            self.cut();
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!("more bytes than the {} announced", self.len),
            ));
        }
        if let Some(prev) = self.held.replace(data) {
            if let Err(e) = self.send(prev).await {
                self.cut();
                return Err(e);
            }
        }
        self.written += n;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn finish(mut self: Box<Self>) -> Result<Entry> {
        if self.written != self.len {
            self.cut();
            return Err(Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "{} bytes arrived of the {} announced",
                    self.written, self.len
                ),
            ));
        }
        let caps = self.inner.caps();
        let enforced = (self.if_match.is_none() || caps.put_if_match)
            && (!self.if_absent || caps.put_if_none_match);
        if !enforced && (self.if_absent || self.if_match.is_some()) {
            // Until the last chunk is sent the server stores nothing: a destination that
            // changed meanwhile keeps its version. (A server that enforces the conditions
            // refuses the PUT itself.)
            let now = head_entry(&self.inner, &self.key).await;
            let lost = match (&now, &self.if_match) {
                (Ok(_), None) => Some(taken()),
                (Err(e), _) if e.kind() == ErrorKind::NotFound => {
                    self.if_match.as_ref().map(|_| {
                        Error::new(
                            ErrorKind::Conflict,
                            "the file was removed during the upload",
                        )
                    })
                }
                (Err(_), _) => None,
                (Ok(e), Some(t)) => match &e.etag {
                    Some(now) if same_etag(now, t) => None,
                    _ => Some(Error::new(
                        ErrorKind::Conflict,
                        "the file changed during the upload; it was not replaced",
                    )),
                },
            };
            if let Some(e) = lost {
                self.cut();
                return Err(e);
            }
            match now {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    self.cut();
                    return Err(e);
                }
                _ => {}
            }
        }
        if let Some(last) = self.held.take() {
            if let Err(e) = self.send(last).await {
                return Err(if self.if_absent && e.kind() == ErrorKind::Conflict {
                    taken().with_source(e)
                } else {
                    e
                });
            }
        }
        self.tx = None;
        let done = match self.task.take() {
            Some(t) => t.await.map_err(|e| {
                Error::new(ErrorKind::Backend, "an upload task failed").with_source(e)
            })?,
            None => Err(Error::new(ErrorKind::Backend, "the upload already failed")),
        };
        if let Err(e) = done {
            return Err(if self.if_absent && e.kind() == ErrorKind::Conflict {
                taken().with_source(e)
            } else {
                e
            });
        }
        head_entry(&self.inner, &self.key).await
    }

    async fn abort(mut self: Box<Self>) {
        self.cut();
    }
}

impl Drop for StreamedPut {
    fn drop(&mut self) {
        self.cut();
    }
}
