//! Protocol clients shared by the hardening and soak tests: FTP and SSH logins from a chosen
//! loopback address, SFTP sessions (russh-sftp), and the gateway's memory figures from /proc.
//! The raw FTP control connection and the SSH handler are the testkit's.
#![allow(dead_code)]

pub use bucketgate_testkit::ftp::{closes, connect_from, RawFtp, STEP};
pub use bucketgate_testkit::ssh::TrustAll;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// The password of every test user; `HASH` is its argon2id PHC string (`bucketgate
/// hash-password`), fixed here because hashing in a debug build costs seconds per test.
pub const PASSWORD: &str = "alice-Pass-1";
pub const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$IYidtFSQ+PjtRKpPQMrGJg$ByNKWXtsar8EzTJGF1VvlxOsEn685UUeJAg91HS1ub8";

/// A `kB` value from /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// FTP login from `src` on a fresh connection: the final reply, `421...` when refused at the
/// door, `None` when closed.
pub async fn ftp_login(src: IpAddr, addr: SocketAddr, user: &str, pass: &str) -> Option<String> {
    let (mut f, g) = RawFtp::connect_from(src, addr).await;
    if g.is_empty() {
        return None;
    }
    if !g.starts_with("220") {
        return Some(g);
    }
    let r = f.login(user, pass).await;
    let _ = f.cmd("QUIT").await;
    (!r.is_empty()).then_some(r)
}

/// An SSH connection from `src`, logged in with a password: `Err` describes why not
/// (connection closed, refused login).
pub async fn ssh_login(
    src: IpAddr,
    addr: SocketAddr,
    user: &str,
    pass: &str,
) -> Result<russh::client::Handle<TrustAll>, String> {
    let stream = connect_from(src, addr).await.map_err(|e| e.to_string())?;
    let config = Arc::new(russh::client::Config::default());
    let fut = async {
        let mut h = russh::client::connect_stream(config, stream, TrustAll)
            .await
            .map_err(|e| format!("ssh handshake: {e}"))?;
        let r = h
            .authenticate_password(user, pass)
            .await
            .map_err(|e| format!("ssh auth: {e}"))?;
        if r.success() {
            Ok(h)
        } else {
            Err("password refused".to_string())
        }
    };
    // Logins wait for an argon2 slot (4 at a time): a crowd of them on a busy machine takes
    // longer than one network step.
    tokio::time::timeout(STEP * 5, fut)
        .await
        .unwrap_or_else(|_| Err("login timed out".into()))
}

/// An SFTP session over a fresh SSH login (russh-sftp's client).
pub async fn sftp_session(
    src: IpAddr,
    addr: SocketAddr,
    user: &str,
    pass: &str,
) -> Result<
    (
        russh::client::Handle<TrustAll>,
        russh_sftp::client::SftpSession,
    ),
    String,
> {
    let h = ssh_login(src, addr, user, pass).await?;
    let ch = h
        .channel_open_session()
        .await
        .map_err(|e| format!("channel: {e}"))?;
    ch.request_subsystem(true, "sftp")
        .await
        .map_err(|e| format!("subsystem: {e}"))?;
    let s = russh_sftp::client::SftpSession::new(ch.into_stream())
        .await
        .map_err(|e| format!("sftp init: {e}"))?;
    // As long as a person would wait: russh-sftp's 10 s per request failed listings of the
    // 50-client soak through moto while other builds loaded the 2 cores (a hang still fails).
    s.set_timeout(120);
    Ok((h, s))
}

/// Creates (or truncates) `path` and writes `data` to it, closing the handle.
pub async fn sftp_put(
    s: &russh_sftp::client::SftpSession,
    path: &str,
    data: &[u8],
) -> Result<(), String> {
    let mut f = s.create(path).await.map_err(|e| e.to_string())?;
    f.write_all(data).await.map_err(|e| e.to_string())?;
    f.shutdown().await.map_err(|e| e.to_string())
}
