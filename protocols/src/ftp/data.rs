//! Data connections. libunftp opens its data sockets on loopback (see [`LoopbackBinder`]); the
//! relay opens the public side and splices the two:
//!
//! - passive: a port from `passive_ports` on the control connection's local address, which
//!   takes only a connection from the control connection's peer address (libunftp would take
//!   the first comer, letting anyone who guesses the port steal or plant a file);
//! - active: the relay checks the client's PORT/EPRT target, connects to it *first*, and only
//!   then lets libunftp connect to a loopback port standing in for it.
//!
//! With PROT P the relay is the TLS endpoint of the data connection too (libunftp only sees
//! plain bytes): that way every transfer ends with a TLS close_notify, which libunftp does not
//! send after an upload and which clients such as Python's ftplib insist on.

use super::link::ControlLink;
use async_trait::async_trait;
use libunftp::options::Binder;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long a data port waits for its connection (libunftp waits as long on its side).
pub(crate) const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);
/// Buffer of each direction of a data connection's splice.
const RELAY_BUF: usize = 256 * 1024;

/// Makes libunftp bind its passive sockets on loopback, any free port: only the relay connects
/// there.
#[derive(Debug)]
pub(crate) struct LoopbackBinder;

#[async_trait]
impl Binder for LoopbackBinder {
    async fn bind(&mut self, _local: IpAddr, _ports: RangeInclusive<u16>) -> io::Result<TcpSocket> {
        let s = TcpSocket::new_v4()?;
        s.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
        Ok(s)
    }
}

/// Waits for the client's passive connection, from `peer_ip` only, then, once the transfer
/// command has been sent to libunftp ([`DataAbort::begin`]), splices it to libunftp's loopback
/// port (through TLS when `tls` is given). A later PASV/EPSV/PORT of the session cancels
/// `superseded`: the port is given back at once instead of being held until the accept timeout
/// (a PASV flood would otherwise take the whole range from everyone).
///
/// libunftp's side is connected only for a command libunftp was sent: its task that takes a
/// passive connection picks up the session's command channel *when it gets the connection*,
/// so a connection it got after the session's next PASV/EPSV (one whose command the relay
/// refused itself, say a RETR of a missing file, connected late) took the next port's channel
/// and the next transfer with it: an upload then read that dead connection's end as the whole
/// file and stored it empty, answered 226.
///
/// ABOR ends the transfer through `abort`, even when the client never connected (libunftp may
/// have answered 150 and be waiting for this connection: it gets one that ends at once, so
/// that the transfer gets its final reply).
pub(crate) async fn passive(
    listener: TcpListener,
    peer_ip: IpAddr,
    upstream: SocketAddr,
    tls: Option<TlsAcceptor>,
    superseded: CancellationToken,
    abort: DataAbort,
) {
    let deadline = Instant::now() + ACCEPT_TIMEOUT;
    let client = loop {
        let accepted = tokio::select! {
            _ = superseded.cancelled() => return,
            _ = abort.token.cancelled() => {
                drop(listener);
                if abort.begun.is_cancelled() {
                    if let Ok(up) = TcpStream::connect(upstream).await {
                        abort.finish(up).await;
                    }
                }
                return;
            }
            r = tokio::time::timeout_at(deadline, listener.accept()) => r,
        };
        match accepted {
            Err(_) => {
                tracing::debug!("ftp: the client did not open its data connection in time");
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "ftp: data accept failed");
                return;
            }
            Ok(Ok((s, from))) if from.ip().to_canonical() == peer_ip => break s,
            Ok(Ok((_, from))) => {
                tracing::warn!(
                    expected = %peer_ip,
                    from = %from,
                    "ftp: data connection from another address than the session's refused"
                );
            }
        }
    };
    drop(listener);
    // The command that uses this connection (see above). An ABOR comes only after one.
    let begun = tokio::select! {
        _ = superseded.cancelled() => false,
        _ = abort.begun.cancelled() => true,
        _ = tokio::time::sleep_until(deadline) => false,
    };
    if !begun {
        tracing::debug!("ftp: a data connection no transfer used, closed");
        return;
    }
    match TcpStream::connect(upstream).await {
        Ok(up) => spliced(client, up, tls, &abort).await,
        Err(e) => tracing::debug!(error = %e, "ftp: libunftp's data port is gone"),
    }
}

/// The relay's handle on the session's latest data connection: how ABOR ends it, and how it
/// ended.
#[derive(Debug, Clone, Default)]
pub(crate) struct DataAbort {
    token: CancellationToken,
    /// The transfer is a listing. When its data connection ends early (ABOR, a client that
    /// goes away), libunftp's side is read to its end rather than cut: libunftp sends no final
    /// reply at all for a listing it could not write, and the session would wait for one.
    listing: Arc<AtomicBool>,
    /// The client's side ended with an error (a reset, a TLS failure).
    broken: Arc<AtomicBool>,
    /// The splice is over.
    done: CancellationToken,
    /// The session's link: told when the client's side breaks, and asked whether libunftp's
    /// side has begun the transfer before that side is reset (see [`ControlLink`]).
    link: Option<Arc<ControlLink>>,
    /// This data connection's number on the link.
    generation: u64,
    /// Everything libunftp sent was written to the client, and its side shut down.
    sent: CancellationToken,
    /// The transfer command that uses this connection was sent to libunftp.
    begun: CancellationToken,
    /// Until when libunftp takes a passive connection (`None`: not passive).
    window: Option<Instant>,
}

impl DataAbort {
    /// The handle of a new data connection of the session whose link is `link`.
    pub(crate) fn new(link: Arc<ControlLink>) -> Self {
        let generation = link.new_data_connection();
        DataAbort {
            link: Some(link),
            generation,
            ..Default::default()
        }
    }

    /// The handle of a new passive data connection whose libunftp port was opened just now
    /// (libunftp takes a connection there for [`ACCEPT_TIMEOUT`]).
    pub(crate) fn passive(link: Arc<ControlLink>) -> Self {
        DataAbort {
            // A margin for the time libunftp's reply took to get here.
            window: Some(Instant::now() + ACCEPT_TIMEOUT - Duration::from_secs(2)),
            ..Self::new(link)
        }
    }

    /// Whether a transfer can still use this data connection: false once libunftp no longer
    /// takes the passive connection (the relay connects its side only for a command).
    pub(crate) fn usable(&self) -> bool {
        self.window.is_none_or(|w| Instant::now() < w)
    }

    /// The transfer command that uses this data connection is being sent to libunftp: what
    /// it is, and that libunftp's side may now be connected.
    pub(crate) fn begin(&self, listing: bool) {
        self.listing.store(listing, Ordering::SeqCst);
        self.begun.cancel();
    }

    /// ABOR: cuts the data connection (the client's side at once).
    pub(crate) fn abort(&self) {
        self.token.cancel();
    }

    /// Whether the client got everything libunftp sent: waits (a bounded time) for the data
    /// connection to end, then tells whether it ended cleanly.
    pub(crate) async fn delivered(&self) -> bool {
        let settled = tokio::time::timeout(ACCEPT_TIMEOUT, async {
            tokio::select! {
                _ = self.sent.cancelled() => {}
                _ = self.done.cancelled() => {}
            }
        });
        let _ = settled.await;
        self.sent.is_cancelled()
    }

    /// libunftp's side once the client's is gone early: a listing is read to its end, anything
    /// else is reset (linger 0), which fails a download or an upload. The reset waits until
    /// libunftp has begun the transfer: a socket reset before that is lost on libunftp's side,
    /// which then never answers the transfer command (see [`ControlLink`]).
    async fn finish(&self, mut upstream: TcpStream) {
        let _ = upstream.set_zero_linger();
        if let Some(link) = &self.link {
            link.data_broken(self.generation);
            link.began(ACCEPT_TIMEOUT).await;
        }
        if self.listing.load(Ordering::SeqCst) {
            let mut sink = tokio::io::sink();
            let drained =
                tokio::time::timeout(ACCEPT_TIMEOUT, tokio::io::copy(&mut upstream, &mut sink));
            let _ = drained.await;
        }
    }
}

/// Splices until the transfer ends or ABOR cuts it.
async fn spliced(
    client: TcpStream,
    mut upstream: TcpStream,
    tls: Option<TlsAcceptor>,
    abort: &DataAbort,
) {
    let clean = tokio::select! {
        clean = secure_splice(client, &mut upstream, tls, &abort.sent) => clean,
        _ = abort.token.cancelled() => {
            tracing::debug!("ftp: data connection cut by ABOR");
            false
        }
    };
    if !clean {
        abort.broken.store(true, Ordering::SeqCst);
        abort.finish(upstream).await;
    }
    abort.done.cancel();
}

/// Takes libunftp's connection on the loopback stand-in for the client's PORT address and
/// splices it to the connection already made to the client.
pub(crate) async fn active(
    stand_in: TcpListener,
    client: TcpStream,
    tls: Option<TlsAcceptor>,
    abort: DataAbort,
) {
    match tokio::time::timeout(ACCEPT_TIMEOUT, stand_in.accept()).await {
        Ok(Ok((up, from))) if from.ip().is_loopback() => spliced(client, up, tls, &abort).await,
        _ => tracing::debug!("ftp: libunftp did not connect for the active transfer"),
    }
}

/// With PROT P, the TLS handshake (the relay is the TLS server, in active mode too, as RFC 4217
/// wants), then the splice. True when both directions ended cleanly.
async fn secure_splice(
    client: TcpStream,
    upstream: &mut TcpStream,
    tls: Option<TlsAcceptor>,
    sent: &CancellationToken,
) -> bool {
    let _ = client.set_nodelay(true);
    // Whatever ends this early (a failed handshake, ABOR, the session's end) must look like an
    // error to libunftp, never like the end of the file.
    let _ = upstream.set_zero_linger();
    let Some(acceptor) = tls else {
        return splice(client, upstream, sent).await;
    };
    match tokio::time::timeout(ACCEPT_TIMEOUT, acceptor.accept(client)).await {
        Ok(Ok(client)) => splice(client, upstream, sent).await,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "ftp: TLS handshake on the data connection failed");
            false
        }
        Err(_) => {
            tracing::info!("ftp: TLS handshake on the data connection timed out");
            false
        }
    }
}

/// Copies both ways until both sides are done.
///
/// The loopback side is closed with a reset (linger 0) unless both directions ended cleanly:
/// a client that resets its data connection mid-upload, or a session torn down, must look like
/// an error to libunftp (which then aborts the upload), never like the end of the file.
///
/// A TLS client that closes without close_notify is an error here too (rustls reports it), so a
/// truncated FTPS upload is never committed.
///
/// `sent` is cancelled once everything libunftp sent is written to the client and the client's
/// side is shut down: a listing's 226 waits for it.
async fn splice<C: AsyncRead + AsyncWrite + Unpin>(
    client: C,
    upstream: &mut TcpStream,
    sent: &CancellationToken,
) -> bool {
    let _ = upstream.set_zero_linger();
    let _ = upstream.set_nodelay(true);
    let (client_r, mut client_w) = tokio::io::split(client);
    let (up_r, mut up_w) = upstream.split();
    // Large buffers: tokio's default 8 KiB means a wake-up and two syscalls per 8 KiB on each
    // side, which on a loaded machine costs more than the copy itself (1 GiB = 131,072 rounds).
    let mut client_r = tokio::io::BufReader::with_capacity(RELAY_BUF, client_r);
    let mut up_r = tokio::io::BufReader::with_capacity(RELAY_BUF, up_r);
    let to_libunftp = async {
        tokio::io::copy_buf(&mut client_r, &mut up_w).await?;
        up_w.shutdown().await
    };
    let to_client = async {
        tokio::io::copy_buf(&mut up_r, &mut client_w).await?;
        client_w.shutdown().await?;
        sent.cancel();
        Ok::<_, io::Error>(())
    };
    // The first error ends both directions (the loopback side is then reset).
    match tokio::try_join!(to_libunftp, to_client) {
        Ok(_) => true,
        Err(e) => {
            tracing::debug!(error = %e, "ftp: data connection ended with an error");
            false
        }
    }
}
