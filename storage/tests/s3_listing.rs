//! Folders over keys: pagination, markers, implied folders, file/folder conflicts, unservable
//! keys, walks, stat and rmdir.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, EntryKind};
use bucketgate_storage::ErrorKind;
use futures::StreamExt;
use s3_support::*;

/// A listing asks for its next page only when the caller wants more: the proxy in front of
/// the server has seen one ListObjectsV2 when the first page is handed over. (Counted rather
/// than shown by a key written mid-listing: some servers answer continuations from a snapshot
/// taken at the first page, an older MinIO among them.)
#[tokio::test]
async fn pages_are_streamed_one_at_a_time() {
    use bucketgate_testkit::http_proxy::{forward_all, HttpProxy};
    for srv in servers().await {
        let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
        let b = srv.backend_with(|o| {
            o.list_page_size = 3;
            o.endpoint = format!("http://{}", proxy.addr);
        });
        for i in 0..10 {
            put(&b, &srv.key(&format!("p/f{i:02}")), b"x", 1).await;
        }
        put(&b, &srv.key("p/sub/deep"), b"y", 1).await;
        let lists = || {
            proxy
                .seen()
                .iter()
                .filter(|s| s.method == "GET" && s.has_query("list-type"))
                .count()
        };
        let before = lists();
        let mut s = b.list(&srv.key("p"));
        let first = s.next().await.unwrap().unwrap();
        assert!(
            !first.is_empty() && first.len() <= 3,
            "[{}] {first:?}",
            srv.name
        );
        assert_eq!(lists() - before, 1, "[{}] pages asked for ahead", srv.name);
        let mut all = first;
        let mut pages = 1;
        while let Some(p) = s.next().await {
            let p = p.unwrap();
            assert!(p.len() <= 4, "[{}] a page holds about one answer", srv.name);
            all.extend(p);
            pages += 1;
        }
        assert!(pages >= 4, "[{}] {pages} pages", srv.name);
        assert!(lists() - before >= 4, "[{}]", srv.name);
        all.sort_by(|a, b| a.name.cmp(&b.name));
        let mut want: Vec<String> = (0..10).map(|i| format!("f{i:02}")).collect();
        want.push("sub/".into());
        assert_eq!(names(&all), want, "[{}]", srv.name);
        assert!(all
            .iter()
            .all(|e| e.is_dir() || (e.size == 1 && e.mtime.is_some())));
    }
}

#[tokio::test]
async fn markers_are_folders_never_files() {
    for srv in servers().await {
        let b = srv.backend_with(|o| o.list_page_size = 2);
        b.mkdir(&srv.key("d/empty")).await.unwrap();
        put(&b, &srv.key("d/implied/f"), b"1", 1).await;
        b.mkdir(&srv.key("d/marked")).await.unwrap();
        put(&b, &srv.key("d/marked/g"), b"22", 1).await;
        put(&b, &srv.key("d/top"), b"333", 1).await;

        let listed = list_all(&b, &srv.key("d")).await;
        // An empty folder shows where the server keeps its marker visible in some way: listed
        // under its own prefix, or answering HEAD (an older MinIO, which lists the folder in
        // its parent too); s3s-fs does neither.
        let probed = srv.probed.as_ref().expect("probed");
        let visible = probed.markers_listed || probed.markers_head;
        if !srv.skip(!visible, "empty folders (markers)") {
            assert_eq!(
                names(&listed),
                vec!["empty/", "implied/", "marked/", "top"],
                "[{}]",
                srv.name
            );
            let st = b.stat(&srv.key("d/empty")).await.unwrap();
            assert_eq!(st.kind, EntryKind::Dir);
            assert!(st.mtime.is_none(), "folders have no time by default");
            assert!(listed.iter().all(|e| !e.is_dir() || e.mtime.is_none()));
            // With `folder_marker_times` a marker gives the folder a time, the same in a
            // listing (a HEAD of the marker) as in a stat (the listing of its prefix).
            let m = srv.backend_with(|o| {
                o.list_page_size = 2;
                o.folder_marker_times = true;
            });
            let st = m.stat(&srv.key("d/empty")).await.unwrap();
            assert!(st.mtime.is_some(), "a marker gives the folder a time");
            let with_times = list_all(&m, &srv.key("d")).await;
            let empty = with_times.iter().find(|e| e.name == "empty").unwrap();
            assert_eq!(empty.mtime, st.mtime, "[{}]", srv.name);
            let implied = with_times.iter().find(|e| e.name == "implied").unwrap();
            assert_eq!(implied.mtime, None, "[{}] no marker, no time", srv.name);
            assert!(list_all(&b, &srv.key("d/empty")).await.is_empty());
            // mkdir of an existing folder is fine.
            b.mkdir(&srv.key("d/empty")).await.unwrap();
        } else {
            assert_eq!(names(&listed), vec!["implied/", "marked/", "top"]);
        }
        let st = b.stat(&srv.key("d/implied")).await.unwrap();
        assert_eq!(
            (st.kind, st.mtime),
            (EntryKind::Dir, None),
            "[{}]",
            srv.name
        );
        assert_eq!(
            names(&list_all(&b, &srv.key("d/marked")).await),
            vec!["g"],
            "[{}] the marker itself is not a file",
            srv.name
        );
        let top = b.stat(&srv.key("d/top")).await.unwrap();
        assert_eq!((top.kind, top.size), (EntryKind::File, 3));
        assert_eq!(
            b.stat(&srv.key("d/nothing")).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(b.stat("").await.unwrap().kind, EntryKind::Dir);

        let walked = walk_all(&b, &srv.key("d")).await;
        let mut want = vec![
            "empty/",
            "implied/",
            "implied/f",
            "marked/",
            "marked/g",
            "top",
        ];
        if srv.skip(!visible, "walk shows empty folders") {
            want.retain(|n| *n != "empty/");
        }
        assert_eq!(names(&walked), want, "[{}]", srv.name);

        // rmdir: refused while something is inside, fine once only the marker is left.
        assert_eq!(
            b.remove_dir(&srv.key("d/marked")).await.unwrap_err().kind(),
            ErrorKind::DirectoryNotEmpty
        );
        b.remove_file(&srv.key("d/marked/g")).await.unwrap();
        if !srv.skip(!srv.caps.markers, "rmdir of a marked folder") {
            assert_eq!(
                b.stat(&srv.key("d/marked")).await.unwrap().kind,
                EntryKind::Dir,
                "a marked folder outlives its last file"
            );
            b.remove_dir(&srv.key("d/marked")).await.unwrap();
            assert_eq!(
                b.stat(&srv.key("d/marked")).await.unwrap_err().kind(),
                ErrorKind::NotFound
            );
        }
        assert_eq!(
            b.remove_file(&srv.key("d/top-missing"))
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
    }
}

#[tokio::test]
async fn a_folder_hides_a_file_of_the_same_name() {
    for srv in servers().await {
        if srv.skip(!srv.caps.raw_keys, "file and folder of one name") {
            continue;
        }
        // Page size 1: the file `c` and the prefix `c/` arrive pages apart, with `c-1` and
        // `c.txt` (which sort between them) in the middle.
        let b = srv.backend_with(|o| o.list_page_size = 1);
        for k in ["c", "c-1", "c.txt", "c/inner", "c0", "b", "b/x"] {
            put(&b, &srv.key(&format!("x/{k}")), b"data", 4).await;
        }
        assert_eq!(
            names(&list_all(&b, &srv.key("x")).await),
            vec!["b/", "c/", "c-1", "c.txt", "c0"],
            "[{}]",
            srv.name
        );
        assert_eq!(b.stat(&srv.key("x/c")).await.unwrap().kind, EntryKind::Dir);
        assert_eq!(
            names(&walk_all(&b, &srv.key("x")).await),
            vec!["b/", "b/x", "c/", "c-1", "c.txt", "c/inner", "c0"],
            "[{}]",
            srv.name
        );
    }
}

#[tokio::test]
async fn unservable_keys_are_skipped() {
    for srv in servers().await {
        if srv.skip(!srv.caps.raw_keys, "keys with empty segments") {
            continue;
        }
        let b = srv.backend();
        put(&b, &srv.key("u/ok"), b"1", 1).await;
        put(&b, &srv.key("u/bad//x"), b"1", 1).await;
        put(&b, &srv.key("u//y"), b"1", 1).await;
        put(&b, &srv.key("u/ctl\u{1}name"), b"1", 1).await;
        let listed = list_all(&b, &srv.key("u")).await;
        assert_eq!(names(&listed), vec!["bad/", "ok"], "[{}]", srv.name);
        assert!(list_all(&b, &srv.key("u/bad")).await.is_empty());
        // The walk sees only keys, and `bad/` is implied by an unservable one alone.
        assert_eq!(
            names(&walk_all(&b, &srv.key("u")).await),
            vec!["ok"],
            "[{}]",
            srv.name
        );
    }
}

/// A folder marker with a body (another program wrote `folder/` with data in it): the gateway
/// shows the folder and not those bytes, so rmdir of the folder would destroy data that no
/// user of the gateway can see. It is refused, and the marker stays; a marker without a body
/// goes with its folder as before.
#[tokio::test]
async fn a_marker_holding_data_is_not_removed_with_its_folder() {
    for srv in servers().await {
        if srv.skip(
            !srv.caps.raw_keys || !srv.caps.markers,
            "marker objects with a body",
        ) {
            continue;
        }
        let b = srv.backend();
        put(&b, &srv.key("w/kept/"), b"bytes of another program", 1).await;
        b.mkdir(&srv.key("w/plain")).await.unwrap();
        assert_eq!(
            names(&list_all(&b, &srv.key("w")).await),
            vec!["kept/", "plain/"],
            "[{}]",
            srv.name
        );
        let e = b.remove_dir(&srv.key("w/kept")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DirectoryNotEmpty, "[{}] {e}", srv.name);
        assert!(e.to_string().contains("nothing was removed"), "{e}");
        assert_eq!(
            get(&b, &srv.key("w/kept/")).await,
            b"bytes of another program",
            "[{}]",
            srv.name
        );
        b.remove_dir(&srv.key("w/plain")).await.unwrap();
        assert_eq!(
            names(&list_all(&b, &srv.key("w")).await),
            vec!["kept/"],
            "[{}]",
            srv.name
        );
    }
}
