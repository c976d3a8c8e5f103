//! Shared harness of the SFTP/SCP tests: a real server on 127.0.0.1 over a local-folder tree.
#![allow(dead_code)]

use bucketgate_protocols::auth::{
    hash_password, Account, BanPolicy, Directory, LoginService, Protocol,
};
use bucketgate_protocols::limits::SessionLimiter;
use bucketgate_protocols::ssh::{load_or_create_host_keys, serve, SftpOptions};
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::{Area, Mount, PermSet, Permissions, Tree, VPath};
use russh::keys::ssh_key::private::{Ed25519Keypair, KeypairData};
use russh::keys::ssh_key::LineEnding;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use russh_sftp::client::RawSftpSession;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use bucketgate_testkit::ssh::TrustAll;
pub use bucketgate_testkit::tools::require as require_tool;

/// alice's password.
pub const ALICE_PW: &str = "alice-secret";
/// Password of the other users.
pub const OTHER_PW: &str = "other-secret";

/// A running server and the folder behind it.
pub struct Harness {
    /// Holds the backend root, the host key and the client key.
    pub dir: tempfile::TempDir,
    /// The site tree's folder on disk.
    pub root: PathBuf,
    /// Where the server listens.
    pub addr: SocketAddr,
    /// alice's key (its public half is in her account).
    pub alice_key: PrivateKey,
    /// The same key as an OpenSSH file, mode 0600, for `sftp -i`.
    pub alice_key_file: PathBuf,
    /// The login service the server uses (to ban an address in a test).
    pub login: Arc<LoginService>,
    /// The session caps the server uses.
    pub limiter: Arc<SessionLimiter>,
    /// Cancels the server.
    pub shutdown: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// A generated ed25519 key.
pub fn new_key() -> PrivateKey {
    let seed: [u8; 32] = rand::random();
    PrivateKey::new(KeypairData::from(Ed25519Keypair::from_seed(&seed)), "test").unwrap()
}

fn account(name: &str, pw: &str, keys: Vec<String>, protocols: Vec<Protocol>) -> Account {
    Account {
        username: name.to_string(),
        password_hash: Some(hash_password(pw)),
        public_keys: keys,
        home: VPath::parse(&format!("/users/{name}")).unwrap(),
        permissions: Permissions::new([
            (VPath::root(), PermSet::ALL),
            (
                VPath::parse("/archive").unwrap(),
                PermSet::parse(["list", "download"]).unwrap(),
            ),
        ]),
        protocols,
        allowed_ips: vec![],
    }
}

impl Harness {
    /// Starts a server with default options.
    pub async fn start() -> Harness {
        Harness::start_with(|_| {}).await
    }

    /// Starts a server after `tweak` has adjusted the options.
    ///
    /// Users: `alice` (password [`ALICE_PW`] and [`Harness::alice_key`], home
    /// `/users/alice`, read-only `/archive`), `alice2` (sibling home, holds `secret.txt`) and
    /// `bob` (FTP only). `/etc/passwd` exists in the site tree, outside every home.
    pub async fn start_with(tweak: impl FnOnce(&mut SftpOptions)) -> Harness {
        Harness::start_full(tweak, None, 0).await
    }

    /// Starts a server that admits `per_ip` sessions per address.
    pub async fn start_limited(per_ip: usize) -> Harness {
        Harness::start_full(|_| {}, None, per_ip).await
    }

    /// Starts a server whose site tree also shows `mounts` (remotes' buckets).
    pub async fn start_with_mounts(mounts: Vec<Mount>) -> Harness {
        Harness::start_tree(|_| {}, None, 0, mounts).await
    }

    /// Starts a server whose alice also accepts the key in `key_file` (made by `ssh-keygen`),
    /// which then becomes [`Harness::alice_key_file`].
    pub async fn start_with_key_file(key_file: PathBuf) -> Harness {
        Harness::start_full(|_| {}, Some(key_file), 0).await
    }

    async fn start_full(
        tweak: impl FnOnce(&mut SftpOptions),
        key_file: Option<PathBuf>,
        per_ip: usize,
    ) -> Harness {
        Harness::start_tree(tweak, key_file, per_ip, vec![]).await
    }

    async fn start_tree(
        tweak: impl FnOnce(&mut SftpOptions),
        key_file: Option<PathBuf>,
        per_ip: usize,
        mounts: Vec<Mount>,
    ) -> Harness {
        // Server logs on the test's output when RUST_LOG asks for them.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        std::fs::create_dir_all(root.join("users/alice/archive")).unwrap();
        std::fs::write(root.join("users/alice/archive/old.txt"), b"archived").unwrap();
        std::fs::create_dir_all(root.join("users/alice2")).unwrap();
        std::fs::write(root.join("users/alice2/secret.txt"), b"alice2 only").unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), b"root:x:0:0").unwrap();

        let alice_key = new_key();
        let mut alice_keys = vec![alice_key.public_key().to_openssh().unwrap()];
        let alice_key_file = match key_file {
            Some(f) => {
                let line = std::fs::read_to_string(f.with_extension("pub")).unwrap();
                alice_keys.push(format!("no-pty {}", line.trim()));
                f
            }
            None => {
                let f = dir.path().join("alice_ed25519");
                write_private_key(&alice_key, &f);
                f
            }
        };

        let backend = Arc::new(LocalBackend::new(&root).unwrap());
        let tree = Arc::new(Tree::new(
            Area {
                backend,
                prefix: String::new(),
            },
            mounts,
        ));
        let users = vec![
            account("alice", ALICE_PW, alice_keys, vec![Protocol::Sftp]),
            account("alice2", OTHER_PW, vec![], vec![Protocol::Sftp]),
            account("bob", OTHER_PW, vec![], vec![Protocol::Ftp]),
        ];
        let policy = BanPolicy {
            failure_delay: Duration::from_millis(10),
            ..Default::default()
        };
        let login = Arc::new(LoginService::new(Directory::new(users, tree), policy, 2));
        let limiter = SessionLimiter::new(0, per_ip);

        let mut opts = SftpOptions {
            host_keys: vec![dir.path().join("ssh_host_ed25519_key")],
            // Far beyond any login, even several password checks on loaded cores (the default
            // 30 s closed an FTP test of bad logins on a busy machine).
            login_grace: std::time::Duration::from_secs(300),
            ..Default::default()
        };
        tweak(&mut opts);
        let keys = load_or_create_host_keys(&opts.host_keys).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(serve(
            listener,
            opts,
            keys,
            login.clone(),
            limiter.clone(),
            shutdown.clone(),
        ));
        Harness {
            dir,
            root,
            addr,
            alice_key,
            alice_key_file,
            login,
            limiter,
            shutdown,
            task: Some(task),
        }
    }

    /// A file of alice's home on disk.
    pub fn alice(&self, rel: &str) -> PathBuf {
        self.root.join("users/alice").join(rel)
    }

    /// Stops the server and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    /// Asks the server to stop; [`Harness::stopped`] waits for it.
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Waits for the server task to end.
    pub async fn stopped(&mut self) {
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    /// An SSH connection, not yet authenticated.
    pub async fn connect(&self) -> russh::client::Handle<TrustAll> {
        let config = Arc::new(russh::client::Config::default());
        russh::client::connect(config, self.addr, TrustAll)
            .await
            .unwrap()
    }

    /// An SSH connection with alice logged in by password, no channel open yet.
    pub async fn alice_logged_in(&self) -> russh::client::Handle<TrustAll> {
        let mut c = self.connect().await;
        let r = c.authenticate_password("alice", ALICE_PW).await.unwrap();
        assert!(r.success(), "alice's password login refused");
        c
    }

    /// An SFTP session of `user` logged in with a password.
    pub async fn sftp_password(&self, user: &str, pw: &str) -> anyhow::Result<Sftp> {
        let mut h = self.connect().await;
        let r = h.authenticate_password(user, pw).await?;
        anyhow::ensure!(r.success(), "password login refused");
        open_sftp(h).await
    }

    /// An SFTP session of alice logged in with her key.
    pub async fn sftp_alice_key(&self) -> anyhow::Result<Sftp> {
        let mut h = self.connect().await;
        let key = PrivateKeyWithHashAlg::new(Arc::new(self.alice_key.clone()), None);
        let r = h.authenticate_publickey("alice", key).await?;
        anyhow::ensure!(r.success(), "key login refused");
        open_sftp(h).await
    }

    /// Common `ssh`/`sftp`/`scp` options: our port, alice's key, no host key checks.
    pub fn ssh_opts(&self, port_flag: &str) -> Vec<String> {
        vec![
            port_flag.to_string(),
            self.addr.port().to_string(),
            "-i".into(),
            self.alice_key_file.display().to_string(),
            "-o".into(),
            "StrictHostKeyChecking=no".into(),
            "-o".into(),
            "UserKnownHostsFile=/dev/null".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "IdentityAgent=none".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
            // Env requests before the subsystem, as `SendEnv LANG LC_*` sends them where
            // those are set: more than russh's per-channel queue holds.
            "-o".into(),
            "SetEnv=LANG=C.UTF-8 LC_ALL=C.UTF-8 LC_CTYPE=C.UTF-8 LC_MESSAGES=C".into(),
        ]
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// An SFTP session with the SSH connection it runs on (kept alive as long as the session).
pub struct Sftp {
    /// The raw session: every reply's status code is visible.
    pub raw: RawSftpSession,
    /// The SSH connection.
    pub ssh: russh::client::Handle<TrustAll>,
}

impl std::ops::Deref for Sftp {
    type Target = RawSftpSession;
    fn deref(&self) -> &RawSftpSession {
        &self.raw
    }
}

pub async fn open_sftp(h: russh::client::Handle<TrustAll>) -> anyhow::Result<Sftp> {
    let ch = h.channel_open_session().await?;
    ch.request_subsystem(true, "sftp").await?;
    let raw = RawSftpSession::new(ch.into_stream());
    raw.init().await?;
    Ok(Sftp { raw, ssh: h })
}

/// Writes an OpenSSH private key file with mode 0600 (ssh refuses looser ones).
pub fn write_private_key(key: &PrivateKey, path: &Path) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let pem = key.to_openssh(LineEnding::LF).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(pem.as_bytes()).unwrap();
}
