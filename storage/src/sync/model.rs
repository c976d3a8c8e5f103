//! What the engine knows about one path: a side's listing entry ([`Item`]) and the pair recorded
//! after the last good run ([`Record`]).

use crate::backend::Entry;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Something that sorts by a path (listing entries, state records, journal lines).
pub(crate) trait Keyed {
    /// The relative path; folders end with `/`.
    fn key(&self) -> &str;
}

/// One side's listing entry for a relative path. Folders carry a trailing `/`, so a folder
/// sorts right before its contents and a file `a` never shares a key with a folder `a/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Item {
    #[serde(rename = "p")]
    pub path: String,
    #[serde(rename = "s")]
    pub size: u64,
    /// Nanoseconds since the epoch (i64 reaches the year 2262).
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

impl Keyed for Item {
    fn key(&self) -> &str {
        &self.path
    }
}

/// Names that belong to the gateway's own bookkeeping, never to a user.
const RESERVED: [&str; 2] = [crate::local::STAGING, ".bucketgate-sync"];

fn ns_of(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

/// ETags arrive quoted from some servers and unquoted from others; compare them bare.
pub(crate) fn normalize_etag(e: &str) -> String {
    e.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

impl Item {
    /// The item for a walk entry (its name relative to the synced folder), or `None` for a name
    /// that is not a clean relative path or that belongs to the gateway.
    pub(crate) fn from_entry(e: Entry) -> Option<Item> {
        let name = e.name.trim_end_matches('/');
        if name.is_empty()
            || name
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            || RESERVED.contains(&name.split('/').next().unwrap_or(""))
        {
            return None;
        }
        let dir = e.is_dir();
        Some(Item {
            path: if dir {
                format!("{name}/")
            } else {
                name.to_string()
            },
            size: if dir { 0 } else { e.size },
            mtime_ns: e.mtime.map(ns_of),
            etag: if dir {
                None
            } else {
                e.etag.as_deref().map(normalize_etag)
            },
        })
    }

    /// The same item under another path, described by what a write returned.
    pub(crate) fn from_written(path: &str, e: &Entry) -> Item {
        Item {
            path: path.to_string(),
            size: e.size,
            mtime_ns: e.mtime.map(ns_of),
            etag: e.etag.as_deref().map(normalize_etag),
        }
    }

    pub(crate) fn is_dir(&self) -> bool {
        self.path.ends_with('/')
    }

    pub(crate) fn mtime(&self) -> Option<SystemTime> {
        self.mtime_ns.map(|n| {
            if n >= 0 {
                UNIX_EPOCH + Duration::from_nanos(n as u64)
            } else {
                UNIX_EPOCH - Duration::from_nanos(n.unsigned_abs())
            }
        })
    }

    /// The side's half of a record.
    pub(crate) fn half(&self) -> Half {
        Half {
            size: self.size,
            etag: if self.is_dir() {
                None
            } else {
                self.etag.clone()
            },
            mtime_ns: if self.is_dir() { None } else { self.mtime_ns },
        }
    }

    /// True when `other` (the same path, seen another time) is the same version: see
    /// [`Half::matches`].
    pub(crate) fn same_version(&self, other: &Item) -> bool {
        self.is_dir() == other.is_dir() && self.half().matches(other)
    }
}

/// Two mtimes this close are one version when no ETag can tell: some servers list
/// milliseconds and answer writes and HEADs in whole seconds.
const MTIME_SLACK_NS: i64 = 1_000_000_000;

/// One side of a recorded pair: what that side showed for the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Half {
    #[serde(rename = "s")]
    pub size: u64,
    /// The ETag (S3) or the size-mtime-inode stamp (local).
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(rename = "m", default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<i64>,
}

impl Half {
    /// True when `item` is what this half recorded: the side has not changed since. The ETag
    /// decides when both have one (a local stamp changes with size, mtime and inode; an S3
    /// ETag with content). Without one on either side (a server that lists no ETags), the
    /// mtime decides, to the second. Folders never change.
    pub(crate) fn matches(&self, item: &Item) -> bool {
        if item.is_dir() {
            return true;
        }
        if self.size != item.size {
            return false;
        }
        match (&self.etag, &item.etag, self.mtime_ns, item.mtime_ns) {
            (Some(a), Some(b), _, _) => a == b,
            (_, _, Some(a), Some(b)) => (a - b).abs() < MTIME_SLACK_NS,
            _ => false,
        }
    }
}

/// A pair verified identical on both sides at the end of a copy or a comparison. Each side is
/// only ever compared with its own half: an S3 ETag is never compared with a local stamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    #[serde(rename = "p")]
    pub path: String,
    #[serde(rename = "l")]
    pub site: Half,
    #[serde(rename = "r")]
    pub remote: Half,
}

impl Keyed for Record {
    fn key(&self) -> &str {
        &self.path
    }
}

impl Record {
    pub(crate) fn pair(site: &Item, remote: &Item) -> Record {
        Record {
            path: site.path.clone(),
            site: site.half(),
            remote: remote.half(),
        }
    }
}

/// A 32-hex-digit ETag is the MD5 of the content (a single-part S3 upload); multipart ETags
/// (`…-N`) and local stamps are not content hashes.
pub(crate) fn md5_like(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::EntryKind;

    fn entry(name: &str, kind: EntryKind) -> Entry {
        Entry {
            name: name.into(),
            kind,
            size: 3,
            mtime: Some(UNIX_EPOCH + Duration::from_millis(1500)),
            etag: Some("\"abc\"".into()),
        }
    }

    #[test]
    fn items() {
        let f = Item::from_entry(entry("a/b.txt", EntryKind::File)).unwrap();
        assert_eq!(f.path, "a/b.txt");
        assert_eq!(f.half().etag.as_deref(), Some("abc"));
        assert_eq!(f.mtime_ns, Some(1_500_000_000));
        assert_eq!(f.mtime(), Some(UNIX_EPOCH + Duration::from_millis(1500)));
        let d = Item::from_entry(entry("a", EntryKind::Dir)).unwrap();
        assert_eq!((d.path.as_str(), d.size, d.half().etag), ("a/", 0, None));
        // Without ETags the mtime decides, to the second.
        let mut listed = f.clone();
        listed.etag = None;
        let mut written = f.clone();
        written.mtime_ns = Some(1_000_000_000);
        assert!(written.same_version(&listed));
        written.mtime_ns = Some(2_600_000_000);
        assert!(!written.same_version(&listed));
        let mut other = f.clone();
        other.etag = Some("abd".into());
        assert!(!f.same_version(&other));
        assert!(Item::from_entry(entry("a//b", EntryKind::File)).is_none());
        assert!(Item::from_entry(entry("../b", EntryKind::File)).is_none());
        assert!(Item::from_entry(entry(".bucketgate-staging/x", EntryKind::File)).is_none());
        assert!(md5_like("d41d8cd98f00b204e9800998ecf8427e"));
        assert!(!md5_like("d41d8cd98f00b204e9800998ecf8427e-2"));
    }
}
