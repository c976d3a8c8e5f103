//! The sync lease on a bucket: conditional writes of one small object, so that several gateway
//! instances sharing a remote never run the same sync job at once.
//!
//! Creation is `PUT` with `If-None-Match: *`, renewal `PUT` with `If-Match`, release `DELETE`
//! with `If-Match`. Servers that ignore these conditions (older MinIO, Ceph before Reef, moto)
//! accept every write: on them the lease only orders instances by its expiry, which
//! docs/providers.md says.

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
        let req = Request::new(Method::PUT, Some(&self.key(key)))
            .header("if-none-match", "*")
            .body(Body::Bytes(body));
        match self.backend.inner.client.send(&req).await {
            Ok(r) => Ok(Some(r.header("etag").unwrap_or("").to_string())),
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
        let req = Request::new(Method::PUT, Some(&self.key(key)))
            .header("if-match", version)
            .body(Body::Bytes(body));
        match self.backend.inner.client.send(&req).await {
            Ok(r) => Ok(Some(r.header("etag").unwrap_or("").to_string())),
            Err(e) if lost(&e) || e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn delete_if_match(&self, key: &str, version: &str) -> Result<bool> {
        // Check first: plain DELETE succeeds on anything, and not every server honours
        // If-Match on DELETE.
        match self.read(key).await? {
            Some((_, v)) if v == version => {}
            _ => return Ok(false),
        }
        let req = Request::new(Method::DELETE, Some(&self.key(key))).header("if-match", version);
        match self.backend.inner.client.send(&req).await {
            Ok(_) => Ok(true),
            Err(e) if lost(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }
}
