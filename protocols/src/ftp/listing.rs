//! Directory entries as libunftp wants them, and the `ls -l` lines of LIST.

use bucketgate_storage::{Entry, EntryKind};
use chrono::Datelike;
use std::time::{Duration, SystemTime};
use unftp_core::storage::{Error, Metadata};

/// What LIST, MLSD, SIZE and MDTM know about an entry.
#[derive(Debug, Clone)]
pub(crate) struct Meta {
    kind: EntryKind,
    size: u64,
    mtime: SystemTime,
}

impl From<&Entry> for Meta {
    fn from(e: &Entry) -> Self {
        Meta {
            kind: e.kind,
            size: if e.is_dir() { 0 } else { e.size },
            // The tree fills in a time for every entry; the epoch only guards a backend bug.
            mtime: e.mtime.unwrap_or(SystemTime::UNIX_EPOCH),
        }
    }
}

impl Metadata for Meta {
    fn len(&self) -> u64 {
        self.size
    }

    fn is_dir(&self) -> bool {
        self.kind == EntryKind::Dir
    }

    fn is_file(&self) -> bool {
        self.kind == EntryKind::File
    }

    fn is_symlink(&self) -> bool {
        false
    }

    fn modified(&self) -> Result<SystemTime, Error> {
        Ok(self.mtime)
    }

    // Objects have no owner: MLSD leaves unix.uid/gid out when they are 0.
    fn gid(&self) -> u32 {
        0
    }

    fn uid(&self) -> u32 {
        0
    }
}

/// One LIST line in the format of `ls -l`, which every client parses:
/// `drwxr-xr-x 1 ftp ftp 0 Mar 05 14:02 name`; the year replaces the time for dates more than
/// six months away, as `ls` does.
pub(crate) fn ls_line(name: &str, meta: &Meta, now: SystemTime) -> String {
    let (kind, mode) = if meta.is_dir() {
        ('d', "rwxr-xr-x")
    } else {
        ('-', "rw-r--r--")
    };
    let t = bucketgate_storage::calendar::utc(meta.mtime);
    let half_year = Duration::from_secs(182 * 24 * 3600);
    // Without adding to a time: an mtime near the end of SystemTime's range would overflow.
    let recent = match now.duration_since(meta.mtime) {
        Ok(age) => age < half_year,
        Err(ahead) => ahead.duration() < half_year,
    };
    let when = if recent {
        t.format("%b %d %H:%M").to_string()
    } else {
        format!("{} {:>5}", t.format("%b %d"), t.year())
    };
    format!(
        "{kind}{mode} 1 ftp ftp {size:>12} {when} {name}\r\n",
        size = meta.size
    )
}

/// The LIST line of an entry named `name` (a file of `size` bytes, or a folder), for the fuzz
/// targets in fuzz/: hostile names go through the same formatter as real listings.
pub fn list_line(
    name: &str,
    is_dir: bool,
    size: u64,
    mtime: SystemTime,
    now: SystemTime,
) -> String {
    let meta = Meta {
        kind: if is_dir {
            EntryKind::Dir
        } else {
            EntryKind::File
        },
        size: if is_dir { 0 } else { size },
        mtime,
    };
    ls_line(name, &meta, now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ls_line_shapes() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let m = Meta {
            kind: EntryKind::File,
            size: 42,
            mtime: now - Duration::from_secs(3600),
        };
        let l = ls_line("a b.txt", &m, now);
        assert!(
            l.starts_with("-rw-r--r-- 1 ftp ftp           42 Nov 14 "),
            "{l}"
        );
        assert!(l.ends_with(" a b.txt\r\n"));
        let old = Meta {
            kind: EntryKind::Dir,
            size: 0,
            mtime: SystemTime::UNIX_EPOCH,
        };
        assert!(ls_line("d", &old, now).contains("Jan 01  1970 d"));
        let at = |mtime: SystemTime| {
            let m = Meta {
                kind: EntryKind::File,
                size: 7,
                mtime,
            };
            ls_line("f", &m, now)
        };
        let day = Duration::from_secs(86_400);
        // 2023-11-14 22:13:20 UTC; the six-month rule, both ways.
        assert_eq!(
            at(now),
            "-rw-r--r-- 1 ftp ftp            7 Nov 14 22:13 f\r\n"
        );
        assert!(at(now - day * 181).ends_with("May 17 22:13 f\r\n"));
        assert!(at(now - day * 183).ends_with("May 15  2023 f\r\n"));
        assert!(at(now + day * 181).ends_with("May 13 22:13 f\r\n"));
        assert!(at(now + day * 183).ends_with("May 15  2024 f\r\n"));
        // Before 1970, and far future.
        assert!(at(SystemTime::UNIX_EPOCH - Duration::from_millis(1500))
            .ends_with("Dec 31  1969 f\r\n"));
        assert!(
            at(SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799))
                .ends_with("Dec 31  9999 f\r\n")
        );
        assert!(
            at(SystemTime::UNIX_EPOCH + Duration::from_secs(100_000_000_000))
                .ends_with("Nov 16  5138 f\r\n")
        );
        // Beyond the calendar's range (a hostile mtime metadata): the last date it has, not
        // a panic of the session.
        let beyond = at(SystemTime::UNIX_EPOCH + Duration::from_secs(10_000_000_000_000));
        assert!(beyond.ends_with(" f\r\n"), "{beyond}");
        // The latest time a SystemTime holds (what `mtime` metadata can say): no overflow.
        let last = at(SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64));
        assert!(last.ends_with(" f\r\n"), "{last}");
    }
}
