//! Uploads that do not finish, appends, and the multipart clean-up.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions};
use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::ErrorKind;
use bytes::Bytes;
use s3_support::*;
use std::time::Duration;

async fn pending_uploads(b: &S3Backend, prefix: &str) -> usize {
    b.list_multipart_uploads(prefix).await.unwrap().len()
}

/// The backend cleans up a dropped upload in the background: wait for it, bounded.
async fn wait_no_pending(b: &S3Backend, prefix: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = pending_uploads(b, prefix).await;
        if n == 0 || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn interrupted_uploads_leave_nothing() {
    for srv in servers().await {
        let b = srv.backend();
        let chunk = Bytes::from(data(MIB, 1));
        // Aborted after two parts went out.
        let key = srv.key("aborted");
        let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
        for _ in 0..11 {
            up.write(chunk.clone()).await.unwrap();
        }
        assert_eq!(up.written(), 11 * MIB as u64);
        up.abort().await;
        assert_eq!(b.stat(&key).await.unwrap_err().kind(), ErrorKind::NotFound);

        // Dropped (a client vanished) without finish or abort.
        let key2 = srv.key("dropped");
        let mut up = b.create(&key2, CreateOptions::default()).await.unwrap();
        for _ in 0..11 {
            up.write(chunk.clone()).await.unwrap();
        }
        drop(up);
        assert_eq!(b.stat(&key2).await.unwrap_err().kind(), ErrorKind::NotFound);
        if !srv.skip(!srv.caps.list_uploads, "pending multipart uploads") {
            assert_eq!(wait_no_pending(&b, &srv.prefix).await, 0, "[{}]", srv.name);
        }

        // keep_partial: what arrived is committed instead.
        let key3 = srv.key("partial");
        let opts = CreateOptions {
            keep_partial: true,
            ..Default::default()
        };
        let mut up = b.create(&key3, opts).await.unwrap();
        for _ in 0..6 {
            up.write(chunk.clone()).await.unwrap();
        }
        up.abort().await;
        assert_eq!(get(&b, &key3).await.len(), 6 * MIB, "[{}]", srv.name);
    }
}

/// Starts a multipart upload of `key` as another program (or another gateway instance) would,
/// with plain HTTP (moto checks no signature); with `part`, uploads one part to it now.
async fn foreign_upload(srv: &Server, key: &str, part: bool) -> String {
    let http = reqwest::Client::new();
    let url = format!("{}/{}/{key}", srv.endpoint, srv.bucket);
    let body = http
        .post(format!("{url}?uploads"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id = body
        .split("<UploadId>")
        .nth(1)
        .and_then(|r| r.split("</UploadId>").next())
        .expect("an upload id")
        .to_string();
    if part {
        let r = http
            .put(format!("{url}?partNumber=1&uploadId={id}"))
            .body(vec![7u8; 1024])
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "upload part: {}", r.status());
    }
    id
}

#[tokio::test]
async fn stale_uploads_are_aborted_and_live_ones_never() {
    // moto reports every upload as initiated in 2010: by start time alone, all look stale.
    let srv = moto_server().await;
    let b = srv.backend();
    let key = srv.key("ours");
    let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
    let body = data(6 * MIB, 2);
    up.write(Bytes::from(body.clone())).await.unwrap();
    foreign_upload(&srv, &srv.key("abandoned"), false).await;
    foreign_upload(&srv, &srv.key("other-instance"), true).await;
    assert_eq!(pending_uploads(&b, &srv.prefix).await, 3);
    // Only the upload that nobody holds and that received nothing lately goes: this process's
    // own (whatever its start time) and the one whose part just arrived stay.
    assert_eq!(
        b.abort_stale_uploads(&srv.prefix, Duration::from_secs(3600))
            .await
            .unwrap(),
        1
    );
    let mut left: Vec<String> = b
        .list_multipart_uploads(&srv.prefix)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.key)
        .collect();
    left.sort();
    assert_eq!(left, vec![srv.key("other-instance"), srv.key("ours")]);
    // Even with no age at all, an upload this process holds is never aborted.
    b.abort_stale_uploads(&srv.prefix, Duration::ZERO)
        .await
        .unwrap();
    up.write(Bytes::from(body.clone())).await.unwrap();
    up.finish().await.unwrap();
    assert_eq!(get(&b, &key).await, [body.clone(), body].concat());
    assert_eq!(
        pending_uploads(&b, &srv.prefix).await,
        0,
        "the other one is stale by now"
    );
}

async fn append(b: &S3Backend, key: &str, more: &[u8]) -> bucketgate_storage::Result<u64> {
    let existing = b.stat(key).await?;
    let opts = CreateOptions {
        append_to: Some(existing),
        ..Default::default()
    };
    put_with(b, key, more, 100_000, opts).await.map(|e| e.size)
}

#[tokio::test]
async fn appends_compose_old_and_new_bytes() {
    for srv in servers().await {
        let b = srv.backend();
        // Small: the old bytes are read and sent again.
        let small = srv.key("small");
        let mut want = data(1000, 3);
        put(&b, &small, &want, 1000).await;
        let more = data(500, 4);
        assert_eq!(append(&b, &small, &more).await.unwrap(), 1500);
        want.extend_from_slice(&more);
        assert_eq!(get(&b, &small).await, want, "[{}] small append", srv.name);

        if srv.skip(!srv.caps.part_copy, "server-side appends (UploadPartCopy)") {
            continue;
        }
        // Large: the old bytes are copied server-side; new bytes small, then large.
        let big = srv.key("big");
        let mut want = data(6 * MIB, 5);
        put(&b, &big, &want, MIB).await;
        let more = data(10, 6);
        append(&b, &big, &more).await.unwrap();
        want.extend_from_slice(&more);
        assert_eq!(get(&b, &big).await, want, "[{}] +10 B", srv.name);
        let more = data(6 * MIB + 3, 7);
        append(&b, &big, &more).await.unwrap();
        want.extend_from_slice(&more);
        assert_eq!(get(&b, &big).await, want, "[{}] +6 MiB", srv.name);
        if !srv.skip(
            !srv.caps.list_uploads,
            "no pending upload after the appends",
        ) {
            assert_eq!(pending_uploads(&b, &srv.prefix).await, 0);
        }
    }
}

#[tokio::test]
async fn an_append_that_loses_the_race_changes_nothing() {
    for srv in servers().await {
        let b = srv.backend();
        for size in [1000usize, 6 * MIB] {
            if size >= 5 * MIB && srv.skip(!srv.caps.part_copy, "server-side append race") {
                continue;
            }
            let key = srv.key(&format!("race-{size}"));
            put(&b, &key, &data(size, 8), MIB).await;
            let seen = b.stat(&key).await.unwrap();
            let opts = CreateOptions {
                append_to: Some(seen.clone()),
                ..Default::default()
            };

            // Overwritten between open and finish.
            let mut up = b.create(&key, opts.clone()).await.unwrap();
            up.write(Bytes::from_static(b"more")).await.unwrap();
            let other = data(size + 1, 9);
            put(&b, &key, &other, MIB).await;
            let e = up.finish().await.unwrap_err();
            assert_eq!(
                e.kind(),
                ErrorKind::Conflict,
                "[{}] {size}: {e:?}",
                srv.name
            );
            assert_eq!(get(&b, &key).await, other, "[{}] unchanged", srv.name);

            // Overwritten before the append even started.
            let e = b.create(&key, opts).await.err().unwrap();
            assert_eq!(e.kind(), ErrorKind::Conflict, "[{}] {size}", srv.name);
            assert_eq!(get(&b, &key).await, other);
        }
        if !srv.skip(!srv.caps.list_uploads, "pending multipart uploads") {
            assert_eq!(wait_no_pending(&b, &srv.prefix).await, 0, "[{}]", srv.name);
        }
    }
}

/// `transfers.finish_within`: on a slow link an upload keeps in flight only the parts the link
/// stores in that time, so what is left to store after the client's last byte (which the
/// client waits for in silence) is about that long, not `concurrency` parts long. With the
/// bound out of the way (600 s), the same upload has all 4 parts in flight at its last byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_remote_gets_no_more_parts_in_flight_than_it_stores_in_finish_within() {
    use bucketgate_testkit::http_proxy::{Action, HttpProxy, Link, Seen};
    use std::sync::Arc;
    let srv = s3s_server(None).await;
    // 8 MB/s shared by every part: 5 MiB parts take 0.65 s alone, 2.6 s four at a time.
    let link = Link::new(8_000_000);
    let rule = move |s: &Seen| {
        if s.has_query("partNumber") {
            Action::Link(link.clone())
        } else {
            Action::Forward
        }
    };
    let proxy = HttpProxy::start(srv.addr(), Arc::new(rule)).await;
    let part = 5 * MIB;
    let bytes = data(8 * part, 3);
    for (within, least, most) in [(1, 1, 2), (600, 4, 5)] {
        let b = srv.backend_with(|o| {
            o.endpoint = format!("http://{}", proxy.addr);
            o.part_size = part as u64;
            o.concurrency = 4;
            o.finish_within = Duration::from_secs(within);
        });
        let key = srv.key(&format!("paced-{within}"));
        proxy.hold.answered.lock().unwrap().clear();
        let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
        for c in bytes.chunks(MIB) {
            up.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        // The parts not yet stored when the client's last byte is in: all but those the
        // server has answered.
        let seen = proxy.seen();
        let stored = proxy
            .hold
            .answered
            .lock()
            .unwrap()
            .iter()
            .filter(|n| seen.iter().any(|s| s.n == **n && s.has_query("partNumber")))
            .count();
        let left = 8 - stored;
        let last_byte = std::time::Instant::now();
        up.finish().await.unwrap();
        println!(
            "finish_within {within}s: {left} parts of 8 to store after the last byte, \
             stored {:?} later",
            last_byte.elapsed()
        );
        assert!(
            (least..=most).contains(&left),
            "finish_within {within}s: {left} parts to store after the last byte"
        );
        assert!(get(&b, &key).await == bytes, "the object's bytes");
    }
}
