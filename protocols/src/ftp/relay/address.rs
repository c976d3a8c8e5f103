//! Data-channel addresses: PASV/EPSV/PORT/EPRT, answered by the relay, which opens the client's
//! side and checks who connects or where to connect; libunftp gets a loopback PORT just before
//! each transfer command (see [`crate::ftp::data`]).

use super::Relay;
use crate::ftp::data;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// How long connecting to a client's PORT address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Relay {
    /// PORT/EPRT: the target is checked and connected to before libunftp is involved.
    pub(super) async fn active(&mut self, verb: &str, arg: &str) -> bool {
        if !self.shared.opts.active_mode {
            return self
                .reply_local("502 Active mode is disabled: use PASV or EPSV")
                .await;
        }
        if !self.logged_in {
            return self.reply_local("530 Please log in first").await;
        }
        let target = if verb == "PORT" {
            parse_port(arg)
        } else {
            parse_eprt(arg)
        };
        let Some(target) = target else {
            return self.reply_local("501 Bad address").await;
        };
        let peer_ip = self.peer.ip().to_canonical();
        if target.ip().to_canonical() != peer_ip || target.port() < 1024 {
            tracing::warn!(client = %self.peer, target = %target, "ftp: active-mode target refused");
            return self
                .reply_local("500 Illegal PORT: only your own address and ports from 1024")
                .await;
        }
        let client_conn = match connect_active(self.local.ip(), target).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(client = %self.peer, target = %target, error = %e, "ftp: active connect failed");
                return self
                    .reply_local("425 Cannot open the data connection")
                    .await;
            }
        };
        self.new_data(data::ClientSide::Active(client_conn));
        self.reply_local("200 PORT command successful").await
    }

    /// PASV/EPSV, answered here (libunftp gets a PORT just before the transfer command: see
    /// [`data`]).
    pub(super) async fn passive(&mut self, extended: bool) -> bool {
        if !self.logged_in {
            return self.reply_local("530 Please log in first").await;
        }
        let reply = self.open_passive(extended);
        self.reply_local(reply).await
    }

    /// A new data connection's client side: the session's only one from now on.
    fn new_data(&mut self, side: data::ClientSide) {
        self.reap();
        let tls = self.data_tls();
        let superseded = CancellationToken::new();
        self.pending_passive = Some(superseded.clone());
        let abort = data::DataAbort::new(self.link.clone());
        self.data_abort = Some(abort.clone());
        let (tx, rx) = oneshot::channel();
        self.data_next = Some(tx);
        self.data_tasks
            .spawn(data::serve(side, tls, superseded, rx, abort));
    }

    /// The data connection for a transfer command about to be sent to libunftp: a loopback
    /// port standing in for the client, handed to the data connection's task, and the `PORT`
    /// to it to send before the command, with what tells the task its reply. `Err` is the
    /// refusal to send instead.
    pub(super) async fn take_data(
        &mut self,
    ) -> Result<(String, oneshot::Sender<bool>), &'static str> {
        let Some(tx) = self.data_next.take() else {
            return Err("425 No data connection: send PASV, EPSV, PORT or EPRT first");
        };
        if tx.is_closed() {
            return Err("425 The data connection timed out: send PASV or EPSV again");
        }
        let stand_in = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .map_err(|_| "425 Cannot open the data connection")?;
        let port = stand_in
            .local_addr()
            .map_err(|_| "425 Cannot open the data connection")?
            .port();
        let (connected, told) = oneshot::channel();
        tx.send(data::StandIn {
            listener: stand_in,
            connected: told,
        })
        .map_err(|_| "425 The data connection timed out: send PASV or EPSV again")?;
        Ok((
            format!("PORT 127,0,0,1,{},{}", port >> 8, port & 0xff),
            connected,
        ))
    }

    /// Forgets finished data connections, and the one a new data command replaces.
    pub(super) fn reap(&mut self) {
        while self.data_tasks.try_join_next().is_some() {}
        // Only the latest PASV/EPSV/PORT/EPRT counts: an earlier data connection not used yet
        // is released now.
        if let Some(t) = self.pending_passive.take() {
            t.cancel();
        }
    }

    /// Opens a passive port and says where.
    fn open_passive(&mut self, extended: bool) -> String {
        let local_ip = self.local.ip();
        let shown_v4 = match self.shared.opts.public_address {
            Some(IpAddr::V4(a)) => Some(a),
            _ => match local_ip.to_canonical() {
                IpAddr::V4(a) => Some(a),
                IpAddr::V6(_) => None,
            },
        };
        if !extended && shown_v4.is_none() {
            return "425 No IPv4 address to announce: use EPSV".into();
        }
        let listener = match bind_passive(local_ip, &self.shared.opts.passive_ports) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "ftp: no free passive port");
                return "425 Cannot open a passive data port".into();
            }
        };
        let port = match listener.local_addr() {
            Ok(a) => a.port(),
            Err(_) => return "425 Cannot open a passive data port".into(),
        };
        let peer_ip = self.peer.ip().to_canonical();
        self.new_data(data::ClientSide::Passive { listener, peer_ip });
        match shown_v4 {
            Some(a) if !extended => {
                let o = a.octets();
                format!(
                    "227 Entering Passive Mode ({},{},{},{},{},{})",
                    o[0],
                    o[1],
                    o[2],
                    o[3],
                    port >> 8,
                    port & 0xff
                )
            }
            _ => format!("229 Entering Extended Passive Mode (|||{port}|)"),
        }
    }
}

/// Binds a passive listener on `ip` with a port from `range`, starting at a random one so that
/// ports are hard to guess and sessions spread over the range.
fn bind_passive(ip: IpAddr, range: &RangeInclusive<u16>) -> io::Result<TcpListener> {
    let (lo, hi) = (*range.start() as u32, *range.end() as u32);
    if hi < lo {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty passive port range",
        ));
    }
    let n = hi - lo + 1;
    let first = rand::random_range(0..n);
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "every passive port is in use");
    for i in 0..n.min(200) {
        let port = (lo + (first + i) % n) as u16;
        let s = if ip.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        match s.bind(SocketAddr::new(ip, port)) {
            Ok(()) => return s.listen(8),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Connects to the client's PORT/EPRT address from the control connection's local address.
async fn connect_active(local_ip: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let s = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if local_ip.is_ipv4() == target.is_ipv4() {
        s.bind(SocketAddr::new(local_ip, 0))?;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, s.connect(target)).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out")),
    }
}

/// `PORT h1,h2,h3,h4,p1,p2`.
fn parse_port(arg: &str) -> Option<SocketAddr> {
    let n: Vec<u8> = arg
        .trim()
        .split(',')
        .map(|x| x.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .ok()?;
    if n.len() != 6 {
        return None;
    }
    let ip = Ipv4Addr::new(n[0], n[1], n[2], n[3]);
    Some(SocketAddr::from((ip, (n[4] as u16) << 8 | n[5] as u16)))
}

/// `EPRT |1|132.235.1.2|6275|` or `EPRT |2|::1|6275|` (RFC 2428).
fn parse_eprt(arg: &str) -> Option<SocketAddr> {
    let arg = arg.trim();
    let delim = arg.chars().next()?;
    let parts: Vec<&str> = arg.split(delim).collect();
    if parts.len() != 5 || !parts[0].is_empty() || !parts[4].is_empty() {
        return None;
    }
    let port: u16 = parts[3].parse().ok()?;
    let ip: IpAddr = match parts[1] {
        "1" => parts[2].parse::<Ipv4Addr>().ok()?.into(),
        "2" => parts[2].parse::<Ipv6Addr>().ok()?.into(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        assert_eq!(
            parse_port("127,0,0,1,4,1"),
            Some("127.0.0.1:1025".parse().unwrap())
        );
        assert_eq!(parse_port("127,0,0,1,4"), None);
        assert_eq!(parse_port("256,0,0,1,4,1"), None);
        assert_eq!(
            parse_eprt("|1|10.0.0.1|6275|"),
            Some("10.0.0.1:6275".parse().unwrap())
        );
        assert_eq!(
            parse_eprt("|2|::1|6275|"),
            Some("[::1]:6275".parse().unwrap())
        );
        assert_eq!(parse_eprt("|3|x|1|"), None);
    }
}
