//! The control-channel relay: it owns the client's connection (plain, `AUTH TLS`, or implicit
//! TLS) and passes command lines to libunftp over a loopback socket, and replies back.
//!
//! It adds what libunftp 0.24 lacks (see the module docs of [`super`]): a line length limit,
//! the pre-login grace time, TLS on the control channel and the `required` policy, checked
//! data connections, MFMT, and a graceful goodbye on shutdown. Everything else passes through
//! untouched.

use super::auth::SessionSlot;
use super::data;
use super::link::ControlLink;
use super::server::Shared;
use super::storage::map_error;
use super::TlsMode;
use crate::auth::Session;
use bucketgate_storage::VPath;
use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A byte stream the relay can talk over: TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The client side of a session.
pub(crate) type BoxIo = Box<dyn Io>;

/// libunftp's replies are trusted, but still bounded.
const MAX_REPLY_LINE: usize = 64 * 1024;

/// A line reader whose `fill` is cancel-safe (so it can sit in `select!`) and whose buffer never
/// grows past `max` bytes without a newline.
struct Lines<T> {
    io: T,
    buf: BytesMut,
    max: usize,
}

/// The line is longer than allowed.
struct TooLong;

impl<T: AsyncRead + Unpin> Lines<T> {
    fn new(io: T, max: usize) -> Self {
        Lines {
            io,
            buf: BytesMut::with_capacity(1024),
            max,
        }
    }

    /// The next complete line in the buffer, without its CR LF.
    fn take_line(&mut self) -> Result<Option<Bytes>, TooLong> {
        match self.buf.iter().position(|b| *b == b'\n') {
            Some(i) if i > self.max => Err(TooLong),
            Some(i) => {
                let mut line = self.buf.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Ok(Some(line.freeze()))
            }
            None if self.buf.len() > self.max => Err(TooLong),
            None => Ok(None),
        }
    }

    /// Reads more bytes; 0 means end of stream. Cancel-safe: `read_buf` reads nothing when
    /// it is dropped before completing.
    async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(4096);
        self.io.read_buf(&mut self.buf).await
    }
}

/// How long an ABOR waits for the transfer to end (libunftp gives up an upload or a download
/// at once once its data connection is cut; a listing is read to its end).
const ABORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The MLST/MLSD facts libunftp gives (it gives all of them whatever OPTS MLST selects).
const MLST_FACTS: &str = "type;size;modify;";

/// What a command forwarded to libunftp waits for, to act on its reply.
#[derive(Debug)]
enum Pending {
    Other,
    /// Sent by the relay itself (the REST before a transfer): the reply is not passed on.
    Hidden,
    /// A NOOP standing in for a command the relay answers itself while earlier replies are
    /// still due, so that replies keep the order of the commands: this text replaces its reply.
    Local(String),
    Login,
    Pasv,
    Epsv,
    Feat,
    Cwd(VPath),
    Transfer,
}

/// One session's relay.
pub(crate) struct Relay {
    shared: Arc<Shared>,
    client: Lines<BoxIo>,
    upstream: Lines<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
    tls_active: bool,
    logged_in: bool,
    prot_private: bool,
    /// The working folder, tracked so that CWD is sent to libunftp folded (it would keep `..`)
    /// and MFMT paths can be made absolute.
    cwd: VPath,
    pending: VecDeque<Pending>,
    /// The code of the multi-line reply being passed through, if any.
    multiline: Option<u16>,
    transfer_active: bool,
    /// ABOR arrived during a transfer: commands wait until the transfer's final reply (then
    /// 426, or 226 if it had completed) and the ABOR's own 226 are sent.
    aborting: bool,
    /// QUIT arrived during a transfer: it is sent to libunftp once the transfer's final reply is
    /// in (RFC 959: the transfer ends and is answered, then 221), and commands wait until then.
    /// libunftp would close at once, and the upload would be lost or done unreported.
    quit_held: bool,
    /// The client's REST offset, for the next transfer command only (libunftp would keep it
    /// after a refused one). Each RETR/STOR/STOU is sent to libunftp with its own REST.
    rest: Option<u64>,
    /// Whether uploads may commit: told of ABOR and of the end of the control connection.
    link: Arc<ControlLink>,
    /// Cuts the latest data connection (ABOR).
    data_abort: Option<data::DataAbort>,
    /// The verb of the latest transfer command.
    transfer_verb: String,
    /// An ABOR waits this long at most for the transfer's end, then the session is closed.
    abort_deadline: Instant,
    data_tasks: JoinSet<()>,
    /// Cancels the passive listener still waiting for its client, when a new data command
    /// replaces it.
    pending_passive: Option<CancellationToken>,
    deadline: Instant,
    /// Left by the authenticator at login.
    login_slot: SessionSlot,
    /// The logged-in session, for checks made before forwarding.
    session: Option<Session>,
}

impl Relay {
    // One call site (`server::session`), which hands over everything a session is made of.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shared: Arc<Shared>,
        client: BoxIo,
        upstream: TcpStream,
        peer: SocketAddr,
        local: SocketAddr,
        tls_active: bool,
        login_slot: SessionSlot,
        link: Arc<ControlLink>,
    ) -> Self {
        let max = shared.opts.max_line_len;
        let deadline = Instant::now() + shared.opts.login_grace;
        Relay {
            shared,
            client: Lines::new(client, max),
            upstream: Lines::new(upstream, MAX_REPLY_LINE),
            peer,
            local,
            tls_active,
            logged_in: false,
            prot_private: false,
            cwd: VPath::root(),
            pending: VecDeque::new(),
            multiline: None,
            transfer_active: false,
            aborting: false,
            quit_held: false,
            rest: None,
            link,
            data_abort: None,
            transfer_verb: String::new(),
            abort_deadline: Instant::now(),
            data_tasks: JoinSet::new(),
            pending_passive: None,
            deadline,
            login_slot,
            session: None,
        }
    }

    fn tls_required(&self) -> bool {
        matches!(&self.shared.opts.tls, Some(t) if t.mode == TlsMode::Required)
    }

    /// Runs the session until either side closes, the login grace runs out, or shutdown.
    pub(crate) async fn run(mut self) {
        self.serve().await;
        // From now on no upload of this session commits (see `link`).
        self.link.close();
        // TLS: send close_notify; a client that went away is not waited for.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), self.client.io.shutdown())
            .await;
        self.data_tasks.abort_all();
    }

    async fn serve(&mut self) {
        let shutdown = self.shared.shutdown.clone();
        loop {
            // Replies first: a command's effects (cwd, login) must be known before the next.
            loop {
                match self.upstream.take_line() {
                    Ok(Some(line)) => {
                        if !self.on_reply(line).await {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(TooLong) => return,
                }
            }
            // While an ABOR is answered or a QUIT waits for the transfer, later commands wait
            // (their replies must follow).
            let next = if self.holding() {
                Ok(None)
            } else {
                self.client.take_line()
            };
            match next {
                Ok(Some(line)) => {
                    if !self.on_command(line).await {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(TooLong) => {
                    tracing::warn!(client = %self.peer, max = self.shared.opts.max_line_len, "ftp: command line too long, closing");
                    self.say("500 Command line too long").await;
                    return;
                }
            }
            tokio::select! {
                r = self.upstream.fill() => {
                    // libunftp ended the session (QUIT, idle timeout): its last reply is sent.
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
                // While an ABOR is answered the commands that follow wait in the buffer; it is
                // still read (up to one line's worth) so that a client that leaves is noticed.
                r = self.client.fill(), if !self.holding() || self.client.buf.len() <= self.client.max => {
                    if !matches!(r, Ok(n) if n > 0) {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(self.abort_deadline), if self.aborting => {
                    tracing::warn!(client = %self.peer, "ftp: the aborted transfer did not end, closing");
                    self.say("421 The aborted transfer did not end: closing the connection").await;
                    return;
                }
                _ = tokio::time::sleep_until(self.deadline), if !self.logged_in => {
                    tracing::info!(client = %self.peer, "ftp: no login within the grace time, closing");
                    self.say("421 Login timeout: closing the connection").await;
                    return;
                }
                _ = shutdown.cancelled(), if !self.transfer_active => {
                    self.say("421 Server shutting down").await;
                    return;
                }
            }
        }
    }

    async fn say(&mut self, line: &str) {
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(line.as_bytes());
        out.extend_from_slice(b"\r\n");
        self.send_client(&out).await;
    }

    async fn send_client(&mut self, bytes: &[u8]) {
        if self.client.io.write_all(bytes).await.is_ok() {
            let _ = self.client.io.flush().await;
        }
    }

    async fn forward(&mut self, line: &[u8], pending: Pending) -> bool {
        self.pending.push_back(pending);
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        self.upstream.io.write_all(&out).await.is_ok()
    }

    /// Handles one client command line; false ends the session.
    async fn on_command(&mut self, line: Bytes) -> bool {
        let line = strip_telnet_commands(line);
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
            "PASV" => return self.forward(b"PASV", Pending::Pasv).await,
            "EPSV" if arg.trim().eq_ignore_ascii_case("ALL") => {
                self.say("200 EPSV ALL accepted").await;
            }
            "EPSV" => return self.forward(b"EPSV", Pending::Epsv).await,
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
                if let Some(refusal) = self.precheck(&verb, arg, 0).await {
                    return self.reply_local(refusal).await;
                }
                return self.forward(&line, Pending::Other).await;
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
                if let Some(refusal) = self.precheck(&verb, arg, rest).await {
                    return self.reply_local(refusal).await;
                }
                self.link.new_transfer();
                self.transfer_verb = verb.clone();
                if let Some(a) = &self.data_abort {
                    a.set_listing(self.listing());
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

    /// PBSZ and PROT (RFC 4217): answered here, since the relay does the data channels' TLS.
    async fn protection(&mut self, verb: &str, arg: &str) {
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
    fn data_tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        match &self.shared.data_tls {
            Some(c) if self.prot_private => Some(tokio_rustls::TlsAcceptor::from(c.clone())),
            _ => None,
        }
    }

    /// Checks a download or listing target before libunftp sees the command: libunftp answers
    /// `150` before it opens the file or folder, then `550`, and clients such as rclone only
    /// recognise "not found" as the first answer. Returns the refusal to send, if any.
    ///
    /// Also what libunftp would get wrong: a REST offset it cannot honour (RETR beyond the end
    /// of the file, STOR at another offset than 0 or the size) is refused with 554 before any
    /// data connection is used, and SIZE or MDTM of a folder with 550 (libunftp answers 213).
    async fn precheck(&mut self, verb: &str, arg: &str, rest: u64) -> Option<String> {
        // Only when no earlier reply is outstanding, so that replies stay in order; before the
        // login libunftp gives the answer itself.
        if !self.pending.is_empty() || self.transfer_active {
            return None;
        }
        let session = self.session.as_ref()?;
        let target = if verb == "LIST" {
            strip_list_options(arg)
        } else {
            arg
        };
        // libunftp's storage error kinds print as their reply line ("550 Permission denied").
        let refusal = |e| Some(map_error(e).kind().to_string());
        let path = match VPath::resolve(&self.cwd, target) {
            Ok(p) => p,
            Err(e) => return refusal(e),
        };
        let fs = &session.fs;
        match verb {
            "RETR" => {
                if let Err(e) = fs.check_read(&path).await {
                    return refusal(e);
                }
                if rest == 0 {
                    return None;
                }
                match fs.stat(&path).await {
                    Ok(e) if rest > e.size => {
                        Some("554 Restart offset beyond the end of the file".into())
                    }
                    _ => None,
                }
            }
            "STOR" if rest > 0 => match fs.stat(&path).await {
                Ok(e) if !e.is_dir() && e.size == rest => None,
                Err(e) if e.kind() != bucketgate_storage::ErrorKind::NotFound => refusal(e),
                _ => {
                    Some("554 Restart offset must be 0 or the file's current size (append)".into())
                }
            },
            "SIZE" | "MDTM" => match fs.stat(&path).await {
                Ok(e) if e.is_dir() => Some("550 Not a plain file".into()),
                _ => None,
            },
            "LIST" | "NLST" | "MLSD" => fs.check_list(&path).await.err().and_then(refusal),
            _ => None,
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

    /// Whether the latest transfer command is a listing.
    fn listing(&self) -> bool {
        matches!(self.transfer_verb.as_str(), "LIST" | "NLST" | "MLSD")
    }

    /// Whether commands wait (an ABOR being answered, a QUIT waiting for the transfer).
    fn holding(&self) -> bool {
        self.aborting || self.quit_held
    }

    /// Whether a transfer command is under way (sent, and its final reply not yet in).
    fn in_transfer(&self) -> bool {
        self.transfer_active || self.pending.iter().any(|p| matches!(p, Pending::Transfer))
    }

    /// Answers a command here, in order: at once when no reply is due, else through a NOOP to
    /// libunftp whose reply this text replaces. During a transfer, at once (libunftp too
    /// answers commands then before the transfer's final reply).
    async fn reply_local(&mut self, text: impl Into<String>) -> bool {
        let text = text.into();
        if self.pending.is_empty() || self.in_transfer() {
            self.say(&text).await;
            true
        } else {
            self.forward(b"NOOP", Pending::Local(text)).await
        }
    }

    /// `AUTH TLS`: answered here, and the TLS handshake done here; libunftp never learns of it
    /// (it only needs its own TLS setup for the data channels, which PROT P switches on).
    async fn auth_tls(&mut self, arg: &str) -> bool {
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

    /// PORT/EPRT: the target is checked and connected to before libunftp is involved.
    async fn active(&mut self, verb: &str, arg: &str) -> bool {
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
        let client_conn = match data::connect_active(self.local.ip(), target).await {
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
        let abort = data::DataAbort::default();
        self.data_abort = Some(abort.clone());
        self.data_tasks
            .spawn(data::active(stand_in, client_conn, tls, abort));
        let cmd = format!("PORT 127,0,0,1,{},{}", port >> 8, port & 0xff);
        self.forward(cmd.as_bytes(), Pending::Other).await
    }

    fn reap(&mut self) {
        while self.data_tasks.try_join_next().is_some() {}
        // Only the latest PASV/EPSV/PORT/EPRT counts: an earlier passive port not connected
        // to yet is released now.
        if let Some(t) = self.pending_passive.take() {
            t.cancel();
        }
    }

    /// Handles one line from libunftp; false ends the session.
    async fn on_reply(&mut self, line: Bytes) -> bool {
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
            // 125/150: a transfer starts; its final reply comes later.
            self.transfer_active = true;
            return self.pass(&line).await;
        }
        let pending = self.pending.pop_front().unwrap_or(Pending::Other);
        let started = self.transfer_active;
        if matches!(pending, Pending::Transfer) || self.pending.is_empty() {
            self.transfer_active = false;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let release_quit = matches!(pending, Pending::Transfer) && self.quit_held;
        let ok = match (pending, code) {
            (Pending::Hidden, _) => true,
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
            (Pending::Transfer, 226) if self.listing() => {
                // libunftp's 226 means it wrote the whole listing, not that the client got it:
                // the relay may still hold the end, and the client may have gone away.
                let delivered = match self.data_abort.clone() {
                    Some(a) => a.delivered().await,
                    None => true,
                };
                if delivered {
                    self.pass(&line).await
                } else {
                    self.say("426 Data connection broken: the listing was not sent in full")
                        .await;
                    true
                }
            }
            (_, 551) => {
                self.say("554 Restart offset not possible: 0 or the file's size for STOR, at most the size for RETR")
                    .await;
                true
            }
            (Pending::Pasv, 227) => {
                let reply = self.open_passive(&text, false);
                self.say(&reply).await;
                true
            }
            (Pending::Epsv, 229) => {
                let reply = self.open_passive(&text, true);
                self.say(&reply).await;
                true
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

    async fn pass(&mut self, line: &[u8]) -> bool {
        let mut out = Vec::with_capacity(line.len() + 2);
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
        self.send_client(&out).await;
        true
    }

    /// libunftp opened a passive port on loopback: open the public one and announce it.
    fn open_passive(&mut self, reply: &str, extended: bool) -> String {
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
        let listener = match data::bind_passive(local_ip, &self.shared.opts.passive_ports) {
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
        let abort = data::DataAbort::default();
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

impl Drop for Relay {
    fn drop(&mut self) {
        // Also when the session's task is cut (shutdown grace over): no upload commits after.
        self.link.close();
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

/// The path of `LIST [-options] [path]` (libunftp skips the options the same way).
fn strip_list_options(arg: &str) -> &str {
    let mut rest = arg;
    while rest.starts_with('-') {
        match rest.split_once(' ') {
            Some((_, r)) => rest = r,
            None => return "",
        }
    }
    rest
}

/// Commands that libunftp refuses, closing the session, when anything follows them.
const NO_ARGUMENT: &[&str] = &[
    "NOOP", "FEAT", "PWD", "XPWD", "QUIT", "BYE", "ABOR", "STOU", "CCC", "PASV",
];

/// The 501 for a line that libunftp's parser would refuse; libunftp answers it too but then
/// ends the session, so such lines never reach it.
fn syntax_error(verb: &str, arg: &str, line: &str) -> Option<&'static str> {
    let blank = arg.trim().is_empty();
    if line.contains('\r') {
        return Some("501 Bare carriage return in the command line");
    }
    match verb {
        _ if NO_ARGUMENT.contains(&verb) && !blank => Some("501 This command takes no argument"),
        "RETR" | "STOR" | "APPE" | "DELE" | "RMD" | "RNFR" | "RNTO" | "MKD" | "XMKD" | "SIZE"
        | "MDTM"
            if blank =>
        {
            Some("501 A path is required")
        }
        "STRU" if !matches!(arg.trim().to_ascii_uppercase().as_str(), "F" | "R" | "P") => {
            Some("501 STRU takes F, R or P")
        }
        "MODE" if !matches!(arg.trim().to_ascii_uppercase().as_str(), "S" | "B" | "C") => {
            Some("501 MODE takes S, B or C")
        }
        "SITE" => {
            let (sub, rest) = arg.trim().split_once(' ').unwrap_or((arg.trim(), ""));
            (sub.eq_ignore_ascii_case("MD5") && rest.trim().is_empty())
                .then_some("501 A path is required")
        }
        _ => None,
    }
}

/// Drops Telnet commands (IAC IP, IAC DM: what some clients send before ABOR) from the start
/// of a command line.
fn strip_telnet_commands(line: Bytes) -> Bytes {
    let mut start = 0;
    while line.len() >= start + 2 && line[start] == 0xff && line[start + 1] >= 0xf0 {
        start += 2;
    }
    line.slice(start..)
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
        assert_eq!(reply_code(b"211-Features"), Some((211, b'-')));
        assert_eq!(reply_code(b"226 ok"), Some((226, b' ')));
        assert_eq!(reply_code(b" MLST"), None);
    }
}
