//! Command lines: a reader whose buffer never grows past the line length limit, and the lines
//! the relay answers itself because libunftp's parser would refuse them by closing the session
//! (although it answers 501 first).

use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// libunftp's replies are trusted, but still bounded.
pub(super) const MAX_REPLY_LINE: usize = 64 * 1024;

/// A line reader whose `fill` is cancel-safe (so it can sit in `select!`) and whose buffer never
/// grows past `max` bytes without a newline.
pub(super) struct Lines<T> {
    pub(super) io: T,
    pub(super) buf: BytesMut,
    pub(super) max: usize,
}

/// The line is longer than allowed.
pub(super) struct TooLong;

impl<T: AsyncRead + Unpin> Lines<T> {
    pub(super) fn new(io: T, max: usize) -> Self {
        Lines {
            io,
            buf: BytesMut::with_capacity(1024),
            max,
        }
    }

    /// The next complete line in the buffer, without its CR LF.
    pub(super) fn take_line(&mut self) -> Result<Option<Bytes>, TooLong> {
        match self.buf.iter().position(|b| *b == b'\n') {
            Some(i) if i > self.max => Err(TooLong),
            Some(i) => {
                let mut line = self.buf.split_to(i + 1);
                line.truncate(i);
                if line.last() == Some(&b'\r') {
                    line.truncate(i - 1);
                }
                Ok(Some(line.freeze()))
            }
            None if self.buf.len() > self.max => Err(TooLong),
            None => Ok(None),
        }
    }

    /// Reads more bytes; 0 means end of stream. Cancel-safe: `read_buf` reads nothing when
    /// it is dropped before completing.
    pub(super) async fn fill(&mut self) -> io::Result<usize> {
        self.buf.reserve(4096);
        self.io.read_buf(&mut self.buf).await
    }
}

/// Commands that libunftp refuses, closing the session, when anything follows them.
pub(super) const NO_ARGUMENT: &[&str] = &[
    "NOOP", "FEAT", "PWD", "XPWD", "QUIT", "BYE", "ABOR", "STOU", "CCC", "PASV",
];

/// The 501 for a line that libunftp's parser would refuse; libunftp answers it too but then
/// ends the session, so such lines never reach it.
pub(super) fn syntax_error(verb: &str, arg: &str, line: &str) -> Option<&'static str> {
    let blank = arg.trim().is_empty();
    if line.contains('\r') {
        return Some("501 Bare carriage return in the command line");
    }
    match verb {
        _ if NO_ARGUMENT.contains(&verb) && !blank => Some("501 This command takes no argument"),
        "RETR" | "STOR" | "APPE" | "DELE" | "RMD" | "RNFR" | "RNTO" | "MKD" | "XMKD" | "SIZE"
        | "MDTM"
            if blank =>
        {
            Some("501 A path is required")
        }
        "STRU" if !matches!(arg.trim().to_ascii_uppercase().as_str(), "F" | "R" | "P") => {
            Some("501 STRU takes F, R or P")
        }
        "MODE" if !matches!(arg.trim().to_ascii_uppercase().as_str(), "S" | "B" | "C") => {
            Some("501 MODE takes S, B or C")
        }
        "SITE" => {
            let (sub, rest) = arg.trim().split_once(' ').unwrap_or((arg.trim(), ""));
            (sub.eq_ignore_ascii_case("MD5") && rest.trim().is_empty())
                .then_some("501 A path is required")
        }
        _ => None,
    }
}

/// Drops Telnet commands (IAC IP, IAC DM: what some clients send before ABOR) from the start
/// of a command line.
pub(super) fn strip_telnet_commands(line: Bytes) -> Bytes {
    let mut start = 0;
    while line.len() >= start + 2 && line[start] == 0xff && line[start + 1] >= 0xf0 {
        start += 2;
    }
    line.slice(start..)
}

/// RFC 775's `XRMD` as `RMD` (Windows' ftp.exe sends it for `rmdir`): libunftp knows `XMKD`,
/// `XPWD`, `XCWD` and `XCUP`, and answered `XRMD` with 500.
pub(super) fn rfc775_aliases(line: Bytes) -> Bytes {
    let verb_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    if line[..verb_end].eq_ignore_ascii_case(b"XRMD") {
        let mut out = Vec::with_capacity(line.len() - 1);
        out.extend_from_slice(b"RMD");
        out.extend_from_slice(&line[verb_end..]);
        return Bytes::from(out);
    }
    line
}
