//! Time formats of the S3 world: ISO 8601 listing times, HTTP dates, and the
//! rclone-compatible `mtime` metadata.

use crate::calendar::system_time;
use chrono::{DateTime, NaiveDateTime};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Parses the ISO 8601 times of XML answers (`2024-01-02T03:04:05.678Z`; a space for the `T`,
/// any fraction, whatever follows the seconds ignored; before 1970: none).
pub(crate) fn parse_iso8601(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let b = s.as_bytes();
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let head = format!("{}T{}", s.get(0..10)?, s.get(11..19)?);
    let t = NaiveDateTime::parse_from_str(&head, "%Y-%m-%dT%H:%M:%S").ok()?;
    let mut nanos = 0u32;
    let rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits: String = frac.chars().take_while(|c| c.is_ascii_digit()).collect();
        let mut padded = digits.chars().take(9).collect::<String>();
        while padded.len() < 9 {
            padded.push('0');
        }
        nanos = padded.parse().ok()?;
    }
    // chrono gives a leap second (23:59:60) as 1_000_000_000 nanoseconds of the second before.
    let t = system_time(t.and_utc())?;
    Some(t + Duration::from_nanos(u64::from(nanos)))
}

/// Parses an HTTP date header (`Last-Modified`): the IMF-fixdate every server sends
/// (`Fri, 24 May 2013 00:00:00 GMT`) and the two obsolete forms recipients must accept
/// (RFC 9110 5.6.7: RFC 850's `Friday, 24-May-13 00:00:00 GMT` and asctime's
/// `Fri May 24 00:00:00 2013`). A weekday that does not match the date, or a date before
/// 1970, is no date.
pub(crate) fn parse_http_date(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let t = DateTime::parse_from_rfc2822(s)
        .map(|t| t.to_utc())
        .or_else(|_| {
            NaiveDateTime::parse_from_str(s, "%A, %d-%b-%y %H:%M:%S GMT").map(|t| t.and_utc())
        })
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%a %b %e %H:%M:%S %Y").map(|t| t.and_utc()))
        .ok()?;
    system_time(t)
}

/// Formats `mtime` metadata as rclone does: decimal seconds since the epoch with nanoseconds
/// (`1700000000.123456789`), or whole seconds when there is no fraction.
pub fn format_mtime(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
    }
}

/// Parses `mtime` metadata: whole or fractional decimal seconds since the epoch (rclone's form
/// and plain integers). Anything else (negative, garbage) is ignored by the caller.
pub fn parse_mtime(s: &str) -> Option<SystemTime> {
    let s = s.trim();
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if int.is_empty() || !int.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = int.parse().ok()?;
    let mut digits: String = frac.chars().take(9).collect();
    while digits.len() < 9 {
        digits.push('0');
    }
    let nanos: u32 = digits.parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_times() {
        let t = parse_iso8601("2013-05-24T00:00:00.000Z").unwrap();
        assert_eq!(t, UNIX_EPOCH + Duration::from_secs(1369353600));
        let t = parse_iso8601("2000-02-29T01:01:01.5Z").unwrap();
        assert_eq!(
            t,
            UNIX_EPOCH + Duration::new(951_782_400 + 3661, 500_000_000)
        );
        assert!(parse_iso8601("yesterday").is_none());
        // Without a fraction, with nine digits and more, with an offset-free tail, on a leap
        // second, in the far future; before 1970: no time.
        assert_eq!(
            parse_iso8601("2013-05-24T00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1369353600))
        );
        assert_eq!(
            parse_iso8601("2013-05-24T00:00:00.123456789Z"),
            Some(UNIX_EPOCH + Duration::new(1369353600, 123_456_789))
        );
        assert_eq!(
            parse_iso8601("2013-05-24T00:00:00.1234567891Z"),
            Some(UNIX_EPOCH + Duration::new(1369353600, 123_456_789))
        );
        assert_eq!(
            parse_iso8601("2013-05-24T00:00:00"),
            Some(UNIX_EPOCH + Duration::from_secs(1369353600))
        );
        assert_eq!(
            parse_iso8601("2016-12-31T23:59:60Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_483_228_800))
        );
        assert_eq!(
            parse_iso8601("9999-12-31T23:59:59.000Z"),
            Some(UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        );
        assert_eq!(parse_iso8601("1969-12-31T23:59:59Z"), None);
        assert_eq!(parse_iso8601("2013-13-24T00:00:00Z"), None);
        assert_eq!(parse_iso8601("2013-05-24T24:00:00Z"), None);
        // RFC 3339 allows a space for the T.
        assert_eq!(
            parse_iso8601("2013-05-24 00:00:00Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1369353600))
        );
        assert_eq!(parse_iso8601("2013-05-24T00:00Z"), None);
    }

    #[test]
    fn mtime_round_trip() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_789);
        assert_eq!(format_mtime(t), "1700000000.123456789");
        assert_eq!(parse_mtime("1700000000.123456789"), Some(t));
        assert_eq!(
            parse_mtime("1700000000"),
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(
            parse_mtime("1700000000.5"),
            Some(UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000))
        );
        assert_eq!(
            format_mtime(UNIX_EPOCH + Duration::from_secs(5)),
            "5".to_string()
        );
        assert!(parse_mtime("-5").is_none());
        assert!(parse_mtime("abc").is_none());
        assert!(parse_mtime("1.2.3").is_none());
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Fri, 24 May 2013 00:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1369353600))
        );
        // The obsolete forms HTTP/1.1 recipients accept (RFC 9110 5.6.7), and a leap day.
        assert_eq!(
            parse_http_date("Friday, 24-May-13 00:00:00 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(1369353600))
        );
        assert_eq!(
            parse_http_date("Fri May 24 00:00:00 2013"),
            Some(UNIX_EPOCH + Duration::from_secs(1369353600))
        );
        assert_eq!(
            parse_http_date(" Tue, 29 Feb 2000 01:01:01 GMT "),
            Some(UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661))
        );
        assert_eq!(
            parse_http_date("Fri, 31 Dec 9999 23:59:59 GMT"),
            Some(UNIX_EPOCH + Duration::from_secs(253_402_300_799))
        );
        // Before 1970, a wrong weekday, garbage: no date.
        assert_eq!(parse_http_date("Wed, 31 Dec 1969 23:59:59 GMT"), None);
        assert_eq!(parse_http_date("Sat, 24 May 2013 00:00:00 GMT"), None);
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date(""), None);
    }
}
