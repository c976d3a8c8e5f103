//! libunftp's `StorageBackend` over the user's [`UserFs`]: paths are resolved, permissions
//! checked and bytes moved by the storage crate; this file only translates.
//!
//! libunftp hands every call an absolute path (its working folder joined with the client's
//! argument, `..` not folded), relative to the user's root. [`UserFs::resolve`] folds it and
//! clamps `..` at the root, so `../../x` is `/x` in the user's home.

use super::auth::FtpUser;
use super::listing::{ls_line, Meta};
use async_trait::async_trait;
use bucketgate_storage::{ErrorKind as Kind, FileReader, OpenMode, VPath};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use unftp_core::storage::{
    Error, ErrorKind, Fileinfo, Metadata, Result, StorageBackend, FEATURE_RESTART,
};

/// Bytes read from a file or a data connection at a time.
const CHUNK: usize = 256 * 1024;

/// The adapter; one per session (libunftp's factory never sees the user, each call does).
#[derive(Debug)]
pub(crate) struct FtpStorage {
    max_list_entries: usize,
}

impl FtpStorage {
    pub(crate) fn new(max_list_entries: usize) -> Self {
        FtpStorage { max_list_entries }
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
        Kind::Unsupported => ErrorKind::CommandNotImplemented,  // 502
        Kind::LimitReached => ErrorKind::ExceededStorageAllocationError, // 552
        Kind::Conflict => ErrorKind::TransientFileNotAvailable, // 450: try again
        Kind::Backend if e.is_retryable() => ErrorKind::TransientFileNotAvailable, // 450
        Kind::Backend | Kind::ConfigInvalid => ErrorKind::LocalError, // 451
    };
    match e.kind() {
        Kind::Backend | Kind::ConfigInvalid => tracing::warn!(error = ?e, "ftp: storage failure"),
        _ => tracing::debug!(error = ?e, "ftp: request refused"),
    }
    Error::new(kind, e)
}

/// A REST offset that cannot be honoured: for STOR neither 0 nor the file's size, for RETR
/// beyond the end of the file. libunftp has no 554 reply; it answers 551 for this kind, which
/// nothing else of ours produces, and the relay turns 551 into 554.
fn bad_restart_offset() -> Error {
    Error::new(
        ErrorKind::PageTypeUnknown,
        "REST offset: 0 or the file's size for STOR, at most the size for RETR",
    )
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
        let e = user.session.fs.stat(&p).await.map_err(map_error)?;
        Ok(Meta::from(&e))
    }

    async fn list<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
    ) -> Result<Vec<Fileinfo<PathBuf, Meta>>> {
        let p = vpath(user, path.as_ref())?;
        let mut pages = user.session.fs.list(&p).await.map_err(map_error)?;
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

    async fn get<P: AsRef<Path> + Send + Debug>(
        &self,
        user: &FtpUser,
        path: P,
        start_pos: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Sync + Unpin>> {
        let p = vpath(user, path.as_ref())?;
        let reader = user.session.fs.open_read(&p).await.map_err(map_error)?;
        if start_pos > reader.size() {
            return Err(bad_restart_offset());
        }
        Ok(Box::new(ReadStream::start(reader, start_pos)))
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
        // libunftp's default goes through `tokio::io::copy`, whose 8 KiB buffer turns every
        // chunk into 8 KiB writes (and a copy out of our stream): each chunk is written whole
        // here instead, straight from the read-ahead.
        let p = vpath(user, path.as_ref())?;
        let reader = user.session.fs.open_read(&p).await.map_err(map_error)?;
        if start_pos > reader.size() {
            // The relay refuses this before the transfer starts; this is in case it could not.
            return Err(bad_restart_offset());
        }
        let mut stream = ReadStream::start(reader, start_pos);
        let mut sent = 0u64;
        while let Some(chunk) = stream.rx.recv().await {
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
        let p = vpath(user, path.as_ref())?;
        let fs = &user.session.fs;
        let mode = if start_pos == 0 {
            // STOR: replace (or create) the file; it becomes visible only when complete.
            OpenMode {
                create: true,
                truncate: true,
                ..Default::default()
            }
        } else {
            // REST n + STOR, or APPE (libunftp passes the current size): only an append to a
            // complete object can work over object storage.
            match fs.stat(&p).await {
                Ok(e) if !e.is_dir() && e.size == start_pos => OpenMode {
                    append: true,
                    ..Default::default()
                },
                Ok(_) => return Err(bad_restart_offset()),
                Err(e) if e.kind() == Kind::NotFound => return Err(bad_restart_offset()),
                Err(e) => return Err(map_error(e)),
            }
        };
        let mut writer = fs.open_write(&p, mode).await.map_err(map_error)?;
        let mut offset = start_pos;
        loop {
            // A chunk is handed on only once its buffer is full (or at the end): a buffer sent
            // after each short socket read would keep its whole allocation alive for a few KiB,
            // and the next read would allocate another.
            let mut buf = BytesMut::with_capacity(CHUNK);
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
        if !user.link.may_commit().await {
            tracing::info!(user = %user, path = %p, "ftp: upload aborted or its client gone, nothing stored");
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
        user.session.fs.remove(&p).await.map_err(map_error)
    }

    async fn mkd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = vpath(user, path.as_ref())?;
        user.session.fs.mkdir(&p).await.map_err(|e| {
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
        user.session
            .fs
            .rename(&f, &t, true)
            .await
            .map_err(map_error)
    }

    async fn rmd<P: AsRef<Path> + Send + Debug>(&self, user: &FtpUser, path: P) -> Result<()> {
        let p = vpath(user, path.as_ref())?;
        user.session.fs.rmdir(&p).await.map_err(map_error)
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

/// A file read from `start_pos` on: `get_into` writes its chunks to the data connection, and
/// it is the `AsyncRead` of `get`. A task pulls chunks from the [`FileReader`] so the next chunk
/// is on its way while the client takes the previous one.
struct ReadStream {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    buf: Bytes,
    task: tokio::task::JoinHandle<()>,
}

impl ReadStream {
    fn start(mut reader: FileReader, start_pos: u64) -> Self {
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(async move {
            let mut pos = start_pos;
            loop {
                match reader.read_at(pos, CHUNK).await {
                    Ok(b) if b.is_empty() => return,
                    Ok(b) => {
                        pos += b.len() as u64;
                        if tx.send(Ok(b)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, "ftp: download failed");
                        let _ = tx
                            .send(Err(io::Error::other(e.message().to_string())))
                            .await;
                        return;
                    }
                }
            }
        });
        ReadStream {
            rx,
            buf: Bytes::new(),
            task,
        }
    }
}

impl AsyncRead for ReadStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        while self.buf.is_empty() {
            match self.rx.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(b))) => self.buf = b,
            }
        }
        let n = out.remaining().min(self.buf.len());
        let chunk = self.buf.split_to(n);
        out.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

impl Drop for ReadStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
