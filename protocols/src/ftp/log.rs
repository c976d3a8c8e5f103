//! libunftp logs through `slog`; this drain turns its records into `tracing` events, so that
//! they share the gateway's format, level filter and output.

use std::fmt::{self, Write};

/// The target of every event that comes from libunftp.
const TARGET: &str = "libunftp";

/// A `slog` drain that forwards to `tracing`.
pub(crate) struct TracingDrain;

/// Collects a record's key-value pairs as ` key=value` text.
struct Pairs(String);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record,
        values: &slog::OwnedKVList,
    ) -> Result<Self::Ok, Self::Err> {
        use slog::KV;
        let mut pairs = Pairs(String::new());
        let _ = record.kv().serialize(record, &mut pairs);
        let _ = values.serialize(record, &mut pairs);
        let msg = record.msg();
        let kv = pairs.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: TARGET, "{msg}{kv}")
            }
            slog::Level::Warning => tracing::warn!(target: TARGET, "{msg}{kv}"),
            slog::Level::Info => tracing::info!(target: TARGET, "{msg}{kv}"),
            slog::Level::Debug => tracing::debug!(target: TARGET, "{msg}{kv}"),
            slog::Level::Trace => tracing::trace!(target: TARGET, "{msg}{kv}"),
        }
        Ok(())
    }
}

/// A logger for one session, tagged with the client's address (libunftp itself only sees the
/// relay's loopback address).
pub(crate) fn session_logger(peer: std::net::SocketAddr) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("client" => peer.to_string()))
}
