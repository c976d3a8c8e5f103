//! Data connections. The relay owns the client's side of every data connection and speaks
//! *active* mode to libunftp, whatever mode the client uses:
//!
//! - PASV/EPSV: the relay opens a port from `passive_ports` on the control connection's local
//!   address, which takes only a connection from the control connection's peer address
//!   (libunftp would take the first comer, letting anyone who guesses the port steal or plant a
//!   file), and answers the command itself;
//! - PORT/EPRT: the relay checks the client's target, connects to it, and answers the command
//!   itself;
//! - the transfer command: just before it, the relay opens a loopback port standing in for the
//!   client and sends libunftp a `PORT` to it. libunftp's PORT handler connects there and
//!   starts the transfer's data task, with that PORT's own command channel, before it answers;
//!   the transfer command that follows is that task's, and no other's.
//!
//! Why not let libunftp take passive connections: its task that accepts one picks up the
//! session's command channel *when it gets the connection*, not the one of its own PASV/EPSV.
//! A connection that reached it after the session's next PASV/EPSV (a client that connected
//! late, a connection whose command the relay refused itself) took the next port's channel, and
//! the next transfer with it: an upload then read that dead connection's end as the whole file
//! and stored it empty, answered 226 (the FTP differential runner found it). With a PORT sent
//! just before each transfer command, libunftp has at most one data task, made for that command.
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
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// How long a passive port waits for the client's connection, and the stand-in port for
/// libunftp's.
pub(crate) const ACCEPT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a transfer's 150 waits for a TLS handshake the client has begun on its data
/// connection (see [`DataAbort::handshake_done`]); then it goes all the same.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);
/// How long a data connection the client has made (or the relay made to the client's PORT
/// address) is kept for a transfer command (libunftp keeps an active connection as long).
const HOLD_TIMEOUT: Duration = Duration::from_secs(300);
/// Largest buffer of each direction of a data connection's splice, outside the memory budget
/// for every data connection: at 256 KiB, 1,024 sessions held half a GiB in them beyond
/// `transfers.memory_limit`. 64 KiB still moves a GiB in 16,384 rounds (see [`splice`]).
const RELAY_BUF: usize = 64 * 1024;
/// First buffer of each direction: the direction that carries no transfer (the client's side
/// of a download, libunftp's of an upload) never needs more.
const RELAY_BUF_FIRST: usize = 4 * 1024;

/// libunftp is never sent PASV or EPSV (see above); should one reach it anyway, it binds its
/// port on loopback, where only the relay can connect.
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

/// The client's side of a data connection, as PASV/EPSV or PORT/EPRT set it up.
pub(crate) enum ClientSide {
    /// A passive port; only a connection from `peer_ip` is taken.
    Passive {
        listener: TcpListener,
        peer_ip: IpAddr,
    },
    /// The connection made to the client's PORT/EPRT address.
    Active(TcpStream),
}

/// The loopback port standing in for the client, for one transfer command (see the module
/// comment), with the word that libunftp has connected to it.
pub(crate) struct StandIn {
    pub listener: TcpListener,
    /// The reply to the `PORT` sent to libunftp: `true` for 2xx. libunftp's PORT handler
    /// connects before it answers, so its connection is queued on `listener` by then.
    pub connected: oneshot::Receiver<bool>,
}

/// One data connection, from its PASV/EPSV/PORT/EPRT to the end of its transfer: gets the
/// client's side, then, once the transfer command is on its way, libunftp's connection to the
/// stand-in port sent through `stand_in`, and splices the two (through TLS when `tls` is
/// given).
///
/// A later PASV/EPSV/PORT/EPRT of the session cancels `superseded`, and the relay dropping
/// `stand_in` ends the wait too: the port or connection is given back at once instead of being
/// held (a PASV flood would otherwise take the whole range from everyone). A passive port that
/// no client connected to in [`ACCEPT_TIMEOUT`] is closed, and a transfer command after that is
/// refused by the relay; a transfer command whose client never connects fails on libunftp's
/// side (its connection is reset), so nothing is stored.
///
/// ABOR ends the transfer through `abort`, even when the client never connected (libunftp has
/// answered 150 and its connection is reset, so that the transfer gets its final reply).
pub(crate) async fn serve(
    side: ClientSide,
    tls: Option<TlsAcceptor>,
    superseded: CancellationToken,
    mut stand_in: oneshot::Receiver<StandIn>,
    abort: DataAbort,
) {
    if let (Some(_), ClientSide::Passive { listener, .. }) = (&tls, &side) {
        if let Ok(dup) = socket2::SockRef::from(listener).try_clone() {
            *abort.tls_passive.lock().expect("lock") = Some(dup);
        }
    }
    // The descriptors lent to `handshake_done` go with this task at the latest: held beyond,
    // they would keep the passive port bound, and a connection that is cut open.
    let _lent = Lent(abort.clone());
    let (mut listener, peer_ip, mut client) = match side {
        ClientSide::Passive { listener, peer_ip } => (Some(listener), peer_ip, None),
        ClientSide::Active(s) => (
            None,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            Some(ClientConn::new(s, tls.as_ref(), &abort)),
        ),
    };
    let mut upstream: Option<StandIn> = None;
    let mut deadline = Instant::now()
        + if client.is_some() {
            HOLD_TIMEOUT
        } else {
            ACCEPT_TIMEOUT
        };
    let client = loop {
        if let (Some(_), Some(_)) = (&client, &upstream) {
            break client.take().expect("checked");
        }
        tokio::select! {
            _ = superseded.cancelled(), if upstream.is_none() => return,
            _ = abort.token.cancelled() => {
                if let Some(up) = upstream {
                    let ups = accept_upstream(up).await;
                    abort.taken.cancel();
                    abort.finish(ups).await;
                }
                return;
            }
            r = &mut stand_in, if upstream.is_none() => match r {
                Ok(l) => {
                    upstream = Some(l);
                    // The client may connect only now that it sent its command.
                    if client.is_none() {
                        deadline = deadline.max(Instant::now() + ACCEPT_TIMEOUT);
                    }
                }
                // The relay is gone.
                Err(_) => return,
            },
            r = accept_client(listener.as_ref(), peer_ip), if client.is_none() => match r {
                Ok(s) => {
                    client = Some(ClientConn::new(s, tls.as_ref(), &abort));
                    listener = None;
                    if upstream.is_none() {
                        deadline = Instant::now() + HOLD_TIMEOUT;
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ftp: data accept failed");
                    listener = None;
                }
            },
            _ = tokio::time::sleep_until(deadline) => {
                if client.is_none() {
                    tracing::debug!("ftp: the client did not open its data connection in time");
                } else {
                    tracing::debug!("ftp: a data connection no transfer used, closed");
                }
                // A stand-in sent at the last moment: libunftp's side fails, nothing is stored.
                let up = upstream.or_else(|| stand_in.try_recv().ok());
                if let Some(up) = up {
                    let ups = accept_upstream(up).await;
                    abort.taken.cancel();
                    abort.finish(ups).await;
                }
                return;
            }
        }
    };
    drop(listener);
    let mut ups = accept_upstream(upstream.expect("checked")).await;
    if ups.len() > 1 {
        abort.refused.store(true, Ordering::SeqCst);
    }
    abort.taken.cancel();
    if ups.len() != 1 {
        if ups.is_empty() {
            tracing::debug!("ftp: libunftp did not connect for the transfer");
        } else {
            // Which one is libunftp's cannot be told: the transfer fails rather than carry
            // another program's bytes to or from the client.
            tracing::warn!(
                connections = ups.len(),
                "ftp: another program connected to a transfer's internal port: transfer refused"
            );
        }
        client.reset().await;
        abort.broken.store(true, Ordering::SeqCst);
        abort.finish(ups).await;
        abort.done.cancel();
        return;
    }
    let up = ups.pop().expect("one");
    spliced(client, up, &abort).await;
}

/// Closes the descriptors a data connection's task lent to [`DataAbort::handshake_done`] when
/// dropped.
struct Lent(DataAbort);

impl Drop for Lent {
    fn drop(&mut self) {
        self.0.tls_client.lock().expect("lock").take();
        self.0.tls_passive.lock().expect("lock").take();
    }
}

/// The client's side of a data connection: plain, or its TLS handshake, begun as soon as the
/// client connected (in a task of its own, which the handle aborts when dropped).
///
/// Begun at once, as servers that handshake when they accept do, the handshake is over before
/// the transfer command is even answered. Begun with the transfer (after libunftp's 150), it
/// raced the client: basic-ftp (Node) takes a data connection as ready once the cipher is
/// known, and with nothing to send (an empty file) closes it before its TLS Finished is out;
/// the relay then saw the handshake cut short, and most empty FTPS uploads failed with 426.
enum ClientConn {
    Plain(TcpStream),
    Tls(AbortOnDropHandle<io::Result<TlsStream<TcpStream>>>),
}

impl ClientConn {
    /// `abort` learns when the client begins the handshake and when it ends (see
    /// [`DataAbort::handshake_done`]).
    fn new(s: TcpStream, tls: Option<&TlsAcceptor>, abort: &DataAbort) -> ClientConn {
        let _ = s.set_nodelay(true);
        let Some(acceptor) = tls else {
            return ClientConn::Plain(s);
        };
        let acceptor = acceptor.clone();
        if let Ok(dup) = socket2::SockRef::from(&s).try_clone() {
            *abort.tls_client.lock().expect("lock") = Some(dup);
        }
        // The passive port is closed once its connection is taken.
        abort.tls_passive.lock().expect("lock").take();
        abort.accepted.cancel();
        let (hello, secured) = (abort.hello.clone(), abort.secured.clone());
        let lent = abort.tls_client.clone();
        let handshake = async move {
            // Its first byte: the client has begun (a ClientHello, or whatever it sends).
            let _ = s.peek(&mut [0u8; 1]).await;
            hello.cancel();
            let r = acceptor.accept(s).await;
            // Only the handshake needs the other descriptor: the connection's own end (a reset
            // included) must reach the client.
            lent.lock().expect("lock").take();
            secured.cancel();
            r
        };
        ClientConn::Tls(AbortOnDropHandle::new(tokio::spawn(handshake)))
    }

    /// Closes the connection with a reset, so that the client sees its transfer fail; a
    /// handshake still under way is cut.
    async fn reset(self) {
        match self {
            ClientConn::Plain(s) => {
                let _ = s.set_zero_linger();
            }
            ClientConn::Tls(h) if h.is_finished() => {
                if let Ok(Ok(s)) = h.await {
                    let _ = s.get_ref().0.set_zero_linger();
                }
            }
            ClientConn::Tls(_) => {}
        }
    }
}

/// The client's passive connection, from `peer_ip` only (others are refused and logged).
/// Pending forever without a listener.
async fn accept_client(listener: Option<&TcpListener>, peer_ip: IpAddr) -> io::Result<TcpStream> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    loop {
        let (s, from) = listener.accept().await?;
        if from.ip().to_canonical() == peer_ip {
            return Ok(s);
        }
        tracing::warn!(
            expected = %peer_ip,
            from = %from,
            "ftp: data connection from another address than the session's refused"
        );
    }
}

/// The connections to the stand-in port once libunftp has answered its PORT: exactly one,
/// libunftp's, unless another program connected too; none when libunftp refused the PORT.
///
/// The port is on loopback, where any program of the machine can connect to it (one that
/// connects to ports at random, or one that connects late to a port that was its own a moment
/// ago and that the kernel has handed on since). Taking the first connection would splice that
/// program's bytes into the client's download, or the client's upload to that program. libunftp
/// connects before it answers the PORT, so once the answer is in, every connection made before
/// libunftp's is queued with it: more than one connection means one is a stranger's, and the
/// caller fails the transfer. The listener is closed on return, so that no later one is taken.
async fn accept_upstream(stand_in: StandIn) -> Vec<TcpStream> {
    let confirmed = tokio::time::timeout(ACCEPT_TIMEOUT, stand_in.connected).await;
    if !matches!(confirmed, Ok(Ok(true))) {
        return Vec::new();
    }
    let mut ups = queued(&stand_in.listener);
    if ups.is_empty() {
        // libunftp's handshake is over when it answers; its connection may still be on its way
        // to the queue (loopback packets handled on another core).
        if let Ok(Ok((up, _))) =
            tokio::time::timeout(ACCEPT_TIMEOUT, stand_in.listener.accept()).await
        {
            ups.push(up);
            ups.extend(queued(&stand_in.listener));
        }
    }
    ups
}

/// The connections queued on `listener` now (accepted without waiting for the reactor, which
/// may not have seen them yet).
fn queued(listener: &TcpListener) -> Vec<TcpStream> {
    let mut out = Vec::new();
    while let Ok((s, _)) = socket2::SockRef::from(listener).accept() {
        let s: std::net::TcpStream = s.into();
        if s.set_nonblocking(true).is_err() {
            continue;
        }
        if let Ok(s) = TcpStream::from_std(s) {
            out.push(s);
        }
    }
    out
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
    /// Which connection to the stand-in port is libunftp's is decided (or that none is).
    taken: CancellationToken,
    /// The transfer was refused: another program connected to the stand-in port as well.
    refused: Arc<AtomicBool>,
    /// The client has begun the data connection's TLS handshake.
    hello: CancellationToken,
    /// The client's side of a TLS data connection (another descriptor of its socket), to see
    /// whether its first bytes wait there before the handshake's task has looked.
    tls_client: Arc<std::sync::Mutex<Option<socket2::Socket>>>,
    /// The passive port of a TLS data connection (another descriptor of it), to see whether
    /// the client's connection waits there before this connection's task has taken it.
    tls_passive: Arc<std::sync::Mutex<Option<socket2::Socket>>>,
    /// The client's connection of a TLS data connection was taken.
    accepted: CancellationToken,
    /// That handshake has ended (either way).
    secured: CancellationToken,
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

    /// The transfer command that uses this data connection is being sent to libunftp: what
    /// it is.
    pub(crate) fn begin(&self, listing: bool) {
        self.listing.store(listing, Ordering::SeqCst);
    }

    /// Waits (a bounded time) for the data connection's TLS handshake to end, when the client
    /// has begun it; returns at once otherwise (plain FTP, no connection yet, or a client that
    /// waits for the 150 before it begins, as Python's ftplib does). The relay passes a
    /// transfer's 150 only after this: a client that handshakes as soon as it connects may take
    /// the 150 with a cipher known as "ready", and an empty upload then closed the connection
    /// before its TLS Finished was out (basic-ftp, Node).
    pub(crate) async fn handshake_done(&self) {
        let queued = || {
            let passive = self.tls_passive.lock().expect("lock");
            passive.as_ref().is_some_and(|l| {
                let mut fds = [rustix::event::PollFd::new(l, rustix::event::PollFlags::IN)];
                let now = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
            })
        };
        if !self.accepted.is_cancelled() && queued() {
            // The client has connected; this connection's task takes it in a moment.
            let _ = tokio::time::timeout(HANDSHAKE_WAIT, self.accepted.cancelled()).await;
        }
        let waiting = || {
            let client = self.tls_client.lock().expect("lock");
            client.as_ref().is_some_and(|s| {
                let mut first = [std::mem::MaybeUninit::<u8>::uninit(); 1];
                // The socket is non-blocking: nothing there is an error (WouldBlock).
                matches!(s.peek(&mut first), Ok(n) if n > 0)
            })
        };
        if self.hello.is_cancelled() || waiting() {
            let _ = tokio::time::timeout(HANDSHAKE_WAIT, self.secured.cancelled()).await;
        }
    }

    /// ABOR: cuts the data connection (the client's side at once).
    pub(crate) fn abort(&self) {
        self.token.cancel();
    }

    /// Whether the client got everything libunftp sent: waits (a bounded time) for the data
    /// connection to end, then tells whether it ended cleanly (`Some(true)`), ended without
    /// that (`Some(false)`: a client that went away, a TLS handshake that failed), or was still
    /// under way (`None`: a slow client still reading what the kernel's buffers hold).
    pub(crate) async fn delivered(&self) -> Option<bool> {
        let settled = tokio::time::timeout(ACCEPT_TIMEOUT, async {
            tokio::select! {
                _ = self.sent.cancelled() => {}
                _ = self.done.cancelled() => {}
            }
        });
        let _ = settled.await;
        if self.sent.is_cancelled() {
            Some(true)
        } else if self.done.is_cancelled() {
            Some(false)
        } else {
            None
        }
    }

    /// Whether the transfer was refused because another program connected to its stand-in
    /// port (see [`accept_upstream`]): libunftp may have written a small file into that
    /// connection and answered 226 all the same. Waits (a bounded time) for the decision.
    pub(crate) async fn refused(&self) -> bool {
        let _ = tokio::time::timeout(ACCEPT_TIMEOUT, self.taken.cancelled()).await;
        self.refused.load(Ordering::SeqCst)
    }

    /// libunftp's side once the client's is gone early: a listing is read to its end, anything
    /// else is reset (linger 0), which fails a download or an upload. The reset waits until
    /// libunftp has begun the transfer: a socket reset before that is lost on libunftp's side,
    /// which then never answers the transfer command (see [`ControlLink`]).
    ///
    /// `upstream` is every connection that may be libunftp's: none when it never connected,
    /// several when a stranger connected to the stand-in port too (see [`accept_upstream`]).
    async fn finish(&self, mut upstream: Vec<TcpStream>) {
        if upstream.is_empty() {
            return;
        }
        for up in &upstream {
            let _ = up.set_zero_linger();
        }
        if let Some(link) = &self.link {
            link.data_broken(self.generation);
            link.began(ACCEPT_TIMEOUT).await;
        }
        if self.listing.load(Ordering::SeqCst) {
            let drains = upstream.iter_mut().map(|up| async move {
                let mut sink = tokio::io::sink();
                let _ = tokio::io::copy(up, &mut sink).await;
            });
            let _ = tokio::time::timeout(ACCEPT_TIMEOUT, futures::future::join_all(drains)).await;
        }
    }
}

/// Splices until the transfer ends or ABOR cuts it.
async fn spliced(client: ClientConn, mut upstream: TcpStream, abort: &DataAbort) {
    let clean = tokio::select! {
        clean = secure_splice(client, &mut upstream, &abort.sent) => clean,
        _ = abort.token.cancelled() => {
            tracing::debug!("ftp: data connection cut by ABOR");
            false
        }
    };
    if !clean {
        abort.broken.store(true, Ordering::SeqCst);
        abort.finish(vec![upstream]).await;
    }
    abort.done.cancel();
}

/// With PROT P, the end of the TLS handshake (the relay is the TLS server, in active mode too,
/// as RFC 4217 wants; see [`ClientConn`]), then the splice. True when both directions ended
/// cleanly.
async fn secure_splice(
    client: ClientConn,
    upstream: &mut TcpStream,
    sent: &CancellationToken,
) -> bool {
    // Whatever ends this early (a failed handshake, ABOR, the session's end) must look like an
    // error to libunftp, never like the end of the file.
    let _ = upstream.set_zero_linger();
    let handshake = match client {
        ClientConn::Plain(client) => return splice_plain(client, upstream, sent).await,
        ClientConn::Tls(handshake) => handshake,
    };
    match tokio::time::timeout(ACCEPT_TIMEOUT, handshake).await {
        Ok(Ok(Ok(client))) => splice(client, upstream, sent).await,
        Ok(Err(e)) => {
            tracing::info!(error = %e, "ftp: TLS handshake on the data connection ended early");
            false
        }
        Ok(Ok(Err(e))) => {
            tracing::info!(error = %e, "ftp: TLS handshake on the data connection failed");
            false
        }
        Err(_) => {
            tracing::info!("ftp: TLS handshake on the data connection timed out");
            false
        }
    }
}

/// Copies `r` to `w` until `r` ends, through a buffer that starts at [`RELAY_BUF_FIRST`] and
/// doubles, up to [`RELAY_BUF`], each time a read fills it. Large buffers for the transfer:
/// tokio's default 8 KiB means a wake-up and two syscalls per 8 KiB on each side, which on a
/// loaded machine costs more than the copy itself (1 GiB = 131,072 rounds). A small one for the
/// other direction, which carries nothing (1,024 sessions: 60 MiB less outside the budget).
async fn copy_growing<R, W>(r: &mut R, w: &mut W) -> io::Result<u64>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; RELAY_BUF_FIRST];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        if n == buf.len() && buf.len() < RELAY_BUF {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// [`splice`] for a plain data connection: the same ends and errors, with a download's bytes
/// moved to the client inside the kernel ([`super::kernel_relay`]). The other direction (an
/// upload's) is copied as before: spliced, it cost the gateway as much CPU or more (1 GiB FTP
/// put, and 1,024 sessions; `bench/README.md`), and the end of an upload, which decides whether
/// it is committed, stays read the one way it always was. Without a pipe (no file descriptor
/// left, or only small pipes), it copies both ways.
#[cfg(target_os = "linux")]
async fn splice_plain(
    mut client: TcpStream,
    upstream: &mut TcpStream,
    sent: &CancellationToken,
) -> bool {
    use super::kernel_relay::{copy, Pipe};
    let mut outward = match Pipe::new() {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "ftp: no pipe for the data connection, copying");
            return splice(client, upstream, sent).await;
        }
    };
    let _ = upstream.set_zero_linger();
    let _ = upstream.set_nodelay(true);
    let (mut client_r, client_w) = client.split();
    let (up_r, mut up_w) = upstream.split();
    let to_libunftp = async {
        copy_growing(&mut client_r, &mut up_w).await?;
        up_w.shutdown().await
    };
    let to_client = async {
        let client: &TcpStream = client_w.as_ref();
        copy(up_r.as_ref(), client, &mut outward).await?;
        socket2::SockRef::from(client).shutdown(std::net::Shutdown::Write)?;
        sent.cancel();
        Ok::<_, io::Error>(())
    };
    relay_result(tokio::try_join!(to_libunftp, to_client))
}

#[cfg(not(target_os = "linux"))]
async fn splice_plain(
    client: TcpStream,
    upstream: &mut TcpStream,
    sent: &CancellationToken,
) -> bool {
    splice(client, upstream, sent).await
}

/// How a relay ended: true when both directions ended cleanly.
fn relay_result<T>(r: io::Result<T>) -> bool {
    match r {
        Ok(_) => true,
        Err(e) => {
            // One line: a transfer on this connection fails for it (a killed client's too).
            tracing::info!(error = %e, "ftp: data connection ended with an error");
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
    let (mut client_r, mut client_w) = tokio::io::split(client);
    let (mut up_r, mut up_w) = upstream.split();
    let to_libunftp = async {
        copy_growing(&mut client_r, &mut up_w).await?;
        up_w.shutdown().await
    };
    let to_client = async {
        copy_growing(&mut up_r, &mut client_w).await?;
        client_w.shutdown().await?;
        sent.cancel();
        Ok::<_, io::Error>(())
    };
    // The first error ends both directions (the loopback side is then reset).
    relay_result(tokio::try_join!(to_libunftp, to_client))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data connection's task with a client connected to its passive port: the client's
    /// socket, and the sender of the stand-in port.
    async fn connected_client() -> (TcpStream, oneshot::Sender<StandIn>, DataAbort) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let abort = DataAbort::default();
        tokio::spawn(serve(
            ClientSide::Passive {
                listener,
                peer_ip: Ipv4Addr::LOCALHOST.into(),
            },
            None,
            CancellationToken::new(),
            rx,
            abort.clone(),
        ));
        (TcpStream::connect(addr).await.unwrap(), tx, abort)
    }

    /// A stand-in port handed to the task: its address, and the sender of libunftp's answer
    /// to its PORT.
    async fn stand_in(tx: oneshot::Sender<StandIn>) -> (SocketAddr, oneshot::Sender<bool>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap();
        let (connected, told) = oneshot::channel();
        tx.send(StandIn {
            listener,
            connected: told,
        })
        .ok()
        .unwrap();
        (port, connected)
    }

    /// Everything the client reads until its connection ends (or breaks).
    async fn read_all(mut client: TcpStream) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let broke = tokio::time::timeout(Duration::from_secs(10), client.read_to_end(&mut got))
            .await
            .expect("the data connection ends")
            .is_err();
        (got, broke)
    }

    #[tokio::test]
    async fn a_stranger_on_the_stand_in_port_fails_the_transfer() {
        let (client, tx, abort) = connected_client().await;
        let (port, connected) = stand_in(tx).await;
        // Another program connects first, then libunftp (a download), which then answers its
        // PORT.
        let mut stranger = TcpStream::connect(port).await.unwrap();
        stranger.write_all(b"planted bytes").await.unwrap();
        let mut libunftp = TcpStream::connect(port).await.unwrap();
        libunftp.write_all(b"the file").await.unwrap();
        connected.send(true).unwrap();
        let (got, broke) = read_all(client).await;
        assert!(
            got.is_empty(),
            "the client got {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            broke,
            "the client's connection must be reset, never ended cleanly"
        );
        // The relay answers the RETR 426 even if libunftp says 226.
        assert!(abort.refused().await);
        // Both connections on the stand-in port are reset: libunftp's transfer fails.
        let mut buf = [0u8; 16];
        assert!(matches!(libunftp.read(&mut buf).await, Err(_) | Ok(0)));
        assert!(matches!(stranger.read(&mut buf).await, Err(_) | Ok(0)));
    }

    #[tokio::test]
    async fn libunftp_alone_on_the_stand_in_port_carries_the_transfer() {
        let (client, tx, abort) = connected_client().await;
        let (port, connected) = stand_in(tx).await;
        let mut libunftp = TcpStream::connect(port).await.unwrap();
        connected.send(true).unwrap();
        libunftp.write_all(b"the file").await.unwrap();
        libunftp.shutdown().await.unwrap();
        let (got, broke) = read_all(client).await;
        assert_eq!(got, b"the file");
        assert!(!broke);
        assert!(!abort.refused().await);
        // The port closed once libunftp's connection was taken.
        assert!(TcpStream::connect(port).await.is_err());
    }

    #[tokio::test]
    async fn a_refused_port_takes_no_connection() {
        let (client, tx, _) = connected_client().await;
        let (port, connected) = stand_in(tx).await;
        let mut stranger = TcpStream::connect(port).await.unwrap();
        stranger.write_all(b"planted bytes").await.unwrap();
        // libunftp could not connect: it answered its PORT with an error.
        connected.send(false).unwrap();
        let (got, _) = read_all(client).await;
        assert!(
            got.is_empty(),
            "the client got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
}
