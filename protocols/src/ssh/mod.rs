//! The SSH frontend: SFTP v3 and SCP over SSH, served from a user's [`UserFs`].
//!
//! [`serve`] runs the listener; each connection gets its own SSH session ([`connection`]), whose
//! `sftp` subsystem channels run an SFTP handler ([`session`]) and whose `exec scp -t/-f`
//! channels run the legacy rcp protocol ([`scp`]). Nothing here talks to S3 or to a backend:
//! every file operation goes through [`UserFs`].
//!
//! [`UserFs`]: bucketgate_storage::UserFs

mod attrs;
mod connection;
mod dispatch;
mod errors;
mod handles;
mod hostkey;
pub mod scp;
mod server;
mod session;

pub use hostkey::load_or_create_host_keys;
pub use russh::keys::PrivateKey;
pub use server::serve;

use std::path::PathBuf;
use std::time::Duration;

/// Settings of the SSH frontend (the `sftp:` and `limits:` sections of the config).
#[derive(Debug, Clone)]
pub struct SftpOptions {
    /// OpenSSH private key files (see [`load_or_create_host_keys`]).
    pub host_keys: Vec<PathBuf>,
    /// Also offer SHA-1 era algorithms (ssh-rsa signatures, diffie-hellman-group14-sha1,
    /// hmac-sha1) for old JSch/MINA clients.
    pub legacy_algorithms: bool,
    /// Time a client has to authenticate before the connection is closed.
    pub login_grace: Duration,
    /// A connection with no traffic for this long is closed.
    pub idle_timeout: Duration,
    /// Session channels one connection may hold open at once.
    pub max_channels_per_connection: usize,
    /// Open file and folder handles per SFTP session.
    pub max_handles_per_session: usize,
    /// Largest SFTP packet accepted from a client, in bytes.
    pub max_packet_len: u32,
    /// On shutdown: how long transfers in progress may take to finish.
    pub shutdown_grace: Duration,
    /// Keep what arrived of an interrupted upload (`transfers.keep_partial_uploads`).
    pub keep_partial_uploads: bool,
    /// The load balancers allowed to send a PROXY v1/v2 header; when set, every connection
    /// must come from one of them and start with a header.
    pub proxy_protocol: crate::proxy::Trusted,
    /// The process's transfer memory budget (`transfers.memory_limit`): SFTP requests read
    /// ahead of their handler count in it. `None`: only the per-session bound applies.
    pub memory: Option<std::sync::Arc<bucketgate_storage::budget::MemoryBudget>>,
}

impl Default for SftpOptions {
    fn default() -> Self {
        SftpOptions {
            host_keys: Vec::new(),
            legacy_algorithms: false,
            login_grace: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(15 * 60),
            max_channels_per_connection: 10,
            max_handles_per_session: 256,
            max_packet_len: 256 * 1024,
            shutdown_grace: Duration::from_secs(30),
            keep_partial_uploads: false,
            proxy_protocol: crate::proxy::Trusted::default(),
            memory: None,
        }
    }
}
