//! `bucketgate admin token create|list|revoke`: the admin API's tokens, in the config's state
//! store (`state.url`'s PostgreSQL, else the SQLite file of `state_dir`; works while the
//! gateway runs: both serialise the writers).

use crate::wiring::{self, Source};
use crate::{ConfigArg, Exit};
use bucketgate_state::Scope;
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
