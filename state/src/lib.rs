//! The gateway's state store: what must outlive a restart and is not configuration.
//!
//! - bans and failed-login scores (the brute-force defence of `protocols/src/auth.rs`), so a
//!   ban survives a restart;
//! - the registry of live sessions (user, protocol, client address, start), which the admin
//!   API lists;
//! - admin API tokens, stored as SHA-256 digests of their secret part;
//! - users created through the admin API ([`UserStore`]);
//! - sync run history (each run's record is the gateway's JSON, kept as given);
//! - on PostgreSQL, the sync jobs' leases: which instance runs a job now ([`StateStore::lease_create`]
//!   and the calls after it).
//! - admin accounts and their web console sessions ([`AdminStore`]).
//!
//! [`StateStore`] is the interface; [`SqliteStore`] is the embedded implementation (a file in
//! `state_dir`, nothing to install); [`PgStore`] keeps the same tables in PostgreSQL
//! (`state: { url: postgres://... }`), which several instances can share. Times are whole
//! seconds since the Unix epoch.
//!
//! The schema is versioned ([`MIGRATIONS`]); opening a store applies the migrations it lacks,
//! in one transaction each, so an instance started on an older file upgrades it in place.

use async_trait::async_trait;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

mod admins;
mod postgres;
mod sqlite;

pub use admins::{AdminAccount, AdminStore, ConsoleSession};
pub use postgres::{redacted_url, PgStore, PG_MIGRATIONS, SESSION_LEASE};

/// How many runs of one sync job the store keeps (older ones are deleted as new ones come).
pub const KEEP_SYNC_RUNS: usize = 1000;
pub use sqlite::{SqliteStore, MIGRATIONS};

/// A store failure (the database could not be read or written).
#[derive(Debug, thiserror::Error)]
#[error("state store: {0}")]
pub struct StateError(pub String);

/// Result of a store call.
pub type Result<T> = std::result::Result<T, StateError>;

/// A banned address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// The address.
    pub ip: IpAddr,
    /// When the ban ends.
    pub until: SystemTime,
    /// The failure score that earned it.
    pub score: u32,
}

/// One failed login that counts towards a ban.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The client address.
    pub ip: IpAddr,
    /// When it happened.
    pub at: SystemTime,
    /// How much it counts.
    pub score: u32,
}

/// A logged-in session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// Unique id (16 hex digits).
    pub id: String,
    /// The user name.
    pub username: String,
    /// `sftp` or `ftp`.
    pub protocol: String,
    /// The client's address.
    pub client: IpAddr,
    /// When the session logged in.
    pub started: SystemTime,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Read-only: GET requests.
    ReadOnly,
    /// Read-write: every request.
    ReadWrite,
}

impl Scope {
    /// `ro` or `rw`, as stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            Scope::ReadOnly => "ro",
            Scope::ReadWrite => "rw",
        }
    }

    /// Parses `ro` / `rw`.
    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "ro" => Some(Scope::ReadOnly),
            "rw" => Some(Scope::ReadWrite),
            _ => None,
        }
    }
}

/// An admin API token as stored: never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Public id, the part of the token before its secret.
    pub id: String,
    /// A label for people.
    pub name: String,
    /// What it may do.
    pub scope: Scope,
    /// `sha256:<hex>` of the secret part.
    pub hash: String,
    /// When it was created.
    pub created: SystemTime,
}

/// Users created at runtime (the admin API): each is a name and an opaque spec (JSON) that
/// the gateway writes and reads; the store does not interpret it.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates or replaces a user.
    async fn put_user(&self, username: &str, spec: &str) -> Result<()>;
    /// Deletes a user; false when there was none.
    async fn delete_user(&self, username: &str) -> Result<bool>;
    /// Every user, by name.
    async fn users(&self) -> Result<Vec<(String, String)>>;
}

/// The state the gateway keeps outside its config.
#[async_trait]
pub trait StateStore: UserStore + AdminStore + Send + Sync {
    /// True when other instances may use the same store (PostgreSQL): then an instance must
    /// not forget the registry's sessions at start, which may be theirs.
    fn shared(&self) -> bool {
        false
    }

    /// Records (or extends) a ban.
    async fn put_ban(&self, ban: &Ban) -> Result<()>;
    /// Lifts a ban and forgets the address's failures; false when it was not banned.
    async fn delete_ban(&self, ip: IpAddr) -> Result<bool>;
    /// Bans still in force at `now`.
    async fn bans(&self, now: SystemTime) -> Result<Vec<Ban>>;
    /// Records a failed login.
    async fn add_failure(&self, f: &Failure) -> Result<()>;
    /// Failures since `since` (older ones are deleted).
    async fn failures_since(&self, since: SystemTime) -> Result<Vec<Failure>>;

    /// Registers a live session.
    async fn session_opened(&self, s: &SessionRow) -> Result<()>;
    /// Removes a session from the registry.
    async fn session_closed(&self, id: &str) -> Result<()>;
    /// The live sessions, oldest first.
    async fn sessions(&self) -> Result<Vec<SessionRow>>;
    /// Extends the lease of this instance's session rows (a shared store; the gateway calls it
    /// every few seconds). Nothing to do for an embedded store.
    async fn renew_sessions(&self) -> Result<()> {
        Ok(())
    }

    /// The live sessions of the other instances sharing the store (none for an embedded
    /// store).
    async fn other_sessions(&self) -> Result<Vec<SessionRow>> {
        Ok(Vec::new())
    }

    /// Forgets every registered session (an embedded store at start: the previous process's
    /// sessions ended with it).
    async fn clear_sessions(&self) -> Result<()>;

    /// Stores a new token.
    async fn insert_token(&self, t: &TokenRow) -> Result<()>;
    /// A token by id.
    async fn token(&self, id: &str) -> Result<Option<TokenRow>>;
    /// Every token, oldest first.
    async fn tokens(&self) -> Result<Vec<TokenRow>>;
    /// Deletes a token; false when there was none.
    async fn delete_token(&self, id: &str) -> Result<bool>;

    /// Records one run of sync job `job`: `ok` when it succeeded, `record` the gateway's JSON
    /// (kept as given). Only the last [`KEEP_SYNC_RUNS`] runs of a job are kept.
    async fn add_sync_run(&self, job: &str, ok: bool, record: &str) -> Result<()>;
    /// The last `last` runs of `job`, oldest first.
    async fn sync_runs(&self, job: &str, last: usize) -> Result<Vec<String>>;
    /// The last run of `job` that succeeded.
    async fn last_ok_sync_run(&self, job: &str) -> Result<Option<String>>;
    /// Every job with a recorded run, by name.
    async fn sync_jobs(&self) -> Result<Vec<String>>;

    /// Sync leases (a shared store only): creates the lease of `job` holding `body` unless one
    /// exists; `Some(version)` (a tag naming this write), or `None` when one exists. Atomic:
    /// of two instances creating at once, one gets `None`.
    async fn lease_create(&self, job: &str, body: &[u8]) -> Result<Option<String>> {
        let _ = (job, body);
        Err(no_leases())
    }
    /// The lease of `job` and its version, if there is one.
    async fn lease_read(&self, job: &str) -> Result<Option<(Vec<u8>, String)>> {
        let _ = job;
        Err(no_leases())
    }
    /// Replaces the lease of `job` only if it is still at `version` (compare-and-swap, in one
    /// statement): `Some(new version)`, or `None` when it changed or vanished.
    async fn lease_replace(&self, job: &str, version: &str, body: &[u8]) -> Result<Option<String>> {
        let _ = (job, version, body);
        Err(no_leases())
    }
    /// Deletes the lease of `job` only if it is still at `version`; false when it was not.
    async fn lease_delete(&self, job: &str, version: &str) -> Result<bool> {
        let _ = (job, version);
        Err(no_leases())
    }
}

fn no_leases() -> StateError {
    StateError("this store keeps no sync leases (only a shared PostgreSQL store does)".into())
}

/// The embedded store's file under `state_dir`.
pub fn sqlite_path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.db")
}

/// Opens (creating and migrating) the store of `state_dir`.
pub async fn open(state_dir: &Path) -> Result<Arc<dyn StateStore>> {
    let path = sqlite_path(state_dir);
    let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
        .await
        .map_err(|e| StateError(e.to_string()))??;
    Ok(Arc::new(store))
}

/// Opens the store the config names: PostgreSQL at `url` when given, else the embedded file
/// of `state_dir`. Errors never show a password the URL carries.
pub async fn open_store(state_dir: &Path, url: Option<&str>) -> Result<Arc<dyn StateStore>> {
    match url {
        Some(url) => Ok(Arc::new(PgStore::open(url).await?)),
        None => open(state_dir).await,
    }
}

pub(crate) fn secs(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn time(s: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s.max(0) as u64)
}

/// Shares one connection between blocking-pool tasks.
pub(crate) type Conn = Arc<Mutex<rusqlite::Connection>>;
