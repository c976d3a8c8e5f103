//! 10,000 small files between a local site folder and a real S3 remote: the in-process s3s-fs
//! server, and the endpoint named by `BUCKETGATE_TEST_S3_*` when set (Garage in CI; that one
//! alone under `BUCKETGATE_TEST_S3_ENV_ONLY`).
//! moto is left out on purpose: it handles a few hundred PUTs a second at best and holds every
//! object in memory, so 10,000 objects would make this one test take minutes; the smaller
//! `sync_s3` suite covers moto.
//!
//! The remote is reached through a proxy that counts the HTTP requests by method, so the
//! no-change rerun is shown to send no PUT (nor anything else that writes) at all.

use crate::sync_common as common;
use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::Backend;
use bucketgate_storage::local::LocalBackend;
use bucketgate_storage::sync::{run_job, ConflictPolicy, Direction, RunOptions, SyncJob};
use common::{counts, read, rm, tree, write};
use s3_support::{env_server, get, put, s3s_server, walk_all, Server};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const N: usize = 10_000;

/// HTTP requests seen by a [`Counter`], by method.
type Tally = Arc<Mutex<BTreeMap<String, u64>>>;

/// A TCP proxy in front of an S3 server that counts the requests passing through it by method.
/// It follows HTTP/1.1 framing (request heads, then `Content-Length` or chunked bodies), so a
/// request that follows a body on a kept-alive connection is counted whatever that body held.
struct Counter {
    addr: SocketAddr,
    tally: Tally,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Counter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Counter {
    async fn start(target: SocketAddr) -> Counter {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tally = Tally::default();
        let t = tally.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                let t = t.clone();
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        relay(client, server, t).await;
                    }
                });
            }
        });
        Counter { addr, tally, task }
    }

    /// The counts so far, and resets them.
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.tally.lock().unwrap())
    }
}

async fn relay(client: TcpStream, server: TcpStream, tally: Tally) {
    // Without this, Nagle's algorithm holds a request's body until the server's delayed ACK of
    // its headers (~40 ms a request): the relay would make the client look 10 times slower.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut sniff = Sniff::new();
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            sniff.feed(&buf[..n], &tally);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Where a [`Sniff`] is in a client's byte stream.
enum At {
    /// In a request's head (request line and headers).
    Head,
    /// In a body of known length: this many bytes still to come.
    Body(u64),
    /// In a chunked body, before a chunk-size line (or the trailer after the last chunk).
    ChunkSize,
    /// In a chunk's data and the CRLF after it: this many bytes still to come.
    ChunkData(u64),
    /// In the trailer after the last chunk, until its empty line.
    Trailer,
}

/// Splits a client's byte stream into HTTP/1.1 requests, across reads, and counts them.
struct Sniff {
    at: At,
    /// The bytes of a head or a line not complete yet.
    pending: Vec<u8>,
}

impl Sniff {
    fn new() -> Sniff {
        Sniff {
            at: At::Head,
            pending: Vec::new(),
        }
    }

    fn feed(&mut self, mut bytes: &[u8], tally: &Tally) {
        while !bytes.is_empty() {
            match self.at {
                At::Body(left) | At::ChunkData(left) => {
                    let n = (left as usize).min(bytes.len());
                    bytes = &bytes[n..];
                    let left = left - n as u64;
                    self.at = match (&self.at, left) {
                        (At::Body(_), 0) => At::Head,
                        (At::Body(_), _) => At::Body(left),
                        (_, 0) => At::ChunkSize,
                        _ => At::ChunkData(left),
                    };
                }
                At::Head => {
                    self.pending.extend_from_slice(bytes);
                    bytes = &[];
                    let mut headers = [httparse::EMPTY_HEADER; 64];
                    let mut req = httparse::Request::new(&mut headers);
                    let done = match req.parse(&self.pending) {
                        Ok(httparse::Status::Complete(done)) => done,
                        Ok(httparse::Status::Partial) => continue,
                        Err(e) => panic!("the counter could not read a request: {e}"),
                    };
                    let method = req
                        .method
                        .expect("a complete head has a method")
                        .to_string();
                    *tally.lock().unwrap().entry(method).or_default() += 1;
                    let header = |name: &str| {
                        req.headers
                            .iter()
                            .find(|h| h.name.eq_ignore_ascii_case(name))
                            .map(|h| String::from_utf8_lossy(h.value).trim().to_ascii_lowercase())
                    };
                    self.at = if header("transfer-encoding").is_some_and(|v| v.ends_with("chunked"))
                    {
                        At::ChunkSize
                    } else {
                        match header("content-length").map(|v| v.parse::<u64>()) {
                            Some(Ok(0)) | None => At::Head,
                            Some(Ok(n)) => At::Body(n),
                            Some(Err(e)) => panic!("the counter read a bad Content-Length: {e}"),
                        }
                    };
                    // What followed the head in this read belongs to the body or the next request.
                    let rest = self.pending.split_off(done);
                    self.pending.clear();
                    self.feed(&rest, tally);
                }
                At::ChunkSize | At::Trailer => {
                    let Some(end) = bytes.iter().position(|&b| b == b'\n') else {
                        self.pending.extend_from_slice(bytes);
                        return;
                    };
                    self.pending.extend_from_slice(&bytes[..=end]);
                    bytes = &bytes[end + 1..];
                    let line = String::from_utf8_lossy(&self.pending).trim().to_string();
                    self.pending.clear();
                    self.at = match self.at {
                        At::Trailer if line.is_empty() => At::Head,
                        At::Trailer => At::Trailer,
                        _ => {
                            let size = line.split(';').next().unwrap_or("").trim();
                            match u64::from_str_radix(size, 16) {
                                Ok(0) => At::Trailer,
                                // The chunk's data, then its CRLF.
                                Ok(n) => At::ChunkData(n + 2),
                                Err(e) => panic!("the counter read a bad chunk size {line:?}: {e}"),
                            }
                        }
                    };
                }
            }
        }
    }
}

/// The counter's own check: requests after bodies that end mid-line (CI once counted one PUT of
/// two, the second having followed the first's body "changed at the site" on one connection),
/// after chunked bodies, and split across reads at every byte.
#[test]
fn the_counter_finds_every_request_whatever_the_bodies_hold() {
    let stream: &[u8] = b"PUT /a HTTP/1.1\r\nContent-Length: 19\r\n\r\nchanged at the site\
PUT /b HTTP/1.1\r\ncontent-length: 11\r\n\r\nGET /x HTTP\
DELETE /c HTTP/1.1\r\nHost: h\r\n\r\n\
PUT /d HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nHEAD \r\n3\r\nGET\r\n0\r\nT: 1\r\n\r\n\
HEAD /e HTTP/1.1\r\n\r\n";
    let want = BTreeMap::from([
        ("DELETE".to_string(), 1),
        ("HEAD".to_string(), 1),
        ("PUT".to_string(), 3),
    ]);
    for split in 0..=stream.len() {
        let tally = Tally::default();
        let mut sniff = Sniff::new();
        sniff.feed(&stream[..split], &tally);
        sniff.feed(&stream[split..], &tally);
        assert_eq!(*tally.lock().unwrap(), want, "split at {split}");
    }
    let tally = Tally::default();
    let mut sniff = Sniff::new();
    for b in stream {
        sniff.feed(std::slice::from_ref(b), &tally);
    }
    assert_eq!(*tally.lock().unwrap(), want, "a byte at a time");
}

fn count(t: &BTreeMap<String, u64>, method: &str) -> u64 {
    t.get(method).copied().unwrap_or(0)
}

/// Requests that change something on the server.
fn writes(t: &BTreeMap<String, u64>) -> u64 {
    count(t, "PUT") + count(t, "POST") + count(t, "DELETE")
}

/// Every file below `root`: relative path → size.
fn local_sizes(root: &Path) -> BTreeMap<String, u64> {
    tree(root)
        .into_iter()
        .filter(|(k, _)| !k.ends_with('/'))
        .map(|(k, v)| (k, v.len() as u64))
        .collect()
}

/// Every object below `dir` as the server lists it: relative path → size.
async fn bucket_sizes(srv: &Server, dir: &str) -> BTreeMap<String, u64> {
    walk_all(&srv.backend(), &srv.key(dir))
        .await
        .into_iter()
        .filter(|e| !e.is_dir())
        .map(|e| (e.name, e.size))
        .collect()
}

fn content(i: usize) -> Vec<u8> {
    // Sizes vary (10 to ~150 bytes) so that a swapped or truncated object shows in the sizes.
    format!("file {i}\n").repeat(1 + i % 13).into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_files_with_an_s3_remote() {
    // Under `env_only` (the Garage phase of scripts/test.sh) the s3s-fs run, done in the
    // workspace phase before it, is not repeated.
    let servers = if s3_support::env_only() {
        vec![env_server().expect("BUCKETGATE_TEST_S3_ENDPOINT")]
    } else {
        let mut v = vec![s3s_server(None).await];
        v.extend(env_server());
        v
    };
    for srv in servers {
        one_server(&srv).await;
    }
}

async fn one_server(srv: &Server) {
    let name = srv.name;
    let t0 = std::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("site/inbox");
    for i in 0..N {
        write(&s, &format!("d{:02}/f{i:05}.txt", i % 100), &content(i));
    }
    println!("[{name}] wrote {N} files in {:?}", t0.elapsed());
    let want_total: u64 = (0..N).map(|i| content(i).len() as u64).sum();

    // The engine's S3 traffic goes through the counter; the checks below read directly.
    let url = reqwest::Url::parse(&srv.endpoint).expect("endpoint");
    assert_eq!(
        url.scheme(),
        "http",
        "[{name}] the counter reads plain HTTP"
    );
    let target = tokio::net::lookup_host((
        url.host_str().expect("host"),
        url.port_or_known_default().expect("port"),
    ))
    .await
    .expect("resolve the endpoint")
    .next()
    .expect("an address");
    let counter = Counter::start(target).await;
    let remote: Arc<dyn Backend> =
        Arc::new(srv.backend_with(|o| o.endpoint = format!("http://{}", counter.addr)));
    let site: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir.path().join("site")).unwrap());
    let job = SyncJob {
        name: format!("scale-{name}"),
        site: (site, "inbox".into()),
        remote: (remote.clone(), srv.key("scale/")),
        direction: Direction::TwoWay,
        delete: true,
        conflict: ConflictPolicy::KeepBoth,
        include: vec![],
        exclude: vec![],
        max_delete: Default::default(),
        lease: None,
        history: None,
    };
    let state = dir.path().join("state");
    // What each run did to which path, shown when an assertion below fails.
    let events: Arc<Mutex<Vec<String>>> = Arc::default();
    let ev = events.clone();
    let opts = RunOptions {
        progress: Some(Arc::new(move |p: bucketgate_storage::sync::Progress| {
            if let Some(e) = p.event {
                ev.lock()
                    .unwrap()
                    .push(format!("{:?} {} {:?}", e.kind, e.path, e.message));
            }
        })),
        ..Default::default()
    };
    let run = || async {
        events.lock().unwrap().clear();
        let sum = run_job(&job, &state, opts.clone()).await.unwrap();
        let ev = events.lock().unwrap();
        // The first run's 10,000 copies are not worth printing; any other run's events are.
        if ev.len() < 20 {
            println!("[{}] events {:?}", job.name, *ev);
        }
        sum
    };

    // 1. The first run copies everything up.
    let t = std::time::Instant::now();
    let sum = run().await;
    let first = t.elapsed();
    let traffic = counter.take();
    println!("[{name}] first run {first:?}, requests {traffic:?}");
    assert_eq!(
        (sum.copied_to_remote, sum.copied_to_site, sum.errors),
        (N as u64, 0, 0),
        "[{name}] {sum:?}"
    );
    assert_eq!(sum.bytes, want_total, "[{name}] {sum:?}");
    // One PUT per small file at least (more only if the client retried).
    assert!(count(&traffic, "PUT") >= N as u64, "[{name}] {traffic:?}");
    // The check that nothing appeared at a target since the listing is one HEAD per file; the
    // listings are pages of 1,000, never a listing per file (which s3s-fs answers by walking
    // the whole folder: a first push of 10,000 files took 12x rclone's time).
    assert!(count(&traffic, "GET") < 100, "[{name}] {traffic:?}");
    // Every object, with its size, as the server lists it; the totals as the issue states them.
    let listed = bucket_sizes(srv, "scale").await;
    assert_eq!(listed.len(), N, "[{name}] objects in the bucket");
    assert_eq!(
        listed.values().sum::<u64>(),
        want_total,
        "[{name}] bytes in the bucket"
    );
    assert_eq!(listed, local_sizes(&s), "[{name}] names and sizes");
    // The bytes of a sample, read back through an S3 client.
    let s3 = srv.backend();
    for i in (0..N).step_by(499).chain([N - 1]) {
        let rel = format!("d{:02}/f{i:05}.txt", i % 100);
        assert_eq!(
            get(&s3, &srv.key(&format!("scale/{rel}"))).await,
            content(i),
            "[{name}] {rel}"
        );
    }

    println!("[{name}] checked the bucket at {:?}", t0.elapsed());
    // 2. Nothing changed: nothing is copied, and nothing is written to the server.
    let t = std::time::Instant::now();
    let sum = run().await;
    let second = t.elapsed();
    let traffic = counter.take();
    println!("[{name}] no-change rerun {second:?}, requests {traffic:?}");
    // Every site file still holds what was written there (a rerun that copied something back
    // shows here which file, and whether its bytes changed).
    for i in 0..N {
        let rel = format!("d{:02}/f{i:05}.txt", i % 100);
        assert_eq!(
            read(&s, &rel).as_deref(),
            Some(&content(i)[..]),
            "[{name}] site {rel}"
        );
    }
    assert_eq!(counts(&sum), (0, 0, 0, 0, 0, 0, 0), "[{name}] {sum:?}");
    assert_eq!(writes(&traffic), 0, "[{name}] {traffic:?}");
    assert_eq!(count(&traffic, "HEAD"), 0, "[{name}] {traffic:?}");
    // The listing went through the counter (so the zeros above are not a blind counter):
    // 10,000 keys at 1,000 a page.
    assert!(count(&traffic, "GET") >= 10, "[{name}] {traffic:?}");

    // 3. A few changes on each side, found among the 10,000, each way.
    write(&s, "d07/f00007.txt", b"changed at the site");
    write(&s, "new/site.txt", b"new at the site");
    rm(&s, "d09/f00009.txt");
    put(
        &s3,
        &srv.key("scale/d05/f00005.txt"),
        b"changed remotely",
        64,
    )
    .await;
    put(&s3, &srv.key("scale/new/remote.txt"), b"new remotely", 64).await;
    remote
        .remove_file(&srv.key("scale/d08/f00008.txt"))
        .await
        .unwrap();
    let sum = run().await;
    let traffic = counter.take();
    // (to remote, to site, deleted remote, deleted site, conflicts, skipped, errors)
    assert_eq!(counts(&sum), (2, 2, 1, 1, 0, 0, 0), "[{name}] {sum:?}");
    assert_eq!(count(&traffic, "PUT"), 2, "[{name}] {traffic:?}");
    assert!(count(&traffic, "DELETE") >= 1, "[{name}] {traffic:?}");
    assert_eq!(
        get(&s3, &srv.key("scale/d07/f00007.txt")).await,
        b"changed at the site"
    );
    assert_eq!(
        get(&s3, &srv.key("scale/new/site.txt")).await,
        b"new at the site"
    );
    assert_eq!(read(&s, "d05/f00005.txt").unwrap(), b"changed remotely");
    assert_eq!(read(&s, "new/remote.txt").unwrap(), b"new remotely");
    assert!(
        read(&s, "d08/f00008.txt").is_none(),
        "[{name}] delete spread to the site"
    );
    let listed = bucket_sizes(srv, "scale").await;
    assert!(
        !listed.contains_key("d09/f00009.txt"),
        "[{name}] delete spread to the bucket"
    );
    assert_eq!(listed.len(), N, "[{name}] -2 deleted, +2 new");
    assert_eq!(listed, local_sizes(&s), "[{name}] both sides agree");

    // 4. And settled again.
    let sum = run().await;
    let traffic = counter.take();
    assert_eq!(counts(&sum), (0, 0, 0, 0, 0, 0, 0), "[{name}] {sum:?}");
    assert_eq!(writes(&traffic), 0, "[{name}] {traffic:?}");
    println!("[{name}] done at {:?}", t0.elapsed());
}
