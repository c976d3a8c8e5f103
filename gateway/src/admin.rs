//! The admin HTTP endpoint: `/healthz`, `/readyz`, `/metrics`, the REST API under `/api/`
//! (handed to [`crate::api`]) and the web console's page under `/console/`
//! ([`crate::console`]).
//!
//! HTTP/1.1 on hyper (already built for reqwest), GET and HEAD only outside `/api/`, one
//! request per connection: the load balancer's probes and Prometheus need nothing more. At most
//! [`MAX_CONNECTIONS`] connections are served at once; past that, new ones wait in the
//! listen backlog until one ends (a probe is answered late rather than refused, and a 503
//! would read as "not ready"). A client has [`HEADER_TIMEOUT`] to send its request head and
//! [`CONNECTION_TIMEOUT`] for the whole exchange, so a slow or idle client cannot hold a slot;
//! a request head over 8 KiB is refused.
//!
//! `/metrics` renders one `prometheus_client` registry: the storage families, the frontends'
//! session and login families, and this module's own `bucketgate_up` and
//! `bucketgate_remote_up`.

use bucketgate_storage::metrics::{labels, register_family, GaugeFamily};
use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::Tree;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 32;

/// Time a client has to send its request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Time a whole connection may last (request, readiness probe of the site tree, response).
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
struct RemoteState {
    ok: Option<bool>,
    error: Option<String>,
}

struct Inner {
    tree: Arc<Tree>,
    remotes: HashMap<String, Arc<S3Backend>>,
    /// The prefix each remote is probed under (see [`probe_prefixes`]).
    prefixes: HashMap<String, String>,
    states: BTreeMap<String, RemoteState>,
    listeners: Vec<&'static str>,
}

/// What `/readyz` reports (the listeners, the site tree, and each remote's last probe) and the
/// registry `/metrics` renders.
#[derive(Clone)]
pub struct Health(Arc<Mutex<Inner>>, Arc<Metrics>);

struct Metrics {
    registry: Registry,
    /// `bucketgate_remote_up`, by remote: set by each probe, removed with the remote.
    remote_up: GaugeFamily,
    /// The allocator's figures, read at each scrape.
    heap_allocated: Gauge<i64>,
    heap_resident: Gauge<i64>,
    heap_metadata: Gauge<i64>,
    /// `transfers.memory_limit` and what transfers hold of it, read at each scrape.
    budget: std::sync::OnceLock<Arc<bucketgate_storage::budget::MemoryBudget>>,
    budget_used: Gauge<i64>,
    budget_limit: Gauge<i64>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let up = Gauge::<i64>::default();
        up.set(1);
        register_family(
            &mut registry,
            "bucketgate_up",
            "The process is running.",
            up,
        );
        let remote_up = GaugeFamily::default();
        register_family(
            &mut registry,
            "bucketgate_remote_up",
            "Last probe of each remote (1 up, 0 down).",
            remote_up.clone(),
        );
        // Everything the other crates record: sessions, logins, bytes, file operations, S3
        // requests, multipart uploads, sync runs.
        bucketgate_protocols::metrics::register(&mut registry);
        bucketgate_storage::metrics::register(&mut registry);
        // What the process's memory is made of: live allocations against the pages the
        // allocator keeps (freed pages are given back after `dirty_decay_ms`; main.rs).
        let heap_allocated = Gauge::<i64>::default();
        register_family(
            &mut registry,
            "bucketgate_heap_allocated_bytes",
            "Bytes in live allocations (jemalloc stats.allocated).",
            heap_allocated.clone(),
        );
        let heap_resident = Gauge::<i64>::default();
        register_family(
            &mut registry,
            "bucketgate_heap_resident_bytes",
            "Bytes of the allocator's pages resident in memory (jemalloc stats.resident).",
            heap_resident.clone(),
        );
        let heap_metadata = Gauge::<i64>::default();
        register_family(
            &mut registry,
            "bucketgate_heap_metadata_bytes",
            "Bytes the allocator uses for its own bookkeeping (jemalloc stats.metadata).",
            heap_metadata.clone(),
        );
        let budget_used = Gauge::<i64>::default();
        register_family(
            &mut registry,
            "bucketgate_memory_budget_used_bytes",
            "Bytes of transfers.memory_limit that transfer buffers hold now.",
            budget_used.clone(),
        );
        let budget_limit = Gauge::<i64>::default();
        register_family(
            &mut registry,
            "bucketgate_memory_budget_limit_bytes",
            "transfers.memory_limit, in bytes.",
            budget_limit.clone(),
        );
        Metrics {
            registry,
            remote_up,
            heap_allocated,
            heap_resident,
            heap_metadata,
            budget: std::sync::OnceLock::new(),
            budget_used,
            budget_limit,
        }
    }
}

impl Health {
    /// Health over the running tree and remotes; each remote is probed under its prefix in
    /// `prefixes` (the bucket root when it has none).
    pub fn new(
        tree: Arc<Tree>,
        remotes: HashMap<String, Arc<S3Backend>>,
        prefixes: HashMap<String, String>,
    ) -> Self {
        let states = remotes
            .keys()
            .map(|k| {
                (
                    k.clone(),
                    RemoteState {
                        ok: None,
                        error: None,
                    },
                )
            })
            .collect();
        Health(
            Arc::new(Mutex::new(Inner {
                tree,
                remotes,
                prefixes,
                states,
                listeners: Vec::new(),
            })),
            Arc::new(Metrics::new()),
        )
    }

    /// The memory budget whose use `/metrics` shows (set once; later calls are ignored).
    pub fn set_budget(&self, budget: Arc<bucketgate_storage::budget::MemoryBudget>) {
        let _ = self.1.budget.set(budget);
    }

    /// Records a listener that is up.
    pub fn add_listener(&self, name: &'static str) {
        self.0.lock().expect("lock").listeners.push(name);
    }

    /// After a reload: the new tree, remotes and probe prefixes.
    pub fn replace(
        &self,
        tree: Arc<Tree>,
        remotes: HashMap<String, Arc<S3Backend>>,
        prefixes: HashMap<String, String>,
    ) {
        let mut g = self.0.lock().expect("lock");
        for gone in g.states.keys().filter(|k| !remotes.contains_key(*k)) {
            self.1.remote_up.remove(&labels(&[("remote", gone)]));
        }
        g.states.retain(|k, _| remotes.contains_key(k));
        for k in remotes.keys() {
            g.states.entry(k.clone()).or_insert(RemoteState {
                ok: None,
                error: None,
            });
        }
        g.tree = tree;
        g.remotes = remotes;
        g.prefixes = prefixes;
    }

    /// Probes every remote every 30 s with a one-key listing under the prefix the gateway uses
    /// there, so that a key allowed to list only under that prefix reads as up. A partner's
    /// outage shows in the body and the metrics, never as an unready instance.
    pub async fn watch_remotes(self, shutdown: CancellationToken) {
        loop {
            let remotes: Vec<(String, Arc<S3Backend>, String)> = {
                let g = self.0.lock().expect("lock");
                g.remotes
                    .iter()
                    .map(|(k, v)| {
                        let prefix = g.prefixes.get(k).cloned().unwrap_or_default();
                        (k.clone(), v.clone(), prefix)
                    })
                    .collect()
            };
            for (name, b, prefix) in remotes {
                let r =
                    tokio::time::timeout(Duration::from_secs(10), b.probe_prefix(&prefix)).await;
                let state = match r {
                    Ok(Ok(())) => RemoteState {
                        ok: Some(true),
                        error: None,
                    },
                    Ok(Err(e)) => RemoteState {
                        ok: Some(false),
                        error: Some(e.to_string()),
                    },
                    Err(_) => RemoteState {
                        ok: Some(false),
                        error: Some("timed out".into()),
                    },
                };
                if state.ok == Some(false) {
                    tracing::warn!(remote = %name, error = ?state.error, "remote probe failed");
                }
                let mut g = self.0.lock().expect("lock");
                // A remote removed by a reload while it was probed stays removed.
                if g.remotes.contains_key(&name) {
                    if let Some(ok) = state.ok {
                        self.1
                            .remote_up
                            .get_or_create(&labels(&[("remote", &name)]))
                            .set(i64::from(ok));
                    }
                    g.states.insert(name, state);
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            }
        }
    }

    async fn ready(&self) -> (bool, String) {
        let (tree, listeners, states) = {
            let g = self.0.lock().expect("lock");
            (g.tree.clone(), g.listeners.clone(), g.states.clone())
        };
        let site = tree.site().clone();
        let key = site.prefix.trim_end_matches('/').to_string();
        let site_ok = matches!(
            tokio::time::timeout(Duration::from_secs(5), site.backend.stat(&key)).await,
            Ok(Ok(_))
        ) || key.is_empty()
            && matches!(
                tokio::time::timeout(Duration::from_secs(5), site.backend.stat("")).await,
                Ok(Ok(_))
            );
        let ready = site_ok && !listeners.is_empty();
        let remotes = remotes_json(states);
        let body = serde_json::json!({
            "ready": ready,
            "site_tree": if site_ok { "up" } else { "down" },
            "listeners": listeners,
            "remotes": remotes,
        });
        (ready, body.to_string())
    }

    /// Each remote's last probe, as `/readyz` and the admin API show it.
    pub fn remotes(&self) -> serde_json::Value {
        let states = self.0.lock().expect("lock").states.clone();
        remotes_json(states)
    }

    fn metrics(&self) -> String {
        // The statistics are a snapshot taken at an epoch; a read error leaves the last figures.
        if tikv_jemalloc_ctl::epoch::advance().is_ok() {
            let m = &self.1;
            if let Ok(v) = tikv_jemalloc_ctl::stats::allocated::read() {
                m.heap_allocated.set(v as i64);
            }
            if let Ok(v) = tikv_jemalloc_ctl::stats::resident::read() {
                m.heap_resident.set(v as i64);
            }
            if let Ok(v) = tikv_jemalloc_ctl::stats::metadata::read() {
                m.heap_metadata.set(v as i64);
            }
        }
        if let Some(b) = self.1.budget.get() {
            self.1.budget_used.set(b.in_use() as i64);
            self.1.budget_limit.set(b.total() as i64);
        }
        bucketgate_storage::metrics::encode(&self.1.registry)
    }
}

fn remotes_json(states: BTreeMap<String, RemoteState>) -> serde_json::Value {
    let remotes: serde_json::Map<String, serde_json::Value> = states
        .into_iter()
        .map(|(k, s)| {
            (
                k,
                serde_json::json!({
                    "state": match s.ok { Some(true) => "up", Some(false) => "down", None => "unknown" },
                    "error": s.error,
                }),
            )
        })
        .collect();
    serde_json::Value::Object(remotes)
}

/// The prefix each remote is probed under: the first place the config uses it, in the order
/// site tree, mounts, syncs. One probe per remote: a key that may list one of its prefixes
/// almost always may list the others (a remote whose mounts have different permissions shows
/// the first one's state); a remote nothing uses is probed at the bucket root.
pub fn probe_prefixes(cfg: &bucketgate_config::Config) -> HashMap<String, String> {
    let mut out = HashMap::new();
    if let bucketgate_config::StorageConfig::S3 { remote, prefix } = &cfg.storage {
        out.insert(remote.clone(), prefix.clone());
    }
    let uses = cfg
        .mounts
        .iter()
        .map(|m| (&m.remote, &m.prefix))
        .chain(cfg.syncs.iter().map(|s| (&s.remote, &s.prefix)));
    for (remote, prefix) in uses {
        out.entry(remote.clone()).or_insert_with(|| prefix.clone());
    }
    out
}

/// Serves the admin endpoint until `shutdown`.
///
/// With `tls`, every connection is HTTPS: the handshake must end within [`HEADER_TIMEOUT`], and a
/// client speaking plain HTTP gets a TLS alert, never an answer.
pub async fn serve(
    listener: TcpListener,
    health: Health,
    api: Option<Arc<crate::api::Api>>,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // A slot first: over the bound, connections wait in the backlog, not in memory.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { tracing::warn!(error = %e, "admin accept failed"); continue; }
            },
        };
        let health = health.clone();
        let api = api.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let health = health.clone();
                let api = api.clone();
                async move {
                    // The admin API (gateway/src/api) when the state store is open.
                    if let (Some(api), true) = (&api, req.uri().path().starts_with("/api/")) {
                        return Ok::<_, Infallible>(api.handle(req, peer.ip()).await);
                    }
                    // The web console's static page (gateway/src/console), over that API.
                    if api.is_some() && matches!(*req.method(), Method::GET | Method::HEAD) {
                        if let Some(r) = crate::console::respond(req.uri().path()) {
                            return Ok::<_, Infallible>(r);
                        }
                    }
                    Ok::<_, Infallible>(respond(&health, &req).await)
                }
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                // A probe's head is a few hundred bytes: 8 KiB (hyper's least) per connection.
                .max_buf_size(8192)
                .keep_alive(false);
            // A client too slow to take its answer is cut off; nothing to report.
            match tls {
                None => {
                    let conn = http.serve_connection(TokioIo::new(sock), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(sock))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = http.serve_connection(TokioIo::new(stream), service);
                    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                }
            }
        });
    }
}

/// The answer to one request (hyper leaves the body out for HEAD).
async fn respond(health: &Health, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = if req.method() != Method::GET && req.method() != Method::HEAD {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".to_string(),
        )
    } else {
        match req.uri().path() {
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            "/readyz" => {
                let (ready, body) = health.ready().await;
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (status, "application/json", body)
            }
            "/metrics" => (
                StatusCode::OK,
                bucketgate_storage::metrics::CONTENT_TYPE,
                health.metrics(),
            ),
            _ => (
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found\n".to_string(),
            ),
        }
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp
}
