//! s3s-fs with an atomic CopyObject, for every s3s-fs server of the tests.
//!
//! s3s-fs 0.14 copies a CopyObject's source straight into the destination file (`fs::copy`),
//! so for the milliseconds a large copy takes, a reader sees a partial object, and a server
//! killed mid-copy keeps one after its restart: no real S3 server does either (a copy is
//! visible whole or not at all). The crash tests kill the server during renames, which the
//! gateway does as CopyObject then DeleteObject, so they saw the test server's flaw instead of
//! the gateway's behaviour. [`AtomicCopy`] has s3s-fs copy into a staging bucket and then
//! moves the result into place with `rename(2)`, the way s3s-fs itself commits PutObject.
//! Every other request goes to s3s-fs unchanged. There is no crate for this: it corrects one
//! test server.

use base64::Engine as _;
use s3s::dto::*;
use s3s::{S3Request, S3Response, S3Result, S3};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The bucket (a folder of the root) where copies are made before they are moved into place;
/// ListBuckets does not show it.
const STAGING: &str = "s3s-atomic-copy-staging";

/// s3s-fs serving `root`, with CopyObject made atomic.
pub struct AtomicCopy {
    fs: s3s_fs::FileSystem,
    root: PathBuf,
    next: AtomicU64,
}

impl std::fmt::Debug for AtomicCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtomicCopy")
            .field("root", &self.root)
            .finish()
    }
}

impl AtomicCopy {
    /// Serves the folders of `root` as buckets. Copies a killed server left staged are
    /// dropped.
    pub fn new(root: &Path) -> std::io::Result<AtomicCopy> {
        let root = std::fs::canonicalize(root)?;
        let staging = root.join(STAGING);
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging)?;
        let fs = s3s_fs::FileSystem::new(&root)
            .map_err(|e| std::io::Error::other(format!("s3s-fs at {}: {e:?}", root.display())))?;
        Ok(AtomicCopy {
            fs,
            root,
            next: AtomicU64::new(0),
        })
    }

    /// The paths s3s-fs keeps a key's metadata sidecars at (its `get_metadata_path` and
    /// `get_internal_info_path`).
    fn sidecars(&self, bucket: &str, key: &str) -> [PathBuf; 2] {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let stem = format!(".bucket-{}.object-{}", enc(bucket), enc(key));
        [
            self.root.join(format!("{stem}.metadata.json")),
            self.root.join(format!("{stem}.internal.json")),
        ]
    }
}

/// A key as a path below its bucket folder, or None where it would leave it.
fn below(bucket_dir: &Path, key: &str) -> Option<PathBuf> {
    let rel = Path::new(key);
    rel.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| bucket_dir.join(rel))
}

fn io_error(e: std::io::Error) -> s3s::S3Error {
    s3s::s3_error!(InternalError, "{e}")
}

#[async_trait::async_trait]
impl S3 for AtomicCopy {
    async fn copy_object(
        &self,
        mut req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let same = match &req.input.copy_source {
            CopySource::Bucket { bucket, key, .. } => {
                **bucket == *req.input.bucket && **key == *req.input.key
            }
            _ => false,
        };
        // A copy onto itself only updates the metadata and the time (s3s-fs does it in
        // place, without rewriting the bytes).
        if same || req.input.bucket == STAGING {
            return self.fs.copy_object(req).await;
        }
        let bucket_dir = self.root.join(&req.input.bucket);
        if !bucket_dir.is_dir() {
            return Err(s3s::s3_error!(NoSuchBucket));
        }
        let Some(dest) = below(&bucket_dir, &req.input.key) else {
            return Err(s3s::s3_error!(InvalidArgument, "invalid key"));
        };
        let (bucket, key) = (req.input.bucket.clone(), req.input.key.clone());
        let staged_key = format!(
            "{}-{}",
            std::process::id(),
            self.next.fetch_add(1, Ordering::Relaxed)
        );
        req.input.bucket = STAGING.to_string();
        req.input.key = staged_key.clone();
        let out = self.fs.copy_object(req).await;
        let staged = self.root.join(STAGING).join(&staged_key);
        let staged_sidecars = self.sidecars(STAGING, &staged_key);
        if out.is_err() {
            let _ = std::fs::remove_file(&staged);
            for s in &staged_sidecars {
                let _ = std::fs::remove_file(s);
            }
            return out;
        }
        // The sidecars first, the bytes last: the rename of the bytes commits the copy.
        for (from, to) in staged_sidecars.iter().zip(self.sidecars(&bucket, &key)) {
            let moved = match std::fs::rename(from, &to) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::remove_file(&to),
                r => r,
            };
            match moved {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_error(e)),
                _ => {}
            }
        }
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(io_error)?;
        }
        std::fs::rename(&staged, &dest).map_err(io_error)?;
        out
    }

    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let mut out = self.fs.list_buckets(req).await?;
        if let Some(b) = &mut out.output.buckets {
            b.retain(|b| b.name.as_deref() != Some(STAGING));
        }
        Ok(out)
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.fs.create_bucket(req).await
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.fs.delete_bucket(req).await
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.fs.delete_object(req).await
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        self.fs.delete_objects(req).await
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.fs.get_bucket_location(req).await
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        self.fs.get_object(req).await
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.fs.head_bucket(req).await
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        self.fs.head_object(req).await
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        self.fs.list_objects(req).await
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        self.fs.list_objects_v2(req).await
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        self.fs.put_object(req).await
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        self.fs.create_multipart_upload(req).await
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        self.fs.upload_part(req).await
    }

    async fn upload_part_copy(
        &self,
        req: S3Request<UploadPartCopyInput>,
    ) -> S3Result<S3Response<UploadPartCopyOutput>> {
        self.fs.upload_part_copy(req).await
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        self.fs.list_parts(req).await
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        self.fs.complete_multipart_upload(req).await
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.fs.abort_multipart_upload(req).await
    }
}
