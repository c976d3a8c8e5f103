//! Admin accounts' logins to the web console: `POST /api/v1/login` checks a password and sets
//! a session cookie, which then authenticates API requests as the account's scope.
//!
//! The cookie is `bg_console=<id>_<secret>` (16 and 64 hex digits, as an API token's parts):
//! `HttpOnly` (page scripts cannot read it), `SameSite=Strict` (no other site's page can make
//! the browser send it), `Path=/api/`, `Secure` when the admin listener speaks TLS, and it
//! ends with its session, [`SESSION_LIFETIME`] after the login. The store keeps the SHA-256 of
//! the secret only. A change (any method but GET and HEAD) sent with the cookie must also carry
//! the session's CSRF token in `X-CSRF-Token`; the console reads it from the login's answer or
//! `GET /api/v1/whoami`, which a page of another origin cannot read.

use super::tokens::{digest, random_hex};
use bucketgate_state::{AdminAccount, ConsoleSession, StateStore};
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "bg_console";

/// How long a console login lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(8 * 3600);

/// The cookie's value in a `Cookie` header, if any.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == COOKIE).then_some(v.trim())
    })
}

/// Splits `<id>_<secret>`; None when the shape is wrong.
pub fn parse(value: &str) -> Option<(&str, &str)> {
    let (id, secret) = value.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 16) && hex(secret, 64)).then_some((id, secret))
}

/// The `Set-Cookie` value for a new session (`value` is `<id>_<secret>`), or, with `None`, the
/// one that makes the browser forget the cookie.
pub fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/api/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            SESSION_LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/api/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// Starts a console session for `account`: stores it and returns it with the cookie's value.
pub async fn open(
    store: &dyn StateStore,
    account: &AdminAccount,
) -> bucketgate_state::Result<(ConsoleSession, String)> {
    let (id, secret) = (random_hex(8), random_hex(32));
    let s = ConsoleSession {
        id: id.clone(),
        account: account.name.clone(),
        hash: digest(&secret),
        csrf: random_hex(32),
        expires: SystemTime::now() + SESSION_LIFETIME,
    };
    store.insert_console_session(&s).await?;
    Ok((s, format!("{id}_{secret}")))
}

/// What a cookie's `(id, secret)` names.
pub enum Verified {
    /// A live session whose secret matches, with its account.
    Live(ConsoleSession, AdminAccount),
    /// No live session has that id: it ended (logout, expiry, a new password, the account
    /// deleted), or never was. Not scored: a browser still holding the cookie sends it with
    /// every request it has in flight.
    Ended,
    /// A live session, and the wrong secret: a guess, scored like a wrong token.
    WrongSecret,
}

/// Checks a cookie's `(id, secret)` against the store (the secret in constant time).
pub async fn verify(
    store: &dyn StateStore,
    id: &str,
    secret: &str,
) -> bucketgate_state::Result<Verified> {
    let Some((s, a)) = store.console_session(id).await? else {
        return Ok(Verified::Ended);
    };
    let ok: bool = digest(secret).as_bytes().ct_eq(s.hash.as_bytes()).into();
    Ok(if ok {
        Verified::Live(s, a)
    } else {
        Verified::WrongSecret
    })
}

/// Whether a request's `X-CSRF-Token` is the session's (constant time).
pub fn csrf_ok(session: &ConsoleSession, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(session.csrf.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_is_found_among_others_and_its_shape_checked() {
        let v = format!("{}_{}", "a".repeat(16), "b".repeat(64));
        let header = format!("theme=dark; {COOKIE}={v}; other=1");
        assert_eq!(from_cookie_header(&header), Some(v.as_str()));
        assert!(parse(&v).is_some());
        assert_eq!(from_cookie_header("bg_consolex=1"), None);
        assert!(parse("abc_def").is_none());
        assert!(parse(&format!("{}_{}", "g".repeat(16), "b".repeat(64))).is_none());
        let c = set_cookie(Some(&v), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.ends_with("Secure"));
        assert!(!set_cookie(None, false).contains("Secure"));
    }
}
