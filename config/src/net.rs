//! CIDR networks for `allowed_ips` and the ban safelist.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// An IP network written `10.0.0.0/8` or `2001:db8::/32`; a bare address means one host
/// (`/32` or `/128`). A thin layer over `ipnet::IpNet` that adds the bare-address form, the
/// IPv4-mapped match, our error messages and YAML deserialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet(ipnet::IpNet);

impl IpNet {
    /// A network from an address and a prefix length; `None` when the length is too long.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        ipnet::IpNet::new(addr, prefix_len).ok().map(IpNet)
    }

    /// The address as written (host bits are kept, and ignored by [`IpNet::contains`]).
    pub fn addr(&self) -> IpAddr {
        self.0.addr()
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    /// True when `ip` is inside this network. An IPv4-mapped IPv6 peer (`::ffff:10.0.0.1`, as
    /// a dual-stack listener reports IPv4 clients) matches the IPv4 networks.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(*ip, IpAddr::V4),
            IpAddr::V4(_) => *ip,
        };
        self.0.contains(&ip)
    }
}

impl From<IpAddr> for IpNet {
    fn from(addr: IpAddr) -> Self {
        IpNet(ipnet::IpNet::from(addr))
    }
}

impl From<IpNet> for ipnet::IpNet {
    fn from(n: IpNet) -> Self {
        n.0
    }
}

const CIDR_HELP: &str =
    "expected an address or network like 10.0.0.0/8, 127.0.0.1 or 2001:db8::/32";

impl FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let parsed = if s.contains('/') {
            s.parse::<ipnet::IpNet>().map(IpNet).ok()
        } else {
            s.parse::<IpAddr>().map(IpNet::from).ok()
        };
        parsed.ok_or_else(|| {
            // ipnet says only "invalid IP address syntax": a valid address with a length of
            // 0-255 that parses no further is a length too long for its family.
            let too_long = s.split_once('/').is_some_and(|(a, len)| {
                a.parse::<IpAddr>().is_ok()
                    && len.bytes().all(|b| b.is_ascii_digit())
                    && len.parse::<u8>().is_ok()
            });
            if too_long {
                format!("prefix length too long: {CIDR_HELP}")
            } else {
                format!("invalid network: {CIDR_HELP}")
            }
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
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
        let msg = |s: &str| s.parse::<IpNet>().unwrap_err();
        assert_eq!(
            msg("10.0.0.0/33"),
            format!("prefix length too long: {CIDR_HELP}")
        );
        assert_eq!(
            msg("::/129"),
            format!("prefix length too long: {CIDR_HELP}")
        );
        for bad in [
            "10.0.0.0/999",
            "10.0.0.0/",
            "1.2.3.4/+8",
            "host",
            "10.0.0/8",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(msg(bad), format!("invalid network: {CIDR_HELP}"), "{bad:?}");
        }
        // Host bits are kept as written, and ignored when matching.
        let n: IpNet = "10.1.2.3/8".parse().unwrap();
        assert_eq!(n.to_string(), "10.1.2.3/8");
        assert!(n.contains(&ip("10.200.0.1")));
    }
}
