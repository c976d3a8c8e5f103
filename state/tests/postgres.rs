//! The PostgreSQL store, on a server of the test's own (testkit::postgres).

use bucketgate_state::{PgStore, StateStore, UserStore, PG_MIGRATIONS};
use bucketgate_testkit::postgres::Postgres;

/// A fresh database gets the whole schema; the store keeps and forgets what the embedded one
/// does; a second store on the same database (another instance) sees the first one's rows and
/// applies no migration again.
#[tokio::test]
async fn the_postgres_store_keeps_what_the_embedded_one_keeps() {
    let pg = Postgres::start();
    let store = PgStore::open(&pg.url()).await.unwrap();
    assert_eq!(store.version().await.unwrap(), PG_MIGRATIONS.len());
    assert!(store.shared());
    crate::store::exercise(&store).await;

    store.put_user("carol", "{\"home\":\"/c\"}").await.unwrap();
    let other = PgStore::open(&pg.url()).await.unwrap();
    assert_eq!(other.version().await.unwrap(), PG_MIGRATIONS.len());
    assert_eq!(
        other.users().await.unwrap(),
        vec![("carol".to_string(), "{\"home\":\"/c\"}".to_string())]
    );
}

/// Two instances starting together on an empty database: the advisory lock lets one apply
/// the schema, the other finds it done (neither fails on an existing table).
#[tokio::test]
async fn two_instances_migrating_at_once_both_open() {
    let pg = Postgres::start();
    let url = pg.url();
    let (a, b) = tokio::join!(PgStore::open(&url), PgStore::open(&url));
    assert_eq!(a.unwrap().version().await.unwrap(), PG_MIGRATIONS.len());
    assert_eq!(b.unwrap().version().await.unwrap(), PG_MIGRATIONS.len());
}

/// A URL carrying a password: the password shows in no error (here, the server refuses the
/// database name), and the store's own rendering of the URL omits it.
#[tokio::test]
async fn a_password_in_the_url_never_shows_in_errors() {
    let pg = Postgres::start();
    let url = format!(
        "postgres://bucketgate:hunter2secret@127.0.0.1:{}/no_such_db",
        pg.port()
    );
    let e = PgStore::open(&url).await.err().expect("no such database");
    let shown = e.to_string();
    println!("{shown}");
    assert!(!shown.contains("hunter2secret"), "{shown}");
    assert!(
        shown.contains("postgres://bucketgate@127.0.0.1:"),
        "the error names the server: {shown}"
    );
    let e = PgStore::open("postgres://u:hunter2secret@[::1/db")
        .await
        .err()
        .expect("malformed");
    assert!(!e.to_string().contains("hunter2secret"), "{e}");
}

/// The sync lease's compare-and-swap on PostgreSQL, between two instances (two pools): of two
/// creations at once exactly one wins, every round; a replace or delete with a stale version
/// changes nothing; the winner's version moves on with each write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sync_leases_have_exactly_one_holder() {
    let pg = Postgres::start();
    let a = std::sync::Arc::new(PgStore::open(&pg.url()).await.unwrap());
    let b = std::sync::Arc::new(PgStore::open(&pg.url()).await.unwrap());
    for round in 0..50 {
        let job = format!("job{round}");
        let (ra, rb) = tokio::join!(
            {
                let (a, job) = (a.clone(), job.clone());
                tokio::spawn(async move { a.lease_create(&job, b"a").await.unwrap() })
            },
            {
                let (b, job) = (b.clone(), job.clone());
                tokio::spawn(async move { b.lease_create(&job, b"b").await.unwrap() })
            }
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            ra.is_some() != rb.is_some(),
            "round {round}: both or neither took the lease ({ra:?}, {rb:?})"
        );
        let (holder, version) = if let Some(v) = ra {
            (b"a", v)
        } else {
            (b"b", rb.unwrap())
        };
        let (body, v) = b.lease_read(&job).await.unwrap().unwrap();
        assert_eq!((body.as_slice(), &v), (&holder[..], &version));
        // Two instances replacing the same version at once (a takeover race): one wins.
        let (x, y) = tokio::join!(
            a.lease_replace(&job, &version, b"x"),
            b.lease_replace(&job, &version, b"y")
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(x.is_some() != y.is_some(), "round {round}: {x:?} {y:?}");
        let now = x.or(y).unwrap();
        assert_ne!(now, version);
        assert!(
            !a.lease_delete(&job, &version).await.unwrap(),
            "stale delete"
        );
        assert!(a.lease_delete(&job, &now).await.unwrap());
        assert_eq!(a.lease_read(&job).await.unwrap(), None);
        assert_eq!(a.lease_replace(&job, &now, b"z").await.unwrap(), None);
    }
}
