//! Legacy SCP (`scp -O`): the rcp protocol over an `exec scp -t|-f ...` channel.
//!
//! The protocol is line-based: the source sends `C<mode> <size> <name>`, `D<mode> 0 <name>`,
//! `E` and (with `-p`) `T<mtime> 0 <atime> 0` records, each acknowledged by the sink with a
//! 0x00 byte, or refused with 0x01 (warning) / 0x02 (fatal) followed by a message line. The
//! record parser ([`parse_record`]) and the command parser ([`parse_command`]) are pure
//! functions over bytes, so they can be fuzzed without a server. Modern `scp` uses SFTP and
//! never comes here.

use crate::ssh::attrs::unix_secs;
use crate::ssh::errors::log_error;
use bucketgate_storage::{Entry, OpenMode, UserFs, VPath};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// Longest record line accepted (a 255-byte name plus mode and size fit easily).
pub const MAX_LINE: usize = 1024;
/// Bytes moved per read or write while streaming a file.
const CHUNK: usize = 256 * 1024;

/// Which side of the copy this server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `scp -t`: the client uploads, we receive.
    Sink,
    /// `scp -f`: the client downloads, we send.
    Source,
}

/// A parsed `scp` command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScpCommand {
    /// Receive or send.
    pub direction: Direction,
    /// `-r`: folders are copied recursively.
    pub recursive: bool,
    /// `-p`: modification times travel with the files (T records).
    pub preserve: bool,
    /// `-d`: the target must be a folder.
    pub target_is_dir: bool,
    /// The target (sink) or the sources (source), as the client wrote them.
    pub paths: Vec<String>,
    /// For each of `paths`: the shell pattern it is, when it holds an unquoted `*`, `?` or `[`
    /// (quoted characters escaped), as a remote shell would have expanded it for `scp -f`.
    pub globs: Vec<Option<String>>,
}

/// Parses the command of an `exec` request. Only `scp` with `-t` or `-f` is accepted; anything
/// else (a shell command, other programs) gives `None`.
pub fn parse_command(data: &[u8]) -> Option<ScpCommand> {
    let text = std::str::from_utf8(data).ok()?;
    if text.len() > 8192 {
        return None;
    }
    let words = shell_words(text)?;
    let ((prog, _), args) = words.split_first()?;
    if prog != "scp" && !prog.ends_with("/scp") {
        return None;
    }
    let mut direction = None;
    let (mut recursive, mut preserve, mut target_is_dir) = (false, false, false);
    let mut paths = Vec::new();
    let mut globs = Vec::new();
    let mut options_done = false;
    for (a, glob) in args {
        if !options_done && a == "--" {
            options_done = true;
        } else if !options_done && a.starts_with('-') && a.len() > 1 {
            for c in a[1..].chars() {
                match c {
                    't' => direction = Some(Direction::Sink),
                    'f' => direction = Some(Direction::Source),
                    'r' => recursive = true,
                    'p' => preserve = true,
                    'd' => target_is_dir = true,
                    // Verbose and quiet change nothing on this side.
                    'v' | 'q' => {}
                    _ => return None,
                }
            }
        } else {
            paths.push(a.clone());
            globs.push(glob.clone());
        }
    }
    let direction = direction?;
    if paths.is_empty() || (direction == Direction::Sink && paths.len() != 1) {
        return None;
    }
    Some(ScpCommand {
        direction,
        recursive,
        preserve,
        target_is_dir,
        paths,
        globs,
    })
}

/// Splits a command line as a POSIX shell would for plain words: single quotes, double quotes
/// and backslash escapes (OpenSSH quotes remote paths that hold spaces or quotes). Anything
/// that needs a real shell (unbalanced quotes) gives `None`. Each word comes with its shell
/// pattern when it holds an unquoted `*`, `?` or `[` (the shell would expand it): the word
/// with its quoted pattern characters escaped by a backslash.
fn shell_words(s: &str) -> Option<Vec<(String, Option<String>)>> {
    /// One word being read: its text, its pattern, and whether it has an unquoted wildcard.
    #[derive(Default)]
    struct Word {
        text: String,
        pattern: String,
        wild: bool,
        started: bool,
    }
    impl Word {
        fn quoted(&mut self, c: char) {
            self.text.push(c);
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                self.pattern.push('\\');
            }
            self.pattern.push(c);
        }
        fn plain(&mut self, c: char) {
            self.text.push(c);
            self.pattern.push(c);
            self.wild |= matches!(c, '*' | '?' | '[');
        }
        fn done(self) -> (String, Option<String>) {
            let pattern = self.wild.then_some(self.pattern);
            (self.text, pattern)
        }
    }
    let mut words = Vec::new();
    let mut cur = Word::default();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                cur.started = true;
                loop {
                    match chars.next()? {
                        '\'' => break,
                        x => cur.quoted(x),
                    }
                }
            }
            '"' => {
                cur.started = true;
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => {
                            let x = chars.next()?;
                            if !matches!(x, '"' | '\\' | '$' | '`') {
                                cur.quoted('\\');
                            }
                            cur.quoted(x);
                        }
                        x => cur.quoted(x),
                    }
                }
            }
            '\\' => {
                cur.started = true;
                cur.quoted(chars.next()?);
            }
            c if c.is_whitespace() => {
                if cur.started {
                    words.push(std::mem::take(&mut cur).done());
                }
            }
            c => {
                cur.started = true;
                cur.plain(c);
            }
        }
    }
    if cur.started {
        words.push(cur.done());
    }
    Some(words)
}

/// One record of the rcp protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// `C<mode> <size> <name>`: a file of `size` bytes follows.
    File {
        /// Unix mode bits (ignored: objects have none).
        mode: u32,
        /// Bytes that follow the record.
        size: u64,
        /// A single path segment.
        name: String,
    },
    /// `D<mode> 0 <name>`: entering a folder.
    Dir {
        /// Unix mode bits (ignored).
        mode: u32,
        /// A single path segment.
        name: String,
    },
    /// `E`: leaving the current folder.
    EndDir,
    /// `T<mtime> <usec> <atime> <usec>`: times of the next file or folder.
    Time {
        /// Modification time, seconds since the epoch.
        mtime: u64,
        /// Access time, seconds since the epoch.
        atime: u64,
    },
    /// 0x01 + message: the peer warns and goes on.
    Warning(String),
    /// 0x02 + message: the peer gives up.
    Fatal(String),
}

/// Parses one record line, without its trailing newline. Names must be one plain segment:
/// no `/`, not `.` or `..`, no control character, valid UTF-8, at most 255 bytes.
pub fn parse_record(line: &[u8]) -> Result<Record, &'static str> {
    if line.len() > MAX_LINE {
        return Err("line too long");
    }
    let (&kind, rest) = line.split_first().ok_or("empty line")?;
    match kind {
        1 | 2 => {
            let msg = String::from_utf8_lossy(rest).into_owned();
            Ok(if kind == 1 {
                Record::Warning(msg)
            } else {
                Record::Fatal(msg)
            })
        }
        b'E' if rest.is_empty() => Ok(Record::EndDir),
        b'T' => {
            let text = std::str::from_utf8(rest).map_err(|_| "bad time record")?;
            let nums: Vec<&str> = text.split(' ').collect();
            if nums.len() != 4 {
                return Err("bad time record");
            }
            let n = |s: &str| -> Result<u64, &'static str> {
                if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err("bad time record");
                }
                s.parse::<u64>().map_err(|_| "bad time record")
            };
            let (mtime, musec, atime, ausec) = (n(nums[0])?, n(nums[1])?, n(nums[2])?, n(nums[3])?);
            if musec >= 1_000_000 || ausec >= 1_000_000 {
                return Err("bad time record");
            }
            Ok(Record::Time { mtime, atime })
        }
        b'C' | b'D' => {
            let text = std::str::from_utf8(rest).map_err(|_| "name is not UTF-8")?;
            let mut parts = text.splitn(3, ' ');
            let (mode, size, name) = (
                parts.next().ok_or("bad record")?,
                parts.next().ok_or("bad record")?,
                parts.next().ok_or("bad record")?,
            );
            if mode.is_empty()
                || mode.len() > 5
                || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
            {
                return Err("bad mode");
            }
            let mode = u32::from_str_radix(mode, 8).map_err(|_| "bad mode")?;
            if size.is_empty() || size.len() > 20 || !size.bytes().all(|b| b.is_ascii_digit()) {
                return Err("bad size");
            }
            let size: u64 = size.parse().map_err(|_| "bad size")?;
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.len() > bucketgate_storage::path::MAX_SEGMENT
                || name.contains(['/', '\\'])
                || name.chars().any(|c| c.is_control())
            {
                return Err("unexpected file name");
            }
            let name = name.to_string();
            Ok(if kind == b'C' {
                Record::File { mode, size, name }
            } else {
                Record::Dir { mode, name }
            })
        }
        _ => Err("unknown record"),
    }
}

/// Runs one scp command over `stream`; returns the exit status for the client (0 when every
/// file went through).
pub(crate) async fn run<S>(stream: S, fs: UserFs, cmd: ScpCommand, keep_partial: bool) -> u32
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (r, w) = tokio::io::split(stream);
    let mut scp = Scp {
        r: BufReader::with_capacity(CHUNK, r),
        w,
        fs,
        cmd,
        keep_partial,
        failed: false,
    };
    let result = match scp.cmd.direction {
        Direction::Sink => scp.sink().await,
        Direction::Source => scp.source().await,
    };
    let _ = scp.w.flush().await;
    match result {
        Ok(()) if !scp.failed => 0,
        Ok(()) => 1,
        Err(e) => {
            tracing::debug!(user = scp.fs.username(), error = %e, "scp ended early");
            1
        }
    }
}

struct Scp<R, W> {
    r: BufReader<R>,
    w: W,
    fs: UserFs,
    cmd: ScpCommand,
    keep_partial: bool,
    /// Some file failed: the exit status says so.
    failed: bool,
}

type IoResult<T> = std::io::Result<T>;

fn protocol_error(msg: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.to_string())
}

impl<R, W> Scp<R, W>
where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    /// Reads one line (without its newline), at most [`MAX_LINE`] bytes; `None` at EOF.
    async fn read_line(&mut self) -> IoResult<Option<Vec<u8>>> {
        let mut line = Vec::new();
        loop {
            let buf = self.r.fill_buf().await?;
            if buf.is_empty() {
                return if line.is_empty() {
                    Ok(None)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
            match buf.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    line.extend_from_slice(&buf[..i]);
                    self.r.consume(i + 1);
                    break;
                }
                None => {
                    let n = buf.len();
                    line.extend_from_slice(buf);
                    self.r.consume(n);
                }
            }
            if line.len() > MAX_LINE {
                return Err(protocol_error("line too long"));
            }
        }
        if line.len() > MAX_LINE {
            return Err(protocol_error("line too long"));
        }
        Ok(Some(line))
    }

    async fn ack(&mut self) -> IoResult<()> {
        self.w.write_all(&[0]).await?;
        self.w.flush().await
    }

    /// Tells the client about a failure: 0x01 goes on, 0x02 ends the copy.
    async fn send_error(&mut self, fatal: bool, msg: &str) -> IoResult<()> {
        self.failed = true;
        let msg: String = msg.chars().filter(|c| !c.is_control()).take(512).collect();
        let mut out = vec![if fatal { 2 } else { 1 }];
        out.extend_from_slice(format!("scp: {msg}\n").as_bytes());
        self.w.write_all(&out).await?;
        self.w.flush().await
    }

    /// Reads the peer's answer to what we sent: `Ok(Ok(()))` for 0x00, `Ok(Err(msg))` for a
    /// warning; a fatal answer or EOF ends the copy.
    async fn read_ack(&mut self) -> IoResult<Result<(), String>> {
        let b = self.r.read_u8().await?;
        if b == 0 {
            return Ok(Ok(()));
        }
        let line = self.read_line().await?.unwrap_or_default();
        let msg = String::from_utf8_lossy(&line).into_owned();
        self.failed = true;
        match b {
            1 => Ok(Err(msg)),
            _ => Err(protocol_error(&format!("peer gave up: {msg}"))),
        }
    }

    fn storage_error(&self, e: bucketgate_storage::Error) -> String {
        log_error(self.fs.username(), &e);
        e.to_string()
    }

    // ---- sink: the client uploads ----

    async fn sink(&mut self) -> IoResult<()> {
        // A target ending in `/` must be a folder (scp to `host:newdir/`).
        let target = match self
            .fs
            .resolve_entry(&VPath::root(), &self.cmd.paths[0])
            .await
        {
            Ok(p) => p,
            Err(e) => {
                let m = self.storage_error(e);
                return self.send_error(true, &m).await;
            }
        };
        let target_is_dir = matches!(self.fs.stat(&target).await, Ok(e) if e.is_dir());
        if self.cmd.target_is_dir && !target_is_dir {
            return self
                .send_error(true, &format!("{target}: not a folder"))
                .await;
        }
        self.ack().await?;
        // The folders entered with D records; empty at the top level.
        let mut stack: Vec<VPath> = Vec::new();
        let mut times: Option<SystemTime> = None;
        while let Some(line) = self.read_line().await? {
            let record = match parse_record(&line) {
                Ok(r) => r,
                Err(why) => {
                    self.send_error(true, why).await?;
                    return Err(protocol_error(why));
                }
            };
            let dest_of = |name: &str, stack: &[VPath]| match stack.last() {
                Some(d) => d.join(name),
                None if target_is_dir => target.join(name),
                None => Ok(target.clone()),
            };
            match record {
                Record::Time { mtime, .. } => {
                    times = Some(UNIX_EPOCH + Duration::from_secs(mtime));
                    self.ack().await?;
                }
                Record::Warning(_) => self.failed = true,
                Record::Fatal(_) => {
                    self.failed = true;
                    return Ok(());
                }
                Record::File { size, name, .. } => {
                    let mtime = times.take();
                    match dest_of(&name, &stack) {
                        Ok(dest) => self.receive_file(&dest, size, mtime).await?,
                        Err(e) => {
                            let m = self.storage_error(e);
                            self.send_error(false, &m).await?;
                        }
                    }
                }
                Record::Dir { name, .. } => {
                    times = None;
                    if !self.cmd.recursive {
                        return self.send_error(true, "received a folder without -r").await;
                    }
                    let dest = match dest_of(&name, &stack) {
                        Ok(d) => d,
                        Err(e) => {
                            let m = self.storage_error(e);
                            return self.send_error(true, &m).await;
                        }
                    };
                    let exists = matches!(self.fs.stat(&dest).await, Ok(e) if e.is_dir());
                    if !exists {
                        if let Err(e) = self.fs.mkdir(&dest).await {
                            // Without the folder nothing below it can be placed: stop here.
                            let m = self.storage_error(e);
                            return self.send_error(true, &m).await;
                        }
                    }
                    stack.push(dest);
                    self.ack().await?;
                }
                Record::EndDir => {
                    if stack.pop().is_none() {
                        return self.send_error(true, "unexpected E record").await;
                    }
                    self.ack().await?;
                }
            }
        }
        Ok(())
    }

    async fn receive_file(
        &mut self,
        dest: &VPath,
        size: u64,
        mtime: Option<SystemTime>,
    ) -> IoResult<()> {
        let mode = OpenMode {
            create: true,
            truncate: true,
            size_hint: Some(size),
            keep_partial: self.keep_partial,
            ..Default::default()
        };
        let mut writer = match self.fs.open_write(dest, mode).await {
            Ok(w) => w,
            Err(e) => {
                // Refusing the C record makes the client skip this file's bytes.
                let m = self.storage_error(e);
                return self.send_error(false, &m).await;
            }
        };
        self.ack().await?;
        let mut off = 0u64;
        let mut write_err = None;
        let mut buf = vec![0u8; CHUNK];
        while off < size {
            let want = ((size - off) as usize).min(CHUNK);
            let n = match self.r.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => {
                    writer.abort().await;
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => n,
            };
            // After a failed write the bytes are still read, to stay in step with the client.
            if write_err.is_none() {
                if let Err(e) = writer
                    .write_at(off, Bytes::copy_from_slice(&buf[..n]))
                    .await
                {
                    write_err = Some(e);
                }
            }
            off += n as u64;
        }
        // The client ends the data with 0x00, or with an error if its own read failed.
        let client = self.read_ack().await?;
        if let Err(msg) = client {
            tracing::debug!(user = self.fs.username(), %dest, msg, "scp client failed mid-file");
            writer.abort().await;
            return Ok(());
        }
        if let Some(e) = write_err {
            writer.abort().await;
            let m = self.storage_error(e);
            return self.send_error(false, &m).await;
        }
        if let Some(t) = mtime {
            writer.set_mtime(t);
        }
        // Acknowledged only once the file is complete in storage.
        match writer.close().await {
            Ok(_) => self.ack().await,
            Err(e) => {
                let m = self.storage_error(e);
                self.send_error(false, &m).await
            }
        }
    }

    // ---- source: the client downloads ----

    async fn source(&mut self) -> IoResult<()> {
        // The client speaks first: a 0x00 when it is ready.
        if let Err(msg) = self.read_ack().await? {
            return Err(protocol_error(&msg));
        }
        let inputs: Vec<_> = self
            .cmd
            .paths
            .clone()
            .into_iter()
            .zip(self.cmd.globs.clone())
            .collect();
        for (input, glob) in inputs {
            if let Some(pattern) = glob {
                // `scp -f dir/*.csv`: what the remote shell would have expanded.
                match self.expand(&input, &pattern).await {
                    Ok(Some(matches)) => {
                        for (p, e) in matches {
                            self.send_entry(p, e).await?;
                        }
                        continue;
                    }
                    // Not a pattern after all (an unclosed `[`): the name as written.
                    Ok(None) => {}
                    Err(m) => {
                        self.send_error(false, &m).await?;
                        continue;
                    }
                }
            }
            let p = match self.fs.resolve_entry(&VPath::root(), &input).await {
                Ok(p) => p,
                Err(e) => {
                    let m = self.storage_error(e);
                    self.send_error(false, &m).await?;
                    continue;
                }
            };
            match self.fs.stat(&p).await {
                Ok(e) => self.send_entry(p, e).await?,
                Err(e) => {
                    let m = self.storage_error(e);
                    self.send_error(false, &m).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends a file, or a folder with `-r` (refused without it).
    async fn send_entry(&mut self, p: VPath, e: Entry) -> IoResult<()> {
        if !e.is_dir() {
            self.send_file(&p, &e).await
        } else if self.cmd.recursive {
            self.send_dir(p, e).await
        } else {
            self.send_error(false, &format!("{p}: not a regular file"))
                .await
        }
    }

    /// Expands a source pattern as a POSIX shell does: the names of its folder that match its
    /// last part, sorted, names starting with `.` only when the pattern does. Wildcards are
    /// supported in the last part only. `Ok(None)`: not a valid pattern, to be taken as a name
    /// (as the shell does); `Err`: the message for the client (no match is "no such file",
    /// which is what `scp` answers for the word a shell passes on unexpanded).
    async fn expand(
        &mut self,
        input: &str,
        pattern: &str,
    ) -> Result<Option<Vec<(VPath, Entry)>>, String> {
        let (dir, name_pattern) = match pattern.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => ("", pattern),
        };
        if ["*", "?", "["]
            .iter()
            .any(|w| dir.replace(&format!("\\{w}"), "").contains(w))
        {
            return Err(format!(
                "{input}: wildcards are supported in the last part of a path only"
            ));
        }
        let Some(matcher) = crate::pattern::NamePattern::new(name_pattern) else {
            return Ok(None);
        };
        let dir_text = match input.rsplit_once('/') {
            Some(("", _)) => "/",
            Some((d, _)) => d,
            None => ".",
        };
        let dir = self
            .fs
            .resolve(&VPath::root(), dir_text)
            .map_err(|e| self.storage_error(e))?;
        let mut pages = self
            .fs
            .list(&dir)
            .await
            .map_err(|e| self.storage_error(e))?;
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            for e in page.map_err(|e| self.storage_error(e))? {
                if matcher.matches(&e.name) {
                    if let Ok(p) = dir.join(&e.name) {
                        found.push((p, e));
                    }
                }
            }
        }
        if found.is_empty() {
            return Err(format!("{input}: no such file or folder"));
        }
        found.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        Ok(Some(found))
    }

    async fn send_time(&mut self, e: &Entry) -> IoResult<Result<(), String>> {
        let t = e.mtime.map(unix_secs).unwrap_or(0);
        self.w
            .write_all(format!("T{t} 0 {t} 0\n").as_bytes())
            .await?;
        self.w.flush().await?;
        self.read_ack().await
    }

    async fn send_file(&mut self, p: &VPath, e: &Entry) -> IoResult<()> {
        let mut reader = match self.fs.open_read(p).await {
            Ok(r) => r,
            Err(e) => {
                let m = self.storage_error(e);
                return self.send_error(false, &m).await;
            }
        };
        if self.cmd.preserve && self.send_time(e).await?.is_err() {
            return Ok(());
        }
        let size = reader.size();
        let name = p.name().unwrap_or("file");
        self.w
            .write_all(format!("C0644 {size} {name}\n").as_bytes())
            .await?;
        self.w.flush().await?;
        if self.read_ack().await?.is_err() {
            return Ok(());
        }
        let mut off = 0u64;
        let mut read_err = None;
        while off < size {
            let want = ((size - off) as usize).min(CHUNK);
            let chunk = if read_err.is_none() {
                match reader.read_at(off, want).await {
                    Ok(b) if !b.is_empty() => b,
                    Ok(_) => {
                        read_err = Some("file ended early".to_string());
                        Bytes::from(vec![0u8; want])
                    }
                    Err(e) => {
                        read_err = Some(self.storage_error(e));
                        Bytes::from(vec![0u8; want])
                    }
                }
            } else {
                // The size was announced: after a failure, pad so the stream stays in step,
                // then report the error instead of the final 0x00.
                Bytes::from(vec![0u8; want])
            };
            self.w.write_all(&chunk).await?;
            off += chunk.len() as u64;
        }
        match read_err {
            None => self.ack().await?,
            Some(m) => self.send_error(false, &m).await?,
        }
        let _ = self.read_ack().await?;
        Ok(())
    }

    fn send_dir(&mut self, p: VPath, e: Entry) -> BoxFuture<'_, IoResult<()>> {
        Box::pin(async move {
            if self.cmd.preserve && self.send_time(&e).await?.is_err() {
                return Ok(());
            }
            let name = p.name().unwrap_or("home").to_string();
            self.w
                .write_all(format!("D0755 0 {name}\n").as_bytes())
                .await?;
            self.w.flush().await?;
            if self.read_ack().await?.is_err() {
                return Ok(());
            }
            match self.fs.list(&p).await {
                Ok(mut pages) => {
                    while let Some(page) = pages.next().await {
                        let page = match page {
                            Ok(pg) => pg,
                            Err(e) => {
                                let m = self.storage_error(e);
                                self.send_error(false, &m).await?;
                                break;
                            }
                        };
                        for child in page {
                            let cp = match p.join(&child.name) {
                                Ok(c) => c,
                                Err(_) => continue,
                            };
                            if child.is_dir() {
                                self.send_dir(cp, child).await?;
                            } else {
                                self.send_file(&cp, &child).await?;
                            }
                        }
                    }
                }
                Err(e) => {
                    let m = self.storage_error(e);
                    self.send_error(false, &m).await?;
                }
            }
            self.w.write_all(b"E\n").await?;
            self.w.flush().await?;
            let _ = self.read_ack().await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands() {
        let c = parse_command(b"scp -r -p -t -- /up").unwrap();
        assert_eq!(c.direction, Direction::Sink);
        assert!(c.recursive && c.preserve && !c.target_is_dir);
        assert_eq!(c.paths, vec!["/up"]);
        let c = parse_command(b"scp -f 'a b.txt' c").unwrap();
        assert_eq!(c.direction, Direction::Source);
        assert_eq!(c.paths, vec!["a b.txt", "c"]);
        assert!(parse_command(b"ls -la").is_none());
        assert!(parse_command(b"scp -x -t /").is_none());
        assert!(parse_command(b"scp -t").is_none());
        assert!(parse_command(b"scp -t 'open").is_none());
        // Unquoted wildcards make a pattern; quoted or escaped ones are part of a name.
        let c =
            parse_command(br#"scp -f /d/*.csv '/d/*.txt' /d/\*x "/d/a b[1]?" /d/plain"#).unwrap();
        assert_eq!(
            c.paths,
            vec!["/d/*.csv", "/d/*.txt", "/d/*x", "/d/a b[1]?", "/d/plain"]
        );
        assert_eq!(
            c.globs,
            vec![Some("/d/*.csv".to_string()), None, None, None, None]
        );
        let c = parse_command(br#"scp -f "/d/a b"*.txt"#).unwrap();
        assert_eq!(c.paths, vec!["/d/a b*.txt"]);
        assert_eq!(c.globs, vec![Some("/d/a b*.txt".to_string())]);
        let c = parse_command(br#"scp -f '[x]'?"#).unwrap();
        assert_eq!(c.globs, vec![Some(r"\[x\]?".to_string())]);
    }

    #[test]
    fn records() {
        assert_eq!(
            parse_record(b"C0644 12 a.txt").unwrap(),
            Record::File {
                mode: 0o644,
                size: 12,
                name: "a.txt".into()
            }
        );
        assert_eq!(
            parse_record(b"C0644 1 with space").unwrap(),
            Record::File {
                mode: 0o644,
                size: 1,
                name: "with space".into()
            }
        );
        assert_eq!(
            parse_record(b"D0755 0 d").unwrap(),
            Record::Dir {
                mode: 0o755,
                name: "d".into()
            }
        );
        assert_eq!(parse_record(b"E").unwrap(), Record::EndDir);
        assert_eq!(
            parse_record(b"T1700000000 0 1700000001 0").unwrap(),
            Record::Time {
                mtime: 1_700_000_000,
                atime: 1_700_000_001
            }
        );
        for bad in [
            &b"C0644 1 ../x"[..],
            b"C0644 1 a/b",
            b"C0644 1 ..",
            b"C0644 1 .",
            b"C0644 1 ",
            b"C0944 1 a",
            b"C0644 -1 a",
            b"C0644 99999999999999999999999 a",
            b"Cx",
            b"T1 2 3",
            b"X",
            b"",
            b"C0644 1 a\x01b",
        ] {
            assert!(
                parse_record(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_record(&vec![b'C'; MAX_LINE + 1]).is_err());
    }
}
