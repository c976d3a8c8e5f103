//! The typed configuration, mirroring docs/interface.md.

mod servers;
mod storage;
mod tuning;
mod users;

use std::path::PathBuf;

use serde::Deserialize;

pub(crate) use servers::default_passive_ports;
pub use servers::{
    AdminConfig, AdminTlsConfig, FtpConfig, FtpTlsConfig, ProxyProtocol, SftpConfig, TlsMode,
};
pub use storage::{
    AssumeRoleConfig, ChecksumMode, CredentialSourceKind, CredentialsConfig, EncryptionMode,
    FolderTimes, MountConfig, RemoteConfig, RemoteKind, RemoteTimeouts, Secret32, StorageConfig,
};
pub use tuning::{BanConfig, LimitsConfig, LogConfig, LogFormat, TransfersConfig};
pub use users::{Conflict, Direction, MaxDelete, Permission, Protocol, SyncConfig, UserConfig};

/// The whole configuration file. Every section is optional; an empty file is valid.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// SFTP/SCP server; disabled when absent or blank (`sftp: {}` enables the defaults).
    #[serde(default)]
    pub sftp: Option<SftpConfig>,
    /// FTP/FTPS server; disabled when absent or blank (`ftp: {}` enables the defaults).
    #[serde(default)]
    pub ftp: Option<FtpConfig>,
    /// Health and metrics endpoint; disabled when absent or blank.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Connection limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// S3 data path tuning.
    #[serde(default)]
    pub transfers: TransfersConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Folder for generated keys, the demo user, sync state and locks.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Where bans, sessions, tokens and runtime users live: absent, an embedded SQLite file
    /// in `state_dir`; with `url`, a PostgreSQL database that several instances share.
    #[serde(default)]
    pub state: Option<StateConfig>,
    /// The site tree.
    #[serde(default)]
    pub storage: StorageConfig,
    /// S3-compatible buckets, referred to by name.
    #[serde(default)]
    pub remotes: Vec<RemoteConfig>,
    /// Folders of the site tree that show a bucket prefix.
    #[serde(default)]
    pub mounts: Vec<MountConfig>,
    /// Accounts.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Copy jobs.
    #[serde(default)]
    pub syncs: Vec<SyncConfig>,
}

/// The `state` section: a shared state store.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// `postgres://user[:password]@host[:port]/database`. A secret, since it may carry a
    /// password: never printed whole (messages show it without the password).
    pub url: crate::secret::Secret,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("./data")
}

impl Default for Config {
    /// What an empty file means: no listener, the local site tree in `./data/files`
    /// (relative paths are not resolved here; loading resolves them).
    fn default() -> Self {
        Config {
            sftp: None,
            ftp: None,
            admin: None,
            limits: LimitsConfig::default(),
            transfers: TransfersConfig::default(),
            log: LogConfig::default(),
            state_dir: default_state_dir(),
            state: None,
            storage: StorageConfig::default(),
            remotes: Vec::new(),
            mounts: Vec::new(),
            users: Vec::new(),
            syncs: Vec::new(),
        }
    }
}

impl Config {
    /// The remote called `name`.
    pub fn remote(&self, name: &str) -> Option<&RemoteConfig> {
        self.remotes.iter().find(|r| r.name == name)
    }

    /// The user called `username`.
    pub fn user(&self, username: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.username == username)
    }

    /// The sync job called `name`.
    pub fn sync(&self, name: &str) -> Option<&SyncConfig> {
        self.syncs.iter().find(|s| s.name == name)
    }
}
