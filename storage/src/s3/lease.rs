//! The sync lease on a bucket: conditional writes of one small object, so that several gateway
//! instances sharing a remote never run the same sync job at once.
//!
//! Creation is `PUT` with `If-None-Match: *`, renewal `PUT` with `If-Match`, release `DELETE`
//! with `If-Match`. Each write is also checked around it: the object is read first (an
//! existing lease, or one whose ETag is no longer ours, refuses the write without sending it)
//! and read back after (a write that a later one replaced is lost). On servers that enforce the
//! conditions atomically (AWS) that changes nothing. On servers that ignore them (Garage 2.5,
//! older MinIO and Ceph), or check them before writing without a lock (s3s-fs, moto), it keeps
//! the lease working except for writes that race within one round trip: two instances may then
//! both start, and the one whose write was replaced learns it at its next renewal (a third of
//! the lease's lifetime) and stops its run. docs/providers.md says which servers are which;
//! [`S3LeaseStore::enforces_conditional_writes`] tells.

use super::client::{Body, Request};
use super::S3Backend;
use crate::error::{ErrorKind, Result};
use crate::sync::LeaseStore;
use async_trait::async_trait;
use bytes::Bytes;
use reqwest::Method;

/// Leases stored under `prefix.bucketgate-sync/` of a bucket (the top-level folder that sync
/// listings ignore).
#[derive(Clone)]
pub struct S3LeaseStore {
    backend: S3Backend,
    prefix: String,
}

impl S3LeaseStore {
    /// Leases for jobs whose remote side is `prefix` (`""` or ending in `/`) of `backend`.
    pub fn new(backend: S3Backend, prefix: &str) -> Self {
        S3LeaseStore {
            backend,
            prefix: prefix.to_string(),
        }
    }

    fn key(&self, job: &str) -> String {
        format!("{}.bucketgate-sync/{job}.lease", self.prefix)
    }

    /// Whether the server refuses a `PUT` with `If-None-Match: *` over an existing object, as
    /// S3 does; `false` for servers that ignore the condition (see the module's notes). Writes
    /// and then deletes a probe object under `prefix.bucketgate-sync/`.
    pub async fn enforces_conditional_writes(&self) -> Result<bool> {
        let key = format!(
            "{}.bucketgate-sync/conditional-probe-{:016x}",
            self.prefix,
            rand::random::<u64>()
        );
        let put = |cond: bool| {
            let mut r = Request::new(Method::PUT, Some(&key))
                .body(Body::Bytes(Bytes::from_static(b"probe")));
            if cond {
                r = r.header("if-none-match", "*");
            }
            r
        };
        self.backend.inner.client.send(&put(false)).await?;
        let second = self.backend.inner.client.send(&put(true)).await;
        let _ = self
            .backend
            .inner
            .client
            .send(&Request::new(Method::DELETE, Some(&key)))
            .await;
        match second {
            Ok(_) => Ok(false),
            Err(e) if lost(&e) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// The lease's current ETag, if it exists.
    async fn current(&self, key: &str) -> Result<Option<String>> {
        Ok(LeaseStore::read(self, key).await?.map(|(_, v)| v))
    }

    /// After a write that answered `etag`: still ours, or replaced by a later writer (only
    /// possible on a server that ignores the write's condition)?
    async fn kept(&self, key: &str, etag: String) -> Result<Option<String>> {
        if etag.is_empty() {
            // A server that sends no ETag leaves nothing to compare: trust the write.
            return self.current(key).await;
        }
        match self.current(key).await? {
            Some(v) if same_etag(&v, &etag) => Ok(Some(v)),
            _ => Ok(None),
        }
    }
}

/// ETags compared without their quotes (servers differ in quoting response headers).
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

/// A failed precondition is an answer, not an error: S3 says 412, and some servers 409
/// (ConditionalRequestConflict) when two conditional writes race.
fn lost(e: &crate::error::Error) -> bool {
    e.kind() == ErrorKind::Conflict || e.kind() == ErrorKind::AlreadyExists
}

#[async_trait]
impl LeaseStore for S3LeaseStore {
    fn describe(&self) -> String {
        format!("s3:{}/{}", self.backend.inner.opts.name, self.prefix)
    }

    async fn create_if_absent(&self, key: &str, body: Bytes) -> Result<Option<String>> {
        // On a server that ignores If-None-Match, this read is what keeps a live lease.
        if self.current(key).await?.is_some() {
            return Ok(None);
        }
        let req = Request::new(Method::PUT, Some(&self.key(key)))
            .header("if-none-match", "*")
            .body(Body::Bytes(body));
        match self.backend.inner.client.send(&req).await {
            Ok(r) => {
                let etag = r.header("etag").unwrap_or("").to_string();
                self.kept(key, etag).await
            }
            Err(e) if lost(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, key: &str) -> Result<Option<(Bytes, String)>> {
        let req = Request::new(Method::GET, Some(&self.key(key)));
        match self.backend.inner.client.send(&req).await {
            Ok(r) => {
                let etag = r.header("etag").unwrap_or("").to_string();
                Ok(Some((r.bytes().await?, etag)))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn replace_if_match(
        &self,
        key: &str,
        version: &str,
        body: Bytes,
    ) -> Result<Option<String>> {
        // On a server that ignores If-Match, this read is how a holder whose lease was taken
        // over learns it at its renewal.
        match self.current(key).await? {
            Some(v) if same_etag(&v, version) => {}
            _ => return Ok(None),
        }
        let form = self.backend.inner.caps().etag_form;
        let mut req = Request::new(Method::PUT, Some(&self.key(key))).body(Body::Bytes(body));
        if form != super::probe::EtagForm::Omit {
            req = req.header("if-match", super::probe::if_match_value(version, form));
        }
        match self.backend.inner.client.send(&req).await {
            Ok(r) => {
                let etag = r.header("etag").unwrap_or("").to_string();
                self.kept(key, etag).await
            }
            Err(e) if lost(&e) || e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_if_match(&self, key: &str, version: &str) -> Result<bool> {
        // Check first: plain DELETE succeeds on anything, and not every server honours
        // If-Match on DELETE.
        match self.read(key).await? {
            Some((_, v)) if same_etag(&v, version) => {}
            _ => return Ok(false),
        }
        let form = self.backend.inner.caps().etag_form;
        let req = Request::new(Method::DELETE, Some(&self.key(key)))
            .header("if-match", super::probe::if_match_value(version, form));
        match self.backend.inner.client.send(&req).await {
            Ok(_) => Ok(true),
            Err(e) if lost(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
