//! TLS of the control channel (`AUTH TLS`, or implicit from the first byte) and the protection
//! of data connections (`PBSZ`, `PROT`). libunftp runs without TLS and never learns of it: the
//! relay is the TLS endpoint of the control connection and of every data connection it splices.

use super::Relay;
use crate::ftp::TlsMode;

impl Relay {
    pub(super) fn tls_required(&self) -> bool {
        matches!(&self.shared.opts.tls, Some(t) if t.mode == TlsMode::Required)
    }

    /// PBSZ and PROT (RFC 4217): answered here, since the relay does the data channels' TLS.
    pub(super) async fn protection(&mut self, verb: &str, arg: &str) {
        if self.shared.tls.is_none() {
            self.say("502 TLS is not configured").await;
            return;
        }
        if !self.tls_active {
            self.say("503 Send AUTH TLS first").await;
            return;
        }
        let arg = arg.trim().to_ascii_uppercase();
        match (verb, arg.as_str()) {
            ("PBSZ", _) => self.say("200 PBSZ=0").await,
            ("PROT", "P") => {
                self.prot_private = true;
                self.say("200 Data connections will be encrypted").await;
            }
            ("PROT", "C") => {
                self.prot_private = false;
                self.say("200 Data connections will be in clear").await;
            }
            _ => self.say("536 Only PROT C and PROT P are supported").await,
        }
    }

    /// The TLS server side of the next data connection, after PROT P.
    pub(super) fn data_tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        match &self.shared.data_tls {
            Some(c) if self.prot_private => Some(tokio_rustls::TlsAcceptor::from(c.clone())),
            _ => None,
        }
    }

    /// `AUTH TLS`: answered here, and the TLS handshake done here; libunftp never learns of it
    /// (it only needs its own TLS setup for the data channels, which PROT P switches on).
    pub(super) async fn auth_tls(&mut self, arg: &str) -> bool {
        let Some(config) = self.shared.tls.clone() else {
            self.say("502 TLS is not configured").await;
            return true;
        };
        if self.tls_active {
            self.say("503 TLS is already active").await;
            return true;
        }
        if !matches!(
            arg.trim().to_ascii_uppercase().as_str(),
            "TLS" | "TLS-C" | "SSL"
        ) {
            self.say("504 Only AUTH TLS is supported").await;
            return true;
        }
        if !self.client.buf.is_empty() {
            // Commands sent in clear after AUTH would be taken as if they came over TLS
            // (the STARTTLS injection flaw): refuse the session.
            tracing::warn!(client = %self.peer, "ftp: data after AUTH TLS before the handshake, closing");
            return false;
        }
        self.say("234 AUTH TLS successful").await;
        let plain = std::mem::replace(
            &mut self.client.io,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let grace = self.shared.opts.login_grace;
        match tokio::time::timeout(grace, acceptor.accept(plain)).await {
            Ok(Ok(tls)) => {
                self.client.io = Box::new(tls);
                self.tls_active = true;
                true
            }
            Ok(Err(e)) => {
                tracing::info!(client = %self.peer, error = %e, "ftp: TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::info!(client = %self.peer, "ftp: TLS handshake timed out");
                false
            }
        }
    }
}
