//! libunftp's `StorageBackend` over the user's [`UserFs`]: paths are resolved, permissions
//! checked and bytes moved by the storage crate; this file only translates, and maps storage
//! errors to FTP replies ([`map_error`], the only place that does).
//!
//! A command the relay prepared (RETR, LIST, SIZE, REST + STOR, APPE: see [`super::prepare`])
//! comes with what was found for it on the session's [`ControlLink`](super::link::ControlLink):
//! the adapter uses that instead of asking the storage crate again.
//!
//! libunftp hands every call an absolute path (its working folder joined with the client's
//! argument, `..` not folded), relative to the user's root. [`UserFs::resolve`] folds it and
//! clamps `..` at the root, so `../../x` is `/x` in the user's home.

use super::auth::FtpUser;
use super::link::Ready;
use super::listing::{ls_line, Meta};
use async_trait::async_trait;
use bucketgate_storage::{ErrorKind as Kind, FileReader, OpenMode, VPath};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use unftp_core::storage::{
    Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend, FEATURE_RESTART,
};

/// Bytes read from a file at a time, for a download (counted in the memory budget by the
/// reader's read-ahead).
const CHUNK: usize = 256 * 1024;
/// Bytes gathered from a data connection before they are passed on to the upload's part
/// buffer. Outside the memory budget, one per upload: 64 KiB keeps a thousand uploads at 64 MiB
/// (at 256 KiB they held a quarter of a GiB beyond `transfers.memory_limit`), while a chunk still
/// takes a few socket reads, not one per 8 KiB.
const UPLOAD_CHUNK: usize = 64 * 1024;

/// What a session holds of the memory budget while a transfer runs, when the budget has it
/// free (never waited for). It stands for what a transfer keeps outside the transfer buffers:
/// the upload chunk ([`UPLOAD_CHUNK`]), the relay's splice buffers, libunftp's data-path
/// buffers (and TLS records for FTPS). At N = 1,024 FTP sessions the process peaked at the
/// bound (`bench/README.md`, "The budget's share"); counting this leaves the part buffers less
/// of the budget when many sessions transfer at once. Sessions between transfers hold none.
const TRANSFER_SHARE: u64 = 96 * 1024;

/// The adapter; one per session (libunftp's factory never sees the user, each call does).
#[derive(Debug)]
pub(crate) struct FtpStorage {
    max_list_entries: usize,
    memory: Option<std::sync::Arc<bucketgate_storage::budget::MemoryBudget>>,
}

impl FtpStorage {
    pub(crate) fn new(
        max_list_entries: usize,
        memory: Option<std::sync::Arc<bucketgate_storage::budget::MemoryBudget>>,
    ) -> Self {
        FtpStorage {
            max_list_entries,
            memory,
        }
    }

    /// The transfer's share of the budget, when it is free; released when dropped.
    fn share(&self) -> Option<bucketgate_storage::budget::MemoryPermit> {
        self.memory.as_deref()?.try_acquire(TRANSFER_SHARE)
    }
}

/// The one place where storage errors become FTP replies (libunftp picks the code from the
/// kind: 450, 451, 550, 552, 553, 502). The full error goes to the log, the client gets the
/// kind's short text.
pub(crate) fn map_error(e: bucketgate_storage::Error) -> Error {
    let kind = match e.kind() {
        Kind::NotFound => ErrorKind::PermanentFileNotAvailable, // 550
        Kind::PermissionDenied => ErrorKind::PermissionDenied,  // 550
        Kind::NotADirectory => ErrorKind::PermanentDirectoryNotAvailable, // 550
        Kind::IsADirectory => ErrorKind::PermanentFileNotAvailable, // 550
        Kind::DirectoryNotEmpty => ErrorKind::PermanentDirectoryNotEmpty, // 550
        Kind::AlreadyExists | Kind::InvalidInput => ErrorKind::FileNameNotAllowedError, // 553
        // 550, not 502 "Command not implemented": the command is, this use of it (a folder
        // renamed across a mount's edge) is not, and some clients stop sending a command
        // answered 502 for the rest of the session.
        Kind::Unsupported => ErrorKind::PermanentFileNotAvailable, // 550
        Kind::LimitReached => ErrorKind::ExceededStorageAllocationError, // 552
        Kind::Conflict => ErrorKind::TransientFileNotAvailable,    // 450: try again
        Kind::Backend if e.is_retryable() => ErrorKind::TransientFileNotAvailable, // 450
        Kind::Backend | Kind::ConfigInvalid => ErrorKind::LocalError, // 451
    };
    match e.kind() {
        Kind::Backend | Kind::ConfigInvalid => tracing::warn!(error = ?e, "ftp: storage failure"),
        _ => tracing::debug!(error = ?e, "ftp: request refused"),
    }
    Error::new(kind, e)
}

/// A refused DELE, RMD or RNTO: its reason goes to the relay for the reply's text (see
/// [`ControlLink::note_refusal`](super::link::ControlLink::note_refusal)).
fn refused(user: &FtpUser, e: bucketgate_storage::Error) -> Error {
    user.link.note_refusal(&e);
    map_error(e)
}

/// A REST offset or APPE the relay did not prepare, or prepared for a file that has changed
/// since: the relay refuses a bad offset itself (554, which libunftp cannot answer), so this
/// only happens when another client changed the file in between. 450: try again.
fn offset_not_checked(p: &VPath) -> Error {
    tracing::info!(path = %p, "ftp: append refused: the file changed since its size was checked");
    Error::new(
        ErrorKind::TransientFileNotAvailable,
        "the file changed while the transfer started",
    )
}

/// Opens `p` for a download from `start_pos`: the file the relay opened for this RETR, or (for a
/// download the relay did not prepare) opened now.
async fn open_download(user: &FtpUser, p: &VPath, start_pos: u64) -> Result<FileReader> {
    let reader = match user.link.take_ready(p) {
        Some(Ready::Read(_, r)) => *r,
        _ => user.session.fs.open_read(p).await.map_err(map_error)?,
    };
    if start_pos > reader.size() {
        // The relay refuses this with 554 before the transfer starts.
        return Err(offset_not_checked(p));
    }
    Ok(reader)
}

/// Turns libunftp's path into a tree path. libunftp decodes command lines lossily, so a name
/// that was not UTF-8 arrives holding U+FFFD: refuse it (553) rather than write a mangled name.
fn vpath(user: &FtpUser, path: &Path) -> Result<VPath> {
    let s = path
        .to_str()
        .filter(|s| !s.contains('\u{FFFD}'))
        .ok_or_else(|| Error::from(ErrorKind::FileNameNotAllowedError))?;
    user.session
        .fs
        .resolve(&VPath::root(), s)
        .map_err(map_error)
}

#[async_trait]
impl StorageBackend<FtpUser> for FtpStorage {
    type Metadata = Meta;

    fn name(&self) -> &str {
        "bucketgate"
    }

    fn supported_features(&self) -> u32 {
        // REST is honoured for RETR at any offset and for STOR at 0 or the current size.
        FEATURE_RESTART
    }

    async fn metadata<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Meta> {
        let p = vpath(user, path.as_ref())?;
        if let Some(found) = user.link.appending(&p) {
            // APPE asks for the size it appends at; nothing found means "store from 0".
            return found
                .map(|e| Meta::from(&e))
                .ok_or_else(|| ErrorKind::PermanentFileNotAvailable.into());
        }
        let found = match user.link.take_ready(&p) {
            Some(Ready::Stat(_, found)) => found,
            _ => user.session.fs.stat(&p).await,
        };
        Ok(Meta::from(&found.map_err(map_error)?))
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        user.link.transfer_began();
        if user.link.is_closed() {
            // The session ended before libunftp's data task got here (a killed client): such
            // an upload can never commit, so it does not take the name either.
            return Err(Error::new(
                ErrorKind::ConnectionClosed,
                "the session has ended: nothing was stored",
            ));
        }
        let p = vpath(user, path.as_ref())?;
        let mut pages = match user.link.take_ready(&p) {
            Some(Ready::List(_, pages)) => pages,
            _ => user.session.fs.list(&p).await.map_err(map_error)?,
        };
        let mut out = Vec::new();
        while let Some(page) = pages.next().await {
            for e in page.map_err(map_error)? {
                if out.len() >= self.max_list_entries {
                    tracing::warn!(
                        user = %user,
                        folder = %p,
                        max = self.max_list_entries,
                        "ftp: listing truncated: the folder has more entries than ftp max_list_entries"
                    );
                    return Ok(out);
                }
                let meta = Meta::from(&e);
                out.push(Fileinfo {
                    path: PathBuf::from(e.name),
                    metadata: meta,
                });
            }
        }
        Ok(out)
    }

    async fn list_fmt<P>(&self, user: &FtpUser, path: P) -> Result<io::Cursor<Vec<u8>>>
    where
        P: AsRef<Path> + Send + Debug,
        Meta: Metadata + 'static,
    {
        // Our own `ls -l` lines: libunftp's put numeric owners in 12-wide columns.
        let entries = self.list(user, path).await?;
        let now = SystemTime::now();
        let mut text = String::new();
        for fi in &entries {
            text.push_str(&ls_line(&fi.path.to_string_lossy(), &fi.metadata, now));
        }
        Ok(io::Cursor::new(text.into_bytes()))
    }

    async fn nlst<P>(&self, user: &FtpUser, path: P) -> io::Result<io::Cursor<Vec<u8>>>
    where
        P: AsRef<Path> + Send + Debug,
        Meta: Metadata + 'static,
    {
        // The names as listed: libunftp's keep the last part only, which loses the folder a
        // wildcard listing gives its matches (`NLST sub/*.csv`, see `prepare::expand`).
        let entries = self
            .list(user, path)
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        let mut text = String::new();
        for fi in &entries {
            text.push_str(&fi.path.to_string_lossy());
            text.push_str("\r\n");
        }
        Ok(io::Cursor::new(text.into_bytes()))
    }

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        user.link.transfer_began();
        // libunftp downloads through `get_into`; this is the same stream as a reader.
        let p = vpath(user, path.as_ref())?;
        let reader = open_download(user, &p, start_pos).await?;
        let chunks = sync_wrapper::SyncStream::new(chunks(reader, start_pos));
        Ok(Box::new(tokio_util::io::StreamReader::new(chunks)))
    }

    async fn get_into<'a, P, W: ?Sized>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
        output: &'a mut W,
    ) -> Result<u64>
    where
        W: tokio::io::AsyncWrite + Unpin + Sync + Send,
        P: AsRef<Path> + Send + Debug,
    {
        user.link.transfer_began();
        let _share = self.share();
        // libunftp's default goes through `tokio::io::copy`, whose 8 KiB buffer turns every
        // chunk into 8 KiB writes (and a copy out of our stream): each chunk is written whole
        // here instead, straight from the reader's read-ahead.
        let p = vpath(user, path.as_ref())?;
        let reader = open_download(user, &p, start_pos).await?;
        let mut stream = chunks(reader, start_pos);
        let mut sent = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(Error::from)?;
            output.write_all(&chunk).await?;
            sent += chunk.len() as u64;
        }
        Ok(sent)
    }

    async fn put<P: AsRef<Path> + Send + Debug, R: AsyncRead + Send + Sync + Unpin + 'static>(
        &self,
        user: &FtpUser,
        mut input: R,
        path: P,
        start_pos: u64,
    ) -> Result<u64> {
        user.link.transfer_began();
        let _share = self.share();
        if user.link.is_closed() {
            // The session ended before libunftp's data task got here (a killed client): such
            // an upload can never commit, so it does not take the name either.
            return Err(Error::new(
                ErrorKind::ConnectionClosed,
                "the session has ended: nothing was stored",
            ));
        }
        let p = vpath(user, path.as_ref())?;
        let fs = &user.session.fs;
        let prepared = user.link.take_ready(&p);
        let mode = match prepared {
            // STOR: replace (or create) the file; it becomes visible only when complete.
            None if start_pos == 0 => OpenMode {
                create: true,
                truncate: true,
                ..Default::default()
            },
            // APPE of a file the relay found missing: create it, but never replace one that
            // appeared meanwhile (an append never truncates).
            Some(Ready::Append(_, None)) if start_pos == 0 => OpenMode {
                create: true,
                exclusive: true,
                ..Default::default()
            },
            // REST n + STOR, or APPE (libunftp passes the size it was told): only an append to
            // a complete object can work over object storage, and the relay found the file at
            // that size.
            Some(Ready::Append(_, Some(e))) if !e.is_dir() && e.size == start_pos => OpenMode {
                append: true,
                ..Default::default()
            },
            _ => return Err(offset_not_checked(&p)),
        };
        let mut writer = fs.open_write(&p, mode).await.map_err(map_error)?;
        let mut offset = start_pos;
        loop {
            // A chunk is handed on only once its buffer is full (or at the end): a buffer sent
            // after each short socket read would keep its whole allocation alive for a few KiB,
            // and the next read would allocate another.
            let mut buf = BytesMut::with_capacity(UPLOAD_CHUNK);
            let read = loop {
                match input.read_buf(&mut buf).await {
                    Ok(0) => break Ok(true),
                    Ok(_) if buf.len() == buf.capacity() => break Ok(false),
                    Ok(_) => {}
                    Err(e) => break Err(e),
                }
            };
            match read {
                Ok(end) => {
                    let n = buf.len() as u64;
                    if n > 0 {
                        if let Err(e) = writer.write_at(offset, buf.freeze()).await {
                            writer.abort().await;
                            return Err(map_error(e));
                        }
                        offset += n;
                    }
                    if end {
                        break;
                    }
                }
                Err(e) => {
                    // A reset or a TLS stream cut without close_notify: the upload is
                    // incomplete, so nothing may become visible.
                    tracing::info!(user = %user, path = %p, error = %e, "ftp: upload interrupted");
                    writer.abort().await;
                    return Err(Error::new(ErrorKind::ConnectionClosed, e));
                }
            }
        }
        // The data connection ended cleanly, but a client killed mid-transfer ends it the same
        // way, and so does one that sent ABOR: commit only for a client that is still there
        // and did not abort (see `link`).
        if let Err(why) = user.link.may_commit().await {
            tracing::info!(user = %user, path = %p, why, "ftp: upload not committed, nothing stored");
            writer.abort().await;
            return Err(Error::new(
                ErrorKind::ConnectionClosed,
                "transfer aborted: nothing was stored",
            ));
        }
        // 226 is sent only after this returns: the object is durable or the client gets an error.
        writer.close().await.map_err(map_error)?;
        Ok(offset - start_pos)
    }

    async fn del<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = vpath(user, path.as_ref())?;
        let done = user.session.fs.remove(&p).await;
        done.map_err(|e| refused(user, e))
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = vpath(user, path.as_ref())?;
        user.session.fs.mkdir(&p).await.map_err(|e| {
            user.link.note_refusal(&e);
            if e.kind() == Kind::AlreadyExists {
                // RFC 959 gives MKD no 553; servers answer 550 for a folder that exists.
                tracing::debug!(error = ?e, "ftp: request refused");
                Error::new(ErrorKind::PermanentDirectoryNotAvailable, e)
            } else {
                map_error(e)
            }
        })
    }

    async fn rename<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        from: P,
        to: P,
    ) -> Result<()> {
        let (f, t) = (vpath(user, from.as_ref())?, vpath(user, to.as_ref())?);
        // RNTO onto an existing file replaces it, as FTP servers do (needs `overwrite`).
        let done = user.session.fs.rename(&f, &t, true).await;
        done.map_err(|e| refused(user, e))
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = vpath(user, path.as_ref())?;
        let done = user.session.fs.rmdir(&p).await;
        done.map_err(|e| refused(user, e))
    }

    async fn cwd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = vpath(user, path.as_ref())?;
        let e = user.session.fs.stat(&p).await.map_err(map_error)?;
        if e.is_dir() {
            Ok(())
        } else {
            Err(ErrorKind::PermanentDirectoryNotAvailable.into())
        }
    }
}

/// The file's bytes from `start` on, a chunk at a time, straight from the [`FileReader`]: its
/// read-ahead keeps the next chunks coming while the client takes this one.
fn chunks(reader: FileReader, start: u64) -> impl Stream<Item = io::Result<Bytes>> + Send + Unpin {
    Box::pin(futures::stream::try_unfold(
        (reader, start),
        |(mut reader, pos)| async move {
            let chunk = reader.read_at(pos, CHUNK).await.map_err(|e| {
                tracing::warn!(error = ?e, "ftp: download failed");
                io::Error::other(e.message().to_string())
            })?;
            if chunk.is_empty() {
                return Ok(None);
            }
            let next = pos + chunk.len() as u64;
            Ok(Some((chunk, (reader, next))))
        },
    ))
}
