//! [`StateStore`] on PostgreSQL (tokio-postgres through a deadpool-postgres pool), for several
//! instances sharing one store.
//!
//! The schema follows the embedded one ([`MIGRATIONS`]); its version is the one row of
//! `schema_version`. Migrations run in one transaction holding an advisory lock, so two
//! instances starting together do not both apply a step.

use crate::{
    secs, time, Ban, Failure, Result, Scope, SessionRow, StateError, StateStore, TokenRow,
    UserStore, KEEP_SYNC_RUNS,
};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::net::IpAddr;
use std::time::SystemTime;
use tokio_postgres::NoTls;

/// The schema, one step per version (`schema_version.version` holds how many were applied).
/// Steps are only ever appended.
pub const PG_MIGRATIONS: &[&str] = &[
    // 1: the tables of the embedded store's versions 1 to 3.
    "CREATE TABLE bans (
        ip TEXT PRIMARY KEY,
        until BIGINT NOT NULL,
        score BIGINT NOT NULL
     );
     CREATE TABLE login_failures (
        ip TEXT NOT NULL,
        at BIGINT NOT NULL,
        score BIGINT NOT NULL
     );
     CREATE INDEX login_failures_at ON login_failures (at);
     CREATE TABLE sessions (
        id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        protocol TEXT NOT NULL,
        client TEXT NOT NULL,
        started BIGINT NOT NULL
     );
     CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('ro', 'rw')),
        hash TEXT NOT NULL,
        created BIGINT NOT NULL
     );
     CREATE TABLE users (
        username TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        updated BIGINT NOT NULL
     );",
    // 2: each session row names its instance and holds a lease that the instance renews; a
    // row whose lease ran out (its instance was killed) is deleted at the next listing.
    "ALTER TABLE sessions ADD COLUMN instance TEXT NOT NULL DEFAULT '';
     ALTER TABLE sessions ADD COLUMN lease_until BIGINT NOT NULL DEFAULT 0;",
    // 3: sync run history (the embedded store's version 4), and the sync jobs' leases: one row
    // per job while an instance runs it, replaced only by compare-and-swap on `version`.
    "CREATE TABLE sync_runs (
        id BIGSERIAL PRIMARY KEY,
        job TEXT NOT NULL,
        ok BOOLEAN NOT NULL,
        record TEXT NOT NULL
     );
     CREATE INDEX sync_runs_job ON sync_runs (job, id);
     CREATE TABLE sync_leases (
        job TEXT PRIMARY KEY,
        body BYTEA NOT NULL,
        version TEXT NOT NULL
     );",
    // 4: admin accounts and their console sessions (crate::admins).
    crate::admins::PG_STEP,
];

/// A new lease version, made by the server: distinct for every write.
const NEW_VERSION: &str = "md5(random()::text || clock_timestamp()::text || txid_current()::text)";

/// How long a session row lives without its instance renewing it (the gateway renews every
/// few seconds, see [`StateStore::renew_sessions`]).
pub const SESSION_LEASE: std::time::Duration = std::time::Duration::from_secs(15);

/// The advisory lock key that serialises migrations ("bgstate" in ASCII).
const MIGRATION_LOCK: i64 = 0x0062_6773_7461_7465;

/// The shared store.
pub struct PgStore {
    pool: Pool,
    /// This process's id in the session registry.
    instance: String,
    /// The URL without its password, for messages.
    shown: String,
}

/// `postgres://user@host:port/db`: what a message may show of a URL (never its password).
pub fn redacted_url(cfg: &tokio_postgres::Config) -> String {
    let host = cfg
        .get_hosts()
        .first()
        .map(|h| match h {
            tokio_postgres::config::Host::Tcp(s) => s.clone(),
            tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .unwrap_or_default();
    let port = cfg
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let user = cfg.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    let db = cfg.get_dbname().unwrap_or("");
    format!("postgres://{user}{host}{port}/{db}")
}

fn ip(s: &str) -> Result<IpAddr> {
    s.parse()
        .map_err(|_| StateError(format!("a stored address is not an address: {s:?}")))
}

impl PgStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/db`) and brings the schema
    /// to the latest version. Errors never show the password.
    pub async fn open(url: &str) -> Result<PgStore> {
        let cfg: tokio_postgres::Config = url.parse().map_err(|_| {
            StateError("state.url is not a valid postgres:// connection URL".into())
        })?;
        let shown = redacted_url(&cfg);
        let mgr = Manager::from_config(
            cfg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(mgr)
            .max_size(8)
            .build()
            .map_err(|e| StateError(format!("{shown}: {e}")))?;
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let instance = format!("{:x}-{:x}", std::process::id(), nanos);
        let store = PgStore {
            pool,
            shown,
            instance,
        };
        store.migrate().await?;
        Ok(store)
    }

    /// The URL as messages show it (no password).
    pub fn shown_url(&self) -> &str {
        &self.shown
    }

    /// An error with its causes (the driver's own message is only "db error"; the server's
    /// reason is its source).
    fn err(&self, e: impl std::fmt::Display) -> StateError {
        StateError(format!("{}: {e}", self.shown))
    }

    pub(crate) fn db_err(&self, e: &(dyn std::error::Error + 'static)) -> StateError {
        let mut text = e.to_string();
        let mut cause = e.source();
        while let Some(c) = cause {
            let part = c.to_string();
            if !text.ends_with(&part) {
                text.push_str(": ");
                text.push_str(&part);
            }
            cause = c.source();
        }
        self.err(text)
    }

    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| self.db_err(&e))
    }

    /// The schema version of the database.
    pub async fn version(&self) -> Result<usize> {
        let c = self.client().await?;
        let row = c
            .query_opt("SELECT version FROM schema_version", &[])
            .await
            .map_err(|e| self.db_err(&e))?;
        Ok(row.map(|r| r.get::<_, i32>(0) as usize).unwrap_or(0))
    }

    async fn migrate(&self) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.db_err(&e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(|e| self.db_err(&e))?;
        // The server's notice that the table exists would be logged on every start.
        tx.batch_execute(
            "SET LOCAL client_min_messages = warning;
             CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
        )
        .await
        .map_err(|e| self.db_err(&e))?;
        let from = tx
            .query_opt("SELECT version FROM schema_version", &[])
            .await
            .map_err(|e| self.db_err(&e))?
            .map(|r| r.get::<_, i32>(0) as usize);
        let start = from.unwrap_or(0);
        if start > PG_MIGRATIONS.len() {
            return Err(self.err(format!(
                "the database has schema version {start}, newer than this gateway's {}",
                PG_MIGRATIONS.len()
            )));
        }
        for step in &PG_MIGRATIONS[start..] {
            tx.batch_execute(step).await.map_err(|e| self.db_err(&e))?;
        }
        let to = PG_MIGRATIONS.len() as i32;
        if from.is_none() {
            tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&to])
                .await
                .map_err(|e| self.db_err(&e))?;
        } else {
            tx.execute("UPDATE schema_version SET version = $1", &[&to])
                .await
                .map_err(|e| self.db_err(&e))?;
        }
        tx.commit().await.map_err(|e| self.db_err(&e))?;
        if start < PG_MIGRATIONS.len() {
            tracing::info!("state store: schema migrated to version {to}");
        }
        Ok(())
    }

    pub(crate) async fn execute(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<u64> {
        let c = self.client().await?;
        c.execute(sql, args).await.map_err(|e| self.db_err(&e))
    }

    pub(crate) async fn query(
        &self,
        sql: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>> {
        let c = self.client().await?;
        c.query(sql, args).await.map_err(|e| self.db_err(&e))
    }
}

#[async_trait]
impl StateStore for PgStore {
    fn shared(&self) -> bool {
        true
    }

    async fn put_ban(&self, ban: &Ban) -> Result<()> {
        self.execute(
            "INSERT INTO bans (ip, until, score) VALUES ($1, $2, $3)
             ON CONFLICT (ip) DO UPDATE SET until = excluded.until, score = excluded.score",
            &[&ban.ip.to_string(), &secs(ban.until), &(ban.score as i64)],
        )
        .await
        .map(|_| ())
    }

    async fn delete_ban(&self, ip: IpAddr) -> Result<bool> {
        let ip = ip.to_string();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.db_err(&e))?;
        let n = tx
            .execute("DELETE FROM bans WHERE ip = $1", &[&ip])
            .await
            .map_err(|e| self.db_err(&e))?;
        tx.execute("DELETE FROM login_failures WHERE ip = $1", &[&ip])
            .await
            .map_err(|e| self.db_err(&e))?;
        tx.commit().await.map_err(|e| self.db_err(&e))?;
        Ok(n > 0)
    }

    async fn bans(&self, now: SystemTime) -> Result<Vec<Ban>> {
        let now = secs(now);
        self.execute("DELETE FROM bans WHERE until <= $1", &[&now])
            .await?;
        self.query("SELECT ip, until, score FROM bans ORDER BY until, ip", &[])
            .await?
            .iter()
            .map(|r| {
                Ok(Ban {
                    ip: ip(r.get(0))?,
                    until: time(r.get(1)),
                    score: r.get::<_, i64>(2) as u32,
                })
            })
            .collect()
    }

    async fn add_failure(&self, f: &Failure) -> Result<()> {
        self.execute(
            "INSERT INTO login_failures (ip, at, score) VALUES ($1, $2, $3)",
            &[&f.ip.to_string(), &secs(f.at), &(f.score as i64)],
        )
        .await
        .map(|_| ())
    }

    async fn failures_since(&self, since: SystemTime) -> Result<Vec<Failure>> {
        let since = secs(since);
        self.execute("DELETE FROM login_failures WHERE at < $1", &[&since])
            .await?;
        self.query("SELECT ip, at, score FROM login_failures ORDER BY at", &[])
            .await?
            .iter()
            .map(|r| {
                Ok(Failure {
                    ip: ip(r.get(0))?,
                    at: time(r.get(1)),
                    score: r.get::<_, i64>(2) as u32,
                })
            })
            .collect()
    }

    async fn renew_sessions(&self) -> Result<()> {
        let until = secs(SystemTime::now() + SESSION_LEASE);
        self.execute(
            "UPDATE sessions SET lease_until = $1 WHERE instance = $2",
            &[&until, &self.instance],
        )
        .await
        .map(|_| ())
    }

    async fn session_opened(&self, s: &SessionRow) -> Result<()> {
        let until = secs(SystemTime::now() + SESSION_LEASE);
        self.execute(
            "INSERT INTO sessions (id, username, protocol, client, started, instance, lease_until)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &s.id,
                &s.username,
                &s.protocol,
                &s.client.to_string(),
                &secs(s.started),
                &self.instance,
                &until,
            ],
        )
        .await
        .map(|_| ())
    }

    async fn session_closed(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM sessions WHERE id = $1", &[&id])
            .await
            .map(|_| ())
    }

    async fn sessions(&self) -> Result<Vec<SessionRow>> {
        // Rows of an instance that stopped renewing them (killed) go first.
        self.execute(
            "DELETE FROM sessions WHERE lease_until < $1",
            &[&secs(SystemTime::now())],
        )
        .await?;
        self.query(
            "SELECT id, username, protocol, client, started FROM sessions ORDER BY started, id",
            &[],
        )
        .await?
        .iter()
        .map(session_row)
        .collect()
    }

    async fn other_sessions(&self) -> Result<Vec<SessionRow>> {
        self.query(
            "SELECT id, username, protocol, client, started FROM sessions
             WHERE instance <> $1 AND lease_until >= $2 ORDER BY started, id",
            &[&self.instance, &secs(SystemTime::now())],
        )
        .await?
        .iter()
        .map(session_row)
        .collect()
    }

    async fn clear_sessions(&self) -> Result<()> {
        // Only this instance's rows: the others' sessions are alive.
        self.execute(
            "DELETE FROM sessions WHERE instance = $1",
            &[&self.instance],
        )
        .await
        .map(|_| ())
    }

    async fn insert_token(&self, t: &TokenRow) -> Result<()> {
        self.execute(
            "INSERT INTO api_tokens (id, name, scope, hash, created) VALUES ($1, $2, $3, $4, $5)",
            &[&t.id, &t.name, &t.scope.name(), &t.hash, &secs(t.created)],
        )
        .await
        .map(|_| ())
    }

    async fn token(&self, id: &str) -> Result<Option<TokenRow>> {
        Ok(self
            .query(
                "SELECT id, name, scope, hash, created FROM api_tokens WHERE id = $1",
                &[&id],
            )
            .await?
            .first()
            .map(token_row))
    }

    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        Ok(self
            .query(
                "SELECT id, name, scope, hash, created FROM api_tokens ORDER BY created, id",
                &[],
            )
            .await?
            .iter()
            .map(token_row)
            .collect())
    }

    async fn delete_token(&self, id: &str) -> Result<bool> {
        self.execute("DELETE FROM api_tokens WHERE id = $1", &[&id])
            .await
            .map(|n| n > 0)
    }

    async fn add_sync_run(&self, job: &str, ok: bool, record: &str) -> Result<()> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.db_err(&e))?;
        tx.execute(
            "INSERT INTO sync_runs (job, ok, record) VALUES ($1, $2, $3)",
            &[&job, &ok, &record],
        )
        .await
        .map_err(|e| self.db_err(&e))?;
        tx.execute(
            "DELETE FROM sync_runs WHERE job = $1 AND id <= (SELECT id FROM sync_runs
             WHERE job = $1 ORDER BY id DESC LIMIT 1 OFFSET $2)",
            &[&job, &(KEEP_SYNC_RUNS as i64)],
        )
        .await
        .map_err(|e| self.db_err(&e))?;
        tx.commit().await.map_err(|e| self.db_err(&e))
    }

    async fn sync_runs(&self, job: &str, last: usize) -> Result<Vec<String>> {
        let last = last.min(i64::MAX as usize) as i64;
        let mut v: Vec<String> = self
            .query(
                "SELECT record FROM sync_runs WHERE job = $1 ORDER BY id DESC LIMIT $2",
                &[&job, &last],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        v.reverse();
        Ok(v)
    }

    async fn last_ok_sync_run(&self, job: &str) -> Result<Option<String>> {
        Ok(self
            .query(
                "SELECT record FROM sync_runs WHERE job = $1 AND ok ORDER BY id DESC LIMIT 1",
                &[&job],
            )
            .await?
            .first()
            .map(|r| r.get(0)))
    }

    async fn sync_jobs(&self) -> Result<Vec<String>> {
        Ok(self
            .query("SELECT DISTINCT job FROM sync_runs ORDER BY job", &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    async fn lease_create(&self, job: &str, body: &[u8]) -> Result<Option<String>> {
        // One statement: of two instances inserting at once, the second waits for the first
        // and then inserts nothing.
        Ok(self
            .query(
                &format!(
                    "INSERT INTO sync_leases (job, body, version) VALUES ($1, $2, {NEW_VERSION})
                     ON CONFLICT (job) DO NOTHING RETURNING version"
                ),
                &[&job, &body],
            )
            .await?
            .first()
            .map(|r| r.get(0)))
    }

    async fn lease_read(&self, job: &str) -> Result<Option<(Vec<u8>, String)>> {
        Ok(self
            .query(
                "SELECT body, version FROM sync_leases WHERE job = $1",
                &[&job],
            )
            .await?
            .first()
            .map(|r| (r.get(0), r.get(1))))
    }

    async fn lease_replace(&self, job: &str, version: &str, body: &[u8]) -> Result<Option<String>> {
        // The row lock makes this a compare-and-swap: a second UPDATE waiting on the first
        // re-reads the row, finds another version and changes nothing.
        Ok(self
            .query(
                &format!(
                    "UPDATE sync_leases SET body = $3, version = {NEW_VERSION}
                     WHERE job = $1 AND version = $2 RETURNING version"
                ),
                &[&job, &version, &body],
            )
            .await?
            .first()
            .map(|r| r.get(0)))
    }

    async fn lease_delete(&self, job: &str, version: &str) -> Result<bool> {
        self.execute(
            "DELETE FROM sync_leases WHERE job = $1 AND version = $2",
            &[&job, &version],
        )
        .await
        .map(|n| n > 0)
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn put_user(&self, username: &str, spec: &str) -> Result<()> {
        self.execute(
            "INSERT INTO users (username, spec, updated) VALUES ($1, $2, $3)
             ON CONFLICT (username) DO UPDATE SET spec = excluded.spec, updated = excluded.updated",
            &[&username, &spec, &secs(SystemTime::now())],
        )
        .await
        .map(|_| ())
    }

    async fn delete_user(&self, username: &str) -> Result<bool> {
        self.execute("DELETE FROM users WHERE username = $1", &[&username])
            .await
            .map(|n| n > 0)
    }

    async fn users(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .query("SELECT username, spec FROM users ORDER BY username", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}

fn session_row(r: &tokio_postgres::Row) -> Result<SessionRow> {
    Ok(SessionRow {
        id: r.get(0),
        username: r.get(1),
        protocol: r.get(2),
        client: ip(r.get(3))?,
        started: time(r.get(4)),
    })
}

fn token_row(r: &tokio_postgres::Row) -> TokenRow {
    let scope: String = r.get(2);
    TokenRow {
        id: r.get(0),
        name: r.get(1),
        // The CHECK constraint allows nothing else.
        scope: Scope::parse(&scope).unwrap_or(Scope::ReadOnly),
        hash: r.get(3),
        created: time(r.get(4)),
    }
}
