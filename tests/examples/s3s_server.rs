//! A stand-alone s3s-fs S3 server on loopback for the hand-run benchmarks in bench/:
//! unlike moto it keeps objects on disk, so GiB-sized transfers fit.
//!
//! Usage: `s3s_server ROOT ACCESS SECRET` — serves every folder of ROOT as a bucket on
//! 127.0.0.1 at a free port, and prints `listening: http://127.0.0.1:PORT` once ready.

use std::io::Write;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [root, access, secret] = args.as_slice() else {
        anyhow::bail!("usage: s3s_server ROOT ACCESS SECRET");
    };
    let fs =
        s3s_fs::FileSystem::new(root).map_err(|e| anyhow::anyhow!("s3s-fs at {root}: {e:?}"))?;
    let mut b = s3s::service::S3ServiceBuilder::new(fs);
    b.set_auth(s3s::auth::SimpleAuth::from_single(
        access.as_str(),
        secret.as_str(),
    ));
    let svc = b.build();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening: http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    loop {
        // A failed accept (e.g. too many open files) must not end the server mid-benchmark.
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        let conn = http
            .serve_connection(hyper_util::rt::TokioIo::new(sock), svc.clone())
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
