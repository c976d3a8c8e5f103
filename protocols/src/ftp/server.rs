//! Accepting connections: bans and session caps are checked before anything else, then each
//! session gets a relay (ours) in front of a libunftp server (built per connection so that it
//! knows the client's real address).

use super::auth::{FtpAuthenticator, FtpUser, FtpUserProvider, SessionSlot};
use super::data::LoopbackBinder;
use super::link::ControlLink;
use super::mfmt::MfmtHandler;
use super::relay::{self, BoxIo, Relay};
use super::storage::FtpStorage;
use super::{log, tls, FtpOptions, TlsMode};
use crate::auth::{LoginService, SessionWatch};
use crate::limits::SessionLimiter;
use anyhow::Context;
use libunftp::options::ActivePassiveMode;
use libunftp::{Server, ServerBuilder};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use unftp_core::auth::{Principal, UserDetailError, UserDetailProvider};

/// What every session of one server shares.
struct Shared {
    /// The settings, TLS configs and shutdown signal every relay reads.
    relay: Arc<relay::Shared>,
    login: Arc<LoginService>,
    limiter: Arc<SessionLimiter>,
}

/// Runs the FTP server on `listener` (and, for implicit FTPS, on `implicit_listener`) until
/// `shutdown` is cancelled.
///
/// Then it stops accepting, closes idle sessions with `421`, lets sessions with a transfer in
/// progress finish it, and after `opts.shutdown_grace` cuts whatever is left (uploads then
/// leave nothing behind).
pub async fn serve(
    listener: TcpListener,
    implicit_listener: Option<TcpListener>,
    opts: FtpOptions,
    login: Arc<LoginService>,
    limiter: Arc<SessionLimiter>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tls = match &opts.tls {
        Some(t) => Some(tls::server_config(&t.cert, &t.key)?),
        None => None,
    };
    let data_tls = tls.as_ref().map(tls::data_config);
    let implicit_mode = matches!(&opts.tls, Some(t) if t.mode == TlsMode::Implicit);
    if implicit_listener.is_some() != implicit_mode {
        anyhow::bail!("an implicit FTPS listener is given exactly when ftp.tls.mode is implicit");
    }
    if opts.passive_ports.start() > opts.passive_ports.end() {
        anyhow::bail!("ftp: the passive port range is empty");
    }
    if opts.max_line_len < 64 {
        anyhow::bail!("ftp: a command line limit under 64 bytes would refuse ordinary commands");
    }
    let grace = opts.shutdown_grace;
    tracing::info!(
        addr = %listener.local_addr().context("ftp listener")?,
        implicit = ?implicit_listener.as_ref().and_then(|l| l.local_addr().ok()),
        "ftp: listening"
    );
    let shared = Arc::new(Shared {
        relay: Arc::new(relay::Shared {
            opts,
            tls,
            data_tls,
            shutdown: shutdown.clone(),
        }),
        login,
        limiter,
    });
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, peer)) => {
                    sessions.spawn(session(shared.clone(), s, peer, false));
                }
                Err(e) => accept_failed(e).await,
            },
            r = accept_opt(implicit_listener.as_ref()) => match r {
                Ok((s, peer)) => {
                    sessions.spawn(session(shared.clone(), s, peer, true));
                }
                Err(e) => accept_failed(e).await,
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    drop(implicit_listener);
    tracing::info!(
        sessions = sessions.len(),
        "ftp: stopped accepting; draining sessions"
    );
    let drained = tokio::time::timeout(grace, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "ftp: shutdown grace expired; closing the remaining sessions"
        );
        sessions.abort_all();
        while sessions.join_next().await.is_some() {}
    }
    Ok(())
}

async fn accept_opt(l: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Out of file descriptors and the like: back off a little instead of spinning.
async fn accept_failed(e: io::Error) {
    tracing::warn!(error = %e, "ftp: accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Tells a refused plain client why, briefly; an implicit-TLS client cannot read plain text.
async fn refuse(mut stream: TcpStream, implicit: bool, line: &str) {
    if !implicit {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            stream.write_all(format!("{line}\r\n").as_bytes()),
        )
        .await;
    }
}

async fn session(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, implicit: bool) {
    // Behind a load balancer the PROXY header names the client: it is the peer for bans,
    // limits, allow-lists, active-mode checks and logs.
    let peer = if shared.relay.opts.proxy_protocol.is_enabled() {
        if !shared.relay.opts.proxy_protocol.allows(peer.ip()) {
            tracing::info!(client = %peer, "ftp: connection refused: not from a trusted PROXY sender");
            return;
        }
        match crate::proxy::read_header(&mut stream, peer, shared.relay.opts.login_grace).await {
            Ok(client) => client,
            Err(e) => {
                tracing::info!(client = %peer, error = %e, "ftp: connection refused: no valid PROXY header");
                return;
            }
        }
    } else {
        peer
    };
    let ip = peer.ip().to_canonical();
    if shared.login.is_banned(ip) {
        tracing::debug!(client = %peer, "ftp: connection from a banned address refused");
        refuse(stream, implicit, "421 Service not available").await;
        return;
    }
    let _slot = match shared.limiter.try_acquire(ip) {
        Ok(s) => s,
        Err(why) => {
            tracing::info!(client = %peer, limit = ?why, "ftp: session cap reached, connection refused");
            refuse(
                stream,
                implicit,
                "421 Too many connections, try again later",
            )
            .await;
            return;
        }
    };
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _counted = crate::metrics::SessionGuard::new("ftp");
    let _ = stream.set_nodelay(true);
    // ABOR comes as TCP urgent data from some clients (Python's ftplib): keep its last byte in
    // the stream, or the command line never ends (and read past the urgent mark: `urgent.rs`).
    let _ = socket2::SockRef::from(&stream).set_out_of_band_inline(true);
    // Uploads look at the control connection before they commit (see `link`).
    let watched = std::os::fd::AsFd::as_fd(&stream).try_clone_to_owned().ok();
    let link = Arc::new(ControlLink::new(watched));
    let client: BoxIo = if implicit {
        let config = shared
            .relay
            .tls
            .clone()
            .expect("implicit mode has a TLS config");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        match tokio::time::timeout(shared.relay.opts.login_grace, acceptor.accept(stream)).await {
            Ok(Ok(s)) => Box::new(s),
            Ok(Err(e)) => {
                tracing::info!(client = %peer, error = %e, "ftp: implicit TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(client = %peer, "ftp: implicit TLS handshake timed out");
                return;
            }
        }
    } else {
        Box::new(super::urgent::ReadPastMark::new(stream))
    };
    let (relay_side, unftp_side) = match loopback_pair().await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "ftp: cannot open the loopback socket pair");
            return;
        }
    };
    let relay_slot: SessionSlot = Arc::default();
    let watch = Arc::new(SessionWatch::default());
    let server = match build_server(
        &shared,
        peer,
        relay_slot.clone(),
        link.clone(),
        watch.clone(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "ftp: cannot set up the session");
            return;
        }
    };
    tracing::debug!(client = %peer, implicit, "ftp: session open");
    let service = tokio::spawn(server.service(unftp_side));
    let relay = Relay::new(
        shared.relay.clone(),
        client,
        relay_side,
        peer,
        local,
        implicit,
        relay_slot,
        link,
    )
    .run();
    tokio::select! {
        _ = relay => {}
        // A reload removed the account (or changed it so that it could not log in again):
        // dropping the relay closes the client's connections, and libunftp's with them, so an
        // upload in progress is aborted, never committed.
        _ = watch.revoked() => {
            tracing::info!(client = %peer, "ftp: session closed: the account was removed or changed");
        }
    }
    // The relay's end of the pair is closed now, which ends libunftp's control loop.
    if tokio::time::timeout(Duration::from_secs(5), service)
        .await
        .is_err()
    {
        tracing::debug!(client = %peer, "ftp: libunftp session slow to end");
    }
    tracing::debug!(client = %peer, "ftp: session closed");
}

/// A connected pair of loopback sockets: libunftp only serves a `TcpStream`.
async fn loopback_pair() -> io::Result<(TcpStream, TcpStream)> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = l.local_addr()?;
    let (ours, theirs) = tokio::join!(TcpStream::connect(addr), l.accept());
    let ours = ours?;
    let (theirs, from) = theirs?;
    // Another local process could race us to the port; only our own socket will do.
    if from != ours.local_addr()? {
        return Err(io::Error::other("unexpected loopback peer"));
    }
    let _ = ours.set_nodelay(true);
    let _ = theirs.set_nodelay(true);
    Ok((ours, theirs))
}

/// One libunftp server per connection: its authenticator carries the client's real address,
/// and libunftp's `Server::service` consumes the server anyway.
fn build_server(
    shared: &Shared,
    peer: SocketAddr,
    relay_slot: SessionSlot,
    link: Arc<ControlLink>,
    watch: Arc<SessionWatch>,
) -> anyhow::Result<Server<FtpStorage, FtpUser>> {
    let slot: SessionSlot = Arc::default();
    let authenticator = Arc::new(FtpAuthenticator::new(
        shared.login.clone(),
        peer.ip().to_canonical(),
        slot.clone(),
        relay_slot,
    ));
    let provider = Arc::new(Watching {
        inner: FtpUserProvider::new(slot, link),
        watch,
    });
    let max_list = shared.relay.opts.max_list_entries;
    let memory = shared.relay.opts.memory.clone();
    // The relay decides which modes the client may use, and always speaks active mode to
    // libunftp (see `data`).
    let mode = ActivePassiveMode::ActiveAndPassive;
    let b = ServerBuilder::<FtpStorage, FtpUser>::with_user_detail_provider(
        Box::new(move || FtpStorage::new(max_list, memory.clone())),
        provider,
    )
    .authenticator(authenticator)
    .greeting("Bucketgate FTP server ready")
    .idle_session_timeout(shared.relay.opts.idle_timeout.as_secs().max(1))
    .logger(log::session_logger(peer))
    .binder(LoopbackBinder)
    .active_passive_mode(mode)
    .site_command("MFMT", MfmtHandler);
    Ok(b.build()?)
}

/// Tells the session's supervisor who logged in, so that a reload can close the session.
struct Watching {
    inner: FtpUserProvider,
    watch: Arc<SessionWatch>,
}

impl std::fmt::Debug for Watching {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait::async_trait]
impl UserDetailProvider for Watching {
    type User = FtpUser;

    async fn provide_user_detail(&self, principal: &Principal) -> Result<FtpUser, UserDetailError> {
        let user = self.inner.provide_user_detail(principal).await?;
        self.watch.logged_in(&user.session);
        Ok(user)
    }
}
