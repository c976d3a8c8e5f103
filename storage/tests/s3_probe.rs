//! The capability probe on real servers: what it finds on each, that it leaves nothing behind,
//! and that the backend then relies on the server where the server enforces a condition (the
//! HEAD before a commit is dropped) and keeps checking where it does not.
//!
//! The env endpoint is named by `BUCKETGATE_TEST_S3_SERVER` (`garage`, `rgw`; scripts/garage.sh
//! and scripts/rgw.sh print it): its answers are then held to what that server is known to do.
//! An env endpoint of another kind has its answers printed, and says that they were not
//! compared.

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions};
use bucketgate_storage::s3::{Capabilities, CopyCondition, EtagForm};
use bucketgate_storage::ErrorKind;
use http_proxy::{forward_all, HttpProxy};
use s3_support::*;

/// What each server this suite runs on is known to do (its source or its documentation).
fn expected(srv: &Server) -> Option<Capabilities> {
    let all = Capabilities {
        probed: true,
        put_if_none_match: true,
        put_if_match: true,
        etag_form: EtagForm::Bare,
        complete_if_none_match: true,
        complete_if_match: true,
        complete_names_etag: true,
        copy_if_match: CopyCondition::Standard,
        delete_if_match: true,
        markers_listed: true,
        markers_head: true,
        markers_survive: true,
        uploads_by_prefix: true,
        file_and_folder: true,
        put_content_md5: true,
        put_crc32c: true,
        list_url_encoding: true,
    };
    let server = match srv.name {
        "env" => std::env::var("BUCKETGATE_TEST_S3_SERVER").ok()?,
        n => n.to_string(),
    };
    Some(match server.as_str() {
        // s3s-fs maps keys to files: a marker becomes a folder (not listed under its own
        // prefix, not answering HEAD, not shown once its folder is empty), a file and a folder cannot share a name,
        // and ListMultipartUploads is not implemented. It ignores If-Match on DELETE. It
        // compares a PutObject's Content-MD5 and CRC32C only after the new body has replaced
        // the object, and an UploadPart's CRC32C not at all.
        "s3s-fs" => Capabilities {
            delete_if_match: false,
            markers_listed: false,
            markers_head: false,
            markers_survive: false,
            uploads_by_prefix: false,
            file_and_folder: false,
            put_content_md5: false,
            put_crc32c: false,
            list_url_encoding: false,
            ..all
        },
        // moto 5 honours If-None-Match on CompleteMultipartUpload but not If-Match, and of the
        // copy conditions only x-amz-copy-source-if-none-match. It ignores Content-MD5 and
        // CRC32C.
        "moto" => Capabilities {
            complete_if_match: false,
            copy_if_match: CopyCondition::Ignored,
            put_content_md5: false,
            put_crc32c: false,
            ..all
        },
        // Garage 2.5: no condition on any write; the copy condition is honoured; a body that
        // does not match its Content-MD5 or its CRC32C is refused before its version is
        // committed.
        "garage" => Capabilities {
            put_if_none_match: false,
            put_if_match: false,
            complete_if_none_match: false,
            complete_if_match: false,
            delete_if_match: false,
            ..all
        },
        // Ceph RGW 16.2: If-None-Match and (unquoted) If-Match on PutObject; nothing on
        // CompleteMultipartUpload (whose answer has an empty ETag) nor DELETE; the copy
        // condition only as x-amz-copy-if-match. Content-MD5 is checked before storing; CRC32C
        // is not (no flexible checksums before Squid).
        "rgw" => Capabilities {
            complete_if_none_match: false,
            complete_if_match: false,
            complete_names_etag: false,
            copy_if_match: CopyCondition::Legacy,
            delete_if_match: false,
            put_crc32c: false,
            ..all
        },
        // MinIO RELEASE.2019-03-27 in single-folder (FS) mode, run by hand (docs/providers.md):
        // no condition on any write but the copy's; markers are not listed under their own
        // prefix (HEAD finds an empty one) and go with the folder's last file; uploads are
        // listed by exact key only; a file and a folder of one name are refused.
        "minio2019" => Capabilities {
            put_if_none_match: false,
            put_if_match: false,
            complete_if_none_match: false,
            complete_if_match: false,
            delete_if_match: false,
            markers_listed: false,
            markers_survive: false,
            uploads_by_prefix: false,
            file_and_folder: false,
            put_crc32c: false,
            ..all
        },
        _ => return None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probe_finds_what_each_server_enforces_and_leaves_nothing() {
    for srv in servers().await {
        let b = srv.backend_unprobed();
        assert!(!b.capabilities().probed);
        let caps = b
            .probe_capabilities(&srv.prefix)
            .await
            .unwrap_or_else(|e| panic!("[{}] probe: {e:?}", srv.name));
        println!("[{}] {caps:?}", srv.name);
        for w in caps.weaker_guarantees() {
            println!("[{}] weaker here: {w}", srv.name);
        }
        assert_eq!(b.capabilities(), caps, "[{}] kept", srv.name);
        match expected(&srv) {
            Some(want) => assert_eq!(caps, want, "[{}] capabilities", srv.name),
            None => println!(
                "NOT COMPARED [{}] BUCKETGATE_TEST_S3_SERVER names no known server: answers printed only",
                srv.name
            ),
        }
        // Nothing left behind: no object, no marker, no pending upload under the prefix
        // (listed raw: the tree's listings hide the probe's folder).
        let left = b.raw_keys(&srv.prefix).await.unwrap();
        assert!(left.is_empty(), "[{}] left: {left:?}", srv.name);
        if caps.uploads_by_prefix {
            let ups = b.list_multipart_uploads(&srv.prefix).await.unwrap();
            assert!(ups.is_empty(), "[{}] uploads left: {ups:?}", srv.name);
        } else {
            println!(
                "NOT CHECKED [{}] pending uploads: the server does not list uploads by prefix",
                srv.name
            );
        }
    }
}

/// The probe runs in the background at start and on reload, under each mount's prefix: a user
/// listing the folder meanwhile must not see its scratch folder (it did, as
/// `.bucketgate-probe-<id>/`), and a sync must not copy it. Names that only look alike stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_probe_in_progress_is_never_listed() {
    for srv in servers().await {
        let b = srv.backend();
        let scratch = ".bucketgate-probe-00c0ffee00c0ffee";
        for rel in [
            format!("{scratch}/c"),
            format!("sub/{scratch}/d/f"),
            "keep.txt".to_string(),
            ".bucketgate-probe-x/kept".to_string(),
        ] {
            put(&b, &srv.key(&rel), b"x", 1).await;
        }
        let top = names(&list_all(&b, &srv.dir()).await);
        assert_eq!(
            top,
            [".bucketgate-probe-x/", "keep.txt", "sub/"],
            "[{}] listing",
            srv.name
        );
        let sub = names(&list_all(&b, &srv.key("sub")).await);
        assert!(sub.is_empty(), "[{}] sub: {sub:?}", srv.name);
        let all = names(&walk_all(&b, &srv.dir()).await);
        assert!(
            all.iter().all(|n| !n.contains("00c0ffee")),
            "[{}] walk: {all:?}",
            srv.name
        );
        assert!(
            all.contains(&".bucketgate-probe-x/kept".to_string()),
            "[{}] walk: {all:?}",
            srv.name
        );
        // They are still there, seen raw.
        let raw = b.raw_keys(&srv.prefix).await.unwrap();
        assert_eq!(raw.len(), 4, "[{}] raw: {raw:?}", srv.name);
    }
}

/// Once the probe found that the server enforces the conditions of PutObject, a client's
/// upload commits with the PutObject alone (no HEAD first), and the server's refusal is what
/// keeps an existing file and a changed file intact. Where it does not enforce them, the HEAD
/// stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_commits_rely_on_the_server_where_it_enforces() {
    for srv in servers().await {
        let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
        let endpoint = format!("http://{}", proxy.addr);
        let b = srv.backend_unprobed_with(|o| o.endpoint = endpoint);
        let key = srv.key("f");
        let first = put(&b, &key, b"first", 64).await;

        // Before the probe: a create-only upload asks with a HEAD before its PUT.
        let before = proxy.seen().len();
        let r = put_with(&b, &srv.key("g"), b"g", 64, if_absent()).await;
        r.unwrap_or_else(|e| panic!("[{}] {e}", srv.name));
        let heads_unprobed = heads(&proxy, before);

        let caps = b.probe_capabilities(&srv.prefix).await.unwrap();
        let before = proxy.seen().len();
        let r = put_with(&b, &srv.key("h"), b"h", 64, if_absent()).await;
        r.unwrap_or_else(|e| panic!("[{}] {e}", srv.name));
        let heads_probed = heads(&proxy, before);
        println!(
            "[{}] HEADs of a create-only small upload: {heads_unprobed} before the probe, \
             {heads_probed} after (PUT If-None-Match enforced: {})",
            srv.name, caps.put_if_none_match
        );
        // The PUT's answer describes the new file (no HEAD after it); the check before the
        // PUT goes only where the server enforces the condition.
        assert_eq!(heads_unprobed, 1, "[{}]", srv.name);
        let want = if caps.put_if_none_match { 0 } else { 1 };
        assert_eq!(heads_probed, want, "[{}]", srv.name);

        // The refusal now comes from the server (or the HEAD where it does not enforce).
        let e = put_with(&b, &key, b"second", 64, if_absent())
            .await
            .expect_err("the name is taken");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists, "[{}] {e}", srv.name);
        assert_eq!(get(&b, &key).await, b"first", "[{}]", srv.name);

        // A replacement conditional on a version that is no longer there.
        let second = put(&b, &key, b"second", 64).await;
        assert_ne!(first.etag, second.etag);
        let before = proxy.seen().len();
        let e = put_with(
            &b,
            &key,
            b"third",
            64,
            CreateOptions {
                if_match: first.etag.clone(),
                ..Default::default()
            },
        )
        .await
        .expect_err("the file changed");
        assert_eq!(e.kind(), ErrorKind::Conflict, "[{}] {e}", srv.name);
        assert_eq!(get(&b, &key).await, b"second", "[{}]", srv.name);
        let puts = proxy.seen()[before..]
            .iter()
            .filter(|s| s.method == "PUT")
            .count();
        // Where the server enforces If-Match the PUT went out and was refused; elsewhere the
        // HEAD refused it before anything was sent.
        assert_eq!(puts, usize::from(caps.put_if_match), "[{}]", srv.name);

        // And a replacement conditional on the current version goes through (the ETag form
        // the server matches).
        let r = put_with(
            &b,
            &key,
            b"third",
            64,
            CreateOptions {
                if_match: second.etag.clone(),
                ..Default::default()
            },
        )
        .await;
        r.unwrap_or_else(|e| panic!("[{}] {e}", srv.name));
        assert_eq!(get(&b, &key).await, b"third", "[{}]", srv.name);
    }
}

fn if_absent() -> CreateOptions {
    CreateOptions {
        if_absent: true,
        ..Default::default()
    }
}

fn heads(proxy: &HttpProxy, from: usize) -> usize {
    proxy.seen()[from..]
        .iter()
        .filter(|s| s.method == "HEAD")
        .count()
}

/// An empty folder is found where the server does not list its marker under its own prefix,
/// and a folder made with mkdir outlives its last file where the server drops the marker with
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_folders_last_on_every_server() {
    for srv in servers().await {
        let b = srv.backend();
        let caps = b.probe_capabilities(&srv.prefix).await.unwrap();
        if !caps.markers_listed && !caps.markers_head {
            println!(
                "NOT CHECKED [{}] empty folders: the server shows a marker neither in a listing \
                 nor to HEAD",
                srv.name
            );
            continue;
        }
        let d = srv.key("d");
        b.mkdir(&d).await.unwrap();
        let st = b
            .stat(&d)
            .await
            .unwrap_or_else(|e| panic!("[{}] {e}", srv.name));
        assert!(
            st.is_dir(),
            "[{}] (markers listed: {})",
            srv.name,
            caps.markers_listed
        );
        put(&b, &format!("{d}/f"), b"x", 64).await;
        b.remove_file(&format!("{d}/f")).await.unwrap();
        let st = b.stat(&d).await.unwrap_or_else(|e| {
            panic!(
                "[{}] the folder went with its last file (markers survive: {}): {e}",
                srv.name, caps.markers_survive
            )
        });
        assert!(st.is_dir(), "[{}]", srv.name);
        b.remove_dir(&d)
            .await
            .unwrap_or_else(|e| panic!("[{}] rmdir: {e}", srv.name));
        let e = b.stat(&d).await.expect_err("removed");
        assert_eq!(e.kind(), ErrorKind::NotFound, "[{}]", srv.name);
    }
}
