//! A bare FTP control connection, for what real clients will not send: commands before login,
//! overlong or malformed lines, names no client would pass through, floods of PASV.
//!
//! Every reply is returned as the server sent it (all lines of a multi-line reply, line ends
//! included); an empty string means the server closed the connection. A server that does not
//! answer within [`STEP`] fails the test instead of hanging it.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};

/// Liveness bound for one network step.
pub const STEP: Duration = Duration::from_secs(60);

/// Connects to `addr` from the loopback address `src` (127.0.0.0/8 all routes to lo), so that
/// one test can play several clients.
pub async fn connect_from(src: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    sock.connect(addr).await
}

/// An FTP control connection driven line by line.
pub struct RawFtp {
    pub r: BufReader<OwnedReadHalf>,
    pub w: OwnedWriteHalf,
}

impl RawFtp {
    /// Connects and reads the greeting (empty: closed without one).
    pub async fn connect(addr: SocketAddr) -> (RawFtp, String) {
        let s = TcpStream::connect(addr).await.expect("connect to ftp");
        RawFtp::over(s).await
    }

    /// Connects from the loopback address `src` and reads the greeting.
    pub async fn connect_from(src: IpAddr, addr: SocketAddr) -> (RawFtp, String) {
        let s = connect_from(src, addr).await.expect("connect to ftp");
        RawFtp::over(s).await
    }

    /// Uses an already connected socket and reads the greeting.
    pub async fn over(s: TcpStream) -> (RawFtp, String) {
        let (r, w) = s.into_split();
        let mut raw = RawFtp {
            r: BufReader::new(r),
            w,
        };
        let greeting = raw.reply().await;
        (raw, greeting)
    }

    /// Sends raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    /// Sends a command line and reads the reply (empty when the server closed, before or
    /// after the line was sent).
    pub async fn cmd(&mut self, line: &str) -> String {
        if self
            .w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .is_err()
        {
            return String::new();
        }
        self.reply().await
    }

    /// Reads one whole reply (all lines of a multi-line one); empty at end of stream.
    pub async fn reply(&mut self) -> String {
        let fut = async {
            let mut all = String::new();
            loop {
                let mut line = String::new();
                let n = self.r.read_line(&mut line).await.unwrap_or(0);
                if n == 0 {
                    return all;
                }
                all.push_str(&line);
                let b = line.as_bytes();
                if all.len() == line.len() && b.len() >= 4 && b[3] == b'-' {
                    continue;
                }
                if b.len() >= 4 && b[..3] == all.as_bytes()[..3] && b[3] == b' ' {
                    return all;
                }
                if all.len() == line.len() {
                    return all;
                }
            }
        };
        tokio::time::timeout(STEP, fut)
            .await
            .expect("an FTP reply in time")
    }

    /// USER + PASS: the reply to the last command sent (USER's, unless it asked for a
    /// password; empty when the server closed).
    pub async fn login(&mut self, user: &str, pass: &str) -> String {
        let r = self.cmd(&format!("USER {user}")).await;
        if !r.starts_with("331") {
            return r;
        }
        self.cmd(&format!("PASS {pass}")).await
    }

    /// Logs in, failing the test unless the server asks for the password and accepts it.
    pub async fn login_ok(&mut self, user: &str, pass: &str) {
        let r = self.cmd(&format!("USER {user}")).await;
        assert!(r.starts_with("331"), "USER: {r}");
        let r = self.cmd(&format!("PASS {pass}")).await;
        assert!(r.starts_with("230"), "PASS: {r}");
    }

    /// EPSV, then connects to the announced port: the data connection of the next transfer.
    pub async fn epsv(&mut self) -> TcpStream {
        let r = self.cmd("EPSV").await;
        assert!(r.starts_with("229"), "{r}");
        let port: u16 = r
            .split("(|||")
            .nth(1)
            .and_then(|x| x.split('|').next())
            .and_then(|x| x.parse().ok())
            .unwrap_or_else(|| panic!("no port in {r}"));
        TcpStream::connect(("127.0.0.1", port)).await.unwrap()
    }

    /// RETR over a new data connection: the bytes and the final reply (the first reply must
    /// be 150/125; its own refusal is returned as the final reply, with no bytes).
    pub async fn retr(&mut self, path: &str) -> (Vec<u8>, String) {
        let mut data = self.epsv().await;
        let r = self.cmd(&format!("RETR {path}")).await;
        if !(r.starts_with("150") || r.starts_with("125")) {
            return (Vec::new(), r);
        }
        let mut buf = Vec::new();
        data.read_to_end(&mut buf).await.unwrap();
        (buf, self.reply().await)
    }

    /// STOR over a new data connection, ended cleanly: the first and the final reply.
    pub async fn stor(&mut self, path: &str, body: &[u8]) -> (String, String) {
        let mut data = self.epsv().await;
        let r = self.cmd(&format!("STOR {path}")).await;
        if !(r.starts_with("150") || r.starts_with("125")) {
            return (r, String::new());
        }
        data.write_all(body).await.unwrap();
        drop(data);
        (r, self.reply().await)
    }
}

/// Reads until the peer closes; true when it closed (EOF or reset) within [`STEP`].
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
