//! The HTTP side: region fallback, the connection cap, credentials and bucket errors,
//! retries, and per-remote client options.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::budget::MemoryBudget;
use bucketgate_storage::s3::{RetryPolicy, S3Backend};
use bucketgate_storage::ErrorKind;
use futures::StreamExt;
use s3_support::*;
use std::time::Duration;

#[tokio::test]
async fn a_wrong_region_is_retried_once_and_remembered() {
    // s3s-fs behind a gate that wants "garage", as Garage answers.
    let srv = s3s_server(Some("garage")).await;
    let b = srv.backend_with(|o| o.region = None);
    assert_eq!(b.region(), "us-east-1", "blank region is sent as us-east-1");
    put(&b, &srv.key("r"), b"regional", 3).await;
    assert_eq!(b.region(), "garage");
    assert_eq!(get(&b, &srv.key("r")).await, b"regional");
    let b2 = srv.backend_with(|o| o.region = Some("  ".into()));
    assert_eq!(b2.region(), "us-east-1");
    b2.probe_bucket().await.unwrap();
    assert_eq!(b2.region(), "garage");
}

#[tokio::test]
async fn an_upload_whose_connection_breaks_for_its_region_learns_it_and_lands() {
    // Garage refuses a request signed for another region as soon as it has read the headers
    // and closes the connection; a proxy in between that is still sending the body has only a
    // reset to pass on, so the client never sees the answer that names the region. Here the
    // proxy cuts every upload signed for the default region.
    use bucketgate_testkit::http_proxy::{Action, HttpProxy, Rule, Seen};
    let srv = s3s_server(Some("garage")).await;
    let rule: Rule = std::sync::Arc::new(|s: &Seen| {
        let default_region = s
            .headers
            .iter()
            .any(|(k, v)| k == "authorization" && v.contains("/us-east-1/"));
        if s.method == "PUT" && default_region {
            Action::Drop
        } else {
            Action::Forward
        }
    });
    let proxy = HttpProxy::start(srv.addr(), rule).await;
    let b = srv.backend_with(|o| {
        o.region = None;
        o.endpoint = format!("http://{}", proxy.addr);
    });
    let bytes = data(1 << 20, 4);
    put(&b, &srv.key("first.bin"), &bytes, 1 << 20).await;
    assert_eq!(b.region(), "garage");
    assert_eq!(get(&srv.backend(), &srv.key("first.bin")).await, bytes);
}

#[tokio::test]
async fn max_connections_caps_requests_in_flight() {
    let srv = s3s_server(None).await;
    let target: std::net::SocketAddr = srv.endpoint.trim_start_matches("http://").parse().unwrap();
    for (cap, check) in [(2usize, true), (0, false)] {
        let proxy = Proxy::start(target, None).await;
        let b = srv.backend_with(|o| {
            o.endpoint = format!("http://{}", proxy.addr);
            o.max_connections = cap;
        });
        let mut jobs = futures::stream::iter(0..24)
            .map(|i| {
                let b = b.clone();
                let key = srv.key(&format!("c{cap}/{i}"));
                async move {
                    put(&b, &key, &data(200_000, i), 50_000).await;
                    get(&b, &key).await;
                }
            })
            .buffer_unordered(24);
        while jobs.next().await.is_some() {}
        let peak = proxy.peak();
        if check {
            assert!((1..=cap).contains(&peak), "peak {peak} with a cap of {cap}");
        } else {
            // Without a cap the same load opens more connections: the proxy does count.
            assert!(peak > 2, "uncapped peak {peak}");
        }
    }
}

#[tokio::test]
async fn credentials_and_buckets_are_configuration_errors() {
    let srv = s3s_server(None).await;
    let bad_secret = srv.backend_with(|o| o.secret_access_key = "wrong".into());
    let e = bad_secret.probe_bucket().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e:?}");
    assert!(!format!("{e:?}").contains(SECRET) && !format!("{e:?}").contains("Signature="));

    let bad_key = srv.backend_with(|o| o.access_key_id = "nobody".into());
    assert_eq!(
        bad_key.probe_bucket().await.unwrap_err().kind(),
        ErrorKind::ConfigInvalid
    );

    let no_bucket = srv.backend_with(|o| o.bucket = "no-such-bucket".into());
    let e = no_bucket.probe_bucket().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{e:?}");
    assert!(e.message().contains("bucket"));
    let e = no_bucket.stat("x").await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::ConfigInvalid,
        "stat names the real problem"
    );

    // Anonymous against a server that wants signatures: refused, not "not found".
    let anon = srv.backend_with(|o| {
        o.access_key_id.clear();
        o.secret_access_key.clear();
    });
    let e = anon.probe_bucket().await.unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::PermissionDenied | ErrorKind::ConfigInvalid
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn unreachable_endpoints_fail_retryably_after_bounded_retries() {
    // A port with nothing listening (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut o =
        bucketgate_storage::s3::S3Options::new("dead", format!("http://127.0.0.1:{port}"), "b")
            .with_keys("a", "s");
    o.retries = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(2),
    };
    o.source_address = Some("127.0.0.1".parse().unwrap());
    let b = S3Backend::new(o, MemoryBudget::shared(MIB as u64)).unwrap();
    let e = b.stat("x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Backend);
    assert!(e.is_retryable());
}

#[tokio::test]
async fn options_are_checked_and_never_show_the_secret() {
    let mut o = bucketgate_storage::s3::S3Options::new("r", "http://127.0.0.1:9", "b")
        .with_keys("AKID", "topsecretvalue");
    assert!(!format!("{o:?}").contains("topsecretvalue"));
    let budget = MemoryBudget::shared(MIB as u64);
    o.endpoint = "ftp://example".into();
    assert_eq!(
        S3Backend::new(o.clone(), budget.clone())
            .err()
            .unwrap()
            .kind(),
        ErrorKind::ConfigInvalid
    );
    o.endpoint = "http://127.0.0.1:9".into();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ca.pem");
    std::fs::write(&pem, "not a certificate").unwrap();
    o.ca_file = Some(pem);
    assert_eq!(
        S3Backend::new(o.clone(), budget.clone())
            .err()
            .unwrap()
            .kind(),
        ErrorKind::ConfigInvalid
    );
    o.ca_file = Some(dir.path().join("missing.pem"));
    assert_eq!(
        S3Backend::new(o, budget).err().unwrap().kind(),
        ErrorKind::ConfigInvalid
    );
}
