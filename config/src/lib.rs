//! Bucketgate's configuration: the YAML schema of docs/interface.md as types, loading with
//! `${VAR}` substitution and relative-path resolution, and validation that reports every
//! problem at once, each with its YAML path and line.
//!
//! ```no_run
//! let loaded = bucketgate_config::load(std::path::Path::new("bucketgate.yaml"))
//!     .unwrap_or_else(|errors| panic!("{errors}"));
//! println!("{} users", loaded.config.users.len());
//! ```

#![deny(missing_docs)]

mod error;
mod index;
mod net;
mod parse;
mod paths;
mod schema;
mod secret;
mod units;
mod validate;
mod yaml;

use std::path::{Path, PathBuf};

pub use error::{ConfigError, ConfigErrors};
pub use net::IpNet;
pub use paths::{is_within, normalize_prefix, normalize_site_path};
pub use schema::{
    AdminConfig, AdminTlsConfig, BanConfig, ChecksumMode, Config, Conflict, Direction,
    EncryptionMode, FolderTimes, FtpConfig, FtpTlsConfig, LimitsConfig, LogConfig, LogFormat,
    MaxDelete, MountConfig, Permission, Protocol, ProxyProtocol, RemoteConfig, RemoteKind,
    RemoteTimeouts, Secret32, SftpConfig, StateConfig, StorageConfig, SyncConfig, TlsMode,
    TransfersConfig, UserConfig,
};
pub use schema::{AssumeRoleConfig, CredentialSourceKind, CredentialsConfig};
pub use secret::Secret;
pub use units::{ByteSize, Duration, PortRange};

use index::LineIndex;

/// File name of the SSH host key generated under `state_dir` when `host_keys` is omitted.
pub const DEFAULT_HOST_KEY: &str = "ssh_host_ed25519_key";

/// A valid configuration, with what is needed to point at its lines later.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The configuration: relative paths resolved, site paths and prefixes normalised.
    pub config: Config,
    /// Remarks that do not stop the gateway (an anonymous remote, for instance), for `check`.
    pub warnings: Vec<ConfigError>,
    index: LineIndex,
}

impl Loaded {
    /// Wraps a config built in code (the embedded default): errors then carry no line.
    pub fn from_config(config: Config) -> Self {
        Loaded {
            config,
            warnings: Vec::new(),
            index: LineIndex::default(),
        }
    }

    /// The line of a path of the config, like `mounts[0].path`; a key left to its default
    /// gets the line of the item that lacks it.
    pub fn line_of(&self, path: &str) -> Option<usize> {
        self.index.line(path)
    }

    /// An error at a path of the config, for checks this crate cannot make (a mount point
    /// that holds files needs a listing of the site tree).
    pub fn error_at(&self, path: &str, message: impl Into<String>) -> ConfigError {
        self.index.error(path, message)
    }
}

/// Problems found outside this crate, as (YAML path, message) pairs, located at their lines
/// of `loaded` when there is one: printed like the problems of a load (one per line, by
/// `ConfigErrors`' `Display`, the one formatting of an error list).
pub fn errors_at(
    loaded: Option<&Loaded>,
    problems: impl IntoIterator<Item = (String, String)>,
) -> ConfigErrors {
    ConfigErrors(
        problems
            .into_iter()
            .map(|(p, m)| match loaded {
                Some(l) => l.error_at(&p, m),
                None => ConfigError::new(p, m),
            })
            .collect(),
    )
}

/// Reads, substitutes, parses, resolves and validates the config file at `path`.
/// Relative paths in it are relative to the file's folder.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError::new(
            "",
            format!("cannot read config file {}: {e}", path.display()),
        )])
    })?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Absolute, so the paths stay right if the process later changes directory.
    let base = std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf());
    load_str(&text, &base)
}

/// Like [`load`], from text; relative paths are resolved against `base_dir`, and `${VAR}`
/// reads the process environment.
pub fn load_str(text: &str, base_dir: &Path) -> Result<Loaded, ConfigErrors> {
    let env = |name: &str| std::env::var_os(name).map(|v| v.into_string().map_err(|_| ()));
    load_inner(text, base_dir, &env)
}

/// Like [`load_str`], with `${VAR}` read from `env` instead of the process environment
/// (tests, or a caller with its own variables).
pub fn load_str_with_env(
    text: &str,
    base_dir: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Loaded, ConfigErrors> {
    load_inner(text, base_dir, &|name: &str| env(name).map(Ok))
}

fn load_inner(
    text: &str,
    base_dir: &Path,
    env: yaml::interpolate::EnvLookup<'_>,
) -> Result<Loaded, ConfigErrors> {
    let parse::Parsed {
        config,
        index,
        mut errors,
        hints,
        reported,
        secrets,
    } = parse::parse(text, env);
    let echo = |e: &ConfigError| {
        reported
            .iter()
            .any(|r| e.path == *r || is_below(&e.path, r))
    };

    let mut warnings = Vec::new();
    if let Some(config) = &config {
        errors.extend(
            validate::validate(config, &index, &hints)
                .into_iter()
                .filter(|e| !echo(e)),
        );
        warnings = validate::warnings(config, &index)
            .into_iter()
            .filter(|w| {
                // Blank because a variable was missing is not "anonymous".
                !w.path.starts_with("remotes[")
                    || !["access_key_id", "secret_access_key"]
                        .iter()
                        .any(|k| reported.contains(&format!("{}.{k}", w.path)))
            })
            .collect();
    }

    match config {
        Some(mut config) if errors.is_empty() => {
            resolve_paths(&mut config, base_dir);
            normalize(&mut config);
            Ok(Loaded {
                config,
                warnings,
                index,
            })
        }
        _ => {
            scrub(&mut errors, &secrets);
            // File order reads best; errors without a line (should be none) go last.
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            Err(ConfigErrors(errors))
        }
    }
}

fn is_below(path: &str, ancestor: &str) -> bool {
    path.strip_prefix(ancestor)
        .is_some_and(|r| r.starts_with('.') || r.starts_with('['))
}

/// Second line of defence: messages never quote values, but should one ever do, a secret
/// or a value read from the environment is masked.
fn scrub(errors: &mut [ConfigError], secrets: &[String]) {
    let mut secrets: Vec<&str> = secrets
        .iter()
        .map(|s| s.trim())
        .filter(|s| s.len() >= 4)
        .collect();
    // Longest first, so a secret containing another is masked whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for e in errors {
        for s in &secrets {
            if e.message.contains(s) {
                e.message = e.message.replace(s, "***");
            }
            if e.path.contains(s) {
                e.path = e.path.replace(s, "***");
            }
        }
    }
}

/// Makes the config's file paths absolute against the config file's folder.
fn resolve_paths(c: &mut Config, base: &Path) {
    c.state_dir = paths::resolve(base, &c.state_dir);
    if let StorageConfig::Local { root } = &mut c.storage {
        *root = paths::resolve(base, root);
    }
    if let Some(sftp) = &mut c.sftp {
        if sftp.host_keys.is_empty() {
            sftp.host_keys.push(c.state_dir.join(DEFAULT_HOST_KEY));
        }
        for k in &mut sftp.host_keys {
            *k = paths::resolve(base, k);
        }
    }
    if let Some(tls) = c.ftp.as_mut().and_then(|f| f.tls.as_mut()) {
        tls.cert = paths::resolve(base, &tls.cert);
        tls.key = paths::resolve(base, &tls.key);
    }
    if let Some(tls) = c.admin.as_mut().and_then(|a| a.tls.as_mut()) {
        tls.cert = paths::resolve(base, &tls.cert);
        tls.key = paths::resolve(base, &tls.key);
    }
    for r in &mut c.remotes {
        if let Some(ca) = &mut r.ca_file {
            *ca = paths::resolve(base, ca);
        }
    }
}

/// Puts site paths and bucket prefixes in the one form the other crates compare: done
/// after validation, which has reported every value that has no such form.
fn normalize(c: &mut Config) {
    let site = |p: &mut String| {
        if let Ok(n) = normalize_site_path(p) {
            *p = n;
        }
    };
    if let StorageConfig::S3 { prefix, .. } = &mut c.storage {
        *prefix = normalize_prefix(prefix);
    }
    for m in &mut c.mounts {
        site(&mut m.path);
        m.prefix = normalize_prefix(&m.prefix);
    }
    for s in &mut c.syncs {
        site(&mut s.path);
        s.prefix = normalize_prefix(&s.prefix);
    }
    for u in &mut c.users {
        site(&mut u.home);
        let perms = std::mem::take(&mut u.permissions);
        u.permissions = perms
            .into_iter()
            .map(|(k, v)| (normalize_site_path(&k).unwrap_or(k), v))
            .collect();
    }
}

/// The demo configuration `serve` runs when no config file exists: the site tree in
/// `base/data/files`, SFTP on 127.0.0.1:2222 and FTP on 127.0.0.1:2121 (loopback only), no
/// users (the gateway adds the demo user).
pub fn embedded_default(base_dir: &Path) -> Config {
    let state_dir = paths::resolve(base_dir, Path::new("data"));
    Config {
        sftp: Some(SftpConfig {
            listen: ([127, 0, 0, 1], 2222).into(),
            proxy_protocol: ProxyProtocol::default(),
            host_keys: vec![state_dir.join(DEFAULT_HOST_KEY)],
            legacy_algorithms: false,
        }),
        ftp: Some(FtpConfig {
            listen: ([127, 0, 0, 1], 2121).into(),
            proxy_protocol: ProxyProtocol::default(),
            passive_ports: schema::default_passive_ports(),
            active_mode: false,
            public_address: None,
            tls: None,
        }),
        storage: StorageConfig::Local {
            root: state_dir.join("files"),
        },
        state_dir: PathBuf::from(&state_dir),
        ..Config::default()
    }
}
