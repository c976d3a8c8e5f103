//! Faults between the gateway and the remote, injected request by request by an HTTP proxy in
//! front of s3s-fs or moto: throttling (503 SlowDown + Retry-After), 500s, connections reset
//! mid-body or dropped, stalls, bodies cut short. What must hold: transient faults are retried
//! and the result is byte-exact; an upload that cannot finish leaves neither an object nor a
//! pending multipart upload; a download never ends as a success with a short file; stale
//! uploads are cleaned under a prefix by age.

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions};
use bucketgate_storage::s3::{RetryPolicy, S3Backend};
use bucketgate_storage::{Area, ErrorKind, Permissions, Tree, UserFs, VPath};
use futures::StreamExt;
use http_proxy::{Action, HttpProxy, Seen};
use s3_support::*;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

/// `action` for the first `times` requests that `pick` selects; the others are forwarded.
fn first(
    times: usize,
    pick: impl Fn(&Seen) -> bool + Send + Sync + 'static,
    action: Action,
) -> http_proxy::Rule {
    let hits = AtomicUsize::new(0);
    Arc::new(move |s: &Seen| {
        if pick(s) && hits.fetch_add(1, SeqCst) < times {
            action.clone()
        } else {
            Action::Forward
        }
    })
}

fn is_part(s: &Seen) -> bool {
    s.method == "PUT" && s.has_query("partNumber")
}

fn is_plain_put(s: &Seen) -> bool {
    s.method == "PUT" && !s.has_query("partNumber")
}

fn slow_down() -> Action {
    Action::Fail {
        status: 503,
        code: "SlowDown",
        retry_after: Some(1),
    }
}

fn internal() -> Action {
    Action::Fail {
        status: 500,
        code: "InternalError",
        retry_after: None,
    }
}

/// A backend through `proxy` that retries like production (4 attempts), with short waits.
fn via(srv: &Server, proxy: &HttpProxy) -> S3Backend {
    let endpoint = format!("http://{}", proxy.addr);
    srv.backend_with(|o| {
        o.endpoint = endpoint;
        o.retries = RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
        };
        o.request_timeout = Duration::from_secs(2);
    })
}

async fn try_get(b: &impl Backend, key: &str) -> bucketgate_storage::Result<Vec<u8>> {
    let mut s = b.read(key, 0, None).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

/// The user's view of `b` rooted at the test prefix, as the protocols see files.
fn user_fs(b: &S3Backend, srv: &Server) -> UserFs {
    let site = Area {
        backend: Arc::new(b.clone()),
        prefix: srv.prefix.clone(),
    };
    let tree = Arc::new(Tree::new(site, Vec::new()));
    UserFs::new(
        tree,
        "alice",
        VPath::parse("/").unwrap(),
        Permissions::all(),
    )
}

/// Reads a whole file through UserFs/FileReader, as SFTP and FTP do.
async fn fs_get(fs: &UserFs, path: &str) -> bucketgate_storage::Result<Vec<u8>> {
    let mut r = fs.open_read(&VPath::parse(path).unwrap()).await?;
    let mut out = Vec::new();
    loop {
        let b = r.read_at(out.len() as u64, 256 * 1024).await?;
        if b.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&b);
    }
}

/// No object at `key` and no pending multipart upload under the test prefix (the check the
/// server can answer: moto lists uploads, s3s-fs does not).
async fn nothing_left(srv: &Server, key: &str) {
    let direct = srv.backend();
    let err = direct.stat(key).await.expect_err("no object may be left");
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err}");
    if srv.caps.list_uploads {
        let pending = direct.list_multipart_uploads(&srv.prefix).await.unwrap();
        assert!(pending.is_empty(), "pending uploads left: {pending:?}");
    }
}

// ---------------------------------------------------------------- transient faults

#[tokio::test]
async fn throttling_and_server_errors_are_retried_and_the_result_is_exact() {
    let srv = moto_server().await;
    // Two 503 SlowDown with Retry-After, then a 500, then the real server.
    let proxy = HttpProxy::start(
        srv.addr(),
        Arc::new({
            let n = AtomicUsize::new(0);
            move |s: &Seen| {
                if !is_plain_put(s) && s.method != "GET" {
                    return Action::Forward;
                }
                match n.fetch_add(1, SeqCst) {
                    0 | 1 => slow_down(),
                    2 => internal(),
                    _ => Action::Forward,
                }
            }
        }),
    )
    .await;
    let b = via(&srv, &proxy);
    let small = data(50_000, 1);
    put(&b, &srv.key("small.bin"), &small, 8192).await;
    let puts = proxy.seen().iter().filter(|s| is_plain_put(s)).count();
    assert_eq!(puts, 4, "three refusals, then the upload");
    assert_eq!(get(&srv.backend(), &srv.key("small.bin")).await, small);
    assert_eq!(try_get(&b, &srv.key("small.bin")).await.unwrap(), small);

    // In a multipart upload: each part's first attempt is refused.
    let proxy = HttpProxy::start(
        srv.addr(),
        Arc::new({
            let tried: std::sync::Mutex<std::collections::HashSet<String>> = Default::default();
            move |s: &Seen| {
                if is_part(s) && tried.lock().unwrap().insert(s.target.clone()) {
                    if s.target.contains("partNumber=1") {
                        slow_down()
                    } else {
                        internal()
                    }
                } else {
                    Action::Forward
                }
            }
        }),
    )
    .await;
    let b = via(&srv, &proxy);
    let big = data(12 * MIB, 2);
    put(&b, &srv.key("big.bin"), &big, MIB).await;
    assert_eq!(get(&srv.backend(), &srv.key("big.bin")).await, big);
    let parts = proxy.seen().iter().filter(|s| is_part(s)).count();
    assert_eq!(parts, 6, "three parts, each tried twice");
    assert!(srv
        .backend()
        .list_multipart_uploads(&srv.prefix)
        .await
        .unwrap()
        .is_empty());
}

/// A server that answers 503 SlowDown with `Retry-After: 2` gets no retry before those two
/// seconds, even though the client's own backoff would retry after a few milliseconds. The
/// gap is measured at the proxy between the refused request and its retry: a lower bound the
/// server imposed, not a performance threshold.
#[tokio::test]
async fn retry_after_is_waited_for_before_the_retry() {
    let srv = s3s_server(None).await;
    let proxy = HttpProxy::start(
        srv.addr(),
        first(
            1,
            is_plain_put,
            Action::Fail {
                status: 503,
                code: "SlowDown",
                retry_after: Some(2),
            },
        ),
    )
    .await;
    let endpoint = format!("http://{}", proxy.addr);
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint;
        // The client's own wait is milliseconds; only Retry-After can make it two seconds
        // (the cap on any wait stays above that).
        o.retries = RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(5),
            max_delay: Duration::from_secs(10),
        };
    });
    let bytes = data(10_000, 9);
    put(&b, &srv.key("throttled.bin"), &bytes, 10_000).await;
    let puts: Vec<Seen> = proxy.seen().into_iter().filter(is_plain_put).collect();
    assert_eq!(puts.len(), 2, "one refusal, then the upload");
    let gap = puts[1].at.duration_since(puts[0].at);
    assert!(
        gap >= Duration::from_secs(2),
        "retried {gap:?} after a Retry-After of 2 s"
    );
    assert_eq!(get(&srv.backend(), &srv.key("throttled.bin")).await, bytes);
}

#[tokio::test]
async fn a_connection_dropped_during_an_upload_is_retried_byte_exact() {
    let srv = moto_server().await;
    let proxy = HttpProxy::start(srv.addr(), first(2, is_part, Action::Drop)).await;
    let b = via(&srv, &proxy);
    let big = data(11 * MIB, 3);
    put(&b, &srv.key("dropped.bin"), &big, MIB).await;
    assert_eq!(get(&srv.backend(), &srv.key("dropped.bin")).await, big);
    assert!(srv
        .backend()
        .list_multipart_uploads(&srv.prefix)
        .await
        .unwrap()
        .is_empty());
}

// ---------------------------------------------------------------- uploads that cannot finish

#[tokio::test]
async fn an_upload_that_keeps_failing_fails_visibly_and_leaves_nothing() {
    for srv in [s3s_server(None).await, moto_server().await] {
        println!("server {}", srv.name);
        // Multipart: the second part is refused every time.
        let proxy = HttpProxy::start(
            srv.addr(),
            Arc::new(|s: &Seen| {
                if is_part(s) && s.target.contains("partNumber=2") {
                    internal()
                } else {
                    Action::Forward
                }
            }),
        )
        .await;
        let b = via(&srv, &proxy);
        let key = srv.key("never.bin");
        let err = put_with(&b, &key, &data(12 * MIB, 4), MIB, CreateOptions::default())
            .await
            .expect_err("the upload cannot finish");
        println!("multipart: {err}");
        assert!(
            proxy
                .seen()
                .iter()
                .any(|s| s.method == "DELETE" && s.has_query("uploadId")),
            "the multipart upload given up must be aborted"
        );
        nothing_left(&srv, &key).await;

        // One request: refused every time.
        let proxy = HttpProxy::start(
            srv.addr(),
            Arc::new(|s: &Seen| {
                if is_plain_put(s) {
                    slow_down()
                } else {
                    Action::Forward
                }
            }),
        )
        .await;
        let b = via(&srv, &proxy);
        let key = srv.key("never-small.bin");
        let err = put_with(&b, &key, &data(1000, 5), 1000, CreateOptions::default())
            .await
            .expect_err("the upload cannot finish");
        println!("single put: {err}");
        assert!(err.is_retryable(), "throttling is reported as transient");
        assert_eq!(
            proxy.seen().iter().filter(|s| is_plain_put(s)).count(),
            4,
            "every attempt was used"
        );
        nothing_left(&srv, &key).await;
    }
}

/// A folder rename is copies, then deletes. When one copy fails for good, the copies made
/// before it are removed again: the folder stays where it was and the target holds nothing
/// (before the fix the other copies stayed, a second, partial folder the user never made).
#[tokio::test]
async fn a_folder_rename_that_fails_part_way_changes_nothing() {
    for srv in [s3s_server(None).await, moto_server().await] {
        println!("server {}", srv.name);
        let proxy = HttpProxy::start(
            srv.addr(),
            Arc::new(|s: &Seen| {
                if s.method == "PUT"
                    && s.header("x-amz-copy-source").is_some()
                    && s.target.contains("/f7")
                {
                    Action::Fail {
                        status: 403,
                        code: "AccessDenied",
                        retry_after: None,
                    }
                } else {
                    Action::Forward
                }
            }),
        )
        .await;
        let b = via(&srv, &proxy);
        let n = 12;
        for i in 0..n {
            put(
                &b,
                &srv.key(&format!("from/d{}/f{i}", i % 3)),
                &data(100, i as u64),
                100,
            )
            .await;
        }
        let err = b
            .rename_dir(&srv.key("from"), &srv.key("to"))
            .await
            .expect_err("one copy is refused");
        println!("{err}");
        assert!(err.to_string().contains("nothing was changed"), "{err}");
        let direct = srv.backend();
        assert!(
            walk_all(&direct, &srv.key("to")).await.is_empty(),
            "[{}] copies left at the target: {:?}",
            srv.name,
            walk_all(&direct, &srv.key("to")).await
        );
        for i in 0..n {
            let key = srv.key(&format!("from/d{}/f{i}", i % 3));
            assert_eq!(try_get(&direct, &key).await.unwrap(), data(100, i as u64));
        }
    }
}

#[tokio::test]
async fn a_multipart_upload_given_up_by_its_writer_is_aborted() {
    let srv = moto_server().await;
    let b = srv.backend();
    let key = srv.key("abandoned.bin");
    let mut up = b
        .create(
            &key,
            CreateOptions {
                size_hint: Some(20 * MIB as u64),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for c in data(11 * MIB, 6).chunks(MIB) {
        up.write(bytes::Bytes::copy_from_slice(c)).await.unwrap();
    }
    up.abort().await;
    nothing_left(&srv, &key).await;
}

// ---------------------------------------------------------------- downloads

#[tokio::test]
async fn a_download_cut_short_is_never_a_success() {
    let srv = s3s_server(None).await;
    let bytes = data(3 * MIB, 7);
    put(&srv.backend(), &srv.key("dl.bin"), &bytes, MIB).await;
    let is_get = |s: &Seen| s.method == "GET" && !s.target.contains("list-type");

    // The connection breaks after 100 kB, every time.
    let reset = HttpProxy::start(
        srv.addr(),
        Arc::new(move |s: &Seen| {
            if is_get(s) {
                Action::ResetAfter(100_000)
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let b = via(&srv, &reset);
    let err = try_get(&b, &srv.key("dl.bin"))
        .await
        .expect_err("backend read");
    println!("reset, backend: {err}");
    assert!(err.is_retryable());
    let err = fs_get(&user_fs(&b, &srv), "/dl.bin")
        .await
        .expect_err("FileReader read");
    println!("reset, UserFs: {err}");

    // A well-formed answer that is shorter than the file (a Content-Length that lies): the
    // reader knows the size from the listing and refuses it.
    let lying = HttpProxy::start(
        srv.addr(),
        Arc::new(move |s: &Seen| {
            if is_get(s) {
                Action::Truncate(100_000)
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let b = via(&srv, &lying);
    let err = fs_get(&user_fs(&b, &srv), "/dl.bin")
        .await
        .expect_err("FileReader read");
    println!("truncated, UserFs: {err}");

    // A stall mid-body beyond the request timeout.
    let stall = HttpProxy::start(
        srv.addr(),
        Arc::new(move |s: &Seen| {
            if is_get(s) {
                Action::Trickle {
                    chunk: 64 * 1024,
                    every: Duration::from_secs(3),
                }
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let b = srv.backend_with(|o| {
        o.endpoint = format!("http://{}", stall.addr);
        o.request_timeout = Duration::from_millis(300);
    });
    let err = fs_get(&user_fs(&b, &srv), "/dl.bin")
        .await
        .expect_err("stalled read");
    println!("stalled, UserFs: {err}");

    // One break, then a healthy server: the reader either resumes exactly or fails, never
    // ends short.
    let once = HttpProxy::start(srv.addr(), first(1, is_get, Action::ResetAfter(100_000))).await;
    let b = via(&srv, &once);
    match fs_get(&user_fs(&b, &srv), "/dl.bin").await {
        Ok(got) => assert!(got == bytes, "a success must be the whole file"),
        Err(e) => println!("one break, UserFs failed visibly: {e}"),
    }
}

#[tokio::test]
async fn a_download_broken_after_a_good_run_resumes_on_the_same_version() {
    let srv = s3s_server(None).await;
    let bytes = data(3 * MIB, 8);
    put(&srv.backend(), &srv.key("r.bin"), &bytes, MIB).await;
    let is_get = |s: &Seen| s.method == "GET" && !s.target.contains("list-type");
    let gets = |p: &HttpProxy| p.seen.lock().unwrap().iter().filter(|s| is_get(s)).count();

    // The first download breaks after 2 MiB; the reader resumes where it stopped.
    let once = HttpProxy::start(srv.addr(), first(1, is_get, Action::ResetAfter(2 * MIB))).await;
    let b = via(&srv, &once);
    let fs = user_fs(&b, &srv);
    assert!(
        fs_get(&fs, "/r.bin").await.unwrap() == bytes,
        "resumed byte-exact"
    );
    assert_eq!(gets(&once), 2, "one resumed request");

    // The same break, with the file replaced before the reader reaches it: the resumed request
    // is of the version opened, so it fails rather than go on with the new bytes.
    let once = HttpProxy::start(srv.addr(), first(1, is_get, Action::ResetAfter(2 * MIB))).await;
    let b = via(&srv, &once);
    let fs = user_fs(&b, &srv);
    let mut r = fs
        .open_read(&VPath::parse("/r.bin").unwrap())
        .await
        .unwrap();
    assert_eq!(r.read_at(0, 64 * 1024).await.unwrap(), bytes[..64 * 1024]);
    let other = data(3 * MIB, 9);
    put(&srv.backend(), &srv.key("r.bin"), &other, MIB).await;
    let mut off = 64 * 1024;
    let err = loop {
        match r.read_at(off as u64, 64 * 1024).await {
            Ok(b) => {
                assert!(!b.is_empty(), "the file cannot end early");
                assert!(
                    b == bytes[off..off + b.len()],
                    "bytes at {off} of another version"
                );
                off += b.len();
            }
            Err(e) => break e,
        }
    };
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    // (A reset loses what was in flight, so the break may show before 2 MiB.)
    assert!((MIB..=2 * MIB).contains(&off), "served up to {off}");
    assert_eq!(
        err.to_string(),
        "read /r.bin: the file changed since it was opened"
    );
}

// ---------------------------------------------------------------- stale uploads

#[tokio::test]
async fn stale_uploads_are_aborted_under_a_prefix_by_age() {
    let srv = moto_server().await;
    // Uploads started and never finished (a crashed gateway): moto takes unsigned requests.
    let http = reqwest::Client::new();
    let start = |key: String| {
        let url = format!("{}/{}/{}?uploads", srv.endpoint, srv.bucket, key);
        let http = http.clone();
        async move {
            let r = http.post(url).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.status());
        }
    };
    start(srv.key("inbox/a.bin")).await;
    start(srv.key("inbox/b.bin")).await;
    let other = format!("other-{}", srv.prefix);
    start(format!("{other}keep.bin")).await;
    // moto reports every upload as started on 2010-11-10T20:48:33Z; a proxy puts the real
    // time back (the uploads were started just now), as S3 and Garage report it.
    let now = time_iso8601(std::time::SystemTime::now());
    let proxy = HttpProxy::start(
        srv.addr(),
        Arc::new(move |s: &Seen| {
            if s.method == "GET" && s.has_query("uploads") {
                Action::Replace("2010-11-10T20:48:33.000Z", now.clone())
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let b = via(&srv, &proxy);
    let inbox = srv.key("inbox/");
    assert_eq!(b.list_multipart_uploads(&inbox).await.unwrap().len(), 2);

    // Younger than the threshold: kept (they may still be in progress).
    let n = b
        .abort_stale_uploads(&inbox, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(n, 0);
    assert_eq!(b.list_multipart_uploads(&inbox).await.unwrap().len(), 2);

    // Past the threshold: aborted, and only under the prefix.
    let n = b.abort_stale_uploads(&inbox, Duration::ZERO).await.unwrap();
    assert_eq!(n, 2);
    assert!(b.list_multipart_uploads(&inbox).await.unwrap().is_empty());
    assert_eq!(b.list_multipart_uploads(&other).await.unwrap().len(), 1);
    b.abort_stale_uploads(&other, Duration::ZERO).await.unwrap();
}

/// `YYYY-MM-DDTHH:MM:SS.000Z` in UTC.
fn time_iso8601(t: std::time::SystemTime) -> String {
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.000Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
