//! [`StateStore`] on an embedded SQLite file (rusqlite, calls on tokio's blocking pool).

use crate::{
    secs, time, Ban, Conn, Failure, Result, Scope, SessionRow, StateError, StateStore, TokenRow,
    KEEP_SYNC_RUNS,
};
use async_trait::async_trait;
use rusqlite::config::DbConfig;
use rusqlite::{params, Connection, OptionalExtension};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The schema, one step per version: `MIGRATIONS[n]` takes a file from version `n` to `n + 1`
/// (`PRAGMA user_version` holds the version). Steps are only ever appended.
pub const MIGRATIONS: &[&str] = &[
    // 1: the brute-force defence.
    "CREATE TABLE bans (
        ip TEXT PRIMARY KEY,
        until INTEGER NOT NULL,
        score INTEGER NOT NULL
     );
     CREATE TABLE login_failures (
        ip TEXT NOT NULL,
        at INTEGER NOT NULL,
        score INTEGER NOT NULL
     );
     CREATE INDEX login_failures_at ON login_failures (at);",
    // 2: the session registry and the admin API's tokens.
    "CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        protocol TEXT NOT NULL,
        client TEXT NOT NULL,
        started INTEGER NOT NULL
     );
     CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('ro', 'rw')),
        hash TEXT NOT NULL,
        created INTEGER NOT NULL
     );",
    // 3: users created through the admin API (their spec is the gateway's JSON).
    "CREATE TABLE users (
        username TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated INTEGER NOT NULL
     );",
    // 4: sync run history (each record is the gateway's JSON), newest last.
    "CREATE TABLE sync_runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        job TEXT NOT NULL,
        ok INTEGER NOT NULL,
        record TEXT NOT NULL
     );
     CREATE INDEX sync_runs_job ON sync_runs (job, id);",
    // 5: admin accounts and their console sessions (crate::admins).
    crate::admins::SQLITE_STEP,
];

/// The embedded store.
pub struct SqliteStore {
    conn: Conn,
}

fn err(e: impl std::fmt::Display) -> StateError {
    StateError(e.to_string())
}

fn ip(s: String) -> rusqlite::Result<IpAddr> {
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl SqliteStore {
    /// Opens `path`, creating it, and brings its schema to the latest version.
    pub fn open(path: &Path) -> Result<SqliteStore> {
        // Another process opening the same new file (`serve` and a `sync status` beside it)
        // can hold it while it switches the file to WAL, which SQLite answers with "locked"
        // without waiting: try again, for a while.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Self::open_once(path) {
                Err(e)
                    if e.0.contains("database is locked")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                r => return r,
            }
        }
    }

    fn open_once(path: &Path) -> Result<SqliteStore> {
        let mut conn =
            Connection::open(path).map_err(|e| StateError(format!("{}: {e}", path.display())))?;
        // First, so that everything below waits for another process (`serve` and a `sync
        // status` beside it open one file at once) instead of failing on its lock.
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        // WAL: readers never wait for the writer; a crash loses no committed transaction.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(err)?;
        // No checkpoint when the connection closes: it fsyncs the WAL and the database, and
        // every `bucketgate sync run` opens and closes the store, so a run with nothing to do
        // waited 0.1–0.8 s there behind the kernel's writeback of what the previous run had
        // stored. The WAL stays beside the file (`state.db-wal`, read by the next open) and
        // SQLite's automatic checkpoint still folds it in every 1,000 pages; a committed
        // transaction survives a crash either way.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .map_err(err)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// The schema version of the open file.
    pub fn version(&self) -> Result<usize> {
        let c = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        version(&c)
    }

    pub(crate) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = conn.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut c)
        })
        .await
        .map_err(err)?
        .map_err(err)
    }
}

fn version(c: &Connection) -> Result<usize> {
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(err)?;
    Ok(v as usize)
}

/// Applies the steps a file lacks, each in its own transaction. A file from a newer gateway is
/// refused rather than used with a schema this one does not know.
fn migrate(conn: &mut Connection) -> Result<()> {
    loop {
        // One step per transaction, begun with the write lock (IMMEDIATE) and the version read
        // under it: of two processes opening one file at once, the second waits and then finds
        // the step done, instead of applying it again ("table already exists").
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(err)?;
        let from = version(&tx)?;
        if from > MIGRATIONS.len() {
            return Err(StateError(format!(
                "the state file has schema version {from}, newer than this gateway's {}",
                MIGRATIONS.len()
            )));
        }
        let Some(step) = MIGRATIONS.get(from) else {
            return Ok(());
        };
        tx.execute_batch(step).map_err(err)?;
        tx.pragma_update(None, "user_version", (from + 1) as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!("state store: schema migrated to version {}", from + 1);
    }
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn put_ban(&self, ban: &Ban) -> Result<()> {
        let (ip, until, score) = (ban.ip.to_string(), secs(ban.until), ban.score);
        self.call(move |c| {
            c.execute(
                "INSERT INTO bans (ip, until, score) VALUES (?1, ?2, ?3)
                 ON CONFLICT (ip) DO UPDATE SET until = excluded.until, score = excluded.score",
                params![ip, until, score],
            )
        })
        .await
        .map(|_| ())
    }

    async fn delete_ban(&self, ip: IpAddr) -> Result<bool> {
        let ip = ip.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM bans WHERE ip = ?1", params![ip])?;
            tx.execute("DELETE FROM login_failures WHERE ip = ?1", params![ip])?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn bans(&self, now: SystemTime) -> Result<Vec<Ban>> {
        let now = secs(now);
        self.call(move |c| {
            c.execute("DELETE FROM bans WHERE until <= ?1", params![now])?;
            let mut st = c.prepare("SELECT ip, until, score FROM bans ORDER BY until")?;
            let rows = st.query_map([], |r| {
                Ok(Ban {
                    ip: ip(r.get(0)?)?,
                    until: time(r.get(1)?),
                    score: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn add_failure(&self, f: &Failure) -> Result<()> {
        let (ip, at, score) = (f.ip.to_string(), secs(f.at), f.score);
        self.call(move |c| {
            c.execute(
                "INSERT INTO login_failures (ip, at, score) VALUES (?1, ?2, ?3)",
                params![ip, at, score],
            )
        })
        .await
        .map(|_| ())
    }

    async fn failures_since(&self, since: SystemTime) -> Result<Vec<Failure>> {
        let since = secs(since);
        self.call(move |c| {
            c.execute("DELETE FROM login_failures WHERE at < ?1", params![since])?;
            let mut st = c.prepare("SELECT ip, at, score FROM login_failures ORDER BY at")?;
            let rows = st.query_map([], |r| {
                Ok(Failure {
                    ip: ip(r.get(0)?)?,
                    at: time(r.get(1)?),
                    score: r.get(2)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn session_opened(&self, s: &SessionRow) -> Result<()> {
        let s = s.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO sessions (id, username, protocol, client, started)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    s.id,
                    s.username,
                    s.protocol,
                    s.client.to_string(),
                    secs(s.started)
                ],
            )
        })
        .await
        .map(|_| ())
    }

    async fn session_closed(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |c| c.execute("DELETE FROM sessions WHERE id = ?1", params![id]))
            .await
            .map(|_| ())
    }

    async fn sessions(&self) -> Result<Vec<SessionRow>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, username, protocol, client, started FROM sessions ORDER BY started, id",
            )?;
            let rows = st.query_map([], |r| {
                Ok(SessionRow {
                    id: r.get(0)?,
                    username: r.get(1)?,
                    protocol: r.get(2)?,
                    client: ip(r.get(3)?)?,
                    started: time(r.get(4)?),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn clear_sessions(&self) -> Result<()> {
        self.call(|c| c.execute("DELETE FROM sessions", []))
            .await
            .map(|_| ())
    }

    async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        let t = t.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO api_tokens (id, name, scope, hash, created) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.id, t.name, t.scope.name(), t.hash, secs(t.created)],
            )
        })
        .await
        .map(|_| ())
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRow>> {
        let id = id.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT id, name, scope, hash, created FROM api_tokens WHERE id = ?1",
                params![id],
                token_row,
            )
            .optional()
        })
        .await
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.call(|c| {
            let mut st = c.prepare(
                "SELECT id, name, scope, hash, created FROM api_tokens ORDER BY created, id",
            )?;
            let rows = st.query_map([], token_row)?;
            rows.collect()
        })
        .await
    }

    async fn delete_token(&self, id: &str) -> Result<bool> {
        let id = id.to_string();
        self.call(move |c| c.execute("DELETE FROM api_tokens WHERE id = ?1", params![id]))
            .await
            .map(|n| n > 0)
    }

    async fn add_sync_run(&self, job: &str, ok: bool, record: &str) -> Result<()> {
        let (job, record) = (job.to_string(), record.to_string());
        self.call(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO sync_runs (job, ok, record) VALUES (?1, ?2, ?3)",
                params![job, ok, record],
            )?;
            tx.execute(
                "DELETE FROM sync_runs WHERE job = ?1 AND id <= (SELECT id FROM sync_runs
                 WHERE job = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                params![job, KEEP_SYNC_RUNS as i64],
            )?;
            tx.commit()
        })
        .await
    }

    async fn sync_runs(&self, job: &str, last: usize) -> Result<Vec<String>> {
        let job = job.to_string();
        let last = last.min(i64::MAX as usize) as i64;
        let mut v: Vec<String> = self
            .call(move |c| {
                let mut st = c.prepare(
                    "SELECT record FROM sync_runs WHERE job = ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                let rows = st.query_map(params![job, last], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        v.reverse();
        Ok(v)
    }

    async fn last_ok_sync_run(&self, job: &str) -> Result<Option<String>> {
        let job = job.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT record FROM sync_runs WHERE job = ?1 AND ok ORDER BY id DESC LIMIT 1",
                params![job],
                |r| r.get(0),
            )
            .optional()
        })
        .await
    }

    async fn sync_jobs(&self) -> Result<Vec<String>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT DISTINCT job FROM sync_runs ORDER BY job")?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
        .await
    }
}

#[async_trait]
impl crate::UserStore for SqliteStore {
    async fn put_user(&self, username: &str, spec: &str) -> Result<()> {
        let (u, s, now) = (
            username.to_string(),
            spec.to_string(),
            secs(SystemTime::now()),
        );
        self.call(move |c| {
            c.execute(
                "INSERT INTO users (username, spec, updated) VALUES (?1, ?2, ?3)
                 ON CONFLICT (username) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
                params![u, s, now],
            )
        })
        .await
        .map(|_| ())
    }

    async fn delete_user(&self, username: &str) -> Result<bool> {
        let u = username.to_string();
        self.call(move |c| c.execute("DELETE FROM users WHERE username = ?1", params![u]))
            .await
            .map(|n| n > 0)
    }

    async fn users(&self) -> Result<Vec<(String, String)>> {
        self.call(|c| {
            let mut st = c.prepare("SELECT username, spec FROM users ORDER BY username")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }
}

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    let scope: String = r.get(2)?;
    Ok(TokenRow {
        id: r.get(0)?,
        name: r.get(1)?,
        // The CHECK constraint allows nothing else.
        scope: Scope::parse(&scope).unwrap_or(Scope::ReadOnly),
        hash: r.get(3)?,
        created: time(r.get(4)?),
    })
}
