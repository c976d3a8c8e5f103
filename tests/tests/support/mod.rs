//! Raw protocol clients shared by the hardening and soak tests: an FTP control connection that
//! can send anything, an SSH client (russh) that can log in and then speak raw SFTP bytes, and
//! the gateway's memory figures from /proc.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Liveness bound for one network step: a hung server fails the test instead of hanging it.
pub const STEP: Duration = Duration::from_secs(60);

/// The password of every test user; `HASH` is its argon2id PHC string (`bucketgate
/// hash-password`), fixed here because hashing in a debug build costs seconds per test.
pub const PASSWORD: &str = "alice-Pass-1";
pub const HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$IYidtFSQ+PjtRKpPQMrGJg$ByNKWXtsar8EzTJGF1VvlxOsEn685UUeJAg91HS1ub8";

/// Connects to `addr` from the loopback address `src` (127.0.0.0/8 all routes to lo), so that
/// one test can play several clients.
pub async fn connect_from(src: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    sock.connect(addr).await
}

/// A `kB` value from /proc/PID/status (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} missing from /proc/{pid}/status"))
}

/// Reads until the peer closes; true when it closed (EOF or reset) within `STEP`.
pub async fn closes<R: AsyncReadExt + Unpin>(r: &mut R) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let fut = async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(STEP, fut).await.is_ok()
}

/// An FTP control connection driven line by line.
pub struct Ftp {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl Ftp {
    /// Connects from `src`; returns the client and the greeting (`None`: closed without one).
    pub async fn connect(src: IpAddr, addr: SocketAddr) -> (Ftp, Option<String>) {
        let s = connect_from(src, addr).await.expect("connect to ftp");
        let (r, w) = s.into_split();
        let mut f = Ftp {
            r: BufReader::new(r),
            w,
        };
        let g = f.reply().await;
        (f, g)
    }

    /// One complete reply (the last line of a multi-line one); `None` when the server closed.
    pub async fn reply(&mut self) -> Option<String> {
        let fut = async {
            let mut first: Option<String> = None;
            loop {
                let mut line = String::new();
                match self.r.read_line(&mut line).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
                let line = line.trim_end().to_string();
                match &first {
                    None if line.len() >= 4 && line.as_bytes()[3] == b'-' => {
                        first = Some(line[..3].to_string())
                    }
                    None => return Some(line),
                    Some(code) if line.starts_with(&format!("{code} ")) => return Some(line),
                    Some(_) => {}
                }
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .expect("ftp reply in time")
    }

    /// Sends one command line and reads the reply.
    pub async fn cmd(&mut self, line: &str) -> Option<String> {
        if self
            .w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .is_err()
        {
            return None;
        }
        self.reply().await
    }

    /// USER + PASS; the reply to the last command sent (`None`: the server closed).
    pub async fn login(&mut self, user: &str, pass: &str) -> Option<String> {
        let r = self.cmd(&format!("USER {user}")).await?;
        if !r.starts_with("331") {
            return Some(r);
        }
        self.cmd(&format!("PASS {pass}")).await
    }
}

/// FTP login from `src` on a fresh connection: the final reply, `421...` when refused at the
/// door, `None` when closed.
pub async fn ftp_login(src: IpAddr, addr: SocketAddr, user: &str, pass: &str) -> Option<String> {
    let (mut f, g) = Ftp::connect(src, addr).await;
    let g = g?;
    if !g.starts_with("220") {
        return Some(g);
    }
    let r = f.login(user, pass).await;
    let _ = f.cmd("QUIT").await;
    r
}

/// Accepts any host key: the gateway's is generated per test.
pub struct TrustAll;

impl russh::client::Handler for TrustAll {
    type Error = russh::Error;
    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
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
