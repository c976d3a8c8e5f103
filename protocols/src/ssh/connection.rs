//! The SSH side of one connection: authentication, channels and what runs on them.

use super::handles::Busy;
use super::session::{SessionLimits, SftpSession};
use super::{dispatch, scp, SftpOptions};
use crate::auth::{LoginService, Protocol, Session as UserSession, SessionWatch};
use futures::FutureExt;
use russh::keys::{Algorithm, PublicKey};
use russh::server::{Auth, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelWriteHalf, Pty};
use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What the server shares with every connection.
pub(crate) struct Shared {
    pub(crate) opts: SftpOptions,
    pub(crate) login: Arc<LoginService>,
    /// Every connection and channel task, so shutdown can wait for them.
    pub(crate) tracker: TaskTracker,
}

/// What a connection's task watches while its SSH session runs.
#[derive(Default)]
pub(crate) struct ConnState {
    authenticated: AtomicBool,
    pub(crate) busy: Arc<Busy>,
    /// The logged-in session's revocation (a reload removed or changed the account).
    pub(crate) session: SessionWatch,
    /// Cancelled when the connection has ended (russh's task dropped the handler): what waits
    /// on its channels gives up, instead of waiting for a window adjustment that cannot come.
    pub(crate) gone: CancellationToken,
}

impl ConnState {
    /// True once a login succeeded.
    pub(crate) fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::SeqCst)
    }
}

/// The russh handler of one connection.
pub(crate) struct SshHandler {
    shared: Arc<Shared>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    user: Option<UserSession>,
    /// Session channels opened but not yet given a subsystem or command.
    pending: HashMap<ChannelId, Channel<Msg>>,
    /// Session channels open now (pending or running).
    open: usize,
}

impl Drop for SshHandler {
    fn drop(&mut self) {
        self.state.gone.cancel();
    }
}

impl SshHandler {
    pub(crate) fn new(shared: Arc<Shared>, peer: SocketAddr, state: Arc<ConnState>) -> Self {
        SshHandler {
            shared,
            peer,
            state,
            user: None,
            pending: HashMap::new(),
            open: 0,
        }
    }

    async fn password_login(&mut self, user: &str, password: &str) -> Auth {
        let r = self
            .shared
            .login
            .login_password(Protocol::Sftp, self.peer.ip(), user, password)
            .await;
        match r {
            Ok(s) => {
                self.state.session.logged_in(&s);
                self.user = Some(s);
                Auth::Accept
            }
            Err(_) => Auth::reject(),
        }
    }

    /// SHA-1 RSA signatures are only taken when the operator asked for legacy algorithms.
    fn algorithm_allowed(&self, alg: &Algorithm) -> bool {
        self.shared.opts.legacy_algorithms || !matches!(alg, Algorithm::Rsa { hash: None })
    }

    /// Takes and drops what russh queued for a channel that runs nothing yet.
    ///
    /// russh hands every request on a channel (env, pty-req, window-change, signal, even the
    /// subsystem request itself) to the channel's small queue (`channel_buffer_size`) before it
    /// calls us, and waits while that queue is full. A channel runs nothing until its
    /// subsystem or command, so nothing else reads that queue: OpenSSH's `SendEnv LANG LC_*`
    /// with a few of those set filled it, and the connection hung before its first reply.
    /// Each of those requests is answered by its callback; called at the start of each, this
    /// keeps the queue empty whatever the client sends and in what order.
    fn drain(&mut self, channel: ChannelId) {
        if let Some(ch) = self.pending.get_mut(&channel) {
            // Unconstrained: the task's cooperative budget must not make a queued message
            // look absent.
            while let Some(Some(_)) = tokio::task::unconstrained(ch.wait()).now_or_never() {}
        }
    }

    fn limits(&self) -> SessionLimits {
        SessionLimits {
            max_handles: self.shared.opts.max_handles_per_session.max(1),
            max_packet_len: self.shared.opts.max_packet_len,
            keep_partial: self.shared.opts.keep_partial_uploads,
        }
    }
}

/// True when the `authorized_keys` line names `key`. Options before the key type
/// (`from="..." ssh-ed25519 AAAA...`) are skipped; the comment is ignored.
pub(crate) fn key_matches(line: &str, key: &PublicKey) -> bool {
    let tokens: Vec<&str> = line.split_whitespace().collect();
    tokens.windows(2).any(|w| {
        let (kind, data) = (w[0], w[1]);
        let looks_like_type =
            kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
        looks_like_type
            && PublicKey::from_openssh(&format!("{kind} {data}"))
                .is_ok_and(|k| k.key_data() == key.key_data())
    })
}

impl russh::server::Handler for SshHandler {
    type Error = anyhow::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        Ok(self.password_login(user, password).await)
    }

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        // Answer the probe without recording anything: clients offer every key they hold.
        if !self.algorithm_allowed(offer.algorithm) {
            return Ok(Auth::reject());
        }
        let lines = self
            .shared
            .login
            .key_candidate(Protocol::Sftp, self.peer.ip(), user);
        if lines.iter().any(|l| key_matches(l, offer.public_key)) {
            Ok(Auth::Accept)
        } else {
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if !self.algorithm_allowed(key.algorithm) {
            return Ok(Auth::reject());
        }
        let pk = key.public_key.clone();
        let r = self
            .shared
            .login
            .login_key(Protocol::Sftp, self.peer.ip(), user, |l| {
                key_matches(l, &pk)
            })
            .await;
        match r {
            Ok(s) => {
                self.state.session.logged_in(&s);
                self.user = Some(s);
                Ok(Auth::Accept)
            }
            Err(_) => Ok(Auth::reject()),
        }
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        // One prompt, for the password: what WinSCP and PAM-style clients expect.
        let Some(mut response) = response else {
            return Ok(Auth::Partial {
                name: Cow::Borrowed(""),
                instructions: Cow::Borrowed(""),
                prompts: Cow::Owned(vec![(Cow::Borrowed("Password: "), false)]),
            });
        };
        let answer = response.next().unwrap_or_default();
        let Ok(password) = std::str::from_utf8(&answer) else {
            return Ok(Auth::reject());
        };
        let password = password.to_string();
        Ok(self.password_login(user, &password).await)
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        self.state.authenticated.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.user.is_none() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        if self.open >= self.shared.opts.max_channels_per_connection.max(1) {
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        self.open += 1;
        self.pending.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    // Forwarding (direct-tcpip, forwarded-tcpip, streamlocal, X11) is refused by russh's
    // defaults: an unanswered open handle is dropped, which rejects the channel.

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.pending.remove(&channel);
        self.open = self.open.saturating_sub(1);
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        let (Some(user), true) = (&self.user, name == "sftp") else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        let Some(ch) = self.pending.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let sftp = SftpSession::new(user.fs.clone(), self.limits(), self.state.busy.clone());
        let max = self.shared.opts.max_packet_len;
        let memory = self.shared.opts.memory.clone();
        let gone = self.state.gone.clone();
        self.shared.tracker.spawn(async move {
            let (rd, replies, wr) = channel_io(ch, gone);
            dispatch::run(rd, replies, sftp, max, memory).await;
            // `ssh` exits with the channel's exit status, and scp (SFTP mode) treats a
            // missing one as a failure of the whole copy.
            finish(&wr, 0).await;
        });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        let cmd = scp::parse_command(data);
        let (Some(user), Some(cmd)) = (&self.user, cmd) else {
            tracing::debug!(peer = %self.peer, "exec of something other than scp refused");
            session.channel_failure(channel)?;
            return Ok(());
        };
        let Some(ch) = self.pending.remove(&channel) else {
            session.channel_failure(channel)?;
            return Ok(());
        };
        session.channel_success(channel)?;
        let fs = user.fs.clone();
        let busy = self.state.busy.clone();
        let keep_partial = self.shared.opts.keep_partial_uploads;
        let gone = self.state.gone.clone();
        self.shared.tracker.spawn(async move {
            let _guard = busy.enter();
            let (rd, writer, wr) = channel_io(ch, gone);
            let status = scp::run(tokio::io::join(rd, writer), fs, cmd, keep_partial).await;
            finish(&wr, status).await;
        });
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        // No shell: this server only moves files.
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        channel: ChannelId,
        _single_connection: bool,
        _x11_auth_protocol: &str,
        _x11_auth_cookie: &str,
        _x11_screen_number: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        session.channel_failure(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        // Clients send LANG and friends; nothing here reads them, and refusing would only
        // make noise in the client's output.
        session.channel_success(channel)?;
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        Ok(())
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.drain(channel);
        Ok(false)
    }

    async fn signal(
        &mut self,
        channel: ChannelId,
        _signal: russh::Sig,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Data before a subsystem or command has no reader: dropped.
        self.drain(channel);
        Ok(())
    }

    async fn extended_data(
        &mut self,
        channel: ChannelId,
        _code: u32,
        _data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.drain(channel);
        Ok(())
    }
}

/// The channel for a subsystem or command: its incoming data as a byte stream, a writer for
/// its outgoing data, and the write half that ends it.
///
/// Not russh's `Channel::into_stream`: dropping that stream sends CLOSE from a task of its
/// own, which can overtake the exit status sent afterwards; OpenSSH then reports "exit status
/// -1" and `scp` exits 1 although every file arrived. Here the caller keeps the write half and
/// sends exit status, EOF and CLOSE in that order on the channel's one queue, behind the data.
/// Writes fail once `gone` (the connection ended) is cancelled.
fn channel_io(
    ch: Channel<Msg>,
    gone: CancellationToken,
) -> (
    impl tokio::io::AsyncRead + Unpin + Send + 'static,
    ChannelWriter,
    Arc<ChannelWriteHalf<Msg>>,
) {
    let (rd, wr) = ch.split();
    let incoming = futures::stream::unfold(rd, |mut rd| async move {
        loop {
            match rd.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    return Some((Ok::<_, std::io::Error>(data), rd))
                }
                Some(ChannelMsg::Eof) | Some(ChannelMsg::Close) | None => return None,
                // Window adjustments, requests and stderr data are not part of the stream.
                Some(_) => continue,
            }
        }
    });
    let reader = tokio_util::io::StreamReader::new(Box::pin(incoming));
    let wr = Arc::new(wr);
    let writer = ChannelWriter {
        half: wr.clone(),
        sending: None,
        gone,
    };
    (reader, writer, wr)
}

/// Writes to a channel through its shared write half; one buffer may be on its way (sent as
/// the client's window allows) while the caller prepares the next. A failure to send shows on
/// the next write or flush. As an `AsyncWrite` it copies each buffer; as SFTP's
/// [`dispatch::Replies`] it sends the reply's own bytes.
///
/// russh waits for window room on a notification that its connection task sends when a window
/// adjustment arrives, and never when the connection ends: a send waiting for a client that
/// went away (or was cut off by us) would wait forever, holding the session's files and memory,
/// were it not given up when the connection is `gone`.
struct ChannelWriter {
    half: Arc<ChannelWriteHalf<Msg>>,
    sending: Option<futures::future::BoxFuture<'static, Result<(), russh::Error>>>,
    gone: CancellationToken,
}

impl ChannelWriter {
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if let Some(f) = self.sending.as_mut() {
            let r = ready!(f.as_mut().poll(cx));
            self.sending = None;
            r.map_err(|e| std::io::Error::new(std::io::ErrorKind::BrokenPipe, e.to_string()))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Starts sending `data`; the previous send must have ended ([`Self::poll_sent`]).
    fn start(&mut self, data: bytes::Bytes) {
        let half = self.half.clone();
        let gone = self.gone.clone();
        self.sending = Some(Box::pin(async move {
            tokio::select! {
                r = half.data_bytes(data) => r,
                _ = gone.cancelled() => Err(russh::Error::SendError),
            }
        }));
    }
}

impl dispatch::Replies for ChannelWriter {
    async fn send(&mut self, data: bytes::Bytes) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_sent(cx)).await?;
        self.start(data);
        Ok(())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        std::future::poll_fn(|cx| self.poll_sent(cx)).await
    }
}

impl tokio::io::AsyncWrite for ChannelWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_sent(cx))?;
        this.start(bytes::Bytes::copy_from_slice(buf));
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_sent(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().poll_sent(cx)
    }
}

/// Ends a channel the way OpenSSH's server does: exit status, EOF, CLOSE.
async fn finish(wr: &ChannelWriteHalf<Msg>, status: u32) {
    let _ = wr.exit_status(status).await;
    let _ = wr.eof().await;
    let _ = wr.close().await;
}
