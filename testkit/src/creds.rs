//! Credential endpoints on loopback, as AWS runs them: instance metadata (IMDSv2: a token
//! first, by PUT; every GET without a valid token refused) and the container credential
//! endpoint (ECS, EKS Pod Identity: the `Authorization` header must carry the agent's token).
//!
//! Both hand out temporary credentials that expire `lifetime` after issue, a new access key id
//! each time, and keep a log of what they were asked and what they issued. [`CredServer::check`]
//! tells whether a request to S3 was signed with a key this server issued and that had not
//! expired when the request arrived: an [`crate::http_proxy`] rule in front of a server that
//! does not check keys (moto) uses it to refuse stale or unknown keys, as AWS would.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::net::TcpListener;

/// Which endpoint the server plays.
#[derive(Debug, Clone)]
pub enum Kind {
    /// IMDSv2 at `/latest/...`, role name `bucketgate-test-role`.
    Instance,
    /// The container endpoint at any path; requests must carry this `Authorization` value.
    Container { token: String },
}

/// One set of credentials handed out.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_key_id: String,
    pub session_token: String,
    pub issued: Instant,
    pub expires: Instant,
}

/// What the server saw, in order: `token` (an IMDSv2 token handed out), `list` (the role
/// listed), `credentials` (a set of credentials handed out), `refused: WHY`.
pub type Log = Arc<Mutex<Vec<String>>>;

pub struct CredServer {
    pub addr: SocketAddr,
    pub log: Log,
    issued: Arc<Mutex<Vec<Issued>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CredServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const ROLE: &str = "bucketgate-test-role";

/// `2026-12-05T01:02:03Z`, by the gateway's one calendar conversion.
fn iso8601(t: SystemTime) -> String {
    bucketgate_storage::calendar::utc(t)
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

type Resp = hyper::Response<Full<Bytes>>;

fn answer(status: u16, body: impl Into<Bytes>) -> Resp {
    hyper::Response::builder()
        .status(status)
        .body(Full::new(body.into()))
        .expect("response")
}

impl CredServer {
    /// A server on 127.0.0.1:0 whose credentials last `lifetime`.
    pub async fn start(kind: Kind, lifetime: Duration) -> CredServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log: Log = Arc::default();
        let issued: Arc<Mutex<Vec<Issued>>> = Arc::default();
        let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
        let (log2, issued2) = (log.clone(), issued.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let (log, issued, tokens, kind) =
                    (log2.clone(), issued2.clone(), tokens.clone(), kind.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let r = serve(&kind, lifetime, &req, &log, &issued, &tokens);
                        async move { Ok::<_, std::convert::Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        CredServer {
            addr,
            log,
            issued,
            task,
        }
    }

    /// `http://127.0.0.1:PORT`, the endpoint (IMDS) or base (container) to point a client at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The log so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// How many sets of credentials were handed out.
    pub fn fetches(&self) -> usize {
        self.issued.lock().unwrap().len()
    }

    /// Every set handed out, in order.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().unwrap().clone()
    }

    /// Whether a request with these headers, arriving `at`, is signed with a key of ours that
    /// had not expired, and carries that key's session token. `Err` says why not.
    pub fn check(&self, headers: &[(String, String)], at: Instant) -> Result<(), String> {
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let auth = get("authorization").ok_or("unsigned request")?;
        let key = auth
            .split("Credential=")
            .nth(1)
            .and_then(|c| c.split('/').next())
            .ok_or("no Credential in Authorization")?;
        let issued = self.issued.lock().unwrap();
        let i = issued
            .iter()
            .find(|i| i.access_key_id == key)
            .ok_or_else(|| format!("unknown key {key}"))?;
        if at >= i.expires {
            return Err(format!("key {key} expired"));
        }
        if get("x-amz-security-token") != Some(i.session_token.as_str()) {
            return Err(format!("key {key} without its session token"));
        }
        Ok(())
    }
}

fn serve(
    kind: &Kind,
    lifetime: Duration,
    req: &hyper::Request<Incoming>,
    log: &Log,
    issued: &Arc<Mutex<Vec<Issued>>>,
    tokens: &Arc<Mutex<Vec<String>>>,
) -> Resp {
    let note = |s: String| log.lock().unwrap().push(s);
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    let path = req.uri().path();
    match kind {
        Kind::Instance => {
            if req.method() == hyper::Method::PUT && path == "/latest/api/token" {
                if header("x-aws-ec2-metadata-token-ttl-seconds").is_none() {
                    note("refused: token request without a TTL".into());
                    return answer(400, "");
                }
                let t = format!("imds-token-{:016x}", rand::random::<u64>());
                tokens.lock().unwrap().push(t.clone());
                note("token".into());
                return answer(200, t);
            }
            // IMDSv2: every GET carries a token handed out by the PUT above.
            let ok = header("x-aws-ec2-metadata-token")
                .is_some_and(|t| tokens.lock().unwrap().iter().any(|k| k == t));
            if !ok {
                note(format!("refused: {path} without a valid token"));
                return answer(401, "");
            }
            if path == "/latest/meta-data/iam/security-credentials/" {
                note("list".into());
                return answer(200, ROLE);
            }
            if path != format!("/latest/meta-data/iam/security-credentials/{ROLE}") {
                note(format!("refused: no such path {path}"));
                return answer(404, "");
            }
        }
        Kind::Container { token } => {
            if header("authorization") != Some(token.as_str()) {
                note("refused: no or wrong Authorization token".into());
                return answer(401, "");
            }
        }
    }
    let n = issued.lock().unwrap().len();
    let now = Instant::now();
    let i = Issued {
        access_key_id: format!("ASIABGTEST{n:010}"),
        session_token: format!("session-{n}-{:016x}", rand::random::<u64>()),
        issued: now,
        expires: now + lifetime,
    };
    let secret = format!("secret-{n}-{:016x}", rand::random::<u64>());
    let expiration = iso8601(SystemTime::now() + lifetime);
    let body = match kind {
        Kind::Instance => format!(
            r#"{{"Code":"Success","LastUpdated":"{}","Type":"AWS-HMAC","AccessKeyId":"{}","SecretAccessKey":"{}","Token":"{}","Expiration":"{}"}}"#,
            iso8601(SystemTime::now()),
            i.access_key_id,
            secret,
            i.session_token,
            expiration
        ),
        Kind::Container { .. } => format!(
            r#"{{"AccessKeyId":"{}","SecretAccessKey":"{}","Token":"{}","Expiration":"{}"}}"#,
            i.access_key_id, secret, i.session_token, expiration
        ),
    };
    issued.lock().unwrap().push(i);
    note("credentials".into());
    answer(200, body)
}
