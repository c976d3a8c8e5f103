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
