//! `users:` and `syncs:`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::Deserialize;

use crate::net::IpNet;
use crate::secret::Secret;
use crate::units::Duration;

/// A protocol a user may log in with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// SFTP and SCP over SSH.
    Sftp,
    /// FTP and FTPS.
    Ftp,
}

/// A right granted on a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Read folder listings and stat folders.
    List,
    /// Read files.
    Download,
    /// Create new files and append to files.
    Upload,
    /// Replace existing files and set their times.
    Overwrite,
    /// Remove files and empty folders.
    Delete,
    /// Rename, checked at the source's folder.
    Rename,
    /// Create folders.
    Mkdir,
    /// Every permission (`"*"`).
    #[serde(rename = "*")]
    All,
}

impl Permission {
    /// True when this grant covers `wanted` (`*` covers everything).
    pub fn covers(self, wanted: Permission) -> bool {
        self == Permission::All || self == wanted
    }
}

/// An entry of `users:`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Login name.
    pub username: String,
    /// argon2 PHC string from `bucketgate hash-password`.
    #[serde(default)]
    pub password_hash: Option<Secret>,
    /// OpenSSH `authorized_keys` lines.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Folder of the site tree the user is locked into (normalised once loaded).
    pub home: String,
    /// Protocols the user may log in with; all by default.
    #[serde(default = "all_protocols")]
    pub protocols: Vec<Protocol>,
    /// Rights by folder, relative to the home (`/` is the home itself); the deepest
    /// matching folder wins. Default: everything in the home.
    #[serde(default = "full_access")]
    pub permissions: BTreeMap<String, Vec<Permission>>,
    /// Client networks allowed to log in as this user; any when empty.
    #[serde(default)]
    pub allowed_ips: Vec<IpNet>,
}

impl UserConfig {
    /// The grants that apply at `path` (a user-visible absolute path): those of the deepest
    /// folder rule that matches whole path components, or none.
    pub fn permissions_at(&self, path: &str) -> &[Permission] {
        self.permissions
            .iter()
            .filter(|(folder, _)| crate::paths::is_within(path, folder))
            .max_by_key(|(folder, _)| folder.len())
            .map_or(&[], |(_, perms)| perms.as_slice())
    }

    /// True when the user holds `wanted` at `path`.
    pub fn allows(&self, path: &str, wanted: Permission) -> bool {
        self.permissions_at(path).iter().any(|p| p.covers(wanted))
    }

    /// True when the user may log in over `protocol`.
    pub fn allows_protocol(&self, protocol: Protocol) -> bool {
        self.protocols.contains(&protocol)
    }

    /// True when a client at `ip` may log in as this user.
    pub fn allows_ip(&self, ip: &IpAddr) -> bool {
        self.allowed_ips.is_empty() || self.allowed_ips.iter().any(|n| n.contains(ip))
    }
}

fn all_protocols() -> Vec<Protocol> {
    vec![Protocol::Sftp, Protocol::Ftp]
}

fn full_access() -> BTreeMap<String, Vec<Permission>> {
    BTreeMap::from([("/".to_string(), vec![Permission::All])])
}

/// Which way a sync job copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// Site folder → remote.
    Push,
    /// Remote → site folder.
    Pull,
    /// Both ways, with `conflict` deciding when both sides changed.
    TwoWay,
}

/// How a two-way sync settles a file changed on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Conflict {
    /// The newer modification time wins; the other version is overwritten.
    Newer,
    /// Both are kept; the older is renamed. The default: nothing is lost unless asked for.
    #[default]
    KeepBoth,
}

/// The most files one sync run may delete on either side: a count (`100`) or a percentage of
/// the files that side holds (`"50%"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaxDelete {
    /// At most this many files.
    Count(u64),
    /// At most this percentage (0 to 100) of the files listed on that side.
    Percent(u8),
}

impl Default for MaxDelete {
    fn default() -> Self {
        MaxDelete::Percent(50)
    }
}

impl<'de> Deserialize<'de> for MaxDelete {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = MaxDelete;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a number of files (`100`) or a percentage (`50%`)")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<MaxDelete, E> {
                Ok(MaxDelete::Count(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<MaxDelete, E> {
                u64::try_from(v)
                    .map(MaxDelete::Count)
                    .map_err(|_| E::custom("must not be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<MaxDelete, E> {
                let v = v.trim();
                let bad = || {
                    E::custom(format!("expected a number of files (`100`) or a percentage from 0% to 100% (`50%`), found `{v}`"))
                };
                match v.strip_suffix('%') {
                    Some(p) => match p.trim().parse::<u8>() {
                        Ok(p) if p <= 100 => Ok(MaxDelete::Percent(p)),
                        _ => Err(bad()),
                    },
                    None => v.parse::<u64>().map(MaxDelete::Count).map_err(|_| bad()),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// An entry of `syncs:` — a copy job between a site folder and a bucket prefix.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncConfig {
    /// Job name, unique; used by `sync run NAME` and in the state files.
    pub name: String,
    /// Folder of the site tree, not inside a mount (normalised once loaded).
    pub path: String,
    /// Name of an entry of `remotes`.
    pub remote: String,
    /// Key prefix inside the bucket: empty, or ending with `/` once loaded.
    #[serde(default)]
    pub prefix: String,
    /// Which way files are copied.
    pub direction: Direction,
    /// Run on this period while `serve` runs; only on demand when absent.
    #[serde(default)]
    pub interval: Option<Duration>,
    /// Deletions spread to the other side.
    #[serde(default)]
    pub delete: bool,
    /// Two-way only: who wins when both sides changed (default: keep both).
    #[serde(default)]
    pub conflict: Conflict,
    /// The most files a run may delete on one side; a run that would delete more changes
    /// nothing and fails (`sync run --force` accepts it once).
    #[serde(default)]
    pub max_delete: MaxDelete,
    /// Globs of relative paths to copy.
    #[serde(default = "include_all")]
    pub include: Vec<String>,
    /// Globs of relative paths to leave alone (they win over `include`).
    #[serde(default)]
    pub exclude: Vec<String>,
}

fn include_all() -> Vec<String> {
    vec!["**".to_string()]
}
