//! The decision for one path, from the two sides' entries and the recorded pair. Pure: no I/O,
//! so every case is tested directly.

use super::model::{Half, Item, Record};
use super::Direction;

/// One of the two sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    Site,
    Remote,
}

impl Side {
    pub(crate) fn other(self) -> Side {
        match self {
            Side::Site => Side::Remote,
            Side::Remote => Side::Site,
        }
    }
}

/// Who wins when the two sides hold different content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Winner {
    /// One-way jobs: the source.
    Source(Side),
    /// Two-way jobs: the conflict policy.
    Policy,
}

/// Work for one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Copy `item` from side `from` to the other side, where `target` was listed (or nothing).
    Copy {
        from: Side,
        item: Item,
        target: Option<Item>,
        old: Option<Record>,
    },
    /// Delete `item` from side `side` (the other side deleted it since the last run).
    /// `keep_parent`: the other side still has the file's folder, so it stays here too (on
    /// object storage, where a folder without keys vanishes, a marker keeps it).
    Delete {
        side: Side,
        item: Item,
        old: Record,
        keep_parent: bool,
    },
    /// Create the empty folder `item` (listed on `from`) on the other side.
    Mkdir {
        from: Side,
        item: Item,
        old: Option<Record>,
    },
    /// Both sides hold the path and at least one changed (or nothing was recorded): compare
    /// the contents; equal is recorded as is, different goes to `winner`.
    Reconcile {
        site: Item,
        remote: Item,
        old: Option<Record>,
        winner: Winner,
    },
}

/// The outcome of comparing one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Nothing to do; the record to keep (none: forget the path).
    Keep(Option<Record>),
    /// Left alone on purpose (a suspicious empty listing); the old record stays.
    Skip(Option<Record>),
    /// Work to do.
    Act(Action),
    /// Remove the folder `item` from `side` once the files are done (deepest first).
    RemoveDir { side: Side, item: Item, old: Record },
}

/// What the whole job contributes to each decision.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rules {
    pub direction: Direction,
    pub delete: bool,
    /// The site listed nothing while the baseline has entries: treat its absences as unknown.
    pub site_suspect: bool,
    /// Same for the remote.
    pub remote_suspect: bool,
}

/// One side's entry for the path, with whether a folder is empty on that side.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    pub item: Option<Item>,
    /// For a folder: nothing is listed below it on this side.
    pub leaf: bool,
}

fn source_of(d: Direction) -> Option<Side> {
    match d {
        Direction::Push => Some(Side::Site),
        Direction::Pull => Some(Side::Remote),
        Direction::TwoWay => None,
    }
}

/// How far apart the time a write's answer gave and the time a listing shows may be for one
/// version, on a server that lists no ETags (see [`written_then_listed`]): the answer's `Date`
/// is whole seconds and may lag the clock by up to a second (servers cache it), and the
/// listing's Last-Modified is whole seconds too.
const WRITE_TIME_SLACK_NS: i64 = 2_000_000_000;

/// True when `item`, listed without an ETag, is the version this side's record `h` describes
/// from a write's answer (an ETag, and the answer's time): a server that answers writes with
/// an ETag but lists none (s3s-fs) shows the object the copy wrote with its Last-Modified,
/// up to a second or two after the answer's `Date`. Same size, and times within
/// [`WRITE_TIME_SLACK_NS`]. The record then takes the listing's view, so that later runs
/// compare a listing with a listing, to the second (before, one copied file in some thousands
/// was copied back by the next run when the two times fell in different seconds).
fn written_then_listed(h: &Half, item: &Item) -> bool {
    h.etag.is_some()
        && item.etag.is_none()
        && !item.is_dir()
        && h.size == item.size
        && matches!((h.mtime_ns, item.mtime_ns),
            (Some(a), Some(b)) if (a - b).abs() <= WRITE_TIME_SLACK_NS)
}

/// Decides what to do with one path.
pub(crate) fn decide(site: Seen, remote: Seen, old: Option<Record>, rules: &Rules) -> Decision {
    let mut old = old;
    // A side whose record came from a write's answer and whose listing shows no ETag: the
    // record takes the listing's view (see `written_then_listed`).
    if let Some(r) = old.as_mut() {
        if let Some(i) = site
            .item
            .as_ref()
            .filter(|i| written_then_listed(&r.site, i))
        {
            r.site = i.half();
        }
        if let Some(i) = remote
            .item
            .as_ref()
            .filter(|i| written_then_listed(&r.remote, i))
        {
            r.remote = i.half();
        }
    }
    let s_same = match (&old, &site.item) {
        (Some(r), Some(i)) => r.site.matches(i),
        _ => false,
    };
    let r_same = match (&old, &remote.item) {
        (Some(r), Some(i)) => r.remote.matches(i),
        _ => false,
    };
    let suspect = |side: Side| match side {
        Side::Site => rules.site_suspect,
        Side::Remote => rules.remote_suspect,
    };
    match (site.item, remote.item) {
        (None, None) => Decision::Keep(None),

        (Some(s), Some(m)) => {
            if s.is_dir() && m.is_dir() {
                return Decision::Keep(Some(Record::pair(&s, &m)));
            }
            if old.is_some() && s_same && r_same {
                return Decision::Keep(old);
            }
            let source = source_of(rules.direction);
            if old.is_some() && !s_same && r_same && source != Some(Side::Remote) {
                return Decision::Act(Action::Copy {
                    from: Side::Site,
                    item: s,
                    target: Some(m),
                    old,
                });
            }
            if old.is_some() && s_same && !r_same && source != Some(Side::Site) {
                return Decision::Act(Action::Copy {
                    from: Side::Remote,
                    item: m,
                    target: Some(s),
                    old,
                });
            }
            // Both changed, nothing recorded, or (one-way) the target changed: the contents
            // decide. A pair copied by a run that was killed before recording it lands here and
            // is found equal, not declared a conflict.
            Decision::Act(Action::Reconcile {
                site: s,
                remote: m,
                old,
                winner: match source {
                    Some(side) => Winner::Source(side),
                    None => Winner::Policy,
                },
            })
        }

        (Some(s), None) => one_sided(Side::Site, s, site.leaf, s_same, old, rules, suspect),
        (None, Some(m)) => one_sided(Side::Remote, m, remote.leaf, r_same, old, rules, suspect),
    }
}

/// The path is on side `here` only.
fn one_sided(
    here: Side,
    item: Item,
    leaf: bool,
    unchanged: bool,
    old: Option<Record>,
    rules: &Rules,
    suspect: impl Fn(Side) -> bool,
) -> Decision {
    let there = here.other();
    let source = source_of(rules.direction);
    let copy = |item: Item, old: Option<Record>| {
        if item.is_dir() {
            if leaf {
                Decision::Act(Action::Mkdir {
                    from: here,
                    item,
                    old,
                })
            } else {
                // Its files recreate it there, so it is recorded as a pair now: its removal can
                // then spread later. Should the copies fail, the record only ever leads to
                // removing an *empty* folder, which loses nothing.
                Decision::Keep(Some(Record::pair(&item, &item)))
            }
        } else {
            Decision::Act(Action::Copy {
                from: here,
                item,
                target: None,
                old,
            })
        }
    };
    let Some(rec) = old else {
        // New here. A one-way job copies only from its source; a target-only file is not ours.
        return if source == Some(there) {
            Decision::Keep(None)
        } else {
            copy(item, None)
        };
    };
    // It was on both sides at the last run, so `there` deleted it.
    if source == Some(here) {
        // One-way from here: the target lost a file the source still has; restore it.
        return copy(item, Some(rec));
    }
    if suspect(there) {
        return Decision::Skip(Some(rec));
    }
    if source == Some(there) {
        // One-way from there: the source deleted it.
        return if rules.delete && unchanged {
            delete(here, item, rec)
        } else {
            // Kept (no delete, or changed here since): no longer a synced pair.
            Decision::Keep(None)
        };
    }
    // Two-way.
    if !unchanged {
        // Changed here, deleted there: the change wins, so nothing is lost.
        return copy(item, Some(rec));
    }
    if rules.delete {
        delete(here, item, rec)
    } else {
        // Without delete a two-way job keeps the union of both sides.
        copy(item, Some(rec))
    }
}

fn delete(side: Side, item: Item, old: Record) -> Decision {
    if item.is_dir() {
        Decision::RemoveDir { side, item, old }
    } else {
        Decision::Act(Action::Delete {
            side,
            item,
            old,
            keep_parent: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(p: &str, tag: &str) -> Item {
        Item {
            path: p.into(),
            size: tag.len() as u64,
            mtime_ns: Some(1),
            etag: Some(tag.into()),
        }
    }
    fn seen(i: Option<Item>) -> Seen {
        Seen {
            item: i,
            leaf: true,
        }
    }
    fn rules(direction: Direction, delete: bool) -> Rules {
        Rules {
            direction,
            delete,
            site_suspect: false,
            remote_suspect: false,
        }
    }
    fn kind(d: &Decision) -> String {
        match d {
            Decision::Keep(r) => format!("keep:{}", r.is_some()),
            Decision::Skip(_) => "skip".into(),
            Decision::RemoveDir { side, .. } => format!("rmdir:{side:?}"),
            Decision::Act(Action::Copy { from, .. }) => format!("copy:{from:?}"),
            Decision::Act(Action::Delete { side, .. }) => format!("delete:{side:?}"),
            Decision::Act(Action::Mkdir { from, .. }) => format!("mkdir:{from:?}"),
            Decision::Act(Action::Reconcile { winner, .. }) => format!("reconcile:{winner:?}"),
        }
    }

    /// A copy's record holds the write's answer (an ETag, the answer's `Date`); a server that
    /// lists no ETags shows Last-Modified, which may fall in the next second: still the version
    /// the copy wrote, and the record takes the listing's view.
    #[test]
    fn a_write_answer_and_a_listing_without_etags_are_one_version() {
        let s = 1_000_000_000i64;
        let site = it("f", "abc");
        let written = Item {
            mtime_ns: Some(17 * s),
            ..it("f", "abc")
        };
        let old = Record::pair(&site, &written);
        let listed = |t: i64, size: u64| Item {
            path: "f".into(),
            size,
            mtime_ns: Some(t),
            etag: None,
        };
        let d = decide(
            seen(Some(site.clone())),
            seen(Some(listed(18 * s, 3))),
            Some(old.clone()),
            &rules(Direction::TwoWay, true),
        );
        match d {
            Decision::Keep(Some(r)) => {
                assert_eq!(r.remote, listed(18 * s, 3).half(), "the listing's view");
                assert_eq!(r.site, old.site);
            }
            other => panic!("{other:?}"),
        }
        // Another size, or a time further away, is a change.
        for other in [listed(18 * s, 4), listed(20 * s, 3)] {
            let d = decide(
                seen(Some(site.clone())),
                seen(Some(other)),
                Some(old.clone()),
                &rules(Direction::TwoWay, true),
            );
            assert_eq!(kind(&d), "copy:Remote", "{d:?}");
        }
    }

    /// (site, remote, recorded site, recorded remote) → decision, for each direction.
    #[test]
    fn table() {
        use Direction::*;
        let a = "a";
        // (site tag, remote tag, recorded (site, remote) tags, direction, delete, decision)
        type Case<'a> = (
            Option<&'a str>,
            Option<&'a str>,
            Option<(&'a str, &'a str)>,
            Direction,
            bool,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                Some("x"),
                Some("y"),
                Some(("x", "y")),
                TwoWay,
                true,
                "keep:true",
            ),
            (
                Some("x2"),
                Some("y"),
                Some(("x", "y")),
                TwoWay,
                true,
                "copy:Site",
            ),
            (
                Some("x"),
                Some("y2"),
                Some(("x", "y")),
                TwoWay,
                true,
                "copy:Remote",
            ),
            (
                Some("x2"),
                Some("y2"),
                Some(("x", "y")),
                TwoWay,
                true,
                "reconcile:Policy",
            ),
            (Some("x"), Some("y"), None, TwoWay, true, "reconcile:Policy"),
            (Some("x"), None, None, TwoWay, true, "copy:Site"),
            (None, Some("y"), None, TwoWay, true, "copy:Remote"),
            (
                Some("x"),
                None,
                Some(("x", "y")),
                TwoWay,
                true,
                "delete:Site",
            ),
            (
                Some("x"),
                None,
                Some(("x", "y")),
                TwoWay,
                false,
                "copy:Site",
            ),
            (
                Some("x2"),
                None,
                Some(("x", "y")),
                TwoWay,
                true,
                "copy:Site",
            ),
            (
                None,
                Some("y"),
                Some(("x", "y")),
                TwoWay,
                true,
                "delete:Remote",
            ),
            (None, None, Some(("x", "y")), TwoWay, true, "keep:false"),
            // push
            (
                Some("x2"),
                Some("y"),
                Some(("x", "y")),
                Push,
                false,
                "copy:Site",
            ),
            (
                Some("x"),
                Some("y2"),
                Some(("x", "y")),
                Push,
                false,
                "reconcile:Source(Site)",
            ),
            (None, Some("y"), None, Push, true, "keep:false"),
            (
                None,
                Some("y"),
                Some(("x", "y")),
                Push,
                true,
                "delete:Remote",
            ),
            (None, Some("y2"), Some(("x", "y")), Push, true, "keep:false"),
            (None, Some("y"), Some(("x", "y")), Push, false, "keep:false"),
            (Some("x"), None, Some(("x", "y")), Push, true, "copy:Site"),
            // pull
            (
                Some("x"),
                Some("y2"),
                Some(("x", "y")),
                Pull,
                false,
                "copy:Remote",
            ),
            (
                Some("x2"),
                Some("y"),
                Some(("x", "y")),
                Pull,
                false,
                "reconcile:Source(Remote)",
            ),
            (Some("x"), None, None, Pull, true, "keep:false"),
            (Some("x"), None, Some(("x", "y")), Pull, true, "delete:Site"),
            (None, Some("y"), Some(("x", "y")), Pull, true, "copy:Remote"),
        ];
        for (i, (s, m, r, dir, del, want)) in cases.iter().enumerate() {
            let old = r.map(|(x, y)| Record::pair(&it(a, x), &it(a, y)));
            let d = decide(
                seen(s.map(|t| it(a, t))),
                seen(m.map(|t| it(a, t))),
                old,
                &rules(*dir, *del),
            );
            assert_eq!(kind(&d), *want, "case {i}");
        }
    }

    #[test]
    fn suspect_listing_never_deletes() {
        let old = Some(Record::pair(&it("a", "x"), &it("a", "y")));
        let mut r = rules(Direction::TwoWay, true);
        r.site_suspect = true;
        let d = decide(seen(None), seen(Some(it("a", "y"))), old.clone(), &r);
        assert_eq!(kind(&d), "skip");
        let mut r = rules(Direction::Push, true);
        r.site_suspect = true;
        let d = decide(seen(None), seen(Some(it("a", "y"))), old, &r);
        assert_eq!(kind(&d), "skip");
    }

    #[test]
    fn folders() {
        let d = |p: &str| Item {
            path: p.into(),
            size: 0,
            mtime_ns: None,
            etag: None,
        };
        let r = rules(Direction::TwoWay, true);
        let leaf = Seen {
            item: Some(d("e/")),
            leaf: true,
        };
        let full = Seen {
            item: Some(d("e/")),
            leaf: false,
        };
        assert_eq!(
            kind(&decide(leaf.clone(), seen(None), None, &r)),
            "mkdir:Site"
        );
        assert_eq!(kind(&decide(full, seen(None), None, &r)), "keep:true");
        let old = Some(Record::pair(&d("e/"), &d("e/")));
        assert_eq!(
            kind(&decide(leaf.clone(), seen(None), old.clone(), &r)),
            "rmdir:Site"
        );
        assert_eq!(kind(&decide(leaf.clone(), leaf, None, &r)), "keep:true");
        let _ = old;
    }
}
