//! What an upload needs to know about its session's control connection before it commits.
//!
//! A plain-FTP data connection ends with a FIN whether the client finished its file or died
//! half-way (the kernel of a killed process closes its sockets normally). Only the control
//! connection tells the two apart: a client that finished is still there to read the `226`. So
//! an upload commits only when, at the moment of committing, the control connection is still
//! open and the transfer was not aborted (ABOR); otherwise it is given up and nothing changes.
//!
//! The kernel of a killed client closes its sockets one after the other, the data connection
//! possibly first: its end can be seen a moment before the control connection's. So an upload
//! whose data ended waits [`SETTLE`] for the control connection to end too before committing.
//!
//! It also tells the data connection's splice (see [`super::data`]) when libunftp's side of a
//! transfer has reached the storage adapter. libunftp 0.24 asks the peer address of its data
//! socket (in its PORT handler, after connecting) before it starts the data task, and on a
//! socket already reset (the relay resets it when the client's side breaks) that fails:
//! libunftp then drops the transfer without a final reply, and the session hangs. So the relay resets libunftp's side only once
//! the transfer has begun there ([`ControlLink::began`]).
//!
//! It also carries the one decision made for a transfer command before libunftp sees it (see
//! [`super::prepare`]): the file opened for a RETR, the listing begun for a LIST, the entry
//! found for a SIZE. The storage adapter takes it instead of asking the storage crate again.

use bucketgate_storage::backend::ListStream;
use bucketgate_storage::{Entry, FileReader, VPath};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How long an upload whose data has ended waits to see whether its control connection ends
/// too (a killed client) before it commits. Every upload waits this long.
pub(crate) const SETTLE: Duration = Duration::from_millis(10);

/// Shared by a session's relay (which owns the control connection) and its storage adapter
/// (which commits uploads).
#[derive(Default)]
pub(crate) struct ControlLink {
    /// A duplicate of the client's control socket, only to look at its state (never read from
    /// or written to). The relay drops it when it lets the connection go, so that it never
    /// keeps a closed connection open.
    socket: Mutex<Option<OwnedFd>>,
    /// The relay has stopped serving the client (end of stream, error, shutdown).
    closed: CancellationToken,
    /// The client sent ABOR during the current transfer.
    aborted: AtomicBool,
    /// What the relay found for the command libunftp is about to run.
    ready: Mutex<Option<Ready>>,
    /// libunftp's data task has called the storage adapter since the latest data connection
    /// was set up (PASV, EPSV, PORT, EPRT): it has its socket, and a reset is now seen as one.
    began: AtomicBool,
    began_notify: Notify,
    /// The client's side of the latest data connection ended with an error (a reset, a TLS
    /// stream cut): no upload on it may commit.
    data_broken: AtomicBool,
    /// Which data connection is the latest: an earlier one that breaks late says nothing of
    /// the transfer on this one.
    generation: AtomicU64,
    /// Why the storage adapter refused the latest DELE, MKD, RMD or RNTO, in the words the SFTP
    /// frontend uses ("mkdir /docs: already exists"): the relay puts it in the reply instead of
    /// libunftp's fixed text for the error's kind ("550 Directory not found" for a folder that
    /// exists). The relay has one command at a time at libunftp, so the reason noted is that
    /// command's.
    refusal: Mutex<Option<String>>,
}

/// The outcome of [`super::prepare`] for one command, handed to the storage adapter.
pub(crate) enum Ready {
    /// RETR: the file, opened (permission, existence and size checked once).
    Read(VPath, Box<FileReader>),
    /// LIST, NLST, MLSD: the listing, begun.
    List(VPath, ListStream),
    /// SIZE, MDTM: the entry, or why there is none.
    Stat(VPath, bucketgate_storage::Result<Entry>),
    /// STOR after REST n (the file, of size n) and APPE (the file, or `None` when there is none
    /// to append to: libunftp then stores from offset 0).
    Append(VPath, Option<Entry>),
}

impl Ready {
    fn path(&self) -> &VPath {
        match self {
            Ready::Read(p, _) | Ready::List(p, _) | Ready::Stat(p, _) | Ready::Append(p, _) => p,
        }
    }
}

impl std::fmt::Debug for ControlLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlLink")
    }
}

impl ControlLink {
    /// A link that watches `socket` (a duplicate of the control connection's socket).
    pub(crate) fn new(socket: Option<OwnedFd>) -> Self {
        ControlLink {
            socket: Mutex::new(socket),
            ..Default::default()
        }
    }

    /// The relay no longer serves the client: no upload of this session may commit any more.
    pub(crate) fn close(&self) {
        self.closed.cancel();
        self.socket.lock().expect("lock").take();
        self.set_ready(None);
    }

    /// Whether the session is over (see [`ControlLink::close`]).
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// ABOR: the transfer in progress must not commit.
    pub(crate) fn abort_transfer(&self) {
        self.aborted.store(true, Ordering::SeqCst);
    }

    /// A new data connection is being set up: what was said of the previous one is forgotten.
    /// Returns the new connection's number, for [`ControlLink::data_broken`].
    pub(crate) fn new_data_connection(&self) -> u64 {
        self.began.store(false, Ordering::SeqCst);
        self.data_broken.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The storage adapter was called for a transfer (libunftp's data task has its socket).
    pub(crate) fn transfer_began(&self) {
        self.began.store(true, Ordering::SeqCst);
        self.began_notify.notify_waiters();
    }

    /// The client's side of data connection number `generation` broke: if it is still the
    /// latest, its transfer must fail.
    pub(crate) fn data_broken(&self, generation: u64) {
        if self.generation.load(Ordering::SeqCst) == generation {
            self.data_broken.store(true, Ordering::SeqCst);
        }
    }

    /// Waits until the transfer has begun on libunftp's side, the session is over, or `limit`
    /// has passed (a transfer command that never comes).
    pub(crate) async fn began(&self, limit: Duration) {
        let wait = async {
            loop {
                let notified = self.began_notify.notified();
                if self.began.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        tokio::select! {
            _ = wait => {}
            _ = self.closed.cancelled() => {}
            _ = tokio::time::sleep(limit) => {}
        }
    }

    /// A new transfer command is about to start.
    pub(crate) fn new_transfer(&self) {
        self.aborted.store(false, Ordering::SeqCst);
    }

    /// The storage adapter refused a DELE, MKD, RMD or RNTO for this reason (the error's
    /// client-safe Display form: the operation, the user's path, a short description).
    pub(crate) fn note_refusal(&self, e: &bucketgate_storage::Error) {
        // A reply is one line: a name from the bucket may hold control characters.
        let text: String = e
            .to_string()
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
        *self.refusal.lock().expect("lock") = Some(text);
    }

    /// The reason noted for the command being answered, if any (forgotten either way).
    pub(crate) fn take_refusal(&self) -> Option<String> {
        self.refusal.lock().expect("lock").take()
    }

    /// Hands what the relay found for the next command to the storage adapter.
    pub(crate) fn set_ready(&self, ready: Option<Ready>) {
        *self.ready.lock().expect("lock") = ready;
    }

    /// What the relay found for `path`, if it prepared this command (libunftp also calls the
    /// adapter for commands that are not prepared: STAT, MLST, RNFR).
    pub(crate) fn take_ready(&self, path: &VPath) -> Option<Ready> {
        let mut slot = self.ready.lock().expect("lock");
        match slot.as_ref() {
            Some(r) if r.path() == path => slot.take(),
            _ => None,
        }
    }

    /// The entry prepared for `path` by an APPE, left for the upload that follows.
    pub(crate) fn appending(&self, path: &VPath) -> Option<Option<Entry>> {
        match self.ready.lock().expect("lock").as_ref() {
            Some(Ready::Append(p, e)) if p == path => Some(e.clone()),
            _ => None,
        }
    }

    /// Whether an upload whose data has just ended may commit: not aborted, and the client's
    /// control connection still open after [`SETTLE`]. `Err` says why not, for the log.
    pub(crate) async fn may_commit(&self) -> Result<(), &'static str> {
        self.alive()?;
        tokio::select! {
            _ = self.closed.cancelled() => Err("the session ended"),
            _ = tokio::time::sleep(SETTLE) => self.alive(),
        }
    }

    /// Not aborted, the data connection not broken, and the client's control connection
    /// neither closed by the relay nor ended
    /// by the client (a FIN or a reset already received counts, even before the relay has read
    /// it).
    fn alive(&self) -> Result<(), &'static str> {
        if self.aborted.load(Ordering::SeqCst) {
            return Err("ABOR");
        }
        if self.data_broken.load(Ordering::SeqCst) {
            return Err("its data connection broke");
        }
        if self.closed.is_cancelled() {
            return Err("the session ended");
        }
        let guard = self.socket.lock().expect("lock");
        let Some(fd) = guard.as_ref() else {
            return Ok(());
        };
        // The socket is non-blocking (tokio's): a peek answers at once. Data waiting means the
        // client is still talking; nothing waiting means it is still there; end of stream or
        // an error means it is gone.
        let mut byte = [MaybeUninit::<u8>::uninit()];
        match socket2::SockRef::from(fd).peek(&mut byte) {
            Ok(0) => Err("the client closed its control connection"),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(()),
            Err(_) => Err("the control connection failed"),
        }
    }
}
