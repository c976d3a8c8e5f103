//! Shared by the `ftp_*` test files: a real FTP server on 127.0.0.1:0 over a local tree in a
//! temporary folder (or, with `Setup::s3`, over a bucket of s3s-fs or moto_server), and
//! helpers to reach it.
#![allow(dead_code)]

pub use bucketgate_testkit::ftp::RawFtp;
pub use bucketgate_testkit::s3 as s3_support;
pub use bucketgate_testkit::tools::tool;

use bucketgate_protocols::auth::{Account, BanPolicy, Directory, LoginService, Protocol};
use bucketgate_protocols::ftp::{serve, FtpOptions, FtpTls, TlsMode};
use bucketgate_protocols::limits::SessionLimiter;
use bucketgate_storage::backend::{Backend, Entry};
use bucketgate_storage::error::ErrorKind;
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::s3::S3Backend;
use bucketgate_storage::{Area, PermSet, Permissions, Tree, VPath};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use suppaftp::tokio::{AsyncFtpStream, AsyncRustlsConnector, AsyncRustlsFtpStream};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const USER: &str = "alice";
pub const PASSWORD: &str = "correct horse";

/// How to start the server.
#[derive(Clone)]
pub struct Setup {
    pub tls: Option<TlsMode>,
    pub active_mode: bool,
    pub max_line_len: usize,
    pub login_grace: Duration,
    pub max_list_entries: usize,
    pub max_sessions_per_ip: usize,
    pub ban_threshold: u32,
    /// The site tree lives in a bucket of this S3 server instead of a local folder; read it
    /// back with the `s3_*` helpers.
    pub s3: Option<S3Server>,
    /// The transfer memory budget the server counts in (`FtpOptions::memory`).
    pub memory: Option<Arc<bucketgate_storage::budget::MemoryBudget>>,
}

/// Which S3 server holds the bucket.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum S3Server {
    /// s3s-fs, in process. It maps keys to files, so a folder marker (`dir/`, what MKD makes)
    /// becomes a hidden directory: an empty folder made over FTP cannot be entered or listed.
    S3sFs,
    /// moto_server, a subprocess shared by the tests (scripts/install-test-tools.sh installs
    /// it; missing, the test fails). It keeps folder markers as objects like AWS and Garage,
    /// so clients that MKD and then CWD or STOR into the new folder work.
    Moto,
    /// The endpoint of `BUCKETGATE_TEST_S3_*` when set (Garage, in scripts/test.sh), else
    /// moto_server.
    EnvOrMoto,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            tls: None,
            active_mode: false,
            max_line_len: 1024,
            // Far beyond any login: on a loaded machine a few password checks (argon2) took
            // over 20 s together and the session was closed under a test of bad logins.
            login_grace: Duration::from_secs(300),
            max_list_entries: 10_000,
            max_sessions_per_ip: 0,
            ban_threshold: 1000,
            s3: None,
            memory: None,
        }
    }
}

/// A running server, its files and its certificate.
pub struct Harness {
    pub dir: tempfile::TempDir,
    /// The local backend's root: the site tree on disk.
    pub root: PathBuf,
    pub addr: SocketAddr,
    pub implicit_addr: Option<SocketAddr>,
    /// PEM of the self-signed certificate (when TLS is on).
    pub cert_pem: Option<PathBuf>,
    pub cert_der: Option<Vec<u8>>,
    pub shutdown: CancellationToken,
    pub server: Option<JoinHandle<anyhow::Result<()>>>,
    /// In S3 mode: the S3 server and a client of its own, apart from the gateway's.
    pub bucket: Option<Bucket>,
    /// The gateway's tree (to see whether uploads are in progress).
    pub tree: Arc<Tree>,
}

/// The bucket behind an S3-mode harness, read and written through a second S3 client so that
/// assertions see what any S3 user of the bucket sees, not what the gateway remembers.
pub struct Bucket {
    pub server: s3_support::Server,
    pub client: S3Backend,
}

impl Bucket {
    /// The object key of a path of the user's home.
    pub fn key(&self, rel: &str) -> String {
        self.server.key(&format!("users/{USER}/{rel}"))
    }
}

impl Harness {
    pub async fn start(setup: Setup) -> Harness {
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_test_writer()
                .try_init();
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("site");
        let home = root.join("users").join(USER);
        std::fs::create_dir_all(home.join("ro")).unwrap();
        std::fs::write(home.join("ro/locked.txt"), b"read only").unwrap();
        let (area, bucket) = if let Some(kind) = setup.s3 {
            let server = match kind {
                S3Server::S3sFs => s3_support::s3s_server(None).await,
                S3Server::Moto => s3_support::moto_server().await,
                S3Server::EnvOrMoto => match s3_support::env_server() {
                    Some(s) => s,
                    None => s3_support::moto_server().await,
                },
            };
            let bucket = Bucket {
                client: server.backend(),
                server,
            };
            // The gateway gets its own client (and memory budget) over the test's prefix.
            let area = Area {
                backend: Arc::new(bucket.server.backend()),
                prefix: bucket.server.prefix.clone(),
            };
            s3_support::put(
                &bucket.client,
                &bucket.key("ro/locked.txt"),
                b"read only",
                1 << 20,
            )
            .await;
            (area, Some(bucket))
        } else {
            let area = Area {
                backend: Arc::new(LocalBackend::new(&root).unwrap()),
                prefix: String::new(),
            };
            (area, None)
        };
        let tree = Arc::new(Tree::new(area, vec![]));
        let read_only = PermSet::parse(["list", "download"]).unwrap();
        let account = Account {
            username: USER.into(),
            password_hash: Some(cheap_hash(PASSWORD)),
            public_keys: vec![],
            home: VPath::parse(&format!("/users/{USER}")).unwrap(),
            permissions: Permissions::new([
                (VPath::root(), PermSet::ALL),
                (VPath::parse("/ro").unwrap(), read_only),
            ]),
            protocols: vec![Protocol::Ftp],
            allowed_ips: vec![],
        };
        let policy = BanPolicy {
            threshold: setup.ban_threshold,
            failure_delay: Duration::from_millis(10),
            ..BanPolicy::default()
        };
        let login = Arc::new(LoginService::new(
            Directory::new(vec![account], tree.clone()),
            policy,
            2,
        ));
        let limiter = SessionLimiter::new(0, setup.max_sessions_per_ip);

        let (mut cert_pem, mut cert_der, mut tls) = (None, None, None);
        if let Some(mode) = setup.tls {
            let ck = rcgen::generate_simple_self_signed(vec![
                "localhost".to_string(),
                "127.0.0.1".to_string(),
            ])
            .unwrap();
            let cert = dir.path().join("cert.pem");
            let key = dir.path().join("key.pem");
            std::fs::write(&cert, ck.cert.pem()).unwrap();
            std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
            cert_der = Some(ck.cert.der().to_vec());
            cert_pem = Some(cert.clone());
            tls = Some(FtpTls { mode, cert, key });
        }
        let opts = FtpOptions {
            passive_ports: 0..=0,
            public_address: None,
            active_mode: setup.active_mode,
            tls,
            idle_timeout: Duration::from_secs(60),
            login_grace: setup.login_grace,
            max_line_len: setup.max_line_len,
            shutdown_grace: Duration::from_secs(5),
            max_list_entries: setup.max_list_entries,
            proxy_protocol: Default::default(),
            memory: setup.memory.clone(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let implicit = if setup.tls == Some(TlsMode::Implicit) {
            Some(TcpListener::bind("127.0.0.1:0").await.unwrap())
        } else {
            None
        };
        let implicit_addr = implicit.as_ref().map(|l| l.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            listener,
            implicit,
            opts,
            login,
            limiter,
            shutdown.clone(),
        ));
        Harness {
            dir,
            root,
            addr,
            implicit_addr,
            cert_pem,
            cert_der,
            shutdown,
            server: Some(server),
            bucket,
            tree,
        }
    }

    /// The user's home on disk (local mode only: in S3 mode nothing is there).
    pub fn home(&self) -> PathBuf {
        assert!(
            self.bucket.is_none(),
            "the site tree is in a bucket: use the s3_* helpers"
        );
        self.root.join("users").join(USER)
    }

    fn bucket(&self) -> &Bucket {
        self.bucket
            .as_ref()
            .expect("not an S3-mode harness (Setup::s3)")
    }

    /// The object behind a file of the user's home, read through the test's own S3 client.
    pub async fn s3_read(&self, rel: &str) -> Vec<u8> {
        let b = self.bucket();
        s3_support::get(&b.client, &b.key(rel)).await
    }

    /// Whether a file of the user's home is an object in the bucket (HEAD or listing through
    /// the test's own S3 client).
    pub async fn s3_exists(&self, rel: &str) -> bool {
        let b = self.bucket();
        match b.client.stat(&b.key(rel)).await {
            Ok(_) => true,
            Err(e) if e.kind() == ErrorKind::NotFound => false,
            Err(e) => panic!("{rel}: {e}"),
        }
    }

    /// Puts an object at a path of the user's home, bypassing the gateway.
    pub async fn s3_write(&self, rel: &str, data: &[u8]) -> Entry {
        let b = self.bucket();
        s3_support::put(&b.client, &b.key(rel), data, 1 << 20).await
    }

    /// A file of the user's home on disk.
    pub fn file(&self, rel: &str) -> PathBuf {
        self.home().join(rel)
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.file(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    pub fn write(&self, rel: &str, data: &[u8]) {
        let p = self.file(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }

    /// Waits until the staging folder is empty (`true`) or not (`false`): an upload has begun
    /// to be staged, or has been committed or given up. Fails the test after 10 s.
    pub async fn await_staging_empty(&self, empty: bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.staging_empty() != empty {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the staging folder never became {}",
                if empty { "empty" } else { "non-empty" }
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// True when no upload is left half-way in the backend's staging folder.
    pub fn staging_empty(&self) -> bool {
        let staging = self.root.join(bucketgate_storage::local::STAGING);
        std::fs::read_dir(staging)
            .map(|mut d| d.next().is_none())
            .unwrap_or(true)
    }

    /// A plain session, logged in, in binary mode.
    pub async fn client(&self) -> AsyncFtpStream {
        let mut c = AsyncFtpStream::connect(self.addr).await.unwrap();
        c.login(USER, PASSWORD).await.unwrap();
        c.transfer_type(suppaftp::types::FileType::Binary)
            .await
            .unwrap();
        c
    }

    /// A rustls connector that trusts exactly the test certificate.
    pub fn tls_connector(&self) -> AsyncRustlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls_pki_types::CertificateDer::from(
                self.cert_der.clone().expect("TLS is on"),
            ))
            .unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        AsyncRustlsConnector::from(tokio_rustls::TlsConnector::from(Arc::new(config)))
    }

    /// An explicit-FTPS session (AUTH TLS, PBSZ 0, PROT P), logged in.
    pub async fn tls_client(&self) -> AsyncRustlsFtpStream {
        let c = AsyncRustlsFtpStream::connect(self.addr).await.unwrap();
        let mut c = c
            .into_secure(self.tls_connector(), "localhost")
            .await
            .unwrap();
        c.login(USER, PASSWORD).await.unwrap();
        c.transfer_type(suppaftp::types::FileType::Binary)
            .await
            .unwrap();
        c
    }

    /// Stops the server and waits for it.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            s.await.unwrap().unwrap();
        }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Runs a command to completion off the async runtime; panics with its output on failure.
pub async fn run_ok(mut cmd: std::process::Command) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a command that must fail; returns its stderr.
pub async fn run_fails(mut cmd: std::process::Command) -> String {
    let shown = format!("{cmd:?}");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success(), "{shown} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The server's reply behind a client error, as text (or the error itself).
pub fn reply_text(err: &suppaftp::FtpError) -> String {
    match err {
        suppaftp::FtpError::UnexpectedResponse(r) => String::from_utf8_lossy(&r.body).into_owned(),
        other => format!("{other:?}"),
    }
}

/// An argon2id hash of `password` with the smallest parameters (8 KiB, one pass): the gateway
/// checks it as it checks any PHC hash, at a few microseconds instead of the default
/// parameters' 20 ms of CPU. FTP tests log in thousands of times (the differential runner opens
/// a session per killed client; argon2 was a fifth of a long run's CPU); the default
/// parameters are what `hash_password` and the login tests of `sftp_auth` use.
pub fn cheap_hash(password: &str) -> String {
    use argon2::PasswordHasher;
    let params = argon2::Params::new(8, 1, 1, None).expect("valid argon2 parameters");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes())
        .expect("argon2 with valid parameters")
        .to_string()
}
