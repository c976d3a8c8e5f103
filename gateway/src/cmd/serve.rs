//! `bucketgate serve`: wires storage, logins and the listeners, then waits for signals.
//!
//! Three steps, each a function whose head says what it guarantees:
//! 1. [`start`]: build storage and logins, bind every listener, start the servers, the sync
//!    schedule and the background tasks (health watch, capability probes, stale-upload
//!    clean-up). Any failure here ends the process, with the servers already started.
//! 2. [`Gateway::reload`] on SIGHUP: re-read the config; new sessions see the new users, keys,
//!    permissions, mounts and remotes, sessions in progress keep what they logged in with, and
//!    an invalid config is refused with its errors logged. The old sync schedule stops
//!    starting runs, lets a run in progress finish, and only then does the new schedule start.
//! 3. [`Gateway::drain`] on SIGTERM/SIGINT: one `CancellationToken` handed to every server is
//!    cancelled and the servers drain (transfers in progress get `limits.shutdown_grace`).
//!    Scheduled syncs drain alongside: no new run starts, a run in progress gets the same grace
//!    period to finish, and only then is it cut (it resumes at the next start); the process
//!    exits once they have ended.

use crate::admin::{self, Health};
use crate::wiring::{self, Source};
use crate::{alloc, demo, ConfigArg, Exit};
use bucketgate_config::{Config, LogFormat};
use bucketgate_protocols::auth::{BanPolicy, LoginService};
use bucketgate_protocols::limits::SessionLimiter;
use bucketgate_protocols::logging;
use bucketgate_protocols::{ftp, ssh};
use bucketgate_storage::budget::MemoryBudget;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// How often an instance on a shared state store reads the bans and runtime users that other
/// instances wrote.
const SHARED_STATE_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs the servers until SIGTERM or SIGINT.
pub fn run(arg: &ConfigArg) -> Result<(), Exit> {
    let (cfg, path) = match wiring::source(arg)? {
        Source::File(p) => (wiring::load(&p)?.config, Some(p)),
        Source::Embedded => {
            let cwd = std::env::current_dir().map_err(|e| Exit::runtime(e.to_string()))?;
            (bucketgate_config::embedded_default(&cwd), None)
        }
    };
    let json = match arg.log_format.as_deref() {
        Some("json") => true,
        Some("text") => false,
        Some(other) => return Err(Exit::usage(format!("unknown log format {other:?}"))),
        None => cfg.log.format == LogFormat::Json,
    };
    logging::init(json, &cfg.log.level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .on_thread_park(alloc::on_park)
        .enable_all()
        .build()
        .map_err(|e| Exit::runtime(e.to_string()))?;
    // Idle workers give their allocator caches back (see crate::alloc).
    rt.spawn(alloc::flush_idle_workers());
    let result = rt.block_on(serve(cfg, path));
    // Background tasks (detached session tasks) must not hold the process open.
    rt.shutdown_timeout(Duration::from_secs(1));
    result
}

fn ban_policy(cfg: &Config) -> BanPolicy {
    let b = &cfg.limits.ban;
    BanPolicy {
        threshold: b.threshold,
        window: b.window.get(),
        duration: b.duration.get(),
        safelist: b.safelist.iter().map(|n| ipnet::IpNet::from(*n)).collect(),
        ..BanPolicy::default()
    }
}

/// The address announced in PASV replies: an IP, or a host name resolved once at start (PASV
/// can only carry an IPv4 address).
async fn resolve_public_address(a: &str) -> Result<std::net::IpAddr, Exit> {
    if let Ok(ip) = a.parse() {
        return Ok(ip);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((a, 0))
        .await
        .map_err(|e| Exit::usage(format!("ftp.public_address: cannot resolve {a:?}: {e}")))?
        .collect();
    addrs
        .iter()
        .find(|s| s.is_ipv4())
        .or(addrs.first())
        .map(|s| s.ip())
        .ok_or_else(|| Exit::usage(format!("ftp.public_address: {a:?} has no address")))
}

/// Connections the kernel completes and queues for a listener before it is accepted (the
/// kernel caps it at `net.core.somaxconn`). tokio's `TcpListener::bind` queues 128, like the
/// standard library: with a thousand partners connecting at once, a loaded gateway did not
/// accept them fast enough, the queue overflowed, and the kernel dropped the handshakes it
/// could not queue. An SSH client sends first and retries; an FTP client waits for the
/// greeting and hung forever (215 of 1,024 FTP sessions in `bench/scale.sh`).
const LISTEN_BACKLOG: u32 = 4096;

async fn bind(what: &str, addr: SocketAddr) -> Result<TcpListener, Exit> {
    let listen = || {
        let s = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        s.bind(addr)?;
        s.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e: std::io::Error| {
        Exit::runtime(format!("cannot listen for {what} on {addr}: {e}"))
    })
}

/// A reload's problems, one log line each.
fn refused(errs: bucketgate_config::ConfigErrors) {
    for e in &errs {
        tracing::error!("reload refused: {e}");
    }
}

fn storage_errors(path: &Option<PathBuf>, errs: Vec<(String, String)>) -> Exit {
    let loaded = path.as_ref().and_then(|p| bucketgate_config::load(p).ok());
    Exit::usage(wiring::problem_lines(loaded.as_ref(), &errs))
}

/// A server task, named for its log lines.
type Server = (&'static str, tokio::task::JoinHandle<anyhow::Result<()>>);

/// The running gateway: what [`start`] built, what [`Gateway::reload`] swaps, what
/// [`Gateway::drain`] ends.
struct Gateway {
    /// The config file; `None` for the embedded default (SIGHUP then has nothing to re-read).
    path: Option<PathBuf>,
    /// The config in force: the start's, or the last one a reload applied.
    current: Config,
    /// `limits.shutdown_grace` as it was at the start (limits change only at a restart).
    grace: Duration,
    login: Arc<LoginService>,
    health: Health,
    budget: Arc<MemoryBudget>,
    demo_hash: Option<String>,
    /// Cancelled on SIGTERM/SIGINT: every server stops accepting and drains.
    shutdown: CancellationToken,
    /// Cancelled when the grace period is over: sync runs still in progress stop.
    cut: CancellationToken,
    servers: Vec<Server>,
    syncs: Syncs,
    /// Where the stale-upload clean-up looks: follows reloads.
    cleanup_targets: tokio::sync::watch::Sender<(Vec<(String, String)>, Remotes)>,
    /// `POST /api/v1/reload` wakes the serve loop here, as SIGHUP does.
    api_reload: Arc<tokio::sync::Notify>,
    /// The sync jobs the admin API may run now: follow reloads.
    api_sync_jobs: crate::api::SyncJobs,
    /// The state store (sync history and, when shared, sync leases).
    state: Arc<dyn bucketgate_state::StateStore>,
}

/// Runs the gateway: [`start`], then SIGHUP → [`Gateway::reload`] until SIGTERM or SIGINT,
/// then [`Gateway::drain`].
async fn serve(cfg: Config, path: Option<PathBuf>) -> Result<(), Exit> {
    let mut gateway = start(cfg, path).await?;
    let api_reload = gateway.api_reload.clone();
    let mut term = signal(SignalKind::terminate()).map_err(|e| Exit::runtime(e.to_string()))?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| Exit::runtime(e.to_string()))?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| Exit::runtime(e.to_string()))?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: draining"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: draining"); break; }
            _ = hup.recv() => gateway = gateway.reload().await,
            _ = api_reload.notified() => gateway = gateway.reload().await,
        }
    }
    gateway.drain().await
}

/// Step 1, start: builds storage and logins from `cfg`, binds every configured listener and
/// starts its server, the sync schedule, the remotes' health watch, the capability probes and
/// the stale-upload clean-up.
///
/// Guarantees: on `Ok`, every listener the config names is bound and accepting, and the sync
/// schedule runs. On `Err` (a folder that cannot be made, storage that cannot be built, a
/// mount point that is not empty, a port in use, an unreadable host key, nothing to serve),
/// the caller exits with it (2 for a config problem, 1 otherwise), which also ends a server
/// started before the failure.
async fn start(cfg: Config, path: Option<PathBuf>) -> Result<Gateway, Exit> {
    std::fs::create_dir_all(&cfg.state_dir)
        .map_err(|e| Exit::runtime(format!("cannot create {}: {e}", cfg.state_dir.display())))?;
    let spool = wiring::spool_dir(&cfg);
    if let Err(e) = std::fs::create_dir_all(&spool) {
        // Not fatal: uploads then wait for memory instead of spilling (the writer says so).
        tracing::warn!("cannot create the spool folder {}: {e}", spool.display());
    }
    let demo_hash = match path {
        None => Some(demo::demo_password_hash(&cfg.state_dir)?),
        Some(_) => None,
    };
    let budget = MemoryBudget::shared(cfg.transfers.memory_limit.bytes());
    let storage =
        wiring::build_storage(&cfg, budget.clone()).map_err(|e| storage_errors(&path, e))?;
    let mount_errors = wiring::check_mount_points(&cfg, &storage).await;
    if !mount_errors.is_empty() {
        return Err(storage_errors(&path, mount_errors));
    }
    // argon2 is CPU-bound: more checks at once than cores only add memory (19 MiB each).
    let hash_concurrency = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
    let login = Arc::new(
        LoginService::new(
            wiring::directory(&cfg, storage.tree.clone(), demo_hash.clone()),
            ban_policy(&cfg),
            hash_concurrency,
        )
        .with_budget(budget.clone()),
    );
    // The state store: bans and failures of the last run come back, and the runtime users
    // are loaded, before any listener opens.
    let state_url = cfg.state.as_ref().map(|s| s.url.expose());
    let state = bucketgate_state::open_store(&cfg.state_dir, state_url)
        .await
        .map_err(|e| Exit::runtime(e.to_string()))?;
    login
        .attach_state(state.clone())
        .await
        .map_err(|e| Exit::runtime(e.to_string()))?;
    crate::api::users::load(state.as_ref(), &login)
        .await
        .map_err(|e| Exit::runtime(e.to_string()))?;
    // Sync history is kept in the store; runs of an older version are in files.
    crate::syncstore::import_history(&cfg.state_dir, &state).await;
    let api_reload = Arc::new(tokio::sync::Notify::new());
    let api_sync_jobs: crate::api::SyncJobs = Arc::new(std::sync::Mutex::new(
        wiring::sync_jobs(&cfg, &storage, Some(&state))
            .map(|v| v.into_iter().map(|(j, _)| j).collect())
            .unwrap_or_default(),
    ));
    let limiter = SessionLimiter::new(
        cfg.limits.max_sessions as usize,
        cfg.limits.max_sessions_per_ip as usize,
    );
    if state.shared() {
        // Other instances write bans and runtime users to the shared store: take them in
        // every few seconds, count their sessions towards the caps, and renew this instance's
        // session leases (docs/operations.md,
        // "Several instances").
        let (login, state, limiter) = (login.clone(), state.clone(), limiter.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SHARED_STATE_REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = state.renew_sessions().await {
                    tracing::warn!("shared state: session leases not renewed: {e}");
                }
                if let Err(e) = login.refresh_bans().await {
                    tracing::warn!("shared state: bans not refreshed: {e}");
                }
                match state.other_sessions().await {
                    Ok(rows) => limiter.set_others(rows.iter().map(|r| r.client)),
                    Err(e) => {
                        tracing::warn!("shared state: other instances' sessions not read: {e}")
                    }
                }
                if let Err(e) = crate::api::users::load(state.as_ref(), &login).await {
                    tracing::warn!("shared state: runtime users not refreshed: {e}");
                }
            }
        });
    }
    let shutdown = CancellationToken::new();
    let mut servers: Vec<Server> = Vec::new();
    let health = Health::new(
        storage.tree.clone(),
        storage.remotes.clone(),
        admin::probe_prefixes(&cfg),
    );
    health.set_budget(budget.clone());

    if let Some(s) = &cfg.sftp {
        let server = start_sftp(s, &cfg, &budget, &login, &limiter, &shutdown).await?;
        health.add_listener("sftp");
        servers.push(("sftp", server));
    }
    if let Some(f) = &cfg.ftp {
        let server = start_ftp(f, &cfg, &budget, &login, &limiter, &shutdown).await?;
        health.add_listener("ftp");
        servers.push(("ftp", server));
    }
    if let Some(a) = &cfg.admin {
        let tls = match &a.tls {
            None => None,
            Some(t) => Some(
                bucketgate_protocols::ftp::tls_server_config("admin", &t.cert, &t.key)
                    .map_err(|e| Exit::runtime(format!("{e:#}")))?,
            ),
        };
        let listener = bind("admin", a.listen).await?;
        tracing::info!(
            "listening: protocol=admin addr={}",
            listener
                .local_addr()
                .map_err(|e| Exit::runtime(e.to_string()))?
        );
        let h = health.clone();
        let sd = shutdown.clone();
        let api = Arc::new(crate::api::Api {
            login: login.clone(),
            store: state.clone(),
            health: health.clone(),
            state_dir: cfg.state_dir.clone(),
            reload: api_reload.clone(),
            sync_jobs: api_sync_jobs.clone(),
            tls: tls.is_some(),
        });
        servers.push((
            "admin",
            tokio::spawn(async move { admin::serve(listener, h, Some(api), tls, sd).await }),
        ));
    }
    // `cut` stops sync runs in progress: only when the shutdown grace period is over.
    let cut = CancellationToken::new();
    let syncs = schedule(
        scheduled_jobs(&cfg, &storage, &state)?,
        cfg.state_dir.clone(),
        None,
        &cut,
    );
    if servers.is_empty() && syncs.jobs == 0 {
        return Err(Exit::usage(
            "nothing to serve: the config enables none of sftp, ftp, admin, and no sync has an interval",
        ));
    }
    tokio::spawn(health.clone().watch_remotes(shutdown.clone()));
    probe_capabilities(&storage.remotes, &cfg);
    // The clean-up follows reloads: new mounts, syncs and remotes are covered at once.
    let (cleanup_targets, cleanup_rx) =
        tokio::sync::watch::channel((upload_prefixes(&cfg), storage.remotes.clone()));
    tokio::spawn(cleanup_stale_uploads(
        cfg.transfers.stale_multipart_after.get(),
        cleanup_rx,
        shutdown.clone(),
    ));
    Ok(Gateway {
        path,
        grace: cfg.limits.shutdown_grace.get(),
        current: cfg,
        login,
        health,
        budget,
        demo_hash,
        shutdown,
        cut,
        servers,
        syncs,
        cleanup_targets,
        api_reload,
        api_sync_jobs,
        state,
    })
}

/// Binds the SSH listener (SFTP and SCP) and starts its server.
async fn start_sftp(
    s: &bucketgate_config::SftpConfig,
    cfg: &Config,
    budget: &Arc<MemoryBudget>,
    login: &Arc<LoginService>,
    limiter: &Arc<SessionLimiter>,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<anyhow::Result<()>>, Exit> {
    let listener = bind("sftp", s.listen).await?;
    let host_keys = if s.host_keys.is_empty() {
        vec![cfg.state_dir.join("ssh_host_ed25519_key")]
    } else {
        s.host_keys.clone()
    };
    let keys = ssh::load_or_create_host_keys(&host_keys)
        .map_err(|e| Exit::usage(format!("sftp.host_keys: {e:#}")))?;
    let opts = ssh::SftpOptions {
        host_keys,
        legacy_algorithms: s.legacy_algorithms,
        login_grace: cfg.limits.login_grace.get(),
        idle_timeout: cfg.limits.idle_timeout.get(),
        max_channels_per_connection: 10,
        max_handles_per_session: 256,
        max_packet_len: 256 * 1024,
        shutdown_grace: cfg.limits.shutdown_grace.get(),
        keep_partial_uploads: cfg.transfers.keep_partial_uploads,
        proxy_protocol: trusted_proxies(&s.proxy_protocol),
        memory: Some(budget.clone()),
    };
    tracing::info!(
        "listening: protocol=sftp addr={}",
        listener
            .local_addr()
            .map_err(|e| Exit::runtime(e.to_string()))?
    );
    Ok(tokio::spawn(ssh::serve(
        listener,
        opts,
        keys,
        login.clone(),
        limiter.clone(),
        shutdown.clone(),
    )))
}

/// Binds the FTP listener (and the implicit FTPS one in implicit mode) and starts its server.
async fn start_ftp(
    f: &bucketgate_config::FtpConfig,
    cfg: &Config,
    budget: &Arc<MemoryBudget>,
    login: &Arc<LoginService>,
    limiter: &Arc<SessionLimiter>,
    shutdown: &CancellationToken,
) -> Result<tokio::task::JoinHandle<anyhow::Result<()>>, Exit> {
    let listener = bind("ftp", f.listen).await?;
    // The implicit listener only exists in implicit mode (`check` warns when it is set
    // with another mode).
    let implicit_addr = f
        .tls
        .as_ref()
        .filter(|t| t.mode == bucketgate_config::TlsMode::Implicit)
        .and_then(|t| t.listen_implicit);
    let implicit = match implicit_addr {
        Some(a) => Some(bind("ftps (implicit)", a).await?),
        None => None,
    };
    let public_address = match &f.public_address {
        Some(a) => Some(resolve_public_address(a).await?),
        None => None,
    };
    let opts = ftp::FtpOptions {
        passive_ports: f.passive_ports.range(),
        public_address,
        active_mode: f.active_mode,
        tls: f.tls.as_ref().map(|t| ftp::FtpTls {
            mode: match t.mode {
                bucketgate_config::TlsMode::Explicit => ftp::TlsMode::Explicit,
                bucketgate_config::TlsMode::Required => ftp::TlsMode::Required,
                bucketgate_config::TlsMode::Implicit => ftp::TlsMode::Implicit,
            },
            cert: t.cert.clone(),
            key: t.key.clone(),
        }),
        idle_timeout: cfg.limits.idle_timeout.get(),
        login_grace: cfg.limits.login_grace.get(),
        max_line_len: 4096,
        shutdown_grace: cfg.limits.shutdown_grace.get(),
        proxy_protocol: trusted_proxies(&f.proxy_protocol),
        memory: Some(budget.clone()),
        ..ftp::FtpOptions::default()
    };
    tracing::info!(
        "listening: protocol=ftp addr={}",
        listener
            .local_addr()
            .map_err(|e| Exit::runtime(e.to_string()))?
    );
    if let Some(l) = &implicit {
        tracing::info!(
            "listening: protocol=ftps-implicit addr={}",
            l.local_addr().map_err(|e| Exit::runtime(e.to_string()))?
        );
    }
    Ok(tokio::spawn(ftp::serve(
        listener,
        implicit,
        opts,
        login.clone(),
        limiter.clone(),
        shutdown.clone(),
    )))
}

impl Gateway {
    /// Step 2, reload (SIGHUP): re-reads the config file and applies it for new sessions.
    ///
    /// Guarantees: a config that does not load, whose storage cannot be built, or whose mount
    /// points are not empty changes nothing (its errors are logged, the running config stays).
    /// A valid one swaps users, keys, permissions, the tree and the remotes for new sessions;
    /// open sessions keep their tree, follow their account's new permissions, or are closed
    /// when their account was removed or changed ([`LoginService::replace_directory`]). The
    /// old sync schedule starts no new run, lets a run in progress finish, and only then does
    /// the new one start; if the new sync jobs cannot be built the old schedule stays. Listener,
    /// limit and transfer settings wait for a restart (a warning says so). With the embedded
    /// default there is no file to re-read: SIGHUP is logged and ignored.
    async fn reload(mut self) -> Gateway {
        let Some(p) = &self.path else {
            tracing::info!("SIGHUP ignored: the embedded default has no file to re-read");
            return self;
        };
        let Some((next, storage)) = apply_config(
            p,
            &self.current,
            &self.login,
            &self.health,
            self.budget.clone(),
            self.demo_hash.clone(),
        )
        .await
        else {
            return self;
        };
        // Scheduled syncs follow the new config: the old schedule starts no
        // new run, a run in progress finishes, then the new schedule starts.
        match scheduled_jobs(&next, &storage, &self.state) {
            Ok(jobs) => {
                self.syncs = schedule(jobs, next.state_dir.clone(), Some(self.syncs), &self.cut);
            }
            // Keep the old schedule rather than none at all.
            Err(e) => tracing::error!("reload: sync jobs not changed: {}", e.message),
        }
        let _ = self
            .cleanup_targets
            .send((upload_prefixes(&next), storage.remotes.clone()));
        if let Ok(jobs) = wiring::sync_jobs(&next, &storage, Some(&self.state)) {
            *self.api_sync_jobs.lock().unwrap_or_else(|e| e.into_inner()) =
                jobs.into_iter().map(|(j, _)| j).collect();
        }
        self.current = next;
        self
    }

    /// Step 3, drain (SIGTERM/SIGINT): every server stops accepting, transfers in progress get
    /// `limits.shutdown_grace`, and scheduled syncs start no new run while a run in progress
    /// gets the same grace period before it is cut (it resumes at the next start).
    ///
    /// Guarantees: returns once every server task has ended (or has not within the grace
    /// period plus 5 s: it is logged and left to the runtime's shutdown) and no sync run is in
    /// progress; `Err` (exit 1) when a server failed or panicked.
    async fn drain(self) -> Result<(), Exit> {
        self.shutdown.cancel();
        self.syncs.stop.cancel();
        let grace = self.grace;
        let servers = self.servers;
        let servers_drained = async {
            let mut failed = false;
            for (name, h) in servers {
                match tokio::time::timeout(grace + Duration::from_secs(5), h).await {
                    Ok(Ok(Ok(()))) => {}
                    Ok(Ok(Err(e))) => {
                        tracing::error!(server = name, error = ?e, "server failed");
                        failed = true;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(server = name, error = %e, "server task panicked");
                        failed = true;
                    }
                    Err(_) => {
                        tracing::warn!(server = name, "did not drain within the grace period")
                    }
                }
            }
            failed
        };
        let (failed, ()) = tokio::join!(servers_drained, drain_syncs(self.syncs, &self.cut, grace));
        tracing::info!("stopped");
        if failed {
            Err(Exit::runtime(""))
        } else {
            Ok(())
        }
    }
}

/// Loads the config file at `path` and, when it is valid, applies it for new sessions (see
/// [`Gateway::reload`]); returns it with its storage, or `None` after logging why not.
async fn apply_config(
    path: &std::path::Path,
    current: &Config,
    login: &LoginService,
    health: &Health,
    budget: Arc<MemoryBudget>,
    demo_hash: Option<String>,
) -> Option<(Config, wiring::Storage)> {
    let loaded = match bucketgate_config::load(path) {
        Ok(l) => l,
        Err(errs) => {
            refused(errs);
            tracing::error!("reload refused: keeping the running config");
            return None;
        }
    };
    let cfg = loaded.config.clone();
    let storage = match wiring::build_storage(&cfg, budget) {
        Ok(s) => s,
        Err(errs) => {
            refused(bucketgate_config::errors_at(Some(&loaded), errs));
            return None;
        }
    };
    let mount_errors = wiring::check_mount_points(&cfg, &storage).await;
    if !mount_errors.is_empty() {
        refused(bucketgate_config::errors_at(Some(&loaded), mount_errors));
        return None;
    }
    if cfg.sftp != current.sftp
        || cfg.ftp != current.ftp
        || cfg.admin != current.admin
        || cfg.limits != current.limits
        || cfg.transfers != current.transfers
    {
        tracing::warn!(
            "reload: listener, limit and transfer settings take effect at the next restart"
        );
    }
    probe_capabilities(&storage.remotes, &cfg);
    let effect = login.replace_directory(wiring::directory(&cfg, storage.tree.clone(), demo_hash));
    health.replace(
        storage.tree.clone(),
        storage.remotes.clone(),
        admin::probe_prefixes(&cfg),
    );
    tracing::info!(
        "reload: config applied ({} users, {} remotes, {} mounts) for new sessions; open sessions: \
         {} closed (account removed or changed), {} follow their account's permissions",
        cfg.users.len(),
        cfg.remotes.len(),
        cfg.mounts.len(),
        effect.closed,
        effect.updated
    );
    Some((cfg, storage))
}

/// The running sync schedule.
struct Syncs {
    /// Cancelled: no new run starts (a run in progress goes on until `cut`).
    stop: CancellationToken,
    /// Ends when no run of this schedule, nor of the ones it replaced, is in progress.
    done: tokio::task::JoinHandle<()>,
    /// Jobs with an interval.
    jobs: usize,
    /// This schedule or one it replaced has jobs (so a run may be in progress).
    active: bool,
}

/// On shutdown: waits up to `grace` for sync runs in progress (the schedule was already told
/// to start no more), then cuts them, and says which it was.
async fn drain_syncs(syncs: Syncs, cut: &CancellationToken, grace: Duration) {
    let mut done = syncs.done;
    if !syncs.active {
        let _ = done.await;
        return;
    }
    tracing::info!(
        "sync: no new run starts; a run in progress has up to {}s to finish",
        grace.as_secs()
    );
    if tokio::time::timeout(grace, &mut done).await.is_ok() {
        tracing::info!("sync: runs in progress finished within the grace period");
        return;
    }
    tracing::warn!(
        "sync: runs still in progress after the grace period are cut; they resume at the next start"
    );
    cut.cancel();
    if tokio::time::timeout(Duration::from_secs(10), done)
        .await
        .is_err()
    {
        tracing::warn!("sync: runs did not stop after the cut");
    }
}

/// The sync jobs of `cfg` that have an interval.
fn scheduled_jobs(
    cfg: &Config,
    storage: &wiring::Storage,
    state: &Arc<dyn bucketgate_state::StateStore>,
) -> Result<Vec<(bucketgate_storage::sync::SyncJob, Duration)>, Exit> {
    let jobs = wiring::sync_jobs(cfg, storage, Some(state))
        .map_err(|errs| Exit::usage(wiring::problem_lines(None, &errs)))?;
    Ok(jobs
        .into_iter()
        .filter_map(|(j, every)| every.map(|e| (j, e)))
        .collect())
}

/// Starts the scheduler for `jobs`. With `previous` (a reload), the previous schedule starts
/// no new run, and the new one begins once the previous one's run in progress (if any) ended.
fn schedule(
    jobs: Vec<(bucketgate_storage::sync::SyncJob, Duration)>,
    state_dir: PathBuf,
    previous: Option<Syncs>,
    cut: &CancellationToken,
) -> Syncs {
    let n = jobs.len();
    if n > 0 {
        tracing::info!("sync: {n} job(s) scheduled");
    }
    let active = n > 0 || previous.as_ref().is_some_and(|p| p.active);
    let before = previous.map(|p| {
        p.stop.cancel();
        if p.active {
            tracing::info!("sync: the previous schedule stops; a run in progress finishes before the new schedule starts");
        }
        p.done
    });
    let stop = CancellationToken::new();
    let (stop2, cut2) = (stop.clone(), cut.clone());
    let done = tokio::spawn(async move {
        if let Some(h) = before {
            let _ = h.await;
        }
        if n > 0 {
            bucketgate_storage::sync::run_scheduled_until(jobs, state_dir, stop2, cut2).await;
        }
    });
    Syncs {
        stop,
        done,
        jobs: n,
        active,
    }
}

/// Every (remote, bucket prefix) the gateway writes under: the S3 site tree, the mounts and the
/// syncs' remote sides.
fn upload_prefixes(cfg: &Config) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = cfg
        .mounts
        .iter()
        .map(|m| (m.remote.clone(), m.prefix.clone()))
        .chain(
            cfg.syncs
                .iter()
                .map(|s| (s.remote.clone(), s.prefix.clone())),
        )
        .collect();
    if let bucketgate_config::StorageConfig::S3 { remote, prefix } = &cfg.storage {
        out.push((remote.clone(), prefix.clone()));
    }
    for (_, prefix) in &mut out {
        *prefix = bucketgate_storage::path::normalize_prefix(prefix).unwrap_or_default();
    }
    out.sort();
    out.dedup();
    out
}

type Remotes = std::collections::HashMap<String, Arc<bucketgate_storage::s3::S3Backend>>;

/// Finds out in the background, once per remote, what its server enforces (conditional
/// requests, folder markers), inside the prefix the gateway uses there: until it answers, the
/// remote gets the cautious defaults (a HEAD check before each commit). A failed probe (a
/// read-only key, an unreachable server) keeps those defaults and says so in one line.
fn probe_capabilities(remotes: &Remotes, cfg: &Config) {
    let prefixes = admin::probe_prefixes(cfg);
    for (name, backend) in remotes {
        let prefix = prefixes.get(name).cloned().unwrap_or_default();
        let prefix = bucketgate_storage::path::normalize_prefix(&prefix).unwrap_or_default();
        let (name, backend) = (name.clone(), backend.clone());
        tokio::spawn(async move {
            if let Err(e) = backend.probe_capabilities(&prefix).await {
                tracing::warn!(remote = %name, error = ?e,
                    "could not probe the remote's server; every commit is checked by a HEAD first");
            }
        });
    }
}

/// Aborts multipart uploads under our prefixes that were abandoned (a crash mid-upload) and
/// have received nothing for `transfers.stale_multipart_after`; runs at start, after each
/// reload (over the new prefixes and remotes), and then hourly. Uploads this process holds are
/// never aborted, nor those another instance is still writing (see
/// `S3Backend::abort_stale_uploads`).
async fn cleanup_stale_uploads(
    age: Duration,
    mut targets: tokio::sync::watch::Receiver<(Vec<(String, String)>, Remotes)>,
    shutdown: CancellationToken,
) {
    loop {
        let (prefixes, remotes) = targets.borrow_and_update().clone();
        // First what earlier runs journaled: found on every server, at once, whatever the age.
        for (remote, b) in remotes.iter() {
            if let Err(e) = b.abort_journaled_leftovers().await {
                tracing::warn!(remote = %remote, error = ?e, "cannot read the upload journal");
            }
        }
        for (remote, prefix) in &prefixes {
            let Some(b) = remotes.get(remote) else {
                continue;
            };
            match b.abort_stale_uploads(prefix, age).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(remote = %remote, prefix = %prefix, aborted = n, "aborted stale multipart uploads")
                }
                Err(e) => {
                    tracing::warn!(remote = %remote, error = ?e, "stale multipart cleanup failed")
                }
            }
        }
        tracing::debug!(
            prefixes = prefixes.len(),
            "stale multipart clean-up pass done"
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = targets.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}

/// The config's trusted PROXY senders in the frontends' terms.
fn trusted_proxies(p: &bucketgate_config::ProxyProtocol) -> bucketgate_protocols::proxy::Trusted {
    bucketgate_protocols::proxy::Trusted::new(
        p.trusted().iter().map(|n| ipnet::IpNet::from(*n)).collect(),
    )
}
