//! The listener: admission, per-connection supervision and graceful shutdown.

use super::connection::{ConnState, Shared, SshHandler};
use super::SftpOptions;
use crate::auth::LoginService;
use crate::limits::SessionLimiter;
use russh::keys::{Algorithm, EcdsaCurve, HashAlg, PrivateKey};
use russh::server::Config;
use russh::{kex, mac, Disconnect, Preferred, SshId};
use russh::{MethodKind, MethodSet};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long a connection gets to end after we asked it to disconnect.
const DISCONNECT_WAIT: Duration = Duration::from_secs(5);
/// How often a connection checks, during a graceful shutdown, whether it became idle.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// Minimum time a rejected authentication takes (russh pads to it), so that a wrong key and
/// an unknown user look alike from outside. Password failures also wait the ban policy's
/// failure delay in [`LoginService`].
const AUTH_REJECTION_TIME: Duration = Duration::from_millis(200);
/// The channel window a client may fill before waiting for us: room for OpenSSH's 64 writes
/// of 32 KiB (or of the larger sizes limits@openssh.com allows) in flight.
const WINDOW_SIZE: u32 = 16 * 1024 * 1024;

/// Messages of incoming channel data queued for a channel's reader (russh's
/// `channel_buffer_size`); see `ssh_config`.
const CHANNEL_QUEUE: usize = 2;

/// Everything a connection task needs.
pub(crate) struct Ctx {
    shared: Arc<Shared>,
    config: Arc<Config>,
    limiter: Arc<SessionLimiter>,
    /// Graceful: close connections once no transfer runs on them.
    shutdown: CancellationToken,
    /// Hard: the grace period is over, close everything now.
    hard: CancellationToken,
}

/// The russh configuration: algorithms, limits, timeouts.
fn ssh_config(opts: &SftpOptions, keys: Vec<PrivateKey>) -> Config {
    let mut key_algs = vec![
        Algorithm::Ed25519,
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP256,
        },
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP384,
        },
        Algorithm::Ecdsa {
            curve: EcdsaCurve::NistP521,
        },
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha512),
        },
        Algorithm::Rsa {
            hash: Some(HashAlg::Sha256),
        },
    ];
    let mut kexes: Vec<kex::Name> = Preferred::DEFAULT.kex.to_vec();
    let mut macs: Vec<mac::Name> = Preferred::DEFAULT.mac.to_vec();
    if opts.legacy_algorithms {
        // For old JSch / MINA clients that know nothing newer than SHA-1.
        key_algs.push(Algorithm::Rsa { hash: None });
        // Before the extension markers, which are not real key exchanges.
        let at = kexes
            .iter()
            .position(|k| {
                k.as_ref().starts_with("ext-info") || k.as_ref().starts_with("kex-strict")
            })
            .unwrap_or(kexes.len());
        kexes.insert(at, kex::DH_G14_SHA1);
        macs.push(mac::HMAC_SHA1);
    }
    let preferred = Preferred {
        kex: Cow::Owned(kexes),
        key: Cow::Owned(key_algs),
        mac: Cow::Owned(macs),
        ..Preferred::DEFAULT
    };
    Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-Bucketgate")),
        methods: MethodSet::from(
            &[
                MethodKind::PublicKey,
                MethodKind::Password,
                MethodKind::KeyboardInteractive,
            ][..],
        ),
        auth_rejection_time: AUTH_REJECTION_TIME,
        // OpenSSH opens with a "none" attempt to learn the methods: no reason to make it wait.
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys,
        window_size: WINDOW_SIZE,
        // The largest channel packet the client may send us (what we announce; OpenSSH's sshd
        // says 32 KiB). Each session holds a few incoming packets at once in russh: the one
        // being read, its decrypted copy, the queued ones. 16 KiB instead of 32 took ~40 MiB
        // off the peak of 1,024 uploading sessions, with no change in MB/s or CPU per GiB at
        // one session (bench/README.md, "The budget's share"). A 32 KiB SFTP write spans
        // three packets.
        maximum_packet_size: 16384,
        // Incoming channel data russh holds for our reader (messages of up to 16 KiB; the
        // default is 100). A session that cannot read ahead for lack of memory stops its client
        // through TCP after these: the SFTP loop never waits on russh's loop while it does
        // (`dispatch::run`).
        channel_buffer_size: CHANNEL_QUEUE,
        preferred,
        max_auth_attempts: 6,
        inactivity_timeout: Some(opts.idle_timeout),
        // Outgoing messages (our replies, cut to the client's packet size) queued for russh's
        // session loop, which drains what is queued into one write buffer per session and
        // keeps that buffer's largest size for the session's life. With russh's default of 10,
        // a download left ~300 KiB there per session (250 MiB of allocations at N = 1,024);
        // with 2, a third of it, at the same MB/s (bench/README.md, "The budget's share").
        event_buffer_size: 2,
        nodelay: true,
        ..Default::default()
    }
}

/// Serves SFTP and SCP on `listener` until `shutdown` is cancelled.
///
/// Then it stops accepting, closes connections as soon as no transfer runs on them, gives
/// the others `opts.shutdown_grace` to finish, and closes what is left (unfinished uploads are
/// aborted: nothing half-written becomes visible).
pub async fn serve(
    listener: TcpListener,
    opts: SftpOptions,
    keys: Vec<PrivateKey>,
    login: Arc<LoginService>,
    limiter: Arc<SessionLimiter>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if keys.is_empty() {
        anyhow::bail!("the SSH server needs at least one host key");
    }
    let tracker = TaskTracker::new();
    let grace = opts.shutdown_grace;
    let ctx = Arc::new(Ctx {
        config: Arc::new(ssh_config(&opts, keys)),
        shared: Arc::new(Shared {
            opts,
            login,
            tracker: tracker.clone(),
        }),
        limiter,
        shutdown: shutdown.clone(),
        hard: CancellationToken::new(),
    });
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "SFTP/SCP listening");
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tracker.spawn(accept_proxied(stream, peer, ctx.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "SFTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    drop(listener);
    tracker.close();
    tracing::info!("SFTP: no new connections; waiting for transfers to finish");
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!("SFTP: shutdown grace over, closing the remaining connections");
        ctx.hard.cancel();
        let _ = tokio::time::timeout(DISCONNECT_WAIT * 2, tracker.wait()).await;
    }
    Ok(())
}

/// With `proxy_protocol`, only its load balancers may connect, and their PROXY header comes
/// first: the client it names is the peer for everything that follows (bans, limits,
/// allow-lists, logs).
async fn accept_proxied(mut stream: tokio::net::TcpStream, peer: SocketAddr, ctx: Arc<Ctx>) {
    let peer = if ctx.shared.opts.proxy_protocol.is_enabled() {
        if !ctx.shared.opts.proxy_protocol.allows(peer.ip()) {
            tracing::info!(%peer, "SFTP connection refused: not from a trusted PROXY sender");
            return;
        }
        match crate::proxy::read_header(&mut stream, peer, ctx.shared.opts.login_grace).await {
            Ok(client) => client,
            Err(e) => {
                tracing::info!(%peer, error = %e, "SFTP connection refused: no valid PROXY header");
                return;
            }
        }
    } else {
        peer
    };
    handle_connection(stream, peer, ctx).await
}

/// Runs one connection from `peer` (the client's address: the socket's, or the one a PROXY
/// header named) until it ends.
pub(crate) async fn handle_connection<S>(stream: S, peer: SocketAddr, ctx: Arc<Ctx>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ip = peer.ip();
    // Both refusals happen before any key exchange work: a banned address or a flood costs a
    // closed socket, nothing more.
    if ctx.shared.login.is_banned(ip) {
        tracing::info!(%peer, "SFTP connection refused: address banned");
        return;
    }
    let _slot = match ctx.limiter.try_acquire(ip) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, reason = ?e, "SFTP connection refused: session limit");
            return;
        }
    };
    let _counted = crate::metrics::SessionGuard::new("sftp");
    let state = Arc::new(ConnState::default());
    // Whatever way this function ends, what still waits on the connection's channels stops.
    let _gone = state.gone.clone().drop_guard();
    let handler = SshHandler::new(ctx.shared.clone(), peer, state.clone());
    // One deadline for the version exchange, the key exchange and the login together.
    let login_deadline = tokio::time::Instant::now() + ctx.shared.opts.login_grace;
    // russh runs the connection in a task of its own, which dropping `session` does not stop:
    // the way to end a connection that does not end when asked is to cut its stream.
    let (stream, cut) = Severable::new(stream);
    let session = match tokio::time::timeout_at(
        login_deadline,
        russh::server::run_stream(ctx.config.clone(), stream, handler),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "SSH handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "SSH handshake timed out");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let grace = tokio::time::sleep_until(login_deadline);
    tokio::pin!(grace);
    let mut idle_poll = tokio::time::interval(IDLE_POLL);
    // Set once the graceful shutdown began: from then on, the connection ends when idle.
    let mut draining = false;
    let reason = loop {
        tokio::select! {
            r = &mut session => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "SSH session ended with an error");
                }
                return;
            }
            // The condition is evaluated when the select starts, and a login does not restart
            // it: check again when the timer fires, or a session that logged in meanwhile is cut
            // `login_grace` after it connected. Once logged in the branch stays disabled.
            _ = &mut grace, if !state.authenticated() => {
                if !state.authenticated() {
                    break "login grace time exceeded";
                }
            }
            _ = ctx.hard.cancelled() => break "server shutting down",
            // A reload removed the account (or changed it so that it could not log in again):
            // the session ends now, and an upload in progress is aborted, not committed.
            _ = state.session.revoked() => break "the account was removed or changed",
            _ = ctx.shutdown.cancelled(), if !draining => {
                draining = true;
                if state.busy.idle() {
                    break "server shutting down";
                }
            }
            _ = idle_poll.tick(), if draining => {
                if state.busy.idle() {
                    break "server shutting down";
                }
            }
        }
    };
    tracing::debug!(%peer, reason, "closing SSH connection");
    // The goodbye waits for room in russh's outgoing queue, which russh does not drain while
    // the client's window is full or its socket does not take bytes: a client that stopped
    // reading gets a bounded wait, then its connection is cut (and with it the session's
    // files, memory and transfers, which live in russh's task).
    let polite = tokio::time::timeout(DISCONNECT_WAIT, async {
        let _ = handle
            .disconnect(Disconnect::ByApplication, reason.to_string(), String::new())
            .await;
        let _ = (&mut session).await;
    })
    .await;
    if polite.is_err() {
        tracing::debug!(%peer, "SSH connection did not end when asked; cutting it");
        cut.sever();
        let _ = tokio::time::timeout(DISCONNECT_WAIT, &mut session).await;
    }
}

/// A connection's stream that the server can cut: from then on every read ends and every
/// write fails, also those already waiting, so that russh's connection task ends.
struct Severable<S> {
    inner: S,
    cut: Arc<Cut>,
}

/// The cutting side of a [`Severable`].
#[derive(Default)]
struct Cut {
    done: std::sync::atomic::AtomicBool,
    reader: futures::task::AtomicWaker,
    writer: futures::task::AtomicWaker,
}

impl Cut {
    fn sever(&self) {
        self.done.store(true, std::sync::atomic::Ordering::SeqCst);
        self.reader.wake();
        self.writer.wake();
    }

    /// Registers the task to wake, then tells whether the stream was cut.
    fn is_cut(&self, waker: &futures::task::AtomicWaker, cx: &std::task::Context<'_>) -> bool {
        waker.register(cx.waker());
        self.done.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<S> Severable<S> {
    fn new(inner: S) -> (Severable<S>, Arc<Cut>) {
        let cut = Arc::new(Cut::default());
        (
            Severable {
                inner,
                cut: cut.clone(),
            },
            cut,
        )
    }
}

fn severed() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "connection cut by the server",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Severable<S> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.cut.is_cut(&this.cut.reader, cx) {
            return std::task::Poll::Ready(Err(severed()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Severable<S> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.cut.is_cut(&this.cut.writer, cx) {
            return std::task::Poll::Ready(Err(severed()));
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.cut.is_cut(&this.cut.writer, cx) {
            return std::task::Poll::Ready(Err(severed()));
        }
        std::pin::Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.cut.is_cut(&this.cut.writer, cx) {
            return std::task::Poll::Ready(Err(severed()));
        }
        std::pin::Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
