//! The benchmarks' WAN: `latency_proxy LISTEN_PORT TARGET_HOST:PORT ONE_WAY_MS` forwards every
//! connection on 127.0.0.1:LISTEN_PORT to the target, each direction ONE_WAY_MS late, without a
//! bandwidth cap (see `bucketgate_testkit::latency`). Prints `ready` once listening. Loopback
//! only.

use std::time::Duration;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: latency_proxy LISTEN_PORT TARGET_HOST:PORT ONE_WAY_MS");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("LISTEN_PORT: a port number");
    let target = args[2]
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("TARGET: a loopback HOST:PORT");
    let ms: f64 = args[3].parse().expect("ONE_WAY_MS: milliseconds");
    let listen = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _proxy = bucketgate_testkit::latency::LatencyProxy::start(
        listen,
        target,
        Duration::from_secs_f64(ms / 1000.0),
    )
    .await
    .expect("listen");
    println!("ready");
    std::future::pending::<()>().await;
}
