//! The admin REST API, `/api/v1/...` on the admin listener (docs/admin-api.md).
//!
//! Every route is a row of [`ROUTES`], and the dispatcher matches only through that table, so
//! the table is the router; a unit test checks it against the OpenAPI document
//! (`openapi.json`, served at `/api/v1/openapi.json`). Requests carry
//! `Authorization: Bearer bg_<id>_<secret>` (tokens made by `bucketgate admin token create`);
//! a read-only token may only GET. A request without a valid token counts as a failed login of
//! its address (`protocol=admin`), so guessing earns the same ban as guessing passwords, and a
//! banned address is refused before its token is looked at. Every change is logged on the
//! `bucketgate::audit` target, one line each.
//!
//! The web console (gateway/src/console) uses the same routes: an admin account logs in with
//! `POST /api/v1/login` and its session cookie then stands for a token of the account's scope
//! ([`accounts`]).

pub mod accounts;
pub mod tokens;
pub mod users;

use crate::admin::Health;
use bucketgate_protocols::auth::LoginService;
use bucketgate_state::{AdminAccount, ConsoleSession, Scope, StateStore, TokenRow};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{
    HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, COOKIE, SET_COOKIE,
    WWW_AUTHENTICATE,
};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::Notify;

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// The OpenAPI document (no token needed).
    OpenApi,
    /// List the live sessions.
    Sessions,
    /// Close one session.
    Disconnect,
    /// List the bans.
    Bans,
    /// Lift one ban.
    LiftBan,
    /// Every sync job that has run, with its recent runs.
    SyncJobs,
    /// One job's whole history.
    SyncRuns,
    /// Start a run of a job now.
    SyncRun,
    /// The remotes' last probes.
    Remotes,
    /// Re-read the config, as SIGHUP does.
    Reload,
    /// List the runtime users.
    Users,
    /// Create or replace a runtime user.
    PutUser,
    /// Delete a runtime user.
    DeleteUser,
    /// Change some of a runtime user's keys.
    PatchUser,
    /// An admin account's console login (sets the session cookie).
    Login,
    /// Ends the console session.
    Logout,
    /// Who the request authenticates as.
    WhoAmI,
}

/// The router: method, path pattern (`{name}` matches one segment), operation.
pub const ROUTES: &[(&str, &str, Op)] = &[
    ("GET", "/api/v1/openapi.json", Op::OpenApi),
    ("GET", "/api/v1/sessions", Op::Sessions),
    ("DELETE", "/api/v1/sessions/{id}", Op::Disconnect),
    ("GET", "/api/v1/bans", Op::Bans),
    ("DELETE", "/api/v1/bans/{ip}", Op::LiftBan),
    ("GET", "/api/v1/sync/jobs", Op::SyncJobs),
    ("GET", "/api/v1/sync/jobs/{name}/runs", Op::SyncRuns),
    ("POST", "/api/v1/sync/jobs/{name}/run", Op::SyncRun),
    ("GET", "/api/v1/remotes", Op::Remotes),
    ("POST", "/api/v1/reload", Op::Reload),
    ("GET", "/api/v1/users", Op::Users),
    ("PUT", "/api/v1/users/{name}", Op::PutUser),
    ("DELETE", "/api/v1/users/{name}", Op::DeleteUser),
    ("PATCH", "/api/v1/users/{name}", Op::PatchUser),
    ("POST", "/api/v1/login", Op::Login),
    ("POST", "/api/v1/logout", Op::Logout),
    ("GET", "/api/v1/whoami", Op::WhoAmI),
];

/// The largest request body (a user's spec).
const MAX_BODY: usize = 64 * 1024;

/// What the API works on.
pub struct Api {
    /// Sessions and bans.
    pub login: Arc<LoginService>,
    /// Tokens and the session registry.
    pub store: Arc<dyn StateStore>,
    /// Remotes' health.
    pub health: Health,
    /// Where this installation's sync locks are (`state_dir/locks`); the history is in the
    /// store.
    pub state_dir: PathBuf,
    /// Wakes the serve loop's reload (the same path as SIGHUP).
    pub reload: Arc<Notify>,
    /// The config's sync jobs (replaced by a reload), for "run now".
    pub sync_jobs: SyncJobs,
    /// The admin listener speaks TLS: the console's cookie is marked `Secure`.
    pub tls: bool,
}

/// Who a request authenticates as.
enum Principal {
    /// An API token.
    Token(TokenRow),
    /// An admin account's console session (its cookie).
    Account(ConsoleSession, AdminAccount),
}

impl Principal {
    fn scope(&self) -> Scope {
        match self {
            Principal::Token(t) => t.scope,
            Principal::Account(_, a) => a.scope,
        }
    }

    /// How audit lines name it.
    fn audit(&self) -> String {
        match self {
            Principal::Token(t) => format!("token={} name={:?}", t.id, t.name),
            Principal::Account(_, a) => format!("account={:?}", a.name),
        }
    }
}

/// The sync jobs of the running config.
pub type SyncJobs = Arc<std::sync::Mutex<Vec<bucketgate_storage::sync::SyncJob>>>;

type Resp = Response<Full<Bytes>>;

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json_resp(status, &json!({ "error": msg }))
}

/// What `whoami` and the login answer for a console session: the account, and what the console
/// needs (the CSRF token, the seconds until the session ends).
fn account_json(s: &ConsoleSession, a: &AdminAccount) -> Value {
    let left = s
        .expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    json!({
        "kind": "account",
        "name": a.name,
        "scope": a.scope.name(),
        "csrf": s.csrf,
        "expires_in": left.as_secs(),
    })
}

/// A store failure: logged, and a 500 that says only that.
fn store_error(e: bucketgate_state::StateError) -> Resp {
    tracing::error!("admin API: {e}");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the state store is unavailable",
    )
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Matches `path` against `pattern`; the decoded values of its `{...}` segments.
fn matches(pattern: &str, path: &str) -> Option<Vec<String>> {
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    if p.len() != q.len() {
        return None;
    }
    let mut params = Vec::new();
    for (a, b) in p.iter().zip(&q) {
        if a.starts_with('{') {
            let v = percent_encoding::percent_decode_str(b)
                .decode_utf8()
                .ok()?
                .into_owned();
            if v.is_empty() {
                return None;
            }
            params.push(v);
        } else if a != b {
            return None;
        }
    }
    Some(params)
}

/// The route for a method and path: Ok((operation, parameters)), or the methods the path
/// allows (empty: no such path).
fn route(method: &Method, path: &str) -> Result<(Op, Vec<String>), Vec<&'static str>> {
    let mut allowed = Vec::new();
    for (m, pattern, op) in ROUTES {
        if let Some(params) = matches(pattern, path) {
            let m2 = if method == Method::HEAD {
                "GET"
            } else {
                method.as_str()
            };
            if *m == m2 {
                return Ok((*op, params));
            }
            allowed.push(*m);
        }
    }
    Err(allowed)
}

impl Api {
    /// Answers one request to `/api/v1/...` from `peer`.
    pub async fn handle(&self, req: Request<hyper::body::Incoming>, peer: IpAddr) -> Resp {
        use http_body_util::BodyExt;
        let (parts, body) = req.into_parts();
        let req = Request::from_parts(parts, ());
        let (op, params) = match route(req.method(), req.uri().path()) {
            Ok(r) => r,
            Err(allowed) if allowed.is_empty() => {
                return error(StatusCode::NOT_FOUND, "no such route")
            }
            Err(allowed) => {
                let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
                if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                    r.headers_mut().insert(ALLOW, v);
                }
                return r;
            }
        };
        if op == Op::OpenApi {
            let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            return r;
        }
        if self.login.is_banned(peer) {
            self.login.api_failure(peer, "", "banned").await;
            return error(StatusCode::FORBIDDEN, "this address is banned");
        }
        let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
        // A body is read only where a route takes one, and only from an authenticated caller
        // (the login's is its credential).
        let read_body = |body: hyper::body::Incoming| async move {
            match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => Ok(b.to_bytes()),
                Err(_) => Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "the body is too large",
                )),
            }
        };
        if op == Op::Login {
            return match read_body(body).await {
                Ok(b) => self.console_login(&req, peer, &b).await,
                Err(r) => r,
            };
        }
        let who = match self.authenticate(&req, peer, op).await {
            Ok(t) => t,
            Err(r) => return r,
        };
        let body = if matches!(op, Op::PutUser | Op::PatchUser) {
            match read_body(body).await {
                Ok(b) => b,
                Err(r) => return r,
            }
        } else {
            Bytes::new()
        };
        if let (true, Principal::Account(session, a)) = (writes, &who) {
            let presented = req
                .headers()
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok());
            if !accounts::csrf_ok(session, presented) {
                tracing::warn!(
                    target: "bucketgate::audit",
                    "audit: refused account={:?} ip={peer} {} {}: missing or wrong CSRF token",
                    a.name,
                    req.method(),
                    req.uri().path()
                );
                return error(StatusCode::FORBIDDEN, "missing or wrong CSRF token");
            }
        }
        // Logging out changes nothing but the caller's own session: a read-only account may.
        if writes && op != Op::Logout && who.scope() != Scope::ReadWrite {
            tracing::warn!(
                target: "bucketgate::audit",
                "audit: refused {} ip={peer} {} {}: read-only",
                who.audit(),
                req.method(),
                req.uri().path()
            );
            let what = match who {
                Principal::Token(_) => "this token is read-only",
                Principal::Account(..) => "this account is read-only",
            };
            return error(StatusCode::FORBIDDEN, what);
        }
        let resp = match op {
            Op::WhoAmI => match &who {
                Principal::Token(t) => json_resp(
                    StatusCode::OK,
                    &json!({ "kind": "token", "id": t.id, "name": t.name, "scope": t.scope.name() }),
                ),
                Principal::Account(s, a) => json_resp(StatusCode::OK, &account_json(s, a)),
            },
            Op::Logout => match &who {
                Principal::Token(_) => error(
                    StatusCode::BAD_REQUEST,
                    "only a console session logs out (revoke a token with bucketgate admin token revoke)",
                ),
                Principal::Account(s, _) => match self.store.delete_console_session(&s.id).await {
                    Ok(()) => {
                        let mut r = json_resp(StatusCode::OK, &json!({ "logged_out": s.account }));
                        self.clear_cookie(&mut r);
                        r
                    }
                    Err(e) => store_error(e),
                },
            },
            _ => self.execute(op, &params, &body).await,
        };
        if writes {
            tracing::info!(
                target: "bucketgate::audit",
                "audit: {} ip={peer} {} {} -> {}",
                who.audit(),
                req.method(),
                req.uri().path(),
                resp.status().as_u16()
            );
        }
        resp
    }

    fn clear_cookie(&self, r: &mut Resp) {
        if let Ok(v) = HeaderValue::from_str(&accounts::set_cookie(None, self.tls)) {
            r.headers_mut().insert(SET_COOKIE, v);
        }
    }

    /// `POST /api/v1/login` with `{"username": ..., "password": ...}`: the password is checked
    /// by the login service (bounded, memory-budgeted, scored on the ban list as
    /// `protocol=admin`); success opens a console session and sets its cookie.
    async fn console_login<B>(&self, req: &Request<B>, peer: IpAddr, body: &[u8]) -> Resp {
        // A page of another site can post a form, but not with this type without a CORS
        // preflight, which this listener never grants: no login CSRF.
        let json_type = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_type {
            return error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "send the login as application/json",
            );
        }
        let fields = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            let m = v.as_object()?;
            let username = m.get("username")?.as_str()?.to_string();
            let password = m.get("password")?.as_str()?.to_string();
            (m.len() == 2).then_some((username, password))
        });
        let Some((username, password)) = fields else {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be {\"username\": ..., \"password\": ...}",
            );
        };
        let account = match self.store.admin(&username).await {
            Ok(a) => a,
            Err(e) => return store_error(e),
        };
        let hash = account.as_ref().map(|a| a.hash.as_str());
        match self
            .login
            .admin_password(peer, &username, hash, &password)
            .await
        {
            Ok(()) => {}
            Err(bucketgate_protocols::auth::LoginError::Banned) => {
                return error(StatusCode::FORBIDDEN, "this address is banned")
            }
            Err(_) => return error(StatusCode::UNAUTHORIZED, "wrong account name or password"),
        }
        let Some(account) = account else {
            return error(StatusCode::UNAUTHORIZED, "wrong account name or password");
        };
        match accounts::open(self.store.as_ref(), &account).await {
            Ok((session, cookie)) => {
                tracing::info!(
                    target: "bucketgate::auth",
                    "login ok: protocol=admin ip={peer} user={:?} scope={}",
                    account.name,
                    account.scope.name()
                );
                let mut r = json_resp(StatusCode::OK, &account_json(&session, &account));
                if let Ok(v) = HeaderValue::from_str(&accounts::set_cookie(Some(&cookie), self.tls))
                {
                    r.headers_mut().insert(SET_COOKIE, v);
                }
                r
            }
            Err(e) => store_error(e),
        }
    }

    /// Who the request is: its bearer token, else its console cookie. Otherwise the 401
    /// (counted as a failed login) or 500 to send. `GET /api/v1/whoami` without any credential
    /// is a 401 that counts nothing: the console asks it when it opens, to learn whether it is
    /// logged in.
    async fn authenticate<B>(
        &self,
        req: &Request<B>,
        peer: IpAddr,
        op: Op,
    ) -> Result<Principal, Resp> {
        let unauthorized = |msg: &str| {
            let mut r = error(StatusCode::UNAUTHORIZED, msg);
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            r
        };
        let header = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let cookie = req
            .headers()
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(accounts::from_cookie_header);
        let Some(presented) = header.map(str::trim) else {
            if let Some(c) = cookie {
                return self.authenticate_cookie(c, peer).await;
            }
            if op == Op::WhoAmI {
                return Err(unauthorized("not logged in"));
            }
            self.login.api_failure(peer, "", "no_token").await;
            return Err(unauthorized("a bearer token is required"));
        };
        let Some(p) = tokens::parse(presented) else {
            self.login.api_failure(peer, "", "malformed_token").await;
            return Err(unauthorized("invalid token"));
        };
        match tokens::verify(self.store.as_ref(), &p).await {
            Ok(Some(row)) => Ok(Principal::Token(row)),
            Ok(None) => {
                self.login.api_failure(peer, p.id, "wrong_token").await;
                Err(unauthorized("invalid token"))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    /// A console cookie: its live session, or a 401 that also makes the browser forget the
    /// cookie. A malformed cookie or a wrong secret for a live session is scored like a wrong
    /// token; a session that ended is not (see [`accounts::Verified::Ended`]).
    async fn authenticate_cookie(&self, value: &str, peer: IpAddr) -> Result<Principal, Resp> {
        let refuse = |msg: &str| {
            let mut r = error(StatusCode::UNAUTHORIZED, msg);
            self.clear_cookie(&mut r);
            r
        };
        let Some((id, secret)) = accounts::parse(value) else {
            self.login.api_failure(peer, "", "malformed_session").await;
            return Err(refuse("invalid session"));
        };
        match accounts::verify(self.store.as_ref(), id, secret).await {
            Ok(accounts::Verified::Live(s, a)) => Ok(Principal::Account(s, a)),
            Ok(accounts::Verified::Ended) => Err(refuse("the session has ended: log in again")),
            Ok(accounts::Verified::WrongSecret) => {
                self.login.api_failure(peer, id, "wrong_session").await;
                Err(refuse("invalid session"))
            }
            Err(e) => Err(store_error(e)),
        }
    }

    async fn execute(&self, op: Op, params: &[String], body: &[u8]) -> Resp {
        let ok = |v: Value| json_resp(StatusCode::OK, &v);
        match op {
            Op::OpenApi | Op::Login | Op::Logout | Op::WhoAmI => {
                unreachable!("answered in handle")
            }
            Op::Sessions => match self.store.sessions().await {
                Ok(rows) => ok(Value::Array(
                    rows.into_iter()
                        .map(|s| {
                            let mut v = json!({
                                "id": s.id,
                                "user": s.username,
                                "protocol": s.protocol,
                                "client": s.client.to_string(),
                                "started": rfc3339(s.started),
                            });
                            if let Some(a) = self.login.activity(&s.id) {
                                v["bytes"] = json!(a.bytes());
                                v["transfers"] = a
                                    .transfers()
                                    .into_iter()
                                    .map(|t| {
                                        json!({
                                            "direction": if t.operation == "open_write" { "upload" } else { "download" },
                                            "path": t.path,
                                            "started": rfc3339(t.started),
                                            "bytes": t.bytes,
                                        })
                                    })
                                    .collect();
                            }
                            v
                        })
                        .collect(),
                )),
                Err(e) => {
                    tracing::error!("admin API: {e}");
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the state store is unavailable",
                    )
                }
            },
            Op::Disconnect => {
                if self.login.disconnect(&params[0]) {
                    ok(json!({ "disconnected": params[0] }))
                } else {
                    error(StatusCode::NOT_FOUND, "no such session")
                }
            }
            Op::Bans => ok(Value::Array(
                self.login
                    .bans()
                    .into_iter()
                    .map(|(ip, until)| json!({ "ip": ip.to_string(), "until": rfc3339(until) }))
                    .collect(),
            )),
            Op::LiftBan => match params[0].parse::<IpAddr>() {
                Err(_) => error(StatusCode::BAD_REQUEST, "not an IP address"),
                Ok(ip) if self.login.lift_ban(ip).await => ok(json!({ "lifted": ip.to_string() })),
                Ok(_) => error(StatusCode::NOT_FOUND, "this address is not banned"),
            },
            Op::SyncJobs => {
                let log = crate::syncstore::StoreRunLog(self.store.clone());
                let jobs = match bucketgate_storage::sync::status(&log, &self.state_dir).await {
                    Ok(j) => j,
                    Err(e) => {
                        tracing::error!("admin API: {e}");
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the state store is unavailable",
                        );
                    }
                };
                ok(Value::Array(
                    jobs.into_iter()
                        .map(|j| {
                            json!({
                                "name": j.name,
                                "running": j.running,
                                "last_ok": j.last_ok,
                                "recent": j.recent,
                            })
                        })
                        .collect(),
                ))
            }
            Op::SyncRuns => {
                use bucketgate_storage::sync::RunLog;
                let log = crate::syncstore::StoreRunLog(self.store.clone());
                let runs = match log.runs(&params[0], bucketgate_state::KEEP_SYNC_RUNS).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::error!("admin API: {e}");
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the state store is unavailable",
                        );
                    }
                };
                if runs.is_empty() {
                    error(StatusCode::NOT_FOUND, "no runs of this job")
                } else {
                    ok(json!(runs))
                }
            }
            Op::SyncRun => {
                let name = &params[0];
                let job = {
                    let jobs = self.sync_jobs.lock().unwrap_or_else(|e| e.into_inner());
                    jobs.iter().find(|j| &j.name == name).cloned()
                };
                let Some(job) = job else {
                    return error(StatusCode::NOT_FOUND, "no sync job of that name");
                };
                if bucketgate_storage::sync::is_running(&self.state_dir, name) {
                    return error(StatusCode::CONFLICT, "a run of this job is in progress");
                }
                // The run records itself in the job's history, like a scheduled one; a run that
                // started meanwhile makes this one a `refused` entry there.
                let dir = self.state_dir.clone();
                tokio::spawn(async move {
                    let opts = bucketgate_storage::sync::RunOptions::default();
                    match bucketgate_storage::sync::run_job(&job, &dir, opts).await {
                        Ok(s) => tracing::info!(
                            "sync: run of {:?} requested through the admin API ended: {} errors",
                            job.name,
                            s.errors
                        ),
                        Err(e) => tracing::warn!(
                            "sync: run of {:?} requested through the admin API failed: {e}",
                            job.name
                        ),
                    }
                });
                json_resp(StatusCode::ACCEPTED, &json!({ "started": name }))
            }
            Op::Users => match users::list(self.store.as_ref(), &self.login).await {
                Ok(v) => ok(v),
                Err(e) => {
                    tracing::error!("admin API: {e}");
                    error(StatusCode::INTERNAL_SERVER_ERROR, "the state store is unavailable")
                }
            },
            Op::PutUser | Op::DeleteUser | Op::PatchUser => {
                let name = &params[0];
                if users::in_config(&self.login, name) {
                    return error(
                        StatusCode::CONFLICT,
                        "this user is defined in the config file, which the API does not change",
                    );
                }
                let r = if op == Op::PutUser {
                    let spec = match users::spec_from_request(name, body).await {
                        Ok(s) => s,
                        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
                    };
                    self.store.put_user(name, &spec.to_string()).await.map(|()| true)
                } else if op == Op::PatchUser {
                    let stored = match self.store.users().await {
                        Ok(all) => all.into_iter().find(|(n, _)| n == name).map(|(_, s)| s),
                        Err(e) => return store_error(e),
                    };
                    match stored {
                        None => Ok(false),
                        Some(stored) => {
                            let spec = match users::patched(name, &stored, body).await {
                                Ok(s) => s,
                                Err(e) => return error(StatusCode::BAD_REQUEST, &e),
                            };
                            self.store.put_user(name, &spec.to_string()).await.map(|()| true)
                        }
                    }
                } else {
                    self.store.delete_user(name).await
                };
                match r {
                    Ok(false) => return error(StatusCode::NOT_FOUND, "no runtime user of that name"),
                    Ok(true) => {}
                    Err(e) => {
                        tracing::error!("admin API: {e}");
                        return error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the state store is unavailable",
                        );
                    }
                }
                if let Err(e) = users::load(self.store.as_ref(), &self.login).await {
                    tracing::error!("admin API: runtime users not reloaded: {e}");
                }
                ok(json!({ "user": name }))
            }
            Op::Remotes => ok(self.health.remotes()),
            Op::Reload => {
                self.reload.notify_one();
                json_resp(
                    StatusCode::ACCEPTED,
                    &json!({ "reload": "requested; the log says how it went" }),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The router's table and the OpenAPI document list the same routes.
    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let doc: Value = serde_json::from_str(OPENAPI).expect("openapi.json parses");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let mut documented = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if method != "parameters" {
                    documented.push((method.to_uppercase(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p, _)| (m.to_string(), p.to_string()))
            .collect();
        routed.sort();
        assert_eq!(documented, routed);
    }

    #[test]
    fn routes_match_whole_segments() {
        assert_eq!(
            route(&Method::DELETE, "/api/v1/bans/2001:db8::1"),
            Ok((Op::LiftBan, vec!["2001:db8::1".to_string()]))
        );
        assert_eq!(
            route(&Method::GET, "/api/v1/sync/jobs/nightly%20push/runs"),
            Ok((Op::SyncRuns, vec!["nightly push".to_string()]))
        );
        assert_eq!(route(&Method::POST, "/api/v1/bans"), Err(vec!["GET"]));
        assert_eq!(route(&Method::GET, "/api/v1/bans/x"), Err(vec!["DELETE"]));
        assert_eq!(route(&Method::DELETE, "/api/v1/bans/"), Err(vec![]));
        assert_eq!(route(&Method::GET, "/api/v1/bansx"), Err(vec![]));
    }
}
