//! Admin API tokens: `bg_<id>_<secret>`. The id (16 hex digits) finds the stored row; the
//! secret (64 hex digits, 256 random bits) is checked against its argon2 hash. The secret is
//! shown once, when the token is created, and never stored or logged.

use bucketgate_state::{Scope, StateStore, TokenRow};
use std::time::SystemTime;

/// Token checks run at once.
const HASH_CHECKS: usize = 2;
static HASH_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASH_CHECKS);

/// A token's parts, as sent in `Authorization: Bearer`.
pub struct Presented<'a> {
    /// The public id.
    pub id: &'a str,
    /// The secret.
    pub secret: &'a str,
}

/// Splits `bg_<id>_<secret>`; None when the shape is wrong.
pub fn parse(token: &str) -> Option<Presented<'_>> {
    let rest = token.strip_prefix("bg_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some(Presented { id, secret })
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// Creates a token, stores its hash and returns (the stored row, the token to show once).
pub async fn create(
    store: &dyn StateStore,
    name: &str,
    scope: Scope,
) -> bucketgate_state::Result<(TokenRow, String)> {
    let id = random_hex(8);
    let secret = random_hex(32);
    let s2 = secret.clone();
    let hash = tokio::task::spawn_blocking(move || bucketgate_protocols::auth::hash_password(&s2))
        .await
        .map_err(|e| bucketgate_state::StateError(e.to_string()))?;
    let row = TokenRow {
        id: id.clone(),
        name: name.to_string(),
        scope,
        hash,
        created: SystemTime::now(),
    };
    store.insert_token(&row).await?;
    Ok((row, format!("bg_{id}_{secret}")))
}

/// The stored token that `presented` is, if its secret matches.
pub async fn verify(
    store: &dyn StateStore,
    presented: &Presented<'_>,
) -> bucketgate_state::Result<Option<TokenRow>> {
    let Some(row) = store.token(presented.id).await? else {
        return Ok(None);
    };
    let (hash, secret) = (row.hash.clone(), presented.secret.to_string());
    // At most HASH_CHECKS argon2 checks at once (19 MiB and a core each), however many
    // requests the admin listener holds.
    let _slot = HASH_SLOTS.acquire().await.expect("never closed");
    let ok = tokio::task::spawn_blocking(move || {
        bucketgate_protocols::auth::verify_password(&hash, &secret)
    })
    .await
    .unwrap_or(false);
    Ok(ok.then_some(row))
}
