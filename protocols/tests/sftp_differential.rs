//! Differential runner (issue 15, items 1, 3 and 6): seeded random SFTP operation sequences sent
//! through a real client connection to the gateway, on a mount of a real S3 server (s3s-fs,
//! in-process), and to OpenSSH's own `sftp-server` on a local folder. Every step must give the
//! reference's result, or be refused by the gateway with nothing changed in the bucket. The
//! accepted differences are the documented deviations of `docs/objects.md`, each one a rule
//! below that names its line.
//!
//! `DIFF_SEED=<n>` replays one sequence (printed on failure, with a minimized list of steps);
//! `DIFF_SEQUENCES=<n>` sets how many fresh random sequences run beside the fixed seeds (the
//! long mode, `bench/README.md`).

use crate::sftp_common;
use bucketgate_testkit::s3 as s3_support;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use russh_sftp::client::error::Error as SftpErr;
use russh_sftp::client::RawSftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The name pool: files and folders collide on purpose (a folder `d` and a file `d/a` beside a
/// file `a`), with a space and non-ASCII letters.
const FILES: &[&str] = &["a", "b", "d/a", "sp ace", "ünï", "d/e/c"];
const DIRS: &[&str] = &["d", "d/e"];
/// Open handles at a time.
const SLOTS: usize = 3;
/// Sequences the CI pass always runs. Each divergence found is kept as its minimized steps in
/// `regressions()` (steps, unlike seeds, survive changes of the generator).
/// (797277988 and 96878577: a TRUNC-only open beside a writer, which an intermediate model of
/// the runner got wrong.)
const FIXED_SEEDS: &[u64] = &[
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 797277988, 96878577, 1166278538,
    3371369658,
];
/// Fresh random sequences per CI pass (override with DIFF_SEQUENCES).
const FRESH: usize = 8;

#[derive(Clone, Copy, Debug)]
enum At {
    /// Right after the highest byte this handle wrote.
    Next,
    /// Half over the last bytes written.
    Overlap,
    /// Past the end, leaving a hole.
    Gap(u64),
    /// Offset 0 (of an existing file, without TRUNC: an in-place write).
    Zero,
    /// Anywhere up to the end.
    Mid(u64),
}

#[derive(Clone, Debug)]
enum Op {
    Open {
        sess: usize,
        slot: usize,
        path: &'static str,
        flags: u32,
    },
    Write {
        slot: usize,
        at: At,
        len: usize,
        seed: u64,
    },
    Read {
        slot: usize,
        off: u64,
        len: u32,
    },
    Fstat {
        slot: usize,
    },
    Close {
        slot: usize,
    },
    Stat {
        sess: usize,
        path: &'static str,
        lstat: bool,
    },
    SetMtime {
        path: &'static str,
        mtime: u32,
    },
    SetSize {
        path: &'static str,
        size: u64,
    },
    Rename {
        from: &'static str,
        to: &'static str,
        posix: bool,
    },
    Remove {
        path: &'static str,
    },
    Mkdir {
        path: &'static str,
    },
    Rmdir {
        path: &'static str,
    },
    Readdir {
        sess: usize,
        path: &'static str,
    },
}

/// What a step answered, as a client sees it.
#[derive(Clone, Debug, PartialEq)]
enum Res {
    Ok,
    Handle,
    Bytes(Vec<u8>),
    /// A stat: folder or file, and a file's size.
    Attrs {
        dir: bool,
        size: Option<u64>,
    },
    /// A listing: name, folder?, file size.
    Names(Vec<(String, bool, Option<u64>)>),
    Err(StatusCode),
    /// Not a status reply (a broken session, a timeout).
    Broken(String),
}

impl Res {
    fn is_err(&self) -> bool {
        matches!(self, Res::Err(_) | Res::Broken(_))
    }
}

fn class<T>(r: Result<T, SftpErr>, ok: impl FnOnce(T) -> Res) -> Res {
    match r {
        Ok(v) => ok(v),
        Err(SftpErr::Status(s)) => Res::Err(s.status_code),
        Err(e) => Res::Broken(e.to_string()),
    }
}

fn attrs(a: &FileAttributes) -> Res {
    let dir = a.file_type().is_dir();
    Res::Attrs {
        dir,
        size: if dir { None } else { a.size },
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

/// A sequence of 20 to 40 steps from `seed`.
fn generate(seed: u64) -> Vec<Op> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.random_range(20..=40);
    // Which slots the runner probably holds open: opens go to a free slot and handle steps to
    // a held one, so most steps act on something (an open may still fail at run time).
    let mut held = [false; SLOTS];
    (0..n)
        .map(|_| {
            let kind = rng.random_range(0..120);
            let want_held = (18..=83).contains(&kind);
            let choice: Vec<usize> = (0..SLOTS).filter(|&i| held[i] == want_held).collect();
            let slot = if choice.is_empty() {
                rng.random_range(0..SLOTS)
            } else {
                pick(&mut rng, &choice)
            };
            match kind {
                0..=17 => held[slot] = true,
                73..=83 => held[slot] = false,
                _ => {}
            }
            match kind {
                0..=17 => {
                    // Every flag combination, weighted toward the ones programs use.
                    let flags = if rng.random_bool(0.3) {
                        rng.random_range(0..64u32)
                    } else {
                        pick(
                            &mut rng,
                            &[
                                0x1,  // READ
                                0x1a, // WRITE|CREAT|TRUNC
                                0x0a, // WRITE|CREAT
                                0x02, // WRITE (in place)
                                0x02, 0x03, // READ|WRITE (in place)
                                0x03, // READ|WRITE
                                0x0e, // WRITE|APPEND|CREAT
                                0x2a, // WRITE|CREAT|EXCL
                                0x1b, // READ|WRITE|CREAT|TRUNC
                            ],
                        )
                    };
                    Op::Open {
                        sess: rng.random_range(0..2),
                        slot,
                        path: pick(&mut rng, FILES),
                        flags,
                    }
                }
                18..=59 => Op::Write {
                    slot,
                    at: match rng.random_range(0..6) {
                        0 | 1 => At::Next,
                        2 => At::Overlap,
                        3 => At::Gap(rng.random_range(1..20)),
                        4 => At::Zero,
                        _ => At::Mid(rng.random()),
                    },
                    len: rng.random_range(1..40),
                    seed: rng.random(),
                },
                60..=67 => Op::Read {
                    slot,
                    off: rng.random_range(0..60),
                    len: rng.random_range(1..64),
                },
                68..=72 => Op::Fstat { slot },
                73..=83 => Op::Close { slot },
                84..=91 => Op::Stat {
                    sess: rng.random_range(0..2),
                    path: any_path(&mut rng),
                    lstat: rng.random(),
                },
                92..=93 => Op::SetMtime {
                    path: any_path(&mut rng),
                    mtime: rng.random_range(1_000_000_000..1_700_000_000),
                },
                94..=96 => Op::SetSize {
                    path: pick(&mut rng, FILES),
                    size: pick(&mut rng, &[0, 1, 5, 30]),
                },
                97..=102 => Op::Rename {
                    from: any_path(&mut rng),
                    to: any_path(&mut rng),
                    posix: rng.random(),
                },
                103..=106 => Op::Remove {
                    path: any_path(&mut rng),
                },
                107..=111 => Op::Mkdir {
                    path: any_path(&mut rng),
                },
                112..=114 => Op::Rmdir {
                    path: any_path(&mut rng),
                },
                _ => Op::Readdir {
                    sess: rng.random_range(0..2),
                    path: pick(&mut rng, &["", "d", "d/e"]),
                },
            }
        })
        .collect()
}

fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    s3_support::data(len, seed)
}

/// One side: two sessions (the second is "another session") and the folder the sequence uses.
struct Side {
    s: [Arc<RawSftpSession>; 2],
    root: String,
}

impl Side {
    fn p(&self, path: &str) -> String {
        if path.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{path}", self.root)
        }
    }
}

#[derive(Debug)]
struct Slot {
    sess: usize,
    path: &'static str,
    flags: OpenFlags,
    g: String,
    r: String,
    /// The highest offset this handle wrote to, as the runner counts it (the same for both).
    next: u64,
    /// Reads are no longer comparable: the file changed under the handle (a read handle reads
    /// the version it opened on the gateway, the live inode on disk).
    tainted: bool,
    /// The name was removed or replaced while this handle was writing it.
    clobbered: bool,
    /// Another handle wrote the same name meanwhile.
    shared: bool,
    /// The gateway refused a write of this handle (its upload failed).
    failed: bool,
    /// Where renames took this handle's file on the reference (its inode follows them; the
    /// gateway's upload keeps its name): restored too when the gateway refuses its CLOSE.
    moved: Vec<String>,
}

impl Slot {
    /// The handle changes the file: it writes, or it emptied the file at OPEN (TRUNC without
    /// WRITE: the gateway commits the empty file then, which counts as one writer's commit
    /// under the rule for two writers of one name).
    fn writes(&self) -> bool {
        self.flags
            .intersects(OpenFlags::WRITE | OpenFlags::APPEND | OpenFlags::TRUNCATE)
    }
}

/// A tree: path → folder (None) or file bytes.
type Tree = BTreeMap<String, Option<Vec<u8>>>;

fn related(a: &str, b: &str) -> bool {
    a == b
        || a.is_empty()
        || b.is_empty()
        || a.starts_with(&format!("{b}/"))
        || b.starts_with(&format!("{a}/"))
}

struct Env {
    srv: s3_support::Server,
    backend: bucketgate_storage::s3::S3Backend,
    _h: sftp_common::Harness,
    _ssh: [russh::client::Handle<sftp_common::TrustAll>; 2],
    g: [Arc<RawSftpSession>; 2],
    refdir: tempfile::TempDir,
    _children: Vec<tokio::process::Child>,
    r: [Arc<RawSftpSession>; 2],
    n: usize,
    /// Steps both sides refused with different status codes, by kind.
    codes: std::sync::Mutex<BTreeMap<String, usize>>,
    /// Object bytes read from the bucket before, by key and ETag.
    seen: std::sync::Mutex<s3_support::Contents>,
}

async fn reference_session(dir: &Path) -> (tokio::process::Child, RawSftpSession) {
    let mut child = tokio::process::Command::new("/usr/lib/openssh/sftp-server")
        .arg("-d")
        .arg(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("/usr/lib/openssh/sftp-server (apt-get install openssh-sftp-server)");
    let io = tokio::io::join(child.stdout.take().unwrap(), child.stdin.take().unwrap());
    let s = RawSftpSession::new(io);
    s.init().await.unwrap();
    (child, s)
}

impl Env {
    async fn start() -> Env {
        // moto: s3s-fs keeps no empty folders (markers), which every sequence makes. With
        // BUCKETGATE_TEST_S3_* set, that server instead (bench/README.md).
        let srv = match s3_support::env_server() {
            Some(s) => s,
            None => s3_support::moto_server().await,
        };
        println!("S3 server: {}", srv.name);
        let mount = bucketgate_storage::Mount {
            path: bucketgate_storage::VPath::parse("/users/alice/bucket").unwrap(),
            area: bucketgate_storage::Area {
                backend: Arc::new(srv.backend()),
                prefix: srv.prefix.clone(),
            },
        };
        let h = sftp_common::Harness::start_with_mounts(vec![mount]).await;
        let g0 = h.sftp_alice_key().await.unwrap();
        let g1 = h.sftp_alice_key().await.unwrap();
        // The raw sessions are shared by the runs; the SSH connections stay alive in `_ssh`.
        let g = [Arc::new(g0.raw), Arc::new(g1.raw)];
        let refdir = tempfile::tempdir().unwrap();
        let (c0, r0) = reference_session(refdir.path()).await;
        let (c1, r1) = reference_session(refdir.path()).await;
        Env {
            backend: srv.backend(),
            srv,
            _h: h,
            _ssh: [g0.ssh, g1.ssh],
            g,
            refdir,
            _children: vec![c0, c1],
            r: [Arc::new(r0), Arc::new(r1)],
            n: 0,
            codes: Default::default(),
            seen: Default::default(),
        }
    }

    /// Fresh, empty folders on both sides for the next run of a sequence.
    async fn fresh(&mut self) -> (Side, Side, String) {
        self.n += 1;
        let name = format!("s{}", self.n);
        let gw = Side {
            s: self.g.clone(),
            root: format!("/bucket/{name}"),
        };
        gw.s[0]
            .mkdir(gw.root.clone(), FileAttributes::default())
            .await
            .unwrap();
        let rp = self.refdir.path().join(&name);
        std::fs::create_dir(&rp).unwrap();
        let rf = Side {
            s: self.r.clone(),
            root: rp.to_str().unwrap().to_string(),
        };
        (gw, rf, format!("{}{name}", self.srv.prefix))
    }

    /// The bucket under `key`, straight from S3: every object's bytes and every folder (an
    /// object whose ETag is unchanged since the last read is not fetched again).
    async fn bucket(&self, key: &str) -> Tree {
        let mut seen = std::mem::take(&mut *self.seen.lock().unwrap());
        let t = s3_support::tree_cached(&self.backend, key, &mut seen).await;
        *self.seen.lock().unwrap() = seen;
        t
    }
}

/// A tree read through the protocol (names, types, sizes from listings; bytes by READ).
async fn proto_tree(s: &RawSftpSession, root: &str) -> Result<Tree, String> {
    let mut t = Tree::new();
    let mut todo = vec![String::new()];
    while let Some(rel) = todo.pop() {
        let dir = if rel.is_empty() {
            root.to_string()
        } else {
            format!("{root}/{rel}")
        };
        for (name, is_dir, _) in list(s, &dir).await.map_err(|e| format!("{dir}: {e:?}"))? {
            let path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if is_dir {
                t.insert(path.clone(), None);
                todo.push(path);
            } else {
                let b = read_all(s, &format!("{root}/{path}"))
                    .await
                    .map_err(|e| format!("{path}: {e:?}"))?;
                t.insert(path, Some(b));
            }
        }
    }
    Ok(t)
}

async fn list(s: &RawSftpSession, dir: &str) -> Result<Vec<(String, bool, Option<u64>)>, Res> {
    let h = match s.opendir(dir).await {
        Ok(h) => h.handle,
        Err(e) => return Err(class(Err::<(), _>(e), |_| Res::Ok)),
    };
    let mut out = Vec::new();
    loop {
        match s.readdir(h.clone()).await {
            Ok(n) => {
                for f in n.files {
                    if f.filename == "." || f.filename == ".." {
                        continue;
                    }
                    let dir = f.attrs.file_type().is_dir();
                    out.push((f.filename, dir, if dir { None } else { f.attrs.size }));
                }
            }
            Err(SftpErr::Status(st)) if st.status_code == StatusCode::Eof => break,
            Err(e) => {
                let _ = s.close(h).await;
                return Err(class(Err::<(), _>(e), |_| Res::Ok));
            }
        }
    }
    let _ = s.close(h).await;
    out.sort();
    Ok(out)
}

async fn read_all(s: &RawSftpSession, path: &str) -> Result<Vec<u8>, SftpErr> {
    let h = s
        .open(path, OpenFlags::READ, FileAttributes::default())
        .await?
        .handle;
    let mut out = Vec::new();
    loop {
        match s.read(h.clone(), out.len() as u64, 32 * 1024).await {
            Ok(d) => out.extend_from_slice(&d.data),
            Err(SftpErr::Status(st)) if st.status_code == StatusCode::Eof => break,
            Err(e) => {
                let _ = s.close(h).await;
                return Err(e);
            }
        }
    }
    s.close(h).await?;
    Ok(out)
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

/// Makes `path` of the reference folder what `want` says, writing files in place (same inode,
/// so the reference's open handles keep pointing at them).
fn restore_path(root: &Path, path: &str, want: &Tree) {
    let p = root.join(path);
    match want.get(path) {
        Some(Some(bytes)) => {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            }
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .unwrap();
            std::fs::write(&p, bytes).unwrap();
        }
        Some(None) => {
            if p.is_file() {
                std::fs::remove_file(&p).unwrap();
            }
            std::fs::create_dir_all(&p).unwrap();
        }
        None => {
            if p.is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else if p.exists() {
                std::fs::remove_file(&p).unwrap();
            }
        }
    }
}

/// Makes the whole reference folder equal to `want`.
fn restore_all(root: &Path, want: &Tree) {
    let have = disk_tree(root);
    // Deepest first, so a folder's contents go before it.
    for path in have.keys().rev() {
        if !want.contains_key(path) {
            restore_path(root, path, want);
        }
    }
    for (path, v) in want {
        if have.get(path) != Some(v) {
            restore_path(root, path, want);
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

/// Outcome of one sequence: None when every step agreed, else what went wrong.
struct Run<'a> {
    env: &'a Env,
    gw: Side,
    rf: Side,
    key: String,
    slots: Vec<Option<Slot>>,
    log: Vec<String>,
}

fn posix_data(from: &str, to: &str) -> Vec<u8> {
    let mut v = Vec::new();
    for s in [from, to] {
        v.extend_from_slice(&(s.len() as u32).to_be_bytes());
        v.extend_from_slice(s.as_bytes());
    }
    v
}

async fn on_path(side: &Side, op: &Op) -> Res {
    let s0 = &side.s[0];
    match *op {
        Op::Stat { sess, path, lstat } => {
            let s = &side.s[sess];
            if lstat {
                class(s.lstat(side.p(path)).await, |a| attrs(&a.attrs))
            } else {
                class(s.stat(side.p(path)).await, |a| attrs(&a.attrs))
            }
        }
        Op::SetMtime { path, mtime } => {
            let a = FileAttributes {
                atime: Some(mtime),
                mtime: Some(mtime),
                ..FileAttributes::empty()
            };
            class(s0.setstat(side.p(path), a).await, |_| Res::Ok)
        }
        Op::SetSize { path, size } => {
            let a = FileAttributes {
                size: Some(size),
                ..FileAttributes::empty()
            };
            class(s0.setstat(side.p(path), a).await, |_| Res::Ok)
        }
        Op::Rename { from, to, posix } => {
            if posix {
                let d = posix_data(&side.p(from), &side.p(to));
                match s0.extended("posix-rename@openssh.com", d).await {
                    Ok(russh_sftp::protocol::Packet::Status(st)) => {
                        if st.status_code == StatusCode::Ok {
                            Res::Ok
                        } else {
                            Res::Err(st.status_code)
                        }
                    }
                    Ok(p) => Res::Broken(format!("{p:?}")),
                    Err(e) => class(Err::<(), _>(e), |_| Res::Ok),
                }
            } else {
                class(s0.rename(side.p(from), side.p(to)).await, |_| Res::Ok)
            }
        }
        Op::Remove { path } => class(s0.remove(side.p(path)).await, |_| Res::Ok),
        Op::Mkdir { path } => class(
            s0.mkdir(side.p(path), FileAttributes::default()).await,
            |_| Res::Ok,
        ),
        Op::Rmdir { path } => class(s0.rmdir(side.p(path)).await, |_| Res::Ok),
        Op::Readdir { sess, path } => match list(&side.s[sess], &side.p(path)).await {
            Ok(v) => Res::Names(v),
            Err(e) => e,
        },
        _ => unreachable!(),
    }
}

/// Does this step change the tree (so a gateway refusal must leave the bucket unchanged and
/// the reference is put back)?
fn mutates(op: &Op) -> bool {
    !matches!(
        op,
        Op::Stat { .. } | Op::Readdir { .. } | Op::Read { .. } | Op::Fstat { .. }
    )
}

impl Run<'_> {
    fn dirty(&self) -> BTreeSet<&'static str> {
        self.slots
            .iter()
            .flatten()
            .filter(|s| s.writes())
            .map(|s| s.path)
            .collect()
    }

    fn refroot(&self) -> PathBuf {
        PathBuf::from(&self.rf.root)
    }

    /// The gateway's state: the bucket, straight from S3.
    async fn gstate(&self) -> Tree {
        self.env.bucket(&self.key).await
    }

    /// Closes a slot on both sides; returns both answers.
    async fn close_slot(&mut self, i: usize) -> Option<(Slot, Res, Res)> {
        let sl = self.slots[i].take()?;
        let g = class(self.gw.s[sl.sess].close(sl.g.clone()).await, |_| Res::Ok);
        let r = class(self.rf.s[sl.sess].close(sl.r.clone()).await, |_| Res::Ok);
        Some((sl, g, r))
    }

    /// The handles' "name removed or replaced" marks as they were before a step that was
    /// refused and undone.
    fn unmark(&mut self, before: &[bool]) {
        for (sl, &was) in self.slots.iter_mut().zip(before) {
            if let Some(sl) = sl {
                sl.clobbered = was;
            }
        }
    }

    /// After a refused step was undone on the reference by writing the file `path` back: the
    /// reference's handles on it still point at the file the step unlinked (a rename's
    /// replaced target, a removed file), so each is opened again on the restored file, with
    /// its READ, WRITE and APPEND, as if the step never happened (seed 3993993637). A handle
    /// whose file was removed before the step (clobbered) stays as it is (seed 1569818710).
    async fn reopen_reference(&mut self, path: &str) -> Result<(), String> {
        let keep = OpenFlags::READ | OpenFlags::WRITE | OpenFlags::APPEND;
        for i in 0..SLOTS {
            let Some(sl) = self.slots[i]
                .as_ref()
                .filter(|sl| sl.path == path && !sl.clobbered)
            else {
                continue;
            };
            let (sess, flags, old) = (sl.sess, sl.flags & keep, sl.r.clone());
            let s = &self.rf.s[sess];
            let _ = s.close(old).await;
            let h = s
                .open(self.rf.p(path), flags, FileAttributes::default())
                .await
                .map_err(|e| format!("reopening the reference's handle on {path}: {e:?}"))?;
            self.slots[i].as_mut().unwrap().r = h.handle;
        }
        Ok(())
    }

    /// Marks what a change of `path` does to the open handles.
    fn touched(&mut self, path: &str, by: Option<usize>, replaced: bool) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if let Some(s) = s {
                if Some(i) != by && related(s.path, path) {
                    s.tainted = true;
                    if replaced && s.writes() {
                        s.clobbered = true;
                    }
                    if by.is_some() && s.writes() {
                        s.shared = true;
                    }
                }
            }
        }
    }

    /// Runs one step on both sides and judges it. Err: a failure, described.
    async fn step(&mut self, op: &Op) -> Result<(), String> {
        // A handle step acts on the open handles (its slot number picks one of them), an open
        // on a free slot: most generated steps then do something even when an open failed.
        let held: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_some()).collect();
        let free: Vec<usize> = (0..SLOTS).filter(|&i| self.slots[i].is_none()).collect();
        let mut op = op.clone();
        match &mut op {
            Op::Open { slot, .. } => match free.is_empty() {
                true => return Ok(()),
                false => *slot = free[*slot % free.len()],
            },
            Op::Write { slot, .. }
            | Op::Read { slot, .. }
            | Op::Fstat { slot }
            | Op::Close { slot } => match held.is_empty() {
                true => return Ok(()),
                false => *slot = held[*slot % held.len()],
            },
            _ => {}
        }
        let op = &op;
        // Which handles' names were already removed or replaced: a refused step that is undone
        // on the reference leaves them as they were.
        let clobbered: Vec<bool> = self
            .slots
            .iter()
            .map(|s| s.as_ref().is_some_and(|s| s.clobbered))
            .collect();
        let gbefore = self.gstate().await;
        let rbefore = disk_tree(&self.refroot());
        let dirty = self.dirty();
        let (g, r, rule): (Res, Res, Option<&str>) = match *op {
            Op::Open {
                sess,
                slot,
                path,
                flags,
            } => {
                if self.slots[slot].is_some() {
                    return Ok(());
                }
                let flags = OpenFlags::from_bits_truncate(flags);
                let gh = self.gw.s[sess]
                    .open(self.gw.p(path), flags, FileAttributes::default())
                    .await;
                let rh = self.rf.s[sess]
                    .open(self.rf.p(path), flags, FileAttributes::default())
                    .await;
                match (gh, rh) {
                    (Ok(gh), Ok(rh)) => {
                        let sl = Slot {
                            sess,
                            path,
                            flags,
                            g: gh.handle,
                            r: rh.handle,
                            next: 0,
                            tainted: dirty.iter().any(|d| related(d, path)),
                            clobbered: false,
                            shared: false,
                            failed: false,
                            moved: Vec::new(),
                        };
                        if sl.writes() {
                            self.touched(path, Some(slot), false);
                        }
                        let shared = sl.writes() && dirty.contains(path);
                        self.slots[slot] = Some(sl);
                        if shared {
                            self.slots[slot].as_mut().unwrap().shared = true;
                        }
                        (Res::Handle, Res::Handle, None)
                    }
                    (gh, rh) => {
                        if let Ok(h) = &gh {
                            let _ = self.gw.s[sess].close(h.handle.clone()).await;
                        }
                        if let Ok(h) = &rh {
                            let _ = self.rf.s[sess].close(h.handle.clone()).await;
                        }
                        let g = class(gh, |_| Res::Handle);
                        let r = class(rh, |_| Res::Handle);
                        let rule = if flags.contains(OpenFlags::EXCLUDE)
                            && !flags.contains(OpenFlags::CREATE)
                        {
                            // docs/objects.md, "Documented deviations": EXCL without CREAT is an
                            // exclusive create on the gateway (the SFTP draft requires CREAT with
                            // EXCL); open(2) ignores O_EXCL without O_CREAT.
                            Some("EXCL without CREAT is an exclusive create")
                        } else if dirty.iter().any(|d| related(d, path)) {
                            // docs/objects.md, "Files being uploaded": until CLOSE the bucket
                            // holds nothing of a new file (the old version of a replaced one),
                            // and an open goes by the bucket.
                            Some("an open of a name being written sees the bucket")
                        } else if !flags.contains(OpenFlags::WRITE) {
                            // docs/objects.md, "Documented deviations": without WRITE the
                            // gateway opens for reading only; CREAT, TRUNC and APPEND are
                            // ignored (sftp-server creates or truncates the file).
                            Some("an open without WRITE only reads")
                        } else {
                            None
                        };
                        (g, r, rule)
                    }
                }
            }
            Op::Write {
                slot,
                at,
                len,
                seed,
            } => {
                let Some(sl) = self.slots[slot].as_mut() else {
                    return Ok(());
                };
                let off = match at {
                    At::Next => sl.next,
                    At::Overlap => sl.next.saturating_sub(len as u64 / 2 + 1),
                    At::Gap(k) => sl.next + k,
                    At::Zero => 0,
                    At::Mid(x) => x % (sl.next + 1),
                };
                let data = bytes_of(seed, len);
                let g = class(
                    self.gw.s[sl.sess]
                        .write(sl.g.clone(), off, data.clone())
                        .await,
                    |_| Res::Ok,
                );
                let r = class(
                    self.rf.s[sl.sess].write(sl.r.clone(), off, data).await,
                    |_| Res::Ok,
                );
                let behind = off < sl.next;
                sl.next = sl.next.max(off + len as u64);
                let (path, failed, shared, clobbered) =
                    (sl.path, sl.failed, sl.shared, sl.clobbered);
                if g == Res::Ok {
                    self.touched(path, Some(slot), false);
                }
                // docs/objects.md, "Writes, appends, resume": "A write over bytes already
                // sent fails the upload: the handle's later writes fail, CLOSE fails".
                let rule = if failed || (g.is_err() && r == Res::Ok && behind) {
                    Some("a failed upload refuses writes")
                } else if g.is_err() && r == Res::Ok && clobbered {
                    // "CLOSE of an upload whose name was removed or replaced fails": a handle
                    // writing in place over the version it opened already fails at its next
                    // WRITE once that version is gone, changing nothing (3176022889).
                    Some("CLOSE of an upload whose name was removed or replaced")
                } else if g.is_err() && r == Res::Ok && shared {
                    // "Two handles writing one name: the first CLOSE commits ..., a later one
                    // fails": an in-place writer composes its file from the version it
                    // opened, so after another handle's commit its next write already fails
                    // (nothing changed), not only its CLOSE (seed 2605192458).
                    Some("two writers of one name")
                } else {
                    None
                };
                (g, r, rule)
            }
            Op::Read { slot, off, len } => {
                let Some(sl) = self.slots[slot].as_ref() else {
                    return Ok(());
                };
                let g = class(self.gw.s[sl.sess].read(sl.g.clone(), off, len).await, |d| {
                    Res::Bytes(d.data)
                });
                let r = class(self.rf.s[sl.sess].read(sl.r.clone(), off, len).await, |d| {
                    Res::Bytes(d.data)
                });
                if sl.tainted || dirty.iter().any(|d| related(d, sl.path)) && !sl.writes() {
                    // docs/objects.md, "Files being uploaded": other handles see what the
                    // bucket holds until CLOSE; "Reading files": a read handle reads the
                    // version it opened. Not comparable.
                    return Ok(());
                }
                // docs/objects.md, "Read and write on one handle": "a read of bytes this
                // handle wrote fails with OP_UNSUPPORTED until CLOSE".
                let rule = (sl.writes() && g == Res::Err(StatusCode::OpUnsupported))
                    .then_some("reading back bytes this handle wrote");
                (g, r, rule)
            }
            Op::Fstat { slot } => {
                let Some(sl) = self.slots[slot].as_ref() else {
                    return Ok(());
                };
                let g = class(self.gw.s[sl.sess].fstat(sl.g.clone()).await, |a| {
                    attrs(&a.attrs)
                });
                let r = class(self.rf.s[sl.sess].fstat(sl.r.clone()).await, |a| {
                    attrs(&a.attrs)
                });
                if sl.tainted || sl.shared || sl.failed || sl.clobbered {
                    return Ok(());
                }
                (g, r, None)
            }
            Op::Close { slot } => {
                let Some((sl, g, r)) = self.close_slot(slot).await else {
                    return Ok(());
                };
                if sl.writes() && g == Res::Ok {
                    self.touched(sl.path, Some(slot), false);
                }
                let rule = if sl.failed {
                    Some("a failed upload fails at CLOSE")
                } else if sl.clobbered {
                    // docs/objects.md, "A name being written": "A remove of the name, or a
                    // replacing rename onto it, wins: the upload's CLOSE then fails".
                    Some("CLOSE of an upload whose name was removed or replaced")
                } else if sl.shared {
                    // docs/objects.md, "Writes, appends, resume": "The commit over a base is
                    // conditional on the base's version: if anyone changed the file
                    // meanwhile, CLOSE fails". Two writers of one name: the gateway keeps
                    // one writer's whole file, the disk mixes both.
                    Some("two writers of one name")
                } else {
                    None
                };
                if sl.shared && g == Res::Ok && r == Res::Ok {
                    // Both committed; the gateway holds this handle's file (base + its own
                    // writes): take that as the reference's too.
                    let now = self.gstate().await;
                    restore_path(&self.refroot(), sl.path, &now);
                    return Ok(());
                }
                if g.is_err() && rule.is_some() {
                    // Refused: the gateway's file is unchanged; the reference's handle wrote
                    // into its file all along: put the gateway's back there.
                    let now = self.gstate().await;
                    if now != gbefore {
                        return Err(format!(
                            "refused CLOSE ({g:?}, {rule:?}) changed the bucket:\n  before {:?}\n  after  {:?}",
                            tree_view(&gbefore),
                            tree_view(&now)
                        ));
                    }
                    // Unless another handle still writes the name: the disk's file is then
                    // that handle's (a new one, after a remove), which its own CLOSE settles
                    // (seed 3644565107).
                    let others = |path: &str| {
                        self.slots.iter().flatten().any(|o| {
                            o.flags.contains(OpenFlags::WRITE) && o.path == path && !o.clobbered
                        })
                    };
                    // Where the reference's file went by a rename too (seed 3371369658: an
                    // upload's name replaced by a size-0 SETSTAT, then renamed; the disk's
                    // bytes followed the rename).
                    for path in std::iter::once(sl.path).chain(sl.moved.iter().map(|m| m.as_str()))
                    {
                        if !others(path) {
                            restore_path(&self.refroot(), path, &now);
                        }
                    }
                    return Ok(());
                }
                (g, r, rule)
            }
            Op::Stat { sess, path, .. } | Op::Readdir { sess, path } => {
                let g = on_path(&self.gw, op).await;
                let r = on_path(&self.rf, op).await;
                // docs/objects.md, "Files being uploaded": "other sessions' stat and listings
                // show what the bucket holds"; the writing session's listings too.
                let writer_here = self
                    .slots
                    .iter()
                    .flatten()
                    .any(|s| s.writes() && s.sess == sess && s.path == path && !s.shared);
                if dirty.iter().any(|d| related(d, path))
                    && !(writer_here && matches!(op, Op::Stat { .. }))
                {
                    if let (Res::Names(a), Res::Names(b)) = (&g, &r) {
                        // Names and sizes of the files nobody is writing still agree.
                        let keep = |v: &Vec<(String, bool, Option<u64>)>| -> Vec<_> {
                            v.iter()
                                .filter(|(n, _, _)| {
                                    let full = if path.is_empty() {
                                        n.clone()
                                    } else {
                                        format!("{path}/{n}")
                                    };
                                    !dirty.iter().any(|d| related(d, &full))
                                })
                                .cloned()
                                .collect()
                        };
                        (Res::Names(keep(a)), Res::Names(keep(b)), None)
                    } else {
                        return Ok(());
                    }
                } else {
                    (g, r, None)
                }
            }
            Op::SetSize { path, size } => {
                let g = on_path(&self.gw, op).await;
                let r = on_path(&self.rf, op).await;
                if r == Res::Ok {
                    self.touched(path, None, false);
                }
                let cur = match gbefore.get(path) {
                    Some(Some(b)) => Some(b.len() as u64),
                    _ => None,
                };
                if g == Res::Ok && (size == 0 || cur != Some(size)) {
                    // docs/objects.md, "A name being written": a SETSTAT of size 0, or of a new
                    // size, replaces the file, so another session's upload of it fails at
                    // CLOSE (the steps' SETSTAT comes from session 0; its own upload takes the
                    // size).
                    for sl in self.slots.iter_mut().flatten() {
                        if sl.sess != 0 && sl.path == path && sl.writes() {
                            sl.clobbered = true;
                        }
                    }
                }
                // docs/objects.md, "Writes, appends, resume": from the session writing the
                // name, a new size after the handle's first write "is refused with
                // OP_UNSUPPORTED until CLOSE".
                let wrote = self
                    .slots
                    .iter()
                    .flatten()
                    .any(|sl| sl.sess == 0 && sl.path == path && sl.writes() && sl.next > 0);
                let rule = if g == Res::Err(StatusCode::OpUnsupported) && wrote && cur != Some(size)
                {
                    Some("SETSTAT of a new size after this session's handle wrote")
                } else if dirty.contains(path) {
                    // docs/objects.md, "Files being uploaded": SETSTAT of a name being
                    // written goes by the bucket.
                    Some("SETSTAT of a name being written sees the bucket")
                } else {
                    None
                };
                (g, r, rule)
            }
            Op::Rename { from, to, posix } => {
                let g = on_path(&self.gw, op).await;
                let r = on_path(&self.rf, op).await;
                if r == Res::Ok && from != to {
                    self.touched(from, None, true);
                    if posix {
                        self.touched(to, None, true);
                    }
                    for sl in self.slots.iter_mut().flatten() {
                        if let Some(rest) = sl.path.strip_prefix(from) {
                            if rest.is_empty() || rest.starts_with('/') {
                                sl.moved.push(format!("{to}{rest}"));
                            }
                        }
                    }
                }
                // docs/objects.md, "A name being written": "renaming the file being written
                // (or a folder holding one) is refused until its upload completes".
                let rule = (g.is_err()
                    && dirty
                        .iter()
                        .any(|d| related(d, from) && d.len() >= from.len()))
                .then_some("renaming a name being written");
                // docs/objects.md, "Documented deviations": a rename onto an existing folder
                // is refused (rename(2) replaces an empty one).
                let rule = rule.or((g.is_err() && gbefore.get(to) == Some(&None))
                    .then_some("a rename onto an existing folder is refused"));
                (g, r, rule)
            }
            Op::Remove { path }
            | Op::Rmdir { path }
            | Op::Mkdir { path }
            | Op::SetMtime { path, .. } => {
                let g = on_path(&self.gw, op).await;
                let r = on_path(&self.rf, op).await;
                if r == Res::Ok && matches!(op, Op::Remove { .. } | Op::Rmdir { .. }) {
                    self.touched(path, None, true);
                }
                // docs/objects.md, "Files being uploaded": until CLOSE the bucket holds
                // nothing of a new file; SETSTAT of its name goes by the bucket.
                let rule = (matches!(op, Op::SetMtime { .. }) && dirty.contains(path))
                    .then_some("SETSTAT of a name being written sees the bucket");
                (g, r, rule)
            }
        };
        self.log
            .push(format!("{op:?} => gateway {g:?}, reference {r:?}"));
        if g == r {
            return self.check_trees().await;
        }
        // Rules under which the gateway may answer OK where the reference refused, as long
        // as the bucket is unchanged.
        let ok_rule = if matches!(op, Op::Rename { from, to, .. } if from == to) && g == Res::Ok {
            // docs/objects.md, "A name being written": "Renaming a name onto itself changes
            // nothing" (sftp-server refuses a v3 rename onto an existing file, itself too).
            Some("renaming a name onto itself changes nothing")
        } else if matches!(op, Op::Open { flags, .. } if flags & 0x2 == 0) && g == Res::Handle {
            // docs/objects.md, "Documented deviations": without WRITE an open is a read, its
            // CREAT|EXCL is ignored (sftp-server refuses O_CREAT|O_EXCL of an existing name).
            Some("an open without WRITE only reads")
        } else {
            None
        };
        let rule = match (rule, ok_rule) {
            (_, Some(k)) if matches!(g, Res::Ok | Res::Handle) => {
                let now = self.gstate().await;
                if now != gbefore {
                    return Err(format!(
                        "{k}: the gateway's OK at {op:?} changed the bucket:\n  before {:?}\n  after  {:?}",
                        tree_view(&gbefore),
                        tree_view(&now)
                    ));
                }
                restore_all(&self.refroot(), &rbefore);
                self.log.push(format!("  accepted: {k}"));
                *self
                    .env
                    .codes
                    .lock()
                    .unwrap()
                    .entry(format!("accepted: {k}"))
                    .or_default() += 1;
                return self.check_trees().await;
            }
            (None, k) => k,
            (rule, _) => rule,
        };
        // Both refused, with another status: the outcome is the same (an error, nothing
        // changed, checked below); the pair of codes is counted and printed at the end.
        let both = format!(
            "{}: gateway {g:?}, reference {r:?}",
            format!("{op:?}")
                .split([' ', '{'])
                .next()
                .unwrap_or_default()
        );
        let rule = match rule {
            None if g.is_err() && r.is_err() => {
                *self.env.codes.lock().unwrap().entry(both).or_default() += 1;
                Some("both refused")
            }
            rule => rule,
        };
        let Some(rule) = rule.filter(|_| g.is_err()) else {
            return Err(format!(
                "divergence at {op:?}:\n  gateway   {g:?}\n  reference {r:?}"
            ));
        };
        // An accepted refusal: nothing may have changed on the gateway.
        if mutates(op) {
            let now = self.gstate().await;
            if now != gbefore {
                return Err(format!(
                    "refusal ({rule}) at {op:?} changed the bucket:\n  before {:?}\n  after  {:?}",
                    tree_view(&gbefore),
                    tree_view(&now)
                ));
            }
        }
        match *op {
            Op::Write { slot, .. } if !r.is_err() => {
                // The handle's upload failed: close both, and make the reference's file the
                // gateway's again.
                if let Some(sl) = self.slots[slot].as_mut() {
                    sl.failed = true;
                }
                if let Some((sl, _, _)) = self.close_slot(slot).await {
                    let now = self.gstate().await;
                    if now != gbefore {
                        return Err(format!(
                            "CLOSE after a refused write changed the bucket: {:?}",
                            tree_view(&now)
                        ));
                    }
                    // Another handle still writing the name keeps it on disk (and taken on
                    // the gateway); its CLOSE puts the gateway's result back instead.
                    // (Only a handle with WRITE can: one that emptied the file at OPEN
                    // writes nothing more, seed 1525548613; nor one whose name was removed
                    // meanwhile, 1166278538.)
                    let others = self
                        .slots
                        .iter_mut()
                        .flatten()
                        .filter(|o| {
                            o.flags.contains(OpenFlags::WRITE) && o.path == sl.path && !o.clobbered
                        })
                        .map(|o| o.shared = true)
                        .count();
                    if others == 0 {
                        restore_path(&self.refroot(), sl.path, &now);
                    }
                    // The reference's file also went wherever renames took it (3371369658).
                    for m in &sl.moved {
                        let writing = self.slots.iter().flatten().any(|o| {
                            o.flags.contains(OpenFlags::WRITE) && o.path == m && !o.clobbered
                        });
                        if !writing {
                            restore_path(&self.refroot(), m, &now);
                        }
                    }
                }
            }
            Op::Rename { from, to, .. } if r == Res::Ok => {
                // Undo on the reference: move it back (keeps the inode under open handles),
                // then put back what the rename replaced.
                let root = self.refroot();
                std::fs::rename(root.join(to), root.join(from)).unwrap();
                restore_all(&root, &rbefore);
                self.unmark(&clobbered);
                if matches!(rbefore.get(to), Some(Some(_))) {
                    self.reopen_reference(to).await?;
                }
            }
            Op::Read { .. } | Op::Fstat { .. } => {}
            Op::Remove { path } => {
                restore_all(&self.refroot(), &rbefore);
                self.unmark(&clobbered);
                if matches!(rbefore.get(path), Some(Some(_))) {
                    self.reopen_reference(path).await?;
                }
            }
            _ => restore_all(&self.refroot(), &rbefore),
        }
        self.log.push(format!("  accepted: {rule}"));
        if rule != "both refused" {
            *self
                .env
                .codes
                .lock()
                .unwrap()
                .entry(format!("accepted: {rule}"))
                .or_default() += 1;
        }
        self.check_trees().await
    }

    /// The bucket and the reference folder agree on every name nobody is writing.
    async fn check_trees(&self) -> Result<(), String> {
        let dirty = self.dirty();
        let keep = |t: Tree| -> Tree {
            t.into_iter()
                .filter(|(k, _)| !dirty.iter().any(|d| related(d, k)))
                .collect()
        };
        let g = keep(self.gstate().await);
        let r = keep(disk_tree(&self.refroot()));
        // The bucket may lack a folder the disk has only as a parent of files (an implied
        // prefix shows as a folder): compare files exactly, and folders through the protocol
        // at the end.
        let files = |t: &Tree| -> Tree {
            t.iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        if files(&g) != files(&r) {
            return Err(format!(
                "trees differ:\n  bucket    {:?}\n  reference {:?}",
                tree_view(&g),
                tree_view(&r)
            ));
        }
        Ok(())
    }

    /// Closes what is still open and compares the final trees: through the protocol on both
    /// sides, and straight from the bucket.
    async fn finish(&mut self) -> Result<(), String> {
        // (A close's slot number picks among the open handles: 0 is the first one open.)
        while self.slots.iter().any(Option::is_some) {
            self.step(&Op::Close { slot: 0 }).await?;
        }
        let gp = proto_tree(&self.gw.s[0], &self.gw.root).await?;
        let rp = proto_tree(&self.rf.s[0], &self.rf.root).await?;
        if gp != rp {
            return Err(format!(
                "final trees differ:\n  gateway   {:?}\n  reference {:?}",
                tree_view(&gp),
                tree_view(&rp)
            ));
        }
        let b = self.gstate().await;
        let files: Tree = gp
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let bfiles: Tree = b
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if files != bfiles {
            return Err(format!(
                "the bucket differs from what the gateway shows:\n  bucket  {:?}\n  gateway {:?}",
                tree_view(&b),
                tree_view(&gp)
            ));
        }
        Ok(())
    }
}

/// Runs `ops` on fresh folders; Err: the failure and the steps' log.
async fn run(env: &mut Env, ops: &[Op]) -> Result<(), String> {
    let (gw, rf, key) = env.fresh().await;
    let mut run = Run {
        env,
        gw,
        rf,
        key,
        slots: (0..SLOTS).map(|_| None).collect(),
        log: vec![],
    };
    let mut res = Ok(());
    for op in ops {
        if let Err(e) = run.step(op).await {
            res = Err(e);
            break;
        }
    }
    if res.is_ok() {
        res = run.finish().await;
    } else {
        // Leave no handle open for the next run.
        for i in 0..SLOTS {
            let _ = run.close_slot(i).await;
        }
    }
    if std::env::var_os("DIFF_VERBOSE").is_some() {
        println!("--- {}:\n  {}", run.gw.root, run.log.join("\n  "));
    }
    res.map_err(|e| format!("{e}\nsteps:\n  {}", run.log.join("\n  ")))
}

/// Drops steps one at a time while the sequence still fails (bounded).
async fn minimize(env: &mut Env, mut ops: Vec<Op>) -> (Vec<Op>, String) {
    let mut last = run(env, &ops).await.err().unwrap_or_default();
    let mut budget = 200;
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

async fn check_seeds(seeds: &[u64], mut failures: Vec<String>) {
    let mut env = Env::start().await;
    for &seed in seeds {
        let ops = generate(seed);
        if let Err(e) = run(&mut env, &ops).await {
            let (min, why) = minimize(&mut env, ops).await;
            failures.push(format!(
                "DIFF_SEED={seed}: {e}\n--- minimized to {} steps:\n{why}\n{min:#?}",
                min.len()
            ));
        }
    }
    println!(
        "steps refused by both with another status: {:#?}",
        env.codes.lock().unwrap()
    );
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

/// The CI pass: the fixed seeds (each one a divergence found once, or a plain regression
/// sequence) and a few fresh ones, printed so a failure can be replayed with DIFF_SEED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_matches_openssh_sftp_server() {
    if let Some(seed) = env_u64("DIFF_SEED") {
        println!("DIFF_SEED={seed}");
        return check_seeds(&[seed], vec![]).await;
    }
    let mut env = Env::start().await;
    let mut failed = Vec::new();
    for (why, ops) in regressions() {
        if let Err(e) = run(&mut env, &ops).await {
            failed.push(format!("regression ({why}): {e}"));
        }
    }
    drop(env);
    let fresh = env_u64("DIFF_SEQUENCES").unwrap_or(FRESH as u64);
    let mut seeds = FIXED_SEEDS.to_vec();
    let fresh: Vec<u64> = (0..fresh).map(|_| rand::random::<u32>() as u64).collect();
    println!("fresh seeds (replay one with DIFF_SEED=<n>): {fresh:?}");
    seeds.extend(fresh);
    check_seeds(&seeds, failed).await;
}

fn open(sess: usize, slot: usize, path: &'static str, flags: u32) -> Op {
    Op::Open {
        sess,
        slot,
        path,
        flags,
    }
}

/// The divergences the runner found, minimized: each must now pass by a documented rule (the
/// fresh seed that found it in parentheses).
fn regressions() -> Vec<(&'static str, Vec<Op>)> {
    let close = |slot| Op::Close { slot };
    let write = |slot, at, len| Op::Write {
        slot,
        at,
        len,
        seed: 7,
    };
    vec![
        (
            "a size-0 SETSTAT from another session of an empty file being appended to (681578691)",
            vec![
                open(0, 1, "b", 0x0e),
                close(1),
                open(1, 0, "b", 0x0e),
                write(0, At::Overlap, 18),
                Op::SetSize { path: "b", size: 0 },
                close(0),
            ],
        ),
        (
            "a size-0 SETSTAT of the path the same session is writing, before its first write",
            vec![
                open(0, 0, "b", 0x1a),
                write(0, At::Next, 10),
                close(0),
                open(0, 0, "b", 0x0a),
                Op::SetSize { path: "b", size: 0 },
                write(0, At::Next, 5),
                close(0),
            ],
        ),
        (
            "a refused posix-rename onto a name being written, then that handle's writes (3993993637)",
            vec![
                open(1, 1, "a", 0x1e),
                close(1),
                open(1, 0, "a", 0x1b),
                open(1, 1, "a", 0x03),
                write(1, At::Overlap, 2),
                write(0, At::Gap(18), 36),
                open(0, 2, "ünï", 0x1a),
                Op::Rename {
                    from: "a",
                    to: "ünï",
                    posix: true,
                },
                write(1, At::Zero, 26),
                write(2, At::Gap(18), 23),
                close(2),
            ],
        ),
        (
            "a create in a folder that another session removed after this one saw it (2398569550)",
            vec![
                Op::Mkdir { path: "d" },
                Op::Mkdir { path: "d/e" },
                Op::Stat {
                    sess: 1,
                    path: "d/e",
                    lstat: true,
                },
                Op::Rmdir { path: "d/e" },
                open(1, 2, "d/e/c", 0x0e),
                close(2),
            ],
        ),
        (
            "a refused CLOSE of a removed upload while a new one writes the name (3644565107)",
            vec![
                open(1, 0, "a", 0x0e),
                Op::Remove { path: "a" },
                open(1, 1, "a", 0x0e),
                close(0),
                Op::Mkdir { path: "a" },
                write(1, At::Next, 9),
                close(0),
            ],
        ),
        (
            "READ|CREAT|TRUNC empties at OPEN and only reads; a refused write of another handle (1525548613)",
            vec![
                open(1, 1, "a", 0x19),
                open(0, 0, "a", 0x03),
                write(0, At::Overlap, 33),
                write(0, At::Zero, 24),
                Op::Rename {
                    from: "a",
                    to: "b",
                    posix: false,
                },
            ],
        ),
        (
            "a refused rename onto a name removed while a handle wrote it (1569818710)",
            vec![
                open(1, 0, "b", 0x0e),
                open(1, 1, "a", 0x1a),
                Op::Remove { path: "a" },
                Op::Rename {
                    from: "b",
                    to: "a",
                    posix: false,
                },
            ],
        ),
        (
            "an in-place write (WRITE without TRUNC) keeps the bytes after it",
            vec![
                open(0, 0, "a", 0x1a),
                write(0, At::Next, 30),
                close(0),
                open(1, 0, "a", 0x02),
                write(0, At::Zero, 5),
                close(0),
                open(0, 0, "a", 0x03),
                write(0, At::Gap(3), 4),
                close(0),
            ],
        ),
        (
            "a posix-rename of an empty folder onto another (2270288197)",
            vec![
                Op::Mkdir { path: "a" },
                Op::Mkdir { path: "d" },
                Op::Rename {
                    from: "d",
                    to: "a",
                    posix: true,
                },
            ],
        ),
        (
            "two writers of a new name, one refused a write behind what it sent (1841419852)",
            vec![
                open(0, 0, "ünï", 0x1b),
                open(0, 1, "ünï", 0x0e),
                write(0, At::Overlap, 14),
                write(0, At::Zero, 32),
                Op::Mkdir { path: "ünï" },
            ],
        ),
        (
            "a v3 rename of a file onto itself: OK here, Failure on sftp-server (2473268586)",
            vec![
                open(1, 1, "sp ace", 0x0a),
                close(1),
                Op::Rename {
                    from: "sp ace",
                    to: "sp ace",
                    posix: false,
                },
            ],
        ),
        (
            "WRITE|TRUNC|EXCL without CREAT of an existing file (2006694160)",
            vec![open(0, 2, "a", 0x2a), close(2), open(1, 1, "a", 0x32)],
        ),
        (
            "WRITE|APPEND|EXCL without CREAT of an existing file (585307676)",
            vec![open(0, 1, "b", 0x0a), close(1), open(0, 2, "b", 0x26)],
        ),
        (
            "CREAT|EXCL without WRITE of an existing file: a read handle here (322569714)",
            vec![
                open(1, 1, "sp ace", 0x2f),
                close(1),
                open(0, 2, "sp ace", 0x28),
            ],
        ),
        (
            "APPEND|CREAT without WRITE of a missing file (6, first generator)",
            vec![open(0, 0, "ünï", 0x0c)],
        ),
        (
            "an open for reading of a new file the same session is writing (16)",
            vec![open(1, 0, "b", 0x1b), open(1, 1, "b", 0x01)],
        ),
        (
            "SETSTAT size 0 of a new file being written (10)",
            vec![
                open(0, 2, "ünï", 0x1b),
                Op::SetSize {
                    path: "ünï",
                    size: 0,
                },
            ],
        ),
        (
            "MKDIR and REMOVE of a name removed while being written (682090904, 3270865670)",
            vec![
                open(1, 2, "sp ace", 0x1a),
                Op::Remove { path: "sp ace" },
                Op::Remove { path: "sp ace" },
                Op::Mkdir { path: "sp ace" },
            ],
        ),
        (
            "TRUNC|EXCL without WRITE of an existing file: known divergence (4269889917)",
            vec![
                open(1, 0, "sp ace", 0x2e),
                Op::Write {
                    slot: 0,
                    at: At::Mid(3905596592218770668),
                    len: 21,
                    seed: 4379275568843150033,
                },
                close(0),
                open(1, 0, "sp ace", 0x30),
                close(0),
            ],
        ),
        (
            "OPEN with TRUNC|CREAT|EXCL|APPEND and no WRITE of an existing file is refused and \
             empties nothing (571934940: the file went to 0 bytes)",
            vec![
                open(1, 1, "sp ace", 0x0e),
                write(1, At::Overlap, 20),
                close(1),
                open(1, 0, "sp ace", 0x3c),
                open(0, 2, "new", 0x18),
                Op::Close { slot: 2 },
            ],
        ),
        (
            "a handle writing in place fails at its next WRITE once another handle committed \
             the name, changing nothing (2605192458)",
            vec![
                open(1, 0, "a", 0x0e),
                close(0),
                open(0, 2, "a", 0x0a),
                open(0, 1, "a", 0x03),
                write(1, At::Mid(5460395486093926295), 34),
                close(1),
                write(2, At::Mid(4230121103351917901), 20),
                close(2),
            ],
        ),
        (
            "OPEN with TRUNC of a name one session found missing, which another session has \
             since made a folder, is refused (817606849: a handle, for a file the folder would hide)",
            vec![
                Op::Stat {
                    sess: 1,
                    path: "a",
                    lstat: false,
                },
                Op::Mkdir { path: "a" },
                open(1, 1, "a", 0x1b),
                open(1, 2, "a", 0x3a),
            ],
        ),
        (
            "a session writing a new name no longer shows it once another session removed it \
             (4139399188)",
            vec![
                open(1, 2, "sp ace", 0x1a),
                Op::Remove { path: "sp ace" },
                Op::Stat {
                    sess: 1,
                    path: "sp ace",
                    lstat: true,
                },
                close(2),
            ],
        ),
    ]
}

/// Runs fixed steps; any divergence fails.
async fn strict_steps(ops: Vec<Op>) {
    let mut env = Env::start().await;
    if let Err(e) = run(&mut env, &ops).await {
        panic!("{e}");
    }
}

/// Found by DIFF_SEED=3270865670 and 682090904: after a REMOVE of a name a handle was still
/// writing, the gateway kept the name reserved until that handle closed. The second REMOVE
/// answered OK for a name that did not exist (sftp-server: NO_SUCH_FILE), and a MKDIR of the
/// name was refused (sftp-server: OK). Fixed in storage/src/writing.rs: a removed name is free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_name_being_written_is_free_again() {
    strict_steps(vec![
        Op::Open {
            sess: 0,
            slot: 0,
            path: "a",
            flags: 0x1a,
        },
        Op::Remove { path: "a" },
        Op::Remove { path: "a" },
        Op::Mkdir { path: "a" },
    ])
    .await;
}

/// OPEN with TRUNC but without WRITE of an existing file empties it, as sftp-server does
/// (open(2) with O_RDONLY|O_TRUNC on Linux); it kept the bytes before. Found by
/// DIFF_SEED=4269889917.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_trunc_without_write_truncates() {
    strict_steps(vec![
        Op::Open {
            sess: 0,
            slot: 0,
            path: "b",
            flags: 0x1a,
        },
        Op::Write {
            slot: 0,
            at: At::Next,
            len: 10,
            seed: 1,
        },
        Op::Close { slot: 0 },
        Op::Open {
            sess: 0,
            slot: 0,
            path: "b",
            flags: 0x11,
        },
        Op::Close { slot: 0 },
    ])
    .await;
}
