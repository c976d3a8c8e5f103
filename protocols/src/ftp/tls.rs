//! The rustls server configurations of the relay: one for control connections (`AUTH TLS`,
//! the implicit listener) and one for data connections, sharing their session cache so that a
//! data connection can resume the control connection's TLS session as clients such as
//! FileZilla expect.

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// Loads a PEM certificate chain and key into a TLS 1.2/1.3 server configuration. Error
/// messages name the files, never their content.
pub(crate) fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    server_config_for("FTPS", cert, key)
}

/// [`server_config`] for another listener (`what` names it in errors: "admin").
pub fn server_config_for(what: &str, cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the {what} certificate {}", cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("invalid PEM in the {what} certificate {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| anyhow::anyhow!("cannot read the {what} private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    // rustls implements nothing older than TLS 1.2; naming both versions keeps it that way
    // whatever the crate's defaults become.
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| format!("the {what} certificate does not match its key"))?;
    Ok(Arc::new(config))
}

/// The configuration of data connections: the control connection's (same certificate, same
/// session cache, so a data connection can resume the control connection's session) but
/// without TLS 1.3 session tickets. A client that sends its file and closes its data socket
/// at once never reads tickets sent after the handshake; its kernel then answers them with a
/// reset, and the end of the upload is lost.
pub(crate) fn data_config(control: &Arc<ServerConfig>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::clone(control);
    config.send_tls13_tickets = 0;
    Arc::new(config)
}
