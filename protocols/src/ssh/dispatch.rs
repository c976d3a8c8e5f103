//! The SFTP packet loop: reads a request, awaits the [`Handler`], writes the reply.
//!
//! russh-sftp's own `server::run` does the same, but it keeps reading after a packet longer
//! than the limit (the stream is then out of sync and every later "packet" is garbage), and it
//! retries forever on an I/O error other than EOF. This loop skips an over-long packet whole and
//! answers it with a FAILURE, and stops on any I/O error.
//!
//! WRITE and READ are decoded here rather than by russh-sftp, whose packets hold their data in a
//! `Vec`: a WRITE's data stays a slice of the packet as read, down to the upload's part buffer,
//! and a READ's data goes to russh as the reader's own bytes, behind its 13-byte header sent
//! separately (russh cuts channel data into packets of the client's maximum size, 32 KiB for
//! OpenSSH: a 32 KiB READ's reply is two SSH packets either way). Small replies that wait
//! together (WRITE acknowledgements, headers) go out together, in one SSH packet.

use bucketgate_storage::budget::{MemoryBudget, MemoryPermit};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use russh_sftp::protocol::{Packet, Status, StatusCode};
use russh_sftp::server::{Handler, StatusReply};
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Requests read ahead of the handler, bounded in bytes: enough for any client's pipelining
/// (OpenSSH keeps 64 × 255 KiB in flight), small enough to bound a flooding client.
const READ_AHEAD_BYTES: u32 = 32 * 1024 * 1024;

/// The session's own allowance for requests read ahead when the memory budget is used up
/// (outside the budget; see [`run`]). A request larger than this takes all of it.
const OWN_BYTES: u32 = 32 * 1024;

/// Replies made and not yet taken by russh's session loop, in bytes, at most (a READ's data
/// counted before it is read). A larger reply takes all of it. Status replies are a few dozen
/// bytes: this holds thousands, more than any client keeps requests in flight.
const REPLY_BACKLOG: u32 = 128 * 1024;

/// What an SFTP session holds of the memory budget while it has a file open, when the budget
/// has it free (never waited for). It stands for what a transferring session keeps outside the
/// transfer buffers: SSH packets read, decrypted and queued by russh, the reader's own allowance
/// ([`OWN_BYTES`]), replies on their way. At N = 1,024 uploading sessions that came to ~200 KiB
/// each (`bench/README.md`, "The budget's share"); counting about half of it here leaves the
/// part buffers less of the budget when many sessions transfer at once, which is what keeps the
/// process near `transfers.memory_limit` then (64 KiB left the peak at the bound, 96 KiB under
/// it). Idle sessions hold none, so that thousands of connected partners do not take the
/// budget from those that transfer.
const SESSION_SHARE: u64 = 96 * 1024;

/// Where the bytes of a request read ahead are counted until its handler takes it: in the
/// process's memory budget, or in the session's own small allowance (see [`run`]); released
/// when dropped.
#[derive(Default)]
struct Held {
    _budget: Option<MemoryPermit>,
    _own: Option<OwnedSemaphorePermit>,
}

/// Small replies waiting together are gathered into one buffer up to this size (one SSH packet
/// of OpenSSH's maximum); a READ's data up to [`SMALL_DATA`] joins them, larger data goes as its
/// own buffer.
const GATHER: usize = 32 * 1024;

/// A READ's data up to this size is copied behind its header; larger data is sent as it is.
const SMALL_DATA: usize = 4 * 1024;

/// Where replies go: each buffer handed over as it is, without a copy on the way.
pub(crate) trait Replies: Send + 'static {
    /// Hands `data` over once the previous buffer is on its way.
    fn send(&mut self, data: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;

    /// Waits until everything handed over has gone.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// A handler that takes a WRITE's data as the packet's own bytes and answers a READ with the
/// reader's own bytes (no copy in between).
pub(crate) trait DirectIo: Handler {
    fn write_bytes(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Bytes,
    ) -> impl Future<Output = Result<Status, Self::Error>> + Send;

    /// Whether a file is open (the session then holds its share of the budget).
    fn transferring(&self) -> bool;

    /// The data of a READ (not empty: end of file is an error with EOF).
    fn read_bytes(
        &mut self,
        handle: String,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Bytes, Self::Error>> + Send;
}

/// Serves SFTP requests from `stream` until the client closes it or an I/O error occurs;
/// replies go back in the order of the requests.
///
/// Three tasks: a reader ahead of the handler, the handler, and a writer behind it. russh's
/// session loop does both directions of a connection: while it waits to hand incoming data to
/// a full per-channel queue, it sends nothing and reads no window adjustment. So nothing that
/// the reader waits for may wait on that loop:
///
/// - Were requests read only between replies, a reply waiting for the client's SSH window
///   would stop the reading, the queue would fill, and the window adjustment that unblocks the
///   reply would never be read (a 1 GiB download hung so). Hence the reader task.
/// - Were replies written by the handler itself, a handler waiting for the loop to take a reply
///   would not take the next request, so the reader, once out of memory, could not read and
///   the queue would stay full. Hence the writer task: the handler hands it replies up to
///   [`REPLY_BACKLOG`] bytes, which only a client with thousands of requests in flight, or one
///   that does not read its replies, fills.
///
/// Memory: the requests read ahead (up to [`READ_AHEAD_BYTES`] per session) are counted in
/// the process's `budget` (`transfers.memory_limit`) until the handler takes them. When the
/// budget is used up, a session still reads ahead up to [`OWN_BYTES`] on its own allowance
/// (outside the budget; a larger request takes the whole allowance), so that it never waits on
/// memory that only its own progress can free, and so that small requests (READs, STATs) keep
/// flowing; beyond that, the reader waits for either, and russh's small per-channel queue
/// (`channel_buffer_size`, `server.rs`) then stops the client through TCP.
pub(crate) async fn run<R, W, H>(
    mut rd: R,
    wr: W,
    mut handler: H,
    max_packet_len: u32,
    budget: Option<Arc<MemoryBudget>>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: Replies,
    H: DirectIo + Send,
{
    let share_of = budget.clone();
    let mut share: Option<MemoryPermit> = None;
    let cap = Arc::new(Semaphore::new(READ_AHEAD_BYTES as usize));
    let own = Arc::new(Semaphore::new(OWN_BYTES as usize));
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
    let backlog = Arc::new(Semaphore::new(REPLY_BACKLOG as usize));
    let (wtx, mut wrx) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
    let writer = tokio::spawn(async move {
        let mut wr = wr;
        // Small replies gathered, and the room they hold until they are handed over.
        let mut gathered = BytesMut::new();
        let mut holding = Vec::new();
        while let Some(Outgoing { head, data, slot }) = wrx.recv().await {
            gathered.extend_from_slice(&head);
            holding.push(slot);
            let large = data.len() > SMALL_DATA;
            if !large {
                gathered.extend_from_slice(&data);
            }
            // Replies made together go out together, up to one SSH packet.
            if !large && !wrx.is_empty() && gathered.len() < GATHER {
                continue;
            }
            if wr.send(gathered.split().freeze()).await.is_err() {
                return;
            }
            if large && wr.send(data).await.is_err() {
                return;
            }
            // Flushed when nothing else waits.
            if wrx.is_empty() && wr.flush().await.is_err() {
                return;
            }
            holding.clear();
        }
        let _ = wr.flush().await;
    });
    let slot = |n: usize| {
        backlog
            .clone()
            .acquire_many_owned(n.min(REPLY_BACKLOG as usize) as u32)
    };
    while let Some((request, capped, held)) = rx.recv().await {
        // From here the request's bytes belong to the handler, which counts what it keeps
        // (part buffers, the reorder window).
        drop(held);
        // A READ's reply (its room taken before the data is read), or a packet to encode.
        let reply = match request {
            Request::Read {
                id,
                handle,
                offset,
                len,
            } => {
                // Room for the data before it is read: a client that does not take its
                // replies stops its own reads here.
                let Ok(slot) = slot(13 + len as usize).await else {
                    break;
                };
                match handler.read_bytes(handle, offset, len).await {
                    Ok(data) => Reply::Made(data_header(id, data.len()), data, slot),
                    Err(e) => match encode(reply_of(id, Err(e))) {
                        Some(b) => Reply::Made(b, Bytes::new(), slot),
                        None => break,
                    },
                }
            }
            Request::Packet(p) => {
                tracing::trace!(request = ?p, "sftp request");
                let reply = process(p, &mut handler).await;
                if let Packet::Status(s) = &reply {
                    tracing::trace!(code = ?s.status_code, message = %s.error_message, "sftp reply");
                }
                Reply::Packet(reply)
            }
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => {
                let r = handler.write_bytes(id, handle, offset, data).await;
                Reply::Packet(reply_of(id, r.map(Into::into)))
            }
            Request::Refused(id, why) => {
                Reply::Packet(Packet::status(id, StatusCode::Failure, why, "en-US"))
            }
            Request::Malformed(id) => Reply::Packet(Packet::error(id, StatusCode::BadMessage)),
        };
        let out = match reply {
            Reply::Made(head, data, slot) => Outgoing { head, data, slot },
            Reply::Packet(packet) => {
                let Some(head) = encode(packet) else { break };
                let Ok(slot) = slot(head.len()).await else {
                    break;
                };
                Outgoing {
                    head,
                    data: Bytes::new(),
                    slot,
                }
            }
        };
        drop(capped);
        match (&share, handler.transferring()) {
            (None, true) => {
                share = share_of
                    .as_deref()
                    .and_then(|b| b.try_acquire(SESSION_SHARE));
            }
            (Some(_), false) => share = None,
            _ => {}
        }
        if wtx.send(out).is_err() {
            break;
        }
    }
    reader.abort();
    // What was answered still goes out before the channel ends.
    drop(wtx);
    let _ = writer.await;
    tracing::debug!("sftp stream ended");
}

/// What the handler made of a request: a READ's reply (its header or whole error packet, its
/// data) with the room it took before its data was read, or a packet still to encode (its room
/// is taken then).
enum Reply {
    Made(Bytes, Bytes, OwnedSemaphorePermit),
    Packet(Packet),
}

/// A reply on its way to the writer task: a packet or a header, the data that follows it (a
/// READ's; empty otherwise), and the room it holds in the reply backlog.
struct Outgoing {
    head: Bytes,
    data: Bytes,
    slot: OwnedSemaphorePermit,
}

/// A reply packet's bytes; `None` (logged) when it cannot be encoded.
fn encode(reply: Packet) -> Option<Bytes> {
    match Bytes::try_from(reply) {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode an SFTP reply");
            None
        }
    }
}

/// Counts `size` bytes read ahead: in the budget when it has them free, else in the session's
/// own allowance when that has them (a request larger than the allowance takes all of it),
/// else whichever frees first. `None`: closed.
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
    let mine = size.clamp(1, OWN_BYTES);
    if let Ok(p) = own.clone().try_acquire_many_owned(mine) {
        return Some(in_own(p));
    }
    if !budget.can_hold(u64::from(size)) {
        return own.clone().acquire_many_owned(mine).await.ok().map(in_own);
    }
    tokio::select! {
        p = budget.acquire(u64::from(size)) => p.ok().map(in_budget),
        p = own.clone().acquire_many_owned(mine) => p.ok().map(in_own),
    }
}

enum Request {
    Packet(Packet),
    /// A READ.
    Read {
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    },
    /// A WRITE, its data a slice of the packet read.
    Write {
        id: u32,
        handle: String,
        offset: u64,
        data: Bytes,
    },
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
    // Read into memory not zeroed first: every byte is overwritten by the read.
    let mut buf = BytesMut::with_capacity(len as usize);
    while buf.len() < len as usize {
        let want = len as usize - buf.len();
        if (&mut *stream).take(want as u64).read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let mut bytes = buf.freeze();
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    if bytes[0] == SSH_FXP_READ {
        let request = decode_read(bytes.slice(5..))
            .map(|(handle, offset, len)| Request::Read {
                id,
                handle,
                offset,
                len,
            })
            .unwrap_or(Request::Malformed(id));
        return Ok((request, len));
    }
    if bytes[0] == SSH_FXP_WRITE {
        let request = decode_write(bytes.slice(5..))
            .map(|(handle, offset, data)| Request::Write {
                id,
                handle,
                offset,
                data,
            })
            .unwrap_or(Request::Malformed(id));
        return Ok((request, len));
    }
    if !names_are_utf8(bytes[0], &bytes[5..]) {
        return Ok((
            Request::Refused(id, "names must be valid UTF-8 (the client's character set)"),
            0,
        ));
    }
    let request = match Packet::try_from(&mut bytes) {
        Ok(p) => Request::Packet(p),
        Err(_) => Request::Malformed(id),
    };
    Ok((request, len))
}

/// Whether the names of a request (after its id) are valid UTF-8. russh-sftp decodes them
/// with replacement characters: a name in another character set (`café` in Latin-1, from a
/// client without UTF-8) became `caf\u{FFFD}`, so two names differing in such letters were one
/// object, and the second upload replaced the first. Object keys are UTF-8, so such a name is
/// refused before the request is decoded. A request cut short is left to the decoder.
fn names_are_utf8(kind: u8, mut body: &[u8]) -> bool {
    let mut names = match kind {
        // OPEN, SETSTAT, OPENDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, LSTAT, READLINK.
        3 | 7 | 9 | 11 | 13 | 14 | 15 | 16 | 17 | 19 => 1,
        // RENAME, SYMLINK.
        18 | 20 => 2,
        // EXTENDED: its request's name, then the names it carries.
        200 => {
            let Some(request) = take_name(&mut body) else {
                return true;
            };
            match request {
                Ok(b"posix-rename@openssh.com") | Ok(b"hardlink@openssh.com") => 2,
                Ok(b"statvfs@openssh.com") | Ok(b"expand-path@openssh.com") => 1,
                Ok(_) => 0,
                Err(()) => return false,
            }
        }
        _ => 0,
    };
    while names > 0 {
        match take_name(&mut body) {
            None => return true,
            Some(Err(())) => return false,
            Some(Ok(_)) => names -= 1,
        }
    }
    true
}

/// The next SSH `string` of `body`: `Err` when it is not UTF-8, `None` when `body` is cut
/// short.
fn take_name<'a>(body: &mut &'a [u8]) -> Option<Result<&'a [u8], ()>> {
    let (len, rest) = body.split_first_chunk::<4>()?;
    let len = u32::from_be_bytes(*len) as usize;
    let name = rest.get(..len)?;
    *body = &rest[len..];
    Some(std::str::from_utf8(name).map(|_| name).map_err(|_| ()))
}

const SSH_FXP_READ: u8 = 5;
const SSH_FXP_WRITE: u8 = 6;
const SSH_FXP_DATA: u8 = 103;

/// A string's bytes (uint32 length, then the bytes), taken from the front of `b`.
fn string(b: &mut Bytes) -> Option<Bytes> {
    if b.remaining() < 4 {
        return None;
    }
    let n = b.get_u32() as usize;
    (b.remaining() >= n).then(|| b.split_to(n))
}

/// A READ's fields after its request id (6.4: string handle, uint64 offset, uint32 len).
fn decode_read(mut b: Bytes) -> Option<(String, u64, u32)> {
    let handle = String::from_utf8(string(&mut b)?.to_vec()).ok()?;
    if b.remaining() < 12 {
        return None;
    }
    Some((handle, b.get_u64(), b.get_u32()))
}

/// The header of the DATA reply to request `id` with `len` bytes of data: its length, type, id
/// and the data's length; the data follows it on the wire.
fn data_header(id: u32, len: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(13);
    b.put_u32(9 + len as u32);
    b.put_u8(SSH_FXP_DATA);
    b.put_u32(id);
    b.put_u32(len as u32);
    b.freeze()
}

/// A WRITE's fields after its request id (draft-ietf-secsh-filexfer-02, 6.4: string handle,
/// uint64 offset, string data); `None` when they do not decode. The data is a slice of `b`.
fn decode_write(mut b: Bytes) -> Option<(String, u64, Bytes)> {
    let handle = String::from_utf8(string(&mut b)?.to_vec()).ok()?;
    if b.remaining() < 8 {
        return None;
    }
    let offset = b.get_u64();
    let data = string(&mut b)?;
    Some((handle, offset, data))
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
    reply_of(id, r)
}

/// The reply packet of a handler's answer to request `id`.
fn reply_of<E: Into<StatusReply>>(id: u32, r: Result<Packet, E>) -> Packet {
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWrite, AsyncWriteExt};

    fn write_packet(handle: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
        let mut b = vec![SSH_FXP_WRITE];
        b.extend(7u32.to_be_bytes());
        b.extend((handle.len() as u32).to_be_bytes());
        b.extend(handle);
        b.extend(offset.to_be_bytes());
        b.extend((data.len() as u32).to_be_bytes());
        b.extend(data);
        let mut framed = (b.len() as u32).to_be_bytes().to_vec();
        framed.extend(b);
        framed
    }

    #[tokio::test]
    async fn a_write_is_decoded_with_its_data_as_sent() {
        let p = write_packet(b"h1", 1 << 40, b"payload");
        let (r, len) = read_request(&mut &p[..], 1 << 20).await.unwrap();
        assert_eq!(len as usize, p.len() - 4);
        match r {
            Request::Write {
                id,
                handle,
                offset,
                data,
            } => {
                assert_eq!((id, handle.as_str(), offset), (7, "h1", 1 << 40));
                assert_eq!(&data[..], b"payload");
            }
            _ => panic!("not a write"),
        }
    }

    #[tokio::test]
    async fn a_read_is_decoded_and_its_data_reply_is_what_russh_sftp_encodes() {
        let mut b = vec![SSH_FXP_READ, 0, 0, 0, 9];
        b.extend(2u32.to_be_bytes());
        b.extend(b"h2");
        b.extend(5u64.to_be_bytes());
        b.extend(32768u32.to_be_bytes());
        let mut framed = (b.len() as u32).to_be_bytes().to_vec();
        framed.extend(b);
        let (r, _) = read_request(&mut &framed[..], 1 << 20).await.unwrap();
        assert!(
            matches!(r, Request::Read { id: 9, ref handle, offset: 5, len: 32768 } if handle == "h2")
        );
        // Cut short: no length.
        let n = framed.len();
        framed.truncate(n - 4);
        framed[..4].copy_from_slice(&((n - 8) as u32).to_be_bytes());
        let (r, _) = read_request(&mut &framed[..], 1 << 20).await.unwrap();
        assert!(matches!(r, Request::Malformed(9)));
        let theirs = Bytes::try_from(Packet::Data(russh_sftp::protocol::Data {
            id: 9,
            data: b"some data".to_vec(),
        }))
        .unwrap();
        let mut ours = BytesMut::from(&data_header(9, 9)[..]);
        ours.extend_from_slice(b"some data");
        assert_eq!(ours.freeze(), theirs);
    }

    #[tokio::test]
    async fn a_write_cut_short_or_with_a_bad_handle_is_malformed() {
        // The data's length says more than the packet holds.
        let mut p = write_packet(b"h1", 0, b"payload");
        let n = p.len();
        p[n - 8..n - 7].copy_from_slice(&[0xff]);
        let (r, _) = read_request(&mut &p[..], 1 << 20).await.unwrap();
        assert!(matches!(r, Request::Malformed(7)));
        // A handle that is not UTF-8.
        let p = write_packet(&[0xff, 0xfe], 0, b"x");
        let (r, _) = read_request(&mut &p[..], 1 << 20).await.unwrap();
        assert!(matches!(r, Request::Malformed(7)));
        // No offset at all.
        let mut b = vec![SSH_FXP_WRITE, 0, 0, 0, 7, 0, 0, 0, 1, b'h'];
        let mut framed = (b.len() as u32).to_be_bytes().to_vec();
        framed.append(&mut b);
        let (r, _) = read_request(&mut &framed[..], 1 << 20).await.unwrap();
        assert!(matches!(r, Request::Malformed(7)));
    }

    /// russh's session loop as the SFTP loop sees it: incoming messages wait in a queue of a
    /// few, and while that queue is full no reply goes out (the loop is busy handing over the
    /// next message).
    struct SessionLoop {
        incoming: tokio::sync::mpsc::Receiver<Bytes>,
        room: tokio_util::sync::PollSender<Bytes>,
        reading: Option<Bytes>,
        out: tokio::sync::mpsc::UnboundedSender<Bytes>,
    }

    impl AsyncRead for SessionLoop {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            use std::task::Poll;
            let this = &mut *self;
            if this.reading.as_ref().is_none_or(|b| b.is_empty()) {
                match this.incoming.poll_recv(cx) {
                    Poll::Ready(Some(b)) => this.reading = Some(b),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => return Poll::Pending,
                }
            }
            let b = this.reading.as_mut().expect("just filled");
            let n = b.len().min(buf.remaining());
            buf.put_slice(&b.split_to(n));
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for SessionLoop {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            // Sent only when the incoming queue has room: a reservation, given back at once.
            std::task::ready!(self.room.poll_reserve(cx))
                .map_err(|_| std::io::ErrorKind::BrokenPipe)?;
            self.room.abort_send();
            let _ = self.out.send(Bytes::copy_from_slice(buf));
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// Replies written to a byte stream.
    struct AsWrite<W>(W);

    impl<W: AsyncWrite + Unpin + Send + 'static> Replies for AsWrite<W> {
        async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
            self.0.write_all(&data).await
        }

        async fn flush(&mut self) -> std::io::Result<()> {
            self.0.flush().await
        }
    }

    /// The data every READ of [`Sink`] answers with, its first `len` bytes.
    static FIXED: [u8; 32768] = [5u8; 32768];

    /// Takes every write, answers every read with the first `len` bytes of [`FIXED`] (at most
    /// all of it): the very bytes, so a test can tell whether they were copied on the way.
    struct Sink;

    impl Handler for Sink {
        type Error = StatusCode;
        fn unimplemented(&self) -> StatusCode {
            StatusCode::OpUnsupported
        }
    }

    impl DirectIo for Sink {
        async fn write_bytes(
            &mut self,
            id: u32,
            _: String,
            _: u64,
            _: Bytes,
        ) -> Result<Status, StatusCode> {
            Ok(Status {
                id,
                status_code: StatusCode::Ok,
                error_message: "Ok".into(),
                language_tag: "en-US".into(),
            })
        }

        async fn read_bytes(&mut self, _: String, _: u64, len: u32) -> Result<Bytes, StatusCode> {
            Ok(Bytes::from_static(
                &FIXED[..(len as usize).min(FIXED.len())],
            ))
        }

        fn transferring(&self) -> bool {
            true
        }
    }

    /// What a client's replies went out as: each buffer handed to russh, as it was handed.
    #[derive(Clone, Default)]
    struct Recorded(Arc<std::sync::Mutex<Vec<Bytes>>>);

    impl Replies for Recorded {
        async fn send(&mut self, data: Bytes) -> std::io::Result<()> {
            self.0.lock().unwrap().push(data);
            Ok(())
        }

        async fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A READ's data reaches russh as the very buffer the reader gave (no copy on the way)
    /// unless it is small enough to join its header; WRITE acknowledgements waiting together
    /// go out as one buffer; the stream they make is every reply in order.
    #[tokio::test]
    async fn read_data_goes_out_uncopied_and_waiting_acks_go_together() {
        const WRITES: u32 = 20;
        // Around the size up to which data joins its header, and the largest.
        let reads = [100u32, SMALL_DATA as u32, SMALL_DATA as u32 + 1, 32768];
        let mut input = Vec::new();
        for i in 0..WRITES {
            let mut p = write_packet(b"h", u64::from(i) * 1024, &[1u8; 1024]);
            p[5..9].copy_from_slice(&i.to_be_bytes());
            input.extend(p);
        }
        for (k, len) in reads.iter().enumerate() {
            let mut b = vec![SSH_FXP_READ];
            b.extend((WRITES + k as u32).to_be_bytes());
            b.extend(1u32.to_be_bytes());
            b.extend(b"h");
            b.extend(0u64.to_be_bytes());
            b.extend(len.to_be_bytes());
            input.extend((b.len() as u32).to_be_bytes());
            input.extend(b);
        }
        let out = Recorded::default();
        let rd = std::io::Cursor::new(input);
        run(rd, out.clone(), Sink, 1 << 20, None).await;
        let sent = out.0.lock().unwrap().clone();
        // The large data went as the reader's own buffers; nothing else did.
        let uncopied: Vec<usize> = sent
            .iter()
            .filter(|b| b.as_ptr() == FIXED.as_ptr())
            .map(|b| b.len())
            .collect();
        assert_eq!(uncopied, [SMALL_DATA + 1, 32768], "the data was copied");
        assert!(
            sent.len() < WRITES as usize,
            "{} buffers for {WRITES} acknowledgements and {} READs",
            sent.len(),
            reads.len()
        );
        let mut all = BytesMut::new();
        for b in &sent {
            all.extend_from_slice(b);
        }
        for i in 0..WRITES + reads.len() as u32 {
            let len = u32::from_be_bytes(all[..4].try_into().unwrap()) as usize;
            let p = all.split_to(4 + len);
            assert_eq!(&p[5..9], &i.to_be_bytes()[..], "reply {i} in order");
            if i < WRITES {
                assert_eq!(p[4], 101);
            } else {
                let want = reads[(i - WRITES) as usize] as usize;
                assert_eq!(p[4], SSH_FXP_DATA);
                assert_eq!(
                    u32::from_be_bytes(p[9..13].try_into().unwrap()) as usize,
                    want
                );
                assert_eq!(&p[13..], &FIXED[..want]);
            }
        }
        assert!(all.is_empty());
    }

    /// With the memory budget used up by others, a client with many requests in flight (each
    /// in its own message) gets every reply, in order, through a session loop whose queue holds
    /// two messages (as `CHANNEL_QUEUE`). Before the writer task, the handler waited on the
    /// loop to take a reply, the reader on the handler to take the request holding the
    /// session's own allowance, and the loop on the reader: no reply came after the queue
    /// first filled.
    #[tokio::test]
    async fn a_full_budget_and_a_full_session_queue_do_not_stop_a_pipelining_client() {
        let budget = MemoryBudget::shared(1 << 20);
        let _others = budget.try_acquire(1 << 20).expect("all of it");
        let (feed, incoming) = tokio::sync::mpsc::channel(2);
        let (out, mut replies) = tokio::sync::mpsc::unbounded_channel();
        let session = SessionLoop {
            incoming,
            room: tokio_util::sync::PollSender::new(feed.clone()),
            reading: None,
            out,
        };
        let (rd, wr) = tokio::io::split(session);
        let serving = tokio::spawn(run(rd, AsWrite(wr), Sink, 1 << 20, Some(budget.clone())));
        // 500 requests: writes of 1 KiB and reads of 16 KiB, alternating.
        const N: u32 = 500;
        let client = tokio::spawn(async move {
            for i in 0..N {
                let msg = if i % 2 == 0 {
                    let mut p = write_packet(b"h", u64::from(i) * 1024, &[1u8; 1024]);
                    p[5..9].copy_from_slice(&i.to_be_bytes());
                    p
                } else {
                    let mut b = vec![SSH_FXP_READ];
                    b.extend(i.to_be_bytes());
                    b.extend(1u32.to_be_bytes());
                    b.extend(b"h");
                    b.extend(0u64.to_be_bytes());
                    b.extend(16384u32.to_be_bytes());
                    let mut framed = (b.len() as u32).to_be_bytes().to_vec();
                    framed.extend(b);
                    framed
                };
                if feed.send(Bytes::from(msg)).await.is_err() {
                    return;
                }
            }
        });
        let mut got = BytesMut::new();
        let mut ids = Vec::new();
        let all = async {
            while ids.len() < N as usize {
                let Some(b) = replies.recv().await else { break };
                got.extend_from_slice(&b);
                while got.len() >= 9 {
                    let len = u32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
                    if got.len() < 4 + len {
                        break;
                    }
                    let p = got.split_to(4 + len);
                    let id = u32::from_be_bytes(p[5..9].try_into().unwrap());
                    let want = if id % 2 == 0 { 101 } else { SSH_FXP_DATA };
                    assert_eq!(p[4], want, "reply to request {id}");
                    ids.push(id);
                }
            }
        };
        // A generous bound: this is a hang detector, not a timing.
        tokio::time::timeout(std::time::Duration::from_secs(60), all)
            .await
            .unwrap_or_else(|_| panic!("stalled after {} of {N} replies", ids.len()));
        assert_eq!(ids, (0..N).collect::<Vec<_>>());
        client.await.unwrap();
        serving.abort();
    }
}
