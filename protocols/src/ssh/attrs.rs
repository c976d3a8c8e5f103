//! File attributes and `ls -l` style long names for SFTP replies.

use bucketgate_storage::Entry;
use chrono::{Datelike, Timelike};
use russh_sftp::protocol::{File, FileAttributes};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Mode bits shown for folders: objects have no owner or mode, so every entry looks like what
/// the user can generally do; the real checks are the folder rules.
const DIR_MODE: u32 = 0o040_755;
/// Mode bits shown for files.
const FILE_MODE: u32 = 0o100_644;

/// Seconds since the epoch, clamped to what SFTP v3's 32-bit times can carry.
pub(crate) fn unix_secs(t: SystemTime) -> u32 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs().min(u64::from(u32::MAX)) as u32,
        Err(_) => 0,
    }
}

/// The time a client sent, as a `SystemTime`.
pub(crate) fn from_unix(secs: u32) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::from(secs))
}

/// The attributes of an entry.
pub(crate) fn attrs_of(e: &Entry) -> FileAttributes {
    let mtime = e.mtime.map(unix_secs).unwrap_or(0);
    FileAttributes {
        size: Some(e.size),
        permissions: Some(if e.is_dir() { DIR_MODE } else { FILE_MODE }),
        atime: Some(mtime),
        mtime: Some(mtime),
        ..Default::default()
    }
}

/// A READDIR entry: name, `ls -l` line, attributes.
pub(crate) fn file_of(e: &Entry, owner: &str, now: SystemTime) -> File {
    File {
        filename: e.name.clone(),
        longname: longname(e, owner, now),
        attrs: attrs_of(e),
    }
}

/// The `ls -l` line OpenSSH's `ls -l` prints verbatim: mode, links, owner, group, size, date,
/// name. Dates within six months show the time, older ones the year, as `ls` does.
pub(crate) fn longname(e: &Entry, owner: &str, now: SystemTime) -> String {
    let mode = if e.is_dir() {
        "drwxr-xr-x"
    } else {
        "-rw-r--r--"
    };
    let t = e.mtime.unwrap_or(UNIX_EPOCH);
    // Before 1970 shows as the epoch: the attributes carry no negative time either.
    let civil = bucketgate_storage::calendar::utc(t.max(UNIX_EPOCH));
    let (y, mo, d, hh, mm) = (
        civil.year(),
        civil.month(),
        civil.day(),
        civil.hour(),
        civil.minute(),
    );
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let half_year = Duration::from_secs(182 * 24 * 3600);
    let recent = match now.duration_since(t) {
        Ok(age) => age < half_year,
        Err(ahead) => ahead.duration() < half_year,
    };
    let when = if recent {
        format!("{:02}:{:02}", hh, mm)
    } else {
        format!(" {y}")
    };
    let owner: String = owner.chars().take(32).collect();
    format!(
        "{mode}    1 {owner:<8} {owner:<8} {:>8} {} {:>2} {:>5} {}",
        e.size,
        MONTHS[(mo - 1) as usize],
        d,
        when,
        e.name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_name_shape() {
        let e = Entry {
            name: "a.txt".into(),
            kind: bucketgate_storage::EntryKind::File,
            size: 42,
            mtime: Some(UNIX_EPOCH + Duration::from_secs(1_709_210_040)),
            etag: None,
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_709_210_040 + 60);
        let l = longname(&e, "alice", now);
        assert!(l.starts_with("-rw-r--r--"), "{l}");
        assert!(l.ends_with("Feb 29 12:34 a.txt"), "{l}");
        assert_eq!(
            l,
            "-rw-r--r--    1 alice    alice          42 Feb 29 12:34 a.txt"
        );
        let at = |secs: i64, now: i64| {
            let when = |s: i64| {
                if s >= 0 {
                    UNIX_EPOCH + Duration::from_secs(s as u64)
                } else {
                    UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
                }
            };
            let e = Entry {
                mtime: Some(when(secs)),
                ..e.clone()
            };
            longname(&e, "alice", when(now))
        };
        let day = 86_400;
        // The six-month rule, both ways: 181 days old or ahead shows the time, 183 the year.
        assert!(at(1_709_210_040 - 181 * day, 1_709_210_040).ends_with("Sep  1 12:34 a.txt"));
        assert!(at(1_709_210_040 - 183 * day, 1_709_210_040).ends_with("Aug 30  2023 a.txt"));
        assert!(at(1_709_210_040 + 181 * day, 1_709_210_040).ends_with("Aug 28 12:34 a.txt"));
        assert!(at(1_709_210_040 + 183 * day, 1_709_210_040).ends_with("Aug 30  2024 a.txt"));
        // Before 1970 shows as the epoch (the attributes carry no negative time either).
        assert!(at(-1, 1_709_210_040).ends_with("Jan  1  1970 a.txt"));
        // Far future.
        assert!(at(253_402_300_799, 1_709_210_040).ends_with("Dec 31  9999 a.txt"));
        assert!(at(100_000_000_000, 1_709_210_040).ends_with("Nov 16  5138 a.txt"));
    }
}
