//! The SFTP v3 request handler of one `sftp` subsystem channel.
//!
//! Every request is answered from [`UserFs`]. The packet loop ([`super::dispatch`]) awaits one
//! request at a time, so the work per request is kept small: writes are acknowledged once the
//! [`FileWriter`] has them buffered in order (write-behind; the upload itself runs beside),
//! reads come from the [`FileReader`]'s read-ahead, and neither does an extra stat.

use super::attrs::{attrs_of, file_of, from_unix};
use super::dispatch::DirectIo;
use super::errors::{log_error, SftpError};
use super::handles::{Busy, DirListing, Handle, Handles};
use bucketgate_storage::{FileWriter, OpenMode, UserFs, VPath};
use bytes::Bytes;
use futures::StreamExt;
use russh_sftp::extensions::{LimitsExtension, Statvfs};
use russh_sftp::protocol::{
    Attrs, Data, ExtendedReply, File, FileAttributes, Handle as HandleReply, Name, OpenFlags,
    Packet, Status, StatusCode, Version,
};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::SystemTime;

/// Names per READDIR reply: enough to keep round trips few, small enough for one packet.
const READDIR_BATCH: usize = 100;

/// Per-session limits, from [`super::SftpOptions`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionLimits {
    /// Open handles at once.
    pub(crate) max_handles: usize,
    /// Largest packet accepted from the client.
    pub(crate) max_packet_len: u32,
    /// Keep interrupted uploads.
    pub(crate) keep_partial: bool,
}

impl SessionLimits {
    /// The largest READ or WRITE payload: a packet minus room for its header.
    fn max_io_len(&self) -> u32 {
        self.max_packet_len.saturating_sub(1024).max(32 * 1024)
    }
}

/// One SFTP session: a user's file tree and the handles opened on it.
pub(crate) struct SftpSession {
    fs: UserFs,
    handles: Handles,
    limits: SessionLimits,
    busy: Arc<Busy>,
}

type Res<T> = Result<T, SftpError>;

fn ok(id: u32) -> Status {
    Status {
        id,
        status_code: StatusCode::Ok,
        error_message: "Ok".to_string(),
        language_tag: "en-US".to_string(),
    }
}

impl SftpSession {
    /// A session over `fs`.
    pub(crate) fn new(fs: UserFs, limits: SessionLimits, busy: Arc<Busy>) -> Self {
        SftpSession {
            fs,
            handles: Handles::default(),
            limits,
            busy,
        }
    }

    /// Logs a storage error and turns it into the status answer.
    fn fail(&self, e: bucketgate_storage::Error) -> SftpError {
        log_error(self.fs.username(), &e);
        e.into()
    }

    /// An OPEN of `p` that failed with `e`. When the bucket has no such file but this session
    /// is writing it, the file exists for this session (its STAT shows it), so "no such file"
    /// would contradict that; its bytes cannot be read or patched before its CLOSE, and the
    /// refusal says so.
    fn open_failed(&self, p: &VPath, e: bucketgate_storage::Error) -> SftpError {
        let writing = self
            .handles
            .writer_of(p)
            .is_some_and(|w| !w.is_superseded());
        if e.kind() == bucketgate_storage::ErrorKind::NotFound && writing {
            return self.fail(
                bucketgate_storage::Error::new(
                    bucketgate_storage::ErrorKind::Unsupported,
                    "this session is writing the file: open it again once it is closed",
                )
                .with_context("open", p.to_string()),
            );
        }
        self.fail(e)
    }

    /// Normalises a client path (absolute, or relative to the home, which is "/").
    fn path(&self, input: &str) -> Res<VPath> {
        self.fs
            .resolve(&VPath::root(), input)
            .map_err(|e| self.fail(e))
    }

    /// [`Self::path`] for a name that may be a file: one ending in `/` must be a folder (see
    /// [`bucketgate_storage::UserFs::resolve_entry`]).
    async fn entry_path(&mut self, input: &str) -> Res<VPath> {
        match self.fs.resolve_entry(&VPath::root(), input).await {
            Ok(p) => Ok(p),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// The two names of a rename. A target ending in `/` is a folder's name: only a folder can
    /// go there (rename(2) of a file to `name/` fails with ENOTDIR, where `name` exists or not).
    async fn rename_paths(&mut self, from: &str, to: &str) -> Res<(VPath, VPath)> {
        let from_path = self.entry_path(from).await?;
        let to_path = self.path(to)?;
        if bucketgate_storage::path::names_a_folder(to)
            && !bucketgate_storage::path::names_a_folder(from)
        {
            // The source must then be a folder.
            self.entry_path(&format!("{}/", from_path)).await?;
        }
        Ok((from_path, to_path))
    }

    fn room_for_handle(&self) -> Res<()> {
        if self.handles.len() >= self.limits.max_handles {
            return Err(SftpError::new(StatusCode::Failure, "too many open handles"));
        }
        Ok(())
    }

    fn bad_handle() -> SftpError {
        SftpError::new(StatusCode::Failure, "invalid handle")
    }

    async fn stat_path(&mut self, input: &str) -> Res<FileAttributes> {
        let p = self.entry_path(input).await?;
        if let Some(w) = self.handles.writer_of(&p).filter(|w| !w.is_superseded()) {
            // This session is writing it: it exists for this session, with what was written so
            // far (FUSE clients stat a file between create and close). Other sessions see the
            // bucket until the upload completes. Once someone else removed or replaced the
            // name, the upload cannot commit: the bucket answers, as for everyone.
            return Ok(attrs_of(&w.entry()));
        }
        let e = self.fs.stat(&p).await.map_err(|e| self.fail(e))?;
        Ok(attrs_of(&e))
    }

    /// Applies SETSTAT attributes to a path. Only the modification time means anything over
    /// objects; permissions and owners are accepted and ignored so that `put -p` and
    /// WinSCP's "preserve" settings do not fail a transfer.
    async fn apply_attrs(&mut self, p: &VPath, attrs: &FileAttributes) -> Res<()> {
        if let Some(w) = self.handles.writer_of_mut(p).filter(|w| !w.is_superseded()) {
            // This session is writing it: it exists for this session (as for STAT), and the
            // attributes are its upload's, as for FSETSTAT. `sed -i` and `cp -p` on sshfs
            // chmod the file they have just created by its path before they close it.
            if let Some(size) = attrs.size {
                set_writer_size(w, size)?;
            }
            if let Some(t) = attrs.mtime {
                w.set_mtime(from_unix(t));
            }
            return Ok(());
        }
        if let Some(size) = attrs.size {
            // Saying the size it already has changes nothing (some clients send the full
            // attribute set); another size is `truncate -s SIZE`: the object is replaced by
            // one of that length (cutting needs `overwrite`, extending `upload`), and another
            // session's upload of it will not commit over it.
            let e = self.fs.stat(p).await.map_err(|e| self.fail(e))?;
            if e.is_dir() {
                return Err(SftpError::new(
                    StatusCode::Failure,
                    "a folder has no size to change",
                ));
            }
            if size == 0 && (e.size != 0 || self.fs.is_being_written(p)) {
                self.fs.truncate(p).await.map_err(|e| self.fail(e))?;
            } else if e.size != size {
                self.fs.set_len(p, size).await.map_err(|e| self.fail(e))?;
            }
        }
        match attrs.mtime {
            Some(t) => self
                .fs
                .set_mtime(p, from_unix(t))
                .await
                .map_err(|e| self.fail(e)),
            // Still answer NO_SUCH_FILE for a path that does not exist.
            None if attrs.size.is_none() => {
                self.fs.stat(p).await.map_err(|e| self.fail(e))?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn version() -> Version {
        let mut v = Version::new();
        let ext: HashMap<String, String> = [
            ("posix-rename@openssh.com", "1"),
            ("statvfs@openssh.com", "2"),
            ("fsync@openssh.com", "1"),
            ("limits@openssh.com", "1"),
            ("expand-path@openssh.com", "1"),
            ("copy-data", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        v.extensions = ext;
        v
    }

    async fn extension(&mut self, id: u32, request: &str, data: &[u8]) -> Res<Packet> {
        let mut r = data;
        match request {
            "posix-rename@openssh.com" => {
                let from = take_string(&mut r)?;
                let to = take_string(&mut r)?;
                let (from, to) = self.rename_paths(&from, &to).await?;
                self.fs
                    .rename(&from, &to, true)
                    .await
                    .map_err(|e| self.fail(e))?;
                Ok(ok(id).into())
            }
            "statvfs@openssh.com" | "fstatvfs@openssh.com" => {
                // Object storage has no capacity to report: answer big, plausible numbers so
                // that clients which check free space before an upload go ahead.
                let st = Statvfs {
                    block_size: 4096,
                    fragment_size: 4096,
                    blocks: 1 << 40,
                    blocks_free: 1 << 39,
                    blocks_avail: 1 << 39,
                    inodes: 1 << 32,
                    inodes_free: 1 << 31,
                    inodes_avail: 1 << 31,
                    fs_id: 0,
                    flags: 0,
                    name_max: bucketgate_storage::path::MAX_SEGMENT as u64,
                };
                ext_reply(id, russh_sftp::ser::to_bytes(&st))
            }
            "fsync@openssh.com" => {
                let h = take_string(&mut r)?;
                match self.handles.get_mut(&h) {
                    // Nothing can be made durable before CLOSE: an object only exists once its
                    // upload completes, and CLOSE answers only after that. Saying OK here is
                    // what the client needs to go on; CLOSE still reports any failure.
                    Some(_) => Ok(ok(id).into()),
                    None => Err(Self::bad_handle()),
                }
            }
            "limits@openssh.com" => {
                let io = u64::from(self.limits.max_io_len());
                let l = LimitsExtension {
                    max_packet_len: u64::from(self.limits.max_packet_len),
                    max_read_len: io,
                    max_write_len: io,
                    max_open_handles: self.limits.max_handles as u64,
                };
                ext_reply(id, russh_sftp::ser::to_bytes(&l))
            }
            "expand-path@openssh.com" => {
                let p = take_string(&mut r)?;
                // The home is "/": "~" and "~/x" are paths from there.
                let p = p.strip_prefix('~').unwrap_or(&p).to_string();
                let p = self.path(&p)?;
                Ok(Name {
                    id,
                    files: vec![File::dummy(p.to_string())],
                }
                .into())
            }
            "copy-data" => {
                let from = take_string(&mut r)?;
                let from_offset = take_u64(&mut r)?;
                let len = take_u64(&mut r)?;
                let to = take_string(&mut r)?;
                let to_offset = take_u64(&mut r)?;
                self.copy_data(id, &from, from_offset, len, &to, to_offset)
                    .await?;
                Ok(ok(id).into())
            }
            // Hard links have no meaning over objects.
            "hardlink@openssh.com" => Err(SftpError::new(
                StatusCode::OpUnsupported,
                "hard links are not supported",
            )),
            _ => Err(SftpError::code(StatusCode::OpUnsupported)),
        }
    }
}

/// An extension's reply: its body as russh-sftp serialised it.
/// A size set on an upload in progress (FSETSTAT, or SETSTAT of the path the session is
/// writing): its current size is fine; cutting it to 0 before anything is written is a
/// truncate (ftruncate after open); anything else cannot be done over an object.
fn set_writer_size(w: &mut FileWriter, size: u64) -> Res<()> {
    if !w.set_len(size) {
        return Err(SftpError::new(
            StatusCode::OpUnsupported,
            "changing the size of a file after writing to it is not supported before it is closed",
        ));
    }
    Ok(())
}

fn ext_reply<E: std::fmt::Display>(id: u32, body: Result<Bytes, E>) -> Res<Packet> {
    match body {
        Ok(b) => Ok(ExtendedReply {
            id,
            data: b.to_vec(),
        }
        .into()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot encode an SFTP extension reply");
            Err(SftpError::code(StatusCode::Failure))
        }
    }
}

/// Reads one SSH `uint64` from an extension's request data.
fn take_u64(r: &mut &[u8]) -> Res<u64> {
    let Some((n, rest)) = r.split_first_chunk::<8>() else {
        return Err(SftpError::code(StatusCode::BadMessage));
    };
    *r = rest;
    Ok(u64::from_be_bytes(*n))
}

/// Reads one SSH `string` from an extension's request data.
fn take_string(r: &mut &[u8]) -> Res<String> {
    let bad = || SftpError::code(StatusCode::BadMessage);
    if r.len() < 4 {
        return Err(bad());
    }
    let n = u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize;
    if r.len() < 4 + n {
        return Err(bad());
    }
    let s = std::str::from_utf8(&r[4..4 + n])
        .map_err(|_| bad())?
        .to_string();
    *r = &r[4 + n..];
    Ok(s)
}

impl Drop for SftpSession {
    fn drop(&mut self) {
        // A session that ends with uploads still open (client gone, connection dropped) gives
        // them up: nothing half-written may become visible.
        let writers: Vec<FileWriter> = self
            .handles
            .drain()
            .filter_map(|h| match h {
                Handle::Write { writer, .. } => Some(writer),
                _ => None,
            })
            .collect();
        if writers.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for w in writers {
                    w.abort().await;
                }
            });
        }
    }
}

impl SftpSession {
    /// The `copy-data` extension (OpenSSH's `sftp cp`): `len` bytes (0: to the end) of the
    /// file open for reading as `from`, from `from_offset`, written into the upload open as
    /// `to` at `to_offset`, as READs and WRITEs of the client would, without the round trips.
    /// The copy is committed, as any upload, only by the CLOSE of `to`. One handle as both
    /// source and target is refused: a handle's reads see the file as it was at its open, not
    /// its writes, so the copy would not be what a disk gives.
    async fn copy_data(
        &mut self,
        id: u32,
        from: &str,
        from_offset: u64,
        len: u64,
        to: &str,
        to_offset: u64,
    ) -> Res<()> {
        if from == to {
            return Err(SftpError::new(
                StatusCode::OpUnsupported,
                "copying within one handle is not supported",
            ));
        }
        let chunk = u64::from(self.limits.max_io_len());
        let mut done = 0u64;
        while len == 0 || done < len {
            let want = if len == 0 {
                chunk
            } else {
                chunk.min(len - done)
            };
            let data = match self
                .read_bytes(
                    from.to_string(),
                    from_offset.saturating_add(done),
                    want as u32,
                )
                .await
            {
                Ok(d) => d,
                Err(e) if e.is_eof() => break,
                Err(e) => return Err(e),
            };
            let n = data.len() as u64;
            let at = to_offset.checked_add(done).ok_or_else(|| {
                SftpError::new(StatusCode::Failure, "offset beyond the largest file size")
            })?;
            self.write_bytes(id, to.to_string(), at, data).await?;
            done += n;
        }
        Ok(())
    }
}

impl DirectIo for SftpSession {
    fn transferring(&self) -> bool {
        self.handles.has_files()
    }

    async fn write_bytes(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Bytes,
    ) -> Result<Status, SftpError> {
        let user = self.fs.username().to_string();
        match self.handles.get_mut(&handle) {
            Some(Handle::Write { writer, .. }) => {
                writer.write_at(offset, data).await.map_err(|e| {
                    log_error(&user, &e);
                    SftpError::from(e)
                })?;
                Ok(ok(id))
            }
            Some(_) => Err(SftpError::new(
                StatusCode::Failure,
                "handle is not open for writing",
            )),
            None => Err(Self::bad_handle()),
        }
    }

    async fn read_bytes(
        &mut self,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Bytes, SftpError> {
        let max = self.limits.max_io_len();
        let user = self.fs.username().to_string();
        let len = len.min(max) as usize;
        let r = match self.handles.get_mut(&handle) {
            Some(Handle::Read { reader, .. }) => reader.read_at(offset, len).await,
            Some(Handle::Write {
                writer,
                readable: true,
                ..
            }) => writer.read_at(offset, len).await,
            Some(_) => {
                return Err(SftpError::new(
                    StatusCode::Failure,
                    "handle is not open for reading",
                ))
            }
            None => return Err(Self::bad_handle()),
        };
        let data = r.map_err(|e| {
            log_error(&user, &e);
            SftpError::from(e)
        })?;
        if data.is_empty() {
            return Err(SftpError::code(StatusCode::Eof));
        }
        Ok(data)
    }
}

impl russh_sftp::server::Handler for SftpSession {
    type Error = SftpError;

    fn unimplemented(&self) -> Self::Error {
        SftpError::code(StatusCode::OpUnsupported)
    }

    async fn init(
        &mut self,
        version: u32,
        _extensions: HashMap<String, String>,
    ) -> Result<Version, Self::Error> {
        tracing::debug!(user = self.fs.username(), version, "sftp session start");
        Ok(Self::version())
    }

    async fn open(
        &mut self,
        id: u32,
        filename: String,
        pflags: OpenFlags,
        _attrs: FileAttributes,
    ) -> Result<HandleReply, Self::Error> {
        self.room_for_handle()?;
        let p = self.entry_path(&filename).await?;
        let write = pflags.contains(OpenFlags::WRITE);
        let read = pflags.contains(OpenFlags::READ);
        let h = if write {
            let mode = OpenMode {
                create: pflags.contains(OpenFlags::CREATE),
                truncate: pflags.contains(OpenFlags::TRUNCATE),
                exclusive: pflags.contains(OpenFlags::EXCLUDE),
                append: pflags.contains(OpenFlags::APPEND),
                size_hint: None,
                keep_partial: self.limits.keep_partial,
            };
            let writer = self
                .fs
                .open_write(&p, mode)
                .await
                .map_err(|e| self.open_failed(&p, e))?;
            Handle::Write {
                path: p,
                writer,
                readable: read,
                _busy: self.busy.enter(),
            }
        } else {
            if pflags.contains(OpenFlags::TRUNCATE) {
                // TRUNC without WRITE empties the file first, as open(2) with O_RDONLY|O_TRUNC
                // does on OpenSSH's sftp-server (needs `overwrite`); with CREAT and EXCL as
                // open(2) has them: EXCL refuses an existing file before anything is emptied,
                // CREAT makes a missing one.
                let mode = OpenMode {
                    truncate: true,
                    create: pflags.contains(OpenFlags::CREATE),
                    exclusive: pflags.contains(OpenFlags::EXCLUDE),
                    ..Default::default()
                };
                let w = self
                    .fs
                    .open_write(&p, mode)
                    .await
                    .map_err(|e| self.fail(e))?;
                w.close().await.map_err(|e| self.fail(e))?;
            }
            let reader = self
                .fs
                .open_read(&p)
                .await
                .map_err(|e| self.open_failed(&p, e))?;
            Handle::Read {
                path: p,
                reader,
                _busy: self.busy.enter(),
            }
        };
        Ok(HandleReply {
            id,
            handle: self.handles.insert(h),
        })
    }

    async fn close(&mut self, id: u32, handle: String) -> Result<Status, Self::Error> {
        match self.handles.remove(&handle) {
            None => Err(Self::bad_handle()),
            // OK only once the object is complete in the bucket: a client that sees OK may
            // delete its local copy.
            Some(Handle::Write { writer, .. }) => match writer.close().await {
                Ok(_) => Ok(ok(id)),
                Err(e) => Err(self.fail(e)),
            },
            Some(_) => Ok(ok(id)),
        }
    }

    async fn read(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        len: u32,
    ) -> Result<Data, Self::Error> {
        let data = self.read_bytes(handle, offset, len).await?;
        Ok(Data {
            id,
            data: data.to_vec(),
        })
    }

    async fn write(
        &mut self,
        id: u32,
        handle: String,
        offset: u64,
        data: Vec<u8>,
    ) -> Result<Status, Self::Error> {
        self.write_bytes(id, handle, offset, Bytes::from(data))
            .await
    }

    async fn lstat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        // No symlinks exist here, so lstat is stat.
        Ok(Attrs {
            id,
            attrs: self.stat_path(&path).await?,
        })
    }

    async fn stat(&mut self, id: u32, path: String) -> Result<Attrs, Self::Error> {
        Ok(Attrs {
            id,
            attrs: self.stat_path(&path).await?,
        })
    }

    async fn fstat(&mut self, id: u32, handle: String) -> Result<Attrs, Self::Error> {
        let entry = match self.handles.get_mut(&handle) {
            Some(Handle::Read { reader, .. }) => reader.entry().clone(),
            Some(Handle::Write { writer, .. }) => writer.entry(),
            Some(Handle::Dir { path, .. }) => {
                let p = path.clone();
                self.fs.stat(&p).await.map_err(|e| self.fail(e))?
            }
            None => return Err(Self::bad_handle()),
        };
        Ok(Attrs {
            id,
            attrs: attrs_of(&entry),
        })
    }

    async fn setstat(
        &mut self,
        id: u32,
        path: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.entry_path(&path).await?;
        self.apply_attrs(&p, &attrs).await?;
        Ok(ok(id))
    }

    async fn fsetstat(
        &mut self,
        id: u32,
        handle: String,
        attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = match self.handles.get_mut(&handle) {
            Some(Handle::Write { writer, .. }) => {
                // A size on an open upload: its current size is fine; cutting it to 0 before
                // anything is written is a truncate (ftruncate after open); anything else
                // cannot be done over an object.
                if let Some(size) = attrs.size {
                    set_writer_size(writer, size)?;
                }
                // Recorded with the object when it is committed at CLOSE.
                if let Some(t) = attrs.mtime {
                    writer.set_mtime(from_unix(t));
                }
                return Ok(ok(id));
            }
            Some(Handle::Read { path, .. }) | Some(Handle::Dir { path, .. }) => path.clone(),
            None => return Err(Self::bad_handle()),
        };
        self.apply_attrs(&p, &attrs).await?;
        Ok(ok(id))
    }

    async fn opendir(&mut self, id: u32, path: String) -> Result<HandleReply, Self::Error> {
        self.room_for_handle()?;
        let p = self.path(&path)?;
        let stream = self.fs.list(&p).await.map_err(|e| self.fail(e))?;
        let h = Handle::Dir {
            path: p,
            listing: DirListing {
                stream,
                pending: VecDeque::new(),
                done: false,
            },
        };
        Ok(HandleReply {
            id,
            handle: self.handles.insert(h),
        })
    }

    async fn readdir(&mut self, id: u32, handle: String) -> Result<Name, Self::Error> {
        let owner = self.fs.username().to_string();
        let listing = match self.handles.get_mut(&handle) {
            Some(Handle::Dir { listing, .. }) => listing,
            Some(_) => {
                return Err(SftpError::new(
                    StatusCode::Failure,
                    "handle is not a folder",
                ));
            }
            None => return Err(Self::bad_handle()),
        };
        // Pull pages until a batch is full or the listing ends; a page never stays in memory
        // beyond the batches it fills.
        while listing.pending.len() < READDIR_BATCH && !listing.done {
            match listing.stream.next().await {
                Some(Ok(page)) => listing.pending.extend(page),
                Some(Err(e)) => {
                    log_error(&owner, &e);
                    return Err(e.into());
                }
                None => listing.done = true,
            }
        }
        if listing.pending.is_empty() {
            return Err(SftpError::code(StatusCode::Eof));
        }
        let now = SystemTime::now();
        let n = listing.pending.len().min(READDIR_BATCH);
        let files = listing
            .pending
            .drain(..n)
            .map(|e| file_of(&e, &owner, now))
            .collect();
        Ok(Name { id, files })
    }

    async fn remove(&mut self, id: u32, filename: String) -> Result<Status, Self::Error> {
        let p = self.entry_path(&filename).await?;
        self.fs.remove(&p).await.map_err(|e| self.fail(e))?;
        Ok(ok(id))
    }

    async fn mkdir(
        &mut self,
        id: u32,
        path: String,
        _attrs: FileAttributes,
    ) -> Result<Status, Self::Error> {
        let p = self.path(&path)?;
        self.fs.mkdir(&p).await.map_err(|e| self.fail(e))?;
        Ok(ok(id))
    }

    async fn rmdir(&mut self, id: u32, path: String) -> Result<Status, Self::Error> {
        let p = self.path(&path)?;
        self.fs.rmdir(&p).await.map_err(|e| self.fail(e))?;
        Ok(ok(id))
    }

    async fn realpath(&mut self, id: u32, path: String) -> Result<Name, Self::Error> {
        // Purely lexical, as OpenSSH's server does for a path that does not exist yet: the
        // home is "/" and ".." never leaves it.
        let p = self.path(&path)?;
        Ok(Name {
            id,
            files: vec![File::dummy(p.to_string())],
        })
    }

    async fn rename(
        &mut self,
        id: u32,
        oldpath: String,
        newpath: String,
    ) -> Result<Status, Self::Error> {
        let (from, to) = self.rename_paths(&oldpath, &newpath).await?;
        // SFTP v3 rename never replaces: posix-rename@openssh.com is the replacing one.
        self.fs
            .rename(&from, &to, false)
            .await
            .map_err(|e| self.fail(e))?;
        Ok(ok(id))
    }

    async fn readlink(&mut self, _id: u32, _path: String) -> Result<Name, Self::Error> {
        Err(SftpError::new(
            StatusCode::OpUnsupported,
            "symbolic links are not supported",
        ))
    }

    async fn symlink(
        &mut self,
        _id: u32,
        _linkpath: String,
        _targetpath: String,
    ) -> Result<Status, Self::Error> {
        Err(SftpError::new(
            StatusCode::OpUnsupported,
            "symbolic links are not supported",
        ))
    }

    async fn extended(
        &mut self,
        id: u32,
        request: String,
        data: Vec<u8>,
    ) -> Result<Packet, Self::Error> {
        self.extension(id, &request, &data).await
    }
}
