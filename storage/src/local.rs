//! The local-folder backend: the embedded default site tree.
//!
//! Uploads are written to a staging folder inside the root (hidden from every listing and
//! unreachable by any key) and renamed into place when complete, so a partial file is never
//! visible and an overwritten file keeps its old content until the new one is whole.

use crate::backend::{
    passed_over, Backend, ByteStream, CreateOptions, Entry, EntryKind, ListStream, Upload,
    WalkNotes,
};
use crate::budget::MemoryBudget;
use crate::error::{Error, ErrorKind, Result};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// Name of the staging folder at the root; never listed and never reachable through a key.
pub const STAGING: &str = ".bucketgate-staging";
const PAGE: usize = 1000;

/// A folder on local disk.
#[derive(Debug, Clone)]
pub struct LocalBackend {
    root: PathBuf,
    staging: PathBuf,
    budget: Option<std::sync::Arc<MemoryBudget>>,
}

impl LocalBackend {
    /// Opens (and creates when missing) the folder `root`.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self> {
        let root: PathBuf = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| Error::from(e).with_context("open", root.display().to_string()))?;
        let staging = root.join(STAGING);
        std::fs::create_dir_all(&staging)
            .map_err(|e| Error::from(e).with_context("open", staging.display().to_string()))?;
        Ok(LocalBackend {
            root,
            staging,
            budget: None,
        })
    }

    /// Counts the read-ahead of files opened on this folder against `budget`
    /// (`transfers.memory_limit`), as the S3 backends do.
    pub fn with_memory_budget(mut self, budget: std::sync::Arc<MemoryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// The folder on disk.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        let mut p = self.root.clone();
        for (i, seg) in key.split('/').filter(|s| !s.is_empty()).enumerate() {
            if seg == "." || seg == ".." || (i == 0 && seg == STAGING) {
                return Err(Error::of(ErrorKind::NotFound));
            }
            p.push(seg);
        }
        Ok(p)
    }
}

/// Names placed on disk by others may hold CR/LF or other control characters, which no client
/// path can name and which would forge lines in FTP listings, or a backslash, which a client
/// path reads as a separator (`a\..\b` would name `b`): they are never served.
fn servable_name(name: &str) -> bool {
    crate::path::name_is_servable(name)
}

fn etag_of(md: &std::fs::Metadata) -> String {
    let nanos = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{}-{}", md.len(), nanos, md.ino())
}

fn entry_of(name: String, md: &std::fs::Metadata) -> Entry {
    let is_dir = md.is_dir();
    Entry {
        name,
        kind: if is_dir {
            EntryKind::Dir
        } else {
            EntryKind::File
        },
        size: if is_dir { 0 } else { md.len() },
        mtime: md.modified().ok(),
        etag: if is_dir { None } else { Some(etag_of(md)) },
    }
}

fn ctx<'a>(op: &'static str, key: &'a str) -> impl FnOnce(Error) -> Error + 'a {
    move |e| e.with_key(op, format!("/{key}"))
}

/// Reads one folder's entries in pages; names that are not UTF-8 are skipped and logged.
fn list_dir(dir: PathBuf, hide_staging: bool, prefix: String) -> ListStream {
    let stream = async_stream_pages(dir, hide_staging, prefix);
    Box::pin(stream)
}

fn async_stream_pages(
    dir: PathBuf,
    hide_staging: bool,
    prefix: String,
) -> impl futures::Stream<Item = Result<Vec<Entry>>> + Send + 'static {
    struct St {
        rd: Option<tokio::fs::ReadDir>,
        dir: PathBuf,
        hide_staging: bool,
        prefix: String,
        done: bool,
    }
    let st = St {
        rd: None,
        dir,
        hide_staging,
        prefix,
        done: false,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        if st.rd.is_none() {
            match tokio::fs::read_dir(&st.dir).await {
                Ok(rd) => st.rd = Some(rd),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    st.done = true;
                    return Some((Ok(Vec::new()), st));
                }
                Err(e) => {
                    st.done = true;
                    return Some((Err(Error::from(e)), st));
                }
            }
        }
        let rd = st.rd.as_mut().expect("opened above");
        let mut page = Vec::new();
        loop {
            match rd.next_entry().await {
                Ok(Some(de)) => {
                    let Ok(name) = de.file_name().into_string() else {
                        tracing::warn!(dir = %st.dir.display(), "skipping a file name that is not UTF-8");
                        continue;
                    };
                    if st.hide_staging && name == STAGING {
                        continue;
                    }
                    if !servable_name(&name) {
                        tracing::warn!(dir = %st.dir.display(), name = ?name, "skipping a file name that cannot be a path");
                        continue;
                    }
                    // Follow symlinks placed by the operator; skip dangling ones.
                    let md = match tokio::fs::metadata(de.path()).await {
                        Ok(md) => md,
                        Err(_) => continue,
                    };
                    page.push(entry_of(format!("{}{}", st.prefix, name), &md));
                    if page.len() >= PAGE {
                        return Some((Ok(page), st));
                    }
                }
                Ok(None) => {
                    st.done = true;
                    return Some((Ok(page), st));
                }
                Err(e) => {
                    st.done = true;
                    return Some((Err(Error::from(e)), st));
                }
            }
        }
    })
}

/// Depth-first walk: memory holds one page plus the folders still to visit.
fn walk_pages(
    start: PathBuf,
    top_is_root: bool,
    notes: Option<Arc<WalkNotes>>,
) -> impl futures::Stream<Item = Result<Vec<Entry>>> + Send + 'static {
    struct St {
        stack: Vec<(PathBuf, String)>,
        cur: Option<(tokio::fs::ReadDir, PathBuf, String)>,
        top_is_root: bool,
        done: bool,
        notes: Option<Arc<WalkNotes>>,
    }
    let st = St {
        stack: vec![(start, String::new())],
        cur: None,
        top_is_root,
        done: false,
        notes,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let mut page = Vec::new();
        loop {
            if st.cur.is_none() {
                let Some((dir, prefix)) = st.stack.pop() else {
                    st.done = true;
                    return Some((Ok(page), st));
                };
                match tokio::fs::read_dir(&dir).await {
                    Ok(rd) => st.cur = Some((rd, dir, prefix)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => {
                        st.done = true;
                        return Some((Err(Error::from(e)), st));
                    }
                }
            }
            let (rd, dir, prefix) = st.cur.as_mut().expect("set above");
            match rd.next_entry().await {
                Ok(Some(de)) => {
                    let Ok(name) = de.file_name().into_string() else {
                        tracing::warn!(dir = %dir.display(), "skipping a file name that is not UTF-8");
                        if let Some(n) = &st.notes {
                            let lossy = de.file_name().to_string_lossy().into_owned();
                            n.note(format!("{prefix}{lossy}"), passed_over::NOT_UTF8);
                        }
                        continue;
                    };
                    if st.top_is_root && prefix.is_empty() && name == STAGING {
                        continue;
                    }
                    if !servable_name(&name) {
                        tracing::warn!(dir = %dir.display(), name = ?name, "skipping a file name that cannot be a path");
                        if let Some(n) = &st.notes {
                            n.note(format!("{prefix}{name}"), passed_over::NOT_A_PATH);
                        }
                        continue;
                    }
                    let Ok(md) = tokio::fs::metadata(de.path()).await else {
                        continue;
                    };
                    let rel = format!("{prefix}{name}");
                    if md.is_dir() {
                        st.stack.push((de.path(), format!("{rel}/")));
                    }
                    page.push(entry_of(rel, &md));
                    if page.len() >= PAGE {
                        return Some((Ok(page), st));
                    }
                }
                Ok(None) => st.cur = None,
                Err(e) => {
                    st.done = true;
                    return Some((Err(Error::from(e)), st));
                }
            }
        }
    })
}

#[async_trait]
impl Backend for LocalBackend {
    fn describe(&self) -> String {
        format!("local:{}", self.root.display())
    }

    /// A create-only upload commits with a no-replace rename; one with `if_match` checks the
    /// file's identity just before its rename.
    fn checks_conditions_at_commit(&self) -> bool {
        true
    }

    async fn stat(&self, key: &str) -> Result<Entry> {
        let p = self.path(key).map_err(ctx("stat", key))?;
        let md = tokio::fs::metadata(&p)
            .await
            .map_err(|e| Error::from(e).with_key("stat", format!("/{key}")))?;
        let name = key.rsplit('/').next().unwrap_or("").to_string();
        Ok(entry_of(name, &md))
    }

    fn list(&self, key: &str) -> ListStream {
        match self.path(key) {
            Ok(p) => list_dir(p, key.is_empty(), String::new()),
            Err(e) => Box::pin(futures::stream::once(async move { Err(e) })),
        }
    }

    fn walk(&self, key: &str) -> ListStream {
        let start = match self.path(key) {
            Ok(p) => p,
            Err(e) => return Box::pin(futures::stream::once(async move { Err(e) })),
        };
        Box::pin(walk_pages(start, key.is_empty(), None))
    }

    fn walk_noting(&self, key: &str, notes: Arc<WalkNotes>) -> ListStream {
        let start = match self.path(key) {
            Ok(p) => p,
            Err(e) => return Box::pin(futures::stream::once(async move { Err(e) })),
        };
        Box::pin(walk_pages(start, key.is_empty(), Some(notes)))
    }

    async fn read(&self, key: &str, offset: u64, end: Option<u64>) -> Result<ByteStream> {
        self.read_version(key, offset, end, None).await
    }

    fn memory_budget(&self) -> Option<std::sync::Arc<MemoryBudget>> {
        self.budget.clone()
    }

    /// The version is the file's identity (size, time, inode: [`Entry::etag`]), checked on the
    /// file as opened. Uploads replace a file by renaming a whole new one over it, so a reader
    /// of the old version gets `Conflict` rather than the new bytes. A file rewritten in place
    /// by another program while a stream runs is read as it is on disk (as OpenSSH would).
    async fn read_version(
        &self,
        key: &str,
        offset: u64,
        end: Option<u64>,
        etag: Option<&str>,
    ) -> Result<ByteStream> {
        let p = self.path(key).map_err(ctx("read", key))?;
        let mut f = tokio::fs::File::open(&p)
            .await
            .map_err(|e| Error::from(e).with_key("read", format!("/{key}")))?;
        let md = f.metadata().await?;
        if md.is_dir() {
            return Err(Error::of(ErrorKind::IsADirectory).with_key("read", format!("/{key}")));
        }
        if etag.is_some_and(|t| t != etag_of(&md)) {
            return Err(
                Error::new(ErrorKind::Conflict, "the file changed since it was opened")
                    .with_key("read", format!("/{key}")),
            );
        }
        f.seek(std::io::SeekFrom::Start(offset)).await?;
        let limit = end.map(|e| e.saturating_sub(offset)).unwrap_or(u64::MAX);
        let reader = f.take(limit);
        let s = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024)
            .map(|r| r.map_err(Error::from));
        Ok(Box::pin(s))
    }

    async fn create(&self, key: &str, opts: CreateOptions) -> Result<Box<dyn Upload>> {
        let target = self.path(key).map_err(ctx("create", key))?;
        let staging = self.staging.clone();
        let tmp = tokio::task::spawn_blocking(move || tempfile::NamedTempFile::new_in(staging))
            .await
            .map_err(|e| Error::new(ErrorKind::Backend, "staging failed").with_source(e))??;
        let (file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(file);
        if let Some(old) = &opts.append_to {
            // Appending keeps the old file readable until the new whole one replaces it.
            let mut src = tokio::fs::File::open(&target)
                .await
                .map_err(|e| Error::from(e).with_key("append", format!("/{key}")))?;
            let md = src.metadata().await?;
            if Some(etag_of(&md)) != old.etag {
                return Err(Error::of(ErrorKind::Conflict).with_key("append", format!("/{key}")));
            }
            // An in-place write keeps only the head of the old file; what follows comes anew.
            let keep = opts.keep_head.unwrap_or(u64::MAX);
            tokio::io::copy(&mut (&mut src).take(keep), &mut file).await?;
        }
        Ok(Box::new(LocalUpload {
            key: key.to_string(),
            target,
            file: Some(file),
            tmp: Some(tmp_path),
            written: 0,
            opts,
        }))
    }

    async fn mkdir(&self, key: &str) -> Result<()> {
        let p = self.path(key).map_err(ctx("mkdir", key))?;
        if let Some(parent) = p.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        match tokio::fs::create_dir(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if tokio::fs::metadata(&p).await?.is_dir() {
                    Ok(())
                } else {
                    Err(Error::of(ErrorKind::AlreadyExists).with_key("mkdir", format!("/{key}")))
                }
            }
            Err(e) => Err(Error::from(e).with_key("mkdir", format!("/{key}"))),
        }
    }

    async fn remove_file(&self, key: &str) -> Result<()> {
        let p = self.path(key).map_err(ctx("remove", key))?;
        let md = tokio::fs::metadata(&p)
            .await
            .map_err(|e| Error::from(e).with_key("remove", format!("/{key}")))?;
        if md.is_dir() {
            return Err(Error::of(ErrorKind::IsADirectory).with_key("remove", format!("/{key}")));
        }
        tokio::fs::remove_file(&p)
            .await
            .map_err(|e| Error::from(e).with_key("remove", format!("/{key}")))
    }

    async fn remove_dir(&self, key: &str) -> Result<()> {
        let p = self.path(key).map_err(ctx("rmdir", key))?;
        if key.is_empty() {
            return Err(Error::of(ErrorKind::PermissionDenied).with_key("rmdir", "/"));
        }
        let md = tokio::fs::metadata(&p)
            .await
            .map_err(|e| Error::from(e).with_key("rmdir", format!("/{key}")))?;
        if !md.is_dir() {
            return Err(Error::of(ErrorKind::NotADirectory).with_key("rmdir", format!("/{key}")));
        }
        tokio::fs::remove_dir(&p)
            .await
            .map_err(|e| Error::from(e).with_key("rmdir", format!("/{key}")))
    }

    async fn copy_file(&self, from: &str, to: &str) -> Result<()> {
        let src = self.path(from).map_err(ctx("copy", from))?;
        let dst = self.path(to).map_err(ctx("copy", to))?;
        let staging = self.staging.clone();
        tokio::task::spawn_blocking(move || -> Result<()> {
            let tmp = tempfile::NamedTempFile::new_in(staging)?;
            std::fs::copy(&src, tmp.path())?;
            tmp.as_file().sync_all()?;
            tmp.persist(&dst).map_err(|e| Error::from(e.error))?;
            Ok(())
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Backend, "copy failed").with_source(e))?
        .map_err(|e| e.with_key("copy", format!("/{from}")))
    }

    async fn rename_file(&self, from: &str, to: &str) -> Result<()> {
        let src = self.path(from).map_err(ctx("rename", from))?;
        let dst = self.path(to).map_err(ctx("rename", to))?;
        if tokio::fs::metadata(&dst)
            .await
            .map(|m| m.is_dir())
            .unwrap_or(false)
        {
            return Err(Error::of(ErrorKind::IsADirectory).with_key("rename", format!("/{to}")));
        }
        tokio::fs::rename(&src, &dst)
            .await
            .map_err(|e| Error::from(e).with_key("rename", format!("/{from}")))
    }

    async fn rename_dir(&self, from: &str, to: &str) -> Result<()> {
        let src = self.path(from).map_err(ctx("rename", from))?;
        let dst = self.path(to).map_err(ctx("rename", to))?;
        if tokio::fs::metadata(&dst).await.is_ok() {
            return Err(Error::of(ErrorKind::AlreadyExists).with_key("rename", format!("/{to}")));
        }
        tokio::fs::rename(&src, &dst)
            .await
            .map_err(|e| Error::from(e).with_key("rename", format!("/{from}")))
    }

    async fn set_mtime(&self, key: &str, mtime: SystemTime) -> Result<()> {
        let p = self.path(key).map_err(ctx("setstat", key))?;
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let f = std::fs::File::options().write(true).open(&p)?;
            f.set_modified(mtime)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Backend, "setstat failed").with_source(e))?
        .map_err(|e| Error::from(e).with_key("setstat", format!("/{key}")))
    }
}

struct LocalUpload {
    key: String,
    target: PathBuf,
    file: Option<tokio::fs::File>,
    tmp: Option<tempfile::TempPath>,
    written: u64,
    opts: CreateOptions,
}

impl LocalUpload {
    async fn commit(&mut self) -> Result<Entry> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| Error::of(ErrorKind::InvalidInput))?;
        file.flush().await?;
        file.sync_all().await?;
        let std_file = file.into_std().await;
        if let Some(t) = self.opts.mtime {
            std_file.set_modified(t)?;
        }
        drop(std_file);
        let expected = match (&self.opts.append_to, &self.opts.if_match) {
            (_, Some(t)) => Some(t.clone()),
            (Some(old), None) => old.etag.clone(),
            (None, None) => None,
        };
        if let Some(expected) = expected {
            // The file written over must not have changed while we wrote.
            match tokio::fs::metadata(&self.target).await {
                Ok(md) if etag_of(&md) == expected => {}
                Ok(_) => return Err(Error::of(ErrorKind::Conflict)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::new(
                        ErrorKind::Conflict,
                        "the file was removed while it was being written",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        let tmp = self
            .tmp
            .take()
            .ok_or_else(|| Error::of(ErrorKind::InvalidInput))?;
        let target = self.target.clone();
        // The tree checked the parent folder; only an area's own root (a mount prefix) may be
        // missing on disk, as a prefix may be on object storage.
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let if_absent = self.opts.if_absent;
        tokio::task::spawn_blocking(move || {
            if if_absent {
                // A no-replace rename: the name must still be free at this very moment.
                tmp.persist_noclobber(&target).map_err(|e| {
                    if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                        Error::new(
                            ErrorKind::AlreadyExists,
                            "a file of this name was created meanwhile; the upload was not committed",
                        )
                    } else {
                        Error::from(e.error)
                    }
                })
            } else {
                tmp.persist(&target).map_err(|e| Error::from(e.error))
            }
        })
        .await
            .map_err(|e| Error::new(ErrorKind::Backend, "commit failed").with_source(e))??;
        let md = tokio::fs::metadata(&self.target).await?;
        let name = self.key.rsplit('/').next().unwrap_or("").to_string();
        Ok(entry_of(name, &md))
    }
}

#[async_trait]
impl Upload for LocalUpload {
    async fn write(&mut self, data: Bytes) -> Result<()> {
        let f = self
            .file
            .as_mut()
            .ok_or_else(|| Error::of(ErrorKind::InvalidInput))?;
        f.write_all(&data)
            .await
            .map_err(|e| Error::from(e).with_key("write", format!("/{}", self.key)))?;
        self.written += data.len() as u64;
        Ok(())
    }

    fn written(&self) -> u64 {
        self.written
    }

    async fn finish(mut self: Box<Self>) -> Result<Entry> {
        let key = self.key.clone();
        self.commit()
            .await
            .map_err(|e| e.with_key("close", format!("/{key}")))
    }

    async fn abort(mut self: Box<Self>) {
        if self.opts.keep_partial {
            if let Err(e) = self.commit().await {
                tracing::warn!(key = %self.key, error = ?e, "could not keep the partial upload");
            }
        }
        // Otherwise dropping the TempPath removes the staged file.
    }
}
