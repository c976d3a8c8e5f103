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

pub mod tokens;
pub mod users;

use crate::admin::Health;
use bucketgate_protocols::auth::LoginService;
use bucketgate_state::{Scope, StateStore, TokenRow};
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
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
}

/// The sync jobs of the running config.
pub type SyncJobs = Arc<std::sync::Mutex<Vec<bucketgate_storage::sync::SyncJob>>>;

type Resp = Response<Full<Bytes>>;

fn json_resp(status: StatusCode, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, msg: &str) -> Resp {
    json_resp(status, &json!({ "error": msg }))
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
        let token = match self.authenticate(&req, peer).await {
            Ok(t) => t,
            Err(r) => return r,
        };
        let writes = !matches!(*req.method(), Method::GET | Method::HEAD);
        if writes && token.scope != Scope::ReadWrite {
            tracing::warn!(
                target: "bucketgate::audit",
                "audit: refused token={} ip={peer} {} {}: read-only token",
                token.id,
                req.method(),
                req.uri().path()
            );
            return error(StatusCode::FORBIDDEN, "this token is read-only");
        }
        let body = if op == Op::PutUser {
            match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "the body is too large"),
            }
        } else {
            Bytes::new()
        };
        let resp = self.execute(op, &params, &body).await;
        if writes {
            tracing::info!(
                target: "bucketgate::audit",
                "audit: token={} name={:?} ip={peer} {} {} -> {}",
                token.id,
                token.name,
                req.method(),
                req.uri().path(),
                resp.status().as_u16()
            );
        }
        resp
    }

    /// The request's token, or the 401 (counted as a failed login) or 500 to send.
    async fn authenticate<B>(&self, req: &Request<B>, peer: IpAddr) -> Result<TokenRow, Resp> {
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
        let Some(presented) = header.map(str::trim) else {
            self.login.api_failure(peer, "", "no_token").await;
            return Err(unauthorized("a bearer token is required"));
        };
        let Some(p) = tokens::parse(presented) else {
            self.login.api_failure(peer, "", "malformed_token").await;
            return Err(unauthorized("invalid token"));
        };
        match tokens::verify(self.store.as_ref(), &p).await {
            Ok(Some(row)) => Ok(row),
            Ok(None) => {
                self.login.api_failure(peer, p.id, "wrong_token").await;
                Err(unauthorized("invalid token"))
            }
            Err(e) => {
                tracing::error!("admin API: {e}");
                Err(error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the state store is unavailable",
                ))
            }
        }
    }

    async fn execute(&self, op: Op, params: &[String], body: &[u8]) -> Resp {
        let ok = |v: Value| json_resp(StatusCode::OK, &v);
        match op {
            Op::OpenApi => unreachable!("answered before authentication"),
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
            Op::PutUser | Op::DeleteUser => {
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
