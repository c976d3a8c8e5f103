//! The names being written right now, across every session of the process.
//!
//! An upload becomes an object only at CLOSE, so until then the bucket knows nothing of it. On a
//! local disk, though, a file being written exists from its open: `mkdir` of its name fails, the
//! folder holding it is not empty, an exclusive create of it fails. This registry gives the tree
//! that knowledge, so those operations answer as a disk would, and it lets a remove or a
//! replacing rename of the name tell the writers that their upload must not resurrect it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A name in one area of the tree: the area (`""` for the site tree, else the mount point, which
/// stays the same across reloads) and the key within it.
type Name = (String, String);

/// The uploads on one name: each with its id and its "name gone" flag.
type Uploads = Vec<(u64, Arc<AtomicBool>)>;

/// True when one of the uploads still holds its name: a removed or replaced name is free again,
/// as on a disk, though its writers go on until their CLOSE fails.
fn live(v: &Uploads) -> bool {
    v.iter().any(|(_, gone)| !gone.load(Ordering::SeqCst))
}

/// Every name with an upload in progress, and the uploads on it.
pub struct Writing {
    next: AtomicU64,
    map: Mutex<HashMap<Name, Uploads>>,
    /// Counts the changes of names that ended through this tree (uploads committed or given
    /// up, folders made or removed, removes, renames), so that a session's fact "this name
    /// was missing a moment ago" is used only if nothing changed since (see `Known`).
    changes: AtomicU64,
    /// Counts the changes that can take a folder away (removes, folder removes, renames: a
    /// folder without a marker goes with its last file), so that a session's fact "this folder
    /// was there a moment ago" is used only if none ended since (see `Known`).
    removals: AtomicU64,
    /// Counts the changes other than uploads (folders made or removed, removes, renames), so
    /// that a session's listing of a folder is used only if none ended since (see `Known`).
    structural: AtomicU64,
    /// Counts the uploads that ended, by folder (the folder's key hashed into one of
    /// [`EPOCHS`] counters: two folders may share one, which only costs a lookup), so that
    /// uploads into other folders leave a session's listing of its folder usable.
    uploads_in: Box<[AtomicU64]>,
}

/// Counters of [`Writing::uploads_in`].
const EPOCHS: usize = 1024;

impl Default for Writing {
    fn default() -> Self {
        Writing {
            next: AtomicU64::new(0),
            map: Mutex::default(),
            changes: AtomicU64::new(0),
            removals: AtomicU64::new(0),
            structural: AtomicU64::new(0),
            uploads_in: (0..EPOCHS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

/// The counter of [`Writing::uploads_in`] for folder `key` (no trailing `/`; `""` is the top).
fn epoch_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.trim_end_matches('/').hash(&mut h);
    (h.finish() % EPOCHS as u64) as usize
}

/// Counts one change of the tree when dropped (at the end of the operation, however it ends),
/// and one removal too when it is one.
pub(crate) struct ChangeGuard(Arc<Writing>, bool);

impl Drop for ChangeGuard {
    fn drop(&mut self) {
        if self.1 {
            self.0.removals.fetch_add(1, Ordering::SeqCst);
        }
        self.0.structural.fetch_add(1, Ordering::SeqCst);
        self.0.changes.fetch_add(1, Ordering::SeqCst);
    }
}

impl Writing {
    /// The count of changes so far; read before a lookup whose answer is to be remembered.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Counts a change when the returned guard is dropped.
    pub(crate) fn change(self: &Arc<Self>) -> ChangeGuard {
        ChangeGuard(self.clone(), false)
    }

    /// The count of removals so far; read before a lookup that finds a folder.
    pub(crate) fn removals(&self) -> u64 {
        self.removals.load(Ordering::SeqCst)
    }

    /// Where folder `key` stands: the changes other than uploads so far, and the uploads ended
    /// in that folder (or one sharing its counter). Read before listing the folder.
    pub(crate) fn folder_stamp(&self, key: &str) -> (u64, u64) {
        (
            self.structural.load(Ordering::SeqCst),
            self.uploads_in[epoch_of(key)].load(Ordering::SeqCst),
        )
    }

    /// Counts a change that may take a folder away when the returned guard is dropped.
    pub(crate) fn removal(self: &Arc<Self>) -> ChangeGuard {
        ChangeGuard(self.clone(), true)
    }

    /// Registers an upload of `key` in `area` until the returned claim is dropped.
    pub(crate) fn claim(self: &Arc<Self>, area: &str, key: &str) -> WriteClaim {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let gone = Arc::new(AtomicBool::new(false));
        let name = (area.to_string(), key.to_string());
        self.lock()
            .entry(name.clone())
            .or_default()
            .push((id, gone.clone()));
        WriteClaim {
            reg: self.clone(),
            name,
            id,
            gone,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Name, Uploads>> {
        // A panic elsewhere cannot leave the map half-changed: every change is one call.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many names have an upload in progress.
    pub(crate) fn names(&self) -> usize {
        self.lock().len()
    }

    /// True when an upload of exactly `key` is in progress.
    pub(crate) fn is_writing(&self, area: &str, key: &str) -> bool {
        self.lock()
            .get(&(area.to_string(), key.to_string()))
            .is_some_and(live)
    }

    /// True when an upload of a key below folder `key` is in progress.
    pub(crate) fn any_below(&self, area: &str, key: &str) -> bool {
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        self.lock()
            .iter()
            .any(|((a, k), v)| a == area && k.starts_with(&prefix) && live(v))
    }

    /// The name was removed or replaced: every upload in progress on it must not commit.
    pub(crate) fn discard(&self, area: &str, key: &str) {
        if let Some(v) = self.lock().get(&(area.to_string(), key.to_string())) {
            for (_, gone) in v {
                gone.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// One upload's hold on its name; released on drop.
pub struct WriteClaim {
    reg: Arc<Writing>,
    name: Name,
    id: u64,
    gone: Arc<AtomicBool>,
}

impl WriteClaim {
    /// True once the name was removed or replaced by someone else during the upload.
    pub(crate) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::SeqCst)
    }
}

impl Drop for WriteClaim {
    fn drop(&mut self) {
        let folder = self.name.1.rsplit_once('/').map_or("", |(f, _)| f);
        self.reg.uploads_in[epoch_of(folder)].fetch_add(1, Ordering::SeqCst);
        self.reg.changes.fetch_add(1, Ordering::SeqCst);
        let mut map = self.reg.lock();
        if let Some(v) = map.get_mut(&self.name) {
            v.retain(|(id, _)| *id != self.id);
            if v.is_empty() {
                map.remove(&self.name);
            }
        }
    }
}
