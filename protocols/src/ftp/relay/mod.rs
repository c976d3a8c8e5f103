//! The control-channel relay: it owns the client's connection (plain, `AUTH TLS`, or implicit
//! TLS) and passes command lines to libunftp over a loopback socket, and replies back (why the
//! hop exists: see [`super`]). It adds what libunftp 0.24 lacks, one concept per file:
//!
//! - [`lines`]: the command line reader with its length limit, and the lines libunftp's parser
//!   would refuse by closing the session;
//! - [`tls`]: `AUTH TLS`, `PBSZ`, `PROT`, and the TLS of each data connection;
//! - [`address`]: PASV/EPSV/PORT/EPRT, answered here, and the loopback PORT libunftp gets
//!   before each transfer command;
//! - [`commands`]: the commands libunftp lacks or gets wrong (REST, MFMT, OPTS, CWD folding,
//!   ABOR and QUIT during a transfer), and the transfer commands, which [`super::prepare`]
//!   decides before libunftp sees them;
//! - [`replies`]: libunftp's replies, passed on in the order of the commands.
//!
//! This file runs the session: the pre-login grace time, shutdown, and the order of things.
//! Everything it does not handle passes through untouched.

mod address;
mod commands;
mod lines;
mod replies;
mod tls;

use super::auth::SessionSlot;
use super::data;
use super::link::ControlLink;
use super::FtpOptions;
use crate::auth::Session;
use bucketgate_storage::VPath;
use bytes::Bytes;
use lines::{Lines, TooLong, MAX_REPLY_LINE};
use replies::Pending;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A byte stream the relay can talk over: TCP, or TLS over TCP.
pub(crate) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// The client side of a session.
pub(crate) type BoxIo = Box<dyn Io>;

/// What every relay of one server shares.
pub(crate) struct Shared {
    pub(crate) opts: FtpOptions,
    /// Parsed once; the relay is the TLS endpoint of control and data connections.
    pub(crate) tls: Option<Arc<rustls::ServerConfig>>,
    /// The same for data connections, without TLS 1.3 session tickets (see `tls::data_config`).
    pub(crate) data_tls: Option<Arc<rustls::ServerConfig>>,
    pub(crate) shutdown: CancellationToken,
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
    /// A command to prepare (see [`super::prepare`]) that waits for the replies still due.
    deferred: Option<Bytes>,
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
    /// Whether uploads may commit (told of ABOR and of the end of the control connection), and
    /// what [`super::prepare`] found for the storage adapter.
    link: Arc<ControlLink>,
    /// Cuts the latest data connection (ABOR).
    data_abort: Option<data::DataAbort>,
    /// The verb of the latest transfer command.
    transfer_verb: String,
    /// The name of the latest RNFR, as the client sent it (a trailing `/` says "a folder").
    rename_from: Option<String>,
    /// An ABOR waits this long at most for the transfer's end, then the session is closed.
    abort_deadline: Instant,
    data_tasks: JoinSet<()>,
    /// Cancels the data connection not used yet, when a new data command replaces it.
    pending_passive: Option<CancellationToken>,
    /// Hands the latest data connection libunftp's side, for the transfer command that uses it
    /// (see [`data`]); `None` once used.
    data_next: Option<tokio::sync::oneshot::Sender<crate::ftp::data::StandIn>>,
    deadline: Instant,
    /// Left by the authenticator at login.
    login_slot: SessionSlot,
    /// The logged-in session, for the checks made before forwarding.
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
            deferred: None,
            aborting: false,
            quit_held: false,
            rest: None,
            link,
            data_abort: None,
            transfer_verb: String::new(),
            rename_from: None,
            abort_deadline: Instant::now(),
            data_tasks: JoinSet::new(),
            pending_passive: None,
            data_next: None,
            deadline,
            login_slot,
            session: None,
        }
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
            // While an ABOR is answered, a QUIT waits for the transfer, or a command waits to be
            // prepared, later commands wait (their replies must follow).
            let next = if self.holding() {
                Ok(None)
            } else if let Some(line) = self.deferred.take() {
                Ok(Some(line))
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
                // While commands wait they stay in the buffer; it is still read (up to one
                // line's worth) so that a client that leaves is noticed.
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

    /// Whether commands wait (an ABOR being answered, a QUIT waiting for the transfer, a
    /// command to prepare waiting for earlier replies).
    fn holding(&self) -> bool {
        self.aborting || self.quit_held || (self.deferred.is_some() && self.replies_due())
    }

    /// Whether a reply to an earlier command is still to come from libunftp.
    fn replies_due(&self) -> bool {
        !self.pending.is_empty() || self.transfer_active
    }

    /// Whether a transfer command is under way (sent, and its final reply not yet in).
    fn in_transfer(&self) -> bool {
        self.transfer_active || self.pending.iter().any(|p| matches!(p, Pending::Transfer))
    }

    /// Whether the latest transfer command is a listing.
    fn listing(&self) -> bool {
        matches!(self.transfer_verb.as_str(), "LIST" | "NLST" | "MLSD")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Also when the session's task is cut (shutdown grace over): no upload commits after.
        self.link.close();
    }
}
