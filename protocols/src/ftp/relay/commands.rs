//! The client's commands: those the relay answers or changes because libunftp lacks them or
//! gets them wrong, and the transfer commands, prepared (see [`crate::ftp::prepare`]) before
//! libunftp sees them. Everything else is forwarded as it came.

use super::lines::{rfc775_aliases, strip_telnet_commands, syntax_error, NO_ARGUMENT};
use super::{Pending, Relay};
use crate::ftp::prepare;
use bucketgate_storage::path::names_a_folder;
use bucketgate_storage::VPath;
use bytes::Bytes;
use tokio::time::Instant;

/// How long an ABOR waits for the transfer to end (libunftp gives up an upload or a download
/// at once once its data connection is cut; a listing is read to its end).
const ABORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// HELP's answer: the commands served (RFC 959 and its extensions), eight to a line; the TLS
/// ones and the final line follow (see `on_command`).
const HELP: &str = "214-The following commands are recognized:\r\n \
    ABOR ALLO APPE CDUP CWD  DELE EPRT EPSV\r\n \
    FEAT HELP LIST MDTM MFMT MKD  MLSD MLST\r\n \
    MODE NLST NOOP OPTS PASS PASV PORT PWD\r\n \
    QUIT REST RETR RMD  RNFR RNTO SIZE STAT\r\n \
    STOR STOU STRU SYST TYPE USER XCUP XCWD\r\n \
    XMKD XPWD XRMD";

/// The MLST/MLSD facts libunftp gives (it gives all of them whatever OPTS MLST selects).
const MLST_FACTS: &str = "type;size;modify;";

impl Relay {
    /// Handles one client command line; false ends the session.
    pub(super) async fn on_command(&mut self, line: Bytes) -> bool {
        let line = rfc775_aliases(strip_telnet_commands(line));
        let Ok(text) = std::str::from_utf8(&line) else {
            self.say("553 Commands and names must be valid UTF-8").await;
            return true;
        };
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        let verb = verb.to_ascii_uppercase();
        // libunftp ends the session on any line its parser refuses (although it answers 501
        // first): such lines are answered here and never reach it.
        if let Some(refusal) = syntax_error(&verb, arg, text) {
            return self.reply_local(refusal).await;
        }
        // One command at a time: a command waits until every reply due to the earlier ones is
        // in. libunftp runs some commands in tasks of their own (PASS, DELE, MKD, RNFR, SIZE,
        // MDTM, STAT...) and answers the others at once, so a pipelined `MKD a`, `NOOP` was
        // answered 200 then 257, and each reply was taken for another command's. Waiting also
        // means a prepared command sees the login and the working folder libunftp will (a
        // `CWD` sent just before has been answered). The client's pipelining is kept: its
        // lines wait here, and each reply goes out as soon as it is in.
        // During a transfer only ABOR, QUIT and STAT are taken at once (RFC 959); any other
        // command waits for the transfer's final reply, so that its own reply follows it (a
        // client that reset the data connection and sent NOOP would otherwise read libunftp's
        // 200 first and the transfer's 426 as the answer to its next command).
        let urgent = self.in_transfer() && matches!(verb.as_str(), "ABOR" | "QUIT" | "STAT");
        if self.replies_due() && !urgent {
            self.deferred = Some(line.clone());
            return true;
        }
        match verb.as_str() {
            "AUTH" => return self.auth_tls(arg).await,
            "CCC" if self.shared.tls.is_some() => {
                self.say("534 The control channel stays encrypted").await;
            }
            "USER" | "PASS" if self.tls_required() && !self.tls_active => {
                self.say("530 TLS is required: send AUTH TLS first").await;
            }
            "PASV" | "EPSV" | "PORT" | "EPRT" if self.tls_required() && !self.prot_private => {
                self.say("534 Data connections must be encrypted: send PBSZ 0 and PROT P")
                    .await;
            }
            "PASV" => return self.passive(false).await,
            "EPSV" if arg.trim().eq_ignore_ascii_case("ALL") => {
                self.say("200 EPSV ALL accepted").await;
            }
            "EPSV" => return self.passive(true).await,
            "PORT" | "EPRT" => return self.active(&verb, arg).await,
            "LPRT" | "LPSV" => self.say("502 Use EPSV or EPRT").await,
            "USER" | "PASS" => return self.forward(&line, Pending::Login).await,
            "FEAT" => return self.forward(b"FEAT", Pending::Feat).await,
            "PBSZ" | "PROT" => self.protection(&verb, arg).await,
            "OPTS" => return self.opts(arg).await,
            "REST" => {
                let reply = match arg.trim().parse::<u64>() {
                    _ if !self.logged_in => "530 Please log in first".to_string(),
                    Ok(n) => {
                        self.rest = Some(n);
                        format!("350 Restarting at {n}: send STOR or RETR")
                    }
                    Err(_) => "501 REST needs a byte offset".to_string(),
                };
                return self.reply_local(reply).await;
            }
            "ABOR" if self.in_transfer() => {
                // RFC 959: the transfer's own reply (426, or 226 if it had completed) comes
                // first, then the ABOR's 226; see `on_reply`. The upload must not commit.
                self.link.abort_transfer();
                if let Some(a) = &self.data_abort {
                    a.abort();
                }
                self.rest = None;
                self.aborting = true;
                self.abort_deadline = Instant::now() + ABORT_TIMEOUT;
            }
            "QUIT" | "BYE" if self.in_transfer() => self.quit_held = true,
            "SIZE" | "MDTM" => {
                if let Some(refusal) = self.prepare(&verb, arg, 0).await {
                    return self.reply_local(refusal).await;
                }
                return self.forward(&line, Pending::Checked).await;
            }
            "CWD" | "XCWD" | "CDUP" | "XCUP" => {
                let target = if verb.ends_with("UP") { ".." } else { arg };
                match VPath::resolve(&self.cwd, target) {
                    Ok(p) => {
                        let cmd = format!("CWD {p}");
                        return self.forward(cmd.as_bytes(), Pending::Cwd(p)).await;
                    }
                    Err(_) => self.say("553 Invalid folder name").await,
                }
            }
            // libunftp looks up MLST's path as given, not in the working folder (ncftp's `MLST
            // name` in a subfolder was answered for `/name`): it goes with the path resolved
            // here, as CWD and MFMT do.
            "MLST" if !arg.is_empty() => match VPath::resolve(&self.cwd, arg) {
                Ok(p) => {
                    let cmd = format!("MLST {p}");
                    return self.forward(cmd.as_bytes(), Pending::Other).await;
                }
                Err(_) => self.say("553 Invalid file name").await,
            },
            // STAT with a path is answered here (libunftp, too, took the path from the root,
            // answered 200 and refused a file with 451); STAT alone is the session's status.
            "STAT" if !arg.is_empty() && !self.in_transfer() => {
                let reply = match &self.session {
                    Some(session) if self.logged_in => {
                        let max = self.shared.opts.max_list_entries;
                        prepare::stat_listing(&session.fs, &self.cwd, arg, max).await
                    }
                    _ => "530 Please log in first".to_string(),
                };
                return self.reply_local(reply).await;
            }
            "MFMT" => {
                let parsed = arg
                    .split_once(' ')
                    .and_then(|(t, p)| VPath::resolve(&self.cwd, p).ok().map(|p| (t, p)));
                match parsed {
                    _ if !self.logged_in => self.say("530 Please log in first").await,
                    Some((t, p)) => {
                        let cmd = format!("SITE MFMT {t} {p}");
                        return self.forward(cmd.as_bytes(), Pending::Other).await;
                    }
                    None => {
                        self.say("501 Usage: MFMT YYYYMMDDHHMMSS path").await;
                    }
                }
            }
            "RETR" | "STOR" | "APPE" | "STOU" | "LIST" | "NLST" | "MLSD" => {
                // A REST offset is for the next transfer command only, whatever its outcome.
                let rest = self.rest.take().unwrap_or(0);
                if self.logged_in && self.data_next.as_ref().is_some_and(|t| t.is_closed()) {
                    // The client never connected to its passive port (see `data::serve`).
                    self.data_next = None;
                    return self
                        .reply_local("425 The data connection timed out: send PASV or EPSV again")
                        .await;
                }
                if let Some(refusal) = self.prepare(&verb, arg, rest).await {
                    return self.reply_local(refusal).await;
                }
                if self.logged_in {
                    // libunftp's data connection, made for this command alone (see `data`).
                    match self.take_data().await {
                        Ok((port, connected)) => {
                            if !self
                                .forward(port.as_bytes(), Pending::Port(connected))
                                .await
                            {
                                return false;
                            }
                        }
                        Err(refusal) => {
                            self.link.set_ready(None);
                            return self.reply_local(refusal).await;
                        }
                    }
                }
                self.link.new_transfer();
                self.transfer_verb = verb.clone();
                if let Some(a) = &self.data_abort {
                    a.begin(self.listing());
                }
                if self.logged_in && matches!(verb.as_str(), "RETR" | "STOR" | "STOU") {
                    // libunftp keeps an offset after a failed transfer; each transfer gets its
                    // own, 0 when the client sent none.
                    let cmd = format!("REST {rest}");
                    if !self.forward(cmd.as_bytes(), Pending::Hidden).await {
                        return false;
                    }
                }
                return self.forward(&line, Pending::Transfer).await;
            }
            // A name ending in `/` is a folder's (see `UserFs::resolve_entry`): DELE and RNFR
            // of `file/` acted on `file`, and RNTO `newdir/` gave a file that name.
            "DELE" | "RNFR" | "RNTO" if self.logged_in => {
                if verb == "RNFR" {
                    self.rename_from = Some(arg.to_string());
                }
                if let Some(refusal) = self.folder_name_check(&verb, arg).await {
                    return self.reply_local(refusal).await;
                }
                let pending = match verb.as_str() {
                    "RNFR" => Pending::Other,
                    "RNTO" => Pending::Rename,
                    _ => Pending::Refusable,
                };
                return self.forward(&line, pending).await;
            }
            "MKD" | "XMKD" | "RMD" if self.logged_in => {
                return self.forward(&line, Pending::Refusable).await;
            }
            // libunftp answers "200 Always in binary mode" to every TYPE; files are sent as
            // they are, which ASCII (A, A N: as vsftpd and most servers on a disk do) and
            // binary (I, L 8) clients expect. EBCDIC, other byte sizes and the Telnet or ASA
            // formats would need a conversion that is not made: refused, not pretended.
            "TYPE" if self.logged_in && !type_is_plain(arg) => {
                return self
                    .reply_local("504 Only TYPE A (non-print), I and L 8 are supported")
                    .await;
            }
            // libunftp's HELP named itself and its version ("Powered by libunftp: 0.24.0"):
            // the relay answers with the commands, as servers on a disk do, and no version.
            "HELP" => {
                let tls = if self.shared.tls.is_some() {
                    "\r\n AUTH PBSZ PROT"
                } else {
                    ""
                };
                return self
                    .reply_local(format!("{HELP}{tls}\r\n214 Help OK"))
                    .await;
            }
            "STRU" | "MODE" => {
                // libunftp takes the upper-case letter only.
                let cmd = format!("{verb} {}", arg.trim().to_ascii_uppercase());
                return self.forward(cmd.as_bytes(), Pending::Other).await;
            }
            _ if NO_ARGUMENT.contains(&verb.as_str()) => {
                // libunftp refuses (and hangs up on) trailing blanks.
                return self.forward(verb.as_bytes(), Pending::Other).await;
            }
            _ => return self.forward(&line, Pending::Other).await,
        }
        true
    }

    /// Prepares a command for the logged-in user (see [`prepare`]); before the login libunftp
    /// answers it. Returns the refusal to send instead of forwarding it, if any.
    async fn prepare(&mut self, verb: &str, arg: &str, rest: u64) -> Option<String> {
        let session = self.session.as_ref()?;
        prepare::prepare(&session.fs, &self.link, &self.cwd, verb, arg, rest).await
    }

    /// DELE, RNFR and RNTO of a name ending in `/`: the name must be a folder's (for RNTO, the
    /// RNFR's). The refusal to send, if any.
    async fn folder_name_check(&mut self, verb: &str, arg: &str) -> Option<String> {
        let session = self.session.as_ref()?;
        let must_be_folder = match verb {
            "RNTO" if names_a_folder(arg) => {
                let from = self.rename_from.clone().unwrap_or_default();
                if names_a_folder(&from) {
                    return None;
                }
                format!("{}/", from.trim_end())
            }
            _ if names_a_folder(arg) => arg.to_string(),
            _ => return None,
        };
        match session.fs.resolve_entry(&self.cwd, &must_be_folder).await {
            Ok(_) => None,
            Err(e) => Some(crate::ftp::storage::map_error(e).kind().to_string()),
        }
    }

    /// OPTS (RFC 2389): UTF8 (names are always UTF-8) and MLST fact selection (libunftp always
    /// gives the same facts, so the reply names those).
    async fn opts(&mut self, arg: &str) -> bool {
        let arg = arg.trim();
        let (name, value) = arg
            .split_once(' ')
            .map(|(n, v)| (n, v.trim()))
            .unwrap_or((arg, ""));
        let reply = match name.to_ascii_uppercase().as_str() {
            "UTF8" | "UTF-8" if value.is_empty() || value.eq_ignore_ascii_case("ON") => {
                "200 Always in UTF-8 mode".to_string()
            }
            "UTF8" | "UTF-8" => "504 Names are always UTF-8".to_string(),
            "MLST" => format!("200 MLST OPTS {MLST_FACTS}"),
            _ => "501 Unknown option".to_string(),
        };
        self.reply_local(reply).await
    }
}

/// TYPE's argument names a representation sent as the bytes are (see `on_command`).
fn type_is_plain(arg: &str) -> bool {
    let words: Vec<String> = arg
        .split_ascii_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    matches!(words.as_slice(), ["A"] | ["A", "N"] | ["I"] | ["L", "8"])
}

#[cfg(test)]
mod tests {
    use super::type_is_plain;

    #[test]
    fn types_sent_as_the_bytes_are() {
        for a in ["A", "a", "A N", "I", "i", "L 8", "l 8"] {
            assert!(type_is_plain(a), "{a}");
        }
        for a in ["E", "E N", "A T", "A C", "L 7", "L", "", "X"] {
            assert!(!type_is_plain(a), "{a}");
        }
    }
}
