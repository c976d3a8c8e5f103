//! Names the engine makes: conflict copies, UTC timestamps, and file names for job state.

use chrono::{Datelike, Timelike};
use std::time::SystemTime;

/// Civil UTC date and time of `t`: (year, month, day, hour, minute, second). Before 1970 it
/// is rounded down to the whole second (a second and a half before the epoch is in 23:59:58).
pub(crate) fn utc_parts(t: SystemTime) -> (i32, u32, u32, u32, u32, u32) {
    let d = crate::calendar::utc(t);
    (
        d.year(),
        d.month(),
        d.day(),
        d.hour(),
        d.minute(),
        d.second(),
    )
}

/// `2024-05-01T10:15:00Z`, for history lines.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let (y, mo, d, h, mi, s) = utc_parts(t);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The name that keeps the losing version of a conflict beside the winner:
/// `dir/report (conflict 2024-05-01 101500 UTC).tar.gz`.
///
/// The mark goes before the first dot after the first character of the file name, so every
/// extension (`.tar.gz`) survives and a dot file (`.bashrc`) keeps its whole name. `when` is the
/// losing version's modification time, not the time of the run: a run that is interrupted and
/// repeated then picks the same name again instead of making a second copy.
pub fn conflict_name(path: &str, when: SystemTime) -> String {
    conflict_name_n(path, when, 1)
}

/// The `n`th candidate conflict name: the first is [`conflict_name`], later ones carry ` #n`
/// after `UTC` (`report (conflict 2024-05-01 101500 UTC #2).tar.gz`), for when that name is
/// already taken by another version.
pub(crate) fn conflict_name_n(path: &str, when: SystemTime, n: u32) -> String {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let split = name
        .char_indices()
        .skip(1)
        .find(|&(_, c)| c == '.')
        .map(|(i, _)| i)
        .unwrap_or(name.len());
    let (y, mo, d, h, mi, s) = utc_parts(when);
    let nth = if n > 1 {
        format!(" #{n}")
    } else {
        String::new()
    };
    format!(
        "{dir}{} (conflict {y:04}-{mo:02}-{d:02} {h:02}{mi:02}{s:02} UTC{nth}){}",
        &name[..split],
        &name[split..]
    )
}

/// True for names made by [`conflict_name`].
pub fn is_conflict_name(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.contains(" (conflict ") && (name.contains(" UTC)") || name.contains(" UTC #"))
}

/// A job name made safe as a file name: anything but `[A-Za-z0-9_-]` and inner dots becomes
/// `%XX`, so two names never share a file and none can climb out of the state folder.
pub(crate) fn file_stem(job: &str) -> String {
    let mut out = String::with_capacity(job.len());
    for (i, b) in job.bytes().enumerate() {
        let keep = b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && i > 0);
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push_str("%00");
    }
    out
}

/// The inverse of [`file_stem`] (for `status`, which starts from file names).
pub(crate) fn job_from_stem(stem: &str) -> String {
    let bytes = stem.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                if v != 0 {
                    out.push(v);
                }
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn conflict_names() {
        // 2024-05-01 10:15:00 UTC
        let when = t(1_714_558_500);
        assert_eq!(
            conflict_name("report.tar.gz", when),
            "report (conflict 2024-05-01 101500 UTC).tar.gz"
        );
        assert_eq!(
            conflict_name("a/b/.bashrc", when),
            "a/b/.bashrc (conflict 2024-05-01 101500 UTC)"
        );
        assert_eq!(
            conflict_name(".config.yaml", when),
            ".config (conflict 2024-05-01 101500 UTC).yaml"
        );
        assert_eq!(
            conflict_name("x", when),
            "x (conflict 2024-05-01 101500 UTC)"
        );
        assert!(is_conflict_name("d/x (conflict 2024-05-01 101500 UTC)"));
        assert!(!is_conflict_name("d/x"));
        let second = conflict_name_n("a/r.txt", when, 2);
        assert_eq!(second, "a/r (conflict 2024-05-01 101500 UTC #2).txt");
        assert!(is_conflict_name(&second));
        // Before 1970 the date is kept, not folded to the epoch.
        assert_eq!(
            conflict_name("x", UNIX_EPOCH - Duration::from_secs(86_400)),
            "x (conflict 1969-12-31 000000 UTC)"
        );
    }

    #[test]
    fn dates() {
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(4_102_444_799)), "2099-12-31T23:59:59Z");
        // The edges: a second and a half before the epoch is in 23:59:58, a leap day, the
        // last second of 9999 and the first of 10000, the year 5138.
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_millis(1500)),
            "1969-12-31T23:59:58Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(2_208_988_800)),
            "1900-01-01T00:00:00Z"
        );
        assert_eq!(rfc3339(t(68_169_600)), "1972-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(253_402_300_799)), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(t(253_402_300_800)), "10000-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(100_000_000_000)), "5138-11-16T09:46:40Z");
        assert_eq!(
            conflict_name("x.txt", t(253_402_300_800)),
            "x (conflict 10000-01-01 000000 UTC).txt"
        );
    }

    #[test]
    fn stems() {
        for name in ["acme-inbound", "a/b", "..", ".x", "a b%", "é"] {
            let s = file_stem(name);
            assert!(!s.contains('/') && !s.starts_with('.'), "{s}");
            assert_eq!(job_from_stem(&s), name);
        }
    }
}
