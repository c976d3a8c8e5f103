//! The SFTP packet loop: reads a request, awaits the [`Handler`], writes the reply.
//!
//! russh-sftp's own `server::run` does the same, but it keeps reading after a packet longer
//! than the limit (the stream is then out of sync and every later "packet" is garbage), and it
//! retries forever on an I/O error other than EOF. This loop skips an over-long packet whole and
//! answers it with a FAILURE, and stops on any I/O error.

use bucketgate_storage::budget::{MemoryBudget, MemoryPermit};
use bytes::Bytes;
use russh_sftp::protocol::{Packet, Status, StatusCode};
use russh_sftp::server::{Handler, StatusReply};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests read ahead of the handler, bounded in bytes: enough for any client's pipelining
/// (OpenSSH keeps 64 × 255 KiB in flight), small enough to bound a flooding client.
const READ_AHEAD_BYTES: u32 = 32 * 1024 * 1024;

/// Where the bytes of a request read ahead are counted until its handler takes it: in the
/// process's memory budget, or in the session's own small allowance (see [`run`]); released
/// when dropped.
#[derive(Default)]
struct Held {
    _budget: Option<MemoryPermit>,
    _own: Option<OwnedSemaphorePermit>,
}

/// Serves SFTP requests from `stream` until the client closes it or an I/O error occurs.
///
/// Reading runs in its own task, ahead of the handler. Were requests read only between
/// replies, a reply waiting for the client's SSH window would stop the reading; russh's
/// per-channel queue then fills, its session loop stops reading the socket, and the client's
/// window adjustment that would unblock the reply is never read: a 1 GiB download hung so.
///
/// Memory: the requests read ahead (up to [`READ_AHEAD_BYTES`] per session) are counted in
/// the process's `budget` (`transfers.memory_limit`) until the handler takes them. When the
/// budget is used up, a session still reads ahead one packet's worth on its own allowance
/// (`max_packet_len` bytes, outside the budget), so that it never waits on memory that only
/// its own progress can free; beyond that, the reader waits for either.
pub(crate) async fn run<S, H>(
    stream: S,
    mut handler: H,
    max_packet_len: u32,
    budget: Option<Arc<MemoryBudget>>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
    H: Handler + Send,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let cap = Arc::new(Semaphore::new(READ_AHEAD_BYTES as usize));
    let own = Arc::new(Semaphore::new(max_packet_len.max(1) as usize));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let r = read_request(&mut rd, max_packet_len).await;
            let (request, size) = match r {
                Ok(v) => v,
                Err(_) => break,
            };
            let size = size.min(READ_AHEAD_BYTES);
            let Ok(capped) = cap.clone().acquire_many_owned(size).await else {
                break;
            };
            let held = match hold(budget.as_deref(), &own, size).await {
                Some(h) => h,
                None => break,
            };
            if tx.send((request, capped, held)).is_err() {
                break;
            }
        }
    });
    while let Some((request, capped, held)) = rx.recv().await {
        // From here the request's bytes belong to the handler, which counts what it keeps
        // (part buffers, the reorder window).
        drop(held);
        let reply = match request {
            Request::Packet(p) => {
                tracing::trace!(request = ?p, "sftp request");
                let reply = process(p, &mut handler).await;
                if let Packet::Status(s) = &reply {
                    tracing::trace!(code = ?s.status_code, message = %s.error_message, "sftp reply");
                }
                reply
            }
            Request::Refused(id, why) => Packet::status(id, StatusCode::Failure, why, "en-US"),
            Request::Malformed(id) => Packet::error(id, StatusCode::BadMessage),
        };
        drop(capped);
        let bytes = match Bytes::try_from(reply) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode an SFTP reply");
                break;
            }
        };
        if wr.write_all(&bytes).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    reader.abort();
    tracing::debug!("sftp stream ended");
}

/// Counts `size` bytes read ahead: in the budget when it has them free, else in the session's
/// own allowance when that has them, else whichever frees them first. `None`: closed.
async fn hold(budget: Option<&MemoryBudget>, own: &Arc<Semaphore>, size: u32) -> Option<Held> {
    let in_budget = |p| Held {
        _budget: Some(p),
        _own: None,
    };
    let in_own = |p| Held {
        _budget: None,
        _own: Some(p),
    };
    let Some(budget) = budget else {
        return Some(Held::default());
    };
    if let Some(p) = budget.try_acquire(u64::from(size)) {
        return Some(in_budget(p));
    }
    if let Ok(p) = own.clone().try_acquire_many_owned(size) {
        return Some(in_own(p));
    }
    if !budget.can_hold(u64::from(size)) {
        return own.clone().acquire_many_owned(size).await.ok().map(in_own);
    }
    tokio::select! {
        p = budget.acquire(u64::from(size)) => p.ok().map(in_budget),
        p = own.clone().acquire_many_owned(size) => p.ok().map(in_own),
    }
}

enum Request {
    Packet(Packet),
    /// A packet skipped unread (too long), with its request id.
    Refused(u32, &'static str),
    /// A packet that does not decode, with its request id when it had one.
    Malformed(u32),
}

/// Reads one request; returns it with its length in bytes.
async fn read_request<S: AsyncRead + Unpin>(
    stream: &mut S,
    max_len: u32,
) -> std::io::Result<(Request, u32)> {
    let len = stream.read_u32().await?;
    if len < 5 {
        // Too short to hold a type and a request id: nothing to answer, and the rest of the
        // stream cannot be trusted.
        return Err(std::io::ErrorKind::InvalidData.into());
    }
    if len > max_len {
        let _kind = stream.read_u8().await?;
        let id = stream.read_u32().await?;
        let rest = u64::from(len - 5);
        let skipped =
            tokio::io::copy(&mut (&mut *stream).take(rest), &mut tokio::io::sink()).await?;
        if skipped != rest {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        return Ok((Request::Refused(id, "packet too long"), 0));
    }
    let mut buf = vec![0u8; len as usize];
    stream.read_exact(&mut buf).await?;
    let id = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    let mut bytes = Bytes::from(buf);
    let request = match Packet::try_from(&mut bytes) {
        Ok(p) => Request::Packet(p),
        Err(_) => Request::Malformed(id),
    };
    Ok((request, len))
}

/// Calls the handler method of one request and makes its reply packet.
async fn process<H: Handler + Send>(packet: Packet, h: &mut H) -> Packet {
    let id = packet.get_request_id();
    let r: Result<Packet, H::Error> = match packet {
        Packet::Init(p) => h.init(p.version, p.extensions).await.map(Into::into),
        Packet::Open(p) => h
            .open(p.id, p.filename, p.pflags, p.attrs)
            .await
            .map(Into::into),
        Packet::Close(p) => h.close(p.id, p.handle).await.map(Into::into),
        Packet::Read(p) => h
            .read(p.id, p.handle, p.offset, p.len)
            .await
            .map(Into::into),
        Packet::Write(p) => h
            .write(p.id, p.handle, p.offset, p.data)
            .await
            .map(Into::into),
        Packet::Lstat(p) => h.lstat(p.id, p.path).await.map(Into::into),
        Packet::Fstat(p) => h.fstat(p.id, p.handle).await.map(Into::into),
        Packet::SetStat(p) => h.setstat(p.id, p.path, p.attrs).await.map(Into::into),
        Packet::FSetStat(p) => h.fsetstat(p.id, p.handle, p.attrs).await.map(Into::into),
        Packet::OpenDir(p) => h.opendir(p.id, p.path).await.map(Into::into),
        Packet::ReadDir(p) => h.readdir(p.id, p.handle).await.map(Into::into),
        Packet::Remove(p) => h.remove(p.id, p.filename).await.map(Into::into),
        Packet::MkDir(p) => h.mkdir(p.id, p.path, p.attrs).await.map(Into::into),
        Packet::RmDir(p) => h.rmdir(p.id, p.path).await.map(Into::into),
        Packet::RealPath(p) => h.realpath(p.id, p.path).await.map(Into::into),
        Packet::Stat(p) => h.stat(p.id, p.path).await.map(Into::into),
        Packet::Rename(p) => h.rename(p.id, p.oldpath, p.newpath).await.map(Into::into),
        Packet::ReadLink(p) => h.readlink(p.id, p.path).await.map(Into::into),
        Packet::Symlink(p) => h
            .symlink(p.id, p.linkpath, p.targetpath)
            .await
            .map(Into::into),
        Packet::Extended(p) => h.extended(p.id, p.request, p.data).await,
        // Replies sent by a client are not requests.
        _ => return Packet::error(id, StatusCode::BadMessage),
    };
    match r {
        Ok(p) => p,
        Err(e) => {
            let StatusReply {
                status_code,
                error_message,
                language_tag,
            } = e.into();
            Packet::Status(Status {
                id,
                status_code,
                error_message: error_message.unwrap_or_else(|| status_code.to_string()),
                language_tag: language_tag.unwrap_or_else(|| "en-US".to_string()),
            })
        }
    }
}
