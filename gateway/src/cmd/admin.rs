//! `bucketgate admin token create|list|revoke`: the admin API's tokens, and `bucketgate admin
//! account create|list|delete|passwd`: the web console's accounts, in the config's state
//! store (`state.url`'s PostgreSQL, else the SQLite file of `state_dir`; works while the
//! gateway runs: both serialise the writers).

use crate::wiring::{self, Source};
use crate::{ConfigArg, Exit};
use bucketgate_state::{AdminAccount, Scope};
use std::path::PathBuf;

/// The config's `state_dir` and `state.url`.
fn state_dir(arg: &ConfigArg) -> Result<(PathBuf, Option<String>), Exit> {
    Ok(match wiring::source(arg)? {
        Source::File(p) => {
            let c = wiring::load(&p)?.config;
            (c.state_dir, c.state.map(|s| s.url.expose().to_string()))
        }
        Source::Embedded => {
            let cwd = std::env::current_dir().map_err(|e| Exit::runtime(e.to_string()))?;
            (bucketgate_config::embedded_default(&cwd).state_dir, None)
        }
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::runtime(e.to_string()))
}

async fn store(
    (dir, url): &(PathBuf, Option<String>),
) -> Result<std::sync::Arc<dyn bucketgate_state::StateStore>, Exit> {
    if url.is_none() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Exit::runtime(format!("cannot create {}: {e}", dir.display())))?;
    }
    bucketgate_state::open_store(dir, url.as_deref())
        .await
        .map_err(|e| Exit::runtime(e.to_string()))
}

/// Creates a token and prints it, once, on stdout.
pub fn create(arg: &ConfigArg, scope: &str, name: &str) -> Result<(), Exit> {
    let scope = Scope::parse(scope)
        .ok_or_else(|| Exit::usage(format!("--scope must be ro or rw, not {scope:?}")))?;
    let dir = state_dir(arg)?;
    runtime()?.block_on(async {
        let store = store(&dir).await?;
        let (row, token) = crate::api::tokens::create(store.as_ref(), name, scope)
            .await
            .map_err(|e| Exit::runtime(e.to_string()))?;
        eprintln!(
            "token {} ({}, scope {}) created; it is shown only this once:",
            row.id,
            row.name,
            scope.name()
        );
        println!("{token}");
        Ok(())
    })
}

/// Lists the tokens (ids, names, scopes; never secrets).
pub fn list(arg: &ConfigArg) -> Result<(), Exit> {
    let dir = state_dir(arg)?;
    runtime()?.block_on(async {
        let store = store(&dir).await?;
        let rows = store
            .tokens()
            .await
            .map_err(|e| Exit::runtime(e.to_string()))?;
        for t in rows {
            let created = chrono::DateTime::<chrono::Utc>::from(t.created)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            println!("{}  {}  {}  {}", t.id, t.scope.name(), created, t.name);
        }
        Ok(())
    })
}

/// Deletes a token: requests carrying it are refused from now on.
pub fn revoke(arg: &ConfigArg, id: &str) -> Result<(), Exit> {
    let dir = state_dir(arg)?;
    runtime()?.block_on(async {
        let store = store(&dir).await?;
        match store.delete_token(id).await {
            Ok(true) => {
                eprintln!("token {id} revoked");
                Ok(())
            }
            Ok(false) => Err(Exit::usage(format!("no token {id}"))),
            Err(e) => Err(Exit::runtime(e.to_string())),
        }
    })
}

/// Creates an admin account with a password read from stdin or a prompt (argon2id-hashed here;
/// the store never sees it). An existing name is refused: `passwd` changes a password.
pub fn account_create(arg: &ConfigArg, name: &str, scope: &str) -> Result<(), Exit> {
    let scope = Scope::parse(scope)
        .ok_or_else(|| Exit::usage(format!("--scope must be ro or rw, not {scope:?}")))?;
    if !bucketgate_protocols::auth::username_is_valid(name) || name.len() > 64 {
        return Err(Exit::usage(format!("invalid account name {name:?}")));
    }
    let dir = state_dir(arg)?;
    let password = crate::demo::read_new_password()?;
    runtime()?.block_on(async {
        let store = store(&dir).await?;
        let rt = |e: bucketgate_state::StateError| Exit::runtime(e.to_string());
        if store.admin(name).await.map_err(rt)?.is_some() {
            return Err(Exit::usage(format!(
                "account {name:?} exists (bucketgate admin account passwd {name} sets its password)"
            )));
        }
        let hash = tokio::task::spawn_blocking(move || {
            bucketgate_protocols::auth::hash_password(&password)
        })
        .await
        .map_err(|e| Exit::runtime(e.to_string()))?;
        let a = AdminAccount {
            name: name.to_string(),
            scope,
            hash,
            created: std::time::SystemTime::now(),
        };
        store.put_admin(&a).await.map_err(rt)?;
        eprintln!("account {name:?} (scope {}) created", scope.name());
        Ok(())
    })
}

/// Lists the accounts (never a hash).
pub fn account_list(arg: &ConfigArg) -> Result<(), Exit> {
    let dir = state_dir(arg)?;
    runtime()?.block_on(async {
        let store = store(&dir).await?;
        let rows = store
            .admins()
            .await
            .map_err(|e| Exit::runtime(e.to_string()))?;
        for a in rows {
            let created = chrono::DateTime::<chrono::Utc>::from(a.created)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            println!("{}  {}  {}", a.name, a.scope.name(), created);
        }
        Ok(())
    })
}

/// Deletes an account and ends its console sessions.
pub fn account_delete(arg: &ConfigArg, name: &str) -> Result<(), Exit> {
    let dir = state_dir(arg)?;
    runtime()?.block_on(async {
        let store = store(&dir).await?;
        match store.delete_admin(name).await {
            Ok(true) => {
                eprintln!("account {name:?} deleted");
                Ok(())
            }
            Ok(false) => Err(Exit::usage(format!("no account {name:?}"))),
            Err(e) => Err(Exit::runtime(e.to_string())),
        }
    })
}

/// Sets an account's password (stdin or a prompt) and ends its console sessions.
pub fn account_passwd(arg: &ConfigArg, name: &str) -> Result<(), Exit> {
    let dir = state_dir(arg)?;
    runtime()?.block_on(async {
        let store = store(&dir).await?;
        let rt = |e: bucketgate_state::StateError| Exit::runtime(e.to_string());
        let Some(mut a) = store.admin(name).await.map_err(rt)? else {
            return Err(Exit::usage(format!("no account {name:?}")));
        };
        let password = crate::demo::read_new_password()?;
        a.hash = tokio::task::spawn_blocking(move || {
            bucketgate_protocols::auth::hash_password(&password)
        })
        .await
        .map_err(|e| Exit::runtime(e.to_string()))?;
        store.put_admin(&a).await.map_err(rt)?;
        store.delete_console_sessions_of(name).await.map_err(rt)?;
        eprintln!("account {name:?}: password changed, its console sessions ended");
        Ok(())
    })
}
