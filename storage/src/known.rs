//! What one session learnt a moment ago about its folders and names, so that the upload that
//! follows does not ask the bucket again.
//!
//! An upload client checks before it writes: OpenSSH `sftp put f dst` STATs `dst` (to see
//! whether it is a folder), then OPENs it; the OPEN checks the name and its folder once more.
//! On S3 each check is a round trip (a HEAD and a listing), which across a WAN is most of the
//! time a small file takes. What a check found stays true for a moment: the OPEN that follows
//! reuses it.
//!
//! A client that uploads many files STATs each new name first: the lookup that follows two
//! misses in a folder lists the folder beside it (one request, where one page holds the folder), and the names
//! that are not in that listing are missing for the next lookups, with no request, while
//! nothing but the session's own uploads changed the folder ([`Known::listed_absent`]).
//!
//! A client that STATs a folder mostly lists it next (`ls -l dir`; `cd dir`, then `ls`): on S3
//! the STAT's listing request asks for a whole page, and the listing that follows within a
//! second, while nothing changed the folder, begins with it ([`Known::park`]).
//!
//! The facts are kept for a short time only ([`NAME_FOR`], [`FOLDER_FOR`]), and only where a
//! stale fact changes nothing a check at OPEN would prevent: the gap between OPEN and CLOSE (the
//! PutObject) is as long as the upload already, and the commit keeps its own guards (a create
//! by a user without `overwrite` commits only if the name is still free).

use crate::backend::{ChildNames, ListStream};
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
/// How long a folder found larger than one listing page is listed from the name looked up
/// (not from its start), and a backend without listings for lookups is not asked again.
pub(crate) const TOO_BIG_FOR: Duration = Duration::from_secs(30);
/// How long a listing for lookups may take before another may begin.
const LISTING_FOR: Duration = Duration::from_secs(10);

/// The names in one folder, as one listing request found them, kept so that a lookup of a name
/// that is not among them needs no request: the client's STAT of the next file it uploads.
struct Listing {
    at: Instant,
    /// The range of names it tells about (its `names` left empty: they are in `names` below).
    range: ChildNames,
    /// The names' hashes ([`name_hash`]): a thousand names take 8 KiB, not 50. Two names with
    /// one hash only make a lookup ask the bucket.
    names: std::collections::HashSet<u64>,
    /// The tree's stamp of the folder read before the listing (`Writing::folder_stamp`): the
    /// listing holds while the stamp has moved by no more than this session's own uploads
    /// into the folder, which are added to `names`.
    stamp: (u64, u64),
    own: u64,
}

/// A folder's listing whose first page came with the session's stat of the folder, kept for
/// the listing that mostly follows (see [`Known::park`]).
struct Parked {
    path: String,
    at: Instant,
    /// The folder's stamp read before the stat (`Writing::folder_stamp`): the page is used
    /// only while nothing changed the folder since, this session's uploads included.
    stamp: (u64, u64),
    pages: ListStream,
}

#[derive(Default)]
struct Facts {
    /// The one listing kept from a stat of a folder.
    parked: Option<Parked>,
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
    /// Site paths of folders larger than one listing page, with when that was seen.
    big: HashMap<String, Instant>,
    /// Site paths of folders whose backend makes no listings for lookups, with when.
    unlistable: HashMap<String, Instant>,
    /// Site paths of folders being listed for lookups now, with since when.
    listing: HashMap<String, Instant>,
    /// Site paths of folders in which a lookup found a name missing, with when.
    missed_in: HashMap<String, Instant>,
    /// Site paths of folders in which a lookup found a name missing within [`NAME_FOR`] of
    /// another miss there, with when: a listing is made for the lookups that follow such a
    /// run (an upload client's third file and on), not for a `cd`, a STAT before an `ls`, or a
    /// session that uploads one or two files.
    in_run: HashMap<String, Instant>,
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

    /// A lookup found a name missing in folder `folder`; `slow`: it took long enough for a
    /// listing to be worth making (a round trip across a WAN), or a listing answered it.
    pub(crate) fn missed(&self, folder: &str, slow: bool) {
        self.with(|f| {
            let again = slow
                && f.missed_in
                    .get(folder)
                    .is_some_and(|t| t.elapsed() < NAME_FOR);
            prune(&mut f.missed_in, NAME_FOR);
            f.missed_in.insert(folder.to_string(), Instant::now());
            if again {
                prune(&mut f.in_run, NAME_FOR);
                f.in_run.insert(folder.to_string(), Instant::now());
            }
        })
    }

    /// Whether folder `folder` should be listed along with a lookup of `name` in it, and from
    /// where: lookups found names missing there one after another a moment ago (see
    /// `in_run`), and no usable listing tells
    /// about `name`. From the start, or after `name` in a folder larger than a page (an
    /// upload client's next names mostly sort after its last). The listing is then taken as
    /// begun: the next lookups do not start another until it ends ([`Known::listed`],
    /// [`Known::listing_failed`]) or [`LISTING_FOR`] has passed.
    pub(crate) fn wants_listing(
        &self,
        folder: &str,
        name: &str,
        stamp: (u64, u64),
    ) -> Option<String> {
        self.with(|f| {
            // Old listings answer nothing more: their memory goes.
            f.listings.retain(|_, l| l.at.elapsed() < NAME_FOR);
            let recent = |m: &HashMap<String, Instant>, ttl: Duration| {
                m.get(folder).is_some_and(|t| t.elapsed() < ttl)
            };
            let tells = f
                .listings
                .get(folder)
                .is_some_and(|l| l.usable(stamp) && l.range.covers(name));
            if tells
                || !recent(&f.in_run, NAME_FOR)
                || recent(&f.listing, LISTING_FOR)
                || recent(&f.unlistable, TOO_BIG_FOR)
            {
                return None;
            }
            prune(&mut f.listing, LISTING_FOR);
            f.listing.insert(folder.to_string(), Instant::now());
            Some(if recent(&f.big, TOO_BIG_FOR) {
                name.to_string()
            } else {
                String::new()
            })
        })
    }

    /// The listing of `folder` begun for lookups failed.
    pub(crate) fn listing_failed(&self, folder: &str) {
        self.with(|f| f.listing.remove(folder));
    }

    /// What a listing of `folder` made for lookups found (`None`: its backend makes none),
    /// when the folder's stamp was `stamp`.
    pub(crate) fn listed(&self, folder: &str, names: Option<ChildNames>, stamp: (u64, u64)) {
        self.with(|f| {
            f.listing.remove(folder);
            let Some(mut c) = names else {
                prune(&mut f.unlistable, TOO_BIG_FOR);
                f.unlistable.insert(folder.to_string(), Instant::now());
                return;
            };
            if c.end.is_some() {
                prune(&mut f.big, TOO_BIG_FOR);
                f.big.insert(folder.to_string(), Instant::now());
            }
            f.listings.retain(|_, l| l.at.elapsed() < NAME_FOR);
            f.listings.remove(folder);
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
            let names = std::mem::take(&mut c.names);
            f.listings.insert(
                folder.to_string(),
                Listing {
                    at: Instant::now(),
                    range: c,
                    names: names.iter().map(|n| name_hash(n)).collect(),
                    stamp,
                    own: 0,
                },
            );
        })
    }

    /// When a usable listing of `folder` (whose stamp is `stamp` now) that tells about `name`
    /// found no such name; None when no such listing tells.
    pub(crate) fn listed_absent(
        &self,
        folder: &str,
        name: &str,
        stamp: (u64, u64),
    ) -> Option<Instant> {
        self.with(|f| {
            f.listings
                .get(folder)
                .filter(|l| {
                    l.usable(stamp) && l.range.covers(name) && !l.names.contains(&name_hash(name))
                })
                .map(|l| l.at)
        })
    }

    /// The stat of folder `path`, made when the folder's stamp was `stamp`, brought the first
    /// page of its listing: `pages`. It answers a listing of the folder that begins within
    /// [`NAME_FOR`] while the stamp stays the same ([`Known::take_parked`]); one is kept at a
    /// time, and [`Known::drop_stale_parked`] gives its memory back when none began.
    pub(crate) fn park(&self, path: &str, pages: ListStream, stamp: (u64, u64)) {
        let old = self.with(|f| {
            f.parked.replace(Parked {
                path: path.to_string(),
                at: Instant::now(),
                stamp,
                pages,
            })
        });
        drop(old);
    }

    /// The listing of folder `path` kept from its stat a moment ago, when the folder's stamp
    /// is still `stamp`; whatever was kept is let go either way.
    pub(crate) fn take_parked(&self, path: &str, stamp: (u64, u64)) -> Option<ListStream> {
        let p = self.with(|f| f.parked.take())?;
        (p.path == path && p.at.elapsed() < NAME_FOR && p.stamp == stamp).then_some(p.pages)
    }

    /// Lets go of a kept listing that is too old to be used.
    pub(crate) fn drop_stale_parked(&self) {
        let old = self.with(|f| {
            if f.parked
                .as_ref()
                .is_some_and(|p| p.at.elapsed() >= NAME_FOR)
            {
                f.parked.take()
            } else {
                None
            }
        });
        drop(old);
    }

    /// `path` is gone, or changed kind (removed, renamed): forget what was known of it and of
    /// everything below it.
    pub(crate) fn forget(&self, path: &str) {
        let below = format!("{}/", path.trim_end_matches('/'));
        let parked = self.with(|f| {
            if f.parked
                .as_ref()
                .is_some_and(|p| p.path == path || p.path.starts_with(&below))
            {
                f.parked.take()
            } else {
                None
            }
        });
        drop(parked);
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

    fn names(v: &[&str], after: &str, end: Option<&str>) -> Option<ChildNames> {
        Some(ChildNames {
            names: v.iter().map(|s| s.to_string()).collect(),
            after: after.into(),
            end: end.map(str::to_string),
        })
    }

    #[test]
    fn a_listing_answers_while_only_own_uploads_changed_its_folder() {
        let k = Known::default();
        let s0 = (0, 0);
        assert_eq!(
            k.wants_listing("/d", "x", s0),
            None,
            "nothing missed there yet"
        );
        k.missed("/d", true);
        assert_eq!(k.wants_listing("/d", "x", s0), None, "one miss");
        k.missed("/d", false);
        assert_eq!(
            k.wants_listing("/d", "x", s0),
            None,
            "a quick lookup: not worth it"
        );
        k.missed("/d", true);
        assert_eq!(k.wants_listing("/d", "x", s0).as_deref(), Some(""));
        assert_eq!(
            k.wants_listing("/d", "x", s0),
            None,
            "one listing at a time"
        );
        k.listed("/d", names(&["a"], "", None), s0);
        assert_eq!(
            k.wants_listing("/d", "x", s0),
            None,
            "a usable listing tells"
        );
        assert!(k.listed_absent("/d", "b", s0).is_some());
        assert!(k.listed_absent("/d", "a", s0).is_none(), "listed");
        assert!(k.listed_absent("/e", "b", s0).is_none(), "another folder");
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

        // A folder larger than a page: the listing tells about its range only, and the next
        // listing begins at the name looked up.
        k.missed("/big", true);
        k.missed("/big", true);
        assert_eq!(k.wants_listing("/big", "m", s0).as_deref(), Some(""));
        k.listed("/big", names(&["a", "b", "c"], "", Some("c/")), s0);
        assert!(
            k.listed_absent("/big", "bb", s0).is_some(),
            "within the page"
        );
        assert!(
            k.listed_absent("/big", "c", s0).is_none(),
            "listed, as a folder"
        );
        assert!(
            k.listed_absent("/big", "m", s0).is_none(),
            "beyond the page"
        );
        assert_eq!(k.wants_listing("/big", "bb", s0), None, "the page tells");
        assert_eq!(k.wants_listing("/big", "m", s0).as_deref(), Some("m"));
        k.listed("/big", names(&["n"], "m", Some("p")), s0);
        assert!(k.listed_absent("/big", "m", s0).is_none(), "where it began");
        assert!(k.listed_absent("/big", "m1", s0).is_some());
        assert!(k.listed_absent("/big", "o", s0).is_some());
        assert!(
            k.listed_absent("/big", "p", s0).is_none(),
            "p/ may come after the page"
        );

        k.missed("/local", true);
        k.missed("/local", true);
        assert!(k.wants_listing("/local", "x", s0).is_some());
        k.listed("/local", None, s0);
        assert_eq!(
            k.wants_listing("/local", "x", s0),
            None,
            "no listings there"
        );
        for i in 0..5 {
            k.listed(&format!("/f{i}"), names(&[], "", None), s0);
        }
        assert!(k.with(|f| f.listings.len()) <= LISTINGS_CAP);
        assert!(
            k.listed_absent("/f4", "x", s0).is_some(),
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
