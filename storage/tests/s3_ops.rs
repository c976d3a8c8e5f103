//! Server-side copies, renames, and client-set times.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions, EntryKind};
use bucketgate_storage::ErrorKind;
use futures::StreamExt;
use s3_support::*;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[tokio::test]
async fn copy_and_rename_files() {
    for srv in servers().await {
        let b = srv.backend();
        let bytes = data(70_000, 1);
        put(&b, &srv.key("a"), &bytes, 70_000).await;
        b.copy_file(&srv.key("a"), &srv.key("b")).await.unwrap();
        assert_eq!(get(&b, &srv.key("b")).await, bytes);
        b.rename_file(&srv.key("b"), &srv.key("sub/c"))
            .await
            .unwrap();
        assert_eq!(get(&b, &srv.key("sub/c")).await, bytes);
        assert_eq!(
            b.stat(&srv.key("b")).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            b.copy_file(&srv.key("nope"), &srv.key("x"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }
}

#[tokio::test]
async fn rename_a_folder() {
    for srv in servers().await {
        // 1,000 objects on moto (several DeleteObjects-free pages of listing, one batch of
        // deletes); fewer elsewhere, since s3s-fs copies through its file system.
        let n = if srv.name == "moto" { 1000 } else { 60 };
        let b = srv.backend_with(|o| o.list_page_size = 250);
        let payloads: Vec<Vec<u8>> = (0..n).map(|i| format!("file {i}").into_bytes()).collect();
        let mut uploads = futures::stream::iter(0..n)
            .map(|i| {
                let b = b.clone();
                let key = srv.key(&format!("from/d{}/f{i:04}", i % 7));
                let body = payloads[i].clone();
                async move { put(&b, &key, &body, 64).await }
            })
            .buffer_unordered(16);
        while uploads.next().await.is_some() {}
        b.mkdir(&srv.key("from/emptydir")).await.unwrap();

        b.rename_dir(&srv.key("from"), &srv.key("to"))
            .await
            .unwrap();

        assert!(
            list_all(&b, &srv.key("from")).await.is_empty(),
            "[{}]",
            srv.name
        );
        let walked = walk_all(&b, &srv.key("to")).await;
        let files: Vec<_> = walked.iter().filter(|e| !e.is_dir()).collect();
        assert_eq!(files.len(), n, "[{}]", srv.name);
        if !srv.skip(!srv.caps.markers, "markers move with the folder") {
            assert_eq!(
                b.stat(&srv.key("to/emptydir")).await.unwrap().kind,
                EntryKind::Dir
            );
        }
        for i in [0, n / 2, n - 1] {
            let key = srv.key(&format!("to/d{}/f{i:04}", i % 7));
            assert_eq!(get(&b, &key).await, payloads[i], "[{}]", srv.name);
        }
        // Onto an existing folder, or from nothing: refused.
        put(&b, &srv.key("other/x"), b"x", 1).await;
        assert_eq!(
            b.rename_dir(&srv.key("other"), &srv.key("to"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            b.rename_dir(&srv.key("ghost"), &srv.key("ghost2"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }
}

/// One unsigned HTTP/1.1 request for `key` sent exactly as given (moto takes unsigned PUTs
/// and keeps `.` and `..` segments as part of the key): (status, body).
async fn raw_http(srv: &Server, method: &str, key: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut c = tokio::net::TcpStream::connect(srv.addr()).await.unwrap();
    let head = format!(
        "{method} /{}/{key} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        srv.bucket,
        srv.addr(),
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    c.write_all(body).await.unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = std::str::from_utf8(&out[9..12]).unwrap().parse().unwrap();
    (status, out[split + 4..].to_vec())
}

/// A key with a `..` segment, written by another program: no request of ours may name it,
/// since the URL would reach another key (`from/x/../b` is `from/b` to every URL parser).
/// Before the fix a stat of it answered for `b`, and a folder rename "moved" it by copying it
/// over the folder's own `b` and deleting it: one file lost, another overwritten.
#[tokio::test]
async fn keys_with_dot_segments_are_never_sent_and_their_folder_is_not_renamed() {
    let srv = moto_server().await;
    let b = srv.backend();
    put(&b, &srv.key("from/b"), b"real b", 6).await;
    let dotted = srv.key("from/x/../b");
    assert_eq!(raw_http(&srv, "PUT", &dotted, b"dotted").await.0, 200);

    let err = b
        .stat(&dotted)
        .await
        .expect_err("the stat must not answer for from/b");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");

    let err = b
        .rename_dir(&srv.key("from"), &srv.key("to"))
        .await
        .expect_err("a folder holding such a key cannot be moved");
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("nothing was changed"), "{err}");
    assert_eq!(get(&b, &srv.key("from/b")).await, b"real b");
    // Both keys still there (moto refuses unsigned reads, so the listing says it), and
    // nothing at the target.
    let mut keys = b.raw_keys(&srv.key("")).await.unwrap();
    keys.sort();
    assert_eq!(keys, [srv.key("from/b"), dotted]);
}

/// A key that may write but not delete (a common "drop box" policy): a rename copies, then
/// cannot delete the old name. The error must say that the file is under both names, and both
/// must hold it (before, the client read only "permission denied", as if nothing had moved).
#[tokio::test]
async fn a_rename_whose_delete_is_refused_says_the_file_is_under_both_names() {
    let srv = s3s_server_denying(&["DeleteObject"]).await;
    let b = srv.backend();
    put(&b, &srv.key("a"), b"kept", 4).await;
    let err = b
        .rename_file(&srv.key("a"), &srv.key("b"))
        .await
        .expect_err("the delete is refused");
    assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
    assert!(err.to_string().contains("under both names"), "{err}");
    assert_eq!(get(&b, &srv.key("a")).await, b"kept");
    assert_eq!(get(&b, &srv.key("b")).await, b"kept");
}

#[tokio::test]
async fn client_set_times_round_trip() {
    for srv in servers().await {
        let b = srv.backend_with(|o| o.preserve_mtime = true);
        let t = UNIX_EPOCH + Duration::new(1_600_000_000, 123_456_789);
        let key = srv.key("times/f");
        put(&b, &key, b"hello", 5).await;
        b.set_mtime(&key, t).await.unwrap();
        assert_eq!(b.stat(&key).await.unwrap().mtime, Some(t), "[{}]", srv.name);
        assert_eq!(get(&b, &key).await, b"hello", "content kept");
        let listed = list_all(&b, &srv.key("times")).await;
        assert_eq!(listed[0].mtime, Some(t), "[{}] listing = stat", srv.name);

        // A time given at create is stored with the object.
        let t2 = UNIX_EPOCH + Duration::from_secs(1_500_000_000);
        let opts = CreateOptions {
            mtime: Some(t2),
            ..Default::default()
        };
        let e = put_with(&b, &srv.key("times/g"), b"x", 1, opts)
            .await
            .unwrap();
        assert_eq!(e.mtime, Some(t2), "[{}]", srv.name);

        // Without preserve_mtime, times are Last-Modified and changes are accepted, ignored.
        let plain = srv.backend();
        plain.set_mtime(&key, UNIX_EPOCH).await.unwrap();
        let shown = plain.stat(&key).await.unwrap().mtime.unwrap();
        assert!(shown > SystemTime::now() - Duration::from_secs(3600));
        assert_eq!(b.stat(&key).await.unwrap().mtime, Some(t));
    }
}
