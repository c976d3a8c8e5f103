//! Data-channel addresses: PASV/EPSV/PORT/EPRT. libunftp's data ports are on loopback (see
//! [`crate::ftp::data`]); the relay opens the public side, checks who connects or where to
//! connect, and rewrites the addresses both ways.

use super::{Pending, Relay};
use crate::ftp::data;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long connecting to a client's PORT address may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Relay {
    /// PORT/EPRT: the target is checked and connected to before libunftp is involved.
    pub(super) async fn active(&mut self, verb: &str, arg: &str) -> bool {
        if !self.shared.opts.active_mode {
            self.say("502 Active mode is disabled: use PASV or EPSV")
                .await;
            return true;
        }
        if !self.logged_in {
            self.say("530 Please log in first").await;
            return true;
        }
        let target = if verb == "PORT" {
            parse_port(arg)
        } else {
            parse_eprt(arg)
        };
        let Some(target) = target else {
            self.say("501 Bad address").await;
            return true;
        };
        let peer_ip = self.peer.ip().to_canonical();
        if target.ip().to_canonical() != peer_ip || target.port() < 1024 {
            tracing::warn!(client = %self.peer, target = %target, "ftp: active-mode target refused");
            self.say("500 Illegal PORT: only your own address and ports from 1024")
                .await;
            return true;
        }
        let client_conn = match connect_active(self.local.ip(), target).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(client = %self.peer, target = %target, error = %e, "ftp: active connect failed");
                self.say("425 Cannot open the data connection").await;
                return true;
            }
        };
        let stand_in = match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
            Ok(l) => l,
            Err(_) => {
                self.say("425 Cannot open the data connection").await;
                return true;
            }
        };
        let port = match stand_in.local_addr() {
            Ok(a) => a.port(),
            Err(_) => return false,
        };
        self.reap();
        let tls = self.data_tls();
        let abort = data::DataAbort::new(self.link.clone());
        self.data_abort = Some(abort.clone());
        self.data_tasks
            .spawn(data::active(stand_in, client_conn, tls, abort));
        let cmd = format!("PORT 127,0,0,1,{},{}", port >> 8, port & 0xff);
        self.forward(cmd.as_bytes(), Pending::Other).await
    }

    /// Forgets finished data connections, and the passive port a new data command replaces.
    pub(super) fn reap(&mut self) {
        while self.data_tasks.try_join_next().is_some() {}
        // Only the latest PASV/EPSV/PORT/EPRT counts: an earlier passive port not connected
        // to yet is released now.
        if let Some(t) = self.pending_passive.take() {
            t.cancel();
        }
    }

    /// libunftp opened a passive port on loopback: open the public one and announce it.
    pub(super) fn open_passive(&mut self, reply: &str, extended: bool) -> String {
        let upstream_port = if extended {
            parse_epsv_reply(reply)
        } else {
            parse_pasv_reply(reply)
        };
        let Some(upstream_port) = upstream_port else {
            tracing::error!(reply, "ftp: unexpected passive reply from libunftp");
            return "425 Cannot open a passive data port".into();
        };
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
        self.reap();
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
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, upstream_port));
        let tls = self.data_tls();
        let superseded = CancellationToken::new();
        self.pending_passive = Some(superseded.clone());
        let abort = data::DataAbort::passive(self.link.clone());
        self.data_abort = Some(abort.clone());
        self.data_tasks.spawn(data::passive(
            listener,
            self.peer.ip().to_canonical(),
            upstream,
            tls,
            superseded,
            abort,
        ));
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

/// The port of libunftp's `227 Entering Passive Mode (127,0,0,1,p1,p2)`.
fn parse_pasv_reply(reply: &str) -> Option<u16> {
    let inner = reply.split_once('(')?.1.split_once(')')?.0;
    let n: Vec<u16> = inner
        .split(',')
        .map(|x| x.trim().parse::<u16>())
        .collect::<Result<_, _>>()
        .ok()?;
    (n.len() == 6).then(|| n[4] << 8 | n[5])
}

/// The port of libunftp's `229 Entering Extended Passive Mode (|||p|)`.
fn parse_epsv_reply(reply: &str) -> Option<u16> {
    let inner = reply.split_once("(|||")?.1.split_once("|)")?.0;
    inner.parse().ok()
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
        assert_eq!(
            parse_pasv_reply("227 Entering Passive Mode (127,0,0,1,200,10)"),
            Some(200 * 256 + 10)
        );
        assert_eq!(
            parse_epsv_reply("229 Entering Extended Passive Mode (|||40001|)"),
            Some(40001)
        );
    }
}
