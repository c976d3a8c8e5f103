//! The SSH client side of the tests: the gateway's host key is generated per test, so the
//! clients trust whatever key the server shows.

/// A russh client handler that accepts any host key.
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
