//! The part pipeline of a buffered upload, in the shape of OpenDAL's multipart writer: bytes
//! fill a part ([`PartBuf`]); a full part is sent in the background while the next fills, at
//! most `transfers.concurrency` at a time and no more than the remote stores in
//! `transfers.finish_within` ([`Pace`]; back-pressure on the writer); the first failure
//! stops the upload; the commit sends what is left and completes. A file that never fills its
//! first part becomes one PutObject, without a multipart upload. Which S3 request does each
//! step is [`S3Parts`]' business; this file decides only when.

use super::super::checksum;
use super::super::{Inner, MAX_PARTS, MAX_PART_SIZE};
use super::buffer::{Opened, Opening, PartBuf};
use super::copy_err;
use super::pace::{Pace, Sample};
use super::s3::{Conditions, Part, S3Parts, Spare};
use crate::backend::{CreateOptions, Entry};
use crate::error::{Error, ErrorKind, Result};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tokio::task::JoinSet;

/// A part request's outcome, with its timing for [`Pace`] (`None`: a server-side copy, which
/// moves no bytes of this process) and its buffer given back for the next part.
pub(super) type PartDone = (Result<Part>, Option<Sample>, Option<Spare>);

/// Everything of an upload in progress; moved out on drop so that the clean-up can run in a
/// spawned task.
pub(super) struct Pipeline {
    pub s3: S3Parts,
    pub opts: CreateOptions,
    pub cond: Conditions,
    /// Size of parts 1 to 1,000; further parts double every 1,000.
    first_part_size: u64,
    buf: PartBuf,
    /// A sent part's buffer, kept for the next part to fill (one at most: parts end about as
    /// often as new ones open, and each spare holds its part's size of the budget).
    spare: Option<Spare>,
    /// A part has filled up: the upload is large, so further parts are allocated whole.
    large: bool,
    pub next_part: u32,
    pub upload_id: Option<String>,
    /// Marks the upload id as held by this process, so the stale clean-up leaves it alone.
    live: Option<super::super::live::LiveUpload>,
    pub tasks: JoinSet<PartDone>,
    /// Bounds the bytes in flight by what the remote stores in `finish_within`.
    pace: Pace,
    parts: Vec<Part>,
    pub written: u64,
    pub failed: Option<Error>,
}

impl Pipeline {
    pub(super) fn new(inner: Arc<Inner>, key: &str, opts: CreateOptions, first: u64) -> Pipeline {
        let mtime = opts.mtime.filter(|_| inner.opts.preserve_mtime);
        let inner_finish_within = inner.opts.finish_within;
        let checksum = inner.checksum();
        let cond = Conditions {
            if_match: opts.if_match.clone(),
            if_absent: opts.if_absent,
        };
        Pipeline {
            s3: S3Parts {
                inner,
                key: Arc::from(key),
                mtime,
                checksum,
            },
            opts,
            cond,
            first_part_size: first,
            buf: PartBuf::new(),
            spare: None,
            large: false,
            next_part: 1,
            upload_id: None,
            live: None,
            tasks: JoinSet::new(),
            pace: Pace::new(inner_finish_within),
            parts: Vec::new(),
            written: 0,
            failed: None,
        }
    }

    pub(super) fn inner(&self) -> &Inner {
        &self.s3.inner
    }

    fn part_size_for(&self, n: u32) -> u64 {
        let tier = (n.saturating_sub(1) / 1000).min(20);
        (self.first_part_size << tier).min(MAX_PART_SIZE)
    }

    pub(super) async fn ensure_multipart(&mut self) -> Result<()> {
        if self.upload_id.is_some() {
            return Ok(());
        }
        let id = self.s3.initiate().await?;
        self.live = Some(super::super::live::register(
            &self.s3.inner,
            &self.s3.key,
            &id,
        ));
        self.upload_id = Some(id);
        Ok(())
    }

    fn record(&mut self, r: std::result::Result<PartDone, tokio::task::JoinError>) {
        if let Ok((_, Some(sample), _)) = &r {
            self.pace.ended(*sample);
        }
        let e = match r {
            Ok((Ok(p), _, spare)) => {
                // Kept only while memory is plentiful (see `Spare`).
                if self.spare.is_none() && self.s3.inner.budget.is_plentiful() {
                    self.spare = spare;
                }
                return self.parts.push(p);
            }
            Ok((Err(e), _, _)) => e,
            Err(e) => Error::new(ErrorKind::Backend, "a part upload task failed").with_source(e),
        };
        if self.failed.is_none() {
            self.failed = Some(e);
        }
    }

    /// Collects finished parts without waiting; fails with the first background error.
    pub(super) fn check(&mut self) -> Result<()> {
        while let Some(r) = self.tasks.try_join_next() {
            self.record(r);
        }
        match &self.failed {
            Some(e) => Err(copy_err(e)),
            None => Ok(()),
        }
    }

    /// Back-pressure: waits until fewer than `concurrency` parts are in flight and a part of
    /// `bytes` more fits in what the remote stores in `finish_within` (see [`Pace`]).
    pub(super) async fn wait_for_slot(&mut self, bytes: u64) -> Result<()> {
        self.check()?;
        while self.tasks.len() >= self.inner().opts.concurrency || !self.pace.admits(bytes) {
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

    /// Sends the filled buffer as the next part, in the background.
    async fn dispatch(&mut self) -> Result<()> {
        if self.next_part > MAX_PARTS {
            return Err(Error::new(
                ErrorKind::LimitReached,
                "the file needs more than 10,000 parts",
            ));
        }
        self.ensure_multipart().await?;
        let bytes = self.buf.len();
        self.wait_for_slot(bytes).await?;
        let (body, permit) = self.buf.take().await?;
        let part = self.next_part;
        self.next_part += 1;
        let id = self.upload_id.clone().unwrap_or_default();
        let s3 = self.s3.clone();
        self.pace.sent(bytes);
        self.tasks.spawn(async move {
            let start = Instant::now();
            let r = s3.upload_part(id, part, body, permit).await;
            let end = Instant::now();
            let sample = Some(Sample { start, end, bytes });
            match r {
                Ok((part, spare)) => (Ok(part), sample, spare),
                Err(e) => (Err(e), sample, None),
            }
        });
        Ok(())
    }

    /// Adds bytes to the object. A full part is sent only when the next byte arrives, so a
    /// file of exactly one part becomes a single PutObject.
    pub(super) async fn push(&mut self, mut data: Bytes) -> Result<()> {
        while !data.is_empty() {
            if self.buf.is_full() {
                self.large = true;
                self.dispatch().await?;
            }
            if !self.buf.is_open() {
                self.open_part().await?;
            }
            let chunk = data.split_to((self.buf.space() as usize).min(data.len()));
            self.buf.append(&self.s3.inner, chunk).await?;
        }
        Ok(())
    }

    /// Opens the next part. A large upload's next part fills the buffer of one already sent,
    /// if it has one of the part's size. Where the part must wait for memory (no disk to
    /// spool to), the wait also takes this upload's parts as they end: a part kept for reuse
    /// then either opens the new part or is given back, so that an upload never waits for
    /// memory its own finished parts hold.
    async fn open_part(&mut self) -> Result<()> {
        self.check()?;
        let how = Opening {
            target: self.part_size_for(self.next_part),
            size_hint: self.opts.size_hint,
            large: self.large,
            first: self.next_part == 1 && self.written == 0,
        };
        let inner = self.s3.inner.clone();
        loop {
            let spare = self.spare.take().filter(|_| how.large);
            let Opened::Wait(want) = self.buf.open(&inner, how, spare).await? else {
                return Ok(());
            };
            tokio::select! {
                p = inner.budget.acquire(want) => {
                    self.buf.open_with(p?, want);
                    return Ok(());
                }
                Some(r) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.record(r);
                    self.check()?;
                }
            }
        }
    }

    async fn commit(&mut self) -> Result<Entry> {
        self.check()?;
        if self.upload_id.is_none() {
            let len = self.buf.len();
            let (body, _permit) = self.buf.take().await?;
            let sum = checksum::of_body(self.s3.checksum, &body).await?;
            // The conditions hold at the commit: where the server does not enforce them, a
            // HEAD checks just before the PUT (a client's upload may have run for hours since
            // its open; a sync copy relies on this check instead of one of its own).
            let o = &self.opts;
            let recheck = o.append_to.is_some() || self.cond.any();
            // The new file is described by what was sent and the answer's ETag, which the
            // next listing shows too: no HEAD after the PUT.
            let describe = o.append_to.is_none();
            return self
                .s3
                .put_once((body, len, sum), &self.cond, recheck, describe)
                .await;
        }
        if self.buf.len() > 0 {
            self.dispatch().await?;
        }
        self.wait_all().await?;
        self.spare = None;
        self.parts.sort_by_key(|p| p.0);
        let id = self.upload_id.clone().unwrap_or_default();
        self.s3.complete(&id, &self.parts, &self.cond).await?;
        self.upload_id = None;
        self.s3.stat().await
    }

    pub(super) async fn abort_multipart(&mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            self.s3.abort(id).await;
        }
        self.buf.clear();
    }

    /// A "not found" while a multipart upload is open means the upload itself is gone: it was
    /// aborted by someone else, or the key was overwritten meanwhile (Garage drops the uploads
    /// of a key when a newer object lands there). For the writer that is a lost race.
    pub(super) fn upload_lost(&self, e: Error) -> Error {
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

    pub(super) async fn finish(mut self) -> Result<Entry> {
        match self.commit().await.map_err(|e| self.upload_lost(e)) {
            Ok(e) => Ok(e),
            Err(e) => {
                self.abort_multipart().await;
                Err(e)
            }
        }
    }

    pub(super) async fn give_up(mut self) {
        if self.opts.keep_partial && self.failed.is_none() {
            let key = self.s3.key.clone();
            let remote = self.inner().opts.name.clone();
            if let Err(e) = self.finish().await {
                tracing::warn!(%remote, %key, error = ?e, "could not keep the partial upload");
            }
            return;
        }
        self.abort_multipart().await;
    }
}
