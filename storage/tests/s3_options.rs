//! The per-remote connection options, each proven against a real server on loopback: a TLS
//! endpoint signed by a private CA (`ca_file`), `source_address`, `max_connections`, the
//! request timeout (a slow but steady download passes, a stall fails), and path-style versus
//! virtual-host addressing.

use bucketgate_testkit::http_proxy;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::ErrorKind;
use futures::StreamExt;
use http_proxy::{forward_all, Action, HttpProxy};
use s3_support::*;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// Reads a whole object, returning the error if any chunk fails.
async fn try_get(b: &impl Backend, key: &str) -> bucketgate_storage::Result<Vec<u8>> {
    let mut s = b.read(key, 0, None).await?;
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c?);
    }
    Ok(out)
}

// ---------------------------------------------------------------- TLS with a private CA

/// A private CA and a certificate it signed for 127.0.0.1: (CA PEM, server rustls config).
fn private_ca() -> (String, rustls::ServerConfig) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Bucketgate test CA");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA");
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.subject_alt_names = vec![SanType::IpAddress(IpAddr::from([127, 0, 0, 1]))];
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = params.signed_by(&key, &issuer).expect("cert");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .expect("server config");
    (ca_cert.pem(), config)
}

/// Serves `target` over TLS on 127.0.0.1:0; counts the connections it accepts.
async fn tls_front(
    target: SocketAddr,
    config: rustls::ServerConfig,
) -> (SocketAddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (addr, accepted, task)
}

#[tokio::test]
async fn tls_endpoint_signed_by_a_private_ca_needs_ca_file() {
    let srv = s3s_server(None).await;
    let (ca_pem, config) = private_ca();
    let (addr, accepted, task) = tls_front(srv.addr(), config).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let endpoint = format!("https://{addr}");

    // With the CA: everything works over TLS.
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint.clone();
        o.ca_file = Some(ca_file.clone());
    });
    b.probe_bucket().await.expect("probe over TLS");
    let bytes = data(300_000, 1);
    put(&b, &srv.key("tls.bin"), &bytes, 64 * 1024).await;
    assert_eq!(get(&b, &srv.key("tls.bin")).await, bytes);

    // Without it: a clear, non-retried TLS error naming the fix.
    let before = accepted.load(SeqCst);
    let plain = srv.backend_with(|o| o.endpoint = endpoint.clone());
    let err = plain
        .probe_bucket()
        .await
        .expect_err("untrusted certificate");
    println!("without ca_file: {err}");
    assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
    assert!(err.to_string().contains("TLS"), "{err}");
    assert!(err.to_string().contains("not trusted"), "{err}");
    assert!(err.to_string().contains("ca_file"), "{err}");
    assert!(!err.is_retryable());
    assert_eq!(
        accepted.load(SeqCst) - before,
        1,
        "a certificate error is not retried"
    );
    task.abort();
}

// ---------------------------------------------------------------- source address

#[tokio::test]
async fn source_address_is_the_local_address_of_every_connection() {
    let srv = s3s_server(None).await;
    let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
    let endpoint = format!("http://{}", proxy.addr);
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint.clone();
        o.source_address = Some(IpAddr::from([127, 0, 0, 2]));
    });
    let bytes = data(12 * MIB, 2);
    put(&b, &srv.key("src.bin"), &bytes, MIB).await;
    assert_eq!(get(&b, &srv.key("src.bin")).await, bytes);
    let seen = proxy.seen();
    assert!(seen.len() >= 4, "multipart upload and read: {}", seen.len());
    for s in &seen {
        assert_eq!(
            s.peer.ip(),
            IpAddr::from([127, 0, 0, 2]),
            "{} {} came from {}",
            s.method,
            s.target,
            s.peer
        );
    }

    // Control: without the option the system picks 127.0.0.1.
    let other = srv.backend_with(|o| o.endpoint = endpoint.clone());
    other.stat(&srv.key("src.bin")).await.expect("stat");
    let last = proxy.seen().pop().unwrap();
    assert_eq!(last.peer.ip(), IpAddr::from([127, 0, 0, 1]));
}

// ---------------------------------------------------------------- max_connections

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_connections_caps_requests_in_flight_exactly() {
    const CAP: usize = 3;
    let srv = s3s_server(None).await;
    let direct = srv.backend();
    for i in 0..4 * CAP {
        put(
            &direct,
            &srv.key(&format!("f{i}")),
            &data(1000, i as u64),
            1000,
        )
        .await;
    }
    let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
    // The proxy holds requests until CAP of them are in flight, then lets them go: a client
    // that allows CAP requests reaches exactly CAP, one that allows more shows it.
    proxy.hold_in_groups(CAP, 4 * CAP);
    let endpoint = format!("http://{}", proxy.addr);
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint.clone();
        o.max_connections = CAP;
    });
    let mut tasks = Vec::new();
    for i in 0..4 * CAP {
        let (b, key) = (b.clone(), srv.key(&format!("f{i}")));
        tasks.push(tokio::spawn(async move { (i, get(&b, &key).await) }));
    }
    for t in tasks {
        let (i, got) = t.await.unwrap();
        assert_eq!(got, data(1000, i as u64));
    }
    assert_eq!(proxy.seen().len(), 4 * CAP);
    assert_eq!(proxy.peak(), CAP, "requests in flight at the remote");
}

// ---------------------------------------------------------------- timeouts

#[tokio::test]
async fn a_slow_but_steady_download_outlasts_the_request_timeout() {
    let srv = s3s_server(None).await;
    let bytes = data(30 * 2000, 3);
    put(&srv.backend(), &srv.key("slow.bin"), &bytes, 8192).await;
    // Each chunk comes 100 ms after the last (a tenth of the timeout); the whole body takes
    // three times the timeout.
    let proxy = HttpProxy::start(
        srv.addr(),
        Arc::new(|s: &http_proxy::Seen| {
            if s.method == "GET" {
                Action::Trickle {
                    chunk: 2000,
                    every: Duration::from_millis(100),
                }
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let endpoint = format!("http://{}", proxy.addr);
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint.clone();
        o.request_timeout = Duration::from_secs(1);
    });
    assert_eq!(
        try_get(&b, &srv.key("slow.bin")).await.expect("slow read"),
        bytes
    );
    let gets = proxy.seen().iter().filter(|s| s.method == "GET").count();
    assert_eq!(gets, 1, "read in one request, not retried");
}

#[tokio::test]
async fn a_stall_longer_than_the_request_timeout_fails_as_retryable() {
    let srv = s3s_server(None).await;
    let bytes = data(10_000, 4);
    put(&srv.backend(), &srv.key("stall.bin"), &bytes, 8192).await;
    let proxy = HttpProxy::start(
        srv.addr(),
        Arc::new(|s: &http_proxy::Seen| {
            if s.method == "GET" {
                Action::Stall
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let endpoint = format!("http://{}", proxy.addr);
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint.clone();
        o.request_timeout = Duration::from_millis(300);
    });
    let err = try_get(&b, &srv.key("stall.bin"))
        .await
        .expect_err("a stalled answer");
    println!("stalled: {err}");
    assert!(err.is_retryable(), "{err}");
    assert_eq!(err.kind(), ErrorKind::Backend);
    assert!(err.to_string().contains("did not answer in time"), "{err}");
    let gets = proxy.seen().iter().filter(|s| s.method == "GET").count();
    assert_eq!(gets, 2, "retried once (max_attempts 2), then given up");

    // A stall in the middle of the body (headers came, then nothing) fails the same way.
    let mid = HttpProxy::start(
        srv.addr(),
        Arc::new(|s: &http_proxy::Seen| {
            if s.method == "GET" {
                Action::Trickle {
                    chunk: 4000,
                    every: Duration::from_millis(900),
                }
            } else {
                Action::Forward
            }
        }),
    )
    .await;
    let endpoint = format!("http://{}", mid.addr);
    let b = srv.backend_with(|o| {
        o.endpoint = endpoint.clone();
        o.request_timeout = Duration::from_millis(300);
    });
    let err = try_get(&b, &srv.key("stall.bin"))
        .await
        .expect_err("a body that stalls");
    println!("stalled mid-body: {err}");
    assert!(err.is_retryable(), "{err}");
}

// ---------------------------------------------------------------- addressing style

#[tokio::test]
async fn path_style_and_virtual_host_style_address_the_bucket_as_configured() {
    let srv = s3s_server_virtual_host().await;
    let proxy = HttpProxy::start(srv.addr(), forward_all()).await;
    let port = proxy.addr.port();
    let endpoint = format!("http://localhost:{port}");
    let bytes = data(2000, 5);

    let vhost = srv.backend_with(|o| {
        o.endpoint = endpoint.clone();
        o.path_style = false;
    });
    put(&vhost, &srv.key("vh.txt"), &bytes, 2000).await;
    assert_eq!(get(&vhost, &srv.key("vh.txt")).await, bytes);
    let listed = list_all(&vhost, &srv.dir()).await;
    assert_eq!(names(&listed), vec!["vh.txt"]);
    let seen = proxy.seen();
    assert!(seen.len() >= 3);
    for s in &seen {
        assert_eq!(s.host, format!("bucket.localhost:{port}"), "{s:?}");
        assert!(!s.target.starts_with("/bucket"), "{s:?}");
    }

    let n = seen.len();
    let path = srv.backend_with(|o| o.endpoint = endpoint.clone());
    assert_eq!(get(&path, &srv.key("vh.txt")).await, bytes);
    for s in &proxy.seen()[n..] {
        assert_eq!(s.host, format!("localhost:{port}"), "{s:?}");
        assert!(s.target.starts_with("/bucket/"), "{s:?}");
    }
}

// ---------------------------------------------------------------- region

#[tokio::test]
async fn a_blank_region_is_corrected_even_when_the_first_request_is_a_head() {
    // Like Garage: a server with its own region refuses other scopes; to HEAD it can only
    // answer a bare 400 (no body, so no region named).
    let srv = s3s_server(Some("garage")).await;
    let bytes = data(1000, 6);
    put(&srv.backend(), &srv.key("r.txt"), &bytes, 1000).await;
    let blank = srv.backend_with(|o| o.region = None);
    assert_eq!(blank.region(), "us-east-1");
    let e = blank.stat(&srv.key("r.txt")).await.expect("stat first");
    assert_eq!(e.size, 1000);
    assert_eq!(blank.region(), "garage");
    assert_eq!(get(&blank, &srv.key("r.txt")).await, bytes);
}
