//! The one place where an FTP command's permission and existence are decided, before libunftp
//! sees it.
//!
//! libunftp answers `150` to RETR and LIST before it opens the file or folder, then `550`; clients
//! such as rclone only take "not found" as the first answer. So the relay asks the storage crate
//! first, and the answer is the operation itself: the file is opened ([`UserFs::open_read`]), the
//! listing begun ([`UserFs::list`]), the entry found ([`UserFs::stat`]). What was found goes to
//! the storage adapter through the session's [`ControlLink`] ([`Ready`]), which uses it instead of
//! asking again: one permission check and one existence request per command.
//!
//! A REST offset that cannot be honoured (RETR beyond the end of the file; STOR at another offset
//! than 0 or the file's size, the only append object storage allows) is refused here with 554,
//! a reply libunftp cannot give, before any data connection is used.
//!
//! The relay prepares a command only when no earlier reply is still due (it holds the command
//! until then), so the working folder and the login it sees are libunftp's.

use super::link::{ControlLink, Ready};
use super::listing::{ls_line, Meta};
use super::storage::map_error;
use bucketgate_storage::backend::ListStream;
use bucketgate_storage::{ErrorKind, UserFs, VPath};
use futures::StreamExt;

/// Prepares `verb arg` (with the client's REST offset) for the logged-in user whose working
/// folder is `cwd`. Returns the refusal to send instead of forwarding the command, if any.
pub(crate) async fn prepare(
    fs: &UserFs,
    link: &ControlLink,
    cwd: &VPath,
    verb: &str,
    arg: &str,
    rest: u64,
) -> Option<String> {
    link.set_ready(None);
    let target = if verb == "LIST" {
        strip_list_options(arg)
    } else {
        arg
    };
    // libunftp's storage error kinds print as their reply line ("550 Permission denied").
    let refusal = |e| Some(map_error(e).kind().to_string());
    // A name ending in `/` is a folder's: a file's command on it is refused unless it is one
    // (`STOR newdir/` made a file named `newdir`); a listing takes it as it is.
    let path = if matches!(verb, "LIST" | "NLST" | "MLSD") {
        VPath::resolve(cwd, target)
    } else {
        fs.resolve_entry(cwd, target).await
    };
    let path = match path {
        Ok(p) => p,
        Err(e) => return refusal(e),
    };
    let ready = match verb {
        "RETR" => match fs.open_read(&path).await {
            Ok(r) if rest > r.size() => {
                return Some("554 Restart offset beyond the end of the file".into())
            }
            Ok(r) => Ready::Read(path, Box::new(r)),
            Err(e) => return refusal(e),
        },
        "STOR" if rest > 0 => match fs.stat(&path).await {
            Ok(e) if !e.is_dir() && e.size == rest => Ready::Append(path, Some(e)),
            Err(e) if e.kind() != ErrorKind::NotFound => return refusal(e),
            _ => {
                return Some(
                    "554 Restart offset must be 0 or the file's current size (append)".into(),
                )
            }
        },
        // APPE: libunftp asks for the size and appends there, or stores from 0 when it learns
        // nothing, whatever the reason. So only "no such file" may mean "create it": a size that
        // cannot be read (the server down, a permission) refuses the command, or the upload
        // would replace the file with the appended bytes alone.
        "APPE" => match fs.stat(&path).await {
            Ok(e) if e.is_dir() => return Some("550 Not a plain file".into()),
            Ok(e) => Ready::Append(path, Some(e)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ready::Append(path, None),
            Err(e) => return refusal(e),
        },
        // libunftp answers SIZE and MDTM itself, refusals included (its reply to a missing
        // file is worded its own way); a folder, to which it would give a size, is refused here.
        "SIZE" | "MDTM" => match fs.stat(&path).await {
            Ok(e) if e.is_dir() => return Some("550 Not a plain file".into()),
            found => Ready::Stat(path, found),
        },
        // LIST and NLST of a file show that file, as RFC 959 has it and every FTP server on a
        // disk does (`ls file`); MLSD is for folders only (RFC 3659: MLST is for files).
        "LIST" | "NLST" | "MLSD" => match listing(fs, &path, verb != "MLSD").await {
            Ok(l) => Ready::List(path, l),
            // `NLST *.csv` (Windows ftp.exe's and tnftp's `mget`, `mdelete`) and `LIST *.csv`:
            // a name that does not exist but is a pattern lists the matching entries, as
            // vsftpd and ProFTPD do.
            Err(e) if e.kind() == ErrorKind::NotFound && verb != "MLSD" => {
                match expand(fs, cwd, target).await {
                    Ok(Some(found)) => Ready::List(path, one_page(found)),
                    Ok(None) => return refusal(e),
                    Err(e) => return refusal(e),
                }
            }
            Err(e) => return refusal(e),
        },
        // STOR from 0: the upload's own open decides (there is nothing to find first).
        _ => return None,
    };
    link.set_ready(Some(ready));
    None
}

/// The entries of the folder `path`, or with `file_too`, a file as itself.
async fn listing(
    fs: &UserFs,
    path: &VPath,
    file_too: bool,
) -> bucketgate_storage::Result<ListStream> {
    match fs.list(path).await {
        Err(e) if file_too && e.kind() == ErrorKind::NotADirectory => match fs.stat(path).await {
            Ok(f) if !f.is_dir() => Ok(one_page(vec![f])),
            Ok(_) => Err(e),
            Err(e) => Err(e),
        },
        found => found,
    }
}

/// A listing of entries already in hand.
fn one_page(entries: Vec<bucketgate_storage::Entry>) -> ListStream {
    Box::pin(futures::stream::once(async move { Ok(entries) }))
}

/// At most this many entries from one wildcard listing (the listing's own bound,
/// `ftp.max_list_entries`, applies after).
const MAX_MATCHES: usize = 100_000;

/// The entries matching `target` when its last part is a shell pattern (`*`, `?`, `[...]`, a
/// backslash escaping one of them): those of its folder whose names match, sorted, names that
/// start with `.` only when the pattern does, as a shell expands them. They carry the folder
/// part of `target` as it was typed (`NLST sub/*.csv` gives `sub/a.csv`, which the client can
/// RETR from where it is). `Ok(None)`: not a pattern, an invalid one, a wildcard above the last
/// part, or no match.
async fn expand(
    fs: &UserFs,
    cwd: &VPath,
    target: &str,
) -> bucketgate_storage::Result<Option<Vec<bucketgate_storage::Entry>>> {
    let (dir_text, pattern) = match target.rsplit_once('/') {
        Some((d, n)) => (Some(d), n),
        None => (None, target),
    };
    let wild = |t: &str| t.contains(['*', '?', '[']);
    if !wild(pattern) || dir_text.is_some_and(wild) {
        return Ok(None);
    }
    let Some(matcher) = crate::pattern::NamePattern::new(pattern) else {
        return Ok(None);
    };
    let dir = match dir_text {
        Some("") => VPath::root(),
        Some(d) => VPath::resolve(cwd, d)?,
        None => cwd.clone(),
    };
    let mut pages = fs.list(&dir).await?;
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        for mut e in page? {
            if !matcher.matches(&e.name) {
                continue;
            }
            if let Some(d) = dir_text {
                e.name = format!("{d}/{}", e.name);
            }
            found.push(e);
        }
        if found.len() >= MAX_MATCHES {
            break;
        }
    }
    if found.is_empty() {
        return Ok(None);
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Some(found))
}

/// The reply to `STAT path` (RFC 959): the `ls -l` lines of a folder's entries (at most `max`,
/// as for LIST), or of a file, on the control connection between `213-` and `213 `, as FTP
/// servers on a disk answer it.
pub(crate) async fn stat_listing(fs: &UserFs, cwd: &VPath, arg: &str, max: usize) -> String {
    let refusal = |e| map_error(e).kind().to_string();
    let path = match VPath::resolve(cwd, strip_list_options(arg)) {
        Ok(p) => p,
        Err(e) => return refusal(e),
    };
    let mut pages = match listing(fs, &path, true).await {
        Ok(pages) => pages,
        Err(e) => return refusal(e),
    };
    let mut entries = Vec::new();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => entries.extend(page),
            Err(e) => return refusal(e),
        }
        if entries.len() >= max {
            entries.truncate(max);
            break;
        }
    }
    let now = std::time::SystemTime::now();
    let mut out = format!("213-Status of {path}:\r\n");
    for e in &entries {
        // A line break in a name would end the reply early on this connection.
        let name = e.name.replace(['\r', '\n'], "?");
        // The line ends with its CRLF (as in a LIST).
        out.push_str(&ls_line(&name, &Meta::from(e), now));
    }
    out.push_str("213 End of status");
    out
}

/// The path of `LIST [-options] [path]` (libunftp skips the options the same way).
fn strip_list_options(arg: &str) -> &str {
    let mut rest = arg;
    while rest.starts_with('-') {
        match rest.split_once(' ') {
            Some((_, r)) => rest = r,
            None => return "",
        }
    }
    rest
}
