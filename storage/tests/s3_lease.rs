//! The sync lease on real S3 servers: two gateway instances (two stores over two clients)
//! sharing one remote.
//!
//! Servers that enforce conditional writes (s3s-fs, moto 5; AWS and MinIO through the env
//! endpoint) must give exactly one winner to a race. On a server that ignores them (Garage 2.5
//! through the env endpoint), the documented behaviour is asserted instead: a race may have two
//! winners, and then the one whose write was replaced loses at its first renewal.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::s3::S3LeaseStore;
use bucketgate_storage::sync::{Lease, LeaseStore};
use bucketgate_storage::ErrorKind;
use bytes::Bytes;
use s3_support::*;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Renewals every third of this; long enough that a loaded machine still renews in time.
const TTL: Duration = Duration::from_secs(3);
/// How long a lease may take to be found lost: a bound for a test that would otherwise hang.
const DEADLINE: Duration = Duration::from_secs(60);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The lease's expiry as stored (the body is JSON with `expires_ms`).
async fn expiry(store: &S3LeaseStore, job: &str) -> u64 {
    let (body, _) = store.read(job).await.unwrap().expect("a lease is stored");
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["expires_ms"].as_u64().unwrap()
}

/// Two stores over two separate clients of one server: two instances.
fn stores(srv: &Server) -> (Arc<S3LeaseStore>, Arc<S3LeaseStore>) {
    (
        Arc::new(S3LeaseStore::new(srv.backend(), &srv.prefix)),
        Arc::new(S3LeaseStore::new(srv.backend(), &srv.prefix)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_lease() {
    for srv in servers().await {
        let (a, b) = stores(&srv);
        let enforced = a.enforces_conditional_writes().await.unwrap();
        println!("[{}] enforces conditional writes: {enforced}", srv.name);
        // The servers this suite ships are known to enforce them; the env endpoint is whatever
        // it is (Garage does not), and is held to the matching behaviour below.
        if srv.name != "env" {
            assert!(enforced, "[{}] should enforce If-None-Match", srv.name);
        }
        let atomic = match srv.name {
            "s3s-fs" => false,
            "moto" => false,
            _ => enforced,
        };
        race(&srv, &a, &b, atomic).await;
        renew_lapse_and_takeover(&srv, &a, &b).await;
    }
}

/// Both instances try to take the same fresh lease at the same moment, several times over.
async fn race(srv: &Server, a: &Arc<S3LeaseStore>, b: &Arc<S3LeaseStore>, atomic: bool) {
    let mut doubles = 0;
    for round in 0..10 {
        let job = format!("race-{round}");
        let (ra, rb) = tokio::join!(
            Lease::acquire(a.clone(), &job, "A", TTL),
            Lease::acquire(b.clone(), &job, "B", TTL)
        );
        for r in [&ra, &rb] {
            if let Err(e) = r {
                assert_eq!(e.kind(), ErrorKind::Conflict, "[{}] {e}", srv.name);
            }
        }
        match (ra, rb) {
            (Ok(w), Err(_)) | (Err(_), Ok(w)) => w.release().await,
            (Ok(la), Ok(lb)) => {
                assert!(
                    !atomic,
                    "[{}] round {round}: both instances won the lease",
                    srv.name
                );
                doubles += 1;
                // Documented for servers that ignore the conditions: the instance whose write
                // was replaced learns it at its first renewal; the other keeps the lease.
                let (loser, winner) = tokio::time::timeout(DEADLINE, async {
                    tokio::select! {
                        _ = la.lost() => (la, lb),
                        _ = lb.lost() => (lb, la),
                    }
                })
                .await
                .unwrap_or_else(|_| panic!("[{}] two holders kept the lease", srv.name));
                assert!(loser.is_lost());
                assert!(!winner.is_lost(), "[{}] both holders lost", srv.name);
                winner.release().await;
                loser.release().await;
            }
            (Err(ea), Err(eb)) => panic!("[{}] nobody won: {ea} / {eb}", srv.name),
        }
        // Released: the lease object is gone, ready for the next round.
        assert!(a.read(&job).await.unwrap().is_none(), "[{}]", srv.name);
    }
    println!("[{}] races with two winners: {doubles} of 10", srv.name);
}

async fn renew_lapse_and_takeover(srv: &Server, a: &Arc<S3LeaseStore>, b: &Arc<S3LeaseStore>) {
    let n = &srv.name;
    // The holder renews: the stored expiry moves on, and the other instance is still refused
    // once the first expiry has passed.
    let la = Lease::acquire(a.clone(), "renewed", "A", TTL)
        .await
        .unwrap();
    let first = expiry(a, "renewed").await;
    let t0 = std::time::Instant::now();
    while expiry(a, "renewed").await <= first {
        assert!(t0.elapsed() < DEADLINE, "[{n}] the lease was never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Wait (the subject is time) until the first expiry is over.
    let past = first.saturating_sub(now_ms()) + 100;
    tokio::time::sleep(Duration::from_millis(past)).await;
    let e = Lease::acquire(b.clone(), "renewed", "B", TTL)
        .await
        .err()
        .unwrap_or_else(|| panic!("[{n}] a renewed lease was taken"));
    assert_eq!(e.kind(), ErrorKind::Conflict, "[{n}] {e}");
    assert!(
        e.to_string().contains("running on another instance (A)"),
        "{e}"
    );
    assert!(!la.is_lost());

    // A holder that stopped renewing (a crashed instance) leaves a lapsed lease: taken over.
    let dead = serde_json::json!({
        "job": "lapsed", "holder": "C", "expires_ms": now_ms() - 1_000, "nonce": 1u64,
    });
    a.create_if_absent("lapsed", Bytes::from(dead.to_string()))
        .await
        .unwrap()
        .expect("lapsed lease written");
    let lb = Lease::acquire(b.clone(), "lapsed", "B", TTL)
        .await
        .unwrap_or_else(|e| panic!("[{n}] a lapsed lease was not taken over: {e}"));
    let (body, _) = b.read("lapsed").await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&body).contains("\"holder\":\"B\""));
    lb.release().await;
    assert!(b.read("lapsed").await.unwrap().is_none(), "[{n}] released");

    // A holder whose lease was taken over (say it stalled past its expiry and B took it)
    // learns it at its next renewal, and the new holder keeps it.
    let taken = serde_json::json!({
        "job": "renewed", "holder": "B", "expires_ms": now_ms() + 600_000, "nonce": 2u64,
    });
    let t0 = std::time::Instant::now();
    let v = loop {
        let (_, v) = b.read("renewed").await.unwrap().unwrap();
        // None: A renewed between the read and the write; read again.
        let r = b
            .replace_if_match("renewed", &v, Bytes::from(taken.to_string()))
            .await
            .unwrap();
        if r.is_some() {
            break v;
        }
        assert!(
            t0.elapsed() < DEADLINE,
            "[{n}] could not take the lease over"
        );
    };
    tokio::time::timeout(DEADLINE, la.lost())
        .await
        .unwrap_or_else(|_| panic!("[{n}] the old holder never learned its lease was taken"));
    assert!(la.is_lost());
    // Its release does not delete B's lease.
    la.release().await;
    let (body, _) = b.read("renewed").await.unwrap().expect("B's lease stays");
    assert!(String::from_utf8_lossy(&body).contains("\"holder\":\"B\""));
    // A stale version is refused by the store itself.
    assert!(a
        .replace_if_match("renewed", &v, Bytes::from_static(b"{}"))
        .await
        .unwrap()
        .is_none());
    assert!(a
        .create_if_absent("renewed", Bytes::from_static(b"{}"))
        .await
        .unwrap()
        .is_none());
}
