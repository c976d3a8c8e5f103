//! File operations: their counters and the audit log.
//!
//! The audit log ([`file_op`]) writes one `info` line per file operation with the target
//! `bucketgate::audit`, and counts the same operation, so that the counters and the audit
//! lines always agree.

use super::{labels, register_family, CounterFamily};
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

const FILE_OPS: &str = "bucketgate_file_operations_total";
const BYTES_RECEIVED: &str = "bucketgate_bytes_received_total";
const BYTES_SENT: &str = "bucketgate_bytes_sent_total";

static FILE_OPS_FAMILY: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);
static BYTES_RECEIVED_FAMILY: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);
static BYTES_SENT_FAMILY: LazyLock<CounterFamily> = LazyLock::new(CounterFamily::default);

pub(super) fn register(reg: &mut Registry) {
    register_family(
        reg,
        FILE_OPS,
        "File operations, by protocol, kind and result (ok or the error kind).",
        FILE_OPS_FAMILY.clone(),
    );
    register_family(
        reg,
        BYTES_RECEIVED,
        "Bytes uploaded by clients, by protocol.",
        BYTES_RECEIVED_FAMILY.clone(),
    );
    register_family(
        reg,
        BYTES_SENT,
        "Bytes downloaded by clients, by protocol.",
        BYTES_SENT_FAMILY.clone(),
    );
}

/// Who performs file operations: set by the frontend's login on the user's file tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    /// `sftp` or `ftp`.
    pub protocol: &'static str,
    /// The client's real address (from the PROXY header when one is used).
    pub client: IpAddr,
}

/// One file operation's identity, for the audit line.
#[derive(Clone, Debug)]
pub struct OpContext {
    /// The user.
    pub user: String,
    /// The session, when a frontend set it.
    pub session: Option<SessionInfo>,
    /// Where the session's transfers in progress are shown (the admin API).
    pub activity: Option<Arc<Activity>>,
}

/// A session's transfers in progress and the bytes it has moved, for the admin API: each
/// [`Transfer`] is listed from its start to its end.
#[derive(Debug, Default)]
pub struct Activity {
    next: AtomicU64,
    total: AtomicU64,
    live: Mutex<BTreeMap<u64, Live>>,
}

#[derive(Debug)]
struct Live {
    op: &'static str,
    path: String,
    started: SystemTime,
    bytes: Arc<AtomicU64>,
}

/// One transfer in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LiveTransfer {
    /// `open_read` (a download) or `open_write` (an upload).
    pub operation: &'static str,
    /// The path as the user sees it.
    pub path: String,
    /// When it started.
    pub started: SystemTime,
    /// Bytes moved so far.
    pub bytes: u64,
}

impl Activity {
    /// Bytes uploaded and downloaded by the session so far, finished transfers included.
    pub fn bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// The transfers in progress, oldest first.
    pub fn transfers(&self) -> Vec<LiveTransfer> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.values()
            .map(|l| LiveTransfer {
                operation: l.op,
                path: l.path.clone(),
                started: l.started,
                bytes: l.bytes.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn start(&self, op: &'static str, path: &str) -> (u64, Arc<AtomicU64>) {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let bytes = Arc::new(AtomicU64::new(0));
        self.live.lock().unwrap_or_else(|e| e.into_inner()).insert(
            key,
            Live {
                op,
                path: path.to_string(),
                started: SystemTime::now(),
                bytes: bytes.clone(),
            },
        );
        (key, bytes)
    }

    fn end(&self, key: u64) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
    }
}

/// The result label of an operation: `ok` or the error kind in snake case.
pub fn result_of<T>(r: &crate::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => error_label(e.kind()),
    }
}

/// An error kind as a metric label (`not_found`, `permission_denied`...).
pub fn error_label(kind: crate::ErrorKind) -> String {
    let mut out = String::new();
    for (i, c) in format!("{kind:?}").chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Records one finished file operation: the counter, the bytes of a transfer, and the audit
/// line. `op` is one of open_read, open_write, list, stat, mkdir, rmdir, remove, rename,
/// setstat.
/// `error` is what went wrong, as the client was told (no bucket key, no secret), for a
/// failed operation: the one line that says why a transfer failed.
pub fn file_op(
    ctx: &OpContext,
    op: &'static str,
    path: &str,
    bytes: u64,
    elapsed: Duration,
    result: &str,
    error: Option<&str>,
) {
    let protocol = ctx.session.map(|s| s.protocol).unwrap_or("none");
    let client = ctx
        .session
        .map(|s| s.client.to_string())
        .unwrap_or_default();
    FILE_OPS_FAMILY
        .get_or_create(&labels(&[
            ("protocol", protocol),
            ("op", op),
            ("result", result),
        ]))
        .inc();
    if bytes > 0 {
        let family = if op == "open_write" {
            &BYTES_RECEIVED_FAMILY
        } else {
            &BYTES_SENT_FAMILY
        };
        family
            .get_or_create(&labels(&[("protocol", protocol)]))
            .inc_by(bytes);
    }
    // Paths are logged with Debug formatting so that a control character in a name cannot
    // forge a log line.
    match error {
        None => tracing::info!(
            target: "bucketgate::audit",
            user = %ctx.user,
            protocol,
            client = %client,
            operation = op,
            path = ?path,
            bytes,
            duration_ms = elapsed.as_millis() as u64,
            result,
            "file operation"
        ),
        // Debug formatting, as for the path: the message may quote a client's name.
        Some(error) => tracing::info!(
            target: "bucketgate::audit",
            user = %ctx.user,
            protocol,
            client = %client,
            operation = op,
            path = ?path,
            bytes,
            duration_ms = elapsed.as_millis() as u64,
            result,
            error = ?error,
            "file operation"
        ),
    }
}

/// The message of a failed result, for [`file_op`]'s `error`.
pub fn error_of<T>(r: &crate::Result<T>) -> Option<String> {
    r.as_ref().err().map(|e| e.to_string())
}

/// A file transfer in progress: counts its bytes and writes the audit line once, when it ends
/// (explicitly, or when the handle is dropped).
pub struct Transfer {
    ctx: OpContext,
    op: &'static str,
    path: String,
    started: Instant,
    bytes: u64,
    result: Option<String>,
    /// The first failure's message.
    error: Option<String>,
    done: bool,
    /// Its entry in the session's [`Activity`].
    live: Option<(Arc<Activity>, u64, Arc<AtomicU64>)>,
}

impl Transfer {
    /// A transfer of `path` that started at `started`.
    pub fn new(ctx: OpContext, op: &'static str, path: String, started: Instant) -> Self {
        let live = ctx.activity.clone().map(|a| {
            let (key, bytes) = a.start(op, &path);
            (a, key, bytes)
        });
        Transfer {
            live,
            ctx,
            op,
            path,
            started,
            bytes: 0,
            result: None,
            error: None,
            done: false,
        }
    }

    /// `n` more bytes went through.
    pub fn add(&mut self, n: u64) {
        self.bytes += n;
        if let Some((a, _, bytes)) = &self.live {
            bytes.fetch_add(n, Ordering::Relaxed);
            a.total.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Remembers the first failure, reported when the transfer ends.
    pub fn failed(&mut self, e: &crate::Error) {
        if self.result.is_none() {
            self.result = Some(error_label(e.kind()));
            self.error = Some(e.to_string());
        }
    }

    /// Ends the transfer with the result of its last step (a writer's close).
    pub fn end<T>(&mut self, r: &crate::Result<T>) {
        if let Err(e) = r {
            if self.error.is_none() {
                self.error = Some(e.to_string());
            }
        }
        self.finish(&result_of(r));
    }

    /// Ends the transfer with `result` (`ok`, an error kind, `aborted`).
    pub fn finish(&mut self, result: &str) {
        if let Some((a, key, _)) = self.live.take() {
            a.end(key);
        }
        if self.done {
            return;
        }
        self.done = true;
        let result = match (&self.result, result) {
            (Some(r), "ok") => r.clone(),
            _ => result.to_string(),
        };
        let error = match result.as_str() {
            "ok" => None,
            // Abandoned by the client: nothing went wrong here.
            "aborted" if self.error.is_none() => None,
            _ => Some(
                self.error
                    .as_deref()
                    .unwrap_or("the transfer ended without an error message"),
            ),
        };
        file_op(
            &self.ctx,
            self.op,
            &self.path,
            self.bytes,
            self.started.elapsed(),
            &result,
            error,
        );
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        // A reader has no close: dropping it ends the download. A writer dropped without close
        // was abandoned by its client.
        let r = if self.op == "open_write" {
            "aborted"
        } else {
            "ok"
        };
        self.finish(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_error_kinds() {
        assert_eq!(
            error_label(crate::ErrorKind::PermissionDenied),
            "permission_denied"
        );
        assert_eq!(error_label(crate::ErrorKind::NotFound), "not_found");
    }

    #[test]
    fn counts_file_operations_and_bytes() {
        let ctx = OpContext {
            user: "ann".into(),
            session: Some(SessionInfo {
                protocol: "sftp",
                client: "127.0.0.1".parse().unwrap(),
            }),
            activity: None,
        };
        let before = super::super::render();
        let n = |text: &str, series: &str| {
            text.lines()
                .find_map(|l| {
                    l.strip_prefix(series)?
                        .strip_prefix(' ')?
                        .parse::<u64>()
                        .ok()
                })
                .unwrap_or(0)
        };
        let series =
            r#"bucketgate_file_operations_total{protocol="sftp",op="stat",result="audit_test"}"#;
        file_op(&ctx, "stat", "/a", 0, Duration::ZERO, "audit_test", None);
        file_op(&ctx, "open_write", "/a", 7, Duration::ZERO, "ok", None);
        let after = super::super::render();
        assert_eq!(n(&after, series), n(&before, series) + 1, "{after}");
        let bytes = r#"bucketgate_bytes_received_total{protocol="sftp"}"#;
        assert_eq!(n(&after, bytes), n(&before, bytes) + 7, "{after}");
        assert!(after.contains("# TYPE bucketgate_bytes_received_total counter\n"));
    }
}
