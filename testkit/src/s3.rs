//! Real S3 servers on loopback: in-process s3s-fs, the shared moto_server subprocess, and any
//! endpoint named by `BUCKETGATE_TEST_S3_*` variables (scripts/garage.sh starts Garage and
//! prints them), with helpers that read and write a bucket through a client of the test's own.
//!
//! What each server does faithfully (capabilities) is asked of the server: [`servers`] runs the
//! gateway's own capability probe once per kind of server and process, and takes its answers
//! (folder markers, uploads listed by prefix, a file and a folder of one name). Only what the
//! probe cannot tell cheaply is declared per server (`part_copy`, `big`,
//! `checks_signatures`). Tests skip only the assertions a server cannot support, and say so on
//! stdout.

use bucketgate_storage::budget::MemoryBudget;
use bucketgate_storage::s3::{Capabilities, RetryPolicy, S3Backend, S3Options};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const ACCESS: &str = "bgtestaccess";
pub const SECRET: &str = "bgtestsecret/with+chars";
pub const MIB: usize = 1024 * 1024;

/// What a test server does faithfully. `markers`, `list_uploads` and `raw_keys` come from the
/// probe once [`servers`] (or [`Server::probed`]) has asked the server; until then they are
/// what the server is known to do.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// `dir/` markers are kept and listed as objects (s3s-fs turns them into hidden
    /// directories). Probe: `markers_listed`.
    pub markers: bool,
    /// Multipart uploads with UploadPartCopy compose correctly. Declared, true on every
    /// server of the matrix (s3s-fs 0.14.1 included, once wrongly declared otherwise): a probe
    /// would have to write a 5 MiB source, the smallest Garage copies from.
    pub part_copy: bool,
    /// ListMultipartUploads finds uploads by prefix. Probe: `uploads_by_prefix`.
    pub list_uploads: bool,
    /// Keys are stored verbatim: a file `a` and keys under `a/` can coexist, `a//b` is a key
    /// (s3s-fs maps keys to file paths). Probe: `file_and_folder`.
    pub raw_keys: bool,
    /// Large objects are fine (moto holds everything in memory several times over). Declared:
    /// a probe would have to write hundreds of MiB to find out.
    pub big: bool,
    /// Signatures are verified (moto accepts anything). Declared: the probe runs with good
    /// credentials only.
    pub checks_signatures: bool,
}

/// The probe's answers, one per kind of server, for this process: every s3s-fs instance (or
/// moto, or the env endpoint) answers alike, so each is asked once.
static PROBED: std::sync::Mutex<Vec<(String, Capabilities)>> = std::sync::Mutex::new(Vec::new());

pub struct Server {
    pub name: &'static str,
    pub endpoint: String,
    pub bucket: String,
    pub access: String,
    pub secret: String,
    pub region: Option<String>,
    pub caps: Caps,
    /// What the gateway's probe found on this server, once asked ([`Server::probed`]): every
    /// backend made from this server starts with it, as the gateway's own backends do once
    /// their background probe has answered.
    pub probed: Option<Capabilities>,
    /// Every test works under its own random prefix, so servers and buckets can be shared.
    pub prefix: String,
    _guard: Guard,
}

/// What keeps a server alive for as long as a test holds it (dropped with the `Server`).
#[allow(dead_code)]
enum Guard {
    S3s(tokio::task::JoinHandle<()>, tempfile::TempDir),
    Moto(Arc<crate::moto::Shared>),
    None,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Guard::S3s(task, _) = self {
            task.abort();
        }
    }
}

impl Server {
    /// Says (visibly) that an assertion is skipped for this server, and returns true.
    pub fn skip(&self, cap_missing: bool, what: &str) -> bool {
        if cap_missing {
            println!("SKIP [{}] {what}: not faithful on this server", self.name);
        }
        cap_missing
    }

    pub fn options(&self) -> S3Options {
        let mut o = S3Options::new(self.name, &self.endpoint, &self.bucket)
            .with_keys(&self.access, &self.secret);
        o.region = self.region.clone();
        o.part_size = 5 * MIB as u64;
        o.retries = RetryPolicy {
            max_attempts: 2,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        };
        o.connect_timeout = Duration::from_secs(5);
        o.request_timeout = Duration::from_secs(30);
        o
    }

    pub fn backend(&self) -> S3Backend {
        self.backend_with(|_| {})
    }

    /// A backend with the probe's answers, if the server was asked (see [`Server::probed`]).
    pub fn backend_with(&self, f: impl FnOnce(&mut S3Options)) -> S3Backend {
        let b = self.backend_unprobed_with(f);
        if let Some(c) = &self.probed {
            b.assume_capabilities(c.clone());
        }
        b
    }

    /// A backend that knows nothing of the server yet: the cautious defaults of a gateway
    /// whose probe has not answered.
    pub fn backend_unprobed(&self) -> S3Backend {
        self.backend_unprobed_with(|_| {})
    }

    /// [`Server::backend_unprobed`] with options changed by `f`.
    pub fn backend_unprobed_with(&self, f: impl FnOnce(&mut S3Options)) -> S3Backend {
        let mut o = self.options();
        f(&mut o);
        S3Backend::new(o, MemoryBudget::shared(256 * MIB as u64)).expect("backend")
    }

    /// The kind of server, for the probe's cache: the env endpoint is named by
    /// `BUCKETGATE_TEST_S3_SERVER` (or its endpoint).
    fn kind(&self) -> String {
        match self.name {
            "env" => {
                std::env::var("BUCKETGATE_TEST_S3_SERVER").unwrap_or_else(|_| self.endpoint.clone())
            }
            n => n.to_string(),
        }
    }

    /// Asks the server what it does with the gateway's own probe (once per kind of server and
    /// process), and takes the answers: `caps` for the tests' assertions, `probed` for every
    /// backend made from it. A probe that fails fails the test: the server is broken.
    pub async fn probed(mut self) -> Server {
        let kind = self.kind();
        let known = PROBED
            .lock()
            .expect("probe cache")
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, c)| c.clone());
        let caps = match known {
            Some(c) => c,
            None => {
                let c = self
                    .backend_unprobed()
                    .probe_capabilities(&self.prefix)
                    .await
                    .unwrap_or_else(|e| panic!("probing the {kind} test server: {e:?}"));
                PROBED.lock().expect("probe cache").push((kind, c.clone()));
                c
            }
        };
        self.caps.markers = caps.markers_listed;
        self.caps.list_uploads = caps.uploads_by_prefix;
        self.caps.raw_keys = caps.file_and_folder;
        self.probed = Some(caps);
        self
    }

    /// The server's loopback address (to put a proxy in front of it).
    pub fn addr(&self) -> std::net::SocketAddr {
        let port: u16 = self
            .endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("port");
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// A key under this test's prefix.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    /// The test prefix as a folder key (no trailing slash).
    pub fn dir(&self) -> String {
        self.prefix.trim_end_matches('/').to_string()
    }
}

fn random_prefix() -> String {
    format!("t{:016x}/", rand::random::<u64>())
}

/// True when `BUCKETGATE_TEST_S3_ENV_ONLY` is set: scripts/test.sh sets it in the phases that
/// run the S3 suites again against a server of their own (Garage, Ceph RGW), since the workspace
/// phase before them has already run those suites on s3s-fs and moto. Then [`servers`],
/// [`ssec_servers`] and the 10,000-file sync give the env endpoint alone, and its absence is an
/// error rather than a shorter run.
pub fn env_only() -> bool {
    std::env::var_os("BUCKETGATE_TEST_S3_ENV_ONLY").is_some()
}

/// The env endpoint, which [`env_only`] requires.
fn required_env_server() -> Server {
    env_server().expect(
        "BUCKETGATE_TEST_S3_ENV_ONLY is set but BUCKETGATE_TEST_S3_ENDPOINT is not: \
         no server to run on",
    )
}

/// Every server available here: s3s-fs always, moto when installed, the env endpoint if set
/// (that one alone under [`env_only`]); each asked what it does (see [`Server::probed`]).
pub async fn servers() -> Vec<Server> {
    if env_only() {
        return vec![required_env_server().probed().await];
    }
    let mut v = vec![
        s3s_server(None).await.probed().await,
        moto_server().await.probed().await,
    ];
    if let Some(e) = env_server() {
        v.push(e.probed().await);
    }
    v
}

/// The servers that keep SSE-C objects: moto, and the `BUCKETGATE_TEST_S3_*` endpoint where it
/// accepts SSE-C on this connection. AWS and MinIO refuse SSE-C over plain HTTP (the key would
/// cross the network in clear): such an endpoint is named as NOT CHECKED, not counted.
pub async fn ssec_servers() -> Vec<Server> {
    use bucketgate_storage::backend::Backend as _;
    use bucketgate_storage::s3::{CustomerKey, Encryption};
    let mut v = Vec::new();
    if env_only() {
        let _ = required_env_server();
    } else {
        v.push(moto_server().await);
    }
    if let Some(e) = env_server() {
        let key = CustomerKey::from_bytes(&[7u8; 32]).expect("key");
        let b = e.backend_with(|o| o.encryption = Encryption::Customer(key));
        let probe = e.key("sse-c-probe");
        match put_with(&b, &probe, b"x", 1, Default::default()).await {
            Ok(_) => {
                let _ = b.remove_file(&probe).await;
                v.push(e);
            }
            Err(err) if e.endpoint.starts_with("http://") => {
                println!("NOT CHECKED [env] SSE-C: the server refuses it over plain HTTP ({err})")
            }
            Err(err) => panic!("[env] an SSE-C upload failed: {err}"),
        }
    }
    v
}

pub fn env_server() -> Option<Server> {
    let var = |n: &str| std::env::var(format!("BUCKETGATE_TEST_S3_{n}")).ok();
    let endpoint = var("ENDPOINT")?;
    Some(Server {
        name: "env",
        endpoint,
        bucket: var("BUCKET").expect("BUCKETGATE_TEST_S3_BUCKET"),
        access: var("ACCESS_KEY").unwrap_or_default(),
        secret: var("SECRET_KEY").unwrap_or_default(),
        region: var("REGION"),
        caps: Caps {
            markers: true,
            part_copy: true,
            list_uploads: true,
            big: false,
            checks_signatures: true,
            raw_keys: true,
        },
        probed: None,
        prefix: random_prefix(),
        _guard: Guard::None,
    })
}

// ---------------------------------------------------------------- s3s-fs, in process

/// Wraps s3s so that it answers like a server with a fixed region (Garage, AWS): a request
/// signed for another region gets AuthorizationHeaderMalformed naming the expected one.
#[derive(Clone)]
struct RegionGate {
    svc: s3s::service::S3Service,
    region: Option<String>,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for RegionGate {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        if let Some(want) = &self.region {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let scope_ok = auth.contains(&format!("/{want}/s3/aws4_request"));
            if !scope_ok {
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error>\
                     <Code>AuthorizationHeaderMalformed</Code>\
                     <Message>unexpected scope</Message><Region>{want}</Region></Error>"
                );
                let resp = http::Response::builder()
                    .status(400)
                    .header("content-type", "application/xml")
                    .body(s3s::Body::from(body))
                    .expect("response");
                return Box::pin(async move { Ok(resp) });
            }
        }
        hyper::service::Service::call(&self.svc, req)
    }
}

/// Refuses the named S3 operations with AccessDenied, like a key whose policy lacks the
/// permission (`PutObject` stands for s3:PutObject, which also covers multipart and copies).
pub struct Deny {
    pub ops: &'static [&'static str],
    /// Also refuse listings outside a prefix (a policy with an `s3:prefix` condition).
    pub root_listing: bool,
}

#[async_trait::async_trait]
impl s3s::access::S3Access for Deny {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> s3s::S3Result<()> {
        if cx.credentials().is_none() {
            return Err(s3s::s3_error!(AccessDenied, "Signature is required"));
        }
        if self.ops.contains(&cx.s3_op().name()) {
            return Err(s3s::s3_error!(AccessDenied, "Access Denied"));
        }
        if self.root_listing && cx.s3_op().name().starts_with("ListObjects") {
            let prefixed = cx
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .any(|kv| kv.strip_prefix("prefix=").is_some_and(|v| !v.is_empty()));
            if !prefixed {
                return Err(s3s::s3_error!(AccessDenied, "Access Denied"));
            }
        }
        Ok(())
    }
}

/// s3s-fs on 127.0.0.1:0, optionally insisting on `region`.
pub async fn s3s_server(region: Option<&str>) -> Server {
    s3s_server_with(region, None, false).await
}

/// s3s-fs on 127.0.0.1:0 whose key is refused the operations `deny` names.
pub async fn s3s_server_denying(deny: &'static [&'static str]) -> Server {
    s3s_server_with(
        None,
        Some(Deny {
            ops: deny,
            root_listing: false,
        }),
        false,
    )
    .await
}

/// s3s-fs whose key may list only under a prefix (not the bucket root). Its probe at start
/// lists under `ok/`.
pub async fn s3s_server_prefix_only() -> Server {
    s3s_server_with(
        None,
        Some(Deny {
            ops: &[],
            root_listing: true,
        }),
        false,
    )
    .await
}

/// `localhost` and `BUCKET.localhost` on any port (proxies in front change the port).
struct Localhost;

impl s3s::host::S3Host for Localhost {
    fn parse_host_header<'a>(&'a self, host: &'a str) -> s3s::S3Result<s3s::host::VirtualHost<'a>> {
        let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if name == "localhost" {
            return Ok(s3s::host::VirtualHost::new(name));
        }
        match name.strip_suffix(".localhost") {
            Some(bucket) => Ok(s3s::host::VirtualHost::new("localhost").with_bucket(bucket)),
            None => Err(s3s::s3_error!(InvalidRequest, "Invalid host header")),
        }
    }
}

/// s3s-fs that also answers virtual-host requests (`Host: bucket.localhost:PORT`); its endpoint
/// is `http://localhost:PORT`.
pub async fn s3s_server_virtual_host() -> Server {
    s3s_server_with(None, None, true).await
}

async fn s3s_server_with(region: Option<&str>, deny: Option<Deny>, vhost: bool) -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = "bucket";
    std::fs::create_dir(dir.path().join(bucket)).expect("bucket dir");
    let fs = crate::s3s_atomic::AtomicCopy::new(dir.path()).expect("s3s-fs");
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS, SECRET));
    if let Some(d) = deny {
        b.set_access(d);
    }
    if vhost {
        b.set_host(Localhost);
    }
    let gate = RegionGate {
        svc: b.build(),
        region: region.map(str::to_string),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let http =
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
        loop {
            let Ok((sock, _)) = listener.accept().await else {
                continue;
            };
            // Real S3 servers turn Nagle off; with it, every small GET waits ~40 ms for a
            // delayed ACK between the response's head and its body.
            let _ = sock.set_nodelay(true);
            let conn = http
                .serve_connection(hyper_util::rt::TokioIo::new(sock), gate.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    let srv = Server {
        name: "s3s-fs",
        endpoint: if vhost {
            format!("http://localhost:{}", addr.port())
        } else {
            format!("http://{addr}")
        },
        bucket: bucket.to_string(),
        access: ACCESS.to_string(),
        secret: SECRET.to_string(),
        region: region.map(str::to_string),
        caps: Caps {
            markers: false,
            part_copy: true,
            list_uploads: false,
            big: true,
            checks_signatures: true,
            raw_keys: false,
        },
        probed: None,
        prefix: random_prefix(),
        _guard: Guard::S3s(task, dir),
    };
    // Through a listing any key may do (see s3s_server_prefix_only).
    let mut first = srv.backend().list("ok");
    if let Some(Err(e)) = futures::StreamExt::next(&mut first).await {
        panic!("s3s-fs answers: {e}");
    }
    srv
}

// ---------------------------------------------------------------- moto, a subprocess

/// The moto server shared by the tests running at the same time (see [`crate::moto`]), under a
/// prefix of this test's own.
pub async fn moto_server() -> Server {
    let m = tokio::task::spawn_blocking(crate::moto::shared)
        .await
        .expect("start moto_server");
    Server {
        name: "moto",
        endpoint: format!("http://{}", m.addr),
        bucket: "bucket".into(),
        access: ACCESS.into(),
        secret: SECRET.into(),
        region: None,
        caps: Caps {
            markers: true,
            part_copy: true,
            list_uploads: true,
            big: false,
            checks_signatures: false,
            raw_keys: true,
        },
        probed: None,
        prefix: random_prefix(),
        _guard: Guard::Moto(m),
    }
}

// ---------------------------------------------------------------- a counting TCP proxy

/// A TCP proxy in front of a server that counts open connections (and their peak) and can cut
/// every answer after `cut_after` bytes, to test short bodies.
pub struct Proxy {
    pub addr: SocketAddr,
    pub open: Arc<std::sync::atomic::AtomicUsize>,
    pub peak: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(target: SocketAddr, cut_after: Option<usize>) -> Proxy {
        use std::sync::atomic::Ordering::SeqCst;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (o, p) = (open.clone(), peak.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let (o, p) = (o.clone(), p.clone());
                tokio::spawn(async move {
                    let now = o.fetch_add(1, SeqCst) + 1;
                    p.fetch_max(now, SeqCst);
                    if let Ok(server) = TcpStream::connect(target).await {
                        pipe(client, server, cut_after).await;
                    }
                    o.fetch_sub(1, SeqCst);
                });
            }
        });
        Proxy {
            addr,
            open,
            peak,
            task,
        }
    }

    pub fn peak(&self) -> usize {
        self.peak.load(std::sync::atomic::Ordering::SeqCst)
    }
}

async fn pipe(client: TcpStream, server: TcpStream, cut_after: Option<usize>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async {
        let mut sent = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = match cut_after {
                Some(limit) if sent + n >= limit => {
                    let _ = cw.write_all(&buf[..limit - sent]).await;
                    break;
                }
                _ => n,
            };
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            sent += n;
        }
        let _ = cw.shutdown().await;
    };
    // When either direction ends (or the answer is cut), the connection goes.
    tokio::select! {
        _ = up => {},
        _ = down => {},
    }
}

// ---------------------------------------------------------------- helpers

/// Deterministic pseudo-random bytes.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

use bucketgate_storage::backend::{Backend, CreateOptions, Entry};
use futures::StreamExt;

/// Uploads `bytes` in writes of `chunk` bytes.
pub async fn put(b: &S3Backend, key: &str, bytes: &[u8], chunk: usize) -> Entry {
    put_with(b, key, bytes, chunk, CreateOptions::default())
        .await
        .expect("upload")
}

pub async fn put_with(
    b: &S3Backend,
    key: &str,
    bytes: &[u8],
    chunk: usize,
    opts: CreateOptions,
) -> bucketgate_storage::Result<Entry> {
    let mut up = b.create(key, opts).await?;
    for c in bytes.chunks(chunk.max(1)) {
        up.write(bytes::Bytes::copy_from_slice(c)).await?;
    }
    up.finish().await
}

/// Reads a whole object.
pub async fn get(b: &S3Backend, key: &str) -> Vec<u8> {
    let mut s = b.read(key, 0, None).await.expect("read");
    let mut out = Vec::new();
    while let Some(c) = s.next().await {
        out.extend_from_slice(&c.expect("chunk"));
    }
    out
}

/// Lists a folder, all pages, sorted by name.
pub async fn list_all(b: &S3Backend, key: &str) -> Vec<Entry> {
    collect(b.list(key)).await
}

/// Walks a folder, all pages, sorted by name.
pub async fn walk_all(b: &S3Backend, key: &str) -> Vec<Entry> {
    collect(b.walk(key)).await
}

async fn collect(mut s: bucketgate_storage::backend::ListStream) -> Vec<Entry> {
    let mut out = Vec::new();
    while let Some(p) = s.next().await {
        out.extend(p.expect("page"));
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `name/` for folders, `name` for files: a compact view of a listing.
pub fn names(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| {
            if e.is_dir() {
                format!("{}/", e.name)
            } else {
                e.name.clone()
            }
        })
        .collect()
}

/// Object bytes read before, by key, with the ETag and size they were read at.
pub type Contents = std::collections::HashMap<String, (String, u64, Vec<u8>)>;

/// The tree under `key`, straight from S3: path → folder (`None`) or the object's bytes. One
/// listing (all pages); an object is read again only when its listed ETag or size differs from
/// the ones `seen` holds for it (ETags are digests of the content, so an unchanged ETag is
/// unchanged bytes), which lets a runner read the bucket after every step without a GET per
/// object per step.
pub async fn tree_cached(
    b: &S3Backend,
    key: &str,
    seen: &mut Contents,
) -> std::collections::BTreeMap<String, Option<Vec<u8>>> {
    let mut t = std::collections::BTreeMap::new();
    for e in walk_all(b, key).await {
        let name = e.name.trim_end_matches('/').to_string();
        if e.is_dir() {
            t.insert(name, None);
            continue;
        }
        let full = format!("{key}/{name}");
        let bytes = match (&e.etag, seen.get(&full)) {
            (Some(tag), Some((t0, size, b0))) if t0 == tag && *size == e.size => b0.clone(),
            _ => {
                let bytes = get(b, &full).await;
                if let Some(tag) = &e.etag {
                    seen.insert(full, (tag.clone(), e.size, bytes.clone()));
                }
                bytes
            }
        };
        t.insert(name, Some(bytes));
    }
    t
}
