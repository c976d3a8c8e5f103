//! An HTTP proxy between the S3 backend and a test server (s3s-fs, moto) that records every
//! request it sees (peer address, Host, path) and, request by request, forwards it faithfully or
//! injects what real networks and servers do: 503 SlowDown with Retry-After, 500, a connection
//! reset mid-body, a stall, a body cut short, a body that trickles, a hold until released, one
//! byte of a request's or an answer's body changed on its way (lengths kept).
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// One request as the proxy received it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// 0 for the first request through this proxy, then 1, 2...
    pub n: usize,
    pub peer: SocketAddr,
    pub method: String,
    pub host: String,
    /// Path and query as sent.
    pub target: String,
    /// When the proxy received it (to measure the waits a client keeps between requests).
    pub at: std::time::Instant,
    /// Its headers, names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    /// The query has `name` (e.g. `uploadId`, `partNumber`).
    pub fn has_query(&self, name: &str) -> bool {
        self.target
            .split_once('?')
            .map(|(_, q)| q.split('&').any(|kv| kv.split('=').next() == Some(name)))
            .unwrap_or(false)
    }

    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the proxy does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Forward it and its answer unchanged.
    Forward,
    /// Answer with this S3 error instead of forwarding.
    Fail {
        status: u16,
        code: &'static str,
        retry_after: Option<u64>,
    },
    /// Forward, pass the first `n` bytes of the answer's body, then break the connection (the
    /// announced length is kept: the client sees a body that stops).
    ResetAfter(usize),
    /// Forward, and send only the first `n` bytes of the body with a Content-Length of `n`: a
    /// well-formed answer that is shorter than the object.
    Truncate(usize),
    /// Never answer (the connection stays open).
    Stall,
    /// Forward, and send the body `chunk` bytes at a time, one chunk every `every`.
    Trickle { chunk: usize, every: Duration },
    /// Drop the connection without answering.
    Drop,
    /// Forward, and replace every `.0` in the answer's body with `.1` (to correct a test
    /// server's known deviation, e.g. moto's fixed upload times).
    Replace(&'static str, String),
    /// Forward with the byte at this offset of the request's body inverted (a bit error on
    /// the way to the server; headers and length unchanged). A shorter body passes unchanged.
    FlipRequest(usize),
    /// Forward, and invert the byte at this offset of the answer's body on its way back.
    FlipResponse(usize),
    /// Forward, sending the request's body over `link`, which every request given the same
    /// link shares (a slow uplink: parts sent at once take turns, as on a real network).
    Link(Arc<Link>),
}

/// A link of fixed bandwidth that request bodies pass through in 64 KiB pieces, in the order
/// they arrive, whichever request each piece belongs to.
#[derive(Debug)]
pub struct Link {
    bytes_per_sec: f64,
    free_at: Mutex<tokio::time::Instant>,
}

impl Link {
    pub fn new(bytes_per_sec: u64) -> Arc<Link> {
        Arc::new(Link {
            bytes_per_sec: bytes_per_sec as f64,
            free_at: Mutex::new(tokio::time::Instant::now()),
        })
    }

    /// Waits until `n` more bytes have gone over the link.
    async fn pass(&self, n: usize) {
        let done = {
            let mut free = self.free_at.lock().unwrap();
            let start = (*free).max(tokio::time::Instant::now());
            *free = start + Duration::from_secs_f64(n as f64 / self.bytes_per_sec);
            *free
        };
        tokio::time::sleep_until(done).await;
    }
}

/// Decides what to do with each request.
pub type Rule = Arc<dyn Fn(&Seen) -> Action + Send + Sync>;

/// Forward everything.
pub fn forward_all() -> Rule {
    Arc::new(|_| Action::Forward)
}

/// Holds requests until the test lets them through, counting those in flight: a request is
/// in flight from its arrival until its answer has been handed back.
#[derive(Default)]
pub struct Hold {
    pub in_flight: AtomicUsize,
    pub peak: AtomicUsize,
    /// The requests (`Seen::n`) the server has answered, in the order of their answers' heads
    /// (for an upload: the parts it has stored).
    pub answered: Mutex<Vec<usize>>,
    /// (group size, 0 = no hold; requests waiting; requests still to come).
    groups: Mutex<(usize, usize, usize)>,
    release: tokio::sync::Notify,
}

pub struct HttpProxy {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub hold: Arc<Hold>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Resp = hyper::Response<BoxBody<Bytes, std::io::Error>>;

fn full(status: u16, body: impl Into<Bytes>) -> Resp {
    hyper::Response::builder()
        .status(status)
        .body(
            Full::new(body.into())
                .map_err(|never| match never {})
                .boxed(),
        )
        .expect("response")
}

impl HttpProxy {
    /// A proxy on 127.0.0.1:0 in front of `target`.
    pub async fn start(target: SocketAddr, rule: Rule) -> HttpProxy {
        Self::start_on("127.0.0.1:0", target, rule).await
    }

    /// A proxy listening on `bind`.
    pub async fn start_on(bind: &str, target: SocketAddr, rule: Rule) -> HttpProxy {
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let hold: Arc<Hold> = Arc::default();
        let count = Arc::new(AtomicUsize::new(0));
        let (seen2, hold2) = (seen.clone(), hold.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, peer)) = listener.accept().await else {
                    continue;
                };
                let (seen, hold, rule, count) =
                    (seen2.clone(), hold2.clone(), rule.clone(), count.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                        let (seen, hold, rule, count) =
                            (seen.clone(), hold.clone(), rule.clone(), count.clone());
                        async move {
                            let s = Seen {
                                at: std::time::Instant::now(),
                                n: count.fetch_add(1, SeqCst),
                                peer,
                                method: req.method().to_string(),
                                host: req
                                    .headers()
                                    .get("host")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("")
                                    .to_string(),
                                target: req
                                    .uri()
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| {
                                        (
                                            k.as_str().to_string(),
                                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                        )
                                    })
                                    .collect(),
                            };
                            seen.lock().unwrap().push(s.clone());
                            let action = rule(&s);
                            handle(req, action, target, &hold, s.n).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        HttpProxy {
            addr,
            seen,
            hold,
            task,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Holds the next `total` requests and lets them through `group` at a time: each group
    /// waits until it is complete, so the number in flight reaches `group` when the client
    /// allows that many, and the proxy observes any excess.
    pub fn hold_in_groups(&self, group: usize, total: usize) {
        *self.hold.groups.lock().unwrap() = (group, 0, total);
    }

    pub fn peak(&self) -> usize {
        self.hold.peak.load(SeqCst)
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    action: Action,
    target: SocketAddr,
    hold: &Hold,
    n: usize,
) -> Result<Resp, std::io::Error> {
    match action {
        Action::Fail {
            status,
            code,
            retry_after,
        } => {
            // Read the request's body first, as a server does before it answers.
            let _ = req.into_body().collect().await;
            let mut r = full(
                status,
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
                     <Message>injected by the test proxy</Message></Error>"
                ),
            );
            r.headers_mut()
                .insert("content-type", "application/xml".parse().unwrap());
            if let Some(s) = retry_after {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            return Ok(r);
        }
        Action::Stall => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Action::Drop => {
            return Err(std::io::Error::other(
                "connection dropped by the test proxy",
            ));
        }
        _ => {}
    }
    let req = match &action {
        Action::FlipRequest(at) => req.map(|b| flip(b, *at)),
        Action::Link(link) => req.map(|b| over_link(b, link.clone())),
        _ => req.map(|b| b.map_err(std::io::Error::other).boxed()),
    };
    let in_flight = hold.in_flight.fetch_add(1, SeqCst) + 1;
    hold.peak.fetch_max(in_flight, SeqCst);
    let result = async {
        wait_for_group(hold).await;
        forward(req, target).await
    }
    .await;
    hold.in_flight.fetch_sub(1, SeqCst);
    if result.is_ok() {
        hold.answered.lock().unwrap().push(n);
    }
    let resp = result.inspect_err(|e| {
        // A client sees only a reset; the reason is the upstream server's.
        eprintln!("test proxy: forwarding to {target} failed: {e:?}");
    })?;
    let (mut parts, body) = resp.into_parts();
    let body: BoxBody<Bytes, std::io::Error> = match action {
        Action::ResetAfter(n) => cut(body, n, true),
        Action::Truncate(n) => {
            let len: usize = parts
                .headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(usize::MAX);
            let n = n.min(len);
            parts
                .headers
                .insert("content-length", n.to_string().parse().unwrap());
            cut(body, n, false)
        }
        Action::Trickle { chunk, every } => trickle(body, chunk, every),
        Action::FlipResponse(at) => flip(body, at),
        Action::Replace(from, to) => {
            let all = body
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            let text = String::from_utf8_lossy(&all).replace(from, &to);
            parts
                .headers
                .insert("content-length", text.len().to_string().parse().unwrap());
            Full::new(Bytes::from(text))
                .map_err(|never| match never {})
                .boxed()
        }
        _ => body.map_err(std::io::Error::other).boxed(),
    };
    Ok(hyper::Response::from_parts(parts, body))
}

async fn wait_for_group(hold: &Hold) {
    let notified = hold.release.notified();
    tokio::pin!(notified);
    // Registered before counting, so that a release between the two is not missed.
    notified.as_mut().enable();
    {
        let mut g = hold.groups.lock().unwrap();
        let (group, waiting, remaining) = &mut *g;
        if *group == 0 || *remaining == 0 {
            return;
        }
        *waiting += 1;
        if *waiting >= (*group).min(*remaining) {
            *remaining -= *waiting;
            *waiting = 0;
            hold.release.notify_waiters();
            return;
        }
    }
    notified.await;
}

async fn forward(
    req: hyper::Request<BoxBody<Bytes, std::io::Error>>,
    target: SocketAddr,
) -> Result<hyper::Response<Incoming>, std::io::Error> {
    let sock = TcpStream::connect(target).await?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock))
            .await
            .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    send.send_request(req).await.map_err(std::io::Error::other)
}

/// `body` with the byte at offset `at` inverted; every frame otherwise as it came.
fn flip(body: Incoming, at: usize) -> BoxBody<Bytes, std::io::Error> {
    let stream = futures::stream::unfold((body, 0usize), move |(mut body, seen)| async move {
        loop {
            match body.frame().await {
                Some(Ok(f)) => {
                    let Ok(data) = f.into_data() else { continue };
                    let end = seen + data.len();
                    if (seen..end).contains(&at) {
                        let mut v = data.to_vec();
                        v[at - seen] ^= 0xff;
                        return Some((Ok(Frame::data(Bytes::from(v))), (body, end)));
                    }
                    return Some((Ok(Frame::data(data)), (body, end)));
                }
                Some(Err(e)) => return Some((Err(std::io::Error::other(e)), (body, seen))),
                None => return None,
            }
        }
    });
    StreamBody::new(stream).boxed()
}

/// `body` in pieces of at most 64 KiB, each let through once `link` has carried it.
fn over_link(body: Incoming, link: Arc<Link>) -> BoxBody<Bytes, std::io::Error> {
    const PIECE: usize = 64 * 1024;
    let stream = futures::stream::unfold(
        (body, Bytes::new(), link),
        |(mut body, mut pending, link)| async move {
            while pending.is_empty() {
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            pending = d;
                        }
                    }
                    Some(Err(e)) => {
                        return Some((Err(std::io::Error::other(e)), (body, pending, link)))
                    }
                    None => return None,
                }
            }
            let piece = pending.split_to(pending.len().min(PIECE));
            link.pass(piece.len()).await;
            Some((Ok(Frame::data(piece)), (body, pending, link)))
        },
    );
    StreamBody::new(stream).boxed()
}

/// The first `n` bytes of `body`; then an error (a broken connection) when `fail`, or the end.
fn cut(body: Incoming, n: usize, fail: bool) -> BoxBody<Bytes, std::io::Error> {
    let stream = futures::stream::unfold(
        (body, 0usize, false),
        move |(mut body, sent, done)| async move {
            if done {
                return None;
            }
            loop {
                match body.frame().await {
                    Some(Ok(f)) => {
                        let Ok(data) = f.into_data() else { continue };
                        if sent + data.len() >= n {
                            let part = data.slice(..n - sent);
                            // Hand over what fits; the next poll ends (or breaks, see below).
                            return Some((Ok(Frame::data(part)), (body, n, true)));
                        }
                        return Some((
                            Ok(Frame::data(data.clone())),
                            (body, sent + data.len(), false),
                        ));
                    }
                    Some(Err(e)) => {
                        return Some((Err(std::io::Error::other(e)), (body, sent, true)))
                    }
                    None => return None,
                }
            }
        },
    );
    if fail {
        let broken = futures::stream::once(async {
            Err::<Frame<Bytes>, _>(std::io::Error::other("connection reset by the test proxy"))
        });
        StreamBody::new(futures::StreamExt::chain(stream, broken)).boxed()
    } else {
        StreamBody::new(stream).boxed()
    }
}

/// The body of `body`, re-chunked to `chunk` bytes, one chunk every `every`.
fn trickle(body: Incoming, chunk: usize, every: Duration) -> BoxBody<Bytes, std::io::Error> {
    let stream = futures::stream::unfold(
        (body, Bytes::new(), false),
        move |(mut body, mut pending, mut ended)| async move {
            while pending.len() < chunk && !ended {
                match body.frame().await {
                    Some(Ok(f)) => {
                        if let Ok(d) = f.into_data() {
                            let mut v = pending.to_vec();
                            v.extend_from_slice(&d);
                            pending = Bytes::from(v);
                        }
                    }
                    Some(Err(e)) => {
                        return Some((Err(std::io::Error::other(e)), (body, Bytes::new(), true)))
                    }
                    None => ended = true,
                }
            }
            if pending.is_empty() {
                return None;
            }
            tokio::time::sleep(every).await;
            let take = chunk.min(pending.len());
            let out = pending.split_to(take);
            Some((Ok(Frame::data(out)), (body, pending, ended)))
        },
    );
    StreamBody::new(stream).boxed()
}
