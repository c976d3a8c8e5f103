//! Bytes in, the same bytes out: single PUTs, multipart edges, a large stream, ranged reads and
//! short bodies, against every test server.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions};
use bucketgate_storage::budget::MemoryBudget;
use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::ErrorKind;
use bytes::Bytes;
use futures::StreamExt;
use s3_support::*;
use sha2::{Digest, Sha256};

#[tokio::test]
async fn round_trips_and_multipart_edges() {
    for srv in servers().await {
        let b = srv.backend();
        let part = 5 * MIB;
        for (i, len) in [0, 1, 1000, part, part + 1, 2 * part + 7]
            .into_iter()
            .enumerate()
        {
            let key = srv.key(&format!("edge-{len}"));
            let bytes = data(len, i as u64);
            // Odd write sizes, so parts never line up with writes.
            let e = put(&b, &key, &bytes, 300_001).await;
            assert_eq!(e.size, len as u64, "[{}] entry size of {len}", srv.name);
            assert!(e.etag.is_some());
            assert_eq!(get(&b, &key).await, bytes, "[{}] bytes of {len}", srv.name);
            let st = b.stat(&key).await.unwrap();
            assert_eq!((st.size, st.is_dir()), (len as u64, false));
        }
        // Unusual characters survive signing and addressing.
        let key = srv.key("sp ace/ü+%&=;é~!'()*,[].txt");
        put(&b, &key, b"odd", 10).await;
        assert_eq!(get(&b, &key).await, b"odd");
        assert_eq!(
            names(&list_all(&b, &srv.key("sp ace")).await),
            vec!["ü+%&=;é~!'()*,[].txt"]
        );
    }
}

#[tokio::test]
async fn ranged_reads() {
    for srv in servers().await {
        let b = srv.backend();
        let key = srv.key("ranged");
        let bytes = data(100_000, 7);
        put(&b, &key, &bytes, 100_000).await;
        let read = |off: u64, end: Option<u64>| {
            let b = b.clone();
            let key = key.clone();
            async move {
                let mut s = b.read(&key, off, end).await?;
                let mut out = Vec::new();
                while let Some(c) = s.next().await {
                    out.extend_from_slice(&c?);
                }
                Ok::<_, bucketgate_storage::Error>(out)
            }
        };
        assert_eq!(read(10, Some(20)).await.unwrap(), &bytes[10..20]);
        assert_eq!(read(99_999, None).await.unwrap(), &bytes[99_999..]);
        assert_eq!(read(50_000, Some(100_000)).await.unwrap(), &bytes[50_000..]);
        assert!(read(100_000, Some(100_000)).await.unwrap().is_empty());
        // Asking for more than the object holds: it changed, never a silent short read.
        let e = read(0, Some(200_000)).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict, "[{}]", srv.name);
        let e = b.read(&srv.key("missing"), 0, None).await.err().unwrap();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}

#[tokio::test]
async fn a_body_cut_short_is_an_error() {
    let srv = s3s_server(None).await;
    let b = srv.backend();
    let key = srv.key("cut");
    put(&b, &key, &data(MIB, 3), MIB).await;
    let target: std::net::SocketAddr = srv.endpoint.trim_start_matches("http://").parse().unwrap();
    let proxy = Proxy::start(target, Some(64 * 1024)).await;
    let via = S3Backend::new(
        {
            let mut o = srv.options();
            o.endpoint = format!("http://{}", proxy.addr);
            o
        },
        MemoryBudget::shared(64 * MIB as u64),
    )
    .unwrap();
    let mut s = via.read(&key, 0, Some(MIB as u64)).await.unwrap();
    let mut got = 0;
    let mut failed = false;
    while let Some(c) = s.next().await {
        match c {
            Ok(c) => got += c.len(),
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Backend);
                failed = true;
                break;
            }
        }
    }
    assert!(failed, "a cut body must fail (got {got} bytes)");
    assert!(got < MIB);
}

#[tokio::test]
async fn a_large_stream_through_small_memory() {
    let srv = s3s_server(None).await;
    // 200 MiB through a 24 MiB budget: at most a few parts in memory at once.
    let budget = MemoryBudget::shared(24 * MIB as u64);
    let b = S3Backend::new(
        {
            let mut o = srv.options();
            o.part_size = 8 * MIB as u64;
            o
        },
        budget.clone(),
    )
    .unwrap();
    let key = srv.key("big");
    let total = 200 * MIB;
    let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
    let mut h = Sha256::new();
    let block = data(MIB, 11);
    for i in 0..total / MIB {
        let mut chunk = block.clone();
        chunk[0] = i as u8;
        h.update(&chunk);
        up.write(Bytes::from(chunk)).await.unwrap();
        assert!(budget.available() <= budget.total());
    }
    let e = up.finish().await.unwrap();
    assert_eq!(e.size, total as u64);
    assert_eq!(budget.available(), budget.total(), "every permit came back");
    let mut s = b.read(&key, 0, Some(total as u64)).await.unwrap();
    let mut h2 = Sha256::new();
    let mut n = 0;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len();
        h2.update(&c);
    }
    assert_eq!(n, total);
    assert_eq!(h.finalize(), h2.finalize());
}

#[tokio::test]
async fn parts_larger_than_the_budget_are_spooled() {
    for srv in servers().await {
        // A 1 MiB budget can never hold a 5 MiB part: parts go through a temp file.
        let spool = tempfile::tempdir().unwrap();
        let b = S3Backend::new(
            {
                let mut o = srv.options();
                o.spool_dir = Some(spool.path().to_path_buf());
                o
            },
            MemoryBudget::shared(MIB as u64),
        )
        .unwrap();
        let key = srv.key("spooled");
        let bytes = data(11 * MIB + 5, 21);
        put(&b, &key, &bytes, 64 * 1024).await;
        assert_eq!(get(&b, &key).await, bytes, "[{}]", srv.name);
        assert_eq!(std::fs::read_dir(spool.path()).unwrap().count(), 0);
    }
}

/// The user's view of `b` rooted at the test prefix, as the protocols see files.
fn user_fs(b: &S3Backend, srv: &Server) -> bucketgate_storage::UserFs {
    let site = bucketgate_storage::Area {
        backend: std::sync::Arc::new(b.clone()),
        prefix: srv.prefix.clone(),
    };
    let tree = std::sync::Arc::new(bucketgate_storage::Tree::new(site, Vec::new()));
    bucketgate_storage::UserFs::new(
        tree,
        "alice",
        bucketgate_storage::VPath::parse("/").unwrap(),
        bucketgate_storage::Permissions::all(),
    )
}

fn vp(s: &str) -> bucketgate_storage::VPath {
    bucketgate_storage::VPath::parse(s).unwrap()
}

async fn read_all(
    mut s: bucketgate_storage::backend::ByteStream,
) -> bucketgate_storage::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

#[tokio::test]
async fn a_read_pinned_to_a_version_never_returns_another() {
    for srv in servers().await {
        let b = srv.backend();
        let key = srv.key("v.bin");
        let old = data(3 * MIB, 1);
        put(&b, &key, &old, MIB).await;
        let seen = b.stat(&key).await.unwrap();
        let etag = seen.etag.clone().expect("an etag");
        let at = |o: usize| read_all_at(&b, &key, o, seen.size, etag.clone());
        assert_eq!(
            at(MIB).await.unwrap(),
            old[MIB..],
            "[{}] same version",
            srv.name
        );

        // Replaced by another version of the same size: only the ETag tells them apart.
        let same_size = data(3 * MIB, 2);
        put(&b, &key, &same_size, MIB).await;
        let Err(err) = at(MIB).await else {
            panic!("[{}] bytes of another version of the same size", srv.name)
        };
        assert_eq!(err.kind(), ErrorKind::Conflict, "[{}] {err}", srv.name);
        assert!(
            err.to_string().contains("changed since it was opened"),
            "{err}"
        );

        // A FileReader opened before a replacement by a bigger file: old bytes or an error at
        // every offset (also past the read-ahead, where a new request starts), never new ones.
        let fs = user_fs(&b, &srv);
        let mut r = fs.open_read(&vp("/v.bin")).await.unwrap();
        assert_eq!(
            r.read_at(0, 64 * 1024).await.unwrap(),
            same_size[..64 * 1024]
        );
        let bigger = data(4 * MIB, 3);
        put(&b, &key, &bigger, MIB).await;
        for off in [64 * 1024, 2 * MIB + 5, 100, 3 * MIB - 10] {
            match r.read_at(off as u64, 64 * 1024).await {
                Ok(got) => {
                    let end = (off + got.len()).min(same_size.len());
                    assert!(
                        got == same_size[off..end],
                        "[{}] bytes at {off} of another version",
                        srv.name
                    )
                }
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Conflict, "[{}] {e}", srv.name);
                    // The user's path, not the bucket's key.
                    assert!(e.to_string().starts_with("read /v.bin:"), "{e}");
                }
            }
        }
        drop(r);
        // Opened again, the handle reads the new version.
        let mut r = fs.open_read(&vp("/v.bin")).await.unwrap();
        assert_eq!(
            r.read_at(3 * MIB as u64, MIB).await.unwrap(),
            bigger[3 * MIB..]
        );
    }
}

async fn read_all_at(
    b: &S3Backend,
    key: &str,
    offset: usize,
    size: u64,
    etag: String,
) -> bucketgate_storage::Result<Vec<u8>> {
    let s = b
        .read_version(key, offset as u64, Some(size), Some(&etag))
        .await?;
    read_all(s).await
}

#[tokio::test]
async fn read_ahead_counts_in_the_memory_budget_and_shrinks_when_short() {
    let srv = s3s_server(None).await;
    let budget = MemoryBudget::shared(8 * MIB as u64);
    let b = S3Backend::new(srv.options(), budget.clone()).unwrap();
    let files: Vec<Vec<u8>> = (0..12).map(|i| data(2 * MIB + i * 777, i as u64)).collect();
    for (i, f) in files.iter().enumerate() {
        put(&b, &srv.key(&format!("f{i}")), f, MIB).await;
    }
    let fs = user_fs(&b, &srv);

    // An open file's read-ahead is held in the budget while the client is idle.
    let mut r = fs.open_read(&vp("/f0")).await.unwrap();
    assert_eq!(r.read_at(0, 1).await.unwrap(), files[0][..1]);
    let mut waited = 0;
    while budget.in_use() < 512 * 1024 {
        assert!(
            waited < 2000,
            "the read-ahead is not counted: {} B in use",
            budget.in_use()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        waited += 1;
    }
    assert!(
        budget.in_use() <= 1024 * 1024 + 256 * 1024,
        "{} B",
        budget.in_use()
    );
    drop(r);
    let mut waited = 0;
    while budget.in_use() > 0 {
        assert!(
            waited < 2000,
            "the read-ahead kept {} B after close",
            budget.in_use()
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        waited += 1;
    }

    // Nothing left in the budget (uploads hold all of it): the read-ahead shrinks to one chunk
    // per reader, and every reader still completes with the right bytes.
    let hog = budget.acquire(budget.total()).await.unwrap();
    let reads = files.iter().enumerate().map(|(i, f)| {
        let fs = fs.clone();
        async move {
            let mut r = fs.open_read(&vp(&format!("/f{i}"))).await.unwrap();
            let mut out = Vec::new();
            loop {
                let n = 10_000 + i * 3001;
                let got = r.read_at(out.len() as u64, n).await.unwrap();
                if got.is_empty() {
                    break;
                }
                out.extend_from_slice(&got);
            }
            assert!(out == *f, "file {i} differs");
        }
    });
    futures::future::join_all(reads).await;
    drop(hog);
    assert_eq!(budget.in_use(), 0);

    // A tiny budget shared by many readers at once: all complete, byte-exact.
    let tiny = MemoryBudget::shared(64 * 1024);
    let b = S3Backend::new(srv.options(), tiny.clone()).unwrap();
    let fs = user_fs(&b, &srv);
    let reads = files.iter().enumerate().map(|(i, f)| {
        let fs = fs.clone();
        async move {
            let mut r = fs.open_read(&vp(&format!("/f{i}"))).await.unwrap();
            let mut out = Vec::new();
            loop {
                let got = r.read_at(out.len() as u64, 32 * 1024).await.unwrap();
                if got.is_empty() {
                    break;
                }
                out.extend_from_slice(&got);
            }
            assert!(out == *f, "file {i} differs");
        }
    });
    futures::future::join_all(reads).await;
    assert_eq!(tiny.in_use(), 0);
}
