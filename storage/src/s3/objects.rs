//! Folders, removals, server-side copies and renames, times, and multipart clean-up.

use super::client::{Body, Request, Response};
use super::list::{head, list_page};
use super::probe::copy_if_match;
use super::time::{format_mtime, parse_iso8601};
use super::xml::{
    self, DeleteResult, EtagResult, InitiateResult, ListPartsResult, ListUploadsResult,
};
use super::{Inner, S3Backend};
use crate::error::{Error, ErrorKind, Result};
use base64::Engine;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use reqwest::Method;
use std::time::{Duration, SystemTime};

/// Copies in flight during a folder rename.
const RENAME_CONCURRENCY: usize = 8;
/// DeleteObjects takes at most this many keys.
const DELETE_BATCH: usize = 1000;

/// A multipart upload that was started and neither completed nor aborted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultipartUpload {
    /// The key being uploaded.
    pub key: String,
    /// The upload's id.
    pub upload_id: String,
    /// When it was started, if the server said.
    pub initiated: Option<SystemTime>,
}

/// What a copy needs to know about its source.
struct Source {
    size: u64,
    etag: Option<String>,
    content_type: Option<String>,
    meta: Vec<(String, String)>,
}

impl Source {
    fn of(r: &Response, size: u64, etag: Option<String>) -> Self {
        Source {
            size,
            etag,
            content_type: r.header("content-type").map(str::to_string),
            meta: r.user_metadata(),
        }
    }
}

async fn source(inner: &Inner, key: &str) -> Result<Source> {
    let (e, r) = head(inner, key).await?;
    Ok(Source::of(&r, e.size, e.etag))
}

pub(crate) async fn mkdir(inner: &Inner, key: &str) -> Result<()> {
    if key.is_empty() {
        return Ok(());
    }
    match head(inner, key).await {
        Ok(_) => return Err(Error::of(ErrorKind::AlreadyExists)),
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::PermissionDenied) => {}
        Err(e) => return Err(e),
    }
    let req = Request::new(Method::PUT, Some(&format!("{key}/"))).body(Body::Empty);
    inner.client.send(&req).await?;
    Ok(())
}

pub(crate) async fn remove_file(inner: &Inner, key: &str) -> Result<()> {
    // S3 DELETE succeeds on a missing key: ask first, so that clients get "no such file".
    head(inner, key).await?;
    if inner.caps().markers_survive {
        return delete(inner, key).await;
    }
    // A server that drops a folder's marker with its last file (a file system behind it):
    // the folder is written again after the removal, as a disk keeps an emptied folder. Such
    // a server also absorbs the marker while the folder holds files (MinIO in single-folder
    // mode answers `HEAD folder/` only for an empty folder), so whether the folder was made
    // with mkdir cannot be told: every folder emptied this way stays, as on a disk.
    delete(inner, key).await?;
    keep_parent(inner, key).await
}

/// On a server that drops a folder with its last entry (`markers_survive` false: MinIO in
/// single-folder mode removes the emptied directories up the tree), writes the marker of the
/// folder holding `key` again if it is gone, after `key` was removed or moved away: a disk
/// keeps an emptied folder, and a user's home is such a folder.
async fn keep_parent(inner: &Inner, key: &str) -> Result<()> {
    let caps = inner.caps();
    // Where a marker outlives its folder's files, or an empty folder cannot be seen at all
    // (s3s-fs), there is nothing to keep.
    if caps.markers_survive || !(caps.markers_listed || caps.markers_head) {
        return Ok(());
    }
    let Some((p, _)) = key.trim_end_matches('/').rsplit_once('/') else {
        return Ok(());
    };
    let marker = format!("{p}/");
    let gone = matches!(head(inner, &marker).await, Err(e) if e.kind() == ErrorKind::NotFound)
        && list_page(inner, &marker, false, None, 1)
            .await?
            .objects
            .is_empty();
    if gone {
        let req = Request::new(Method::PUT, Some(&marker)).body(Body::Empty);
        inner.client.send(&req).await?;
    }
    Ok(())
}

async fn delete(inner: &Inner, key: &str) -> Result<()> {
    inner
        .client
        .send(&Request::new(Method::DELETE, Some(key)))
        .await?;
    Ok(())
}

/// A folder whose marker object (`folder/`) has a body, which another program wrote there: the
/// gateway shows the folder but not those bytes, so removing the folder would destroy data no
/// user of the gateway could see; it is refused instead.
fn marker_with_data() -> Error {
    Error::new(
        ErrorKind::DirectoryNotEmpty,
        "the folder's marker object in the bucket holds data that cannot be shown here; nothing was removed",
    )
}

pub(crate) async fn remove_dir(inner: &Inner, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::of(ErrorKind::PermissionDenied));
    }
    let marker = format!("{key}/");
    let page = list_page(inner, &marker, false, None, 2).await?;
    if page.objects.is_empty() {
        // A server that does not list a marker under its own prefix still answers its HEAD.
        let caps = inner.caps();
        if !caps.markers_listed && caps.markers_head {
            if let Ok((m, _)) = head(inner, &marker).await {
                if m.size > 0 {
                    return Err(marker_with_data());
                }
                delete(inner, &marker).await?;
                return keep_parent(inner, key).await;
            }
        }
        return Err(Error::of(ErrorKind::NotFound));
    }
    if page.objects.iter().any(|o| o.key != marker) {
        return Err(Error::of(ErrorKind::DirectoryNotEmpty));
    }
    if page.objects.iter().any(|o| o.size > 0) {
        return Err(marker_with_data());
    }
    delete(inner, &marker).await?;
    keep_parent(inner, key).await
}

fn meta_headers(req: Request, src: &Source, mtime: Option<&str>) -> Request {
    let mut req = req;
    if let Some(ct) = &src.content_type {
        req = req.header("content-type", ct.clone());
    }
    for (k, v) in &src.meta {
        if mtime.is_some() && k == "mtime" {
            continue;
        }
        req = req.header(&format!("x-amz-meta-{k}"), v.clone());
    }
    if let Some(m) = mtime {
        req = req.header("x-amz-meta-mtime", m.to_string());
    }
    req
}

/// Copies `from` to `to` server-side. `new_mtime` replaces the `mtime` metadata (keeping the
/// content type and other metadata); without it metadata is copied as is.
async fn copy_object(
    inner: &Inner,
    from: &str,
    to: &str,
    src: &Source,
    new_mtime: Option<&str>,
) -> Result<()> {
    let source = inner.client.copy_source(from);
    if src.size <= inner.opts.max_copy_range {
        let mut req = Request::new(Method::PUT, Some(to)).header("x-amz-copy-source", source);
        if let Some(t) = &src.etag {
            req = copy_if_match(req, t, &inner.caps());
        }
        if new_mtime.is_some() {
            req = meta_headers(
                req.header("x-amz-metadata-directive", "REPLACE"),
                src,
                new_mtime,
            );
        }
        let body = inner.client.send_xml(&req).await?;
        let _: EtagResult = xml::parse(&body, "copy")?;
        return Ok(());
    }
    // Above 5 GiB CopyObject is refused (`max_copy_range`): a multipart upload of copied ranges
    // instead, which must carry the metadata itself.
    let create = meta_headers(
        Request::new(Method::POST, Some(to)).query("uploads", ""),
        src,
        new_mtime,
    );
    let body = inner.client.send_xml(&create).await?;
    let id = xml::parse::<InitiateResult>(&body, "create multipart upload")?.upload_id;
    // Held until the copy completes or is aborted: the stale clean-up must leave it alone.
    let _live = super::live::register(inner, to, &id);
    let result = copy_parts(inner, to, &id, &source, src).await;
    let result = match result {
        Ok(parts) => {
            let req = Request::new(Method::POST, Some(to))
                .query("uploadId", id.clone())
                .header("content-type", "application/xml")
                .body(Body::Bytes(Bytes::from(xml::complete_body(&parts))));
            inner.client.send_xml(&req).await.map(|_| ())
        }
        Err(e) => Err(e),
    };
    if result.is_err() {
        let abort = Request::new(Method::DELETE, Some(to)).query("uploadId", id);
        let _ = inner.client.send(&abort).await;
    }
    result
}

async fn copy_parts(
    inner: &Inner,
    to: &str,
    id: &str,
    source: &str,
    src: &Source,
) -> Result<Vec<(u32, String)>> {
    // Equal ranges: with `max_copy_range` at least 10 MiB each is at least 5 MiB.
    let n = src.size.div_ceil(inner.opts.max_copy_range);
    let chunk = src.size.div_ceil(n);
    let ranges: Vec<(u32, u64, u64)> = (0..n)
        .map(|i| {
            let start = i * chunk;
            (i as u32 + 1, start, ((i + 1) * chunk).min(src.size))
        })
        .collect();
    futures::stream::iter(ranges)
        .map(|(part, start, end)| async move {
            let mut req = Request::new(Method::PUT, Some(to))
                .query("partNumber", part.to_string())
                .query("uploadId", id.to_string())
                .header("x-amz-copy-source", source.to_string())
                .header(
                    "x-amz-copy-source-range",
                    format!("bytes={start}-{}", end - 1),
                );
            if let Some(t) = &src.etag {
                req = copy_if_match(req, t, &inner.caps());
            }
            let body = inner.client.send_xml(&req).await?;
            let etag = xml::parse::<EtagResult>(&body, "upload part copy")?
                .etag
                .ok_or_else(|| Error::new(ErrorKind::Backend, "the remote sent no ETag"))?;
            Ok::<_, Error>((part, etag))
        })
        .buffered(inner.opts.concurrency)
        .try_collect()
        .await
}

pub(crate) async fn copy_file(inner: &Inner, from: &str, to: &str) -> Result<()> {
    let src = source(inner, from).await?;
    copy_object(inner, from, to, &src, None).await
}

pub(crate) async fn set_mtime(inner: &Inner, key: &str, mtime: SystemTime) -> Result<()> {
    if !inner.opts.preserve_mtime {
        // Without preserve_mtime times are the objects' Last-Modified: accepted and ignored.
        return Ok(());
    }
    let src = source(inner, key).await?;
    copy_object(inner, key, key, &src, Some(&format_mtime(mtime))).await
}

/// Every object key (and size) below `prefix`, markers and unservable keys included: a rename
/// moves the whole prefix.
async fn all_keys(inner: &Inner, prefix: &str) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = list_page(
            inner,
            prefix,
            false,
            token.as_deref(),
            inner.opts.list_page_size,
        )
        .await?;
        out.extend(page.objects.into_iter().map(|o| (o.key, o.size)));
        match page.next {
            Some(t) => token = Some(t),
            None => return Ok(out),
        }
    }
}

pub(crate) async fn rename_dir(inner: &Inner, from: &str, to: &str) -> Result<()> {
    if from.is_empty() || to.is_empty() {
        return Err(Error::of(ErrorKind::PermissionDenied));
    }
    let (src_prefix, dst_prefix) = (format!("{from}/"), format!("{to}/"));
    if dst_prefix.starts_with(&src_prefix) || src_prefix.starts_with(&dst_prefix) {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "a folder cannot be moved into itself",
        ));
    }
    if !list_page(inner, &dst_prefix, false, None, 1)
        .await?
        .objects
        .is_empty()
    {
        return Err(Error::of(ErrorKind::AlreadyExists));
    }
    // The key list is kept (not listed again) so that only what was copied gets deleted, even
    // if someone adds files meanwhile.
    let keys = all_keys(inner, &src_prefix).await?;
    if keys.is_empty() {
        return Err(Error::of(ErrorKind::NotFound));
    }
    // A key with a `.` or `..` segment cannot be copied: it would be sent as another key (see
    // `client::key_is_addressable`). Refused before anything is copied.
    let stuck = keys
        .iter()
        .filter(|(k, _)| !super::client::key_is_addressable(k))
        .count();
    if stuck > 0 {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the folder holds {stuck} object(s) written by another program whose names have a \
                 `.` or `..` part, which cannot be moved through the gateway; nothing was changed"
            ),
        ));
    }
    let total = keys.len();
    let src_len = src_prefix.len();
    let results: Vec<(String, Result<()>)> = futures::stream::iter(keys.clone())
        .map(|(key, size)| {
            let to_key = format!("{dst_prefix}{}", &key[src_len..]);
            async move {
                let copied = async {
                    let src = if size > inner.opts.max_copy_range {
                        source(inner, &key).await?
                    } else {
                        Source {
                            size,
                            etag: None,
                            content_type: None,
                            meta: Vec::new(),
                        }
                    };
                    copy_object(inner, &key, &to_key, &src, None).await
                }
                .await;
                (to_key, copied)
            }
        })
        .buffer_unordered(RENAME_CONCURRENCY)
        .collect()
        .await;
    if results.iter().any(|(_, r)| r.is_err()) {
        // Nothing half-done stays: the copies made so far are removed again, so the folder is
        // where it was and the target holds nothing new (the target was empty when this began).
        let (copies, mut failures): (Vec<_>, Vec<_>) =
            results.into_iter().partition(|(_, r)| r.is_ok());
        let copies: Vec<String> = copies.into_iter().map(|(k, _)| k).collect();
        let left = match delete_many(inner, &copies).await {
            Ok(n) => n,
            Err(_) => copies.len(),
        };
        let e = failures.remove(0).1.expect_err("partitioned on errors");
        let message = if left == 0 {
            format!(
                "rename failed after copying {} of {total} objects; the copies were removed, nothing was changed",
                copies.len()
            )
        } else {
            format!(
                "rename failed after copying {} of {total} objects; the source is intact, but {left} of the copies could not be removed from the target",
                copies.len()
            )
        };
        return Err(Error::new(e.kind(), message)
            .set_retryable(e.is_retryable() && left == 0)
            .with_source(e));
    }
    let sources: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
    let failed = delete_many(inner, &sources).await?;
    if failed > 0 {
        return Err(Error::new(
            ErrorKind::Backend,
            format!(
                "the folder was copied ({total} objects) but {failed} sources could not be deleted"
            ),
        ));
    }
    keep_parent(inner, from).await
}

/// Deletes `keys` with DeleteObjects (single deletes when the server lacks it); returns how
/// many could not be deleted.
async fn delete_many(inner: &Inner, keys: &[String]) -> Result<usize> {
    let mut failed = 0;
    for batch in keys.chunks(DELETE_BATCH) {
        let body = xml::delete_body(batch);
        let md5 = base64::engine::general_purpose::STANDARD.encode(Md5::digest(body.as_bytes()));
        let req = Request::new(Method::POST, None)
            .query("delete", "")
            .header("content-md5", md5)
            .header("content-type", "application/xml")
            .body(Body::Bytes(Bytes::from(body)));
        match inner.client.send(&req).await {
            Ok(r) => {
                let body = r.bytes().await?;
                let res: DeleteResult = xml::parse(&body, "delete objects")?;
                for e in &res.error {
                    tracing::warn!(remote = %inner.opts.name, key = %e.key, code = %e.code, "could not delete an object");
                }
                failed += res.error.len();
            }
            Err(e) if e.kind() == ErrorKind::Unsupported => {
                let results: Vec<Result<()>> = futures::stream::iter(batch.to_vec())
                    .map(|k| async move { delete(inner, &k).await })
                    .buffer_unordered(RENAME_CONCURRENCY)
                    .collect()
                    .await;
                failed += results.iter().filter(|r| r.is_err()).count();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(failed)
}

impl S3Backend {
    /// Checks that the bucket exists and can be listed with these credentials.
    pub async fn probe_bucket(&self) -> Result<()> {
        list_page(&self.inner, "", false, None, 1)
            .await
            .map(|_| ())
            .map_err(|e| e.with_context("probe", format!("s3:{}", self.inner.opts.name)))
    }

    /// Multipart uploads pending under `prefix` (all pages).
    pub async fn list_multipart_uploads(&self, prefix: &str) -> Result<Vec<MultipartUpload>> {
        let mut out = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let mut req = Request::new(Method::GET, None).query("uploads", "");
            if !prefix.is_empty() {
                req = req.query("prefix", prefix);
            }
            if let Some(k) = &key_marker {
                req = req.query("key-marker", k.clone());
            }
            if let Some(u) = &id_marker {
                req = req.query("upload-id-marker", u.clone());
            }
            let body = self.inner.client.send_xml(&req).await?;
            let r: ListUploadsResult = xml::parse(&body, "list multipart uploads")?;
            out.extend(r.upload.into_iter().map(|u| MultipartUpload {
                initiated: parse_iso8601(&u.initiated),
                key: u.key,
                upload_id: u.upload_id,
            }));
            let next = (r.next_key_marker.clone(), r.next_upload_id_marker.clone());
            if !r.is_truncated || (next.0 == key_marker && next.1 == id_marker) || next.0.is_none()
            {
                return Ok(out);
            }
            (key_marker, id_marker) = next;
        }
    }

    /// Aborts the multipart uploads under `prefix` that were abandoned (a crash, a killed
    /// process) more than `older_than` ago; returns how many were aborted.
    ///
    /// An upload is left alone when this process holds it (whatever the server says about its
    /// start), when its start time is missing, unparseable or in the future (moto reports 2010
    /// for every upload; a clock may be off), and when any of its parts arrived less than
    /// `older_than` ago or at a time that cannot be read: another instance sharing the bucket
    /// may be writing it. So only an upload that has received nothing for `older_than` is
    /// aborted, which is why that age must be longer than the longest pause between two parts
    /// (a client's idle timeout bounds it).
    pub async fn abort_stale_uploads(&self, prefix: &str, older_than: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let cutoff = now
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut n = 0;
        for u in self.list_multipart_uploads(prefix).await? {
            if super::live::is_live(&u.upload_id) || !older_than_cutoff(u.initiated, cutoff) {
                continue;
            }
            match self.part_times(&u).await {
                Ok(times) if times.iter().all(|t| older_than_cutoff(*t, cutoff)) => {}
                Ok(_) => continue,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(remote = %self.inner.opts.name, key = %u.key, error = ?e,
                        "cannot list an upload's parts; leaving it for the next clean-up");
                    continue;
                }
            }
            // Registered while its parts were being listed: it is live after all.
            if super::live::is_live(&u.upload_id) {
                continue;
            }
            let req = Request::new(Method::DELETE, Some(&u.key)).query("uploadId", u.upload_id);
            match self.inner.client.send(&req).await {
                Ok(_) => n += 1,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if n > 0 {
            tracing::info!(remote = %self.inner.opts.name, prefix, aborted = n, "aborted stale multipart uploads");
        }
        Ok(n)
    }

    /// Aborts the multipart uploads that earlier runs of this instance journaled and never
    /// finished (a crash, a kill): no process holds them any more, whatever their age, and the
    /// server need not list uploads for them to be found. An entry is removed once its upload
    /// is aborted or gone; one the server cannot be asked about now stays for the next pass.
    pub async fn abort_journaled_leftovers(&self) -> Result<usize> {
        let Some(dir) = self.inner.opts.journal_dir.clone() else {
            return Ok(0);
        };
        let inner = self.inner.clone();
        let found = tokio::task::spawn_blocking(move || super::live::leftovers(&dir, &inner))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Backend, "reading the upload journal failed").with_source(e)
            })?;
        let mut n = 0;
        for (path, e) in found {
            let req = Request::new(Method::DELETE, Some(&e.key)).query("uploadId", e.upload_id);
            match self.inner.client.send(&req).await {
                Ok(_) => n += 1,
                Err(err) if err.kind() == ErrorKind::NotFound => {}
                Err(err) => {
                    tracing::warn!(remote = %self.inner.opts.name, key = %e.key, error = ?err,
                        "cannot abort an upload a crash left; trying again at the next clean-up");
                    continue;
                }
            }
            let _ = std::fs::remove_file(&path);
        }
        if n > 0 {
            tracing::info!(remote = %self.inner.opts.name, aborted = n, "aborted multipart uploads left by an earlier run");
        }
        Ok(n)
    }

    /// When each part of `u` arrived (`None` where the server's time cannot be read).
    async fn part_times(&self, u: &MultipartUpload) -> Result<Vec<Option<SystemTime>>> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut req =
                Request::new(Method::GET, Some(&u.key)).query("uploadId", u.upload_id.clone());
            if let Some(m) = &marker {
                req = req.query("part-number-marker", m.clone());
            }
            let body = self.inner.client.send_xml(&req).await?;
            let r: ListPartsResult = xml::parse(&body, "list parts")?;
            out.extend(r.part.iter().map(|p| parse_iso8601(&p.last_modified)));
            match r.next_part_number_marker {
                Some(m) if r.is_truncated && !m.is_empty() && marker.as_ref() != Some(&m) => {
                    marker = Some(m)
                }
                _ => return Ok(out),
            }
        }
    }
}

/// True when `t` is known and no later than `cutoff`. A missing or unparseable time, or one
/// in the future, is never old: aborting a live upload loses a transfer, keeping an abandoned
/// one only costs storage until a later pass.
fn older_than_cutoff(t: Option<SystemTime>, cutoff: SystemTime) -> bool {
    t.is_some_and(|t| t <= cutoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_old_times_are_stale() {
        let now = SystemTime::now();
        let cutoff = now - Duration::from_secs(3600);
        assert!(older_than_cutoff(Some(cutoff), cutoff));
        assert!(older_than_cutoff(Some(SystemTime::UNIX_EPOCH), cutoff));
        assert!(!older_than_cutoff(None, cutoff));
        assert!(!older_than_cutoff(Some(now), cutoff));
        assert!(!older_than_cutoff(
            Some(now + Duration::from_secs(86400)),
            cutoff
        ));
    }
}
