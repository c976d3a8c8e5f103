//! The open handles of one SFTP session.

use bucketgate_storage::{Entry, FileReader, FileWriter, VPath};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts transfers in progress on a connection, so a graceful shutdown can close idle
/// connections at once and wait for busy ones.
#[derive(Default)]
pub(crate) struct Busy(AtomicUsize);

impl Busy {
    /// Marks one transfer as started until the guard is dropped.
    pub(crate) fn enter(self: &Arc<Self>) -> BusyGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        BusyGuard(self.clone())
    }

    /// True when no transfer is in progress.
    pub(crate) fn idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

/// One transfer in progress.
pub(crate) struct BusyGuard(Arc<Busy>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A folder being listed: the listing is consumed page by page as READDIR asks, so a folder
/// of a million objects never sits in memory whole.
pub(crate) struct DirListing {
    pub(crate) stream: bucketgate_storage::backend::ListStream,
    pub(crate) pending: VecDeque<Entry>,
    pub(crate) done: bool,
}

/// What a handle refers to.
// A session holds a few handles at most (`max_handles`): boxing the writer would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Handle {
    /// A file open for reading.
    Read {
        path: VPath,
        reader: FileReader,
        _busy: BusyGuard,
    },
    /// A file open for writing (an upload in progress, committed at CLOSE).
    Write {
        path: VPath,
        writer: FileWriter,
        /// Opened with READ too: reads are answered from the file as it was at open.
        readable: bool,
        _busy: BusyGuard,
    },
    /// A folder open for listing.
    Dir { path: VPath, listing: DirListing },
}

/// The handle table. Handle strings are short counters: clients treat them as opaque.
#[derive(Default)]
pub(crate) struct Handles {
    next: u64,
    map: HashMap<String, Handle>,
}

impl Handles {
    /// Number of open handles.
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether a file (not a folder) is open.
    pub(crate) fn has_files(&self) -> bool {
        self.map.values().any(|h| !matches!(h, Handle::Dir { .. }))
    }

    /// Stores `h` and returns its handle string.
    pub(crate) fn insert(&mut self, h: Handle) -> String {
        self.next += 1;
        let id = format!("{:x}", self.next);
        self.map.insert(id.clone(), h);
        id
    }

    /// The handle named `id`.
    pub(crate) fn get_mut(&mut self, id: &str) -> Option<&mut Handle> {
        self.map.get_mut(id)
    }

    /// Removes and returns the handle named `id`.
    pub(crate) fn remove(&mut self, id: &str) -> Option<Handle> {
        self.map.remove(id)
    }

    /// The newest upload in progress on `path` in this session, if any: the session that
    /// writes a file sees it (with the size written so far) before it is committed.
    pub(crate) fn writer_of(&self, path: &VPath) -> Option<&FileWriter> {
        let id = self.newest_writer(path)?;
        match self.map.get(&id) {
            Some(Handle::Write { writer, .. }) => Some(writer),
            _ => None,
        }
    }

    /// The same upload as `writer_of`, to change (a SETSTAT of its path).
    pub(crate) fn writer_of_mut(&mut self, path: &VPath) -> Option<&mut FileWriter> {
        let id = self.newest_writer(path)?;
        match self.map.get_mut(&id) {
            Some(Handle::Write { writer, .. }) => Some(writer),
            _ => None,
        }
    }

    fn newest_writer(&self, path: &VPath) -> Option<String> {
        let mut best: Option<(u64, &String)> = None;
        for (id, h) in &self.map {
            if let Handle::Write { path: p, .. } = h {
                let n = u64::from_str_radix(id, 16).unwrap_or(0);
                if p == path && best.is_none_or(|(b, _)| n > b) {
                    best = Some((n, id));
                }
            }
        }
        best.map(|(_, id)| id.clone())
    }

    /// Every open handle, for the session's end.
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = Handle> + '_ {
        self.map.drain().map(|(_, h)| h)
    }
}
