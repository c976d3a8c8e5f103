//! CIDR networks for `allowed_ips` and the ban safelist.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// An IP network written `10.0.0.0/8` or `2001:db8::/32`; a bare address means one host
/// (`/32` or `/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// A network from an address and a prefix length; `None` when the length is too long.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let max = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        (prefix_len <= max).then_some(IpNet { addr, prefix_len })
    }

    /// The address as written (host bits are kept, and ignored by [`IpNet::contains`]).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// True when `ip` is inside this network. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, as
    /// a dual-stack listener reports IPv4 clients) matches the IPv4 networks.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
            IpAddr::V4(_) => *ip,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        let prefix_len = if addr.is_ipv4() { 32 } else { 128 };
        IpNet { addr, prefix_len }
    }
}

const CIDR_HELP: &str =
    "expected an address or network like 10.0.0.0/8, 127.0.0.1 or 2001:db8::/32";

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("invalid network: {CIDR_HELP}");
        let s = s.trim();
        match s.split_once('/') {
            None => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad()),
            Some((a, len)) => {
                let addr = a
                    .parse::<Ipv4Addr>()
                    .map(IpAddr::V4)
                    .or_else(|_| a.parse::<Ipv6Addr>().map(IpAddr::V6))
                    .map_err(|_| bad())?;
                if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                let len: u8 = len.parse().map_err(|_| bad())?;
                IpNet::new(addr, len).ok_or_else(|| format!("prefix length too long: {CIDR_HELP}"))
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = IpNet;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(CIDR_HELP)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IpNet, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_and_contain() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(&ip("10.1.2.3")));
        assert!(!n.contains(&ip("11.0.0.1")));
        assert!(n.contains(&ip("::ffff:10.9.9.9")));
        let host: IpNet = "127.0.0.1".parse().unwrap();
        assert_eq!(host.prefix_len(), 32);
        assert!(host.contains(&ip("127.0.0.1")));
        assert!(!host.contains(&ip("127.0.0.2")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(&ip("8.8.8.8")));
        assert!(!all.contains(&ip("2001:db8::1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(&ip("2001:db8:1::1")));
        assert!(!v6.contains(&ip("2001:db9::1")));
        assert_eq!("::1".parse::<IpNet>().unwrap().prefix_len(), 128);
        assert_eq!(v6.to_string(), "2001:db8::/32");
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0/8",
            "::/129",
            "host",
            "1.2.3.4/+8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
    }
}
