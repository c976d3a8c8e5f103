//! Users created through the admin API ("runtime users"), kept in the state store.
//!
//! A runtime user is written in the config's own form (`users:` entry keys: `home`,
//! `password_hash`, `public_keys`, `permissions`, `protocols`, `allowed_ips`), plus `password`
//! (hashed here, never stored) and `disabled`. It is parsed with the config's types, so the
//! same permission names and address forms apply. The YAML users stay read-only and win on a
//! name clash: the API refuses their names, and a runtime user whose name a later config adds
//! is shadowed by it (and listed with `"shadowed": true`).

use bucketgate_protocols::auth::{hash_password, username_is_valid, Account, LoginService};
use bucketgate_state::StateStore;
use serde_json::{json, Map, Value};

/// Keys a request may carry.
const KEYS: &[&str] = &[
    "password",
    "password_hash",
    "public_keys",
    "home",
    "permissions",
    "protocols",
    "allowed_ips",
    "disabled",
];

/// Checks a request body for `username` and returns the spec to store (the password hashed),
/// or what is wrong with it (never quoting a password).
pub async fn spec_from_request(username: &str, body: &[u8]) -> Result<Value, String> {
    if !username_is_valid(username) {
        return Err("invalid user name".into());
    }
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(body) else {
        return Err("the body must be a JSON object".into());
    };
    if let Some(k) = m.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key {k:?}"));
    }
    match m.remove("password") {
        None => {}
        Some(Value::String(p)) if !p.is_empty() => {
            if m.contains_key("password_hash") {
                return Err("give password or password_hash, not both".into());
            }
            let hash = tokio::task::spawn_blocking(move || hash_password(&p))
                .await
                .map_err(|e| e.to_string())?;
            m.insert("password_hash".into(), Value::String(hash));
        }
        Some(_) => return Err("password must be a non-empty string".into()),
    }
    if let Some(Value::String(h)) = m.get("password_hash") {
        if argon2::PasswordHash::new(h).is_err() {
            return Err("password_hash is not a PHC string (bucketgate hash-password)".into());
        }
    }
    // Parsed once now, so that a bad spec is refused rather than stored.
    account(username, &Value::Object(m.clone()))?;
    Ok(Value::Object(m))
}

/// `PATCH`: the stored spec with the body's keys put in place of its own (`null` removes a
/// key; `password` replaces the stored hash), checked as a `PUT` of the result would be. So a
/// password, the keys or `disabled` change without sending the rest.
pub async fn patched(username: &str, stored: &str, body: &[u8]) -> Result<Value, String> {
    let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
        return Err("the body must be a JSON object".into());
    };
    if let Some(k) = patch.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!("unknown key {k:?}"));
    }
    let mut m = serde_json::from_str::<Value>(stored)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default();
    if patch.contains_key("password") || patch.contains_key("password_hash") {
        m.remove("password_hash");
    }
    for (k, v) in patch {
        if v.is_null() {
            m.remove(&k);
        } else {
            m.insert(k, v);
        }
    }
    let merged = serde_json::to_vec(&Value::Object(m)).map_err(|e| e.to_string())?;
    spec_from_request(username, &merged).await
}

/// The account a stored spec describes; None for a disabled user.
pub fn account(username: &str, spec: &Value) -> Result<Option<Account>, String> {
    let mut m: Map<String, Value> = spec.as_object().cloned().unwrap_or_default();
    let disabled = match m.remove("disabled") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err("disabled must be true or false".into()),
    };
    m.insert("username".into(), Value::String(username.to_string()));
    let mut u: bucketgate_config::UserConfig =
        serde_json::from_value(Value::Object(m)).map_err(|e| e.to_string())?;
    u.home = bucketgate_config::normalize_site_path(&u.home).map_err(|e| format!("home {e}"))?;
    let mut perms = std::collections::BTreeMap::new();
    for (folder, p) in std::mem::take(&mut u.permissions) {
        let f = bucketgate_config::normalize_site_path(&folder)
            .map_err(|e| format!("permissions: {folder:?} {e}"))?;
        perms.insert(f, p);
    }
    u.permissions = perms;
    if u.password_hash.is_none() && u.public_keys.is_empty() {
        return Err("the user needs a password or a public key".into());
    }
    Ok((!disabled).then(|| crate::wiring::account(&u)))
}

/// Loads every runtime user from the store into the login service (at start and after each
/// change). A stored spec that no longer parses is skipped with a log line.
pub async fn load(store: &dyn StateStore, login: &LoginService) -> bucketgate_state::Result<()> {
    let mut accounts = Vec::new();
    for (name, spec) in store.users().await? {
        let parsed = serde_json::from_str::<Value>(&spec).map_err(|e| e.to_string());
        match parsed.and_then(|v| account(&name, &v)) {
            Ok(Some(a)) => accounts.push(a),
            Ok(None) => {}
            Err(e) => tracing::error!("runtime user {name:?} skipped: {e}"),
        }
    }
    let effect = login.set_runtime_accounts(accounts);
    if effect.closed > 0 {
        tracing::info!("runtime users changed: {} sessions closed", effect.closed);
    }
    Ok(())
}

/// The runtime users, as the API lists them (never a password hash).
pub async fn list(store: &dyn StateStore, login: &LoginService) -> bucketgate_state::Result<Value> {
    let dir = login.directory();
    let mut out = Vec::new();
    for (name, spec) in store.users().await? {
        let v: Value = serde_json::from_str(&spec).unwrap_or(Value::Null);
        out.push(json!({
            "username": name,
            "home": v.get("home"),
            "protocols": v.get("protocols"),
            "permissions": v.get("permissions"),
            "allowed_ips": v.get("allowed_ips"),
            "public_keys": v.get("public_keys").and_then(Value::as_array).map_or(0, Vec::len),
            "password": v.get("password_hash").is_some(),
            "disabled": v.get("disabled").and_then(Value::as_bool).unwrap_or(false),
            "shadowed": dir.get(&name).is_some(),
        }));
    }
    Ok(Value::Array(out))
}

/// Whether the config has a user of that name (the API may not touch it).
pub fn in_config(login: &LoginService, name: &str) -> bool {
    login.directory().get(name).is_some()
}
