//! libunftp's replies, passed on to the client in the order of the commands, with what the
//! relay adds: its own answers queued among them, the transfer's final reply held for ABOR and
//! QUIT, a listing's 226 only once the client has it all, and FEAT completed.

use super::Relay;
use bucketgate_storage::VPath;
use bytes::Bytes;

/// What a command forwarded to libunftp waits for, to act on its reply.
#[derive(Debug)]
pub(super) enum Pending {
    Other,
    /// DELE, MKD, RMD: a refusal's text is the storage's reason when the adapter noted one
    /// (see [`ControlLink::note_refusal`](crate::ftp::link::ControlLink::note_refusal)).
    Refusable,
    /// RNTO: as [`Pending::Refusable`]; and libunftp's 450 to an RNTO with no RNFR before it
    /// (a transient error: a client would try it again and again) is RFC 959's 503.
    Rename,
    /// Sent by the relay itself (the REST before a transfer): the reply is not passed on.
    Hidden,
    /// The PORT to the stand-in port before a transfer, sent by the relay itself: the reply is
    /// not passed on, but told to the data connection's task (whether libunftp connected).
    Port(tokio::sync::oneshot::Sender<bool>),
    /// A NOOP standing in for a command the relay answers itself while earlier replies are
    /// still due, so that replies keep the order of the commands: this text replaces its reply.
    Local(String),
    Login,
    Feat,
    Cwd(VPath),
    /// SIZE or MDTM, prepared (see [`crate::ftp::prepare`]).
    Checked,
    Transfer,
}

impl Relay {
    /// Handles one line from libunftp; false ends the session.
    pub(super) async fn on_reply(&mut self, line: Bytes) -> bool {
        let code = reply_code(&line);
        let is_final = match (self.multiline, code) {
            (Some(m), Some((c, b' '))) if m == c => {
                self.multiline = None;
                true
            }
            (Some(_), _) => false,
            (None, Some((c, b'-'))) => {
                self.multiline = Some(c);
                false
            }
            (None, Some(_)) => true,
            (None, None) => false,
        };
        if !is_final
            && matches!(self.pending.front(), Some(Pending::Feat))
            && line.as_ref() == b" MLST"
        {
            // RFC 3659 lists the facts (all given by default) with the feature.
            return self.pass(b" MLST type*;size*;modify*;").await;
        }
        let Some((code, _)) = code.filter(|_| is_final) else {
            return self.pass(&line).await;
        };
        if code < 200 {
            // 125/150: a transfer starts; its final reply comes later. Passed once a TLS
            // handshake the client has begun on the data connection is over (see
            // `DataAbort::handshake_done`).
            self.transfer_active = true;
            if let Some(a) = self.data_abort.clone() {
                a.handshake_done().await;
            }
            return self.pass(&line).await;
        }
        let pending = self.pending.pop_front().unwrap_or(Pending::Other);
        if matches!(pending, Pending::Transfer | Pending::Checked) {
            // The prepared command is answered: what it did not use is let go.
            self.link.set_ready(None);
        }
        let started = self.transfer_active;
        if matches!(pending, Pending::Transfer) || self.pending.is_empty() {
            self.transfer_active = false;
        }
        let release_quit = matches!(pending, Pending::Transfer) && self.quit_held;
        // A reason noted for this command, forgotten by any other reply (libunftp may refuse a
        // command before calling the adapter: then no reason is noted, and its own text goes).
        let reason = self.link.take_refusal();
        let ok = match (pending, code) {
            (Pending::Refusable | Pending::Rename, 400..=599) if reason.is_some() => {
                let reason = reason.unwrap_or_default();
                self.say(&format!("{code} {reason}")).await;
                true
            }
            (Pending::Rename, 450) => {
                // No storage error noted: libunftp refused it before asking (no RNFR).
                self.say("503 Send RNFR first").await;
                true
            }
            (Pending::Hidden, _) => true,
            (Pending::Port(connected), code) => {
                let _ = connected.send((200..300).contains(&code));
                true
            }
            (Pending::Local(reply), _) => {
                self.say(&reply).await;
                true
            }
            (Pending::Transfer, _) if self.aborting => {
                self.aborting = false;
                let upload = matches!(self.transfer_verb.as_str(), "STOR" | "APPE" | "STOU");
                if !started || (upload && code == 226) {
                    // It never started, or the upload was committed before the ABOR: its own
                    // reply stands. A download or listing was cut on the client's side, so
                    // libunftp's 226 does not mean the client has it all.
                    self.pass(&line).await;
                } else {
                    self.say("426 Transfer aborted: nothing was stored or sent in full")
                        .await;
                }
                self.say("226 ABOR done").await;
                true
            }
            (Pending::Transfer, 200..=299)
                if self.transfer_verb == "RETR"
                    && match self.data_abort.clone() {
                        Some(a) => a.refused().await,
                        None => false,
                    } =>
            {
                // libunftp wrote the file into a connection the relay refused to carry.
                self.say("426 Data connection refused: the file was not sent")
                    .await;
                true
            }
            (Pending::Transfer, 226) if self.listing() || self.transfer_verb == "RETR" => {
                // libunftp's 226 means it wrote the whole listing or file into its side of the
                // data connection, not that the client got it: the relay may still hold the
                // end, and the client may have gone away (or never finished its TLS handshake:
                // a small file fits in the kernel's buffers, and libunftp answered 226 for a
                // download nobody received).
                let delivered = match self.data_abort.clone() {
                    Some(a) => a.delivered().await,
                    None => Some(true),
                };
                match (delivered, self.listing()) {
                    (Some(true), _) | (None, false) => self.pass(&line).await,
                    (_, true) => {
                        self.say("426 Data connection broken: the listing was not sent in full")
                            .await;
                        true
                    }
                    (Some(false), false) => {
                        self.say("426 Data connection broken: the file was not sent in full")
                            .await;
                        true
                    }
                }
            }
            (Pending::Feat, 211) => {
                self.say(" MFMT").await;
                if self.shared.tls.is_some() {
                    // libunftp runs without TLS; the relay provides it.
                    self.say(" AUTH TLS").await;
                    self.say(" PBSZ").await;
                    self.say(" PROT").await;
                }
                self.pass(&line).await
            }
            (Pending::Cwd(p), 250) => {
                self.cwd = p;
                self.pass(&line).await
            }
            (Pending::Login, 230) => {
                self.logged_in = true;
                self.session = self.login_slot.lock().expect("lock").take();
                self.pass(&line).await
            }
            _ => self.pass(&line).await,
        };
        if ok && release_quit {
            self.quit_held = false;
            return self.forward(b"QUIT", Pending::Other).await;
        }
        ok
    }

    pub(super) async fn pass(&mut self, line: &[u8]) -> bool {
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        self.send_client(&out).await;
        true
    }

    /// Answers a command here, in order: at once when no reply is due, else through a NOOP to
    /// libunftp whose reply this text replaces. During a transfer, at once (libunftp too
    /// answers commands then before the transfer's final reply).
    pub(super) async fn reply_local(&mut self, text: impl Into<String>) -> bool {
        let text = text.into();
        if self.pending.is_empty() || self.in_transfer() {
            self.say(&text).await;
            true
        } else {
            self.forward(b"NOOP", Pending::Local(text)).await
        }
    }
}

/// The code of a reply line and the character after it (`' '` final, `'-'` multi-line).
fn reply_code(line: &[u8]) -> Option<(u16, u8)> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let sep = line.get(3).copied().unwrap_or(b' ');
    if sep != b' ' && sep != b'-' {
        return None;
    }
    let code =
        (line[0] - b'0') as u16 * 100 + (line[1] - b'0') as u16 * 10 + (line[2] - b'0') as u16;
    Some((code, sep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reply_codes() {
        assert_eq!(reply_code(b"211-Features"), Some((211, b'-')));
        assert_eq!(reply_code(b"226 ok"), Some((226, b' ')));
        assert_eq!(reply_code(b" MLST"), None);
    }
}
