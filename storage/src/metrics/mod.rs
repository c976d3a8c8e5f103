//! The storage layer's metrics and the audit log, on the official Prometheus client crate
//! (`prometheus-client`).
//!
//! Each concern owns its metric families as process-wide statics and records through the
//! functions of its module: file operations and the audit log ([`audit`]), S3 requests
//! ([`s3`]), sync runs ([`sync`]). The families are registered by [`register`] into the one
//! `Registry` that the gateway's admin endpoint renders; sessions and logins are the frontends'
//! and live in `bucketgate_protocols::metrics`.
//!
//! The exposition is the Prometheus text format 0.0.4 (`prometheus_text::encode`): counter
//! names end in `_total`, labels keep the order the recording site gives, label values are
//! escaped, histogram bounds print as Go prints them (`le="1"`).

mod audit;
mod s3;
mod sync;

pub use audit::{
    error_label, error_of, file_op, result_of, Activity, LiveTransfer, OpContext, SessionInfo,
    Transfer,
};
pub use s3::{multipart, s3_operation, s3_request, s3_retry};
pub use sync::sync_run;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Label pairs in the order the recording site gives them.
pub type Labels = Vec<(&'static str, String)>;

/// A counter family by labels.
pub type CounterFamily = Family<Labels, Counter>;

/// A gauge family by labels.
pub type GaugeFamily = Family<Labels, Gauge>;

/// Label pairs from borrowed values.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, v.to_string())).collect()
}

/// Registers a family under `name` (which ends in `_total` for a counter, as exposed: the
/// suffix is taken off here and put back by the encoder). `help` is given with its final
/// period, which the registry adds itself.
pub fn register_family(
    reg: &mut Registry,
    name: &str,
    help: &str,
    metric: impl prometheus_client::registry::Metric,
) {
    let name = name.strip_suffix("_total").unwrap_or(name);
    let help = help.strip_suffix('.').unwrap_or(help);
    reg.register(name, help, metric);
}

/// Registers every storage family (file operations and bytes, S3 requests, multipart uploads,
/// sync runs) into `reg`.
pub fn register(reg: &mut Registry) {
    audit::register(reg);
    s3::register(reg);
    sync::register(reg);
}

/// `reg` in the Prometheus text exposition format (0.0.4).
pub fn encode(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, reg);
    out
}

/// The content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The storage families alone, rendered: for tests.
pub fn render() -> String {
    let mut reg = Registry::default();
    register(&mut reg);
    encode(&reg)
}
