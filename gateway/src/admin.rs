//! The admin HTTP endpoint: `/healthz`, `/readyz`, `/metrics`.
//!
//! A deliberately tiny HTTP/1.1 responder (GET only, one request per connection): the load
//! balancer's probes and Prometheus need nothing more, and it keeps the binary lean.

use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::Tree;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

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

/// What `/readyz` reports: the listeners, the site tree, and each remote's last probe.
#[derive(Clone)]
pub struct Health(Arc<Mutex<Inner>>);

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
        Health(Arc::new(Mutex::new(Inner {
            tree,
            remotes,
            prefixes,
            states,
            listeners: Vec::new(),
        })))
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
                self.0.lock().expect("lock").states.insert(name, state);
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
        let body = serde_json::json!({
            "ready": ready,
            "site_tree": if site_ok { "up" } else { "down" },
            "listeners": listeners,
            "remotes": remotes,
        });
        (ready, body.to_string())
    }

    fn metrics(&self) -> String {
        let g = self.0.lock().expect("lock");
        let mut out = String::new();
        out.push_str("# HELP bucketgate_up The process is running.\n# TYPE bucketgate_up gauge\nbucketgate_up 1\n");
        out.push_str("# HELP bucketgate_remote_up Last probe of each remote (1 up, 0 down).\n# TYPE bucketgate_remote_up gauge\n");
        for (k, s) in &g.states {
            if let Some(ok) = s.ok {
                out.push_str(&format!(
                    "bucketgate_remote_up{{remote=\"{}\"}} {}\n",
                    k.replace('\\', "\\\\").replace('"', "\\\""),
                    u8::from(ok)
                ));
            }
        }
        // Everything the other crates recorded: sessions, logins, bytes, file operations, S3
        // requests, multipart uploads, sync runs.
        out.push_str(&bucketgate_storage::metrics::render());
        out
    }
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
pub async fn serve(
    listener: TcpListener,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let (mut sock, _) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => { tracing::warn!(error = %e, "admin accept failed"); continue; }
            },
        };
        let health = health.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            let mut n = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let m = sock.read(&mut buf[n..]).await?;
                    if m == 0 {
                        break;
                    }
                    n += m;
                    if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") || n == buf.len() {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let req = String::from_utf8_lossy(&buf[..n]);
            let mut parts = req.split_whitespace();
            let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (status, ctype, body) = if method != "GET" && method != "HEAD" {
                (
                    "405 Method Not Allowed",
                    "text/plain",
                    "GET only\n".to_string(),
                )
            } else {
                match target.split('?').next().unwrap_or("") {
                    "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                    "/readyz" => {
                        let (ready, body) = health.ready().await;
                        (
                            if ready {
                                "200 OK"
                            } else {
                                "503 Service Unavailable"
                            },
                            "application/json",
                            body,
                        )
                    }
                    "/metrics" => ("200 OK", "text/plain; version=0.0.4", health.metrics()),
                    _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
                }
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            if method != "HEAD" {
                let _ = sock.write_all(body.as_bytes()).await;
            }
            let _ = sock.shutdown().await;
        });
    }
}
