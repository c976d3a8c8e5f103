//! Server-side copies of objects larger than one copy request may move (5 GiB on S3): renames,
//! time changes and appends then copy the object as a multipart upload of ranges. The limit is
//! lowered (`max_copy_range`) so that this path runs on 12 MiB objects; an HTTP proxy counts
//! the ranged copy requests, so the test proves the split happened, not only that the bytes
//! came out right.

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions};
use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::ErrorKind;
use http_proxy::{forward_all, HttpProxy, Seen};
use s3_support::*;
use std::time::{Duration, UNIX_EPOCH};

/// The smallest copy range the backend accepts (ranges split evenly are then each ≥ 5 MiB).
const RANGE: u64 = 10 * MIB as u64;

/// A backend through `proxy` that keeps client times and copies at most `RANGE` per request.
fn via(srv: &Server, proxy: &HttpProxy) -> S3Backend {
    let endpoint = format!("http://{}", proxy.addr);
    srv.backend_with(|o| {
        o.endpoint = endpoint;
        o.preserve_mtime = true;
        o.max_copy_range = RANGE;
    })
}

/// Parts sent since the proxy's request number `from` (UploadPart and UploadPartCopy).
fn parts_since(proxy: &HttpProxy, from: usize) -> usize {
    proxy
        .seen()
        .iter()
        .filter(|s: &&Seen| s.n >= from && s.method == "PUT" && s.has_query("partNumber"))
        .count()
}

fn requests(proxy: &HttpProxy) -> usize {
    proxy.seen().len()
}

#[tokio::test]
async fn copies_above_the_copy_limit_go_in_ranges_and_keep_bytes_and_times() {
    for srv in servers().await {
        println!("server {}", srv.name);
        if srv.skip(
            !srv.caps.part_copy,
            "copies in ranges (UploadPartCopy is dropped)",
        ) {
            continue;
        }
        let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
        let b = via(&srv, &proxy);
        let direct = srv.backend_with(|o| o.preserve_mtime = true);
        let t = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let bytes = data(12 * MIB, 21);
        let opts = CreateOptions {
            mtime: Some(t),
            ..Default::default()
        };
        put_with(&direct, &srv.key("a.bin"), &bytes, MIB, opts)
            .await
            .expect("upload");

        // A rename is a copy then a delete: two ranges of 6 MiB, then the source goes.
        let before = requests(&proxy);
        b.rename_file(&srv.key("a.bin"), &srv.key("sub/b.bin"))
            .await
            .unwrap();
        assert_eq!(
            parts_since(&proxy, before),
            2,
            "[{}] 12 MiB copied as two ranges",
            srv.name
        );
        assert_eq!(get(&direct, &srv.key("sub/b.bin")).await, bytes);
        let e = direct.stat(&srv.key("sub/b.bin")).await.unwrap();
        assert_eq!(e.size, bytes.len() as u64);
        assert_eq!(
            e.mtime,
            Some(t),
            "[{}] the time survives the copy",
            srv.name
        );
        assert_eq!(
            direct.stat(&srv.key("a.bin")).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );

        // A time change copies the object onto itself with new metadata: ranges again.
        let t2 = t + Duration::from_secs(86_400);
        let before = requests(&proxy);
        b.set_mtime(&srv.key("sub/b.bin"), t2).await.unwrap();
        assert_eq!(parts_since(&proxy, before), 2, "[{}] set_mtime", srv.name);
        let e = direct.stat(&srv.key("sub/b.bin")).await.unwrap();
        assert_eq!(e.mtime, Some(t2), "[{}]", srv.name);
        assert_eq!(get(&direct, &srv.key("sub/b.bin")).await, bytes);

        // An append: the old 12 MiB as two copied ranges of 6 MiB (each above S3's 5 MiB
        // minimum, since more parts follow), then the new bytes as the last part.
        let existing = direct.stat(&srv.key("sub/b.bin")).await.unwrap();
        let more = data(3 * MIB + 7, 22);
        let t3 = t2 + Duration::from_secs(86_400);
        let before = requests(&proxy);
        let opts = CreateOptions {
            append_to: Some(existing),
            mtime: Some(t3),
            ..Default::default()
        };
        let e = put_with(&b, &srv.key("sub/b.bin"), &more, MIB, opts)
            .await
            .expect("append");
        assert_eq!(
            parts_since(&proxy, before),
            3,
            "[{}] two copied ranges and one new part",
            srv.name
        );
        let mut want = bytes.clone();
        want.extend_from_slice(&more);
        assert_eq!(e.size, want.len() as u64);
        assert!(
            get(&direct, &srv.key("sub/b.bin")).await == want,
            "[{}] old bytes then new bytes",
            srv.name
        );
        assert_eq!(
            direct.stat(&srv.key("sub/b.bin")).await.unwrap().mtime,
            Some(t3),
            "[{}] the append records its time",
            srv.name
        );
        if srv.caps.list_uploads {
            assert!(direct
                .list_multipart_uploads(&srv.prefix)
                .await
                .unwrap()
                .is_empty());
        }
    }
}

/// The limit cannot be set below what S3's part minimum allows: a 12 MiB object with a limit
/// of 5 MiB is still copied as two ranges of 6 MiB, not three of 4 MiB that S3 would refuse.
#[tokio::test]
async fn a_copy_limit_below_10_mib_is_raised() {
    let srv = moto_server().await;
    let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
    let endpoint = format!("http://{}", proxy.addr);
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint;
        o.max_copy_range = 5 * MIB as u64;
    });
    assert_eq!(b.options().max_copy_range, RANGE);
    let bytes = data(12 * MIB, 23);
    put(&srv.backend(), &srv.key("c.bin"), &bytes, MIB).await;
    let before = requests(&proxy);
    b.copy_file(&srv.key("c.bin"), &srv.key("d.bin"))
        .await
        .unwrap();
    assert_eq!(parts_since(&proxy, before), 2);
    assert_eq!(get(&srv.backend(), &srv.key("d.bin")).await, bytes);
}
