//! The process-wide metrics registry and the audit log.
//!
//! A small hand-written registry rather than the `prometheus` crate: the gateway needs
//! counters, gauges and one histogram shape, rendered in the Prometheus text format by the
//! admin endpoint, and nothing else. Every crate records through the functions below; the
//! registry is one mutex-guarded map, touched once per request or file operation (never per
//! packet), so contention is negligible.
//!
//! The audit log ([`file_op`]) writes one `info` line per file operation with the target
//! `bucketgate::audit`, and counts the same operation, so that the counters and the audit
//! lines always agree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Latency buckets (seconds) for S3 requests: from a local MinIO to a slow WAN link.
const LATENCY_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Label pairs in a fixed order (the order the recording site gives).
type Labels = Vec<(&'static str, String)>;

enum Value {
    Number(f64),
    Histogram {
        counts: [u64; LATENCY_BUCKETS.len()],
        sum: f64,
        count: u64,
    },
}

struct Family {
    help: &'static str,
    kind: Kind,
    series: BTreeMap<Labels, Value>,
}

/// The registry: metric families by name.
#[derive(Default)]
struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

fn with_series(
    name: &'static str,
    help: &'static str,
    kind: Kind,
    pairs: &[(&'static str, &str)],
    f: impl FnOnce(&mut Value),
) {
    let mut fams = registry().families.lock().expect("metrics lock");
    let fam = fams.entry(name).or_insert_with(|| Family {
        help,
        kind,
        series: BTreeMap::new(),
    });
    let v = fam
        .series
        .entry(labels(pairs))
        .or_insert_with(|| match kind {
            Kind::Histogram => Value::Histogram {
                counts: [0; LATENCY_BUCKETS.len()],
                sum: 0.0,
                count: 0,
            },
            _ => Value::Number(0.0),
        });
    f(v);
}

/// Adds `by` to a counter.
fn count(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], by: u64) {
    with_series(name, help, Kind::Counter, pairs, |v| {
        if let Value::Number(n) = v {
            *n += by as f64;
        }
    });
}

/// Moves a gauge by `delta`.
fn gauge(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], delta: f64) {
    with_series(name, help, Kind::Gauge, pairs, |v| {
        if let Value::Number(n) = v {
            *n += delta;
        }
    });
}

/// Records one observation (seconds) in a latency histogram.
fn observe(name: &'static str, help: &'static str, pairs: &[(&'static str, &str)], secs: f64) {
    with_series(name, help, Kind::Histogram, pairs, |v| {
        if let Value::Histogram { counts, sum, count } = v {
            if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
                counts[i] += 1;
            }
            *sum += secs;
            *count += 1;
        }
    });
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn render_labels(out: &mut String, l: &Labels, extra: Option<(&str, &str)>) {
    if l.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in l.iter().map(|(k, v)| (*k, v.as_str())).chain(extra) {
        if !first {
            out.push(',');
        }
        first = false;
        let _ = write!(out, "{k}=\"{}\"", escape(v));
    }
    out.push('}');
}

fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Everything recorded so far, in the Prometheus text exposition format (0.0.4).
pub fn render() -> String {
    let fams = registry().families.lock().expect("metrics lock");
    let mut out = String::new();
    for (name, fam) in fams.iter() {
        let _ = writeln!(out, "# HELP {name} {}", fam.help);
        let _ = writeln!(out, "# TYPE {name} {}", fam.kind.name());
        for (l, v) in &fam.series {
            match v {
                Value::Number(n) => {
                    out.push_str(name);
                    render_labels(&mut out, l, None);
                    let _ = writeln!(out, " {}", num(*n));
                }
                Value::Histogram { counts, sum, count } => {
                    let mut acc = 0;
                    for (b, c) in LATENCY_BUCKETS.iter().zip(counts) {
                        acc += c;
                        let _ = write!(out, "{name}_bucket");
                        render_labels(&mut out, l, Some(("le", &b.to_string())));
                        let _ = writeln!(out, " {acc}");
                    }
                    let _ = write!(out, "{name}_bucket");
                    render_labels(&mut out, l, Some(("le", "+Inf")));
                    let _ = writeln!(out, " {count}");
                    let _ = write!(out, "{name}_sum");
                    render_labels(&mut out, l, None);
                    let _ = writeln!(out, " {sum}");
                    let _ = write!(out, "{name}_count");
                    render_labels(&mut out, l, None);
                    let _ = writeln!(out, " {count}");
                }
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Sessions and logins (protocols crate).

/// Counts one open session of `protocol` for as long as it lives.
pub struct SessionGuard(&'static str);

impl SessionGuard {
    /// A session of `protocol` (`sftp`, `ftp`) was admitted.
    pub fn new(protocol: &'static str) -> Self {
        count(
            "bucketgate_sessions_total",
            "Sessions admitted, by protocol.",
            &[("protocol", protocol)],
            1,
        );
        gauge(
            "bucketgate_sessions_active",
            "Sessions open now, by protocol.",
            &[("protocol", protocol)],
            1.0,
        );
        SessionGuard(protocol)
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        gauge(
            "bucketgate_sessions_active",
            "Sessions open now, by protocol.",
            &[("protocol", self.0)],
            -1.0,
        );
    }
}

/// A login attempt ended: `result` is `ok` or the failure reason.
pub fn login(protocol: &'static str, result: &str) {
    count(
        "bucketgate_logins_total",
        "Login attempts, by protocol and result (ok or the failure reason).",
        &[("protocol", protocol), ("result", result)],
        1,
    );
}

// ---------------------------------------------------------------------------------------------
// File operations and the audit log (storage crate, vfs.rs and transfer.rs).

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
    count(
        "bucketgate_file_operations_total",
        "File operations, by protocol, kind and result (ok or the error kind).",
        &[("protocol", protocol), ("op", op), ("result", result)],
        1,
    );
    if bytes > 0 {
        let (name, help) = if op == "open_write" {
            (
                "bucketgate_bytes_received_total",
                "Bytes uploaded by clients, by protocol.",
            )
        } else {
            (
                "bucketgate_bytes_sent_total",
                "Bytes downloaded by clients, by protocol.",
            )
        };
        count(name, help, &[("protocol", protocol)], bytes);
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
}

impl Transfer {
    /// A transfer of `path` that started at `started`.
    pub fn new(ctx: OpContext, op: &'static str, path: String, started: Instant) -> Self {
        Transfer {
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

// ---------------------------------------------------------------------------------------------
// S3 (storage/src/s3).

/// The S3 operation a request performs, for the `operation` label.
pub fn s3_operation(method: &str, query: &[(String, String)], copy_source: bool) -> &'static str {
    let has = |k: &str| query.iter().any(|(q, _)| q == k);
    match method {
        "GET" if has("uploads") => "LIST_MULTIPART",
        "GET" if has("list-type") || has("prefix") || has("delimiter") => "LIST",
        "GET" if has("location") => "GET_LOCATION",
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" if has("partNumber") && copy_source => "UPLOAD_PART_COPY",
        "PUT" if has("partNumber") => "UPLOAD_PART",
        "PUT" if copy_source => "COPY",
        "PUT" => "PUT",
        "POST" if has("uploads") => "CREATE_MULTIPART",
        "POST" if has("uploadId") => "COMPLETE_MULTIPART",
        "POST" if has("delete") => "DELETE_OBJECTS",
        "DELETE" if has("uploadId") => "ABORT_MULTIPART",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

/// One S3 HTTP exchange ended: `status` is the HTTP status, or `error` when no answer came.
pub fn s3_request(remote: &str, operation: &'static str, status: &str, elapsed: Duration) {
    count(
        "bucketgate_s3_requests_total",
        "S3 requests, by remote, operation and HTTP status (error: no answer).",
        &[
            ("remote", remote),
            ("operation", operation),
            ("status", status),
        ],
        1,
    );
    observe(
        "bucketgate_s3_request_duration_seconds",
        "S3 request latency until the response head, by remote and operation.",
        &[("remote", remote), ("operation", operation)],
        elapsed.as_secs_f64(),
    );
}

/// An S3 request is sent again after a retryable failure.
pub fn s3_retry(remote: &str, operation: &'static str) {
    count(
        "bucketgate_s3_retries_total",
        "S3 requests retried, by remote and operation.",
        &[("remote", remote), ("operation", operation)],
        1,
    );
}

/// A multipart upload was created (+1) or ended (-1), and whether it was aborted.
pub fn multipart(remote: &str, delta: i64, aborted: bool) {
    gauge(
        "bucketgate_s3_multipart_uploads_in_flight",
        "Multipart uploads created and not yet completed or aborted, by remote.",
        &[("remote", remote)],
        delta as f64,
    );
    if aborted {
        count(
            "bucketgate_s3_multipart_uploads_aborted_total",
            "Multipart uploads aborted, by remote.",
            &[("remote", remote)],
            1,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sync (storage/src/sync/run.rs).

/// A sync run ended with `outcome` (`ok`, `failed`, `dry_run`).
pub fn sync_run(job: &str, outcome: &str) {
    count(
        "bucketgate_sync_runs_total",
        "Sync runs, by job and outcome.",
        &[("job", job), ("outcome", outcome)],
        1,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_gauges_and_histograms() {
        login("sftp", "ok");
        login("sftp", "ok");
        login("ftp", "wrong_password");
        {
            let _g = SessionGuard::new("ftp");
            assert!(render().contains("bucketgate_sessions_active{protocol=\"ftp\"} 1\n"));
        }
        s3_request("r\"1", "GET", "200", Duration::from_millis(30));
        let text = render();
        assert!(text.contains("# TYPE bucketgate_logins_total counter\n"));
        assert!(text.contains("bucketgate_logins_total{protocol=\"sftp\",result=\"ok\"} 2\n"));
        assert!(text
            .contains("bucketgate_logins_total{protocol=\"ftp\",result=\"wrong_password\"} 1\n"));
        assert!(text.contains("bucketgate_sessions_active{protocol=\"ftp\"} 0\n"));
        assert!(text.contains("bucketgate_sessions_total{protocol=\"ftp\"} 1\n"));
        assert!(text.contains(
            "bucketgate_s3_request_duration_seconds_bucket{remote=\"r\\\"1\",operation=\"GET\",le=\"0.025\"} 0\n"
        ));
        assert!(text.contains(
            "bucketgate_s3_request_duration_seconds_bucket{remote=\"r\\\"1\",operation=\"GET\",le=\"0.05\"} 1\n"
        ));
        assert!(text.contains(
            "bucketgate_s3_request_duration_seconds_count{remote=\"r\\\"1\",operation=\"GET\"} 1\n"
        ));
    }

    #[test]
    fn names_s3_operations_and_error_kinds() {
        let q = |k: &str| vec![(k.to_string(), String::new())];
        assert_eq!(s3_operation("GET", &q("list-type"), false), "LIST");
        assert_eq!(
            s3_operation("PUT", &q("partNumber"), true),
            "UPLOAD_PART_COPY"
        );
        assert_eq!(s3_operation("PUT", &[], true), "COPY");
        assert_eq!(
            s3_operation("POST", &q("uploads"), false),
            "CREATE_MULTIPART"
        );
        assert_eq!(
            s3_operation("DELETE", &q("uploadId"), false),
            "ABORT_MULTIPART"
        );
        assert_eq!(s3_operation("HEAD", &[], false), "HEAD");
        assert_eq!(
            error_label(crate::ErrorKind::PermissionDenied),
            "permission_denied"
        );
        assert_eq!(error_label(crate::ErrorKind::NotFound), "not_found");
    }
}
