//! What one session learnt a moment ago about its folders and names, so that the upload that
//! follows does not ask the bucket again.
//!
//! An upload client checks before it writes: OpenSSH `sftp put f dst` STATs `dst` (to see
//! whether it is a folder), then OPENs it; the OPEN checks the name and its folder once more.
//! On S3 each check is a round trip (a HEAD and a listing), which across a WAN is most of the
//! time a small file takes. What a check found stays true for a moment: the OPEN that follows
//! reuses it.
//!
//! The facts are kept for a short time only ([`NAME_FOR`], [`FOLDER_FOR`]), and only where a
//! stale fact changes nothing a check at OPEN would prevent: the gap between OPEN and CLOSE (the
//! PutObject) is as long as the upload already, and the commit keeps its own guards (a create
//! by a user without `overwrite` commits only if the name is still free).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a name found missing stays known as missing (the client's STAT, then its OPEN),
/// and a file this session committed as there (its STOR, then its MFMT).
pub(crate) const NAME_FOR: Duration = Duration::from_secs(1);
/// How long a folder seen to exist stays known: renewed by every sign of it (a listing, a
/// stat, a file committed into it), and only while no remove, folder remove or rename ended
/// in any session since (another session may have taken it away).
pub(crate) const FOLDER_FOR: Duration = Duration::from_secs(5);
/// Entries kept at most; the oldest go first.
const CAP: usize = 256;

#[derive(Default)]
struct Facts {
    /// Site paths found missing (no file, no folder), with when.
    absent: HashMap<String, Instant>,
    /// For each of `absent`, the tree's count of changes read before the lookup (see
    /// `Writing::changes`): the fact holds only while that count has not moved.
    absent_at: HashMap<String, u64>,
    /// Site paths of folders seen to exist, with when.
    folders: HashMap<String, Instant>,
    /// For each of `folders`, the tree's count of removals read before the lookup (see
    /// `Writing::removals`): the fact holds only while that count has not moved.
    folders_at: HashMap<String, u64>,
    /// Site paths of files this session just committed, with when.
    written: HashMap<String, Instant>,
}

/// One session's recent facts, by site-tree path.
#[derive(Default)]
pub(crate) struct Known {
    facts: Mutex<Facts>,
}

fn prune(map: &mut HashMap<String, Instant>, ttl: Duration) {
    if map.len() < CAP {
        return;
    }
    map.retain(|_, t| t.elapsed() < ttl);
    while map.len() >= CAP {
        let Some(oldest) = map.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone()) else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Facts {
    fn add_folder(&mut self, path: &str, removals: u64) {
        prune(&mut self.folders, FOLDER_FOR);
        let Facts {
            folders,
            folders_at,
            ..
        } = self;
        folders_at.retain(|k, _| folders.contains_key(k));
        folders.insert(path.to_string(), Instant::now());
        folders_at.insert(path.to_string(), removals);
    }
}

impl Known {
    fn with<T>(&self, f: impl FnOnce(&mut Facts) -> T) -> T {
        let mut g = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// `path` was just found missing, by a lookup made when the tree had seen `changes`
    /// changes.
    pub(crate) fn absent(&self, path: &str, changes: u64) {
        self.with(|f| {
            prune(&mut f.absent, NAME_FOR);
            let Facts {
                absent, absent_at, ..
            } = f;
            absent_at.retain(|k, _| absent.contains_key(k));
            absent.insert(path.to_string(), Instant::now());
            absent_at.insert(path.to_string(), changes);
        })
    }

    /// Whether `path` was found missing a moment ago and nothing changed in the tree since
    /// (any session's upload, mkdir, remove or rename: another session may have taken the
    /// name, as a folder or a file); the fact is used up (the name is about to be taken).
    pub(crate) fn take_absent(&self, path: &str, changes: u64) -> bool {
        self.with(|f| {
            let at = f.absent_at.remove(path);
            f.absent
                .remove(path)
                .is_some_and(|t| t.elapsed() < NAME_FOR && at == Some(changes))
        })
    }

    /// This session just committed the file `path` (and so its folder exists), in an upload
    /// opened when the tree had seen `removals` removals.
    pub(crate) fn written(&self, path: &str, folder: &str, removals: u64) {
        self.with(|f| {
            f.absent.remove(path);
            prune(&mut f.written, NAME_FOR);
            f.written.insert(path.to_string(), Instant::now());
            f.add_folder(folder, removals);
        })
    }

    /// Whether this session committed the file `path` a moment ago (an FTP client's MFMT right
    /// after its STOR).
    pub(crate) fn just_written(&self, path: &str) -> bool {
        self.with(|f| f.written.get(path).is_some_and(|t| t.elapsed() < NAME_FOR))
    }

    /// `path` was just seen to be a folder, by a lookup made when the tree had seen
    /// `removals` removals.
    pub(crate) fn folder(&self, path: &str, removals: u64) {
        self.with(|f| {
            f.absent.remove(path);
            f.add_folder(path, removals);
        })
    }

    /// Whether `path` was seen to be a folder a moment ago, and nothing that could take it
    /// away ended since (the tree has seen `removals` removals now).
    pub(crate) fn is_folder(&self, path: &str, removals: u64) -> bool {
        self.with(|f| {
            f.folders
                .get(path)
                .is_some_and(|t| t.elapsed() < FOLDER_FOR)
                && f.folders_at.get(path) == Some(&removals)
        })
    }

    /// `path` is gone, or changed kind (removed, renamed): forget what was known of it and of
    /// everything below it.
    pub(crate) fn forget(&self, path: &str) {
        let below = format!("{}/", path.trim_end_matches('/'));
        self.with(|f| {
            f.folders.retain(|k, _| k != path && !k.starts_with(&below));
            f.folders_at
                .retain(|k, _| k != path && !k.starts_with(&below));
            f.absent.retain(|k, _| k != path && !k.starts_with(&below));
            f.written.retain(|k, _| k != path && !k.starts_with(&below));
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_expire_and_are_used_once() {
        let k = Known::default();
        k.absent("/a/x", 3);
        assert!(k.take_absent("/a/x", 3));
        assert!(!k.take_absent("/a/x", 3), "used up");
        k.absent("/a/y", 3);
        assert!(!k.take_absent("/a/y", 4), "the tree changed since");
        k.folder("/a", 0);
        assert!(k.is_folder("/a", 0));
        assert!(!k.is_folder("/a", 1), "something was removed since");
        k.forget("/a");
        assert!(!k.is_folder("/a", 0));
        k.folder("/a/b", 0);
        k.forget("/a");
        assert!(!k.is_folder("/a/b", 0), "below a forgotten folder");
        k.absent("/c/f", 0);
        k.written("/c/f", "/c", 0);
        assert!(k.just_written("/c/f") && k.is_folder("/c", 0));
        assert!(
            !k.take_absent("/c/f", 0),
            "a committed file is no longer missing"
        );
        k.forget("/c/f");
        assert!(!k.just_written("/c/f"));
        for i in 0..CAP + 10 {
            k.folder(&format!("/f{i}"), 0);
        }
        assert!(k.with(|f| f.folders.len()) <= CAP);
        assert!(k.with(|f| f.folders_at.len()) <= CAP);
        assert!(
            k.is_folder(&format!("/f{}", CAP + 9), 0),
            "the newest stays"
        );
    }
}
