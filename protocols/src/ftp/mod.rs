//! The FTP/FTPS frontend, built on libunftp.
//!
//! libunftp speaks FTP and calls our [`storage`] adapter (over [`bucketgate_storage::UserFs`])
//! and our [`auth`] adapter (over [`crate::auth::LoginService`]). In front of each libunftp
//! session sits a small control-channel relay ([`relay`]) that owns the client's socket, because
//! libunftp 0.24 lacks several things the contract needs and has no hook for them:
//!
//! - implicit FTPS and the TLS of the control channel (libunftp only knows `AUTH TLS`);
//! - a command line length limit and a pre-login grace time;
//! - data connections accepted only from the control connection's address (libunftp accepts
//!   the first connection on a passive port), PORT/EPRT checked before connecting (libunftp
//!   connects first, and has no EPRT at all), and each transfer bound to its own data
//!   connection (libunftp's passive task takes whichever transfer comes when it gets its
//!   connection: [`data`]);
//! - "not found" and "permission denied" as the first answer to RETR and LIST (libunftp
//!   answers 150 before it opens the file), decided once in [`prepare`];
//! - MFMT (rewritten to a `SITE MFMT` that libunftp hands to us) and a 554 for a bad REST
//!   offset (libunftp has no such reply kind);
//! - a REST offset that lasts for one transfer command only (libunftp keeps it after a failed
//!   one), OPTS MLST, and a 501 that keeps the session for a line libunftp's parser refuses
//!   (libunftp answers 501, then closes the connection);
//! - ABOR answered in RFC 959 order (the transfer's 426, then 226), with the data connection
//!   cut and the upload given up;
//! - uploads that commit only while the client's control connection is alive ([`link`]);
//! - the real client address at login (libunftp only sees the relay's loopback socket).
//!
//! The relay reaches libunftp over a loopback socket pair, not in-process: libunftp 0.24 serves
//! a connection only as a `tokio::net::TcpStream` (`Server::service`, which asks the socket for
//! its addresses; its control loop over any stream is private), so the relay's stream (TLS or
//! plain, with the checks above) can be handed over only as a TCP connection. libunftp runs
//! without TLS: the relay is the TLS endpoint of the control connection and, after PROT P, of
//! the data connections it splices to libunftp's (libunftp only ever gets a loopback PORT,
//! sent just before each transfer command: [`data`]).
//!
//! A command goes one way: client → relay (line checks, TLS, addresses, [`prepare`]) →
//! libunftp → [`storage`] adapter → [`bucketgate_storage::UserFs`] → S3. Nothing below the relay
//! calls back into it; the relay and the adapter share only the session's [`link`].

mod auth;
mod data;
#[cfg(target_os = "linux")]
mod kernel_relay;
mod link;
pub mod listing;
mod log;
mod mfmt;
mod prepare;
mod relay;
mod server;
mod storage;
mod tls;
mod urgent;

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

pub use server::serve;
/// The TLS server configuration of a PEM certificate and key, for the admin listener too.
pub use tls::server_config_for as tls_server_config;

/// Entries a single LIST/NLST/MLSD answers at most by default: libunftp wants the whole listing
/// as one `Vec`, so a folder of millions of objects would otherwise be held in memory at once.
pub const DEFAULT_MAX_LIST_ENTRIES: usize = 100_000;

/// How FTPS is offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `AUTH TLS` is offered; plain sessions are allowed too.
    Explicit,
    /// `AUTH TLS` is required before `USER`, and `PROT P` before any data connection.
    Required,
    /// TLS from the first byte on the implicit listener (control and data). The main listener
    /// behaves as in [`TlsMode::Explicit`].
    Implicit,
}

/// FTPS settings.
#[derive(Debug, Clone)]
pub struct FtpTls {
    /// How TLS is offered.
    pub mode: TlsMode,
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Settings of the FTP server (the `ftp` and `limits` sections of the config).
#[derive(Debug, Clone)]
pub struct FtpOptions {
    /// Ports for passive data connections. `0..=0` lets the system pick any free port.
    pub passive_ports: RangeInclusive<u16>,
    /// Address announced in PASV replies (NAT, load balancer); else the control connection's
    /// local address.
    pub public_address: Option<IpAddr>,
    /// Allow PORT/EPRT, only to the control connection's own address and ports >= 1024.
    pub active_mode: bool,
    /// FTPS, when configured.
    pub tls: Option<FtpTls>,
    /// A session with no command for this long is closed (transfers in progress excepted).
    pub idle_timeout: Duration,
    /// Time to log in (including the TLS handshake) before the connection is closed.
    pub login_grace: Duration,
    /// Longest command line accepted, in bytes; a longer one closes the connection.
    pub max_line_len: usize,
    /// On shutdown, sessions with a transfer in progress get this long to finish.
    pub shutdown_grace: Duration,
    /// Most entries one listing returns; the rest is left out with a warning in the log.
    pub max_list_entries: usize,
    /// The load balancers allowed to send a PROXY v1/v2 header; when set, every connection
    /// must come from one of them and start with a header.
    pub proxy_protocol: crate::proxy::Trusted,
    /// The process's transfer memory budget (`transfers.memory_limit`): a session with a
    /// transfer in progress holds its share of it (see `storage.rs`). `None`: no share.
    pub memory: Option<std::sync::Arc<bucketgate_storage::budget::MemoryBudget>>,
}

impl Default for FtpOptions {
    fn default() -> Self {
        FtpOptions {
            passive_ports: 50000..=50100,
            public_address: None,
            active_mode: false,
            tls: None,
            idle_timeout: Duration::from_secs(15 * 60),
            login_grace: Duration::from_secs(30),
            max_line_len: 4096,
            shutdown_grace: Duration::from_secs(30),
            max_list_entries: DEFAULT_MAX_LIST_ENTRIES,
            proxy_protocol: crate::proxy::Trusted::default(),
            memory: None,
        }
    }
}
