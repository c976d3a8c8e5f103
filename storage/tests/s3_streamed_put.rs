//! Uploads of a known size whose caller can send them again (syncs) go as one streamed
//! PutObject up to `single_put_max`: one request, no multipart upload. An HTTP proxy sees every
//! request, so the tests prove which path ran; the bytes are read back from the server; and an
//! upload that is aborted, dropped, short or long leaves nothing at its key (or the old object).

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions};
use bucketgate_storage::s3::{Checksum, S3Backend};
use bucketgate_storage::ErrorKind;
use bytes::Bytes;
use http_proxy::{forward_all, Action, HttpProxy, Seen};
use s3_support::*;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

const LEN: usize = 12 * MIB;

fn via(srv: &Server, proxy: &HttpProxy, single_put_max: u64) -> S3Backend {
    let endpoint = format!("http://{}", proxy.addr);
    srv.backend_with(|o| {
        o.endpoint = endpoint;
        o.preserve_mtime = true;
        o.single_put_max = single_put_max;
        // A streamed body cannot carry a checksum known before it is sent: with checksums
        // on, uploads are buffered instead (tests/e2e_checksums.rs).
        o.checksum = Checksum::Off;
    })
}

fn resendable(len: usize) -> CreateOptions {
    CreateOptions {
        size_hint: Some(len as u64),
        mtime: Some(UNIX_EPOCH + Duration::from_secs(1_500_000_000)),
        resendable: true,
        ..Default::default()
    }
}

/// The requests of an upload: (plain PUTs, part PUTs, POSTs).
fn upload_requests(proxy: &HttpProxy, from: usize) -> (usize, usize, usize) {
    let seen = proxy.seen();
    let mine = seen.iter().filter(|s: &&Seen| s.n >= from);
    let (mut puts, mut parts, mut posts) = (0, 0, 0);
    for s in mine {
        match s.method.as_str() {
            "PUT" if s.has_query("partNumber") => parts += 1,
            "PUT" => puts += 1,
            "POST" => posts += 1,
            _ => {}
        }
    }
    (puts, parts, posts)
}

async fn absent(b: &S3Backend, key: &str) -> bool {
    b.stat(key).await.map_err(|e| e.kind()) == Err(ErrorKind::NotFound)
}

#[tokio::test]
async fn a_resendable_upload_of_known_size_is_one_put() {
    for srv in servers().await {
        println!("server {}", srv.name);
        let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
        let b = via(&srv, &proxy, 64 * MIB as u64);
        let bytes = data(LEN, 31);
        // As in a sync, the backend has listed before it uploads (and so knows the server's
        // region: see the last test for a streamed PUT that is the first request).
        let _ = b.stat(&srv.key("none")).await;

        let n0 = proxy.seen().len();
        let e = put_with(&b, &srv.key("one.bin"), &bytes, MIB, resendable(LEN))
            .await
            .expect("streamed upload");
        assert_eq!(upload_requests(&proxy, n0), (1, 0, 0), "[{}]", srv.name);
        assert_eq!(e.size, LEN as u64);
        assert_eq!(get(&b, &srv.key("one.bin")).await, bytes, "[{}]", srv.name);
        let st = b.stat(&srv.key("one.bin")).await.unwrap();
        assert_eq!(
            st.mtime,
            Some(UNIX_EPOCH + Duration::from_secs(1_500_000_000)),
            "[{}] the time travels with the PUT",
            srv.name
        );

        // A client's stream (not resendable) is a multipart upload, retried part by part.
        let n0 = proxy.seen().len();
        let client = CreateOptions {
            resendable: false,
            ..resendable(LEN)
        };
        put_with(&b, &srv.key("client.bin"), &bytes, MIB, client)
            .await
            .unwrap();
        let (puts, parts, posts) = upload_requests(&proxy, n0);
        assert_eq!((puts, parts, posts), (0, 3, 2), "[{}]", srv.name);

        // Above `single_put_max`, and with it at 0, multipart again.
        for max in [(LEN - 1) as u64, 0] {
            let b = via(&srv, &proxy, max);
            let n0 = proxy.seen().len();
            put_with(&b, &srv.key("big.bin"), &bytes, MIB, resendable(LEN))
                .await
                .unwrap();
            assert_eq!(upload_requests(&proxy, n0).1, 3, "[{}] max {max}", srv.name);
            assert_eq!(get(&b, &srv.key("big.bin")).await, bytes);
        }
    }
}

#[tokio::test]
async fn an_unfinished_streamed_put_leaves_nothing() {
    for srv in servers().await {
        println!("server {}", srv.name);
        let b = srv.backend_with(|o| {
            o.single_put_max = 64 * MIB as u64;
            o.checksum = Checksum::Off;
        });
        let chunk = Bytes::from(data(MIB, 32));
        let old = data(1000, 33);
        put(&b, &srv.key("kept.bin"), &old, 1000).await;

        // Aborted halfway, aborted with every byte written, dropped with every byte written:
        // the server never gets the whole body, so neither a new object nor a changed one.
        for (name, written, how) in [
            ("half.bin", 6, "abort"),
            ("all.bin", 12, "abort"),
            ("dropped.bin", 12, "drop"),
            ("kept.bin", 12, "abort"),
        ] {
            let key = srv.key(name);
            let mut up = b.create(&key, resendable(LEN)).await.unwrap();
            for _ in 0..written {
                up.write(chunk.clone()).await.unwrap();
            }
            // Time for everything written to reach the server before the upload is given up.
            tokio::time::sleep(Duration::from_millis(300)).await;
            match how {
                "abort" => up.abort().await,
                _ => drop(up),
            }
            // Give a server that would wrongly keep a short body the time to store it.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if name == "kept.bin" {
                assert_eq!(get(&b, &key).await, old, "[{}] {name}", srv.name);
            } else {
                assert!(absent(&b, &key).await, "[{}] {name} {how}", srv.name);
            }
        }

        // Fewer bytes than announced: finish fails and nothing appears.
        let key = srv.key("short.bin");
        let mut up = b.create(&key, resendable(LEN)).await.unwrap();
        for _ in 0..11 {
            up.write(chunk.clone()).await.unwrap();
        }
        let e = up.finish().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(absent(&b, &key).await, "[{}] short", srv.name);

        // More bytes than announced: the write that goes over fails, nothing appears.
        let key = srv.key("long.bin");
        let mut up = b.create(&key, resendable(LEN)).await.unwrap();
        for _ in 0..12 {
            up.write(chunk.clone()).await.unwrap();
        }
        let e = up.write(Bytes::from_static(b"x")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
        drop(up);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(absent(&b, &key).await, "[{}] long", srv.name);
    }
}

#[tokio::test]
async fn a_refused_streamed_put_fails_retryably_and_leaves_nothing() {
    let srv = s3s_server(None).await;
    for (name, action) in [
        (
            "slow-down",
            Action::Fail {
                status: 503,
                code: "SlowDown",
                retry_after: None,
            },
        ),
        ("dropped", Action::Drop),
    ] {
        let rule: http_proxy::Rule = Arc::new(move |s: &Seen| {
            if s.method == "PUT" {
                action.clone()
            } else {
                Action::Forward
            }
        });
        let proxy = HttpProxy::start(srv.addr(), rule).await;
        let b = via(&srv, &proxy, 64 * MIB as u64);
        let key = srv.key(name);
        let r = put_with(&b, &key, &data(LEN, 34), MIB, resendable(LEN)).await;
        let e = r.expect_err(name);
        assert!(e.is_retryable(), "{name}: {e}");
        assert_eq!(
            upload_requests(&proxy, 0).0,
            1,
            "{name}: the bytes are gone, so the request is not repeated here"
        );
        assert!(absent(&srv.backend(), &key).await, "{name}");
    }
}

#[tokio::test]
async fn a_streamed_put_refused_for_its_region_asks_to_be_sent_again() {
    // The remote has no region set; the server wants another one. Other requests are resent
    // in the right region at once; a streamed body cannot be, so the caller is told to send
    // again, and the second try (now in the server's region) lands.
    let srv = s3s_server(Some("eu-central-1")).await;
    let b = srv.backend_with(|o| {
        o.region = None;
        o.single_put_max = 64 * MIB as u64;
        o.checksum = Checksum::Off;
    });
    let bytes = data(LEN, 35);
    let key = srv.key("region.bin");
    let e = put_with(&b, &key, &bytes, MIB, resendable(LEN))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    assert!(e.to_string().contains("eu-central-1"), "{e}");
    assert!(absent(&srv.backend(), &key).await);
    put_with(&b, &key, &bytes, MIB, resendable(LEN))
        .await
        .unwrap();
    assert_eq!(get(&srv.backend(), &key).await, bytes);
}
