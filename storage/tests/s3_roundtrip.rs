//! Bytes in, the same bytes out: single PUTs, multipart edges, a large stream, ranged reads and
//! short bodies, against every test server.

mod s3_support;

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
