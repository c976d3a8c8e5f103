//! Admin API tokens: `bg_<id>_<secret>`. The id (16 hex digits) finds the stored row; the
//! secret (64 hex digits, 256 random bits) is checked against its SHA-256, compared in constant
//! time. The secret is shown once, when the token is created, and never stored or logged.
//!
//! Why not argon2, as for passwords: a slow hash protects guessable secrets. 256 random bits
//! cannot be guessed from their SHA-256, and argon2 would cost every API request 19 MiB and tens
//! of milliseconds of a core (a dashboard polls several routes a second).

use bucketgate_state::{Scope, StateStore, TokenRow};
use sha2::{Digest, Sha256};
use std::time::SystemTime;
use subtle::ConstantTimeEq;

/// The stored form of a secret: `sha256:<64 hex digits>`.
pub(crate) fn digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

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

pub(crate) fn random_hex(bytes: usize) -> String {
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
    let hash = digest(&secret);
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
    let ok: bool = digest(presented.secret)
        .as_bytes()
        .ct_eq(row.hash.as_bytes())
        .into();
    Ok(ok.then_some(row))
}
