//! A session's lookups of names that do not exist, answered from a listing of their folder made
//! a moment before (an upload client STATs every new file before it opens it), across a WAN
//! (a latency proxy in front of the server): no request for them while nothing changed the
//! folder, and every change that could have given the name a
//! file or a folder seen at once (changes through the gateway) or within a second (changes made
//! straight in the bucket).

use bucketgate_testkit::http_proxy::{forward_all, HttpProxy};
use bucketgate_testkit::latency::LatencyProxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::{Area, ErrorKind, OpenMode, Permissions, Tree, UserFs, VPath};
use s3_support::*;
use std::sync::Arc;
use std::time::Duration;

fn p(s: &str) -> VPath {
    VPath::parse(s).unwrap()
}

async fn upload(fs: &UserFs, path: &str, bytes: &'static [u8]) {
    let mode = OpenMode {
        create: true,
        truncate: true,
        ..Default::default()
    };
    let mut w = fs.open_write(&p(path), mode).await.unwrap();
    w.write_at(0, bytes::Bytes::from_static(bytes))
        .await
        .unwrap();
    w.close().await.unwrap();
}

/// Asserts that `path` does not exist for `fs`, and returns how many requests telling it took.
async fn missing(fs: &UserFs, proxy: &HttpProxy, path: &str) -> usize {
    let before = proxy.seen().len();
    let e = fs.stat(&p(path)).await.expect_err(path);
    assert_eq!(e.kind(), ErrorKind::NotFound, "{path}: {e}");
    proxy.seen().len() - before
}

/// Asserts that `path` is a file of `size` bytes for `fs`.
async fn found(fs: &UserFs, path: &str, size: u64) {
    let e = fs
        .stat(&p(path))
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert!(!e.is_dir() && e.size == size, "{path}: {e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_answers_lookups_of_missing_names_until_the_folder_changes() {
    for srv in servers().await {
        let name = srv.name;
        // 20 ms to the server and back: lookups that slow are worth a listing (on loopback
        // they are not, and none is made).
        let wan = LatencyProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            srv.addr(),
            Duration::from_millis(10),
        )
        .await
        .unwrap();
        let proxy = HttpProxy::start(wan.addr, forward_all()).await;
        let b = srv.backend_with(|o| o.endpoint = format!("http://{}", proxy.addr));
        let area = Area {
            backend: Arc::new(b.clone()),
            prefix: srv.prefix.clone(),
        };
        let tree = Arc::new(Tree::new(area, Vec::new()));
        let fs = UserFs::new(tree.clone(), "alice", VPath::root(), Permissions::all());
        let other = UserFs::new(tree.clone(), "bob", VPath::root(), Permissions::all());
        put(&b, &srv.key("in/old.txt"), b"old", 1).await;

        // The first lookups ask the server; the third, after two misses, asks it too and
        // lists the folder beside it.
        for n in ["a1", "a2", "a3"] {
            assert!(
                missing(&fs, &proxy, &format!("/in/{n}")).await > 0,
                "[{name}]"
            );
        }
        // (The listing may end a moment after the lookup it was made beside.)
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Another missing name in that folder: no request.
        assert_eq!(missing(&fs, &proxy, "/in/b.txt").await, 0, "[{name}]");
        // A name the listing holds is looked up as always.
        found(&fs, "/in/old.txt", 3).await;

        // The session's own upload: its name is there, and the listing still answers for
        // the others.
        upload(&fs, "/in/mine.txt", b"mine").await;
        found(&fs, "/in/mine.txt", 4).await;
        assert_eq!(missing(&fs, &proxy, "/in/c.txt").await, 0, "[{name}]");

        // Another session's upload into the folder is seen at once.
        upload(&other, "/in/theirs.txt", b"theirs").await;
        found(&fs, "/in/theirs.txt", 6).await;
        // That lookup listed the folder again, and the new listing answers...
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(missing(&fs, &proxy, "/in/d").await, 0, "[{name}]");
        // ...until another session renames, removes or makes something, anywhere.
        other
            .rename(&p("/in/theirs.txt"), &p("/in/d"), false)
            .await
            .unwrap();
        found(&fs, "/in/d", 6).await;
        // A file put straight into the bucket is seen once a listing's second has passed.
        put(&b, &srv.key("in/outside.txt"), b"outside", 1).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        found(&fs, "/in/outside.txt", 7).await;

        // A folder larger than one listing page: a listing tells about the names its page
        // spans, and a lookup beyond it lists the folder from its name on.
        let small_pages = srv.backend_with(|o| {
            o.endpoint = format!("http://{}", proxy.addr);
            o.list_page_size = 3;
        });
        for i in 0..4 {
            put(&b, &srv.key(&format!("big/f{i}")), b"x", 1).await;
        }
        let area = Area {
            backend: Arc::new(small_pages),
            prefix: srv.prefix.clone(),
        };
        let tree = Arc::new(Tree::new(area, Vec::new()));
        let fs = UserFs::new(tree, "alice", VPath::root(), Permissions::all());
        missing(&fs, &proxy, "/big/x").await;
        missing(&fs, &proxy, "/big/x2").await;
        // Listed from the start: f0, f1, f2 and the hint that more follows.
        missing(&fs, &proxy, "/big/y").await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(missing(&fs, &proxy, "/big/f0a").await, 0, "[{name}]");
        // Beyond that page: asked, and listed from there.
        assert!(missing(&fs, &proxy, "/big/g").await > 0, "[{name}]");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(missing(&fs, &proxy, "/big/h").await, 0, "[{name}]");
        assert!(
            missing(&fs, &proxy, "/big/f3a").await > 0,
            "[{name}] before the range"
        );
        found(&fs, "/big/f3", 1).await;
    }
}
