//! Checksums on every byte (issue 17 item 2), at the backend and in the sync engine: an HTTP
//! proxy in front of each S3 server inverts one byte of an upload's body on its way, or of a
//! download's body on its way back.
//!
//! It is also the probe of what each server verifies: for `checksum: md5` (Content-MD5) and
//! `crc32c` (x-amz-checksum-crc32c), on PutObject and UploadPart, it prints one line per server
//! and request kind: `VERIFIED` (refused, previous version kept), `REFUSED AFTER WRITING` (an
//! error, but the object was replaced), or `NOT VERIFIED` (accepted a changed body; caught, if
//! at all, by the gateway's own ETag check). A server that does not verify is reported, not
//! counted as passed: what must hold everywhere with the default (`md5`) is that the caller
//! gets an error and no multipart upload is committed.

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions};
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::s3::{Checksum, S3Backend};
use bucketgate_storage::sync::{run_job, ConflictPolicy, Direction, RunOptions, SyncJob};
use bucketgate_storage::ErrorKind;
use futures::StreamExt;
use http_proxy::{Action, HttpProxy, Seen};
use s3_support::*;
use std::sync::{Arc, Mutex};

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    None,
    Upload,
    Download,
}

const FLIP_AT: usize = 300_000;

/// A proxy in front of `srv` that changes one byte of bodies of keys containing `victim`, as
/// `fault` says at the time of the request.
async fn proxy(srv: &Server, fault: Arc<Mutex<Fault>>) -> HttpProxy {
    let rule: http_proxy::Rule = Arc::new(move |s: &Seen| {
        if !s.target.contains("victim") {
            return Action::Forward;
        }
        match (*fault.lock().unwrap(), s.method.as_str()) {
            (Fault::Upload, "PUT") => Action::FlipRequest(FLIP_AT),
            (Fault::Download, "GET") => Action::FlipResponse(FLIP_AT),
            _ => Action::Forward,
        }
    });
    HttpProxy::start(srv.addr(), rule).await
}

fn via(srv: &Server, p: &HttpProxy, mode: Checksum) -> S3Backend {
    let endpoint = format!("http://{}", p.addr);
    srv.backend_with(|o| {
        o.endpoint = endpoint;
        o.checksum = mode;
    })
}

async fn upload(b: &S3Backend, key: &str, bytes: &[u8]) -> bucketgate_storage::Result<()> {
    let mut up = b
        .create(
            key,
            CreateOptions {
                size_hint: Some(bytes.len() as u64),
                ..Default::default()
            },
        )
        .await?;
    for c in bytes.chunks(MIB) {
        if let Err(e) = up.write(bytes::Bytes::copy_from_slice(c)).await {
            up.abort().await;
            return Err(e);
        }
    }
    up.finish().await.map(|_| ())
}

async fn read_all(b: &S3Backend, key: &str) -> bucketgate_storage::Result<Vec<u8>> {
    let mut s = b.read(key, 0, None).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// What the bucket holds at `key`, read unchecked (s3s-fs's record of an object no longer
/// matches its bytes after a refused PutObject).
async fn object(srv: &Server, key: &str) -> Option<Vec<u8>> {
    let b = srv.backend_with(|o| o.checksum = Checksum::Off);
    match b.stat(key).await {
        Ok(_) => Some(get(&b, key).await),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("[{}] stat {key}: {e}", srv.name),
    }
}

/// Uploads with one byte changed on the way, for both algorithms and both request kinds; prints
/// what the server verified. With `md5` the caller must get an error on every server, and a
/// multipart upload is never committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_upload_byte_is_refused() {
    let mut all = servers().await;
    if let Some(g) = env_server() {
        if !all.iter().any(|s| s.name == "env") {
            all.push(g);
        }
    }
    for srv in all {
        let fault = Arc::new(Mutex::new(Fault::None));
        let p = proxy(&srv, fault.clone()).await;
        for mode in [Checksum::Md5, Checksum::Crc32c] {
            let b = via(&srv, &p, mode);
            for (kind, size) in [("PutObject", MIB), ("UploadPart", 12 * MIB)] {
                let key = srv.key(&format!("victim-{mode:?}-{kind}.bin"));
                let old = data(1000, 7);
                put(&srv.backend(), &key, &old, 1000).await;
                let new = data(size, size as u64);
                *fault.lock().unwrap() = Fault::Upload;
                let r = upload(&b, &key, &new).await;
                *fault.lock().unwrap() = Fault::None;
                let now = object(&srv, &key).await;
                let verdict = match (&r, &now) {
                    (Err(_), Some(o)) if *o == old => "VERIFIED",
                    (Err(_), _) => "REFUSED AFTER WRITING",
                    (Ok(()), _) => "NOT VERIFIED",
                };
                println!(
                    "{verdict} [{}] {kind} with a changed byte, checksum {mode:?}: caller got {}",
                    srv.name,
                    match &r {
                        Ok(()) => "success".to_string(),
                        Err(e) => format!("{e}"),
                    }
                );
                if mode == Checksum::Md5 {
                    assert!(
                        r.is_err(),
                        "[{}] {kind}, md5: a changed body was accepted",
                        srv.name
                    );
                    if kind == "UploadPart" {
                        assert!(
                            now.as_deref() == Some(&old[..]),
                            "[{}] a refused multipart upload replaced the object",
                            srv.name
                        );
                    }
                }
                if srv.caps.list_uploads {
                    let pending = srv.backend().list_multipart_uploads(&srv.prefix).await;
                    assert_eq!(pending.unwrap().len(), 0, "[{}] uploads pending", srv.name);
                }
                // Unchanged, the same upload lands: the refusal was the byte.
                upload(&b, &key, &new)
                    .await
                    .unwrap_or_else(|e| panic!("[{}] {kind} {mode:?} unchanged: {e}", srv.name));
                assert!(
                    object(&srv, &key).await == Some(new),
                    "[{}] {kind}",
                    srv.name
                );
            }
        }
    }
}

/// A whole-object read of a single-part object with one byte changed on its way back ends in an
/// error after its last byte, never a clean end; a partial read is not checked (it cannot be).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_download_byte_is_an_error() {
    for srv in servers().await {
        let fault = Arc::new(Mutex::new(Fault::None));
        let p = proxy(&srv, fault.clone()).await;
        for mode in [Checksum::Md5, Checksum::Crc32c] {
            let b = via(&srv, &p, mode);
            let key = srv.key(&format!("victim-read-{mode:?}.bin"));
            let want = data(MIB, 11);
            // On Garage this upload, the first request of a backend with no region set, once
            // failed about 1 run in 3: Garage refused it for its region before reading the body
            // and closed, and the proxy could only pass on a reset. The client now asks the
            // region when such an upload breaks (s3_client::an_upload_whose_connection_breaks_...).
            upload(&b, &key, &want)
                .await
                .unwrap_or_else(|e| panic!("[{}] setup upload: {e}", srv.name));
            assert_eq!(read_all(&b, &key).await.unwrap(), want, "[{}]", srv.name);
            *fault.lock().unwrap() = Fault::Download;
            let r = read_all(&b, &key).await;
            let partial = b.read(&key, 1, None).await;
            let mut partial_bytes = Vec::new();
            if let Ok(mut s) = partial {
                while let Some(c) = s.next().await {
                    partial_bytes.extend_from_slice(&c.unwrap());
                }
            }
            *fault.lock().unwrap() = Fault::None;
            match r {
                Err(e) => assert!(
                    e.to_string().contains("checksum"),
                    "[{}] {mode:?}: {e}",
                    srv.name
                ),
                Ok(got) => panic!(
                    "[{}] {mode:?}: a changed download ended cleanly ({})",
                    srv.name,
                    if got == want {
                        "right bytes"
                    } else {
                        "wrong bytes"
                    }
                ),
            }
            assert_eq!(partial_bytes.len(), MIB - 1, "[{}] ranged read", srv.name);
        }
    }
}

/// The sync engine never counts a changed copy as done: a push whose upload is changed on its
/// way, and a pull whose download is, each end as an error and leave the destination as it was
/// (a single PutObject changed on its way is the gateway tests' case: tests/e2e_checksums.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_copy_with_a_changed_byte_is_not_ok() {
    for srv in servers().await {
        let fault = Arc::new(Mutex::new(Fault::None));
        let p = proxy(&srv, fault.clone()).await;
        let remote = Arc::new(via(&srv, &p, Checksum::Md5));
        let dir = tempfile::tempdir().unwrap();
        let site: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("site")).unwrap());
        let job = |name: &str, direction| SyncJob {
            name: format!("{name}-{}", srv.name),
            site: (site.clone(), name.into()),
            remote: (remote.clone(), srv.key(&format!("{name}/"))),
            direction,
            delete: false,
            conflict: ConflictPolicy::Newer,
            include: vec![],
            exclude: vec![],
            max_delete: Default::default(),
            lease: None,
            history: None,
        };
        let state = dir.path().join("state");

        // Push: the site's file goes up with a changed byte in one of its parts (a multipart
        // upload, refused before completion on every server: by the server or by the check
        // of the part's ETag).
        let up = data(12 * MIB, 21);
        std::fs::create_dir_all(dir.path().join("site/push")).unwrap();
        std::fs::write(dir.path().join("site/push/victim.bin"), &up).unwrap();
        *fault.lock().unwrap() = Fault::Upload;
        let sum = run_job(&job("push", Direction::Push), &state, RunOptions::default()).await;
        *fault.lock().unwrap() = Fault::None;
        let sum = sum.unwrap();
        assert!(
            !sum.ok() && sum.errors == 1 && sum.copied_to_remote == 0,
            "[{}] push: {sum:?}",
            srv.name
        );
        assert!(
            object(&srv, &srv.key("push/victim.bin")).await.is_none(),
            "[{}] push committed a changed file",
            srv.name
        );
        let sum = run_job(&job("push", Direction::Push), &state, RunOptions::default())
            .await
            .unwrap();
        assert!(
            sum.ok() && sum.copied_to_remote == 1,
            "[{}] {sum:?}",
            srv.name
        );
        assert!(object(&srv, &srv.key("push/victim.bin")).await == Some(up));

        // Pull: the remote's file comes down with a changed byte.
        let down = data(MIB, 22);
        put(&srv.backend(), &srv.key("pull/victim.bin"), &down, MIB).await;
        *fault.lock().unwrap() = Fault::Download;
        let sum = run_job(&job("pull", Direction::Pull), &state, RunOptions::default()).await;
        *fault.lock().unwrap() = Fault::None;
        let sum = sum.unwrap();
        assert!(
            !sum.ok() && sum.errors == 1 && sum.copied_to_site == 0,
            "[{}] pull: {sum:?}",
            srv.name
        );
        assert!(
            !dir.path().join("site/pull/victim.bin").exists(),
            "[{}] pull wrote a changed file",
            srv.name
        );
        // Unchanged, both go through.
        let sum = run_job(&job("pull", Direction::Pull), &state, RunOptions::default())
            .await
            .unwrap();
        assert!(
            sum.ok() && sum.copied_to_site == 1,
            "[{}] {sum:?}",
            srv.name
        );
        assert_eq!(
            std::fs::read(dir.path().join("site/pull/victim.bin")).unwrap(),
            down
        );
    }
}

/// `checksum: auto` (the default) sends CRC32C where the probe found the server verifies it,
/// MD5 elsewhere; a multipart upload keeps the checksum it started with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sends_crc32c_only_where_the_server_verifies_it() {
    use bucketgate_storage::s3::Capabilities;
    let srv = s3s_server(None).await;
    let p = HttpProxy::start(srv.addr(), http_proxy::forward_all()).await;
    for verified in [true, false] {
        let b = srv.backend_unprobed_with(|o| {
            o.endpoint = format!("http://{}", p.addr);
            o.checksum = Checksum::Auto;
        });
        b.assume_capabilities(Capabilities {
            probed: true,
            put_crc32c: verified,
            ..Default::default()
        });
        let before = p.seen().len();
        let (small, large) = (data(MIB, 1), data(12 * MIB, 2));
        let (ks, kl) = (
            srv.key(&format!("auto-{verified}-small")),
            srv.key(&format!("auto-{verified}-large")),
        );
        upload(&b, &ks, &small).await.unwrap();
        upload(&b, &kl, &large).await.unwrap();
        assert!(get(&srv.backend(), &ks).await == small);
        assert!(get(&srv.backend(), &kl).await == large);
        let puts: Vec<Seen> = p.seen()[before..]
            .iter()
            .filter(|s| s.method == "PUT")
            .cloned()
            .collect();
        // The small PutObject and the large upload's three parts.
        assert_eq!(puts.len(), 4, "{puts:?}");
        for s in &puts {
            let (crc, md5) = (
                s.header("x-amz-checksum-crc32c").is_some(),
                s.header("content-md5").is_some(),
            );
            assert_eq!(
                (crc, md5),
                (verified, !verified),
                "verified {verified}: {} {}",
                s.method,
                s.target
            );
        }
        let initiate = p.seen()[before..]
            .iter()
            .find(|s| s.method == "POST" && s.target.contains("uploads"))
            .cloned()
            .expect("a multipart upload");
        assert_eq!(
            initiate.header("x-amz-checksum-algorithm"),
            verified.then_some("CRC32C")
        );
    }
}
