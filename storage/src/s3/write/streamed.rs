//! A copy whose size is known and whose caller can send it again, as one PutObject streamed
//! as it is written: no buffer, one request, nothing left behind by a crash. Used only where
//! the body's checksum can be trusted or is not asked for (see [`super::create`]).

use super::super::checksum::{self, Checksum};
use super::super::client::{Body, Request};
use super::super::list::head_entry;
use super::super::time::format_mtime;
use super::super::Inner;
use super::s3::Conditions;
use super::{same_etag, taken};
use crate::backend::{CreateOptions, Entry, SourceHash, Upload};
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Method;
use std::sync::Arc;
use std::time::Duration;

/// How long the check before the last chunk may wait (a HEAD, a round trip on any server that
/// does not lock the key during a PUT).
const HEAD_DURING_PUT: Duration = Duration::from_secs(5);

/// One PutObject of a size known up front, whose body is sent as it is written: no buffer, one
/// request. The last chunk is held back until [`Upload::finish`], so the server never receives
/// the whole body of an upload that is aborted or dropped, and stores nothing. A failure cannot
/// be retried here (the bytes are gone): only callers that can send again use it
/// ([`CreateOptions::resendable`]).
pub(super) struct StreamedPut {
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
    pub(super) fn start(
        inner: Arc<Inner>,
        key: &str,
        opts: &CreateOptions,
        len: u64,
    ) -> StreamedPut {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let body = Body::Stream(Arc::new(std::sync::Mutex::new(Some(rx))), len);
        let mut req = Request::new(Method::PUT, Some(key)).body(body);
        if inner.opts.preserve_mtime {
            if let Some(m) = opts.mtime {
                req = req.header("x-amz-meta-mtime", format_mtime(m));
            }
        }
        let cond = Conditions {
            if_match: opts.if_match.clone(),
            if_absent: opts.if_absent,
        };
        req = cond.headers(req, inner.caps().etag_form);
        // The server verifies it before it stores anything (`create` made sure of that).
        let sum = opts
            .source_hash
            .filter(|_| inner.opts.checksum != Checksum::Off)
            .map(|h| match h {
                SourceHash::Md5(d) => checksum::Digest::Md5(d),
                SourceHash::Crc32c(c) => checksum::Digest::Crc32c(c),
            });
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
            // A server that locks the key for the whole PUT holds this HEAD until the PUT ends,
            // and the PUT waits for its last chunk: give up on the PUT (nothing is stored
            // without its last chunk), remember the server's way, and let the caller send the
            // file again, which then goes as a multipart upload.
            let now =
                match tokio::time::timeout(HEAD_DURING_PUT, head_entry(&self.inner, &self.key))
                    .await
                {
                    Ok(now) => now,
                    Err(_) => {
                        self.cut();
                        self.inner
                            .head_waits_for_put
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(remote = %self.inner.opts.name,
                        "the remote holds a file's HEAD while a PUT of it is in progress: \
                         copies that need a check before their commit go as multipart uploads");
                        return Err(Error::new(
                            ErrorKind::Backend,
                            "the remote did not answer the check before the commit while the \
                         upload was open; sent again in parts",
                        )
                        .set_retryable(true));
                    }
                };
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
