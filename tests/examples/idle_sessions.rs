//! Hand-run benchmark (bench/idle_sessions.sh): opens N idle, authenticated SFTP sessions
//! (public-key login, SFTP subsystem started) against the real gateway and prints its memory.
//!
//! Usage: `idle_sessions [N]` (default 1000). Target: the gateway's RSS stays at or below
//! 200 MiB with 1,000 idle sessions.

use bucketgate_tests::clients::keygen;
use bucketgate_tests::gateway::Gateway;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bucketgate_testkit::ssh::TrustAll;

fn kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// One session from loopback address `src`, kept open by the returned handles.
async fn session(
    src: IpAddr,
    addr: SocketAddr,
    key: Arc<russh::keys::PrivateKey>,
) -> anyhow::Result<(
    russh::client::Handle<TrustAll>,
    russh::Channel<russh::client::Msg>,
)> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let stream = sock.connect(addr).await?;
    let mut h =
        russh::client::connect_stream(Arc::new(russh::client::Config::default()), stream, TrustAll)
            .await?;
    let auth = h
        .authenticate_publickey("idle", russh::keys::PrivateKeyWithHashAlg::new(key, None))
        .await?;
    anyhow::ensure!(auth.success(), "key refused");
    let ch = h.channel_open_session().await?;
    ch.request_subsystem(true, "sftp").await?;
    Ok((h, ch))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let (key_path, public) = keygen(dir.path(), "idle_key");
    let cfg = format!(
        r#"sftp:
  listen: "127.0.0.1:0"
storage: {{ type: local, root: ./files }}
limits: {{ max_sessions: {cap}, max_sessions_per_ip: {cap}, login_grace: 10m }}
log: {{ level: warn }}
users:
  - username: idle
    public_keys: ["{public}"]
    home: /
"#,
        cap = n + 10
    );
    let gw = Gateway::start(dir.path(), &cfg, &["sftp"]);
    let pid = gw.pid();
    let addr = gw.addr("sftp");
    let key = Arc::new(russh::keys::load_secret_key(&key_path, None)?);
    let before = kib(pid, "VmRSS");
    let mut held = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        // Spread over 127.0.0.0/8 addresses, like many clients.
        let src = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            1 + (i / 250) as u8,
            1 + (i % 250) as u8,
        ));
        let key = key.clone();
        tasks.spawn(async move { session(src, addr, key).await });
        // Bounded parallelism: the gateway accepts a crowd, not a stampede.
        while tasks.len() >= 32 {
            held.push(tasks.join_next().await.unwrap()??);
        }
    }
    while let Some(r) = tasks.join_next().await {
        held.push(r??);
    }
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let rss = kib(pid, "VmRSS");
    let hwm = kib(pid, "VmHWM");
    println!(
        "idle_sessions: {} authenticated SFTP sessions; gateway RSS {} KiB before, {} KiB with them \
         ({:.1} MiB, {:.1} KiB per session), peak {} KiB; target <= 200 MiB: {}",
        held.len(),
        before,
        rss,
        rss as f64 / 1024.0,
        (rss - before) as f64 / held.len() as f64,
        hwm,
        if rss <= 200 * 1024 { "met" } else { "MISSED" }
    );
    drop(held);
    Ok(())
}
