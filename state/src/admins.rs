//! Admin accounts (people who log in to the web console) and their console sessions.
//!
//! An account is a name, a scope and an argon2id PHC hash of its password (made on the host by
//! `bucketgate admin account create`); the store never sees a password. A console session is
//! what a successful login's cookie names: a public id, the SHA-256 of its 256-bit secret (as
//! for API tokens), the CSRF token the console sends with each change, and its end. Looking a
//! session up joins its account, so a deleted account's sessions stop at once and a changed
//! scope applies to the next request.

use crate::{secs, time, Result, Scope, SqliteStore};
use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};
use std::time::SystemTime;

/// An admin account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAccount {
    /// Login name.
    pub name: String,
    /// What it may do through the API.
    pub scope: Scope,
    /// argon2id PHC string of its password.
    pub hash: String,
    /// When it was created.
    pub created: SystemTime,
}

/// A console login, as stored (never the cookie's secret itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleSession {
    /// Public id, the part of the cookie before its secret.
    pub id: String,
    /// The account it logged in as.
    pub account: String,
    /// `sha256:<hex>` of the cookie's secret.
    pub hash: String,
    /// The token a change must carry in `X-CSRF-Token`.
    pub csrf: String,
    /// When it ends.
    pub expires: SystemTime,
}

/// Admin accounts and console sessions.
#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Creates an account, or replaces the one of that name (a new password or scope).
    async fn put_admin(&self, a: &AdminAccount) -> Result<()>;
    /// An account by name.
    async fn admin(&self, name: &str) -> Result<Option<AdminAccount>>;
    /// Every account, by name.
    async fn admins(&self) -> Result<Vec<AdminAccount>>;
    /// Deletes an account and its console sessions; false when there was none.
    async fn delete_admin(&self, name: &str) -> Result<bool>;
    /// Stores a new console session.
    async fn insert_console_session(&self, s: &ConsoleSession) -> Result<()>;
    /// A console session by id, with its account (as it is now); sessions that ended are
    /// deleted first, so an ended one is None.
    async fn console_session(&self, id: &str) -> Result<Option<(ConsoleSession, AdminAccount)>>;
    /// Ends a console session (logout).
    async fn delete_console_session(&self, id: &str) -> Result<()>;
    /// Ends every console session of an account (its password changed).
    async fn delete_console_sessions_of(&self, account: &str) -> Result<()>;
}

/// SQLite schema step: accounts and console sessions.
pub(crate) const SQLITE_STEP: &str = "CREATE TABLE admin_accounts (
        name TEXT PRIMARY KEY,
        scope TEXT NOT NULL CHECK (scope IN ('ro', 'rw')),
        hash TEXT NOT NULL,
        created INTEGER NOT NULL
     );
     CREATE TABLE console_sessions (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        hash TEXT NOT NULL,
        csrf TEXT NOT NULL,
        expires INTEGER NOT NULL
     );";

/// PostgreSQL schema step: the same tables.
pub(crate) const PG_STEP: &str = "CREATE TABLE admin_accounts (
        name TEXT PRIMARY KEY,
        scope TEXT NOT NULL CHECK (scope IN ('ro', 'rw')),
        hash TEXT NOT NULL,
        created BIGINT NOT NULL
     );
     CREATE TABLE console_sessions (
        id TEXT PRIMARY KEY,
        account TEXT NOT NULL,
        hash TEXT NOT NULL,
        csrf TEXT NOT NULL,
        expires BIGINT NOT NULL
     );";

fn scope(s: &str) -> Scope {
    // The CHECK constraint allows nothing else.
    Scope::parse(s).unwrap_or(Scope::ReadOnly)
}

fn sqlite_account(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<AdminAccount> {
    Ok(AdminAccount {
        name: r.get(at)?,
        scope: scope(&r.get::<_, String>(at + 1)?),
        hash: r.get(at + 2)?,
        created: time(r.get(at + 3)?),
    })
}

#[async_trait]
impl AdminStore for SqliteStore {
    async fn put_admin(&self, a: &AdminAccount) -> Result<()> {
        let a = a.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO admin_accounts (name, scope, hash, created) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET scope = excluded.scope, hash = excluded.hash",
                params![a.name, a.scope.name(), a.hash, secs(a.created)],
            )
        })
        .await
        .map(|_| ())
    }

    async fn admin(&self, name: &str) -> Result<Option<AdminAccount>> {
        let name = name.to_string();
        self.call(move |c| {
            c.query_row(
                "SELECT name, scope, hash, created FROM admin_accounts WHERE name = ?1",
                params![name],
                |r| sqlite_account(r, 0),
            )
            .optional()
        })
        .await
    }

    async fn admins(&self) -> Result<Vec<AdminAccount>> {
        self.call(|c| {
            let mut st =
                c.prepare("SELECT name, scope, hash, created FROM admin_accounts ORDER BY name")?;
            let rows = st.query_map([], |r| sqlite_account(r, 0))?;
            rows.collect()
        })
        .await
    }

    async fn delete_admin(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.call(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM admin_accounts WHERE name = ?1", params![name])?;
            tx.execute(
                "DELETE FROM console_sessions WHERE account = ?1",
                params![name],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn insert_console_session(&self, s: &ConsoleSession) -> Result<()> {
        let s = s.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO console_sessions (id, account, hash, csrf, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![s.id, s.account, s.hash, s.csrf, secs(s.expires)],
            )
        })
        .await
        .map(|_| ())
    }

    async fn console_session(&self, id: &str) -> Result<Option<(ConsoleSession, AdminAccount)>> {
        let (id, now) = (id.to_string(), secs(SystemTime::now()));
        self.call(move |c| {
            c.execute(
                "DELETE FROM console_sessions WHERE expires <= ?1",
                params![now],
            )?;
            c.query_row(
                "SELECT s.id, s.account, s.hash, s.csrf, s.expires,
                        a.name, a.scope, a.hash, a.created
                 FROM console_sessions s JOIN admin_accounts a ON a.name = s.account
                 WHERE s.id = ?1",
                params![id],
                |r| {
                    Ok((
                        ConsoleSession {
                            id: r.get(0)?,
                            account: r.get(1)?,
                            hash: r.get(2)?,
                            csrf: r.get(3)?,
                            expires: time(r.get(4)?),
                        },
                        sqlite_account(r, 5)?,
                    ))
                },
            )
            .optional()
        })
        .await
    }

    async fn delete_console_session(&self, id: &str) -> Result<()> {
        let id = id.to_string();
        self.call(move |c| c.execute("DELETE FROM console_sessions WHERE id = ?1", params![id]))
            .await
            .map(|_| ())
    }

    async fn delete_console_sessions_of(&self, account: &str) -> Result<()> {
        let a = account.to_string();
        self.call(move |c| {
            c.execute(
                "DELETE FROM console_sessions WHERE account = ?1",
                params![a],
            )
        })
        .await
        .map(|_| ())
    }
}

fn pg_account(r: &tokio_postgres::Row, at: usize) -> AdminAccount {
    AdminAccount {
        name: r.get(at),
        scope: scope(r.get(at + 1)),
        hash: r.get(at + 2),
        created: time(r.get(at + 3)),
    }
}

#[async_trait]
impl AdminStore for crate::PgStore {
    async fn put_admin(&self, a: &AdminAccount) -> Result<()> {
        self.execute(
            "INSERT INTO admin_accounts (name, scope, hash, created) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET scope = excluded.scope, hash = excluded.hash",
            &[&a.name, &a.scope.name(), &a.hash, &secs(a.created)],
        )
        .await
        .map(|_| ())
    }

    async fn admin(&self, name: &str) -> Result<Option<AdminAccount>> {
        Ok(self
            .query(
                "SELECT name, scope, hash, created FROM admin_accounts WHERE name = $1",
                &[&name],
            )
            .await?
            .first()
            .map(|r| pg_account(r, 0)))
    }

    async fn admins(&self) -> Result<Vec<AdminAccount>> {
        Ok(self
            .query(
                "SELECT name, scope, hash, created FROM admin_accounts ORDER BY name",
                &[],
            )
            .await?
            .iter()
            .map(|r| pg_account(r, 0))
            .collect())
    }

    async fn delete_admin(&self, name: &str) -> Result<bool> {
        // One transaction: an account made again under the name never finds old sessions.
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(|e| self.db_err(&e))?;
        let n = tx
            .execute("DELETE FROM admin_accounts WHERE name = $1", &[&name])
            .await
            .map_err(|e| self.db_err(&e))?;
        tx.execute("DELETE FROM console_sessions WHERE account = $1", &[&name])
            .await
            .map_err(|e| self.db_err(&e))?;
        tx.commit().await.map_err(|e| self.db_err(&e))?;
        Ok(n > 0)
    }

    async fn insert_console_session(&self, s: &ConsoleSession) -> Result<()> {
        self.execute(
            "INSERT INTO console_sessions (id, account, hash, csrf, expires)
             VALUES ($1, $2, $3, $4, $5)",
            &[&s.id, &s.account, &s.hash, &s.csrf, &secs(s.expires)],
        )
        .await
        .map(|_| ())
    }

    async fn console_session(&self, id: &str) -> Result<Option<(ConsoleSession, AdminAccount)>> {
        self.execute(
            "DELETE FROM console_sessions WHERE expires <= $1",
            &[&secs(SystemTime::now())],
        )
        .await?;
        Ok(self
            .query(
                "SELECT s.id, s.account, s.hash, s.csrf, s.expires,
                        a.name, a.scope, a.hash, a.created
                 FROM console_sessions s JOIN admin_accounts a ON a.name = s.account
                 WHERE s.id = $1",
                &[&id],
            )
            .await?
            .first()
            .map(|r| {
                (
                    ConsoleSession {
                        id: r.get(0),
                        account: r.get(1),
                        hash: r.get(2),
                        csrf: r.get(3),
                        expires: time(r.get(4)),
                    },
                    pg_account(r, 5),
                )
            }))
    }

    async fn delete_console_session(&self, id: &str) -> Result<()> {
        self.execute("DELETE FROM console_sessions WHERE id = $1", &[&id])
            .await
            .map(|_| ())
    }

    async fn delete_console_sessions_of(&self, account: &str) -> Result<()> {
        self.execute(
            "DELETE FROM console_sessions WHERE account = $1",
            &[&account],
        )
        .await
        .map(|_| ())
    }
}
