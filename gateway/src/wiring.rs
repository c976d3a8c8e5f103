//! Turns a validated config into running parts: backends, the tree, the user directory.

use crate::{ConfigArg, Exit};
use bucketgate_config::{Config, EncryptionMode, Permission, Protocol, StorageConfig};
use bucketgate_protocols::auth::{self, Account, Directory};
use bucketgate_storage::budget::MemoryBudget;
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::path::normalize_prefix;
use bucketgate_storage::s3::{
    Checksum, CustomerKey, Encryption, RetryPolicy, S3Backend, S3Options,
};
use bucketgate_storage::{Area, Backend, Mount, PermSet, Permissions, Tree, VPath};
use futures::StreamExt;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where the config came from.
pub enum Source {
    /// A YAML file.
    File(PathBuf),
    /// No file named and no `./bucketgate.yaml`: the embedded demo default.
    Embedded,
}

/// Picks the config file: `--config`, else `BUCKETGATE_CONFIG`, else `./bucketgate.yaml` when
/// it exists, else the embedded default. A named file that does not exist is an error.
pub fn source(arg: &ConfigArg) -> Result<Source, Exit> {
    let named = arg.config.clone().or_else(|| {
        std::env::var_os("BUCKETGATE_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    });
    if let Some(p) = named {
        if !p.is_file() {
            return Err(Exit::usage(format!(
                "config file {} does not exist",
                p.display()
            )));
        }
        return Ok(Source::File(p));
    }
    let default = PathBuf::from("bucketgate.yaml");
    if default.is_file() {
        Ok(Source::File(default))
    } else {
        Ok(Source::Embedded)
    }
}

/// Loads and validates the config file; every error is printed with its path and line.
pub fn load(path: &Path) -> Result<bucketgate_config::Loaded, Exit> {
    bucketgate_config::load(path).map_err(|errs| {
        Exit::usage(format!(
            "{}: {} error(s)\n{}",
            path.display(),
            errs.0.len(),
            errs
        ))
    })
}

/// The S3 client options of a remote; an error (the config key and why) when its SSE-C key
/// cannot be read now (validation checked it at load: the variable changed since).
pub fn s3_options(
    cfg: &Config,
    r: &bucketgate_config::RemoteConfig,
) -> Result<S3Options, (&'static str, String)> {
    let mut o = S3Options::new(&r.name, &r.endpoint, &r.bucket)
        .with_keys(&r.access_key_id, r.secret_access_key.expose());
    if let Some(c) = &r.credentials {
        use bucketgate_config::CredentialSourceKind as K;
        use bucketgate_storage::s3::{AssumeRole, CredentialSource as S};
        o.credentials.source = match c.source {
            K::Static => S::Static,
            K::Env => S::Env,
            K::Profile => S::Profile,
            K::WebIdentity => S::WebIdentity,
            K::Container => S::Container,
            K::Instance => S::Instance,
            K::Chain => S::Chain,
        };
        let text = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        o.credentials.profile = text(&c.profile);
        o.credentials.sts_endpoint = text(&c.sts_endpoint);
        o.credentials.assume_role = c.assume_role.as_ref().map(|a| AssumeRole {
            role_arn: a.role_arn.trim().to_string(),
            external_id: text(&a.external_id),
            session_name: text(&a.session_name),
            duration: a.duration.map(|d| d.get()),
        });
    }
    o.region = if r.region.trim().is_empty() {
        None
    } else {
        Some(r.region.trim().to_string())
    };
    o.path_style = r.path_style;
    o.ca_file = r.ca_file.clone();
    o.source_address = r.source_address;
    o.max_connections = r.max_connections as usize;
    o.connect_timeout = r.timeouts.connect.get();
    o.request_timeout = r.timeouts.request.get();
    o.preserve_mtime = r.preserve_mtime;
    o.checksum = match r.checksum {
        bucketgate_config::ChecksumMode::Auto => Checksum::Auto,
        bucketgate_config::ChecksumMode::Md5 => Checksum::Md5,
        bucketgate_config::ChecksumMode::Crc32c => Checksum::Crc32c,
        bucketgate_config::ChecksumMode::Off => Checksum::Off,
    };
    o.folder_marker_times = r.folder_times == bucketgate_config::FolderTimes::Marker;
    o.encryption = match r.encryption {
        EncryptionMode::None => Encryption::None,
        EncryptionMode::S3 => Encryption::S3,
        EncryptionMode::Kms => Encryption::Kms {
            key_id: Some(r.kms_key_id.trim().to_string()).filter(|k| !k.is_empty()),
            bucket_key: r.bucket_key,
        },
        EncryptionMode::Customer => {
            let key = r.customer_key().map_err(|e| ("customer_key_env", e))?;
            Encryption::Customer(
                CustomerKey::from_bytes(&key.0).map_err(|e| ("customer_key_env", e))?,
            )
        }
    };
    o.storage_class = Some(r.storage_class.trim().to_string()).filter(|c| !c.is_empty());
    o.part_size = cfg.transfers.part_size.bytes();
    o.concurrency = cfg.transfers.concurrency.max(1) as usize;
    o.finish_within = cfg.transfers.finish_within.get();
    o.single_put_max = cfg.transfers.single_put_max.bytes();
    o.retries = RetryPolicy::default();
    o.spool_dir = Some(spool_dir(cfg));
    o.journal_dir = Some(cfg.state_dir.join("uploads"));
    Ok(o)
}

/// Where upload parts that do not fit the memory budget are spooled: next to the rest of our
/// state. `serve` creates it at start; the S3 writer creates it again should it vanish.
pub fn spool_dir(cfg: &Config) -> std::path::PathBuf {
    cfg.state_dir.join("spool")
}

/// The names being written, shared by every tree this process builds: the sessions of a tree
/// replaced by a reload still write, and the new tree's sessions must see their names taken.
fn writing() -> Arc<bucketgate_storage::writing::Writing> {
    static W: std::sync::OnceLock<Arc<bucketgate_storage::writing::Writing>> =
        std::sync::OnceLock::new();
    W.get_or_init(Arc::default).clone()
}

/// The running storage: one backend per remote, the site area and the tree.
pub struct Storage {
    /// The tree every session shares.
    pub tree: Arc<Tree>,
    /// S3 backends by remote name.
    pub remotes: HashMap<String, Arc<S3Backend>>,
}

/// Problems found while wiring a config (each a config path and a message), one a line: with
/// the config file's line numbers when `loaded` is given, else as `path: message`.
pub fn problem_lines(
    loaded: Option<&bucketgate_config::Loaded>,
    problems: &[(String, String)],
) -> String {
    bucketgate_config::errors_at(loaded, problems.iter().cloned()).to_string()
}

/// Builds backends and the tree. Errors are (YAML path, message) pairs.
pub fn build_storage(
    cfg: &Config,
    budget: Arc<MemoryBudget>,
) -> Result<Storage, Vec<(String, String)>> {
    let mut errors = Vec::new();
    let mut remotes = HashMap::new();
    for (i, r) in cfg.remotes.iter().enumerate() {
        let opts = match s3_options(cfg, r) {
            Ok(o) => o,
            Err((key, why)) => {
                errors.push((format!("remotes[{i}].{key}"), why));
                continue;
            }
        };
        match S3Backend::new(opts, budget.clone()) {
            Ok(b) => {
                remotes.insert(r.name.clone(), Arc::new(b));
            }
            Err(e) => errors.push((format!("remotes[{i}]"), e.to_string())),
        }
    }
    let site: Option<Area> = match &cfg.storage {
        StorageConfig::Local { root } => match LocalBackend::new(root.clone()) {
            // Downloads of site files read ahead within the same budget as the remotes'.
            Ok(b) => Some(Area {
                backend: Arc::new(b.with_memory_budget(budget.clone())),
                prefix: String::new(),
            }),
            Err(e) => {
                errors.push(("storage.root".into(), format!("{e:?}")));
                None
            }
        },
        StorageConfig::S3 { remote, prefix } => {
            match (remotes.get(remote), normalize_prefix(prefix)) {
                (Some(b), Ok(p)) => Some(Area {
                    backend: b.clone() as Arc<dyn Backend>,
                    prefix: p,
                }),
                (None, _) => {
                    errors.push((
                        "storage.remote".into(),
                        format!("unknown remote {remote:?}"),
                    ));
                    None
                }
                (_, Err(e)) => {
                    errors.push(("storage.prefix".into(), e.to_string()));
                    None
                }
            }
        }
    };
    let mut mounts = Vec::new();
    for (i, m) in cfg.mounts.iter().enumerate() {
        let path = VPath::parse(&m.path);
        let prefix = normalize_prefix(&m.prefix);
        match (path, remotes.get(&m.remote), prefix) {
            (Ok(path), Some(b), Ok(prefix)) => mounts.push(Mount {
                path,
                area: Area {
                    backend: b.clone() as Arc<dyn Backend>,
                    prefix,
                },
            }),
            (Err(e), _, _) => errors.push((format!("mounts[{i}].path"), e.to_string())),
            (_, None, _) => errors.push((
                format!("mounts[{i}].remote"),
                format!("unknown remote {:?}", m.remote),
            )),
            (_, _, Err(e)) => errors.push((format!("mounts[{i}].prefix"), e.to_string())),
        }
    }
    match site {
        Some(site) if errors.is_empty() => Ok(Storage {
            tree: Arc::new(Tree::new(site, mounts).with_writing(writing())),
            remotes,
        }),
        _ => Err(errors),
    }
}

/// Checks that every mount point is empty or absent in the tree beneath it (the site tree, or
/// an enclosing mount). Lists at most one page per mount point.
pub async fn check_mount_points(cfg: &Config, storage: &Storage) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (i, m) in cfg.mounts.iter().enumerate() {
        let Ok(path) = VPath::parse(&m.path) else {
            continue;
        };
        let others: Vec<Mount> = storage
            .tree
            .mounts()
            .iter()
            .filter(|o| o.path != path)
            .cloned()
            .collect();
        let under = Tree::new(storage.tree.site().clone(), others);
        let loc = under.locate(&path);
        let mut pages = loc.backend.list(&loc.key);
        match pages.next().await {
            Some(Ok(page)) => {
                let names: Vec<String> = page
                    .iter()
                    .filter(|e| {
                        // Folders that lead to other (nested) mount points do not count.
                        !storage.tree.mounts().iter().any(|o| {
                            o.path != path
                                && path
                                    .join(&e.name)
                                    .map(|p| o.path.starts_with(&p))
                                    .unwrap_or(false)
                        })
                    })
                    .take(3)
                    .map(|e| e.name.clone())
                    .collect();
                if !names.is_empty() {
                    errors.push((
                        format!("mounts[{i}].path"),
                        format!(
                            "mount point {} is not empty (it holds {}{}); a mount point must be empty or absent",
                            m.path,
                            names.join(", "),
                            if page.len() > names.len() { ", ..." } else { "" }
                        ),
                    ));
                }
            }
            Some(Err(e)) => errors.push((
                format!("mounts[{i}].path"),
                format!("cannot list the mount point {}: {e}", m.path),
            )),
            None => {}
        }
    }
    errors
}

fn perm_set(list: &[Permission]) -> PermSet {
    let names: Vec<&str> = list
        .iter()
        .map(|p| match p {
            Permission::List => "list",
            Permission::Download => "download",
            Permission::Upload => "upload",
            Permission::Overwrite => "overwrite",
            Permission::Delete => "delete",
            Permission::Rename => "rename",
            Permission::Mkdir => "mkdir",
            Permission::All => "*",
        })
        .collect();
    PermSet::parse(names).unwrap_or(PermSet::NONE)
}

/// The accounts of the config (plus the demo user of the embedded default).
pub fn accounts(cfg: &Config, demo_hash: Option<String>) -> Vec<Account> {
    let mut out: Vec<Account> = cfg.users.iter().map(account).collect();
    if let Some(hash) = demo_hash {
        out.push(Account {
            username: crate::demo::DEMO_USER.to_string(),
            password_hash: Some(hash),
            public_keys: Vec::new(),
            home: VPath::root(),
            permissions: Permissions::all(),
            protocols: vec![auth::Protocol::Sftp, auth::Protocol::Ftp],
            allowed_ips: Vec::new(),
        });
    }
    out
}

/// One user of the config (or created through the admin API, in the config's form).
pub fn account(u: &bucketgate_config::UserConfig) -> Account {
    Account {
        username: u.username.clone(),
        password_hash: u.password_hash.as_ref().map(|h| h.expose().to_string()),
        public_keys: u.public_keys.clone(),
        home: VPath::parse(&u.home).unwrap_or_else(|_| VPath::root()),
        permissions: Permissions::new(
            u.permissions.iter().filter_map(|(folder, perms)| {
                VPath::parse(folder).ok().map(|p| (p, perm_set(perms)))
            }),
        ),
        protocols: u
            .protocols
            .iter()
            .map(|p| match p {
                Protocol::Sftp => auth::Protocol::Sftp,
                Protocol::Ftp => auth::Protocol::Ftp,
            })
            .collect(),
        allowed_ips: u
            .allowed_ips
            .iter()
            .map(|n| ipnet::IpNet::from(*n))
            .collect(),
    }
}

/// The directory of users over `tree`.
pub fn directory(cfg: &Config, tree: Arc<Tree>, demo_hash: Option<String>) -> Directory {
    Directory::new(accounts(cfg, demo_hash), tree)
}

/// A sync job with its interval, when it has one.
pub type ScheduledJob = (
    bucketgate_storage::sync::SyncJob,
    Option<std::time::Duration>,
);

/// The sync jobs of the config over the running storage, each with its interval (if any).
/// The config's sync jobs. With `state`, their runs are recorded in the state store, and on a
/// shared store their leases are taken there (see [`crate::syncstore::attach`]).
pub fn sync_jobs(
    cfg: &Config,
    storage: &Storage,
    state: Option<&Arc<dyn bucketgate_state::StateStore>>,
) -> Result<Vec<ScheduledJob>, Vec<(String, String)>> {
    use bucketgate_config::{Conflict, Direction};
    use bucketgate_storage::sync::{ConflictPolicy, Direction as D, SyncJob};
    let mut jobs = Vec::new();
    let mut errors = Vec::new();
    for (i, s) in cfg.syncs.iter().enumerate() {
        let Some(remote) = storage.remotes.get(&s.remote) else {
            errors.push((
                format!("syncs[{i}].remote"),
                format!("unknown remote {:?}", s.remote),
            ));
            continue;
        };
        let path = match VPath::parse(&s.path) {
            Ok(p) => p,
            Err(e) => {
                errors.push((format!("syncs[{i}].path"), e.to_string()));
                continue;
            }
        };
        let prefix = match normalize_prefix(&s.prefix) {
            Ok(p) => p,
            Err(e) => {
                errors.push((format!("syncs[{i}].prefix"), e.to_string()));
                continue;
            }
        };
        let site = storage.tree.locate(&path);
        jobs.push((
            SyncJob {
                name: s.name.clone(),
                site: (site.backend, site.key),
                remote: (remote.clone() as Arc<dyn Backend>, prefix.clone()),
                direction: match s.direction {
                    Direction::Push => D::Push,
                    Direction::Pull => D::Pull,
                    Direction::TwoWay => D::TwoWay,
                },
                delete: s.delete,
                conflict: match s.conflict {
                    Conflict::Newer => ConflictPolicy::Newer,
                    Conflict::KeepBoth => ConflictPolicy::KeepBoth,
                },
                include: s.include.clone(),
                exclude: s.exclude.clone(),
                max_delete: match s.max_delete {
                    bucketgate_config::MaxDelete::Count(n) => {
                        bucketgate_storage::sync::MaxDelete::Count(n)
                    }
                    bucketgate_config::MaxDelete::Percent(p) => {
                        bucketgate_storage::sync::MaxDelete::Percent(p)
                    }
                },
                // Instances sharing the remote agree on who runs the job through this object
                // (replaced by the state store's lease on a shared store).
                lease: Some(Arc::new(bucketgate_storage::s3::S3LeaseStore::new(
                    (**remote).clone(),
                    &prefix,
                ))),
                history: None,
            },
            s.interval.map(|d| d.get()),
        ));
    }
    if let Some(state) = state {
        crate::syncstore::attach(&mut jobs, state);
    }
    if errors.is_empty() {
        Ok(jobs)
    } else {
        Err(errors)
    }
}
