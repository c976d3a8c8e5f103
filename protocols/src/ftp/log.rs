//! libunftp logs through `slog`; this drain turns its records into `tracing` events, so that
//! they share the gateway's format, level filter and output.
//!
//! Its info and warning records repeat what our own lines already say once (the audit line of
//! each file operation, the login line, `ftp: storage failure` for a backend that fails), so
//! they are `debug` here; its errors stay errors. A record's message is cut to [`MAX_RECORD`] bytes:
//! some print whole structures with `Debug`.

use std::fmt::{self, Write};

/// The target of every event that comes from libunftp.
const TARGET: &str = "libunftp";

/// The longest record passed on, in bytes.
const MAX_RECORD: usize = 300;

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
        let mut msg = record.msg().to_string();
        if msg.len() > MAX_RECORD {
            let mut end = MAX_RECORD;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
            msg.push_str(" [...]");
        }
        let text = format!("{msg}{}", pairs.0);
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: TARGET, "{text}"),
            slog::Level::Warning | slog::Level::Info | slog::Level::Debug => {
                tracing::debug!(target: TARGET, "{text}")
            }
            slog::Level::Trace => tracing::trace!(target: TARGET, "{text}"),
        }
        Ok(())
    }
}

/// A logger for one session, tagged with the client's address (libunftp itself only sees the
/// relay's loopback address).
pub(crate) fn session_logger(peer: std::net::SocketAddr) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("client" => peer.to_string()))
}
