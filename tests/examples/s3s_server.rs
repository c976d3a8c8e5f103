//! A stand-alone s3s-fs S3 server on loopback for the hand-run benchmarks in bench/:
//! unlike moto it keeps objects on disk, so GiB-sized transfers fit.
//!
//! Usage: `s3s_server ROOT ACCESS SECRET [PORT]` — serves every folder of ROOT as a bucket on
//! 127.0.0.1 at PORT (a free one when omitted), and prints `listening: http://127.0.0.1:PORT`
//! once ready. The crash tests kill it and start it again on the same port and folder.
//!
//! Two quirks of s3s-fs are corrected on the way out. Object bodies go out in 256 KiB pieces
//! instead of 4 KiB ones (see `Rechunk`). And a HEAD of a key that is a folder on its
//! disk (every "folder" prefix, e.g. `HEAD /bench/gw/list10k`) answers 500 instead of the 404 a
//! real S3 server gives, and every client (the gateway, rclone) then runs its whole retry
//! ladder for each such probe, which measured the test server's quirk instead of the clients.

use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::io::Write;
use std::pin::Pin;
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (root, access, secret, port) = match args.as_slice() {
        [root, access, secret] => (root, access, secret, 0),
        [root, access, secret, port] => (root, access, secret, port.parse::<u16>()?),
        _ => anyhow::bail!("usage: s3s_server ROOT ACCESS SECRET [PORT]"),
    };
    let fs =
        s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs at {root}: {e:?}"))?;
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
                let resp = hyper::service::Service::call(&svc, req).await?;
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
