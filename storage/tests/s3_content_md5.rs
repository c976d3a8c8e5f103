//! Large sync copies with the default `checksum: auto` (issue 14's 10 × 100 MiB regression,
//! issue 17 item 2): where the server refuses a PutObject whose body does not match its
//! `x-amz-checksum-crc32c` and keeps the old object (the probe's `put_crc32c`: Garage yes), a
//! copy whose source was hashed first is ONE streamed PutObject carrying that CRC32C; else
//! where it does so for `Content-MD5` (`put_content_md5`: Ceph RGW yes), one carrying that MD5;
//! elsewhere (s3s-fs, which compares only after replacing the object, and moto, which does not
//! compare) a multipart upload whose parts each carry their own. An HTTP proxy in front of each server counts the requests (which
//! path ran), changes one byte of a body on its way, or rewrites the source file at the moment
//! its upload starts.

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use base64::Engine as _;
use bucketgate_storage::backend::Backend;
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::s3::{Checksum, S3Backend};
use bucketgate_storage::sync::{run_job, ConflictPolicy, Direction, RunOptions, SyncJob};
use bucketgate_storage::ErrorKind;
use http_proxy::{Action, HttpProxy, Seen};
use md5::Digest as _;
use s3_support::*;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

const LEN: usize = 20 * MIB;

/// Whether the server's probe found that it checks Content-MD5 or CRC32C before it stores.
fn verifies(srv: &Server) -> bool {
    let c = srv.probed.as_ref().expect("probed");
    c.put_content_md5 || c.put_crc32c
}

/// The (Content-MD5, x-amz-checksum-crc32c) a checked copy of `bytes` carries under `auto`.
fn expected_sum(srv: &Server, bytes: &[u8]) -> (Option<String>, Option<String>) {
    if srv.probed.as_ref().expect("probed").put_crc32c {
        (None, Some(crc_b64(bytes)))
    } else {
        (Some(md5_b64(bytes)), None)
    }
}

fn crc_b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(crc32c::crc32c(b).to_be_bytes())
}

/// What the bucket holds at `key`, read unchecked.
async fn object(srv: &Server, key: &str) -> Option<Vec<u8>> {
    let b = srv.backend_with(|o| o.checksum = Checksum::Off);
    match b.stat(key).await {
        Ok(_) => Some(get(&b, key).await),
        Err(e) if e.kind() == ErrorKind::NotFound => None,
        Err(e) => panic!("[{}] stat {key}: {e}", srv.name),
    }
}

/// What a plain PUT carried: its `Content-MD5` and its `x-amz-checksum-crc32c`.
type Sums = (Option<String>, Option<String>);

/// The upload requests the proxy saw for keys containing `victim` since request `from`:
/// (plain PUTs, part PUTs, POSTs), and the checksums of each plain PUT.
fn victim_requests(p: &HttpProxy, from: usize) -> ((usize, usize, usize), Vec<Sums>) {
    let (mut puts, mut parts, mut posts, mut md5s) = (0, 0, 0, Vec::new());
    for s in p
        .seen()
        .iter()
        .filter(|s| s.n >= from && s.target.contains("victim"))
    {
        match s.method.as_str() {
            "PUT" if s.has_query("partNumber") => parts += 1,
            "PUT" => {
                puts += 1;
                md5s.push((
                    s.header("content-md5").map(str::to_string),
                    s.header("x-amz-checksum-crc32c").map(str::to_string),
                ));
            }
            "POST" => posts += 1,
            _ => {}
        }
    }
    ((puts, parts, posts), md5s)
}

fn md5_b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(b))
}

struct Push {
    dir: tempfile::TempDir,
    site: Arc<dyn Backend>,
}

impl Push {
    fn new() -> Push {
        let dir = tempfile::tempdir().unwrap();
        let site: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("site")).unwrap());
        std::fs::create_dir_all(dir.path().join("site/up")).unwrap();
        Push { dir, site }
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("site/up/victim.bin")
    }

    fn job(&self, srv: &Server, remote: &S3Backend, name: &str) -> SyncJob {
        SyncJob {
            name: format!("{name}-{}", srv.name),
            site: (self.site.clone(), "up".into()),
            remote: (Arc::new(remote.clone()), srv.key(&format!("{name}/"))),
            direction: Direction::Push,
            delete: false,
            conflict: ConflictPolicy::Newer,
            include: vec![],
            exclude: vec![],
            max_delete: Default::default(),
            lease: None,
            history: None,
        }
    }

    async fn run(&self, job: &SyncJob) -> bucketgate_storage::sync::Summary {
        run_job(job, &self.dir.path().join("state"), RunOptions::default())
            .await
            .unwrap()
    }
}

/// A 20 MiB push copy (above the 5 MiB part size) is one PutObject carrying the file's CRC32C
/// or MD5 where the server checks it, and a multipart upload elsewhere; with a backend that has not
/// probed the server (as in `bucketgate sync run`), the copy asks the server that one question
/// first, under the job's prefix, and leaves nothing of it behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_sync_copy_is_one_checked_put_where_the_server_checks_it() {
    for srv in servers().await {
        let p = HttpProxy::start(srv.addr(), http_proxy::forward_all()).await;
        let endpoint = format!("http://{}", p.addr);
        let probed = srv.backend_with(|o| o.endpoint = endpoint.clone());
        let unprobed = srv.backend_unprobed_with(|o| o.endpoint = endpoint.clone());
        for (name, remote) in [("probed", probed), ("unprobed", unprobed)] {
            let push = Push::new();
            let bytes = data(LEN, 41);
            std::fs::write(push.file(), &bytes).unwrap();
            let n0 = p.seen().len();
            let sum = push.run(&push.job(&srv, &remote, name)).await;
            assert!(
                sum.ok() && sum.copied_to_remote == 1,
                "[{}] {name}: {sum:?}",
                srv.name
            );
            let key = srv.key(&format!("{name}/victim.bin"));
            assert_eq!(
                object(&srv, &key).await.as_deref(),
                Some(&bytes[..]),
                "[{}] {name}",
                srv.name
            );
            let (counts, md5s) = victim_requests(&p, n0);
            println!(
                "[{}] {name}: (PUTs, part PUTs, POSTs) = {counts:?}, (Content-MD5, CRC32C) {md5s:?}",
                srv.name
            );
            if verifies(&srv) && remote.head_waits_for_put() {
                // The server holds the check before the last chunk until the PUT ends (an
                // older MinIO): that PUT was given up, nothing stored, and the copy went in
                // parts.
                println!(
                    "NOT CHECKED [{}] {name}: the server holds a HEAD during a PUT; the copy went in parts",
                    srv.name
                );
                assert_eq!(counts.0, 1, "[{}] {name}: the PUT given up", srv.name);
                assert_eq!(counts.1, 4, "[{}] {name}: four parts of 5 MiB", srv.name);
            } else if verifies(&srv) {
                assert_eq!(counts, (1, 0, 0), "[{}] {name}: one PutObject", srv.name);
                assert_eq!(md5s, [expected_sum(&srv, &bytes)], "[{}] {name}", srv.name);
            } else {
                assert_eq!(counts.0, 0, "[{}] {name}: no unchecked PutObject", srv.name);
                assert_eq!(counts.1, 4, "[{}] {name}: four parts of 5 MiB", srv.name);
                assert_eq!(counts.2, 2, "[{}] {name}: create and complete", srv.name);
            }
            let left: Vec<String> = srv
                .backend()
                .raw_keys(&srv.prefix)
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.contains("bucketgate-probe"))
                .collect();
            assert!(left.is_empty(), "[{}] {name}: left {left:?}", srv.name);
        }
    }
}

/// One byte of the upload changed on its way: the run reports the file as failed, the bucket
/// keeps the version it had, and the next clean run copies the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_in_a_large_sync_copy_keeps_the_old_object() {
    for srv in servers().await {
        let flip = Arc::new(Mutex::new(false));
        let f = flip.clone();
        let rule: http_proxy::Rule = Arc::new(move |s: &Seen| {
            if *f.lock().unwrap() && s.method == "PUT" && s.target.contains("victim") {
                Action::FlipRequest(3 * MIB + 7)
            } else {
                Action::Forward
            }
        });
        let p = HttpProxy::start(srv.addr(), rule).await;
        let remote = srv.backend_with(|o| o.endpoint = format!("http://{}", p.addr));
        let push = Push::new();
        let job = push.job(&srv, &remote, "flip");
        let key = srv.key("flip/victim.bin");
        let v1 = data(LEN, 42);
        std::fs::write(push.file(), &v1).unwrap();
        let sum = push.run(&job).await;
        assert!(
            sum.ok() && sum.copied_to_remote == 1,
            "[{}] {sum:?}",
            srv.name
        );

        let v2 = data(LEN + 3, 43);
        std::fs::write(push.file(), &v2).unwrap();
        *flip.lock().unwrap() = true;
        let n0 = p.seen().len();
        let sum = push.run(&job).await;
        *flip.lock().unwrap() = false;
        let (counts, _) = victim_requests(&p, n0);
        println!(
            "[{}] changed byte: {sum:?}; (PUTs, part PUTs, POSTs) = {counts:?}",
            srv.name
        );
        assert!(
            !sum.ok() && sum.errors == 1 && sum.copied_to_remote == 0,
            "[{}] {sum:?}",
            srv.name
        );
        assert!(
            object(&srv, &key).await.as_deref() == Some(&v1[..]),
            "[{}] the bucket no longer holds the old version",
            srv.name
        );
        if verifies(&srv) && remote.head_waits_for_put() {
            // A check before the last chunk waited for its own PUT (an older MinIO), in this
            // run or an earlier one of this backend: sent in parts, each checked.
            assert!(counts.0 <= 1 && counts.1 >= 1, "[{}] {counts:?}", srv.name);
        } else if verifies(&srv) {
            // Each try (a changed byte is worth sending again) was one checked PutObject.
            assert!(counts.0 >= 1 && counts.1 == 0, "[{}] {counts:?}", srv.name);
        } else {
            assert!(counts.0 == 0 && counts.1 >= 1, "[{}] {counts:?}", srv.name);
        }

        let sum = push.run(&job).await;
        assert!(
            sum.ok() && sum.copied_to_remote == 1,
            "[{}] {sum:?}",
            srv.name
        );
        assert!(object(&srv, &key).await.as_deref() == Some(&v2[..]));
    }
}

/// A file and the bytes to write over it.
type Rewrite = (PathBuf, Vec<u8>);

/// Writes `bytes` over the file in place (same size, same inode) and sets its modification time
/// back: a writer the sync's identity check (size, time, inode) cannot see.
fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let was = std::fs::metadata(path).unwrap().modified().unwrap();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
    f.set_modified(was).unwrap();
}

/// The source is rewritten in place, its time set back, at the moment its upload starts (when
/// the proxy sees the first PUT or POST of it), after the sync hashed it and while the copy
/// reads it: where the server checks Content-MD5, the mix of both versions is refused, the run
/// skips the file as changed (not an error), and the next run copies the new version whole.
/// Elsewhere nothing can see such a writer (the parts path hashes what it reads): the outcome
/// is printed, not asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_rewritten_after_its_hash_is_never_stored_as_a_mix() {
    const BIG: usize = 32 * MIB;
    for srv in servers().await {
        let push = Push::new();
        let armed: Arc<Mutex<Option<Rewrite>>> = Arc::new(Mutex::new(None));
        let a = armed.clone();
        let rule: http_proxy::Rule = Arc::new(move |s: &Seen| {
            if (s.method == "PUT" || s.method == "POST") && s.target.contains("victim") {
                if let Some((path, bytes)) = a.lock().unwrap().take() {
                    rewrite_in_place(&path, &bytes);
                }
            }
            Action::Forward
        });
        let p = HttpProxy::start(srv.addr(), rule).await;
        let remote = srv.backend_with(|o| o.endpoint = format!("http://{}", p.addr));
        let job = push.job(&srv, &remote, "race");
        let key = srv.key("race/victim.bin");
        let (v1, v2) = (data(BIG, 44), data(BIG, 45));
        std::fs::write(push.file(), &v1).unwrap();
        *armed.lock().unwrap() = Some((push.file(), v2.clone()));
        let n0 = p.seen().len();
        let sum = push.run(&job).await;
        assert!(
            armed.lock().unwrap().is_none(),
            "[{}] never rewritten",
            srv.name
        );
        let (counts, _) = victim_requests(&p, n0);
        let stored = object(&srv, &key).await;
        let what = match &stored {
            None => "nothing",
            Some(b) if *b == v1 => "the old version",
            Some(b) if *b == v2 => "the new version",
            Some(_) => "A MIX OF BOTH",
        };
        println!(
            "[{}] rewritten during the copy: {sum:?}; (PUTs, part PUTs, POSTs) = {counts:?}; the bucket holds {what}",
            srv.name
        );
        if !verifies(&srv) || remote.head_waits_for_put() {
            println!(
                "NOT GUARANTEED [{}] the server stores a PutObject whose Content-MD5 does not match, or holds a HEAD during a PUT: the copy went as parts",
                srv.name
            );
            // In parts; or, where the first try's check waited for its own PUT, that PUT was
            // given up and the retry may find the source changed before sending anything.
            assert!(
                counts.1 >= 1 || (remote.head_waits_for_put() && counts.0 == 1),
                "[{}] {counts:?}",
                srv.name
            );
            continue;
        }
        assert_eq!(counts, (1, 0, 0), "[{}] one checked PutObject", srv.name);
        assert!(stored.is_none(), "[{}] the bucket holds {what}", srv.name);
        assert!(
            sum.ok() && sum.skipped == 1 && sum.copied_to_remote == 0,
            "[{}] {sum:?}",
            srv.name
        );
        assert!(
            sum.messages.iter().any(|m| m.contains("source changed")),
            "[{}] {:?}",
            srv.name,
            sum.messages
        );
        let sum = push.run(&job).await;
        assert!(
            sum.ok() && sum.copied_to_remote == 1,
            "[{}] {sum:?}",
            srv.name
        );
        assert!(object(&srv, &key).await.as_deref() == Some(&v2[..]));
    }
}

/// `auto` on a server found to check CRC32C before it stores: the copy's source is hashed with
/// CRC32C (a fraction of MD5's CPU) and goes as one PutObject carrying it. s3s-fs stands in,
/// told what the probe finds on Garage (it stores a matching body either way; Garage itself
/// runs the tests above in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_hashes_a_large_sync_copy_with_crc32c_where_the_server_checks_that() {
    use bucketgate_storage::s3::Capabilities;
    let srv = s3s_server(None).await;
    let p = HttpProxy::start(srv.addr(), http_proxy::forward_all()).await;
    let remote = srv.backend_unprobed_with(|o| o.endpoint = format!("http://{}", p.addr));
    remote.assume_capabilities(Capabilities {
        probed: true,
        put_crc32c: true,
        ..Default::default()
    });
    let push = Push::new();
    let bytes = data(LEN, 44);
    std::fs::write(push.file(), &bytes).unwrap();
    let n0 = p.seen().len();
    let sum = push.run(&push.job(&srv, &remote, "crc")).await;
    assert!(sum.ok() && sum.copied_to_remote == 1, "{sum:?}");
    let key = srv.key("crc/victim.bin");
    assert_eq!(object(&srv, &key).await.as_deref(), Some(&bytes[..]));
    let (counts, sums) = victim_requests(&p, n0);
    assert_eq!(counts, (1, 0, 0), "one PutObject");
    assert_eq!(sums, [(None, Some(crc_b64(&bytes)))]);
}
