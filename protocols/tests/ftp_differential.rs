//! Differential runner for FTP (issue 15, items 2, 3 and 6): seeded random FTP command
//! sequences sent by one raw client (passive mode, binary type) to the gateway, on a bucket of a
//! real S3 server (moto), and to pyftpdlib serving a local folder (`ftp_reference.py`). Every
//! step must give the reference's result (reply class, bytes, listing names, types and sizes),
//! or be refused by the gateway with nothing changed in the bucket. The accepted differences
//! are the documented deviations of `docs/objects.md`, each one a rule below that names its
//! line. After every step the bucket and the reference folder must hold the same tree; at the
//! end both are read back through the protocol as well.
//!
//! `DIFF_SEED=<n>` replays one sequence (printed on failure, with a minimized list of steps);
//! `DIFF_SEQUENCES=<n>` sets how many fresh random sequences run beside the fixed seeds (the
//! long mode, `bench/README.md`); `DIFF_VERBOSE=1` prints every step and both answers.

use crate::ftp_harness;

use ftp_harness::{s3_support, Harness, S3Server, Setup, PASSWORD, USER};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// The name pool: files and folders collide on purpose, with a space and non-ASCII letters.
const FILES: &[&str] = &["a", "b", "d/a", "sp ace", "ünï", "d/e/c"];
const DIRS: &[&str] = &["d", "d/e"];
/// Sequences the CI pass always runs; each divergence found is also kept as its minimized
/// steps in `regressions()`.
/// (1523827933 and 1440835425: a cut transfer from a working folder that was removed.
/// 2084378779: an APPE stored empty, answered 226, through a late passive connection;
/// 2351912389: an MKD refused beside a killed client's upload; 3212127935, 3073113865,
/// 1686228687, 2425132424 and 1001495148: a 426 or an empty 226 to a listing, a refused data
/// port, a 426 to an APPE, all timing-dependent, before the relay spoke active mode to
/// libunftp: see `bench/README.md`.)
const FIXED_SEEDS: &[u64] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 1523827933, 1440835425, 2313329704, 2084378779, 2351912389, 3212127935,
    3073113865, 1686228687, 2425132424, 1001495148,
];
/// Fresh random sequences per CI pass (override with DIFF_SEQUENCES).
const FRESH: usize = 4;
/// How long a reply may take before the step counts as broken (generous: a loaded machine
/// can take seconds to greet a new connection).
const REPLY_WAIT: Duration = Duration::from_secs(30);

/// Where a REST puts the next transfer, from the file's size in the bucket before the step.
#[derive(Clone, Copy, Debug)]
enum Rest {
    /// At the size: an append (STOR) or nothing left (RETR).
    Size,
    /// Inside the file (an in-place write for STOR), or 0 when the file is empty.
    Mid(u64),
    /// Past the end.
    Beyond(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Stor {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    Appe {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    RestStor {
        path: &'static str,
        at: Rest,
        len: usize,
        seed: u64,
    },
    Retr {
        path: &'static str,
    },
    RestRetr {
        path: &'static str,
        at: Rest,
    },
    Dele {
        path: &'static str,
    },
    Rename {
        from: &'static str,
        to: &'static str,
    },
    Mkd {
        path: &'static str,
    },
    Rmd {
        path: &'static str,
    },
    Size {
        path: &'static str,
    },
    Mdtm {
        path: &'static str,
    },
    Mlsd {
        dir: &'static str,
    },
    List {
        dir: &'static str,
    },
    Nlst {
        dir: &'static str,
    },
    Cwd {
        dir: &'static str,
    },
    Cdup,
    /// STOR, some bytes, then ABOR with the data connection still open.
    AborStor {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// RETR, then ABOR at once.
    AborRetr {
        path: &'static str,
    },
    /// RETR, then the data connection closed (reset) before reading anything.
    RetrClosed {
        path: &'static str,
    },
    /// STOR, some bytes, then the data connection reset instead of closed.
    StorReset {
        path: &'static str,
        len: usize,
        seed: u64,
    },
    /// STOR, some bytes, then the client dies: its data connection and then its control
    /// connection end with a FIN each, as a killed process's kernel closes them.
    KillStor {
        path: &'static str,
        len: usize,
        seed: u64,
    },
}

/// What a step answered, as the client sees it.
#[derive(Clone, Debug, PartialEq)]
enum Res {
    /// A positive reply (2xx, or 3xx where that is the success: RNFR, REST).
    Ok,
    /// SIZE's number.
    Size(String),
    /// PWD's folder.
    Pwd(String),
    /// A download's bytes.
    Bytes(Vec<u8>),
    /// A listing: name, folder?, file size (NLST: names only).
    Names(Vec<(String, bool, Option<u64>)>),
    /// An aborted or cut transfer that was accepted at first (its outcome is checked on the
    /// trees, and its reply classes where they are determined).
    Cut(String),
    /// A negative reply: its code.
    Err(u16),
    /// No proper reply (a timeout, a closed connection, a malformed answer).
    Broken(String),
}

impl Res {
    fn is_err(&self) -> bool {
        matches!(self, Res::Err(_) | Res::Broken(_))
    }
}

fn pick<T: Copy>(rng: &mut StdRng, v: &[T]) -> T {
    v[rng.random_range(0..v.len())]
}

fn any_path(rng: &mut StdRng) -> &'static str {
    if rng.random_bool(0.75) {
        pick(rng, FILES)
    } else {
        pick(rng, DIRS)
    }
}

fn rest(rng: &mut StdRng) -> Rest {
    match rng.random_range(0..3) {
        0 => Rest::Size,
        1 => Rest::Mid(rng.random()),
        _ => Rest::Beyond(rng.random_range(1..10)),
    }
}

/// A sequence of 20 to 40 steps from `seed`.
fn generate(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.random_range(20..=40);
    (0..n)
        .map(|_| {
            let len = rng.random_range(0..50);
            let seed = rng.random();
            match rng.random_range(0..100) {
                0..=17 => Op::Stor {
                    path: pick(&mut rng, FILES),
                    len,
                    seed,
                },
                18..=23 => Op::Appe {
                    path: pick(&mut rng, FILES),
                    len,
                    seed,
                },
                24..=28 => Op::RestStor {
                    path: pick(&mut rng, FILES),
                    at: rest(&mut rng),
                    len,
                    seed,
                },
                29..=35 => Op::Retr {
                    path: any_path(&mut rng),
                },
                36..=38 => Op::RestRetr {
                    path: pick(&mut rng, FILES),
                    at: rest(&mut rng),
                },
                39..=43 => Op::Dele {
                    path: any_path(&mut rng),
                },
                44..=50 => Op::Rename {
                    from: any_path(&mut rng),
                    to: any_path(&mut rng),
                },
                51..=57 => Op::Mkd {
                    path: any_path(&mut rng),
                },
                58..=61 => Op::Rmd {
                    path: any_path(&mut rng),
                },
                62..=64 => Op::Size {
                    path: any_path(&mut rng),
                },
                65..=66 => Op::Mdtm {
                    path: any_path(&mut rng),
                },
                67..=70 => Op::Mlsd {
                    dir: pick(&mut rng, &["", "d", "d/e"]),
                },
                71..=73 => Op::List {
                    dir: pick(&mut rng, &["", "d", "d/e"]),
                },
                74..=75 => Op::Nlst {
                    dir: pick(&mut rng, &["", "d", "d/e"]),
                },
                76..=80 => Op::Cwd {
                    dir: pick(&mut rng, &["", "d", "d/e", "a", "zz"]),
                },
                81..=82 => Op::Cdup,
                83..=86 => Op::AborStor {
                    path: pick(&mut rng, FILES),
                    len: len + 1,
                    seed,
                },
                87..=88 => Op::AborRetr {
                    path: pick(&mut rng, FILES),
                },
                89..=91 => Op::RetrClosed {
                    path: pick(&mut rng, FILES),
                },
                92..=95 => Op::StorReset {
                    path: pick(&mut rng, FILES),
                    len: len + 1,
                    seed,
                },
                _ => Op::KillStor {
                    path: pick(&mut rng, FILES),
                    len: len + 1,
                    seed,
                },
            }
        })
        .collect()
}

/// Does this step change the tree?
fn mutates(op: &Op) -> bool {
    matches!(
        op,
        Op::Stor { .. }
            | Op::Appe { .. }
            | Op::RestStor { .. }
            | Op::Dele { .. }
            | Op::Rename { .. }
            | Op::Mkd { .. }
            | Op::Rmd { .. }
            | Op::AborStor { .. }
            | Op::StorReset { .. }
            | Op::KillStor { .. }
    )
}

// ------------------------------------------------------------------------ the raw client

/// One control connection, logged in, binary type. The same code drives both servers.
struct Ctl {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
    /// The reference's name for this session: the number in its greeting (0 on the gateway).
    /// Not the client's port, which the kernel gives out again: a killed upload's session
    /// counted as ended on an earlier session's end line from the same port, and the runner
    /// restored the reference's folder while pyftpdlib still held the upload's file open; its
    /// write then landed in the restored file (seed 1790212661, a divergence of the harness).
    session: u64,
    /// The reference's session: pyftpdlib may send a cut transfer's final reply (225, 226,
    /// 426) after the NOOPs of `sync` that were meant to catch it, when it is slow (under load;
    /// seen in a full suite run). A command other than ABOR is never answered with one, so
    /// such a reply is a late one and is skipped. Never set for the gateway, whose every
    /// reply is compared.
    late_finals: bool,
    /// The reference's session: the data connections its server has closed so far, by
    /// session (`Reference::closed`), and how many this client opened. After a cut transfer
    /// `sync` waits until the server has closed them all: pyftpdlib, when slow, took a data
    /// connection of a RETR that the client had reset as the next transfer's, and answered
    /// that one 426 (seed 3611070871).
    closed: Option<Closed>,
    opened: u64,
    /// The latest reply read, for the final read-back's errors.
    last_reply: String,
    /// This step's downloads, listings and uploads connect to the passive port only after
    /// the transfer command's 150 (as some clients do), and not at all when it is refused.
    late: bool,
}

fn code(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// The loopback address every connection of this runner comes from, drawn once per process
/// (127.1–254.x.y): both servers take a passive connection from the control connection's
/// address only, so that a connection another program makes to a port that was its own a
/// moment ago, and that the kernel gave one of these servers since, is refused instead of
/// taken for this runner's. Every other process connects from 127.0.0.1. Such a stray
/// connection (from the FTP test suite, or another worker of `bench/diff_long.sh`) made the
/// runner's own connection to its passive port refused, at the gateway or at the reference
/// alike: a program connecting to random ports of the kernel's range beside a batch gave 4
/// divergences in 118 sequences (bench/README.md, round 21).
fn source_ip() -> Ipv4Addr {
    static IP: OnceLock<Ipv4Addr> = OnceLock::new();
    *IP.get_or_init(|| {
        Ipv4Addr::new(
            127,
            rand::random_range(1..=254),
            rand::random(),
            rand::random_range(1..=254),
        )
    })
}

/// What pyftpdlib sends, unasked, on the control connection when it refuses a passive
/// connection from another address than the session's.
const FOREIGN_REFUSED: &str = "425 Rejected data connection from foreign address";

/// A connection to `port` on 127.0.0.1 from [`source_ip`].
async fn connect_from_own_ip(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(source_ip().into(), 0))?;
    s.connect(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
        .await
}

impl Ctl {
    async fn connect(port: u16) -> Result<Ctl, String> {
        let s = connect_from_own_ip(port)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = s.set_nodelay(true);
        let (r, w) = s.into_split();
        let mut c = Ctl {
            r: BufReader::new(r),
            w,
            session: 0,
            late_finals: false,
            closed: None,
            opened: 0,
            last_reply: String::new(),
            late: false,
        };
        let greeting = c.reply().await?;
        c.session = greeting
            .trim_end()
            .rsplit_once(", session ")
            .and_then(|(_, n)| n.parse().ok())
            .unwrap_or(0);
        for (line, want) in [
            ("", greeting),
            (&format!("USER {USER}") as &str, String::new()),
            (&format!("PASS {PASSWORD}"), String::new()),
            ("TYPE I", String::new()),
        ] {
            let r = if line.is_empty() {
                want
            } else {
                c.cmd(line).await?
            };
            if code(&r) >= 400 || code(&r) < 200 {
                return Err(format!("{line:?}: {r}"));
            }
        }
        Ok(c)
    }

    async fn send(&mut self, line: &str) -> Result<(), String> {
        self.w
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .map_err(|e| format!("send {line:?}: {e}"))
    }

    /// One whole reply (every line of a multi-line one).
    async fn reply(&mut self) -> Result<String, String> {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(REPLY_WAIT, self.r.read_line(&mut line))
                .await
                .map_err(|_| format!("no reply within {REPLY_WAIT:?} (so far {all:?})"))?
                .map_err(|e| format!("reading a reply: {e}"))?;
            if n == 0 {
                return Err(format!("control connection closed (so far {all:?})"));
            }
            if self.late_finals && all.is_empty() && line.starts_with(FOREIGN_REFUSED) {
                // pyftpdlib's word that it refused a stray connection (see `source_ip`),
                // sent unasked: it answers no command.
                continue;
            }
            all.push_str(&line);
            let first = all.as_bytes();
            if first.len() < 4 {
                return Err(format!("malformed reply {all:?}"));
            }
            // A multi-line reply ends with a line "NNN " of the same code.
            if first[3] != b'-'
                || (all.len() != line.len() && line.starts_with(&format!("{} ", &all[..3])))
            {
                self.last_reply = all.trim_end().to_string();
                return Ok(all);
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> Result<String, String> {
        self.send(line).await?;
        let mut r = self.reply().await?;
        for _ in 0..3 {
            if !(self.late_finals
                && !line.starts_with("ABOR")
                && [225, 226, 426].contains(&code(&r)))
            {
                break;
            }
            r = self.reply().await?;
        }
        Ok(r)
    }

    /// This session as the reference's (see `late_finals` and `closed`).
    fn reference(mut self, closed: &Closed) -> Ctl {
        assert_ne!(
            self.session, 0,
            "the reference's greeting names no session: is tests/ftp_reference.py the current one?"
        );
        self.late_finals = true;
        self.closed = Some(closed.clone());
        self
    }

    /// EPSV, then a connection to the announced port.
    async fn pasv(&mut self) -> Result<TcpStream, String> {
        let port = self.epsv().await?;
        self.open_data(port).await
    }

    /// EPSV: the announced port.
    async fn epsv(&mut self) -> Result<u16, String> {
        let r = self.cmd("EPSV").await?;
        r.split("(|||")
            .nth(1)
            .and_then(|x| x.split('|').next())
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| format!("EPSV: {r}"))
    }

    /// A data connection to `port`.
    async fn open_data(&mut self, port: u16) -> Result<TcpStream, String> {
        let data = connect_from_own_ip(port)
            .await
            .map_err(|e| format!("data connection: {e}"))?;
        self.opened += 1;
        Ok(data)
    }

    /// The data connection of a transfer command: made before the command is sent, or
    /// (`late`) once it is answered 150 and not at all when it is refused. Returns the
    /// command's first reply.
    async fn transfer(&mut self, line: &str) -> Result<(String, Option<TcpStream>), String> {
        if self.late {
            let port = self.epsv().await?;
            let r = self.cmd(line).await?;
            if !preliminary(&r) {
                return Ok((r, None));
            }
            let data = self.open_data(port).await?;
            return Ok((r, Some(data)));
        }
        let data = self.pasv().await?;
        let r = self.cmd(line).await?;
        Ok((r, Some(data)))
    }

    /// NOOP, then replies up to its 200: whatever an abort left unread is read.
    async fn sync(&mut self) -> Result<(), String> {
        if let Some(closed) = &self.closed {
            // At most a second: a data connection that pyftpdlib had not yet accepted when
            // the transfer was cut is dropped without a close to report; the count then
            // starts again from what was reported.
            let count = || {
                closed
                    .lock()
                    .unwrap()
                    .get(&self.session)
                    .copied()
                    .unwrap_or(0)
            };
            for _ in 0..200 {
                if count() >= self.opened {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.opened = count();
        }
        // Twice: a reply still on its way behind the first NOOP's 200 is read by the second.
        // (pyftpdlib may answer a cut transfer even later; the reference skips such late
        // finals, see `late_finals`. A pause of 150 ms here cost half of every FTP sequence's
        // time and caught nothing over 300 sequences without it.)
        for _ in 0..2 {
            self.send("NOOP").await?;
            let mut got = false;
            for _ in 0..5 {
                if code(&self.reply().await?) == 200 {
                    got = true;
                    break;
                }
            }
            if !got {
                return Err("no 200 to NOOP after five replies".into());
            }
        }
        Ok(())
    }
}

/// Whether `op`'s data connection is made after its command (one transfer in four; a
/// function of the step alone, so both servers and every replay see the same).
fn connects_late(op: &Op) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in format!("{op:?}").bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h.is_multiple_of(4)
}

/// The type of the entry in a MLST reply, with a file's size; the code of a refusal. `None`
/// for a reply of another form.
fn mlst_facts(r: &str) -> Option<String> {
    match code(r) {
        250 => {
            let line = r.lines().find(|l| l.starts_with(' '))?;
            let facts = line.trim_start().split_once(' ')?.0.to_ascii_lowercase();
            let fact = |k: &str| {
                facts
                    .split(';')
                    .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                    .map(str::to_string)
            };
            match fact("type")?.as_str() {
                "file" => Some(format!("file {}", fact("size")?)),
                "dir" | "cdir" => Some("dir".to_string()),
                _ => None,
            }
        }
        n if n >= 400 => Some(n.to_string()),
        _ => None,
    }
}

/// A simple command's result.
fn simple(r: Result<String, String>) -> Res {
    match r {
        Ok(r) if (200..400).contains(&code(&r)) => Res::Ok,
        Ok(r) if code(&r) >= 400 => Res::Err(code(&r)),
        Ok(r) => Res::Broken(r),
        Err(e) => Res::Broken(e),
    }
}

fn preliminary(r: &str) -> bool {
    (100..200).contains(&code(r))
}

/// A download or listing: its bytes and its final reply.
async fn fetch(c: &mut Ctl, line: &str) -> Result<Result<Vec<u8>, u16>, String> {
    let (r, data) = c.transfer(line).await?;
    let Some(mut data) = data.filter(|_| preliminary(&r)) else {
        return Ok(Err(code(&r)));
    };
    let mut buf = Vec::new();
    tokio::time::timeout(REPLY_WAIT, data.read_to_end(&mut buf))
        .await
        .map_err(|_| "data never ended".to_string())?
        .map_err(|e| format!("data: {e}"))?;
    let end = c.reply().await?;
    Ok(if code(&end) == 226 || code(&end) == 250 {
        Ok(buf)
    } else {
        Err(code(&end))
    })
}

/// An upload over a new data connection ended cleanly.
async fn upload(c: &mut Ctl, line: &str, body: &[u8]) -> Res {
    let run = async {
        let (r, data) = c.transfer(line).await?;
        let Some(mut data) = data.filter(|_| preliminary(&r)) else {
            return Ok(Res::Err(code(&r)));
        };
        data.write_all(body)
            .await
            .map_err(|e| format!("data: {e}"))?;
        data.shutdown().await.map_err(|e| format!("data: {e}"))?;
        drop(data);
        Ok::<_, String>(simple(Ok(c.reply().await?)))
    };
    run.await.unwrap_or_else(Res::Broken)
}

fn names_of(kind: &str, text: &[u8]) -> Result<Vec<(String, bool, Option<u64>)>, String> {
    let text = std::str::from_utf8(text).map_err(|e| format!("{kind}: {e}"))?;
    let mut out = Vec::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        match kind {
            "MLSD" => {
                let (facts, name) = line
                    .split_once(' ')
                    .ok_or_else(|| format!("MLSD line {line:?}"))?;
                let fact = |f: &str| {
                    facts.split(';').find_map(|kv| {
                        kv.split_once('=')
                            .filter(|(k, _)| k.eq_ignore_ascii_case(f))
                            .map(|(_, v)| v.to_string())
                    })
                };
                let ty = fact("type").unwrap_or_default().to_ascii_lowercase();
                if ty == "cdir" || ty == "pdir" {
                    continue;
                }
                let dir = ty == "dir";
                let size = if dir {
                    None
                } else {
                    fact("size").and_then(|s| s.parse().ok())
                };
                out.push((name.to_string(), dir, size));
            }
            "LIST" => {
                // `ls -l`: mode, links, owner, group, size, month, day, time or year, name.
                let mut rest = line;
                let mut fields = Vec::new();
                for _ in 0..8 {
                    rest = rest.trim_start();
                    let end = rest
                        .find(' ')
                        .ok_or_else(|| format!("LIST line {line:?}"))?;
                    fields.push(&rest[..end]);
                    rest = &rest[end..];
                }
                let name = rest.strip_prefix(' ').unwrap_or(rest).trim_start();
                let dir = fields[0].starts_with('d');
                let size = if dir { None } else { fields[4].parse().ok() };
                out.push((name.to_string(), dir, size));
            }
            _ => {
                let name = line.rsplit('/').next().unwrap_or(line);
                out.push((name.to_string(), false, None));
            }
        }
    }
    out.sort();
    Ok(out)
}

// ------------------------------------------------------------------------ the two sides

/// Lines the reference printed: which sessions (by the number in their greeting) have ended.
type Gone = Arc<Mutex<HashSet<u64>>>;
/// Lines the reference printed: how many data connections each session's server closed.
type Closed = Arc<Mutex<std::collections::HashMap<u64, u64>>>;

struct Reference {
    _dir: tempfile::TempDir,
    root: PathBuf,
    port: u16,
    gone: Gone,
    closed: Closed,
    _child: tokio::process::Child,
}

impl Reference {
    async fn start() -> Reference {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ftp_reference.py");
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(&root)
            .arg(USER)
            .arg(PASSWORD)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 (scripts/install-test-tools.sh)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the reference FTP server did not start within 30 s")
            .unwrap();
        let port = match first.as_deref().and_then(|l| l.strip_prefix("port ")) {
            Some(p) => p.parse().unwrap(),
            None => panic!(
                "the reference FTP server (pyftpdlib) did not start: {first:?}; \
                 run scripts/install-test-tools.sh"
            ),
        };
        let gone: Gone = Arc::default();
        let closed: Closed = Arc::default();
        let (g, c) = (gone.clone(), closed.clone());
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                if let Some(p) = l.strip_prefix("gone ").and_then(|p| p.parse().ok()) {
                    g.lock().unwrap().insert(p);
                }
                if let Some(p) = l.strip_prefix("closed ").and_then(|p| p.parse().ok()) {
                    *c.lock().unwrap().entry(p).or_default() += 1;
                }
            }
        });
        Reference {
            _dir: dir,
            root,
            port,
            gone,
            closed,
            _child: child,
        }
    }

    /// Waits until reference session `session` has ended.
    async fn await_gone(&self, session: u64) -> Result<(), String> {
        for _ in 0..2000 {
            if self.gone.lock().unwrap().remove(&session) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!("the reference never ended session {session}"))
    }
}

/// FTP sessions the gateway process has open (its metrics gauge).
fn gateway_sessions() -> f64 {
    bucketgate_protocols::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix("bucketgate_sessions_active{protocol=\"ftp\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The tests of this file share the process-wide session gauge: one runs at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tree: path → folder (None) or file bytes.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

struct Env {
    h: Harness,
    reference: Reference,
    g: Ctl,
    r: Ctl,
    n: usize,
    /// Steps both sides refused with different codes, and the accepted deviations, by kind.
    codes: BTreeMap<String, usize>,
    /// Object bytes read from the bucket before, by key and ETag.
    seen: s3_support::Contents,
    /// Steps run and the time they took, by kind (printed at the end).
    times: BTreeMap<String, (usize, Duration)>,
}

impl Env {
    async fn start() -> Env {
        // moto: s3s-fs keeps no empty folders, which every sequence makes. With
        // BUCKETGATE_TEST_S3_* set, that server instead (bench/README.md).
        let h = Harness::start(Setup {
            s3: Some(S3Server::EnvOrMoto),
            ..Setup::default()
        })
        .await;
        println!(
            "S3 server: {}",
            h.bucket.as_ref().map(|b| b.server.name).unwrap_or_default()
        );
        let reference = Reference::start().await;
        let g = Ctl::connect(h.addr.port()).await.expect("gateway login");
        let r = Ctl::connect(reference.port)
            .await
            .expect("reference login")
            .reference(&reference.closed);
        Env {
            h,
            reference,
            g,
            r,
            n: 0,
            codes: BTreeMap::new(),
            seen: s3_support::Contents::new(),
            times: BTreeMap::new(),
        }
    }

    fn count(&mut self, what: String) {
        *self.codes.entry(what).or_default() += 1;
    }

    /// The bucket under the user's folder `rel`, straight from S3: every object's bytes and
    /// every folder (an object whose ETag is unchanged since the last read is not fetched again).
    async fn bucket(&mut self, rel: &str) -> Tree {
        let b = self.h.bucket.as_ref().unwrap();
        let key = b.key(rel);
        s3_support::tree_cached(&b.client, &key, &mut self.seen).await
    }
}

/// The reference's folder, straight from disk.
fn disk_tree(root: &Path) -> Tree {
    fn walk(root: &Path, rel: &str, t: &mut Tree) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if e.file_type().unwrap().is_dir() {
                t.insert(path.clone(), None);
                walk(root, &path, t);
            } else {
                t.insert(path, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    let mut t = Tree::new();
    walk(root, "", &mut t);
    t
}

/// Makes the reference folder equal to `want`.
fn restore_all(root: &Path, want: &Tree) {
    let have = disk_tree(root);
    // Deepest first, so a folder's contents go before it.
    for path in have.keys().rev() {
        if !want.contains_key(path) {
            let p = root.join(path);
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else if p.exists() {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
    for (path, v) in want {
        if have.get(path) == Some(v) {
            continue;
        }
        let p = root.join(path);
        match v {
            Some(bytes) => {
                if p.is_dir() {
                    std::fs::remove_dir_all(&p).unwrap();
                }
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, bytes).unwrap();
            }
            None => {
                if p.is_file() {
                    std::fs::remove_file(&p).unwrap();
                }
                std::fs::create_dir_all(&p).unwrap();
            }
        }
    }
}

fn tree_view(t: &Tree) -> Vec<String> {
    t.iter()
        .map(|(k, v)| match v {
            None => format!("{k}/"),
            Some(b) => format!("{k} ({} bytes, {:02x?})", b.len(), &b[..b.len().min(8)]),
        })
        .collect()
}

/// A tree read through the protocol (MLSD for names and types, RETR for bytes).
async fn proto_tree(c: &mut Ctl, root: &str) -> Result<Tree, String> {
    let mut t = Tree::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let dir = if rel.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{rel}")
        };
        let text = fetch(c, &format!("MLSD {dir}"))
            .await?
            .map_err(|code| format!("MLSD {dir}: {code} ({:?})", c.last_reply))?;
        for (name, is_dir, _) in names_of("MLSD", &text)? {
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if is_dir {
                t.insert(path.clone(), None);
                todo.push(path);
            } else {
                let b = fetch(c, &format!("RETR {root}/{path}"))
                    .await?
                    .map_err(|code| format!("RETR {path}: {code} ({:?})", c.last_reply))?;
                t.insert(path, Some(b));
            }
        }
    }
    Ok(t)
}

// ------------------------------------------------------------------------ one sequence

struct Run<'a> {
    env: &'a mut Env,
    /// The sequence's folder, the same name on both sides (`/sN`).
    root: String,
    /// The working folder, relative to `root` (both sides are kept in the same one).
    cwd: String,
    log: Vec<String>,
    /// The bucket as the last step left it (read once per step: it is the next step's
    /// "before").
    last: Option<Tree>,
}

impl Run<'_> {
    fn refroot(&self) -> PathBuf {
        self.env
            .reference
            .root
            .join(self.root.trim_start_matches('/'))
    }

    async fn gstate(&mut self) -> Tree {
        let root = self.root.clone();
        self.env.bucket(root.trim_start_matches('/')).await
    }

    fn names(&self) -> Names {
        Names {
            root: self.root.clone(),
            cwd: self.cwd.clone(),
        }
    }
}

/// The REST offset for `at` over the file's size before the step.
fn offset(at: Rest, before: &Tree, path: &str) -> u64 {
    let size = match before.get(path) {
        Some(Some(b)) => b.len() as u64,
        _ => 0,
    };
    match at {
        Rest::Size => size,
        Rest::Mid(x) => x % (size + 1),
        Rest::Beyond(k) => size + k,
    }
}

/// Where the client stands: the sequence's folder and the working folder below it.
struct Names {
    root: String,
    cwd: String,
}

impl Names {
    /// How the client names `path` (relative to the sequence's folder) from the working
    /// folder: relative below it, absolute elsewhere.
    fn arg(&self, path: &str) -> String {
        if path.is_empty() {
            return self.root.clone();
        }
        if !self.cwd.is_empty() {
            if let Some(rel) = path.strip_prefix(&format!("{}/", self.cwd)) {
                return rel.to_string();
            }
        }
        if self.cwd.is_empty() {
            path.to_string()
        } else {
            format!("{}/{path}", self.root)
        }
    }

    /// Runs `op` on one side.
    async fn on(&self, c: &mut Ctl, op: &Op, before: &Tree) -> Res {
        c.late = connects_late(op);
        let res: Result<Res, String> = async {
            Ok(match *op {
                Op::Stor { path, len, seed } => {
                    upload(
                        c,
                        &format!("STOR {}", self.arg(path)),
                        &s3_support::data(len, seed),
                    )
                    .await
                }
                Op::Appe { path, len, seed } => {
                    upload(
                        c,
                        &format!("APPE {}", self.arg(path)),
                        &s3_support::data(len, seed),
                    )
                    .await
                }
                Op::RestStor {
                    path,
                    at,
                    len,
                    seed,
                } => {
                    let n = offset(at, before, path);
                    let r = c.cmd(&format!("REST {n}")).await?;
                    if code(&r) != 350 {
                        return Ok(Res::Err(code(&r)));
                    }
                    upload(
                        c,
                        &format!("STOR {}", self.arg(path)),
                        &s3_support::data(len, seed),
                    )
                    .await
                }
                Op::Retr { path } => match fetch(c, &format!("RETR {}", self.arg(path))).await? {
                    Ok(b) => Res::Bytes(b),
                    Err(code) => Res::Err(code),
                },
                Op::RestRetr { path, at } => {
                    let n = offset(at, before, path);
                    let r = c.cmd(&format!("REST {n}")).await?;
                    if code(&r) != 350 {
                        return Ok(Res::Err(code(&r)));
                    }
                    match fetch(c, &format!("RETR {}", self.arg(path))).await? {
                        Ok(b) => Res::Bytes(b),
                        Err(code) => Res::Err(code),
                    }
                }
                Op::Dele { path } => simple(c.cmd(&format!("DELE {}", self.arg(path))).await),
                Op::Rename { from, to } => {
                    let r = c.cmd(&format!("RNFR {}", self.arg(from))).await?;
                    if code(&r) != 350 {
                        return Ok(Res::Err(code(&r)));
                    }
                    simple(c.cmd(&format!("RNTO {}", self.arg(to))).await)
                }
                Op::Mkd { path } => simple(c.cmd(&format!("MKD {}", self.arg(path))).await),
                Op::Rmd { path } => simple(c.cmd(&format!("RMD {}", self.arg(path))).await),
                Op::Size { path } => {
                    let r = c.cmd(&format!("SIZE {}", self.arg(path))).await?;
                    let size = match code(&r) {
                        213 => r[4..].trim().to_string(),
                        n if n >= 400 => n.to_string(),
                        _ => return Ok(Res::Broken(r)),
                    };
                    // And MLST of the same name (RFC 3659): its type, and a file's size. (Sent
                    // with SIZE so that the sequences of earlier seeds stay as they were.)
                    let m = c.cmd(&format!("MLST {}", self.arg(path))).await?;
                    match mlst_facts(&m) {
                        Some(facts) => Res::Size(format!("SIZE {size}, MLST {facts}")),
                        None => Res::Broken(m),
                    }
                }
                Op::Mdtm { path } => {
                    let r = c.cmd(&format!("MDTM {}", self.arg(path))).await?;
                    // The times differ (two servers); the reply's form must be YYYYMMDDHHMMSS.
                    match code(&r) {
                        213 if r[4..].trim().len() >= 14
                            && r[4..18].bytes().all(|b| b.is_ascii_digit()) =>
                        {
                            Res::Ok
                        }
                        213 => Res::Broken(r),
                        _ => simple(Ok(r)),
                    }
                }
                Op::Mlsd { dir } | Op::List { dir } | Op::Nlst { dir } => {
                    let kind = match op {
                        Op::Mlsd { .. } => "MLSD",
                        Op::List { .. } => "LIST",
                        _ => "NLST",
                    };
                    match fetch(c, &format!("{kind} {}", self.arg(dir))).await? {
                        Ok(text) => Res::Names(names_of(kind, &text)?),
                        Err(code) => Res::Err(code),
                    }
                }
                Op::Cwd { dir } => {
                    let r = simple(c.cmd(&format!("CWD {}", self.arg(dir))).await);
                    if r != Res::Ok {
                        return Ok(r);
                    }
                    let p = c.cmd("PWD").await?;
                    match p.split('"').nth(1) {
                        Some(d) => Res::Pwd(d.to_string()),
                        None => Res::Broken(p),
                    }
                }
                Op::Cdup => {
                    let r = simple(c.cmd("CDUP").await);
                    if r != Res::Ok {
                        return Ok(r);
                    }
                    let p = c.cmd("PWD").await?;
                    match p.split('"').nth(1) {
                        Some(d) => Res::Pwd(d.to_string()),
                        None => Res::Broken(p),
                    }
                }
                Op::AborStor { path, len, seed } => {
                    let mut data = c.pasv().await?;
                    let r = c.cmd(&format!("STOR {}", self.arg(path))).await?;
                    if !preliminary(&r) {
                        return Ok(Res::Err(code(&r)));
                    }
                    data.write_all(&s3_support::data(len, seed))
                        .await
                        .map_err(|e| format!("data: {e}"))?;
                    // The data connection stays open: the transfer cannot have ended.
                    c.send("ABOR").await?;
                    // 426 for the transfer, then the ABOR's 226; pyftpdlib answers a lone 225
                    // when no byte has arrived yet. The rest is read by the NOOP of `sync`.
                    let first = c.reply().await?;
                    drop(data);
                    c.sync().await?;
                    Res::Cut(format!("ABOR {}xx", code(&first) / 100))
                }
                Op::AborRetr { path } => {
                    let data = c.pasv().await?;
                    let r = c.cmd(&format!("RETR {}", self.arg(path))).await?;
                    if !preliminary(&r) {
                        return Ok(Res::Err(code(&r)));
                    }
                    c.send("ABOR").await?;
                    // The transfer may have ended before the ABOR (226, then "nothing to
                    // abort") or not (426, then 226): the replies are read by the NOOP of
                    // `sync`, not compared.
                    drop(data);
                    c.sync().await?;
                    Res::Cut("RETR aborted".into())
                }
                Op::RetrClosed { path } => {
                    let data = c.pasv().await?;
                    let r = c.cmd(&format!("RETR {}", self.arg(path))).await?;
                    if !preliminary(&r) {
                        return Ok(Res::Err(code(&r)));
                    }
                    let _ = socket2::SockRef::from(&data).set_linger(Some(Duration::ZERO));
                    drop(data);
                    // 226 or 426, depending on whether the file was sent before the reset;
                    // pyftpdlib may answer nothing. Read by the NOOP of `sync`, not compared.
                    c.sync().await?;
                    Res::Cut("RETR closed".into())
                }
                Op::StorReset { path, len, seed } => {
                    let mut data = c.pasv().await?;
                    let r = c.cmd(&format!("STOR {}", self.arg(path))).await?;
                    if !preliminary(&r) {
                        return Ok(Res::Err(code(&r)));
                    }
                    data.write_all(&s3_support::data(len, seed))
                        .await
                        .map_err(|e| format!("data: {e}"))?;
                    // A moment for the server to take the data connection: pyftpdlib never
                    // answers a STOR whose data connection was reset before it accepted it
                    // (the gateway's side of that race: `ftp_errors`).
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    let _ = socket2::SockRef::from(&data).set_linger(Some(Duration::ZERO));
                    drop(data);
                    let end = c.reply().await?;
                    c.sync().await?;
                    match code(&end) {
                        200..=299 => Res::Cut("2xx".into()),
                        n => Res::Err(n),
                    }
                }
                Op::KillStor { .. } => unreachable!("run by `kill_stor`"),
            })
        }
        .await;
        res.unwrap_or_else(Res::Broken)
    }

    /// The working folder, absolute.
    fn dir(&self) -> String {
        if self.cwd.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, self.cwd)
        }
    }

    /// A client killed mid-STOR, on one side (a session of its own, in the working folder):
    /// the STOR's refusal, or `Cut` once the client is gone.
    async fn kill_stor(&self, port: u16, path: &str, body: &[u8]) -> Result<(Res, u64), String> {
        let mut c = Ctl::connect(port).await?;
        let r = c.cmd(&format!("CWD {}", self.dir())).await?;
        if code(&r) != 250 {
            // The working folder was removed meanwhile (RMD of the folder the session is in):
            // a STOR from there is refused on both sides, as this CWD is (seed 2777093388).
            return Ok((Res::Err(code(&r)), 0));
        }
        let c = &mut c;
        let mut data = c.pasv().await?;
        let r = c.cmd(&format!("STOR {}", self.arg(path))).await?;
        if !preliminary(&r) {
            return Ok((Res::Err(code(&r)), 0));
        }
        data.write_all(body)
            .await
            .map_err(|e| format!("data: {e}"))?;
        // The kernel of a killed process closes its sockets one after the other.
        drop(data);
        Ok((Res::Cut("killed".into()), c.session))
    }
}

impl Run<'_> {
    /// A new reference session in the working folder, once the old one has ended.
    async fn replace_reference(&mut self) -> Result<(), String> {
        let dir = self.names().dir();
        let mut fresh = Ctl::connect(self.env.reference.port)
            .await?
            .reference(&self.env.reference.closed);
        let r = fresh.cmd(&format!("CWD {dir}")).await?;
        if code(&r) != 250 {
            return Err(format!("CWD {dir}: {r}"));
        }
        let old = std::mem::replace(&mut self.env.r, fresh);
        let session = old.session;
        drop(old);
        self.env.reference.await_gone(session).await
    }

    /// Waits until the gateway has no FTP session but the runner's own and no upload in
    /// progress, and the reference has ended its session `rsession`: a killed
    /// client's upload has been committed or given up on both. (libunftp's data task outlives
    /// its session: an upload it began before the session ended is given up a moment later,
    /// seed 2351912389; one it begins after takes no name.)
    async fn await_ended(&self, rsession: u64) -> Result<(), String> {
        let mut waited = 0;
        while gateway_sessions() > 1.0 || self.env.h.tree.uploads_in_progress() > 0 {
            waited += 1;
            // The session gauge is the process's: another test file's FTP session counts too
            // (one holds its session 14 s on purpose), hence the long bound.
            if waited == 2000 {
                eprintln!(
                    "still waiting after 10 s: {} FTP sessions, {} uploads in progress",
                    gateway_sessions(),
                    self.env.h.tree.uploads_in_progress()
                );
            }
            if waited > 12000 {
                return Err("the gateway never ended the killed session or its upload".into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.env.reference.await_gone(rsession).await
    }

    /// Runs one step on both sides and judges it. Err: a failure, described.
    async fn step(&mut self, op: &Op) -> Result<(), String> {
        if matches!(op, Op::Cdup) && self.cwd.is_empty() {
            // Never above the sequence's folder.
            return Ok(());
        }
        if let Op::Cwd { dir } = op {
            if dir.is_empty() && self.cwd.is_empty() {
                return Ok(());
            }
        }
        let gbefore = match self.last.take() {
            Some(t) => t,
            None => self.gstate().await,
        };
        let rbefore = disk_tree(&self.refroot());
        let names = self.names();
        let (g, r) = if let Op::KillStor { path, len, seed } = *op {
            let body = s3_support::data(len, seed);
            let (g, _) = names
                .kill_stor(self.env.h.addr.port(), path, &body)
                .await
                .unwrap_or_else(|e| (Res::Broken(e), 0));
            let (r, rsession) = names
                .kill_stor(self.env.reference.port, path, &body)
                .await
                .unwrap_or_else(|e| (Res::Broken(e), 0));
            if rsession != 0 {
                self.await_ended(rsession).await?;
            }
            (g, r)
        } else {
            // Both sides at once: a cut transfer waits for late replies on each.
            let env = &mut *self.env;
            tokio::join!(
                names.on(&mut env.g, op, &gbefore),
                names.on(&mut env.r, op, &rbefore)
            )
        };
        self.log.push(format!(
            "{op:?} [cwd {:?}] => gateway {g:?}, reference {r:?}",
            self.cwd
        ));
        // pyftpdlib may still miss a reset data connection on a loaded machine and never
        // answer the STOR. Its session is replaced and the gateway is judged on its own: the
        // interrupted upload must be refused and store nothing (the rules below).
        let r = match (op, r) {
            (Op::StorReset { .. }, Res::Broken(why)) if !matches!(g, Res::Broken(_)) => {
                self.replace_reference().await?;
                self.log
                    .push(format!("  the reference gave no reply ({why}): replaced"));
                Res::Err(0)
            }
            // After any other cut transfer the reference's session is replaced too: a loaded
            // pyftpdlib mixed a reset data connection's end into the session's next transfer
            // (426 or no reply to a later LIST or APPE: seeds 3611070871, 2313329704). The
            // gateway's session goes on: how it carries on after a cut is what is tested.
            (
                Op::AborStor { .. }
                | Op::AborRetr { .. }
                | Op::RetrClosed { .. }
                | Op::StorReset { .. },
                r,
            ) if !matches!(r, Res::Broken(_)) => {
                // (Not from a working folder that was removed: a new session cannot enter it,
                // seeds 1523827933, 1440835425.)
                if self.refroot().join(&self.cwd).is_dir() {
                    self.replace_reference().await?;
                }
                r
            }
            (_, r) => r,
        };
        if matches!(g, Res::Broken(_)) || matches!(r, Res::Broken(_)) {
            return Err(format!(
                "no proper reply at {op:?}:\n  gateway   {g:?}\n  reference {r:?}"
            ));
        }
        // Track the working folder (both sides agree, or this step fails below).
        if g == r {
            if let Res::Pwd(p) = &g {
                self.cwd = p
                    .strip_prefix(&self.root)
                    .unwrap_or("")
                    .trim_start_matches('/')
                    .to_string();
            }
        }
        let now = self.gstate().await;
        // Cut uploads that both servers began: the gateway's side must change nothing,
        // whatever the reference did (docs/objects.md, "Files being uploaded").
        // (A STOR that the reference refuses at once, into a missing folder, is refused by
        // the gateway only at the end of its transfer: libunftp answers 150 before it asks the
        // storage. Such a cut upload is judged as a refusal below.)
        let began = matches!(g, Res::Cut(_)) && !r.is_err();
        let strict = match op {
            // "An aborted STOR stores nothing and is answered 426, then the ABOR 226".
            Op::AborStor { .. } if began => Some((
                "an aborted STOR stores nothing",
                g == Res::Cut("ABOR 4xx".into()),
            )),
            // "An interrupted upload (a dropped connection, an error ...) leaves nothing":
            // refused, never 226.
            Op::StorReset { .. } if g == Res::Cut("2xx".into()) => {
                Some(("an interrupted upload stores nothing", false))
            }
            // "a client killed mid-upload ... nothing is stored".
            Op::KillStor { .. } if began => Some(("a killed client's STOR stores nothing", true)),
            _ => None,
        };
        if let Some((rule, reply_ok)) = strict {
            if !reply_ok || now != gbefore {
                return Err(format!(
                    "{rule}: violated at {op:?}: gateway {g:?}\n  before {:?}\n  after  {:?}",
                    tree_view(&gbefore),
                    tree_view(&now)
                ));
            }
            restore_all(&self.refroot(), &rbefore);
            return self.check_trees(now);
        }
        if g == r {
            return self.check_trees(now);
        }
        let rule = match *op {
            // docs/objects.md, "Writes, appends, resume": "REST n + STOR with another n than 0
            // or the size (an in-place write over FTP) ... refused with 554 before any data
            // moves".
            Op::RestStor { at, path, .. }
                if g == Res::Err(554) && {
                    let n = offset(at, &gbefore, path);
                    let size = match gbefore.get(path) {
                        Some(Some(b)) => Some(b.len() as u64),
                        _ => None,
                    };
                    size.is_some() && n != 0 && Some(n) != size
                } =>
            {
                Some("REST n + STOR with n not 0 nor the size is refused with 554")
            }
            // docs/objects.md, "Files being uploaded": "An interrupted upload ... leaves
            // nothing" (pyftpdlib takes a reset data connection as the end of the file).
            Op::StorReset { .. } if g.is_err() => Some("an interrupted upload stores nothing"),
            // A cut upload into a folder that does not exist: refused by the reference at
            // once, by the gateway at the end (nothing stored either way).
            Op::AborStor { .. } | Op::KillStor { .. } if r.is_err() && matches!(g, Res::Cut(_)) => {
                Some("a STOR refused at its end, not at once")
            }
            // docs/objects.md, "Documented deviations": "A rename onto an existing folder is
            // refused" (rename(2) replaces an empty one).
            Op::Rename { to, .. } if g.is_err() && gbefore.get(to) == Some(&None) => {
                Some("a rename onto an existing folder is refused")
            }
            _ => None,
        };
        let rule = match rule {
            None if g.is_err() && r.is_err() => {
                let kind = format!("{op:?}");
                let kind = kind.split([' ', '{']).next().unwrap_or_default();
                self.env
                    .count(format!("{kind}: gateway {g:?}, reference {r:?}"));
                Some("both refused")
            }
            rule => rule,
        };
        let Some(rule) = rule.filter(|_| g.is_err() || matches!(g, Res::Cut(_))) else {
            return Err(format!(
                "divergence at {op:?}:\n  gateway   {g:?}\n  reference {r:?}"
            ));
        };
        // An accepted refusal: nothing may have changed on the gateway.
        if now != gbefore {
            return Err(format!(
                "refusal ({rule}) at {op:?} changed the bucket:\n  before {:?}\n  after  {:?}",
                tree_view(&gbefore),
                tree_view(&now)
            ));
        }
        if mutates(op) {
            restore_all(&self.refroot(), &rbefore);
        }
        self.log.push(format!("  accepted: {rule}"));
        if rule != "both refused" {
            self.env.count(format!("accepted: {rule}"));
        }
        self.check_trees(now)
    }

    /// The bucket and the reference folder hold the same files and folders.
    fn check_trees(&mut self, g: Tree) -> Result<(), String> {
        let r = disk_tree(&self.refroot());
        if g != r {
            return Err(format!(
                "trees differ:\n  bucket    {:?}\n  reference {:?}",
                tree_view(&g),
                tree_view(&r)
            ));
        }
        self.last = Some(g);
        Ok(())
    }

    /// Compares the final trees: through the protocol on both sides, and the bucket.
    async fn finish(&mut self) -> Result<(), String> {
        let root = self.root.clone();
        let gp = proto_tree(&mut self.env.g, &root)
            .await
            .map_err(|e| format!("gateway: {e}"))?;
        let rp = proto_tree(&mut self.env.r, &root)
            .await
            .map_err(|e| format!("reference: {e}"))?;
        if gp != rp {
            return Err(format!(
                "final trees differ:\n  gateway   {:?}\n  reference {:?}",
                tree_view(&gp),
                tree_view(&rp)
            ));
        }
        let b = self.gstate().await;
        if b != gp {
            return Err(format!(
                "the bucket differs from what the gateway shows:\n  bucket  {:?}\n  gateway {:?}",
                tree_view(&b),
                tree_view(&gp)
            ));
        }
        Ok(())
    }
}

/// Runs `ops` in fresh folders; Err: the failure and the steps' log.
async fn run(env: &mut Env, ops: &[Op]) -> Result<(), String> {
    env.n += 1;
    let root = format!("/s{}", env.n);
    for (side, c) in [("gateway", &mut env.g), ("reference", &mut env.r)] {
        let ok = c.cmd(&format!("MKD {root}")).await;
        let cd = c.cmd(&format!("CWD {root}")).await;
        assert!(
            ok.as_ref().is_ok_and(|r| code(r) == 257) && cd.as_ref().is_ok_and(|r| code(r) == 250),
            "{side}: MKD/CWD {root}: {ok:?} {cd:?}"
        );
    }
    let mut run = Run {
        env,
        root,
        cwd: String::new(),
        log: vec![],
        last: None,
    };
    let mut res = Ok(());
    for op in ops {
        let t0 = std::time::Instant::now();
        let stepped = run.step(op).await;
        let kind = format!("{op:?}");
        let kind = kind
            .split([' ', '{'])
            .next()
            .unwrap_or_default()
            .to_string();
        let e = run.env.times.entry(kind).or_default();
        e.0 += 1;
        e.1 += t0.elapsed();
        if let Err(e) = stepped {
            res = Err(e);
            break;
        }
    }
    if res.is_ok() {
        res = run.finish().await;
    } else {
        // A session left in an unknown state is replaced for the next run.
        run.env.g = Ctl::connect(run.env.h.addr.port()).await.expect("login");
        run.env.r = Ctl::connect(run.env.reference.port)
            .await
            .expect("login")
            .reference(&run.env.reference.closed);
    }
    if std::env::var_os("DIFF_VERBOSE").is_some() {
        println!("--- {}:\n  {}", run.root, run.log.join("\n  "));
    }
    res.map_err(|e| format!("{e}\nsteps:\n  {}", run.log.join("\n  ")))
}

/// Drops steps one at a time while the sequence still fails (bounded).
async fn minimize(env: &mut Env, mut ops: Vec<Op>) -> (Vec<Op>, String) {
    let mut last = run(env, &ops).await.err().unwrap_or_default();
    let mut budget = 60;
    let mut i = 0;
    while i < ops.len() && budget > 0 {
        budget -= 1;
        let mut shorter = ops.clone();
        shorter.remove(i);
        match run(env, &shorter).await {
            Err(e) => {
                ops = shorter;
                last = e;
            }
            Ok(()) => i += 1,
        }
    }
    (ops, last)
}

async fn check_seeds(env: &mut Env, seeds: &[u64], mut failures: Vec<String>) {
    let started = std::time::Instant::now();
    for &seed in seeds {
        let ops = generate(seed);
        if let Err(e) = run(env, &ops).await {
            let (min, why) = minimize(env, ops).await;
            failures.push(format!(
                "DIFF_SEED={seed}: {e}\n--- minimized to {} steps:\n{why}\n{min:#?}",
                min.len()
            ));
        }
    }
    println!(
        "{} sequences in {:.1} s; refused by both with other codes, and accepted deviations: {:#?}",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        env.codes
    );
    let mut times: Vec<_> = env.times.iter().collect();
    times.sort_by_key(|(_, (_, d))| std::cmp::Reverse(*d));
    for (kind, (n, d)) in times {
        println!(
            "  {kind}: {n} steps, {:.1} s, {:.1} ms each",
            d.as_secs_f64(),
            d.as_secs_f64() * 1000.0 / *n as f64
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} sequences diverged:\n{}",
        failures.len(),
        seeds.len(),
        failures.join("\n\n")
    );
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().expect(name))
}

/// The CI pass: the regressions, the fixed seeds and a few fresh ones, printed so that a
/// failure can be replayed with DIFF_SEED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_matches_a_reference_ftp_server() {
    let _serial = SERIAL.lock().await;
    let mut env = Env::start().await;
    if let Some(seed) = env_u64("DIFF_SEED") {
        println!("DIFF_SEED={seed}");
        return check_seeds(&mut env, &[seed], vec![]).await;
    }
    let mut failed = Vec::new();
    for (why, ops) in regressions() {
        if let Err(e) = run(&mut env, &ops).await {
            failed.push(format!("regression ({why}): {e}"));
        }
    }
    let fresh = env_u64("DIFF_SEQUENCES").unwrap_or(FRESH as u64);
    let mut seeds = FIXED_SEEDS.to_vec();
    let fresh: Vec<u64> = (0..fresh).map(|_| rand::random::<u32>() as u64).collect();
    println!("fresh seeds (replay one with DIFF_SEED=<n>): {fresh:?}");
    seeds.extend(fresh);
    check_seeds(&mut env, &seeds, failed).await;
}

/// The divergences the runner found, minimized: each must now pass (the fresh seed that found
/// it in parentheses).
fn regressions() -> Vec<(&'static str, Vec<Op>)> {
    vec![
        (
            "every kind of cut transfer over an existing file",
            vec![
                Op::Stor {
                    path: "a",
                    len: 20,
                    seed: 1,
                },
                Op::AborStor {
                    path: "a",
                    len: 5,
                    seed: 2,
                },
                Op::StorReset {
                    path: "a",
                    len: 5,
                    seed: 3,
                },
                Op::KillStor {
                    path: "a",
                    len: 5,
                    seed: 4,
                },
                Op::AborRetr { path: "a" },
                // (REST n + STOR just after the RETR that was cut: its own test below.)
                Op::RestStor {
                    path: "a",
                    at: Rest::Mid(3),
                    len: 4,
                    seed: 5,
                },
                Op::RetrClosed { path: "a" },
                Op::RestStor {
                    path: "a",
                    at: Rest::Size,
                    len: 4,
                    seed: 6,
                },
            ],
        ),
        (
            "LIST and NLST of a file show the file; MLSD of it is refused (433599204)",
            vec![
                Op::Stor {
                    path: "ünï",
                    len: 6,
                    seed: 7,
                },
                Op::Rename {
                    from: "ünï",
                    to: "d",
                },
                Op::Nlst { dir: "d" },
                Op::List { dir: "d" },
                Op::Mlsd { dir: "d" },
                Op::Mkd { path: "a" },
                Op::Stor {
                    path: "a/b",
                    len: 3,
                    seed: 8,
                },
                Op::Nlst { dir: "a/b" },
                Op::List { dir: "a/b" },
            ],
        ),
    ]
}

/// Runs fixed steps; any divergence fails.
async fn strict_steps(ops: Vec<Op>) {
    let _serial = SERIAL.lock().await;
    let mut env = Env::start().await;
    if let Err(e) = run(&mut env, &ops).await {
        panic!("{e}");
    }
}

/// Found by the runner (its regression sequence): after a RETR whose data connection the client
/// reset (and a NOOP answered 200), the reply read for the next REST is a 426, so REST 3 + STOR
/// of a 20-byte file ends in 426 instead of the documented 554 (nothing is stored). Most likely
/// the cut RETR's 426 comes after the NOOP's 200: replies out of command order, in the relay.
/// Reported to be fixed there (the relay is being restructured); this test fails until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_stor_after_a_reset_retr_is_refused_with_554() {
    strict_steps(vec![
        Op::Stor {
            path: "a",
            len: 20,
            seed: 1,
        },
        Op::RetrClosed { path: "a" },
        Op::RestStor {
            path: "a",
            at: Rest::Mid(3),
            len: 4,
            seed: 5,
        },
    ])
    .await;
}
