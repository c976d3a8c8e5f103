//! The PROXY protocol (HAProxy's v1 text and v2 binary headers), for listeners behind a load
//! balancer: the header names the real client, whose address then drives bans, session limits,
//! allow-lists and logs.
//!
//! [`parse`] is a pure function over the bytes received so far (fuzzable); [`read_header`]
//! reads exactly the header off a socket, never a byte of the protocol that follows it, so the
//! SSH or FTP session can start on the same stream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature.
const V2_SIG: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted: addresses plus TLVs (AWS, GCP and Azure add a few).
pub const V2_MAX: usize = 16 + 2048;

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// A proxied connection from `source`.
    Proxied {
        /// The real client.
        source: SocketAddr,
    },
    /// The proxy's own connection (health check) or an unknown family: keep the socket's peer.
    Local,
}

/// The result of looking at the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A complete header of `len` bytes.
    Done(Header, usize),
    /// Not enough bytes yet: at least `more` more are needed.
    Incomplete(usize),
}

/// Why a header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad PROXY header: {0}")]
pub struct ProxyError(pub &'static str);

/// Parses the start of a connection's bytes as a PROXY v1 or v2 header.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete(1));
    }
    if buf[0] == b'P' {
        return parse_v1(buf);
    }
    if buf[0] == b'\r' {
        return parse_v2(buf);
    }
    Err(ProxyError("no PROXY header"))
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let prefix = b"PROXY ";
    let n = buf.len().min(prefix.len());
    if buf[..n] != prefix[..n] {
        return Err(ProxyError("no PROXY header"));
    }
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() >= V1_MAX {
            return Err(ProxyError("v1 line too long"));
        }
        // A lone CR may be followed by its LF; anything else needs at least the CRLF.
        return Ok(Parsed::Incomplete(if buf.ends_with(b"\r") { 1 } else { 2 }));
    };
    let len = end + 2;
    if len > V1_MAX {
        return Err(ProxyError("v1 line too long"));
    }
    let line =
        std::str::from_utf8(&buf[prefix.len()..end]).map_err(|_| ProxyError("v1 not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["UNKNOWN", ..] => Ok(Parsed::Done(Header::Local, len)),
        [fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src
                .parse()
                .map_err(|_| ProxyError("v1 bad source address"))?;
            let dst: IpAddr = dst
                .parse()
                .map_err(|_| ProxyError("v1 bad destination address"))?;
            let v4 = *fam == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(ProxyError("v1 address family mismatch"));
            }
            let sport = port(sport)?;
            port(dport)?;
            Ok(Parsed::Done(
                Header::Proxied {
                    source: SocketAddr::new(src, sport),
                },
                len,
            ))
        }
        _ => Err(ProxyError("v1 malformed line")),
    }
}

/// A decimal port without sign or leading zeros, as the specification demands.
fn port(s: &str) -> Result<u16, ProxyError> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ProxyError("v1 bad port"));
    }
    if s.len() > 1 && s.starts_with('0') {
        return Err(ProxyError("v1 bad port"));
    }
    s.parse().map_err(|_| ProxyError("v1 bad port"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyError> {
    let n = buf.len().min(V2_SIG.len());
    if buf[..n] != V2_SIG[..n] {
        return Err(ProxyError("no PROXY header"));
    }
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete(16 - buf.len()));
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError("v2 unknown version"));
    }
    let fam = buf[13];
    let addr_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    let len = 16 + addr_len;
    if len > V2_MAX {
        return Err(ProxyError("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(Parsed::Incomplete(len - buf.len()));
    }
    let body = &buf[16..len];
    match ver_cmd & 0x0f {
        0 => return Ok(Parsed::Done(Header::Local, len)),
        1 => {}
        _ => return Err(ProxyError("v2 unknown command")),
    }
    let source = match fam {
        // TCP over IPv4.
        0x11 => {
            if body.len() < 12 {
                return Err(ProxyError("v2 short IPv4 addresses"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([body[8], body[9]]))
        }
        // TCP over IPv6.
        0x21 => {
            if body.len() < 36 {
                return Err(ProxyError("v2 short IPv6 addresses"));
            }
            let mut a = [0u8; 16];
            a.copy_from_slice(&body[..16]);
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(a)),
                u16::from_be_bytes([body[32], body[33]]),
            )
        }
        // UNSPEC (or UDP / unix sockets, which a TCP listener cannot meaningfully get): the
        // specification says to keep the connection's own addresses.
        0x00 => return Ok(Parsed::Done(Header::Local, len)),
        _ => return Err(ProxyError("v2 unsupported address family")),
    };
    Ok(Parsed::Done(Header::Proxied { source }, len))
}

/// The load balancers a listener takes PROXY headers from; empty: the protocol is off. When it
/// is on, a connection from any other address is closed before a byte of it is read: a client
/// that could send its own header could claim any address, and bans, `allowed_ips` and the
/// active-mode checks would believe it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trusted(Vec<ipnet::IpNet>);

impl Trusted {
    /// Headers from these networks only.
    pub fn new(nets: Vec<ipnet::IpNet>) -> Self {
        Trusted(nets)
    }

    /// True when connections must start with a PROXY header.
    pub fn is_enabled(&self) -> bool {
        !self.0.is_empty()
    }

    /// True when `ip` (an IPv4-mapped IPv6 peer counts as its IPv4 address) may send a header.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// Reads a PROXY header off `stream` within `timeout`, consuming exactly its bytes, and
/// returns the client address to use (the socket's `peer` for a LOCAL header).
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    peer: SocketAddr,
    timeout: Duration,
) -> Result<SocketAddr, ProxyError> {
    let read = async {
        let mut buf = Vec::with_capacity(64);
        loop {
            match parse(&buf)? {
                Parsed::Done(Header::Proxied { source }, _) => return Ok(source),
                Parsed::Done(Header::Local, _) => return Ok(peer),
                Parsed::Incomplete(more) => {
                    // Byte-exact reads: the v1 line one byte at a time (its end is unknown),
                    // the v2 header in the sizes it announces.
                    let at = buf.len();
                    buf.resize(at + more, 0);
                    stream
                        .read_exact(&mut buf[at..])
                        .await
                        .map_err(|_| ProxyError("connection closed before the header ended"))?;
                }
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| ProxyError("timed out waiting for the header"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_balancers_are_trusted() {
        let t = Trusted::new(vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ]);
        assert!(t.is_enabled() && !Trusted::default().is_enabled());
        for (ip, ok) in [
            ("127.0.0.1", true),
            ("::ffff:127.0.0.1", true),
            ("10.200.0.1", true),
            ("127.0.0.2", false),
            ("11.0.0.1", false),
            ("::1", false),
        ] {
            assert_eq!(t.allows(ip.parse().unwrap()), ok, "{ip}");
        }
    }

    fn done(b: &[u8]) -> (Header, usize) {
        match parse(b).expect("valid") {
            Parsed::Done(h, n) => (h, n),
            p => panic!("incomplete: {p:?}"),
        }
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut v = V2_SIG.to_vec();
        v.push(0x20 | cmd);
        v.push(fam);
        v.extend_from_slice(&(body.len() as u16).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn v1_tcp4_tcp6_and_unknown() {
        let (h, n) = done(b"PROXY TCP4 203.0.113.9 192.0.2.1 51000 2222\r\nSSH-2.0-x");
        assert_eq!(n, 45);
        assert_eq!(
            h,
            Header::Proxied {
                source: "203.0.113.9:51000".parse().unwrap()
            }
        );
        let (h, _) = done(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 21\r\n");
        assert_eq!(
            h,
            Header::Proxied {
                source: "[2001:db8::1]:1".parse().unwrap()
            }
        );
        assert_eq!(done(b"PROXY UNKNOWN\r\n"), (Header::Local, 15));
        assert_eq!(
            done(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").0,
            Header::Local
        );
    }

    #[test]
    fn v1_incomplete_then_complete() {
        assert_eq!(parse(b"PRO").unwrap(), Parsed::Incomplete(2));
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r").unwrap(),
            Parsed::Incomplete(1)
        );
    }

    #[test]
    fn v1_malformed() {
        for bad in [
            &b"SSH-2.0-OpenSSH\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
            b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
            b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err());
    }

    #[test]
    fn v2_tcp4_tcp6_local_and_tlvs() {
        let mut body = vec![203, 0, 113, 9, 192, 0, 2, 1];
        body.extend_from_slice(&51000u16.to_be_bytes());
        body.extend_from_slice(&2222u16.to_be_bytes());
        let h = v2(1, 0x11, &body);
        assert_eq!(
            done(&h),
            (
                Header::Proxied {
                    source: "203.0.113.9:51000".parse().unwrap()
                },
                28
            )
        );
        // TLVs after the addresses are skipped.
        let mut with_tlv = body.clone();
        with_tlv.extend_from_slice(&[0x04, 0, 2, 0xab, 0xcd]);
        assert_eq!(done(&v2(1, 0x11, &with_tlv)).1, 33);
        let mut b6 = vec![0u8; 36];
        b6[0] = 0x20;
        b6[1] = 0x01;
        b6[15] = 9;
        b6[32..34].copy_from_slice(&7u16.to_be_bytes());
        assert_eq!(
            done(&v2(1, 0x21, &b6)).0,
            Header::Proxied {
                source: "[2001::9]:7".parse().unwrap()
            }
        );
        assert_eq!(done(&v2(0, 0x00, &[])), (Header::Local, 16));
        // LOCAL ignores whatever addresses come with it.
        assert_eq!(done(&v2(0, 0x11, &body)).0, Header::Local);
        assert_eq!(done(&v2(1, 0x00, &[])).0, Header::Local);
    }

    #[test]
    fn v2_incomplete_and_malformed() {
        let mut body = vec![1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2];
        let h = v2(1, 0x11, &body);
        assert_eq!(parse(&h[..5]).unwrap(), Parsed::Incomplete(11));
        assert_eq!(parse(&h[..20]).unwrap(), Parsed::Incomplete(8));
        // Wrong version, unknown command, short addresses, unknown family, bad signature.
        let mut bad = h.clone();
        bad[12] = 0x11;
        assert!(parse(&bad).is_err());
        assert!(parse(&v2(2, 0x11, &body)).is_err());
        body.truncate(10);
        assert!(parse(&v2(1, 0x11, &body)).is_err());
        assert!(parse(&v2(1, 0x21, &[0; 20])).is_err());
        assert!(parse(&v2(1, 0x55, &[0; 20])).is_err());
        let mut sig = h.clone();
        sig[5] = b'X';
        assert!(parse(&sig).is_err());
        // A header announcing more than the bound is refused before it is read.
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err());
    }

    #[tokio::test]
    async fn reads_exactly_the_header() {
        let data = b"PROXY TCP4 203.0.113.9 192.0.2.1 51000 2222\r\nSSH-2.0-x\r\n".to_vec();
        let mut r = std::io::Cursor::new(data);
        let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let got = read_header(&mut r, peer, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(got, "203.0.113.9:51000".parse().unwrap());
        let mut rest = String::new();
        r.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "SSH-2.0-x\r\n");
        let mut local = std::io::Cursor::new(v2(0, 0, &[]));
        assert_eq!(
            read_header(&mut local, peer, Duration::from_secs(5))
                .await
                .unwrap(),
            peer
        );
        let mut closed = std::io::Cursor::new(b"PROXY TCP4".to_vec());
        assert!(read_header(&mut closed, peer, Duration::from_secs(5))
            .await
            .is_err());
    }
}
