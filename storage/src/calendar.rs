//! The one calendar conversion of the gateway, on `chrono` (the date crate libunftp already
//! builds, so it costs nothing). Every civil date the gateway writes or reads goes through
//! here: ISO 8601 times, HTTP dates, sync history and conflict names, the `ls -l`
//! lines of SFTP and FTP.

use chrono::{DateTime, Utc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The UTC date and time of `t`, to the nanosecond. Before 1970 it is rounded down, as time
/// runs (a second and a half before the epoch is in 23:59:58). A time outside chrono's range
/// (about 262,000 years either way: only a corrupt or hostile `mtime` gets there) is clamped
/// to the range's end instead of failing.
pub fn utc(t: SystemTime) -> DateTime<Utc> {
    let secs = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (s, nanos) = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (secs(d), d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            match d.subsec_nanos() {
                0 => (-secs(d), 0),
                n => (-secs(d) - 1, 1_000_000_000 - n),
            }
        }
    };
    DateTime::from_timestamp(s, nanos).unwrap_or(if s < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// The time `dt` names, or `None` before 1970 (no S3 object or HTTP date is that old, so such
/// a date is taken as garbage). A leap second (`23:59:60`) is the next second.
pub fn system_time(dt: DateTime<Utc>) -> Option<SystemTime> {
    let secs = u64::try_from(dt.timestamp()).ok()?;
    // chrono keeps a leap second in the nanoseconds (1_000_000_000 and up); Duration::new
    // carries them into the seconds.
    UNIX_EPOCH.checked_add(Duration::new(secs, dt.timestamp_subsec_nanos()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Datelike, Timelike};

    fn parts(t: SystemTime) -> (i32, u32, u32, u32, u32, u32) {
        let d = utc(t);
        (
            d.year(),
            d.month(),
            d.day(),
            d.hour(),
            d.minute(),
            d.second(),
        )
    }

    #[test]
    fn known_dates() {
        assert_eq!(parts(UNIX_EPOCH), (1970, 1, 1, 0, 0, 0));
        // 2024-02-29 12:34 UTC
        assert_eq!(
            parts(UNIX_EPOCH + Duration::from_secs(1_709_210_040)),
            (2024, 2, 29, 12, 34, 0)
        );
        // Before the epoch, rounded down.
        assert_eq!(
            parts(UNIX_EPOCH - Duration::from_secs(1)),
            (1969, 12, 31, 23, 59, 59)
        );
        assert_eq!(
            parts(UNIX_EPOCH - Duration::from_millis(1500)),
            (1969, 12, 31, 23, 59, 58)
        );
        assert_eq!(
            parts(UNIX_EPOCH - Duration::from_secs(11_676_096_000)),
            (1600, 1, 1, 0, 0, 0)
        );
    }

    #[test]
    fn out_of_range_clamps_and_round_trips() {
        let far = UNIX_EPOCH + Duration::from_secs(10_000_000_000_000);
        assert_eq!(utc(far), DateTime::<Utc>::MAX_UTC);
        assert_eq!(
            utc(UNIX_EPOCH - Duration::from_secs(10_000_000_000_000)),
            DateTime::<Utc>::MIN_UTC
        );
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(system_time(utc(t)), Some(t));
        assert_eq!(system_time(utc(UNIX_EPOCH - Duration::from_secs(1))), None);
    }
}
