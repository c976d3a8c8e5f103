//! Uploads to S3, in two layers as in OpenDAL's writer: a generic part pipeline ([`parts`]:
//! fill a buffer, send full parts in the background with back-pressure, commit) over the
//! buffers it fills ([`buffer`], spilling to [`spool`] files) and a small S3-specific side
//! ([`s3`]: initiate, upload part, copy part, complete, abort, single put, and the commit's
//! conditions). So the rules of S3 sit in one file and the flow of bytes in another, and each
//! can be read without the other.
//!
//! Which upload: one PutObject for a small file (a file that never fills its first part), a
//! write-behind multipart upload for the rest, and an append composed server-side from the old
//! object ([`append`]). A copy whose caller can send it again and whose size is known streams
//! files up to `single_put_max` as one PutObject ([`streamed`]): with checksums off, or with
//! `checksum: md5` when the caller knows the bytes' MD5 before it sends them
//! ([`CreateOptions::content_md5`]) and the server was found to refuse a body that does not
//! match it before storing anything ([`super::Capabilities::put_content_md5`]).

mod append;
mod buffer;
mod pace;
mod parts;
mod s3;
mod spool;
mod streamed;

use super::checksum::Checksum;
use super::{Inner, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
use crate::backend::{CreateOptions, Entry, Upload};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::Bytes;
use parts::Pipeline;
use std::sync::Arc;
use streamed::StreamedPut;

/// An upload to S3; see the module documentation.
pub(crate) struct S3Upload {
    st: Option<Pipeline>,
}

pub(super) fn same_etag(a: &str, b: &str) -> bool {
    let norm = |s: &str| {
        s.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_string()
    };
    norm(a) == norm(b)
}

/// An upload whose target changed since it was opened.
pub(super) fn changed() -> Error {
    Error::new(
        ErrorKind::Conflict,
        "the file changed during the append; nothing was changed",
    )
}

/// A create-only upload whose name was taken meanwhile.
pub(super) fn taken() -> Error {
    Error::new(
        ErrorKind::AlreadyExists,
        "a file of this name was created meanwhile; the upload was not committed",
    )
}

pub(super) fn copy_err(e: &Error) -> Error {
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
        let checked = match (inner.opts.checksum, opts.source_hash) {
            (Checksum::Off, _) => true,
            (_, Some(h)) => inner.verifies(h.kind()),
            (_, None) => false,
        };
        // Where the server does not enforce the commit's conditions, the streamed PUT checks
        // them with a HEAD before its last chunk; on a server seen to hold that HEAD until the
        // PUT ends (see `Inner::head_waits_for_put`) it cannot, so the copy goes in parts.
        let caps = inner.caps();
        let enforced = (opts.if_match.is_none() || caps.put_if_match)
            && (!opts.if_absent || caps.put_if_none_match);
        let can_check = enforced
            || !inner
                .head_waits_for_put
                .load(std::sync::atomic::Ordering::Relaxed);
        if opts.resendable
            && checked
            && can_check
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
    let mut st = Pipeline::new(inner, key, opts, first);
    if let Some(existing) = append {
        if let Err(e) = st.start_append(&existing).await {
            st.abort_multipart().await;
            return Err(e);
        }
    }
    Ok(Box::new(S3Upload { st: Some(st) }))
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
                    tracing::warn!(key = %st.s3.key, "an upload was dropped outside the runtime; its multipart upload is left for the stale clean-up")
                }
            }
        }
    }
}
