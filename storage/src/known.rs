//! What one session learnt a moment ago about its folders and names, so that the upload that
//! follows does not ask the bucket again.
//!
//! An upload client checks before it writes: OpenSSH `sftp put f dst` STATs `dst` (to see
//! whether it is a folder), then OPENs it; the OPEN checks the name and its folder once more.
//! On S3 each check is a round trip (a HEAD and a listing), which across a WAN is most of the
//! time a small file takes. What a check found stays true for a moment: the OPEN that follows
//! reuses it.
//!
//! A client that uploads many files STATs each new name first: the lookup that follows a miss
//! in a folder lists the folder beside it (one request, where one page holds the folder), and the names
//! that are not in that listing are missing for the next lookups, with no request, while
//! nothing but the session's own uploads changed the folder ([`Known::listed_absent`]).
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
/// Folder listings kept at most (each up to a listing page of names, 8 bytes a name).
const LISTINGS_CAP: usize = 2;
/// How long a folder found too large for one listing page is not listed again for a lookup.
pub(crate) const TOO_BIG_FOR: Duration = Duration::from_secs(30);
/// How long a listing for lookups may take before another may begin.
const LISTING_FOR: Duration = Duration::from_secs(10);

/// The names in one folder, as one listing request found them, kept so that a lookup of a name
/// that is not among them needs no request: the client's STAT of the next file it uploads.
struct Listing {
    at: Instant,
    /// The names' hashes ([`name_hash`]): a thousand names take 8 KiB, not 50. Two names with
    /// one hash only make a lookup ask the bucket.
    names: std::collections::HashSet<u64>,
    /// The tree's stamp of the folder read before the listing (`Writing::folder_stamp`): the
    /// listing holds while the stamp has moved by no more than this session's own uploads
    /// into the folder, which are added to `names`.
    stamp: (u64, u64),
    own: u64,
}

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
    /// Site paths of folders, with the names listed in them.
    listings: HashMap<String, Listing>,
    /// Site paths of folders too large for one listing page, with when that was seen.
    too_big: HashMap<String, Instant>,
    /// Site paths of folders being listed for lookups now, with since when.
    listing: HashMap<String, Instant>,
    /// Site paths of folders in which a lookup found a name missing, with when: a listing is
    /// made for the lookups that follow such a miss (an upload client's next file), not for
    /// every first lookup (a `cd`, a STAT before an `ls`, a single upload).
    missed_in: HashMap<String, Instant>,
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

fn name_hash(name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl Listing {
    /// Recent, and nothing changed the folder since but this session's own uploads (whose
    /// names it holds): no folder made, removed or renamed anywhere in the tree, no other
    /// upload ended in the folder.
    fn usable(&self, (structural, uploads): (u64, u64)) -> bool {
        self.at.elapsed() < NAME_FOR
            && structural == self.stamp.0
            && uploads == self.stamp.1 + self.own
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
        self.absent_since(path, changes, Instant::now())
    }

    /// `path` was found missing by what was learnt at `at` (a listing a moment ago): the fact
    /// lasts [`NAME_FOR`] from then, not from now.
    pub(crate) fn absent_since(&self, path: &str, changes: u64, at: Instant) {
        self.with(|f| {
            prune(&mut f.absent, NAME_FOR);
            let Facts {
                absent, absent_at, ..
            } = f;
            absent_at.retain(|k, _| absent.contains_key(k));
            absent.insert(path.to_string(), at);
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
            if let Some(l) = f.listings.get_mut(folder) {
                let name = path.rsplit('/').next().unwrap_or(path);
                l.names.insert(name_hash(name));
                l.own += 1;
            }
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

    /// A lookup found a name missing in folder `folder`.
    pub(crate) fn missed(&self, folder: &str) {
        self.with(|f| {
            prune(&mut f.missed_in, NAME_FOR);
            f.missed_in.insert(folder.to_string(), Instant::now());
        })
    }

    /// Whether folder `folder` should be listed along with a lookup in it: a lookup found a
    /// name missing there a moment ago, no listing of it is usable now, and it was not found
    /// too large lately.
    /// The listing is then taken as begun: the next lookups do not start another until it
    /// ends ([`Known::listed`], [`Known::listing_failed`]) or [`LISTING_FOR`] has passed.
    pub(crate) fn wants_listing(&self, folder: &str, stamp: (u64, u64)) -> bool {
        self.with(|f| {
            // Old listings answer nothing more: their memory goes.
            f.listings.retain(|_, l| l.at.elapsed() < NAME_FOR);
            let usable = f.listings.get(folder).is_some_and(|l| l.usable(stamp));
            let big = f
                .too_big
                .get(folder)
                .is_some_and(|t| t.elapsed() < TOO_BIG_FOR);
            let busy = f
                .listing
                .get(folder)
                .is_some_and(|t| t.elapsed() < LISTING_FOR);
            let missed = f
                .missed_in
                .get(folder)
                .is_some_and(|t| t.elapsed() < NAME_FOR);
            let wanted = missed && !usable && !big && !busy;
            if wanted {
                prune(&mut f.listing, LISTING_FOR);
                f.listing.insert(folder.to_string(), Instant::now());
            }
            wanted
        })
    }

    /// The listing of `folder` begun for lookups failed.
    pub(crate) fn listing_failed(&self, folder: &str) {
        self.with(|f| f.listing.remove(folder));
    }

    /// Folder `folder` holds exactly `names` (None: more than one listing page), by a listing
    /// made when the folder's stamp was `stamp`.
    pub(crate) fn listed(&self, folder: &str, names: Option<Vec<String>>, stamp: (u64, u64)) {
        self.with(|f| f.listing.remove(folder));
        self.with(|f| match names {
            None => {
                f.listings.remove(folder);
                prune(&mut f.too_big, TOO_BIG_FOR);
                f.too_big.insert(folder.to_string(), Instant::now());
            }
            Some(names) => {
                f.listings.retain(|_, l| l.at.elapsed() < NAME_FOR);
                while f.listings.len() >= LISTINGS_CAP {
                    let Some(oldest) = f
                        .listings
                        .iter()
                        .min_by_key(|(_, l)| l.at)
                        .map(|(k, _)| k.clone())
                    else {
                        break;
                    };
                    f.listings.remove(&oldest);
                }
                f.too_big.remove(folder);
                f.listings.insert(
                    folder.to_string(),
                    Listing {
                        at: Instant::now(),
                        names: names.iter().map(|n| name_hash(n)).collect(),
                        stamp,
                        own: 0,
                    },
                );
            }
        })
    }

    /// When a usable listing of `folder` (whose stamp is `stamp` now) found no `name` in it;
    /// None when no such listing tells.
    pub(crate) fn listed_absent(
        &self,
        folder: &str,
        name: &str,
        stamp: (u64, u64),
    ) -> Option<Instant> {
        self.with(|f| {
            f.listings
                .get(folder)
                .filter(|l| l.usable(stamp) && !l.names.contains(&name_hash(name)))
                .map(|l| l.at)
        })
    }

    /// `path` is gone, or changed kind (removed, renamed): forget what was known of it and of
    /// everything below it.
    pub(crate) fn forget(&self, path: &str) {
        let below = format!("{}/", path.trim_end_matches('/'));
        self.with(|f| {
            f.listings
                .retain(|k, _| k != path && !k.starts_with(&below));
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
    fn a_listing_answers_while_only_own_uploads_changed_its_folder() {
        let k = Known::default();
        assert!(
            !k.wants_listing("/d", (0, 0)),
            "no name found missing there yet"
        );
        k.missed("/d");
        assert!(k.wants_listing("/d", (0, 0)));
        assert!(!k.wants_listing("/d", (0, 0)), "one listing at a time");
        k.listed("/d", Some(vec!["a".into()]), (0, 0));
        assert!(
            !k.wants_listing("/d", (0, 0)),
            "a usable listing is not made again"
        );
        assert!(k.listed_absent("/d", "b", (0, 0)).is_some());
        assert!(k.listed_absent("/d", "a", (0, 0)).is_none(), "listed");
        assert!(
            k.listed_absent("/e", "b", (0, 0)).is_none(),
            "another folder"
        );
        k.written("/d/b", "/d", 0);
        assert!(k.listed_absent("/d", "b", (0, 1)).is_none(), "written here");
        assert!(k.listed_absent("/d", "c", (0, 1)).is_some());
        assert!(
            k.listed_absent("/d", "c", (0, 2)).is_none(),
            "another upload"
        );
        assert!(
            k.listed_absent("/d", "c", (1, 1)).is_none(),
            "another change"
        );
        k.forget("/d");
        assert!(k.listed_absent("/d", "c", (0, 1)).is_none(), "forgotten");
        k.missed("/big");
        assert!(k.wants_listing("/big", (0, 0)));
        k.listed("/big", None, (0, 0));
        assert!(
            !k.wants_listing("/big", (0, 0)),
            "too big: not listed again soon"
        );
        for i in 0..5 {
            k.listed(&format!("/f{i}"), Some(vec![]), (0, 0));
        }
        assert!(k.with(|f| f.listings.len()) <= LISTINGS_CAP);
        assert!(
            k.listed_absent("/f4", "x", (0, 0)).is_some(),
            "the newest stays"
        );
    }

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
