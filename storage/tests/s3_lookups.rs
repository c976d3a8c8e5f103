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

/// Two users' sessions (alice, then bob) on one tree over `b` at `prefix`.
fn two_sessions(b: &bucketgate_storage::s3::S3Backend, prefix: &str) -> (UserFs, UserFs) {
    let area = Area {
        backend: Arc::new(b.clone()),
        prefix: prefix.to_string(),
    };
    let tree = Arc::new(Tree::new(area, Vec::new()));
    let session = |user| UserFs::new(tree.clone(), user, VPath::root(), Permissions::all());
    (session("alice"), session("bob"))
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
        let (fs, other) = two_sessions(&b, &srv.prefix);
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

/// The LIST requests among `seen`.
fn lists(seen: &[bucketgate_testkit::http_proxy::Seen]) -> usize {
    seen.iter()
        .filter(|s| s.method == "GET" && s.target.contains("list-type=2"))
        .count()
}

/// The names of a listing of `path`, in order.
async fn names(fs: &UserFs, path: &str) -> Vec<String> {
    use futures::StreamExt;
    let mut out = Vec::new();
    let mut pages = fs.list(&p(path)).await.unwrap();
    while let Some(page) = pages.next().await {
        out.extend(page.unwrap().into_iter().map(|e| e.name));
    }
    out
}

/// `ls -l dir` and `cd dir` + `ls` STAT the folder, then list it: the STAT's listing request
/// brings the first page, and the listing that follows within a second, while nothing changed
/// the folder, starts from it. Every change through the gateway, and the second's end, give
/// a listing of its own; the memory held for the page goes back when it is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_stat_brings_the_first_page_of_the_listing_that_follows() {
    for srv in servers().await {
        let name = srv.name;
        let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
        let budget = bucketgate_storage::budget::MemoryBudget::shared(64 << 20);
        let mut o = srv.options();
        o.endpoint = format!("http://{}", proxy.addr);
        // Pages of 2 for 3 files: the listing takes two pages.
        o.list_page_size = 2;
        let b = bucketgate_storage::s3::S3Backend::new(o, budget.clone()).unwrap();
        if let Some(c) = &srv.probed {
            b.assume_capabilities(c.clone());
        }
        let (fs, other) = two_sessions(&b, &srv.prefix);
        for f in ["a", "b", "c"] {
            put(&b, &srv.key(&format!("d/{f}")), b"x", 1).await;
        }
        let all = |extra: &[&str]| {
            let mut v: Vec<String> = ["a", "b", "c"]
                .iter()
                .chain(extra)
                .map(|s| s.to_string())
                .collect();
            v.sort();
            v
        };

        // The STAT, then the listing: one listing request for the first page (the STAT's),
        // one for the second.
        let n0 = proxy.seen().len();
        assert!(fs.stat(&p("/d")).await.unwrap().is_dir(), "[{name}]");
        assert_eq!(names(&fs, "/d").await, all(&[]), "[{name}]");
        assert_eq!(
            lists(&proxy.seen()[n0..]),
            2,
            "[{name}] one page from the stat"
        );
        // Used once: the next listing asks for both pages.
        let n1 = proxy.seen().len();
        assert_eq!(names(&fs, "/d").await, all(&[]), "[{name}]");
        assert_eq!(
            lists(&proxy.seen()[n1..]),
            2,
            "[{name}] a listing of its own"
        );

        // Another session's upload between the STAT and the listing is listed (names that
        // sort first: in the first page).
        fs.stat(&p("/d")).await.unwrap();
        upload(&other, "/d/0new", b"new").await;
        assert_eq!(names(&fs, "/d").await, all(&["0new"]), "[{name}]");
        // And so is this session's own.
        fs.stat(&p("/d")).await.unwrap();
        upload(&fs, "/d/0mine", b"mine").await;
        assert_eq!(names(&fs, "/d").await, all(&["0mine", "0new"]), "[{name}]");
        // And a rename anywhere in the gateway.
        fs.stat(&p("/d")).await.unwrap();
        other
            .rename(&p("/d/0new"), &p("/d/0new2"), false)
            .await
            .unwrap();
        assert_eq!(names(&fs, "/d").await, all(&["0mine", "0new2"]), "[{name}]");
        // A file put straight into the bucket is listed once the second has passed.
        fs.stat(&p("/d")).await.unwrap();
        put(&b, &srv.key("d/00out"), b"outside", 1).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(
            names(&fs, "/d").await,
            all(&["00out", "0mine", "0new2"]),
            "[{name}]"
        );

        // A STAT with no listing after it: the page's share of the budget goes back within
        // the second.
        fs.stat(&p("/d")).await.unwrap();
        assert!(budget.in_use() > 0, "[{name}] the page is held");
        tokio::time::sleep(Duration::from_millis(1300)).await;
        assert_eq!(budget.in_use(), 0, "[{name}] given back");
        // A listing of another folder leaves nothing held either.
        fs.stat(&p("/d")).await.unwrap();
        let _ = names(&fs, "/").await;
        assert_eq!(budget.in_use(), 0, "[{name}] let go");

        // With the budget more than half used, the STAT asks for one key, as before.
        let _busy = budget.try_acquire(40 << 20).unwrap();
        let n2 = proxy.seen().len();
        fs.stat(&p("/d")).await.unwrap();
        assert!(
            proxy.seen()[n2..]
                .iter()
                .any(|s| s.target.contains("max-keys=1&") || s.target.ends_with("max-keys=1")),
            "[{name}] {:?}",
            &proxy.seen()[n2..]
        );
        assert_eq!(names(&fs, "/d").await.len(), 6, "[{name}]");
    }
}
