//! The S3 side of an upload, and all of it: CreateMultipartUpload, UploadPart, UploadPartCopy,
//! CompleteMultipartUpload, AbortMultipartUpload and the single PutObject, each with its
//! checksum and the commit's conditions. [`super::parts`] decides when to call which; nothing
//! here buffers.
//!
//! Conditions: an append must still find the object it started from, a create-only upload a
//! free name. Servers that enforce `If-Match`/`If-None-Match` on the commit decide that
//! atomically ([`Capabilities`](super::super::probe::Capabilities), probed); elsewhere a HEAD
//! checks just before the commit.

use super::super::checksum::{self, Digest};
use super::super::client::{Body, Request};
use super::super::list::head_entry;
use super::super::probe::{copy_if_match, if_match_value, EtagForm};
use super::super::time::{format_mtime, parse_http_date};
use super::super::xml::{self, EtagResult, InitiateResult};
use super::super::Inner;
use super::{changed, same_etag, taken};
use crate::backend::{Entry, EntryKind};
use crate::budget::MemoryPermit;
use crate::error::{Error, ErrorKind, Result};
use bytes::{Bytes, BytesMut};
use reqwest::Method;
use std::sync::Arc;

/// A part sent: its number, its ETag, and its checksum where Complete must list it.
pub(super) type Part = (u32, String, Option<String>);

/// A sent part's buffer and the budget it holds, given back for the upload's next part: a
/// large upload then fills the same few buffers over and over, instead of allocating a new
/// part-sized buffer for each part and freeing the last. jemalloc gives a freed buffer of 8 MiB
/// or more back to the system at once, so each new one costs a page fault per 4 KiB as it is
/// first written (bench/README.md, "Part buffers filled again").
///
/// The budget still counts a kept buffer: an upload keeps one at most, only while memory is
/// plentiful (nobody waits for it and half the budget is free:
/// [`MemoryBudget::is_plentiful`]), and the upload's own wait for memory takes its finished
/// parts as they come (`Pipeline::open_part`). Under pressure, parts are freed as before.
///
/// [`MemoryBudget::is_plentiful`]: crate::budget::MemoryBudget::is_plentiful
pub(super) struct Spare {
    pub data: BytesMut,
    pub permit: MemoryPermit,
}

/// What must still hold when the upload commits.
#[derive(Clone, Default)]
pub(super) struct Conditions {
    /// The ETag of the appended-to object, which must still be current.
    pub if_match: Option<String>,
    /// The name must still be free.
    pub if_absent: bool,
}

impl Conditions {
    pub(super) fn any(&self) -> bool {
        self.if_absent || self.if_match.is_some()
    }

    /// The conditions as request headers.
    pub(super) fn headers(&self, mut req: Request, form: EtagForm) -> Request {
        if let Some(t) = &self.if_match {
            if form != EtagForm::Omit {
                req = req.header("if-match", if_match_value(t, form));
            }
        }
        if self.if_absent {
            req = req.header("if-none-match", "*");
        }
        req
    }

    /// A refused condition means the name was taken, or the file changed, meanwhile.
    pub(super) fn lost_race(&self, e: Error) -> Error {
        if e.kind() != ErrorKind::Conflict {
            e
        } else if self.if_absent {
            taken().with_source(e)
        } else if self.if_match.is_some() {
            changed().with_source(e)
        } else {
            e
        }
    }
}

/// The S3 calls of one upload of `key`.
#[derive(Clone)]
pub(super) struct S3Parts {
    pub inner: Arc<Inner>,
    pub key: Arc<str>,
    /// The time sent as `x-amz-meta-mtime`, where the remote preserves times and the caller
    /// gave one.
    pub mtime: Option<std::time::SystemTime>,
    /// The checksum every request of this upload carries, fixed when it starts (a probe that
    /// answers meanwhile must not mix MD5 and CRC32C parts in one multipart upload).
    pub checksum: super::super::checksum::Checksum,
}

impl S3Parts {
    /// The appended-to object must still be the one seen at open; a create-only upload's key
    /// must still be free.
    pub(super) async fn check_unchanged(&self, cond: &Conditions) -> Result<()> {
        if cond.if_absent {
            match head_entry(&self.inner, &self.key).await {
                Ok(_) => return Err(taken()),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let Some(expected) = &cond.if_match else {
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

    /// CreateMultipartUpload: the new upload's id.
    pub(super) async fn initiate(&self) -> Result<String> {
        let mut req = checksum::apply_initiate(
            Request::new(Method::POST, Some(&self.key)).query("uploads", ""),
            self.checksum,
        );
        if let Some(m) = self.mtime {
            req = req.header("x-amz-meta-mtime", format_mtime(m));
        }
        let body = self.inner.client.send_xml(&req).await?;
        let r: InitiateResult = xml::parse(&body, "create multipart upload")?;
        if r.upload_id.is_empty() {
            return Err(Error::new(
                ErrorKind::Backend,
                "the remote sent no upload id",
            ));
        }
        crate::metrics::multipart(&self.inner.opts.name, 1, false);
        Ok(r.upload_id)
    }

    /// UploadPart with the part's checksum; its memory is held until the body has gone.
    /// Hashed here, in the part's own task, so the writer goes on filling the next part.
    /// A part sent from memory gives its buffer back, with what it holds of the budget, for
    /// the upload's next part (see [`Spare`]).
    pub(super) async fn upload_part(
        self,
        upload_id: String,
        part: u32,
        body: Body,
        permit: Option<MemoryPermit>,
    ) -> Result<(Part, Option<Spare>)> {
        let sum = checksum::of_body(self.checksum, &body).await?;
        let req = Request::new(Method::PUT, Some(&self.key))
            .query("partNumber", part.to_string())
            .query("uploadId", upload_id);
        let mut req = checksum::apply(req, sum.as_ref()).body(body);
        let resp = self.inner.client.send(&req).await?;
        // The HTTP client has let go of the body once the answer is in; where it has not (the
        // buffer is still shared), or memory is short, the buffer is freed as before.
        let spare = match (std::mem::take(&mut req.body), permit) {
            (Body::Bytes(b), Some(permit)) if self.inner.budget.is_plentiful() => {
                b.try_into_mut().ok().map(|data| Spare { data, permit })
            }
            _ => None,
        };
        checksum::check_etag(
            &resp,
            sum.as_ref(),
            self.inner.opts.encryption.etag_is_md5(),
        )?;
        let etag = resp
            .header("etag")
            .map(str::to_string)
            .ok_or_else(|| Error::new(ErrorKind::Backend, "the remote sent no ETag for a part"))?;
        Ok(((part, etag, sum.and_then(|s| s.part_value())), spare))
    }

    /// UploadPartCopy of bytes `start..end` of the object itself, if it still has `etag`.
    pub(super) async fn copy_part(
        self,
        upload_id: String,
        part: u32,
        (start, end): (u64, u64),
        etag: String,
    ) -> Result<Part> {
        let inner = &self.inner;
        let req = Request::new(Method::PUT, Some(&self.key))
            .query("partNumber", part.to_string())
            .query("uploadId", upload_id)
            .header("x-amz-copy-source", inner.client.copy_source(&self.key))
            .header(
                "x-amz-copy-source-range",
                format!("bytes={start}-{}", end - 1),
            );
        let req = copy_if_match(req, &etag, &inner.caps());
        let body = inner.client.send_xml(&req).await?;
        let r: EtagResult = xml::parse(&body, "upload part copy")?;
        let etag = r
            .etag
            .ok_or_else(|| Error::new(ErrorKind::Backend, "the remote sent no ETag for a part"))?;
        Ok((part, etag, r.checksum_crc32c))
    }

    /// CompleteMultipartUpload of `parts` (sorted), under `cond`.
    pub(super) async fn complete(
        &self,
        upload_id: &str,
        parts: &[Part],
        cond: &Conditions,
    ) -> Result<()> {
        // Where the server enforces the conditions on CompleteMultipartUpload the commit
        // decides alone; elsewhere a HEAD checks just before it.
        let caps = self.inner.caps();
        let enforced = (cond.if_match.is_none() || caps.complete_if_match)
            && (!cond.if_absent || caps.complete_if_none_match);
        if !enforced {
            self.check_unchanged(cond).await?;
        }
        let body = xml::complete_body_with_sums(parts);
        let req = Request::new(Method::POST, Some(&self.key))
            .query("uploadId", upload_id.to_string())
            .header("content-type", "application/xml")
            .body(Body::Bytes(Bytes::from(body)));
        let req = cond.headers(req, caps.etag_form);
        self.inner
            .client
            .send_xml(&req)
            .await
            .map_err(|e| cond.lost_race(e))?;
        crate::metrics::multipart(&self.inner.opts.name, -1, false);
        Ok(())
    }

    /// What a HEAD shows of the object now.
    pub(super) async fn stat(&self) -> Result<Entry> {
        head_entry(&self.inner, &self.key).await
    }

    /// AbortMultipartUpload; a failure is logged (the stale clean-up removes it later).
    pub(super) async fn abort(&self, upload_id: String) {
        crate::metrics::multipart(&self.inner.opts.name, -1, true);
        let req = Request::new(Method::DELETE, Some(&self.key)).query("uploadId", upload_id);
        if let Err(e) = self.inner.client.send(&req).await {
            tracing::warn!(remote = %self.inner.opts.name, key = %self.key, error = ?e,
                "could not abort a multipart upload; it will be cleaned up as stale");
        }
    }

    /// One PutObject of the whole file. `recheck`: whether a HEAD must check the conditions
    /// first where the server does not enforce them. `describe`: build the new entry from the
    /// answer instead of a HEAD.
    pub(super) async fn put_once(
        &self,
        (body, len, sum): (Body, u64, Option<Digest>),
        cond: &Conditions,
        recheck: bool,
        describe: bool,
    ) -> Result<Entry> {
        let mut req =
            checksum::apply(Request::new(Method::PUT, Some(&self.key)), sum.as_ref()).body(body);
        if let Some(m) = self.mtime {
            req = req.header("x-amz-meta-mtime", format_mtime(m));
        }
        let caps = self.inner.caps();
        let enforced = (cond.if_match.is_none() || caps.put_if_match)
            && (!cond.if_absent || caps.put_if_none_match);
        if !enforced && recheck {
            self.check_unchanged(cond).await?;
        }
        // Servers with conditional writes close the last race window; others ignore it.
        let req = cond.headers(req, caps.etag_form);
        let resp = self
            .inner
            .client
            .send(&req)
            .await
            .map_err(|e| cond.lost_race(e))?;
        // A server that stored other bytes than those sent (one that does not verify the
        // checksum header): the file is not what the client sent, so the upload fails.
        checksum::check_etag(
            &resp,
            sum.as_ref(),
            self.inner.opts.encryption.etag_is_md5(),
        )?;
        // A new object is described by what was sent and the answer's ETag: a client's
        // CLOSE waits for nobody's HEAD, and a sync copy records the ETag the next listing
        // shows (its time is the one sent as metadata, or the answer's date, which a sync
        // compares only on a server that lists no ETags, to the second).
        if let Some(etag) = resp.header("etag").filter(|_| describe) {
            let mtime = self
                .mtime
                .or_else(|| resp.header("date").and_then(parse_http_date))
                .unwrap_or_else(std::time::SystemTime::now);
            return Ok(Entry {
                name: self.key.rsplit('/').next().unwrap_or(&self.key).to_string(),
                kind: EntryKind::File,
                size: len,
                mtime: Some(mtime),
                etag: Some(etag.to_string()),
            });
        }
        head_entry(&self.inner, &self.key).await
    }
}
