//! The gateway's log: one event, one line, on stderr, as text or JSON.
//!
//! Spans of dependencies are left out of every line. libunftp wraps each command and transfer in
//! spans whose fields are `Debug` dumps of its session (kilobytes each), and every event inside
//! one, the audit line of a download included, would carry them all. Our events name what they
//! are about in their own fields (user, client, operation, path, result), and recording those
//! spans is not paid for either: a span no layer wants is never formatted.

use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The formatting layer of the gateway's log, writing to `writer`: JSON (one object per line,
/// the event's fields at the top level) or text, with colours when `ansi`.
pub fn layer<S, W>(json: bool, ansi: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt = if json {
        fmt.json().flatten_event(true).boxed()
    } else {
        fmt.with_ansi(ansi).boxed()
    };
    fmt.with_filter(filter_fn(|m| {
        !m.is_span() || m.target().starts_with("bucketgate")
    }))
    .boxed()
}

/// The level filter: `level` is a tracing filter (`info`, `debug`, `info,bucketgate::auth=debug`);
/// RUST_LOG overrides it.
pub fn filter(level: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the global subscriber: the log on stderr, human on a terminal, JSON for shipping.
pub fn init(json: bool, level: &str) {
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::registry()
        .with(filter(level))
        .with(layer(json, ansi, std::io::stderr))
        .try_init();
}
