//! MFMT (draft-somers-ftp-mfxx): set a file's modification time.
//!
//! libunftp 0.24 has no MFMT command, but it dispatches `SITE <name>` to registered handlers
//! with the session's user. The relay rewrites `MFMT <time> <path>` into
//! `SITE MFMT <time> <absolute path>` (it tracks the working folder), and this handler does
//! the work through [`bucketgate_storage::UserFs::set_mtime`].

use super::auth::FtpUser;
use super::storage::{map_error, FtpStorage};
use async_trait::async_trait;
use bucketgate_storage::VPath;
use chrono::{DateTime, NaiveDateTime, Utc};
use libunftp::options::{Reply, ReplyCode, SiteCommandContext, SiteCommandHandler};
use std::time::SystemTime;
use unftp_core::storage::ErrorKind;

/// The `SITE MFMT` handler.
#[derive(Debug)]
pub(crate) struct MfmtHandler;

/// Parses `YYYYMMDDHHMMSS[.fff]` (UTC).
pub(crate) fn parse_time(s: &str) -> Option<SystemTime> {
    let (whole, frac) = match s.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (s, None),
    };
    if whole.len() != 14 || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = NaiveDateTime::parse_from_str(whole, "%Y%m%d%H%M%S").ok()?;
    let mut t: SystemTime = DateTime::<Utc>::from_naive_utc_and_offset(t, Utc).into();
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let nanos: u32 = format!("{f:0<9}").parse().ok()?;
        t += std::time::Duration::from_nanos(nanos as u64);
    }
    Some(t)
}

/// libunftp's own reply for each of its storage error kinds (the code is chosen once, in
/// [`map_error`]; this only spells it out for a reply we build ourselves).
fn reply_for(kind: ErrorKind) -> Reply {
    let code = match kind {
        ErrorKind::TransientFileNotAvailable => ReplyCode::TransientFileError,
        ErrorKind::LocalError => ReplyCode::LocalError,
        ErrorKind::ExceededStorageAllocationError => ReplyCode::ExceededStorageAllocation,
        ErrorKind::FileNameNotAllowedError => ReplyCode::BadFileName,
        ErrorKind::CommandNotImplemented => ReplyCode::CommandNotImplemented,
        _ => ReplyCode::FileError,
    };
    let text = kind.to_string();
    // The kind's text starts with its code ("550 Permission denied"): keep only the words.
    let msg = text.split_once(' ').map(|(_, m)| m).unwrap_or(&text);
    Reply::new(code, msg)
}

#[async_trait]
impl SiteCommandHandler<FtpStorage, FtpUser> for MfmtHandler {
    async fn handle(&self, ctx: &SiteCommandContext<FtpStorage, FtpUser>) -> Reply {
        let Some(user) = ctx.user.as_ref().as_ref() else {
            return Reply::new(ReplyCode::NotLoggedIn, "Please log in first");
        };
        let Some((time, path)) = ctx.arguments.split_once(' ') else {
            return Reply::new(
                ReplyCode::ParameterSyntaxError,
                "Usage: MFMT YYYYMMDDHHMMSS path",
            );
        };
        let Some(t) = parse_time(time) else {
            return Reply::new(
                ReplyCode::ParameterSyntaxError,
                "Bad time: use YYYYMMDDHHMMSS (UTC)",
            );
        };
        let p = match user.session.fs.resolve(&VPath::root(), path) {
            Ok(p) => p,
            Err(e) => return reply_for(map_error(e).kind()),
        };
        match user.session.fs.set_mtime(&p, t).await {
            Ok(()) => Reply::new_with_string(
                ReplyCode::FileStatus,
                format!("Modify={time}; {}", p.name().unwrap_or("/")),
            ),
            Err(e) => reply_for(map_error(e).kind()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn parses_mfmt_times() {
        assert_eq!(
            parse_time("20200102030405"),
            Some(UNIX_EPOCH + Duration::from_secs(1_577_934_245))
        );
        assert_eq!(
            parse_time("20200102030405.5"),
            Some(UNIX_EPOCH + Duration::from_millis(1_577_934_245_500))
        );
        assert_eq!(parse_time("2020010203040"), None);
        assert_eq!(parse_time("20201302030405"), None);
        assert_eq!(parse_time("20200102030405."), None);
    }
}
