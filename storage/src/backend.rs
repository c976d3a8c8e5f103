//! The backend boundary: what a place that holds objects (a local folder, an S3 bucket) must do.
//!
//! Keys are relative, `/`-separated, without a leading slash; `""` is the backend's root. A
//! folder is named without its trailing slash. The virtual file tree ([`crate::vfs`]) turns user
//! paths into (backend, key) pairs; backends never see a user path.

use crate::budget::MemoryBudget;
use crate::error::Result;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::sync::Arc;
use std::time::SystemTime;

/// File or folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    /// A file: one object.
    File,
    /// A folder: a `name/` marker, an implied prefix, or a local directory.
    Dir,
}

/// What a listing or a stat tells about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The entry's name within its folder (for [`Backend::walk`], its path below the walked key).
    pub name: String,
    /// File or folder.
    pub kind: EntryKind,
    /// Size in bytes; 0 for folders.
    pub size: u64,
    /// The time shown to clients: client-set `mtime` metadata, else Last-Modified.
    /// `None` for a folder with no marker; the tree fills in a sensible time.
    pub mtime: Option<SystemTime>,
    /// An opaque version tag (S3 ETag, or a local size+mtime+inode stamp) used to detect
    /// changes between an open and a later commit.
    pub etag: Option<String>,
}

impl Entry {
    /// True for folders.
    pub fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    /// A folder entry with no known time.
    pub fn dir(name: impl Into<String>) -> Self {
        Entry {
            name: name.into(),
            kind: EntryKind::Dir,
            size: 0,
            mtime: None,
            etag: None,
        }
    }
}

/// A stream of bytes read from a backend.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// A listing, one page of entries at a time, so memory stays flat for any folder size.
pub type ListStream = BoxStream<'static, Result<Vec<Entry>>>;

/// What a walk passed over ([`Backend::walk_noting`]): names that cannot be paths (not UTF-8, an
/// empty, `.` or `..` segment, too long) and files hidden by a folder of the same name. A
/// listing shows neither (each is logged); a caller that must account for every file, such as
/// a sync run, reports them.
#[derive(Debug, Default)]
pub struct WalkNotes {
    passed: std::sync::Mutex<Vec<(String, &'static str)>>,
}

impl WalkNotes {
    /// `name` (below the walked key, as it is; a name that is not UTF-8 with its bad bytes
    /// replaced) was passed over, because of `why`.
    pub fn note(&self, name: impl Into<String>, why: &'static str) {
        self.passed.lock().expect("lock").push((name.into(), why));
    }

    /// Everything noted so far, in the order met.
    pub fn take(&self) -> Vec<(String, &'static str)> {
        std::mem::take(&mut *self.passed.lock().expect("lock"))
    }
}

/// Why a walk passes over a name (see [`WalkNotes`]).
pub mod passed_over {
    /// A name that is not valid UTF-8.
    pub const NOT_UTF8: &str = "its name is not valid UTF-8";
    /// A key no path can name.
    pub const NOT_A_PATH: &str =
        "its name cannot be a path (an empty, `.` or `..` segment, a `\\` \
         or a control character, or a segment over 255 bytes)";
    /// A file whose name a folder also has.
    pub const HIDDEN_BY_FOLDER: &str = "a folder of the same name hides it";
}

/// Names listed in one folder by one request (see [`Backend::child_names`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildNames {
    /// The children listed, files and folders alike, by name.
    pub names: Vec<String>,
    /// The listing began after this name (`""`: at the start).
    pub after: String,
    /// Where it ended short of the folder's end: the last entry listed, relative to the
    /// folder (a folder's with its `/`). `None`: it reached the end.
    pub end: Option<String>,
}

impl ChildNames {
    /// True when the listing tells whether a child `name` exists: the name sorts after where it
    /// began, and both the name and the name of a folder of that name (`name/`) sort no later
    /// than where it ended (keys sort by their bytes, as Rust's strings do).
    pub fn covers(&self, name: &str) -> bool {
        name > self.after.as_str()
            && self
                .end
                .as_deref()
                .is_none_or(|end| format!("{name}/").as_str() <= end)
    }
}

/// How a new object is to be written.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// Append to this existing object (as seen at open, with its ETag): the new object is the
    /// old bytes followed by what is written, and it must fail with `Conflict` if the object
    /// changed meanwhile.
    pub append_to: Option<Entry>,
    /// With `append_to`: keep only the first this many bytes of the old object (an in-place
    /// write that replaces what follows). `None` keeps all of it.
    pub keep_head: Option<u64>,
    /// Commit only if nothing exists under the key at that moment (S3 `If-None-Match: *`, a
    /// no-replace rename on disk); otherwise `finish` fails with `AlreadyExists` and nothing
    /// changes. Servers that ignore the condition still get a check just before the commit.
    pub if_absent: bool,
    /// Commit only if the object under the key still has this version tag (S3 `If-Match`, an
    /// identity check on disk); otherwise `finish` fails with `Conflict` and nothing changes.
    pub if_match: Option<String>,
    /// Total size announced up front (scp, FTP ALLO), to pick a part size at once.
    pub size_hint: Option<u64>,
    /// Modification time to record with the object (`mtime` metadata).
    pub mtime: Option<SystemTime>,
    /// Keep what arrived when the upload is interrupted (`keep_partial_uploads`).
    pub keep_partial: bool,
    /// The caller can send the same bytes again if the upload fails (a sync reading from a
    /// backend, not a client's stream): the backend may then use a request it cannot retry
    /// itself, such as one streamed PutObject of the announced `size_hint`.
    pub resendable: bool,
    /// A checksum of the bytes that will be written, known before the first of them (a sync
    /// copy that hashed its source first), of the kind [`Backend::wants_source_hash`] named.
    /// The upload is then one streamed request that carries it, and the server refuses it,
    /// storing nothing, if the bytes that arrive do not match: a byte changed on the way, or a
    /// source that changed between its hashing and its upload. Ignored elsewhere.
    pub source_hash: Option<SourceHash>,
}

/// A checksum of a whole upload, computed before it starts ([`CreateOptions::source_hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceHash {
    /// An MD5, sent as `Content-MD5`.
    Md5([u8; 16]),
    /// A CRC32C, sent as `x-amz-checksum-crc32c`.
    Crc32c(u32),
}

impl SourceHash {
    /// Which checksum this is.
    pub fn kind(&self) -> HashKind {
        match self {
            SourceHash::Md5(_) => HashKind::Md5,
            SourceHash::Crc32c(_) => HashKind::Crc32c,
        }
    }
}

/// Which checksum a backend wants computed before an upload ([`Backend::wants_source_hash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// MD5.
    Md5,
    /// CRC32C (Castagnoli).
    Crc32c,
}

/// An upload in progress. Nothing is visible under the key until [`Upload::finish`] succeeds;
/// dropping it or calling [`Upload::abort`] leaves nothing behind.
#[async_trait]
pub trait Upload: Send {
    /// Appends bytes. May return before they are durable (write-behind): an error of a part
    /// sent in the background surfaces on a later `write` or on `finish`.
    async fn write(&mut self, data: Bytes) -> Result<()>;
    /// Bytes accepted so far (not counting appended-to bytes).
    fn written(&self) -> u64;
    /// Completes the upload; returns only once the object is durable, and then describes it.
    async fn finish(self: Box<Self>) -> Result<Entry>;
    /// Gives the upload up: nothing becomes visible and any multipart upload is aborted (unless
    /// the upload was created with `keep_partial`, in which case what arrived is committed).
    async fn abort(self: Box<Self>);
}

/// A place that holds files: the local site folder, or an S3 bucket (with a base prefix).
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// A short name for logs and errors (`local:/srv/files`, `s3:acme-minio`). Never a secret.
    fn describe(&self) -> String;

    /// Describes a file or a folder. `""` is the root, always a folder.
    /// Where a file `a` and keys under `a/` both exist, the folder wins.
    async fn stat(&self, key: &str) -> Result<Entry>;

    /// [`Backend::stat`], and where `key` is a folder and the same request can bring the first
    /// page of its listing, that listing (its first page fetched, the rest fetched as it is
    /// read). A client that stats a folder mostly lists it next (`ls -l dir`, `cd dir` then
    /// `ls`): a session keeps it for a moment (see `crate::known`), so that listing costs no
    /// request for its first page. None by default.
    async fn stat_listing(&self, key: &str) -> Result<(Entry, Option<ListStream>)> {
        Ok((self.stat(key).await?, None))
    }

    /// Describes `key` where only a file of that name matters (the sync engine's check that a
    /// target is still what it listed): object storage answers with one HEAD instead of a HEAD
    /// and a listing, which on some servers walks the whole folder. A folder of the same name
    /// may go unseen. By default the same as [`Backend::stat`].
    async fn stat_file(&self, key: &str) -> Result<Entry> {
        self.stat(key).await
    }

    /// The direct children of folder `key`, one page at a time. A folder that does not exist
    /// lists as empty on object storage (prefixes are implicit); callers stat first when they
    /// need to tell the two apart.
    fn list(&self, key: &str) -> ListStream;

    /// Every file and folder below `key`, recursively, with names relative to `key`, one page
    /// at a time (for folder renames and sync).
    fn walk(&self, key: &str) -> ListStream;

    /// [`Backend::walk`], telling `notes` what it passes over instead of only logging it.
    fn walk_noting(&self, key: &str, notes: Arc<WalkNotes>) -> ListStream {
        let _ = notes;
        self.walk(key)
    }

    /// The names of the direct children of folder `key` (files and folders alike) that sort
    /// after the child name `after` (`""`: from the start), as many as one request tells;
    /// `None` where a backend's lookups cost no round trip, so that knowing them saves
    /// nothing. A session keeps them for a moment, to answer "no such file" without asking
    /// again (see `crate::known`).
    async fn child_names(&self, _key: &str, _after: &str) -> Result<Option<ChildNames>> {
        Ok(None)
    }

    /// True when [`Backend::walk`] shows each file's time as [`Backend::stat_file`] does. False
    /// where that time is kept apart from the listing (S3 with `preserve_mtime`: the `mtime`
    /// metadata needs a HEAD per file, so a walk shows Last-Modified and a caller that needs
    /// the metadata time of some files stats those).
    fn walk_mtime_exact(&self) -> bool {
        true
    }

    /// True when an [`Entry::etag`] of 32 hex digits is the MD5 of the file's bytes (S3 without
    /// SSE-KMS or SSE-C); false when such ETags are something else, so no MD5 is taken from
    /// them (sync compares contents by reading instead).
    fn etags_are_md5(&self) -> bool {
        true
    }

    /// True when an upload made with [`CreateOptions::if_absent`] or
    /// [`CreateOptions::if_match`] is refused at its commit if the name was taken, or the file
    /// changed, since the caller looked (by the server, or by this backend's own check just
    /// before the commit), leaving what is there: a caller needs no check of its own before
    /// it. False by default.
    fn checks_conditions_at_commit(&self) -> bool {
        false
    }

    /// Readies this backend for `count` uploads made with [`CreateOptions::resendable`] below
    /// folder `key` (a sync about to copy files there). S3 asks its server, in one small probe
    /// when no probe has answered yet, whether it enforces a create-only PutObject (the upload
    /// then needs no HEAD before it) and which checksums it verifies; a few hundred copies
    /// are worth that probe's wait, fewer are not. Nothing by default.
    async fn prepare_copies(&self, key: &str, count: u64) {
        let _ = (key, count);
    }

    /// The checksum that an upload of `size` bytes to `key`, made with
    /// [`CreateOptions::resendable`], should know up front ([`CreateOptions::source_hash`]) to
    /// take a faster path, where the server is known to refuse such an upload whose bytes do
    /// not match, keeping the previous version. The caller then hashes its source before it
    /// uploads. S3 asks its server once (a small probe) when no probe has answered yet. None by
    /// default.
    async fn wants_source_hash(&self, key: &str, size: u64) -> Option<HashKind> {
        let _ = (key, size);
        None
    }

    /// Reads `key` from `offset` to `end` (exclusive; `None` = end of file).
    async fn read(&self, key: &str, offset: u64, end: Option<u64>) -> Result<ByteStream>;

    /// Reads like [`Backend::read`], but only the version of `key` that `etag` names (an
    /// [`Entry::etag`] this backend gave): when the file is another version now, it fails with
    /// `Conflict` instead of streaming bytes of a version the caller never saw. `None` reads
    /// whatever is there. By default the same as [`Backend::read`] (for a backend that cannot
    /// tell versions apart).
    async fn read_version(
        &self,
        key: &str,
        offset: u64,
        end: Option<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream> {
        let _ = etag;
        self.read(key, offset, end).await
    }

    /// The process-wide budget (`transfers.memory_limit`) this backend's transfer buffers draw
    /// on, if it has one: the read-ahead of files opened on it counts against the same budget.
    fn memory_budget(&self) -> Option<Arc<MemoryBudget>> {
        None
    }

    /// Starts writing `key`. The object appears whole at `finish`, never before.
    async fn create(&self, key: &str, opts: CreateOptions) -> Result<Box<dyn Upload>>;

    /// Creates folder `key` (a zero-byte `key/` marker on object storage). Existing is fine.
    async fn mkdir(&self, key: &str) -> Result<()>;

    /// Removes file `key`.
    async fn remove_file(&self, key: &str) -> Result<()>;

    /// Removes folder `key`; fails with `DirectoryNotEmpty` when it holds anything.
    async fn remove_dir(&self, key: &str) -> Result<()>;

    /// Copies file `from` to `to` within this backend, server-side where possible. Replaces `to`.
    async fn copy_file(&self, from: &str, to: &str) -> Result<()>;

    /// Moves file `from` to `to` within this backend (copy then delete on object storage).
    /// When the delete fails (a key allowed to write but not to delete), the error says that
    /// the file is now under both names: nothing is lost, and the client is not told that the
    /// old name is gone or that the move did nothing.
    async fn rename_file(&self, from: &str, to: &str) -> Result<()> {
        self.copy_file(from, to).await?;
        self.remove_file(from).await.map_err(under_both_names)
    }

    /// Moves folder `from` with everything below it to `to` within this backend. Deletes
    /// nothing before its copy exists; if it fails halfway, the error says what moved.
    async fn rename_dir(&self, from: &str, to: &str) -> Result<()>;

    /// Records a client-set modification time on file `key`.
    async fn set_mtime(&self, key: &str, mtime: SystemTime) -> Result<()>;
}

/// The error of a move whose copy succeeded and whose delete of the old name (`e`) failed.
pub(crate) fn under_both_names(e: crate::error::Error) -> crate::error::Error {
    crate::error::Error::new(
        e.kind(),
        format!(
            "the file was copied to its new name, but the old name could not be removed ({}): \
             it now exists under both names",
            e.message()
        ),
    )
    .with_source(e)
}
