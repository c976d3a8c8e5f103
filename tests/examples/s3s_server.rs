//! A stand-alone s3s-fs S3 server on loopback for the hand-run benchmarks in bench/:
//! unlike moto it keeps objects on disk, so GiB-sized transfers fit.
//!
//! Usage: `s3s_server ROOT ACCESS SECRET [PORT]` — serves every folder of ROOT as a bucket on
//! 127.0.0.1 at PORT (a free one when omitted), and prints `listening: http://127.0.0.1:PORT`
//! once ready. The crash tests kill it and start it again on the same port and folder.
//!
//! Four quirks of s3s-fs are corrected on the way. A CopyObject is made atomic (see
//! `bucketgate_testkit::s3s_atomic`). Object bodies go out in 256 KiB pieces
//! instead of 4 KiB ones (see `Rechunk`). A HEAD of a key that is a folder on its
//! disk (every "folder" prefix, e.g. `HEAD /bench/gw/list10k`) answers 500 instead of the 404 a
//! real S3 server gives, and every client (the gateway, rclone) then runs its whole retry
//! ladder for each such probe, which measured the test server's quirk instead of the clients.
//! And a PutObject whose body does not match its `Content-MD5` is refused (400 BadDigest)
//! before the object is replaced, as AWS, MinIO, Ceph and Garage do; s3s-fs compares only
//! after it has moved the new body into place (see `DigestCheck`). The gateway's probe finds
//! that out (`put_content_md5`), and its sync copies of large files take the one-request path
//! only where the server refuses first. The same for `x-amz-checksum-crc32c` on PutObject and
//! UploadPart, as AWS and Garage do (s3s-fs checks a PutObject's only after replacing the
//! object, an UploadPart's not at all): the probe's `put_crc32c`, with which `checksum: auto`
//! sends CRC32C.

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpListener;

/// s3s-fs reads objects 4 KiB at a time and hands each piece to hyper, which with TCP_NODELAY
/// sends it as its own segment: a quarter of a million segments per GiB, which no production
/// server sends (MinIO and Go's net/http write 32 KiB and more at once). Object bodies are
/// passed on in pieces of 256 KiB instead.
struct Rechunk {
    inner: s3s::Body,
    acc: BytesMut,
    err: Option<s3s::StdError>,
    done: bool,
}

const RECHUNK: usize = 256 * 1024;

impl Stream for Rechunk {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(e) = this.err.take() {
            return Poll::Ready(Some(Err(e)));
        }
        while !this.done && this.acc.len() < RECHUNK {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(b))) => this.acc.extend_from_slice(&b),
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    if this.acc.is_empty() {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.err = Some(e);
                }
                Poll::Ready(None) => this.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
        if this.acc.is_empty() {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(this.acc.split().freeze())))
    }
}

impl s3s::stream::ByteStream for Rechunk {}

/// A digest a request announced for its body.
enum Want {
    /// `Content-MD5` of a PutObject.
    Md5([u8; 16]),
    /// `x-amz-checksum-crc32c` of a PutObject or an UploadPart.
    Crc32c(u32),
}

/// The running digest of a body being checked.
enum Running {
    Md5(Box<md5::Md5>),
    Crc32c(u32),
}

/// The body of a request that carries a digest, hashed as it passes to s3s-fs: when the
/// digest does not match at its end, the body ends in an error instead, so s3s-fs drops its
/// temporary file and the object (or part) stays as it was; `bad` tells the service to answer
/// BadDigest.
struct DigestCheck {
    inner: Pin<Box<dyn Stream<Item = Result<Bytes, hyper::Error>> + Send + Sync>>,
    hash: Option<Running>,
    want: Want,
    bad: Arc<AtomicBool>,
}

impl Stream for DigestCheck {
    type Item = Result<Bytes, s3s::StdError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use md5::Digest as _;
        let this = &mut *self;
        match this.inner.as_mut().poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                match &mut this.hash {
                    Some(Running::Md5(h)) => h.update(&b),
                    Some(Running::Crc32c(c)) => *c = crc32c::crc32c_append(*c, &b),
                    None => {}
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => {
                let matches = match (this.hash.take(), &this.want) {
                    (Some(Running::Md5(h)), Want::Md5(w)) => <[u8; 16]>::from(h.finalize()) == *w,
                    (Some(Running::Crc32c(c)), Want::Crc32c(w)) => c == *w,
                    _ => true,
                };
                if matches {
                    Poll::Ready(None)
                } else {
                    this.bad.store(true, Ordering::SeqCst);
                    Poll::Ready(Some(Err("the body does not match its digest".into())))
                }
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl s3s::stream::ByteStream for DigestCheck {}

/// The digest `req` announces that this server checks on the way in: `Content-MD5` on a
/// PutObject (not an UploadPart: s3s-fs does not check those at all, and neither did this
/// server before), `x-amz-checksum-crc32c` on both.
fn wanted<B>(req: &http::Request<B>) -> Option<Want> {
    if req.method() != http::Method::PUT || req.headers().contains_key("x-amz-copy-source") {
        return None;
    }
    let part = req.uri().query().unwrap_or("").contains("partNumber=");
    let b64 = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
    };
    if let Some(d) = b64("x-amz-checksum-crc32c") {
        return <[u8; 4]>::try_from(d.as_slice())
            .ok()
            .map(|b| Want::Crc32c(u32::from_be_bytes(b)));
    }
    b64("content-md5")
        .and_then(|d| <[u8; 16]>::try_from(d.as_slice()).ok())
        .filter(|_| !part)
        .map(Want::Md5)
}

fn bad_digest() -> http::Response<s3s::Body> {
    let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>BadDigest</Code>\
               <Message>The Content-MD5 you specified did not match what was received.</Message>\
               </Error>";
    let mut r = http::Response::new(s3s::Body::from(xml.to_string()));
    *r.status_mut() = http::StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/xml"),
    );
    r
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, access, secret, port) = match args.as_slice() {
        [root, access, secret] => (root, access, secret, 0),
        [root, access, secret, port] => (root, access, secret, port.parse::<u16>()?),
        _ => anyhow::bail!("usage: s3s_server ROOT ACCESS SECRET [PORT]"),
    };
    let fs = bucketgate_testkit::s3s_atomic::AtomicCopy::new(std::path::Path::new(root))
        .map_err(|e| anyhow::anyhow!("s3s-fs at {root}: {e}"))?;
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(
        access.as_str(),
        secret.as_str(),
    ));
    let svc = b.build();
    let root = std::path::PathBuf::from(root);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening: http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        // A failed accept (e.g. too many open files) must not end the server mid-benchmark.
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        // As real S3 servers do (Go's net/http, nginx in front of Ceph): without it, a response
        // written as head then body waits for the client's delayed ACK, 40 ms per small GET.
        let _ = sock.set_nodelay(true);
        let (svc, root) = (svc.clone(), root.clone());
        let fixed = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let (svc, root) = (svc.clone(), root.clone());
            async move {
                let head = req.method() == http::Method::HEAD;
                let get = req.method() == http::Method::GET;
                let on_disk = root.join(req.uri().path().trim_start_matches('/'));
                let resp = match wanted(&req) {
                    Some(want) => {
                        let bad = Arc::new(AtomicBool::new(false));
                        let hash = match want {
                            Want::Md5(_) => Running::Md5(Box::default()),
                            Want::Crc32c(_) => Running::Crc32c(0),
                        };
                        let req = req.map(|b| {
                            let body: s3s::stream::DynByteStream = Box::pin(DigestCheck {
                                inner: Box::pin(http_body_util::BodyExt::into_data_stream(b)),
                                hash: Some(hash),
                                want,
                                bad: bad.clone(),
                            });
                            s3s::Body::from(body)
                        });
                        let resp = svc.call(req).await?;
                        if bad.load(Ordering::SeqCst) {
                            return Ok(bad_digest());
                        }
                        resp
                    }
                    None => hyper::service::Service::call(&svc, req).await?,
                };
                if get && on_disk.is_file() && resp.status().is_success() {
                    let (parts, body) = resp.into_parts();
                    let body = Rechunk {
                        inner: body,
                        acc: BytesMut::new(),
                        err: None,
                        done: false,
                    };
                    let stream: s3s::stream::DynByteStream = Box::pin(body);
                    return Ok(http::Response::from_parts(parts, s3s::Body::from(stream)));
                }
                if head
                    && resp.status() == http::StatusCode::INTERNAL_SERVER_ERROR
                    && on_disk.is_dir()
                {
                    let mut nf = http::Response::new(s3s::Body::empty());
                    *nf.status_mut() = http::StatusCode::NOT_FOUND;
                    return Ok(nf);
                }
                Ok::<_, s3s::HttpError>(resp)
            }
        });
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(sock), fixed)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
