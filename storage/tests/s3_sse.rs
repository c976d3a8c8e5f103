//! Server-side encryption and storage class (`remotes[].encryption`, `storage_class`), through
//! the storage API a session uses (`UserFs`: upload, download, append, in-place resume,
//! rename), on real S3 servers:
//!
//! - SSE-S3 and SSE-KMS on moto, which records the encryption, KMS key, Bucket Key and storage
//!   class of each object and shows them in its HEAD and listing answers, read here with plain
//!   HTTP requests of the test's own;
//! - SSE-C on moto behind a proxy that records every request (moto 5.2 accepts and ignores
//!   SSE-C: it serves an object without the key), checking that each request that reads,
//!   writes or copies an object carries the key's three headers, and each copy the source's;
//!   and on Garage (the env server of `scripts/garage.sh`), which encrypts with the key,
//!   refuses a read without it, and answers ETags that are not MD5s (so the `checksum: md5`
//!   checks must not rely on them).

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::s3::{Checksum, CustomerKey, Encryption, S3Backend};
use bucketgate_storage::transfer::OpenMode;
use bucketgate_storage::{Area, Permissions, Tree, UserFs, VPath};
use bytes::Bytes;
use http_proxy::{forward_all, HttpProxy, Seen};
use s3_support::*;
use std::sync::Arc;

/// A session's view (user `alice`, every permission) of the test's prefix of `b`'s bucket.
fn user_fs(srv: &Server, b: S3Backend) -> UserFs {
    let site = Area {
        backend: Arc::new(b),
        prefix: srv.prefix.clone(),
    };
    UserFs::new(
        Arc::new(Tree::new(site, Vec::new())),
        "alice",
        VPath::root(),
        Permissions::all(),
    )
}

fn p(s: &str) -> VPath {
    VPath::parse(s).unwrap()
}

fn create() -> OpenMode {
    OpenMode {
        create: true,
        truncate: true,
        ..Default::default()
    }
}

/// Writes `bytes` to `path` in 1 MiB writes, as a client would.
async fn upload(fs: &UserFs, path: &str, mode: OpenMode, at: u64, bytes: &[u8]) {
    let mut w = fs
        .open_write(&p(path), mode)
        .await
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut off = at;
    for c in bytes.chunks(MIB) {
        w.write_at(off, Bytes::copy_from_slice(c))
            .await
            .unwrap_or_else(|e| panic!("write {path}: {e}"));
        off += c.len() as u64;
    }
    w.close()
        .await
        .unwrap_or_else(|e| panic!("close {path}: {e}"));
}

/// Reads `path` whole through the session.
async fn download(fs: &UserFs, path: &str) -> Vec<u8> {
    let mut r = fs
        .open_read(&p(path))
        .await
        .unwrap_or_else(|e| panic!("open {path} for reading: {e}"));
    let mut v = Vec::new();
    loop {
        let c = r
            .read_at(v.len() as u64, MIB)
            .await
            .unwrap_or_else(|e| panic!("read {path}: {e}"));
        if c.is_empty() {
            return v;
        }
        v.extend_from_slice(&c);
    }
}

/// The files every encryption test writes, and what they hold after the operations of
/// [`exercise`]: (path, bytes).
struct Outcome {
    files: Vec<(String, Vec<u8>)>,
}

/// Uploads a small and a multipart file, appends to the large one (UploadPartCopy of its
/// head), rewrites part of it in place as a resumed upload does (REST then STOR: a copy of the
/// head and a pinned read of the rest), renames both (CopyObject; the large one as a
/// server-side multipart copy when over the copy limit), sets a time (a copy onto itself),
/// and reads each back. The backend must keep client times (`preserve_mtime`).
async fn exercise(srv: &Server, fs: &UserFs) -> Outcome {
    let small = data(1000, 1);
    let big = data(11 * MIB, 2);
    upload(fs, "/small.txt", create(), 0, &small).await;
    upload(fs, "/big.bin", create(), 0, &big).await;
    assert_eq!(
        download(fs, "/small.txt").await,
        small,
        "[{}] small",
        srv.name
    );
    assert_eq!(download(fs, "/big.bin").await, big, "[{}] big", srv.name);

    // Append (SFTP APPEND, FTP APPE).
    let tail = data(2 * MIB, 3);
    let append = OpenMode {
        append: true,
        ..Default::default()
    };
    upload(fs, "/big.bin", append, big.len() as u64, &tail).await;
    let mut want = big.clone();
    want.extend_from_slice(&tail);
    assert_eq!(
        download(fs, "/big.bin").await,
        want,
        "[{}] append",
        srv.name
    );

    // A resumed upload rewrites from an offset, keeping what lies before and after it.
    let at = 6 * MIB;
    let patch = data(MIB, 4);
    let in_place = OpenMode::default();
    upload(fs, "/big.bin", in_place, at as u64, &patch).await;
    want[at..at + patch.len()].copy_from_slice(&patch);
    assert_eq!(
        download(fs, "/big.bin").await,
        want,
        "[{}] resume",
        srv.name
    );

    // Renames are server-side copies.
    fs.rename(&p("/small.txt"), &p("/renamed.txt"), false)
        .await
        .unwrap_or_else(|e| panic!("[{}] rename small: {e}", srv.name));
    fs.rename(&p("/big.bin"), &p("/moved.bin"), false)
        .await
        .unwrap_or_else(|e| panic!("[{}] rename big: {e}", srv.name));
    assert_eq!(download(fs, "/renamed.txt").await, small, "[{}]", srv.name);
    assert_eq!(download(fs, "/moved.bin").await, want, "[{}]", srv.name);

    // A time change is a copy of the object onto itself (CopyObject with new metadata).
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    fs.set_mtime(&p("/renamed.txt"), t)
        .await
        .unwrap_or_else(|e| panic!("[{}] set time: {e}", srv.name));
    let st = fs.stat(&p("/renamed.txt")).await.unwrap();
    assert_eq!(st.mtime, Some(t), "[{}] time kept", srv.name);
    assert_eq!(download(fs, "/renamed.txt").await, small, "[{}]", srv.name);
    Outcome {
        files: vec![("renamed.txt".into(), small), ("moved.bin".into(), want)],
    }
}

/// A plain HTTP request of the test's own to moto: the answer's headers and body. moto refuses
/// anonymous requests but does not verify signatures, so an Authorization header naming a
/// key is enough.
async fn moto_get(
    srv: &Server,
    method: reqwest::Method,
    path_query: &str,
) -> (reqwest::header::HeaderMap, String) {
    let url = format!(
        "{}/{}/{path_query}",
        srv.endpoint.trim_end_matches('/'),
        srv.bucket
    );
    let r = reqwest::Client::new()
        .request(method, &url)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/20260101/us-east-1/s3/aws4_request, \
                 SignedHeaders=host, Signature=00",
                srv.access
            ),
        )
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert!(r.status().is_success(), "{url}: {}", r.status());
    let h = r.headers().clone();
    (h, r.text().await.unwrap_or_default())
}

fn header(h: &reqwest::header::HeaderMap, n: &str) -> Option<String> {
    h.get(n).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[tokio::test]
async fn sse_s3_and_kms_and_the_storage_class_are_applied_to_every_object_written() {
    let cases = [
        (Encryption::S3, "AES256", None, false),
        (
            Encryption::Kms {
                key_id: Some("bucketgate-test-key".into()),
                bucket_key: true,
            },
            "aws:kms",
            Some("bucketgate-test-key"),
            true,
        ),
    ];
    for (enc, sse, kms_key, bucket_key) in cases {
        let srv = moto_server().await;
        let name = enc.name();
        let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
        let endpoint = format!("http://{}", proxy.addr);
        let b = srv.backend_with(|o| {
            o.endpoint = endpoint;
            o.encryption = enc.clone();
            o.storage_class = Some("STANDARD_IA".into());
            o.max_copy_range = 10 * MIB as u64;
            o.preserve_mtime = true;
        });
        let fs = user_fs(&srv, b);
        let out = exercise(&srv, &fs).await;
        // Every request that creates an object asked for the settings; no other request did.
        let mut creates = 0;
        for s in proxy.seen() {
            let create = (s.method == "PUT" && !s.has_query("partNumber"))
                || (s.method == "POST" && s.has_query("uploads"));
            let sent = (
                s.header("x-amz-server-side-encryption"),
                s.header("x-amz-server-side-encryption-aws-kms-key-id"),
                s.header("x-amz-server-side-encryption-bucket-key-enabled"),
                s.header("x-amz-storage-class"),
            );
            if create {
                creates += 1;
                let want = (
                    Some(sse),
                    kms_key,
                    bucket_key.then_some("true"),
                    Some("STANDARD_IA"),
                );
                assert_eq!(sent, want, "{name}: {} {}", s.method, s.target);
            } else {
                assert_eq!(
                    sent,
                    (None, None, None, None),
                    "{name}: {} {}",
                    s.method,
                    s.target
                );
            }
        }
        assert!(creates >= 5, "{name}: {creates} creating requests");
        for (rel, bytes) in &out.files {
            let (h, _) = moto_get(&srv, reqwest::Method::HEAD, &srv.key(rel)).await;
            assert_eq!(
                header(&h, "content-length"),
                Some(bytes.len().to_string()),
                "{name} {rel}"
            );
            assert_eq!(
                header(&h, "x-amz-server-side-encryption").as_deref(),
                Some(sse),
                "{name} {rel}: {h:?}"
            );
            assert_eq!(
                header(&h, "x-amz-server-side-encryption-aws-kms-key-id").as_deref(),
                kms_key,
                "{name} {rel}"
            );
            // moto drops the Bucket Key of a multipart upload (CreateMultipartUpload carries
            // it: the proxy's record below shows it sent); `moved.bin` is one.
            if !srv.skip(
                bucket_key && rel == "moved.bin",
                "the Bucket Key of a multipart upload is recorded",
            ) {
                assert_eq!(
                    header(&h, "x-amz-server-side-encryption-bucket-key-enabled").as_deref(),
                    bucket_key.then_some("true"),
                    "{name} {rel}"
                );
            }
            assert_eq!(
                header(&h, "x-amz-storage-class").as_deref(),
                Some("STANDARD_IA"),
                "{name} {rel}"
            );
        }
        // The listing shows the class too, for every file.
        let (_, xml) = moto_get(
            &srv,
            reqwest::Method::GET,
            &format!("?list-type=2&prefix={}", srv.prefix),
        )
        .await;
        assert_eq!(xml.matches("<Key>").count(), 2, "{name}: {xml}");
        assert_eq!(
            xml.matches("<StorageClass>STANDARD_IA</StorageClass>")
                .count(),
            2,
            "{name}: {xml}"
        );
    }
}

/// The SSE-C headers of `key` on a request, as (algorithm, key, key MD5).
fn ssec(s: &Seen, prefix: &str) -> (Option<String>, Option<String>, Option<String>) {
    let h = |n: &str| {
        s.header(&format!("{prefix}server-side-encryption-customer-{n}"))
            .map(str::to_string)
    };
    (h("algorithm"), h("key"), h("key-md5"))
}

/// The servers that take SSE-C here: moto (ignores it), Garage when the env names it.
#[tokio::test]
async fn sse_c_sends_the_key_with_every_read_write_and_copy_and_nothing_reads_without_it() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    // Both checksums: with SSE-C no ETag is an MD5, and neither check may rely on one.
    let mut runs = Vec::new();
    for checksum in [Checksum::Md5, Checksum::Crc32c] {
        for srv in ssec_servers().await {
            runs.push((srv, checksum));
        }
    }
    for (srv, checksum) in runs {
        let raw: [u8; 32] = rand::random();
        let key = CustomerKey::from_bytes(&raw).unwrap();
        let want = (
            Some("AES256".to_string()),
            Some(b64.encode(raw)),
            Some(key.md5_base64().to_string()),
        );
        let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
        let endpoint = format!("http://{}", proxy.addr);
        let b = srv.backend_with(|o| {
            o.endpoint = endpoint;
            o.encryption = Encryption::Customer(key.clone());
            o.max_copy_range = 10 * MIB as u64;
            o.preserve_mtime = true;
            o.checksum = checksum;
        });
        let fs = user_fs(&srv, b);
        println!("[{}] SSE-C with checksum {checksum:?}", srv.name);
        let out = exercise(&srv, &fs).await;

        // Every request on an object that reads, writes or copies it carries the key.
        let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
        for s in proxy.seen() {
            let copy = s.header("x-amz-copy-source").is_some();
            let kind = match s.method.as_str() {
                "PUT" if s.has_query("partNumber") && copy => "UploadPartCopy",
                "PUT" if s.has_query("partNumber") => "UploadPart",
                "PUT" if copy => "CopyObject",
                "PUT" => "PutObject",
                "POST" if s.has_query("uploads") => "CreateMultipartUpload",
                "POST" if s.has_query("uploadId") => "CompleteMultipartUpload",
                "GET" if s.has_query("list-type") || s.has_query("uploadId") => continue,
                "GET" => "GetObject",
                "HEAD" => "HeadObject",
                _ => continue,
            };
            *kinds.entry(kind).or_default() += 1;
            assert_eq!(
                ssec(&s, "x-amz-"),
                want,
                "[{}] {kind} {}",
                srv.name,
                s.target
            );
            if copy {
                assert_eq!(
                    ssec(&s, "x-amz-copy-source-"),
                    want,
                    "[{}] {kind} {}: the copy source's key",
                    srv.name,
                    s.target
                );
            }
        }
        for k in [
            "PutObject",
            "CreateMultipartUpload",
            "UploadPart",
            "UploadPartCopy",
            "CompleteMultipartUpload",
            "CopyObject",
            "GetObject",
            "HeadObject",
        ] {
            assert!(
                kinds.get(k).copied().unwrap_or(0) > 0,
                "[{}] no {k} was sent: the test no longer covers it ({kinds:?})",
                srv.name
            );
        }

        // Without the key the objects cannot be read, where the server implements SSE-C.
        let plain = srv.backend();
        for (rel, bytes) in &out.files {
            let r = async {
                let mut s = plain.read(&srv.key(rel), 0, None).await?;
                let mut v = Vec::new();
                while let Some(c) = futures::StreamExt::next(&mut s).await {
                    v.extend_from_slice(&c?);
                }
                Ok::<_, bucketgate_storage::Error>(v)
            }
            .await;
            if srv.skip(
                srv.name == "moto",
                "a read without the SSE-C key is refused",
            ) {
                // moto 5.2 ignores SSE-C: it stores the bytes as sent and serves them to anyone.
                assert_eq!(r.as_deref().ok(), Some(&bytes[..]));
                continue;
            }
            let e = r.expect_err("read without the SSE-C key");
            println!("[{}] read of {rel} without the key: {e}", srv.name);
        }
    }
}
