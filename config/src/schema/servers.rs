//! The listening sections: `sftp`, `ftp`, `admin`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use crate::net::IpNet;
use crate::units::PortRange;

/// `sftp:` — the SSH server for SFTP and SCP. Omitting the section disables it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SftpConfig {
    /// Address to listen on.
    #[serde(default = "default_sftp_listen", with = "socket_addr")]
    pub listen: SocketAddr,
    /// The load balancers allowed to send a PROXY v1/v2 header before the SSH banner.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// OpenSSH private key files (resolved against the config folder). When the list is
    /// omitted, `<state_dir>/ssh_host_ed25519_key` is used; a missing ed25519 key is created.
    #[serde(default)]
    pub host_keys: Vec<PathBuf>,
    /// Also offer SHA-1 era algorithms for old clients.
    #[serde(default)]
    pub legacy_algorithms: bool,
}

/// `ftp:` — the FTP/FTPS server. Omitting the section disables it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtpConfig {
    /// Address of the control connection listener.
    #[serde(default = "default_ftp_listen", with = "socket_addr")]
    pub listen: SocketAddr,
    /// The load balancers allowed to send a PROXY v1/v2 header on control connections.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
    /// Ports offered for passive data connections.
    #[serde(default = "default_passive_ports")]
    pub passive_ports: PortRange,
    /// Allow PORT/EPRT, only towards the control connection's own peer address.
    #[serde(default)]
    pub active_mode: bool,
    /// Address (or host name) announced in PASV replies, for NAT and load balancers.
    #[serde(default)]
    pub public_address: Option<String>,
    /// FTPS settings; plain FTP only when absent.
    #[serde(default)]
    pub tls: Option<FtpTlsConfig>,
}

/// `ftp.tls:` — FTPS.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FtpTlsConfig {
    /// How TLS is offered.
    #[serde(default)]
    pub mode: TlsMode,
    /// PEM certificate chain (resolved against the config folder).
    pub cert: PathBuf,
    /// PEM private key (resolved against the config folder).
    pub key: PathBuf,
    /// Listener for implicit FTPS; required with `mode: implicit`, refused otherwise.
    #[serde(default, with = "opt_socket_addr")]
    pub listen_implicit: Option<SocketAddr>,
}

/// How FTPS is offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// `AUTH TLS` is allowed; plain logins too.
    #[default]
    Explicit,
    /// `AUTH TLS` is required before a login.
    Required,
    /// TLS from the first byte, on `listen_implicit`.
    Implicit,
}

/// `proxy_protocol:` on a listener — which peers may put a PROXY v1/v2 header in front of the
/// protocol. Written `false` (the default: no header is read) or as the list of the load
/// balancers' addresses and networks. When set, every connection must come from one of them
/// and start with a header; a connection from any other address is closed unread, so nobody
/// else can claim a client address that bans, `allowed_ips` and active-mode checks believe.
/// `true` is refused: it would trust every peer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyProtocol {
    trusted: Vec<IpNet>,
}

impl ProxyProtocol {
    /// Headers from these networks only.
    pub fn trusting(trusted: Vec<IpNet>) -> Self {
        ProxyProtocol { trusted }
    }

    /// True when the listener reads a PROXY header.
    pub fn is_enabled(&self) -> bool {
        !self.trusted.is_empty()
    }

    /// The networks allowed to send a header (empty: off).
    pub fn trusted(&self) -> &[IpNet] {
        &self.trusted
    }
}

const PROXY_HELP: &str = "expected `false` or the list of your load balancers' addresses allowed to send a PROXY header, e.g. [\"10.0.0.5\", \"10.1.0.0/16\"]";

impl<'de> Deserialize<'de> for ProxyProtocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProxyProtocol;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(PROXY_HELP)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ProxyProtocol, E> {
                if v {
                    Err(E::custom(
                        "`true` would let any client claim any address: list the load balancers allowed to send a PROXY header instead, e.g. [\"10.0.0.5\", \"10.1.0.0/16\"]",
                    ))
                } else {
                    Ok(ProxyProtocol::default())
                }
            }
            fn visit_unit<E: de::Error>(self) -> Result<ProxyProtocol, E> {
                Ok(ProxyProtocol::default())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProxyProtocol, E> {
                let net: IpNet = v.parse().map_err(|_| E::custom(PROXY_HELP))?;
                Ok(ProxyProtocol::trusting(vec![net]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProxyProtocol, A::Error> {
                let mut trusted = Vec::new();
                while let Some(net) = seq.next_element::<IpNet>()? {
                    trusted.push(net);
                }
                if trusted.is_empty() {
                    return Err(de::Error::custom(
                        "an empty list trusts nobody: write `false` to turn the PROXY protocol off, or list your load balancers' addresses",
                    ));
                }
                Ok(ProxyProtocol::trusting(trusted))
            }
        }
        d.deserialize_any(V)
    }
}

/// `admin:` — health and metrics HTTP endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    #[serde(default = "default_admin_listen", with = "socket_addr")]
    pub listen: SocketAddr,
    /// HTTPS instead of plain HTTP, with this certificate.
    #[serde(default)]
    pub tls: Option<AdminTlsConfig>,
}

/// `admin.tls:` — the admin listener speaks HTTPS only.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminTlsConfig {
    /// PEM certificate chain (resolved against the config folder).
    pub cert: PathBuf,
    /// PEM private key (resolved against the config folder).
    pub key: PathBuf,
}

fn default_sftp_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2222))
}

fn default_ftp_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2121))
}

fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9100))
}

pub(crate) fn default_passive_ports() -> PortRange {
    PortRange {
        low: 50000,
        high: 50100,
    }
}

const LISTEN_HELP: &str =
    "expected IP:port like 127.0.0.1:2222 or [::]:2222 (host names are not resolved)";

/// std's own message ("invalid socket address syntax") does not say what to write. The
/// parse happens inside the visitor so that the error is located at the value itself.
struct AddrVisitor;

impl serde::de::Visitor<'_> for AddrVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(LISTEN_HELP)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        v.trim()
            .parse()
            .map_err(|_| E::custom(format!("invalid listen address: {LISTEN_HELP}")))
    }
}

mod socket_addr {
    use std::net::SocketAddr;

    use serde::de::Deserializer;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        d.deserialize_str(super::AddrVisitor)
    }
}

mod opt_socket_addr {
    use std::net::SocketAddr;

    use serde::de::{Deserializer, Visitor};

    struct OptVisitor;

    impl<'de> Visitor<'de> for OptVisitor {
        type Value = Option<SocketAddr>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(super::LISTEN_HELP)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(super::AddrVisitor).map(Some)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        d.deserialize_option(OptVisitor)
    }
}
