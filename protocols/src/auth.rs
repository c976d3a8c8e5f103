//! Login logic shared by every frontend: accounts, password and key checks, per-user protocol
//! and address rules, and the brute-force ban list.
//!
//! A frontend asks [`LoginService`] and gets either a [`Session`] (the user's file tree) or a
//! [`LoginError`]. Every failure is logged here, once, on one stable line that fail2ban can
//! match (`login failed: protocol=sftp ip=203.0.113.9 user="bob" reason=wrong_password`); a
//! password never reaches a log line.

use bucketgate_state::{Ban, Failure, SessionRow, StateStore};
use bucketgate_storage::budget::{MemoryBudget, MemoryPermit};
use bucketgate_storage::{Permissions, SessionInfo, Tree, UserFs, VPath};
use ipnet::IpNet;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// The protocols a user may be allowed to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// SFTP and SCP over SSH.
    Sftp,
    /// FTP and FTPS.
    Ftp,
}

impl Protocol {
    /// Lower-case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sftp => "sftp",
            Protocol::Ftp => "ftp",
        }
    }
}

/// One configured user.
#[derive(Debug, Clone)]
pub struct Account {
    /// Login name.
    pub username: String,
    /// argon2 PHC string, when password login is allowed.
    pub password_hash: Option<String>,
    /// OpenSSH `authorized_keys` lines.
    pub public_keys: Vec<String>,
    /// Home folder in the site tree.
    pub home: VPath,
    /// Folder rules, relative to the home.
    pub permissions: Permissions,
    /// Protocols the user may use.
    pub protocols: Vec<Protocol>,
    /// Addresses the user may connect from; empty means anywhere.
    pub allowed_ips: Vec<IpNet>,
}

/// The accounts and the tree they live in: replaced whole on reload, so sessions that already
/// started keep the directory they logged in with.
pub struct Directory {
    users: HashMap<String, Arc<Account>>,
    tree: Arc<Tree>,
}

impl Directory {
    /// A directory of `accounts` over `tree`.
    pub fn new(accounts: Vec<Account>, tree: Arc<Tree>) -> Self {
        let users = accounts
            .into_iter()
            .map(|a| (a.username.clone(), Arc::new(a)))
            .collect();
        Directory { users, tree }
    }

    /// The shared tree.
    pub fn tree(&self) -> &Arc<Tree> {
        &self.tree
    }

    /// Looks a user up.
    pub fn get(&self, username: &str) -> Option<&Arc<Account>> {
        self.users.get(username)
    }
}

/// The brute-force defence's settings (`limits.ban`).
#[derive(Debug, Clone)]
pub struct BanPolicy {
    /// Score at which an address is banned.
    pub threshold: u32,
    /// Failures older than this no longer count.
    pub window: Duration,
    /// How long a ban lasts.
    pub duration: Duration,
    /// Networks never banned.
    pub safelist: Vec<IpNet>,
    /// Delay added to every failed attempt, to slow guessing down.
    pub failure_delay: Duration,
}

impl Default for BanPolicy {
    fn default() -> Self {
        BanPolicy {
            threshold: 15,
            window: Duration::from_secs(30 * 60),
            duration: Duration::from_secs(30 * 60),
            safelist: Vec::new(),
            failure_delay: Duration::from_secs(1),
        }
    }
}

/// Why a login was refused. The client is only ever told "denied".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// The address is banned.
    Banned,
    /// The user name is malformed (`/`, `..`, control characters, too long).
    InvalidUsername,
    /// No such user.
    UnknownUser,
    /// Wrong password.
    WrongPassword,
    /// The key is not one of the user's.
    WrongKey,
    /// The user may not use this protocol.
    ProtocolDenied,
    /// The user may not connect from this address.
    AddressDenied,
    /// The user has no password (key-only) and tried one.
    MethodDenied,
    /// The home folder could not be prepared (storage failure).
    HomeUnavailable,
}

impl LoginError {
    /// The `reason=` word of the log line.
    pub fn reason(self) -> &'static str {
        match self {
            LoginError::Banned => "banned",
            LoginError::InvalidUsername => "invalid_username",
            LoginError::UnknownUser => "unknown_user",
            LoginError::WrongPassword => "wrong_password",
            LoginError::WrongKey => "wrong_key",
            LoginError::ProtocolDenied => "protocol_denied",
            LoginError::AddressDenied => "address_denied",
            LoginError::MethodDenied => "method_denied",
            LoginError::HomeUnavailable => "home_unavailable",
        }
    }

    /// How much the failure counts towards a ban.
    fn score(self) -> u32 {
        match self {
            LoginError::UnknownUser | LoginError::InvalidUsername => 2,
            LoginError::WrongPassword | LoginError::MethodDenied => 1,
            // A refused key is how public-key clients probe which key works: not an attack.
            _ => 0,
        }
    }
}

impl std::fmt::Display for LoginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

/// A logged-in user.
#[derive(Clone)]
pub struct Session {
    /// The account as it was at login.
    pub account: Arc<Account>,
    /// Her file tree.
    pub fs: UserFs,
    /// Cancelled when a config reload removes the account, or changes it so that this session
    /// could not log in again (home, protocols, allowed addresses): the frontend then closes
    /// the connection, and a transfer in progress is aborted.
    pub revoked: CancellationToken,
    /// Keeps the session in [`LoginService`]'s list of open sessions while any clone lives.
    _open: Arc<OpenGuard>,
}

/// A session as the reload sees it.
struct Open {
    account: Arc<Account>,
    /// The id the admin API shows (16 hex digits).
    id: String,
    proto: Protocol,
    ip: IpAddr,
    fs: UserFs,
    revoked: CancellationToken,
}

type OpenSessions = Mutex<HashMap<u64, Open>>;

/// Removes a session from the list when its last clone is dropped.
struct OpenGuard {
    id: u64,
    list: Weak<OpenSessions>,
    /// The registry the session was recorded in.
    state: Option<(Arc<dyn StateStore>, String)>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            list.lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
        }
        if let (Some((store, id)), Ok(rt)) =
            (self.state.take(), tokio::runtime::Handle::try_current())
        {
            rt.spawn(async move {
                if let Err(e) = store.session_closed(&id).await {
                    tracing::warn!("cannot remove session {id} from the registry: {e}");
                }
            });
        }
    }
}

/// What a reload did to the open sessions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReloadEffect {
    /// Sessions closed: their account was removed, or may no longer log in as it did.
    pub closed: usize,
    /// Sessions that follow their account's new permissions from their next operation.
    pub updated: usize,
}

/// Lets a connection wait for the revocation of a session that logs in on it later (the
/// connection's supervisor starts waiting before anyone has logged in).
#[derive(Default)]
pub struct SessionWatch {
    token: Mutex<Option<CancellationToken>>,
    set: Notify,
}

impl SessionWatch {
    /// A session logged in on this connection.
    pub fn logged_in(&self, s: &Session) {
        *self.token.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.revoked.clone());
        self.set.notify_one();
    }

    /// Ends when the session that logged in on this connection is revoked; never before a
    /// login.
    pub async fn revoked(&self) {
        loop {
            let t = self.token.lock().unwrap_or_else(|e| e.into_inner()).clone();
            match t {
                Some(t) => return t.cancelled().await,
                None => self.set.notified().await,
            }
        }
    }
}

#[derive(Default)]
struct Score {
    failures: Vec<(Instant, u32)>,
    banned_until: Option<Instant>,
}

/// Checks logins for every frontend.
pub struct LoginService {
    directory: RwLock<Arc<Directory>>,
    policy: BanPolicy,
    scores: Mutex<HashMap<IpAddr, Score>>,
    hash_slots: Semaphore,
    /// The process's memory budget (`transfers.memory_limit`), in which each password check
    /// beyond the first at a time holds its [`HASH_MEMORY`]; see [`LoginService::with_budget`].
    budget: Option<Arc<MemoryBudget>>,
    /// The one check at a time that runs outside the budget, so that logins never wait on
    /// memory that only transfers free.
    own_hash: Semaphore,
    /// Password hashes being checked now, and the most ever checked at once.
    hashing: AtomicUsize,
    hashing_peak: AtomicUsize,
    /// Sessions logged in now, so that a reload can close or restrict them.
    open: Arc<OpenSessions>,
    next_open: AtomicU64,
    /// Where bans, failures and sessions are recorded (see [`LoginService::attach_state`]).
    state: OnceLock<Arc<dyn StateStore>>,
    /// Users created at runtime, behind the config's (see
    /// [`LoginService::set_runtime_accounts`]).
    runtime: RwLock<Arc<HashMap<String, Arc<Account>>>>,
}

/// Users names are refused before anything touches storage when they could be read as paths.
pub fn username_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && !name.contains("..")
        && !name.contains(['/', '\\'])
        && !name.chars().any(|c| c.is_control())
}

/// Makes an argon2id PHC hash of `password` (for `bucketgate hash-password` and the demo user).
pub fn hash_password(password: &str) -> String {
    use argon2::PasswordHasher;
    // A random 16-byte salt from the operating system.
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// Checks `password` against a PHC hash in constant time (argon2's own comparison).
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::PasswordVerifier;
    // A hash that does not parse verifies nothing.
    argon2::Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A hash of a random password, verified against when the user is unknown so that the answer
/// takes as long as for a known user.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("decoy password that matches nothing"))
}

impl LoginService {
    /// A service over `directory`, with `hash_concurrency` password checks at a time (argon2
    /// is deliberately expensive; unbounded, a flood of logins would eat every core).
    pub fn new(directory: Directory, policy: BanPolicy, hash_concurrency: usize) -> Self {
        LoginService {
            directory: RwLock::new(Arc::new(directory)),
            policy,
            scores: Mutex::new(HashMap::new()),
            hash_slots: Semaphore::new(hash_concurrency.max(1)),
            budget: None,
            own_hash: Semaphore::new(1),
            hashing: AtomicUsize::new(0),
            hashing_peak: AtomicUsize::new(0),
            open: Arc::default(),
            next_open: AtomicU64::new(0),
            state: OnceLock::new(),
            runtime: RwLock::default(),
        }
    }

    /// Records bans, failures and sessions in `store` from now on, after taking over the
    /// bans and the failures still in their window that it holds (a restart keeps them). The
    /// sessions registered by a previous process are forgotten: they ended with it (not on a
    /// shared store, where they may be another instance's).
    pub async fn attach_state(&self, store: Arc<dyn StateStore>) -> bucketgate_state::Result<()> {
        let now = SystemTime::now();
        let bans = store.bans(now).await?;
        let failures = store
            .failures_since(now.checked_sub(self.policy.window).unwrap_or(now))
            .await?;
        if !store.shared() {
            store.clear_sessions().await?;
        }
        let mono = Instant::now();
        let mut scores = self.scores.lock().expect("lock");
        for f in failures {
            let ago = now.duration_since(f.at).unwrap_or_default();
            if let Some(t) = mono.checked_sub(ago) {
                scores.entry(f.ip).or_default().failures.push((t, f.score));
            }
        }
        for b in &bans {
            let left = b.until.duration_since(now).unwrap_or_default();
            scores.entry(b.ip).or_default().banned_until = Some(mono + left);
        }
        drop(scores);
        if !bans.is_empty() {
            tracing::info!(target: "bucketgate::auth", "bans restored: {}", bans.len());
        }
        let _ = self.state.set(store);
        Ok(())
    }

    /// On a shared store: takes in the bans in force there that this process does not hold
    /// (earned on another instance), or holds until an earlier time. Returns how many
    /// addresses it newly bans. A ban lifted on another instance stays here until it ends or
    /// is lifted here too.
    pub async fn refresh_bans(&self) -> bucketgate_state::Result<usize> {
        let Some(store) = self.state.get() else {
            return Ok(0);
        };
        let now = SystemTime::now();
        let bans = store.bans(now).await?;
        let mono = Instant::now();
        let mut scores = self.scores.lock().expect("lock");
        let mut new = 0;
        for b in bans {
            let until = mono + b.until.duration_since(now).unwrap_or_default();
            let s = scores.entry(b.ip).or_default();
            if s.banned_until.is_none_or(|t| t <= mono) {
                new += 1;
            }
            if s.banned_until.is_none_or(|t| t < until) {
                s.banned_until = Some(until);
            }
        }
        drop(scores);
        if new > 0 {
            tracing::info!(target: "bucketgate::auth", "bans taken from the shared store: {new}");
        }
        Ok(new)
    }

    /// The addresses banned now, with the time each ban ends.
    pub fn bans(&self) -> Vec<(IpAddr, SystemTime)> {
        let (now, sys) = (Instant::now(), SystemTime::now());
        let scores = self.scores.lock().expect("lock");
        let mut v: Vec<_> = scores
            .iter()
            .filter_map(|(ip, s)| match s.banned_until {
                Some(t) if t > now => Some((*ip, sys + (t - now))),
                _ => None,
            })
            .collect();
        v.sort();
        v
    }

    /// Lifts the ban on `ip` and forgets its failures; false when it was not banned.
    pub async fn lift_ban(&self, ip: IpAddr) -> bool {
        let was = {
            let mut scores = self.scores.lock().expect("lock");
            let was = scores
                .get(&ip)
                .is_some_and(|s| s.banned_until.is_some_and(|t| t > Instant::now()));
            scores.remove(&ip);
            was
        };
        let mut stored = false;
        if let Some(store) = self.state.get() {
            match store.delete_ban(ip).await {
                Ok(b) => stored = b,
                Err(e) => tracing::error!("cannot lift the stored ban of {ip}: {e}"),
            }
        }
        if was || stored {
            tracing::info!(target: "bucketgate::auth", "ban lifted: ip={ip}");
        }
        was || stored
    }

    /// The transfers in progress of the session `id` of this process, and its bytes so far.
    pub fn activity(&self, id: &str) -> Option<Arc<bucketgate_storage::metrics::Activity>> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.values().find(|s| s.id == id).map(|s| s.fs.activity())
    }

    /// How many sessions are logged in now (a session ends when its connection has ended).
    pub fn sessions_open(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Closes the session `id` (as a reload that removed its user would); false when no
    /// session of this process has that id.
    pub fn disconnect(&self, id: &str) -> bool {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        match open.values().find(|s| s.id == id) {
            Some(s) => {
                tracing::info!(
                    target: "bucketgate::auth",
                    "session closed: protocol={} ip={} user={:?} reason=disconnected by an administrator",
                    s.proto.name(),
                    s.ip,
                    s.account.username
                );
                s.revoked.cancel();
                true
            }
            None => false,
        }
    }

    /// A failed admin API authentication from `ip`: logged and scored like a failed login
    /// (`reason` is `no_token`, `wrong_token`...), so that guessing tokens earns a ban. A
    /// request from a banned address (`banned`) is logged but scores nothing more.
    pub async fn api_failure(&self, ip: IpAddr, token_id: &str, reason: &'static str) {
        let score = u32::from(reason != "banned");
        self.record_failure("admin", ip, token_id, reason, score)
            .await;
    }

    /// Counts password checks in `budget`: argon2's working memory (the hash's `m` parameter:
    /// [`HASH_MEMORY`], 19 MiB, with the default parameters) is taken from the budget for every check but one at a time, which
    /// runs on its own allowance. So a burst of password logins (FTP clients log in for every
    /// transfer) holds at most one check's memory beyond `transfers.memory_limit`, and waits
    /// for the budget rather than growing the process.
    pub fn with_budget(mut self, budget: Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Memory for one password check: in the budget when it has it free, else the check that
    /// runs outside the budget when none does, else whichever frees first.
    async fn hash_memory(&self, hash: &str) -> HashMemory<'_> {
        let Some(budget) = self.budget.as_deref() else {
            return HashMemory::Unbounded;
        };
        let bytes = memory_of(hash);
        if let Some(p) = budget.try_acquire(bytes) {
            return HashMemory::Budget(p);
        }
        if let Ok(p) = self.own_hash.try_acquire() {
            return HashMemory::Own(p);
        }
        if !budget.can_hold(bytes) {
            return HashMemory::Own(self.own_hash.acquire().await.expect("never closed"));
        }
        tokio::select! {
            p = budget.acquire(bytes) => match p {
                Ok(p) => HashMemory::Budget(p),
                Err(_) => HashMemory::Own(self.own_hash.acquire().await.expect("never closed")),
            },
            p = self.own_hash.acquire() => HashMemory::Own(p.expect("never closed")),
        }
    }

    /// Swaps in a new directory (config reload). New logins use it. Sessions in progress keep
    /// the tree they logged in with, but follow their account: a session whose account was
    /// removed, or could no longer log in as it did (another home, the protocol or the address
    /// no longer allowed), is revoked (its frontend closes it), and the others take the
    /// account's new permissions from their next operation. A changed password or key leaves
    /// open sessions alone, as OpenSSH does.
    pub fn replace_directory(&self, directory: Directory) -> ReloadEffect {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let runtime = self.runtime.read().expect("lock").clone();
        let effect = Self::revalidate(&open, &directory, &runtime);
        *self.directory.write().expect("lock") = Arc::new(directory);
        effect
    }

    /// Replaces the users created at runtime (the admin API's). A user of the config with the
    /// same name wins: a runtime user is only looked up when the config has no such name.
    /// Open sessions follow their account as on a reload ([`LoginService::replace_directory`]).
    pub fn set_runtime_accounts(&self, accounts: Vec<Account>) -> ReloadEffect {
        let runtime: Arc<HashMap<String, Arc<Account>>> = Arc::new(
            accounts
                .into_iter()
                .map(|a| (a.username.clone(), Arc::new(a)))
                .collect(),
        );
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let effect = Self::revalidate(&open, &self.directory(), &runtime);
        *self.runtime.write().expect("lock") = runtime;
        effect
    }

    /// An account by name: the config's first, then the runtime users'.
    fn lookup(&self, dir: &Directory, username: &str) -> Option<Arc<Account>> {
        dir.get(username)
            .cloned()
            .or_else(|| self.runtime.read().expect("lock").get(username).cloned())
    }

    fn revalidate(
        open: &HashMap<u64, Open>,
        directory: &Directory,
        runtime: &HashMap<String, Arc<Account>>,
    ) -> ReloadEffect {
        let mut effect = ReloadEffect::default();
        for s in open.values() {
            let name = &s.account.username;
            let why = match directory.get(name).or_else(|| runtime.get(name)) {
                None => Some("the user was removed from the config"),
                Some(a) if a.home != s.account.home => Some("the user's home changed"),
                Some(a) if !a.protocols.contains(&s.proto) => {
                    Some("the user may no longer use this protocol")
                }
                Some(a)
                    if !a.allowed_ips.is_empty()
                        && !a.allowed_ips.iter().any(|n| n.contains(&s.ip)) =>
                {
                    Some("the user may no longer connect from this address")
                }
                Some(a) => {
                    s.fs.set_permissions(a.permissions.clone());
                    effect.updated += 1;
                    None
                }
            };
            if let Some(why) = why {
                if !s.revoked.is_cancelled() {
                    tracing::info!(
                        target: "bucketgate::auth",
                        "session closed: protocol={} ip={} user={:?} reason={why}",
                        s.proto.name(),
                        s.ip,
                        s.account.username
                    );
                    s.revoked.cancel();
                    effect.closed += 1;
                }
            }
        }
        effect
    }

    /// The current directory.
    pub fn directory(&self) -> Arc<Directory> {
        self.directory.read().expect("lock").clone()
    }

    fn safelisted(&self, ip: IpAddr) -> bool {
        self.policy.safelist.iter().any(|n| n.contains(&ip))
    }

    /// True while `ip` is banned. Frontends ask before doing any work for a new connection.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        if self.safelisted(ip) {
            return false;
        }
        let mut scores = self.scores.lock().expect("lock");
        let Some(s) = scores.get_mut(&ip) else {
            return false;
        };
        match s.banned_until {
            Some(t) if t > Instant::now() => true,
            Some(_) => {
                scores.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Records a failure, logs it, bans the address past the threshold, and waits the failure
    /// delay.
    async fn fail(&self, proto: Protocol, ip: IpAddr, user: &str, why: LoginError) -> LoginError {
        self.record_failure(proto.name(), ip, user, why.reason(), why.score())
            .await;
        why
    }

    async fn record_failure(
        &self,
        proto: &'static str,
        ip: IpAddr,
        user: &str,
        reason: &'static str,
        score: u32,
    ) {
        crate::metrics::login(proto, reason);
        let shown_user: String = user.chars().take(64).collect();
        tracing::warn!(
            target: "bucketgate::auth",
            "login failed: protocol={} ip={} user={:?} reason={}",
            proto,
            ip,
            shown_user,
            reason
        );
        if score > 0 && !self.safelisted(ip) {
            let mut banned = None;
            let now = Instant::now();
            {
                let mut scores = self.scores.lock().expect("lock");
                let s = scores.entry(ip).or_default();
                s.failures
                    .retain(|(t, _)| now.duration_since(*t) < self.policy.window);
                s.failures.push((now, score));
                let total: u32 = s.failures.iter().map(|(_, n)| n).sum();
                if total >= self.policy.threshold && s.banned_until.is_none() {
                    s.banned_until = Some(now + self.policy.duration);
                    banned = Some(total);
                    tracing::warn!(
                        target: "bucketgate::auth",
                        "ban: ip={} banned for {}s after login failures scoring {}",
                        ip,
                        self.policy.duration.as_secs(),
                        total
                    );
                }
                // Bound the table: forget addresses whose failures all expired.
                if scores.len() > 100_000 {
                    scores.retain(|_, s| {
                        s.banned_until.is_some_and(|t| t > now)
                            || s.failures
                                .iter()
                                .any(|(t, _)| now.duration_since(*t) < self.policy.window)
                    });
                }
            }
            if let Some(store) = self.state.get() {
                let at = SystemTime::now();
                let r = store.add_failure(&Failure { ip, at, score }).await;
                let r = match (r, banned) {
                    (Ok(()), Some(total)) => {
                        store
                            .put_ban(&Ban {
                                ip,
                                until: at + self.policy.duration,
                                score: total,
                            })
                            .await
                    }
                    (r, _) => r,
                };
                if let Err(e) = r {
                    tracing::error!("cannot record a login failure: {e}");
                }
            }
        }
        if score > 0 {
            tokio::time::sleep(self.policy.failure_delay).await;
        }
    }

    /// The checks that come before any credential: ban, name, account, protocol, address.
    async fn precheck(
        &self,
        proto: Protocol,
        ip: IpAddr,
        username: &str,
    ) -> Result<(Arc<Account>, Arc<Directory>), LoginError> {
        if self.is_banned(ip) {
            return Err(self.fail(proto, ip, username, LoginError::Banned).await);
        }
        if !username_is_valid(username) {
            return Err(self
                .fail(proto, ip, username, LoginError::InvalidUsername)
                .await);
        }
        let dir = self.directory();
        let Some(acc) = self.lookup(&dir, username) else {
            return Err(LoginError::UnknownUser);
        };
        if !acc.protocols.contains(&proto) {
            return Err(self
                .fail(proto, ip, username, LoginError::ProtocolDenied)
                .await);
        }
        if !acc.allowed_ips.is_empty() && !acc.allowed_ips.iter().any(|n| n.contains(&ip)) {
            return Err(self
                .fail(proto, ip, username, LoginError::AddressDenied)
                .await);
        }
        Ok((acc, dir))
    }

    async fn open_session(
        &self,
        proto: Protocol,
        ip: IpAddr,
        acc: Arc<Account>,
        dir: &Directory,
    ) -> Result<Session, LoginError> {
        let fs = UserFs::new(
            dir.tree().clone(),
            &acc.username,
            acc.home.clone(),
            acc.permissions.clone(),
        )
        .with_session(SessionInfo {
            protocol: proto.name(),
            client: ip,
        });
        if let Err(e) = fs.ensure_home().await {
            tracing::error!(user = %acc.username, error = ?e, "cannot prepare the home folder");
            crate::metrics::login(proto.name(), LoginError::HomeUnavailable.reason());
            return Err(LoginError::HomeUnavailable);
        }
        crate::metrics::login(proto.name(), "ok");
        tracing::info!(
            target: "bucketgate::auth",
            "login ok: protocol={} ip={} user={:?}",
            proto.name(),
            ip,
            acc.username
        );
        let id = self.next_open.fetch_add(1, Ordering::Relaxed);
        // Unique across restarts and instances: the registry's key.
        let public_id = format!("{:016x}", rand::random::<u64>());
        let state = match self.state.get() {
            Some(store) => {
                let row = SessionRow {
                    id: public_id.clone(),
                    username: acc.username.clone(),
                    protocol: proto.name().to_string(),
                    client: ip,
                    started: SystemTime::now(),
                };
                match store.session_opened(&row).await {
                    Ok(()) => Some((store.clone(), public_id.clone())),
                    Err(e) => {
                        tracing::error!("cannot register the session: {e}");
                        None
                    }
                }
            }
            None => None,
        };
        let revoked = CancellationToken::new();
        self.open.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Open {
                account: acc.clone(),
                id: public_id,
                proto,
                ip,
                fs: fs.clone(),
                revoked: revoked.clone(),
            },
        );
        Ok(Session {
            account: acc,
            fs,
            revoked,
            _open: Arc::new(OpenGuard {
                id,
                list: Arc::downgrade(&self.open),
                state,
            }),
        })
    }

    /// The most password hashes ever checked at once: at most the hash concurrency given to
    /// [`LoginService::new`], however many clients log in together (each argon2 check holds
    /// 19 MiB and a core).
    pub fn peak_concurrent_hash_checks(&self) -> usize {
        self.hashing_peak.load(Ordering::SeqCst)
    }

    /// Password login.
    pub async fn login_password(
        &self,
        proto: Protocol,
        ip: IpAddr,
        username: &str,
        password: &str,
    ) -> Result<Session, LoginError> {
        let pre = self.precheck(proto, ip, username).await;
        let (hash, known) = match &pre {
            Ok((acc, _)) => match &acc.password_hash {
                Some(h) => (h.clone(), true),
                None => (decoy_hash().to_string(), false),
            },
            Err(LoginError::UnknownUser) => (decoy_hash().to_string(), false),
            Err(e) => return Err(*e),
        };
        let ok = self.check_hash(hash, password).await;
        match pre {
            Err(e) => Err(self.fail(proto, ip, username, e).await),
            Ok(_) if !known => Err(self
                .fail(proto, ip, username, LoginError::MethodDenied)
                .await),
            Ok(_) if !ok => Err(self
                .fail(proto, ip, username, LoginError::WrongPassword)
                .await),
            Ok((acc, dir)) => self.open_session(proto, ip, acc, &dir).await,
        }
    }

    /// One argon2 check, bounded like every other: a hash slot (the hash concurrency), its
    /// memory from the budget (see [`LoginService::with_budget`]), on the blocking pool.
    async fn check_hash(&self, hash: String, password: &str) -> bool {
        let _slot = self.hash_slots.acquire().await.expect("never closed");
        let _memory = self.hash_memory(&hash).await;
        let _hashing = Hashing::enter(&self.hashing, &self.hashing_peak);
        let password = password.to_string();
        tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false)
    }

    /// An admin account's password (the web console's login), from `ip`: refused while the
    /// address is banned; checked through the same bounded, memory-budgeted argon2 checker as
    /// SFTP and FTP passwords (`hash` None, an unknown account, is checked against a decoy so
    /// that the answer takes as long); a failure is logged as `protocol=admin` and scored like
    /// a password login's (wrong password 1, unknown account 2) on the one ban list.
    pub async fn admin_password(
        &self,
        ip: IpAddr,
        username: &str,
        hash: Option<&str>,
        password: &str,
    ) -> Result<(), LoginError> {
        if self.is_banned(ip) {
            self.record_failure("admin", ip, username, "banned", 0)
                .await;
            return Err(LoginError::Banned);
        }
        let known = hash.is_some();
        let hash = hash.map_or_else(|| decoy_hash().to_string(), str::to_string);
        let ok = self.check_hash(hash, password).await;
        let why = match (known, ok) {
            (true, true) => return Ok(()),
            (false, _) => LoginError::UnknownUser,
            (true, false) => LoginError::WrongPassword,
        };
        self.record_failure("admin", ip, username, why.reason(), why.score())
            .await;
        Err(why)
    }

    /// Public-key login: `matches` tells whether an `authorized_keys` line is the client's key
    /// (the SSH layer has already verified the signature).
    pub async fn login_key(
        &self,
        proto: Protocol,
        ip: IpAddr,
        username: &str,
        matches: impl Fn(&str) -> bool,
    ) -> Result<Session, LoginError> {
        let (acc, dir) = match self.precheck(proto, ip, username).await {
            Ok(v) => v,
            // precheck has recorded every other refusal already; only this one is left to us.
            Err(LoginError::UnknownUser) => {
                return Err(self
                    .fail(proto, ip, username, LoginError::UnknownUser)
                    .await)
            }
            Err(e) => return Err(e),
        };
        if !acc.public_keys.iter().any(|k| matches(k)) {
            return Err(self.fail(proto, ip, username, LoginError::WrongKey).await);
        }
        self.open_session(proto, ip, acc, &dir).await
    }

    /// Whether `username` could log in with a key at all, without recording anything (SSH
    /// clients offer keys before signing with them).
    pub fn key_candidate(&self, proto: Protocol, ip: IpAddr, username: &str) -> Vec<String> {
        if self.is_banned(ip) || !username_is_valid(username) {
            return Vec::new();
        }
        let dir = self.directory();
        match self.lookup(&dir, username) {
            Some(acc)
                if acc.protocols.contains(&proto)
                    && (acc.allowed_ips.is_empty()
                        || acc.allowed_ips.iter().any(|n| n.contains(&ip))) =>
            {
                acc.public_keys.clone()
            }
            _ => Vec::new(),
        }
    }
}

/// The working memory of one argon2 check with the parameters [`hash_password`] uses (argon2's
/// defaults: `m_cost` KiB).
pub const HASH_MEMORY: u64 = argon2::Params::DEFAULT_M_COST as u64 * 1024;

/// The working memory a check against `hash` takes: its own `m` parameter (KiB), which an
/// operator may have raised; [`HASH_MEMORY`] when the hash does not say.
fn memory_of(hash: &str) -> u64 {
    argon2::PasswordHash::new(hash)
        .ok()
        .and_then(|h| h.params.get_decimal("m"))
        .map_or(HASH_MEMORY, |kib| u64::from(kib) * 1024)
}

/// Where a password check's memory is counted, for as long as the check runs.
enum HashMemory<'a> {
    /// No budget configured (tests, tools).
    Unbounded,
    Budget(#[allow(dead_code)] MemoryPermit),
    Own(#[allow(dead_code)] tokio::sync::SemaphorePermit<'a>),
}

/// Counts a password hash check in progress for as long as it lives (also when its task is
/// cancelled mid-check).
struct Hashing<'a>(&'a AtomicUsize);

impl<'a> Hashing<'a> {
    fn enter(now: &'a AtomicUsize, peak: &AtomicUsize) -> Self {
        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
        peak.fetch_max(n, Ordering::SeqCst);
        Hashing(now)
    }
}

impl Drop for Hashing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_counts_the_memory_its_hash_asks_for() {
        assert_eq!(memory_of(&hash_password("x")), 19 * 1024 * 1024);
        let big = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG";
        assert_eq!(memory_of(big), 64 * 1024 * 1024);
        assert_eq!(memory_of("not a hash"), HASH_MEMORY);
    }
}
