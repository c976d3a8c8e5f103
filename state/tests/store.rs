//! The embedded store: migrations from an older file, and what each table keeps.

use bucketgate_state::{
    AdminAccount, Ban, ConsoleSession, Failure, Scope, SessionRow, SqliteStore, StateStore,
    TokenRow, UserStore, MIGRATIONS,
};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn at(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// A file written by a gateway that knew only the first schema version (bans) is upgraded in
/// place on open: its ban is still there, and the tables of the later versions work.
#[tokio::test]
async fn an_old_schema_is_migrated_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = bucketgate_state::sqlite_path(dir.path());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch(MIGRATIONS[0]).unwrap();
        c.pragma_update(None, "user_version", 1).unwrap();
        c.execute(
            "INSERT INTO bans (ip, until, score) VALUES ('192.0.2.7', 4000000000, 15)",
            [],
        )
        .unwrap();
        // The later tables do not exist yet.
        assert!(c.execute("DELETE FROM api_tokens", []).is_err());
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.version().unwrap(), MIGRATIONS.len());
    let bans = store.bans(at(1_700_000_000)).await.unwrap();
    assert_eq!(
        bans,
        vec![Ban {
            ip: "192.0.2.7".parse().unwrap(),
            until: at(4_000_000_000),
            score: 15
        }]
    );
    let t = TokenRow {
        id: "abc".into(),
        name: "ci".into(),
        scope: Scope::ReadWrite,
        hash: "$argon2id$x".into(),
        created: at(1_700_000_000),
    };
    store.insert_token(&t).await.unwrap();
    assert_eq!(store.token("abc").await.unwrap(), Some(t));
    store.put_user("bob", "{\"home\":\"/bob\"}").await.unwrap();
    store.put_user("bob", "{\"home\":\"/b\"}").await.unwrap();
    assert_eq!(
        store.users().await.unwrap(),
        vec![("bob".to_string(), "{\"home\":\"/b\"}".to_string())]
    );
    drop(store);
    // Opening again applies nothing and keeps everything.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.version().unwrap(), MIGRATIONS.len());
    assert_eq!(store.tokens().await.unwrap().len(), 1);
    assert!(store.delete_user("bob").await.unwrap());
    assert!(!store.delete_user("bob").await.unwrap());
}

/// A file from a newer gateway (a schema version this one does not know) is refused.
#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = bucketgate_state::sqlite_path(dir.path());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", (MIGRATIONS.len() + 1) as i64)
            .unwrap();
    }
    let e = SqliteStore::open(&path).err().expect("refused");
    assert!(e.to_string().contains("newer"), "{e}");
}

/// Bans end at their time, lifting one forgets the address's failures, old failures are
/// dropped; sessions and tokens come and go.
#[tokio::test]
async fn bans_failures_sessions_and_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucketgate_state::open(dir.path()).await.unwrap();
    exercise(store.as_ref()).await;
}

/// What every store must keep and forget (the embedded one above, PostgreSQL in `postgres`).
pub async fn exercise(store: &dyn StateStore) {
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let b: IpAddr = "2001:db8::2".parse().unwrap();
    store
        .put_ban(&Ban {
            ip: a,
            until: at(200),
            score: 15,
        })
        .await
        .unwrap();
    store
        .put_ban(&Ban {
            ip: b,
            until: at(100),
            score: 16,
        })
        .await
        .unwrap();
    let ips: Vec<IpAddr> = store
        .bans(at(50))
        .await
        .unwrap()
        .iter()
        .map(|x| x.ip)
        .collect();
    assert_eq!(ips, vec![b, a]);
    let ips: Vec<IpAddr> = store
        .bans(at(150))
        .await
        .unwrap()
        .iter()
        .map(|x| x.ip)
        .collect();
    assert_eq!(ips, vec![a]);

    for (ip, t) in [(a, 10), (a, 20), (b, 30)] {
        store
            .add_failure(&Failure {
                ip,
                at: at(t),
                score: 2,
            })
            .await
            .unwrap();
    }
    assert_eq!(store.failures_since(at(15)).await.unwrap().len(), 2);
    assert!(store.delete_ban(a).await.unwrap());
    assert!(!store.delete_ban(a).await.unwrap());
    assert!(store.bans(at(150)).await.unwrap().is_empty());
    let left = store.failures_since(at(0)).await.unwrap();
    assert_eq!(
        left,
        vec![Failure {
            ip: b,
            at: at(30),
            score: 2
        }]
    );

    let s = SessionRow {
        id: "00ff".into(),
        username: "alice".into(),
        protocol: "sftp".into(),
        client: b,
        started: at(5),
    };
    store.session_opened(&s).await.unwrap();
    assert_eq!(store.sessions().await.unwrap(), vec![s]);
    store.session_closed("00ff").await.unwrap();
    assert!(store.sessions().await.unwrap().is_empty());

    assert!(!store.delete_token("nope").await.unwrap());
    assert_eq!(store.token("nope").await.unwrap(), None);

    // Sync history: the last runs of a job, oldest first; its last good one; the jobs.
    assert!(store.sync_jobs().await.unwrap().is_empty());
    assert_eq!(store.last_ok_sync_run("out").await.unwrap(), None);
    for (job, ok, rec) in [
        ("out", true, "{\"n\":1}"),
        ("out", false, "{\"n\":2}"),
        ("in", true, "{\"n\":3}"),
        ("out", false, "{\"n\":4}"),
    ] {
        store.add_sync_run(job, ok, rec).await.unwrap();
    }
    assert_eq!(store.sync_jobs().await.unwrap(), vec!["in", "out"]);
    assert_eq!(
        store.sync_runs("out", 2).await.unwrap(),
        vec!["{\"n\":2}", "{\"n\":4}"]
    );
    assert_eq!(store.sync_runs("out", 10).await.unwrap().len(), 3);
    assert_eq!(
        store.last_ok_sync_run("out").await.unwrap().as_deref(),
        Some("{\"n\":1}")
    );
    // Only the last KEEP_SYNC_RUNS runs of a job stay.
    for i in 0..bucketgate_state::KEEP_SYNC_RUNS + 5 {
        store
            .add_sync_run("busy", true, &format!("{i}"))
            .await
            .unwrap();
    }
    let kept = store.sync_runs("busy", usize::MAX).await.unwrap();
    assert_eq!(kept.len(), bucketgate_state::KEEP_SYNC_RUNS);
    assert_eq!(kept[0], "5");
    assert_eq!(
        store.sync_runs("out", 10).await.unwrap().len(),
        3,
        "trimming one job touched another"
    );
    exercise_admins(store).await;
}

/// The embedded store keeps no sync leases: they stay in the bucket for instances that share
/// nothing else.
#[tokio::test]
async fn the_embedded_store_refuses_sync_leases() {
    let dir = tempfile::tempdir().unwrap();
    let store = bucketgate_state::open(dir.path()).await.unwrap();
    assert!(!store.shared());
    let e = store.lease_create("job", b"x").await.expect_err("refused");
    assert!(e.to_string().contains("no sync leases"), "{e}");
}

/// Admin accounts and console sessions: a session is found with its account as it is now,
/// ends at its time, and ends with its account (also when an account of that name is made
/// again).
async fn exercise_admins(store: &dyn StateStore) {
    let mut ops = AdminAccount {
        name: "ops".into(),
        scope: Scope::ReadWrite,
        hash: "$argon2id$one".into(),
        created: at(1_000),
    };
    store.put_admin(&ops).await.unwrap();
    assert_eq!(store.admin("ops").await.unwrap(), Some(ops.clone()));
    assert_eq!(store.admin("nobody").await.unwrap(), None);
    let far = SystemTime::now() + Duration::from_secs(3600);
    let s = ConsoleSession {
        id: "c0ffee".into(),
        account: "ops".into(),
        hash: "sha256:aa".into(),
        csrf: "x1".into(),
        expires: UNIX_EPOCH
            + Duration::from_secs(far.duration_since(UNIX_EPOCH).unwrap().as_secs()),
    };
    store.insert_console_session(&s).await.unwrap();
    assert_eq!(
        store.console_session("c0ffee").await.unwrap(),
        Some((s.clone(), ops.clone()))
    );
    // A new scope applies to the open session.
    ops.scope = Scope::ReadOnly;
    store.put_admin(&ops).await.unwrap();
    let (_, acc) = store.console_session("c0ffee").await.unwrap().unwrap();
    assert_eq!(acc.scope, Scope::ReadOnly);
    // An ended session is not found.
    let old = ConsoleSession {
        id: "0ld".into(),
        expires: at(5),
        ..s.clone()
    };
    store.insert_console_session(&old).await.unwrap();
    assert_eq!(store.console_session("0ld").await.unwrap(), None);
    // Deleting the account ends its sessions, for good.
    assert!(store.delete_admin("ops").await.unwrap());
    assert!(!store.delete_admin("ops").await.unwrap());
    store.put_admin(&ops).await.unwrap();
    assert_eq!(store.console_session("c0ffee").await.unwrap(), None);
    // Logout and a password change end sessions too.
    store.insert_console_session(&s).await.unwrap();
    store.delete_console_sessions_of("ops").await.unwrap();
    assert_eq!(store.console_session("c0ffee").await.unwrap(), None);
    store.insert_console_session(&s).await.unwrap();
    store.delete_console_session("c0ffee").await.unwrap();
    assert_eq!(store.console_session("c0ffee").await.unwrap(), None);
    assert_eq!(store.admins().await.unwrap(), vec![ops]);
    assert!(store.delete_admin("ops").await.unwrap());
}

/// Processes that open one new file at once (`serve` and a `sync status` or `sync run` beside
/// it) all get it at the latest version: each migration step is applied once, by whichever
/// takes the write lock first. Before, the second failed with "table ... already exists".
#[test]
fn openers_at_once_apply_each_step_once() {
    for round in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (path, barrier) = (path.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteStore::open(&path).map(|s| s.version().unwrap())
                })
            })
            .collect();
        for o in openers {
            match o.join().unwrap() {
                Ok(v) => assert_eq!(v, MIGRATIONS.len(), "round {round}"),
                Err(e) => panic!("round {round}: {e}"),
            }
        }
    }
}
