//! `limits`, `transfers` and `log`: tuning sections whose every key has a default.

use serde::Deserialize;

use crate::net::IpNet;
use crate::units::{ByteSize, Duration};

/// `limits:` — connection limits and brute-force defence.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sessions of all protocols together.
    pub max_sessions: u32,
    /// Sessions from one client address.
    pub max_sessions_per_ip: u32,
    /// Time to authenticate before the connection is closed.
    pub login_grace: Duration,
    /// An idle session is closed after this long.
    pub idle_timeout: Duration,
    /// Failed-login banning shared by SFTP and FTP.
    pub ban: BanConfig,
    /// On SIGTERM, transfers in progress get this long to finish.
    pub shutdown_grace: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_sessions: 1000,
            max_sessions_per_ip: 20,
            login_grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            ban: BanConfig::default(),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// `limits.ban:` — a failed password scores 1, an unknown user 2; reaching `threshold`
/// within `window` bans the address for `duration`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BanConfig {
    /// Score that triggers a ban.
    pub threshold: u32,
    /// Sliding window over which scores add up.
    pub window: Duration,
    /// How long a ban lasts.
    pub duration: Duration,
    /// Networks never banned.
    pub safelist: Vec<IpNet>,
}

impl Default for BanConfig {
    fn default() -> Self {
        BanConfig {
            threshold: 15,
            window: Duration::from_secs(30 * 60),
            duration: Duration::from_secs(30 * 60),
            safelist: Vec::new(),
        }
    }
}

/// `transfers:` — tuning of the S3 data path.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransfersConfig {
    /// First multipart part size; it grows for very large streams.
    pub part_size: ByteSize,
    /// Parts in flight per upload, ranges ahead per download.
    pub concurrency: u32,
    /// An upload keeps no more bytes in flight than its remote stores in this long, so that it
    /// finishes about this soon after its last byte.
    pub finish_within: Duration,
    /// All transfer buffers of the process together.
    pub memory_limit: ByteSize,
    /// Abandoned multipart uploads under our prefixes are aborted after this long.
    pub stale_multipart_after: Duration,
    /// Keep what arrived of an interrupted upload, so that a client can resume it.
    pub keep_partial_uploads: bool,
    /// Copies whose source can be read again (syncs) and whose size is known send files up to
    /// this size as one streamed PutObject instead of a multipart upload; 0 turns it off.
    pub single_put_max: ByteSize,
}

impl Default for TransfersConfig {
    fn default() -> Self {
        TransfersConfig {
            part_size: ByteSize::new(8 * ByteSize::MIB),
            concurrency: 4,
            finish_within: Duration::from_secs(10),
            memory_limit: ByteSize::new(512 * ByteSize::MIB),
            stale_multipart_after: Duration::from_secs(24 * 3600),
            keep_partial_uploads: false,
            single_put_max: ByteSize::new(200 * ByteSize::MIB),
        }
    }
}

/// `log:` — logging to stderr.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Line format.
    pub format: LogFormat,
    /// A `tracing` filter: a level (`info`) or directives (`info,bucketgate=debug`).
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}
