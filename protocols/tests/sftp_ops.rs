//! SFTP operations through an in-process russh + russh-sftp client, checked on disk.

use crate::sftp_common;
use bucketgate_testkit::s3 as s3_support;

use russh_sftp::client::error::Error as SftpErr;
use russh_sftp::protocol::{FileAttributes, OpenFlags, Packet, StatusCode};
use sftp_common::{Harness, Sftp};
use std::time::Duration;

fn code<T: std::fmt::Debug>(r: Result<T, SftpErr>) -> StatusCode {
    match r {
        Err(SftpErr::Status(s)) => s.status_code,
        other => panic!("expected an error status, got {other:?}"),
    }
}

fn ssh_string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}

fn status_of(p: Packet) -> StatusCode {
    match p {
        Packet::Status(s) => s.status_code,
        other => panic!("expected a status, got {other:?}"),
    }
}

const NEW: OpenFlags = OpenFlags::WRITE
    .union(OpenFlags::CREATE)
    .union(OpenFlags::TRUNCATE);

async fn put(s: &Sftp, path: &str, data: &[u8]) {
    let h = s
        .open(path, NEW, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    if !data.is_empty() {
        s.write(&h, 0, data.to_vec()).await.unwrap();
    }
    s.close(h).await.unwrap();
}

async fn names(s: &Sftp, dir: &str) -> Vec<(String, String)> {
    let h = s.opendir(dir).await.unwrap().handle;
    let mut out = Vec::new();
    loop {
        match s.readdir(&h).await {
            Ok(n) => out.extend(n.files.into_iter().map(|f| (f.filename, f.longname))),
            Err(e) => {
                assert_eq!(code::<()>(Err(e)), StatusCode::Eof);
                break;
            }
        }
    }
    s.close(h).await.unwrap();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_read_stat_list_realpath() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();

    put(&s, "/hello.txt", b"hello world").await;
    // CLOSE answered OK: the file is complete on disk.
    assert_eq!(std::fs::read(h.alice("hello.txt")).unwrap(), b"hello world");

    let st = s.stat("hello.txt").await.unwrap().attrs;
    assert_eq!(st.size, Some(11));
    assert!(!st.is_dir());
    assert!(s.lstat("/").await.unwrap().attrs.is_dir());

    let r = s
        .open("/hello.txt", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    assert_eq!(s.fstat(&r).await.unwrap().attrs.size, Some(11));
    assert_eq!(s.read(&r, 0, 5).await.unwrap().data, b"hello");
    assert_eq!(s.read(&r, 6, 100).await.unwrap().data, b"world");
    assert_eq!(code(s.read(&r, 11, 100).await), StatusCode::Eof);
    s.close(&r).await.unwrap();

    let listing = names(&s, "/").await;
    let (n, l): (Vec<_>, Vec<_>) = listing.into_iter().unzip();
    assert_eq!(n, vec!["archive", "hello.txt"]);
    assert!(
        l[0].starts_with('d') && l[0].ends_with(" archive"),
        "{}",
        l[0]
    );
    assert!(l[1].starts_with("-rw") && l[1].contains(" 11 "), "{}", l[1]);

    let rp = |p: &'static str| {
        let s = &s;
        async move { s.realpath(p).await.unwrap().files[0].filename.clone() }
    };
    assert_eq!(rp(".").await, "/");
    assert_eq!(rp("../..").await, "/");
    assert_eq!(rp("a/./b/../c").await, "/a/c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mkdir_rename_remove_rmdir() {
    let h = Harness::start().await;
    let s = h
        .sftp_password("alice", sftp_common::ALICE_PW)
        .await
        .unwrap();

    s.mkdir("/d", FileAttributes::default()).await.unwrap();
    assert!(h.alice("d").is_dir());
    assert_eq!(
        code(s.mkdir("/d", FileAttributes::default()).await),
        StatusCode::Failure
    );

    put(&s, "/a.txt", b"A").await;
    put(&s, "/b.txt", b"B").await;
    s.rename("/a.txt", "/d/a.txt").await.unwrap();
    assert!(!h.alice("a.txt").exists());
    assert_eq!(std::fs::read(h.alice("d/a.txt")).unwrap(), b"A");

    // A plain rename never replaces; posix-rename does.
    assert_eq!(
        code(s.rename("/b.txt", "/d/a.txt").await),
        StatusCode::Failure
    );
    assert_eq!(std::fs::read(h.alice("d/a.txt")).unwrap(), b"A");
    let mut data = ssh_string("/b.txt");
    data.extend(ssh_string("/d/a.txt"));
    let p = s.extended("posix-rename@openssh.com", data).await.unwrap();
    assert_eq!(status_of(p), StatusCode::Ok);
    assert_eq!(std::fs::read(h.alice("d/a.txt")).unwrap(), b"B");
    assert!(!h.alice("b.txt").exists());

    assert_eq!(code(s.rmdir("/d").await), StatusCode::Failure);
    assert_eq!(code(s.remove("/d").await), StatusCode::Failure);
    s.remove("/d/a.txt").await.unwrap();
    assert_eq!(code(s.remove("/d/a.txt").await), StatusCode::NoSuchFile);
    s.rmdir("/d").await.unwrap();
    assert!(!h.alice("d").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attributes_extensions_and_unsupported() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    put(&s, "/f.txt", b"12345").await;

    // setstat: the time is kept, permissions are accepted and ignored.
    let attrs = FileAttributes {
        mtime: Some(1_500_000_000),
        atime: Some(1_500_000_000),
        ..Default::default()
    };
    s.setstat("/f.txt", attrs).await.unwrap();
    assert_eq!(
        s.stat("/f.txt").await.unwrap().attrs.mtime,
        Some(1_500_000_000)
    );
    let perms = FileAttributes {
        permissions: Some(0o600),
        ..Default::default()
    };
    s.setstat("/f.txt", perms.clone()).await.unwrap();
    assert_eq!(
        code(s.setstat("/missing", perms).await),
        StatusCode::NoSuchFile
    );

    // fsetstat on an open upload: the time is recorded at commit.
    let w = s
        .open("/g.txt", NEW, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    s.write(&w, 0, b"xyz".to_vec()).await.unwrap();
    let t = FileAttributes {
        mtime: Some(1_400_000_000),
        atime: Some(1_400_000_000),
        ..Default::default()
    };
    s.fsetstat(&w, t).await.unwrap();
    assert_eq!(s.fstat(&w).await.unwrap().attrs.size, Some(3));
    s.fsync(&w).await.unwrap();
    s.close(&w).await.unwrap();
    assert_eq!(
        s.stat("/g.txt").await.unwrap().attrs.mtime,
        Some(1_400_000_000)
    );

    assert_eq!(code(s.readlink("/f.txt").await), StatusCode::OpUnsupported);
    assert_eq!(
        code(s.symlink("/l", "/f.txt").await),
        StatusCode::OpUnsupported
    );
    assert_eq!(
        code(s.hardlink("/f.txt", "/h").await),
        StatusCode::OpUnsupported
    );
    assert!(!h.alice("h").exists() && !h.alice("l").exists());

    let st = s.statvfs("/").await.unwrap();
    assert!(st.blocks_avail * st.fragment_size > 1 << 40);
    let lim = s.limits().await.unwrap();
    assert_eq!(lim.max_packet_len, 256 * 1024);
    assert!(lim.max_write_len >= 32 * 1024 && lim.max_write_len < lim.max_packet_len);
    assert_eq!(lim.max_open_handles, 256);

    // EXCL on an existing file fails; APPEND goes to the end.
    let excl = NEW | OpenFlags::EXCLUDE;
    assert_eq!(
        code(s.open("/f.txt", excl, FileAttributes::default()).await),
        StatusCode::Failure
    );
    let app = OpenFlags::WRITE | OpenFlags::APPEND;
    let a = s
        .open("/f.txt", app, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    s.write(&a, 0, b"678".to_vec()).await.unwrap();
    s.close(&a).await.unwrap();
    assert_eq!(std::fs::read(h.alice("f.txt")).unwrap(), b"12345678");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_folder_refuses_changes_and_leaves_nothing() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    put(&s, "/mine.txt", b"m").await;

    let r = s
        .open(
            "/archive/old.txt",
            OpenFlags::READ,
            FileAttributes::default(),
        )
        .await
        .unwrap();
    assert_eq!(s.read(&r.handle, 0, 100).await.unwrap().data, b"archived");
    s.close(r.handle).await.unwrap();

    assert_eq!(
        code(
            s.open("/archive/new.txt", NEW, FileAttributes::default())
                .await
        ),
        StatusCode::PermissionDenied
    );
    assert_eq!(
        code(
            s.open("/archive/old.txt", NEW, FileAttributes::default())
                .await
        ),
        StatusCode::PermissionDenied
    );
    assert_eq!(
        code(s.remove("/archive/old.txt").await),
        StatusCode::PermissionDenied
    );
    assert_eq!(
        code(s.rename("/archive/old.txt", "/x.txt").await),
        StatusCode::PermissionDenied
    );
    assert_eq!(
        code(s.rename("/mine.txt", "/archive/mine.txt").await),
        StatusCode::PermissionDenied
    );
    assert_eq!(
        code(s.mkdir("/archive/sub", FileAttributes::default()).await),
        StatusCode::PermissionDenied
    );
    let t = FileAttributes {
        mtime: Some(1),
        atime: Some(1),
        ..Default::default()
    };
    assert_eq!(
        code(s.setstat("/archive/old.txt", t).await),
        StatusCode::PermissionDenied
    );

    let mut left: Vec<_> = std::fs::read_dir(h.alice("archive"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, vec!["old.txt"]);
    assert_eq!(
        std::fs::read(h.alice("archive/old.txt")).unwrap(),
        b"archived"
    );
    assert!(h.alice("mine.txt").exists() && !h.alice("x.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_escapes_stay_in_the_home() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    for p in [
        "../../etc/passwd",
        "..\\..\\etc\\passwd",
        "/../../../etc/passwd",
        "/users/alice2/secret.txt",
        "../alice2/secret.txt",
        "..\\alice2\\secret.txt",
    ] {
        assert_eq!(code(s.stat(p).await), StatusCode::NoSuchFile, "{p}");
        assert_eq!(
            code(s.open(p, OpenFlags::READ, FileAttributes::default()).await),
            StatusCode::NoSuchFile,
            "{p}"
        );
        // Writing there fails too: the folders do not exist inside her home.
        assert_eq!(
            code(s.open(p, NEW, FileAttributes::default()).await),
            StatusCode::NoSuchFile,
            "{p}"
        );
        assert_eq!(code(s.remove(p).await), StatusCode::NoSuchFile, "{p}");
    }
    assert_eq!(s.realpath("../../..").await.unwrap().files[0].filename, "/");
    assert!(code(s.opendir("../alice2").await) == StatusCode::NoSuchFile);
    assert_eq!(
        std::fs::read(h.root.join("etc/passwd")).unwrap(),
        b"root:x:0:0"
    );
    assert_eq!(
        std::fs::read(h.root.join("users/alice2/secret.txt")).unwrap(),
        b"alice2 only"
    );
    // And the home holds only what it held.
    let names: Vec<_> = names(&s, "/").await.into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, vec!["archive"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_far_beyond_the_end_fails_cleanly() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    let w = s
        .open("/far.bin", NEW, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    s.write(&w, 0, vec![1u8; 1000]).await.unwrap();
    assert_eq!(
        code(s.write(&w, 100 << 20, vec![2u8; 10]).await),
        StatusCode::Failure
    );
    // The upload is dead: later writes and the close say so, and nothing appears.
    assert_eq!(
        code(s.write(&w, 1000, vec![3u8; 10]).await),
        StatusCode::Failure
    );
    assert_eq!(code(s.close(&w).await), StatusCode::Failure);
    assert!(!h.alice("far.bin").exists());
    // The session itself goes on.
    put(&s, "/after.txt", b"ok").await;
    assert_eq!(std::fs::read(h.alice("after.txt")).unwrap(), b"ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_upload_and_download_are_byte_exact() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    let data: Vec<u8> = (0..(5 << 20) + 12345)
        .map(|_| rand::random::<u8>())
        .collect();
    const CH: usize = 32 * 1024;

    let w = s
        .open("/big.bin", NEW, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    // 64 requests in flight, as OpenSSH does.
    for group in data.chunks(CH * 64).enumerate() {
        let (g, bytes) = group;
        let reqs = bytes.chunks(CH).enumerate().map(|(i, c)| {
            let off = (g * CH * 64 + i * CH) as u64;
            s.write(&w, off, c.to_vec())
        });
        for r in futures::future::join_all(reqs).await {
            r.unwrap();
        }
    }
    s.close(&w).await.unwrap();
    assert_eq!(std::fs::read(h.alice("big.bin")).unwrap(), data);

    let r = s
        .open("/big.bin", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    let mut back = Vec::with_capacity(data.len());
    let mut off = 0u64;
    while (off as usize) < data.len() {
        let reqs = (0..64).map(|i| s.read(&r, off + (i * CH) as u64, CH as u32));
        for res in futures::future::join_all(reqs).await {
            match res {
                Ok(d) => back.extend_from_slice(&d.data),
                Err(e) => assert_eq!(code::<()>(Err(e)), StatusCode::Eof),
            }
        }
        off += (64 * CH) as u64;
    }
    s.close(&r).await.unwrap();
    assert!(back == data, "download differs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handle_limit_per_session() {
    let h = Harness::start_with(|o| o.max_handles_per_session = 2).await;
    let s = h.sftp_alice_key().await.unwrap();
    let a = s.opendir("/").await.unwrap().handle;
    let b = s.opendir("/archive").await.unwrap().handle;
    assert_eq!(code(s.opendir("/").await), StatusCode::Failure);
    s.close(a).await.unwrap();
    s.opendir("/").await.unwrap();
    s.close(b).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_leaves_no_partial_upload() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    let w = s
        .open("/partial.bin", NEW, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    s.write(&w, 0, vec![7u8; 100_000]).await.unwrap();
    s.ssh
        .disconnect(russh::Disconnect::ByApplication, "bye", "")
        .await
        .unwrap();
    drop(s);
    // A new session sees nothing, and neither does the disk.
    let s2 = h.sftp_alice_key().await.unwrap();
    assert_eq!(code(s2.stat("/partial.bin").await), StatusCode::NoSuchFile);
    assert!(!h.alice("partial.bin").exists());
    let _ = Duration::ZERO;
}

/// Issue 13 item 2: the session writing a file sees it (with the size written so far) between
/// OPEN and CLOSE, as FUSE mounts expect; another session sees nothing until CLOSE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_being_written_is_seen_by_its_own_session() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    let other = h.sftp_alice_key().await.unwrap();
    let fh = s
        .open("/fuse.bin", NEW, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    assert_eq!(s.lstat("/fuse.bin").await.unwrap().attrs.size, Some(0));
    s.write(&fh, 0, vec![7u8; 1000]).await.unwrap();
    let st = s.lstat("/fuse.bin").await.unwrap().attrs;
    assert_eq!(st.size, Some(1000));
    assert!(!st.is_dir());
    assert_eq!(s.stat("/fuse.bin").await.unwrap().attrs.size, Some(1000));
    assert_eq!(code(other.lstat("/fuse.bin").await), StatusCode::NoSuchFile);
    // A SETSTAT of its path from the writing session acts on the upload, as FSETSTAT does:
    // `sed -i` and `cp -p` on sshfs chmod the file they have just created by its path, and a
    // time set so is the one committed. From another session the name is not there yet.
    let perms = FileAttributes {
        permissions: Some(0o600),
        ..Default::default()
    };
    s.setstat("/fuse.bin", perms.clone()).await.unwrap();
    assert_eq!(
        code(other.setstat("/fuse.bin", perms).await),
        StatusCode::NoSuchFile
    );
    let when = FileAttributes {
        mtime: Some(1_500_000_000),
        atime: Some(1_500_000_000),
        ..Default::default()
    };
    s.setstat("/fuse.bin", when).await.unwrap();
    // Opening it again in this session, to read it or to patch it, cannot reach the upload's
    // bytes before CLOSE: refused as such, not "no such file" (its STAT above shows it). From
    // another session the name is not there yet.
    for flags in [
        OpenFlags::READ,
        OpenFlags::READ.union(OpenFlags::WRITE),
        OpenFlags::WRITE,
    ] {
        let again = s.open("/fuse.bin", flags, FileAttributes::default()).await;
        assert_eq!(code(again), StatusCode::OpUnsupported, "{flags:?}");
        let elsewhere = other
            .open("/fuse.bin", flags, FileAttributes::default())
            .await;
        assert_eq!(code(elsewhere), StatusCode::NoSuchFile, "{flags:?}");
    }
    s.close(fh).await.unwrap();
    let st = other.stat("/fuse.bin").await.unwrap().attrs;
    assert_eq!(st.size, Some(1000));
    assert_eq!(st.mtime, Some(1_500_000_000));
    assert_eq!(std::fs::read(h.alice("fuse.bin")).unwrap(), vec![7u8; 1000]);
}

/// Issue 13 item 3: OPEN with READ|WRITE (Go's `os.Create`, Python's `w+`, `r+`) works. Reads
/// answer from the file as it was at open; what the handle wrote cannot be read back before
/// CLOSE and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_opens_work() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    let rw_new = NEW.union(OpenFlags::READ);
    let fh = s
        .open("/w+.txt", rw_new, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    // A new, empty file: a read is the end of the file.
    assert_eq!(code(s.read(&fh, 0, 100).await), StatusCode::Eof);
    s.write(&fh, 0, b"hello ".to_vec()).await.unwrap();
    s.write(&fh, 6, b"world".to_vec()).await.unwrap();
    assert_eq!(code(s.read(&fh, 0, 100).await), StatusCode::OpUnsupported);
    s.close(fh).await.unwrap();
    assert_eq!(std::fs::read(h.alice("w+.txt")).unwrap(), b"hello world");

    // r+ of an existing file: read the header, patch it, the rest stays.
    put(&s, "/r+.txt", b"HEADER and the rest of the file").await;
    let fh = s
        .open(
            "/r+.txt",
            OpenFlags::READ.union(OpenFlags::WRITE),
            FileAttributes::default(),
        )
        .await
        .unwrap()
        .handle;
    assert_eq!(s.read(&fh, 0, 6).await.unwrap().data, b"HEADER");
    s.write(&fh, 0, b"header".to_vec()).await.unwrap();
    assert_eq!(s.read(&fh, 7, 3).await.unwrap().data, b"and");
    assert_eq!(s.fstat(&fh).await.unwrap().attrs.size, Some(31));
    s.close(fh).await.unwrap();
    assert_eq!(
        std::fs::read(h.alice("r+.txt")).unwrap(),
        b"header and the rest of the file"
    );

    // ftruncate to 0 right after an open without TRUNC, then writes: the old bytes are gone.
    put(&s, "/ft.txt", b"a long old content").await;
    let fh = s
        .open("/ft.txt", OpenFlags::WRITE, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    let zero = FileAttributes {
        size: Some(0),
        ..Default::default()
    };
    s.fsetstat(&fh, zero.clone()).await.unwrap();
    s.write(&fh, 0, b"short".to_vec()).await.unwrap();
    s.close(fh).await.unwrap();
    assert_eq!(std::fs::read(h.alice("ft.txt")).unwrap(), b"short");
    // truncate -s 0 by path.
    s.setstat("/ft.txt", zero).await.unwrap();
    assert_eq!(std::fs::read(h.alice("ft.txt")).unwrap(), b"");
}

/// Issue 13 item 16: renaming a missing file onto itself is NO_SUCH_FILE (OpenSSH's
/// sftp-server), with both rename flavours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renaming_a_missing_file_onto_itself_fails() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    assert_eq!(
        code(s.rename("/ghost", "/ghost").await),
        StatusCode::NoSuchFile
    );
    let mut data = ssh_string("/ghost");
    data.extend(ssh_string("/ghost"));
    let p = s.extended("posix-rename@openssh.com", data).await.unwrap();
    assert_eq!(status_of(p), StatusCode::NoSuchFile);
    put(&s, "/here", b"x").await;
    s.rename("/here", "/here").await.unwrap();
    assert_eq!(std::fs::read(h.alice("here")).unwrap(), b"x");
}

// ---------------------------------------------------------------- reads from a bucket

/// A TCP relay in front of an S3 server that can play dead: once killed, it cuts every
/// connection it relays and closes each new one at once, counting them. A cut connection
/// carries no further request, so each one counted is one attempt of a request.
struct Relay {
    addr: std::net::SocketAddr,
    /// (killed, relayed connections).
    state: std::sync::Arc<std::sync::Mutex<(bool, Vec<tokio::task::JoinHandle<()>>)>>,
    after_kill: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state: std::sync::Arc<std::sync::Mutex<(bool, Vec<tokio::task::JoinHandle<()>>)>> =
            Default::default();
        let after_kill = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (st, ak) = (state.clone(), after_kill.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let mut s = st.lock().unwrap();
                if s.0 {
                    ak.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    drop(sock);
                    continue;
                }
                s.1.push(tokio::spawn(async move {
                    if let Ok(mut up) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut sock, &mut up).await;
                    }
                }));
            }
        });
        Relay {
            addr,
            state,
            after_kill,
            task,
        }
    }

    /// The server dies: every connection is cut, every new one closed.
    fn kill(&self) {
        let mut s = self.state.lock().unwrap();
        s.0 = true;
        for t in s.1.drain(..) {
            t.abort();
        }
    }

    /// Connections attempted since the kill.
    fn attempts_after_kill(&self) -> usize {
        self.after_kill.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.kill();
    }
}

/// A server whose alice sees `backend` (under `prefix`) at `/bucket`.
async fn bucket_harness(backend: bucketgate_storage::s3::S3Backend, prefix: &str) -> Harness {
    let mount = bucketgate_storage::Mount {
        path: bucketgate_storage::VPath::parse("/users/alice/bucket").unwrap(),
        area: bucketgate_storage::Area {
            backend: std::sync::Arc::new(backend),
            prefix: prefix.to_string(),
        },
    };
    Harness::start_with_mounts(vec![mount]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_handle_never_returns_bytes_of_a_newer_version() {
    let srv = s3_support::s3s_server(None).await;
    let direct = srv.backend();
    let old = s3_support::data(3 << 20, 1);
    s3_support::put(&direct, &srv.key("f.bin"), &old, 1 << 20).await;
    let h = bucket_harness(srv.backend(), &srv.prefix).await;
    let s = h.sftp_alice_key().await.unwrap();
    let r = s
        .open("/bucket/f.bin", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    const CH: usize = 32 * 1024;
    assert_eq!(s.read(&r, 0, CH as u32).await.unwrap().data, old[..CH]);

    // Another client replaces the object with other bytes of another size.
    let new = s3_support::data(5 << 20, 2);
    s3_support::put(&direct, &srv.key("f.bin"), &new, 1 << 20).await;

    // Reads further on, past the read-ahead (a new request to the bucket), and back: each one
    // returns the old bytes or an error, never the new ones.
    let mut errors = 0;
    for off in [CH, 2 << 20, (3 << 20) - CH, 100, 1 << 20] {
        match s.read(&r, off as u64, CH as u32).await {
            Ok(d) => {
                let end = (off + d.data.len()).min(old.len());
                assert!(
                    d.data == old[off..end],
                    "bytes at {off} of a version never opened"
                );
            }
            Err(e) => {
                assert_eq!(code::<()>(Err(e)), StatusCode::Failure);
                errors += 1;
            }
        }
    }
    assert!(errors > 0, "reads past the read-ahead cannot all be served");
    s.close(&r).await.unwrap();

    // Opened again, the file is the new version.
    let r = s
        .open("/bucket/f.bin", OpenFlags::READ, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    let off = 4 << 20;
    assert_eq!(
        s.read(&r, off as u64, CH as u32).await.unwrap().data,
        new[off..off + CH]
    );
}

/// 64 reads of 32 KiB in flight from `off` on, as OpenSSH keeps them.
async fn window(s: &Sftp, h: &str, off: usize) -> Vec<Result<russh_sftp::protocol::Data, SftpErr>> {
    let reqs = (0..64).map(|i| s.read(h, (off + i * 32 * 1024) as u64, 32 * 1024));
    futures::future::join_all(reqs).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_remote_fails_the_outstanding_reads_at_once() {
    let srv = s3_support::s3s_server(None).await;
    let size = 16 << 20;
    let bytes = s3_support::data(size, 3);
    s3_support::put(&srv.backend(), &srv.key("big.bin"), &bytes, 4 << 20).await;
    let relay = Relay::start(srv.addr()).await;
    let attempts = 4;
    let b = srv.backend_with(|o| {
        o.endpoint = format!("http://{}", relay.addr);
        o.retries = bucketgate_storage::s3::RetryPolicy {
            max_attempts: attempts,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
        };
    });
    let h = bucket_harness(b, &srv.prefix).await;
    let s = h.sftp_alice_key().await.unwrap();
    let r = s
        .open(
            "/bucket/big.bin",
            OpenFlags::READ,
            FileAttributes::default(),
        )
        .await
        .unwrap()
        .handle;
    const CH: usize = 32 * 1024;
    // A first window of 64 reads in flight, as OpenSSH keeps.
    for (i, res) in window(&s, &r, 0).await.into_iter().enumerate() {
        assert!(res.unwrap().data == bytes[i * CH..(i + 1) * CH]);
    }

    // The S3 server dies mid-download; the client goes on with windows of 64 reads.
    relay.kill();
    let mut off = 64 * CH;
    let mut failed = false;
    while off < size && !failed {
        for (i, res) in window(&s, &r, off).await.into_iter().enumerate() {
            match res {
                Ok(d) => {
                    assert!(!failed, "a read after a failure succeeded");
                    let at = off + i * CH;
                    assert!(d.data == bytes[at..at + CH], "bytes at {at}");
                }
                Err(e) => {
                    assert_eq!(code::<()>(Err(e)), StatusCode::Failure);
                    failed = true;
                }
            }
        }
        off += 64 * CH;
    }
    assert!(failed, "the download cannot succeed with the server dead");
    // Once the handle knows the remote is dead, more reads fail without asking it again: one
    // resumed request (with its retries) in all, not one per outstanding read.
    for res in window(&s, &r, off.min(size - 64 * CH)).await {
        assert_eq!(code::<()>(res.map(|_| ())), StatusCode::Failure);
    }
    let n = relay.attempts_after_kill();
    assert!(
        n <= 2 * attempts as usize,
        "{n} connections to the dead remote after it died"
    );
}

/// The body of a `copy-data` request.
fn copy_data(from: &str, from_offset: u64, len: u64, to: &str, to_offset: u64) -> Vec<u8> {
    let mut v = ssh_string(from);
    v.extend_from_slice(&from_offset.to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend(ssh_string(to));
    v.extend_from_slice(&to_offset.to_be_bytes());
    v
}

/// `copy-data` with ranges, as OpenSSH's sftp-server does them (its own client only ever
/// copies whole files): a range, the rest to the end, a range past the end (nothing), and the
/// copy is committed at the target's CLOSE only; refused with one handle as source and target,
/// from a handle not open for reading, and to a handle not open for writing. On the site tree
/// and on a bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_data_copies_ranges_between_handles() {
    let srv = s3_support::s3s_server(None).await;
    let local = Harness::start().await;
    let bucket = bucket_harness(srv.backend(), &srv.prefix).await;
    for (h, dir) in [(&local, ""), (&bucket, "/bucket")] {
        let s = h.sftp_alice_key().await.unwrap();
        put(&s, &format!("{dir}/src.txt"), b"0123456789abcdef").await;
        let r = s
            .open(
                format!("{dir}/src.txt"),
                OpenFlags::READ,
                FileAttributes::default(),
            )
            .await
            .unwrap()
            .handle;
        let w = s
            .open(format!("{dir}/dst.txt"), NEW, FileAttributes::default())
            .await
            .unwrap()
            .handle;
        for (body, want) in [
            (copy_data(&r, 4, 6, &w, 0), StatusCode::Ok),
            (copy_data(&r, 10, 0, &w, 6), StatusCode::Ok),
            (copy_data(&r, 100, 0, &w, 12), StatusCode::Ok),
            (copy_data(&w, 0, 0, &w, 100), StatusCode::OpUnsupported),
            (copy_data(&r, 0, 0, &r, 0), StatusCode::OpUnsupported),
            (copy_data(&w, 0, 0, &r, 0), StatusCode::Failure),
            (copy_data(&r, 0, 0, "nonesuch", 0), StatusCode::Failure),
        ] {
            let got = status_of(s.extended("copy-data", body).await.unwrap());
            assert_eq!(got, want, "[{dir}]");
        }
        // Nothing in the tree or the bucket before the target's CLOSE.
        if dir.is_empty() {
            assert!(!h.alice("dst.txt").exists());
        } else {
            use bucketgate_storage::backend::Backend;
            let e = srv.backend().stat(&srv.key("dst.txt")).await.unwrap_err();
            assert_eq!(e.kind(), bucketgate_storage::ErrorKind::NotFound);
        }
        s.close(&w).await.unwrap();
        s.close(&r).await.unwrap();
        let back = s
            .open(
                format!("{dir}/dst.txt"),
                OpenFlags::READ,
                FileAttributes::default(),
            )
            .await
            .unwrap()
            .handle;
        assert_eq!(s.read(&back, 0, 100).await.unwrap().data, b"456789abcdef");
        s.close(back).await.unwrap();
    }
}

/// A name ending in `/` names a folder, as on a disk (OpenSSH's server passes it to open(2),
/// stat(2), unlink(2) and rename(2), which fail with ENOTDIR or EISDIR unless it is one): an
/// open for writing of `newdir/` made a file named `newdir`, and REMOVE of `file/` removed
/// `file`. Each is refused now and changes nothing; the same names work on folders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_ending_in_a_slash_is_a_folder_or_nothing() {
    let h = Harness::start().await;
    let s = h.sftp_alice_key().await.unwrap();
    put(&s, "/file.txt", b"kept").await;
    s.mkdir("/dir", FileAttributes::default()).await.unwrap();
    let fails = |r: Result<(), SftpErr>| assert!(r.is_err());
    for p in ["/newdir/", "/file.txt/", "/dir/", "/file.txt/."] {
        fails(s.open(p, NEW, FileAttributes::default()).await.map(|_| ()));
    }
    fails(
        s.open("/file.txt/", OpenFlags::READ, FileAttributes::default())
            .await
            .map(|_| ()),
    );
    fails(s.stat("/file.txt/").await.map(|_| ()));
    fails(s.lstat("/file.txt/").await.map(|_| ()));
    fails(s.remove("/file.txt/").await.map(|_| ()));
    fails(s.rename("/file.txt", "/newname/").await.map(|_| ()));
    fails(s.rename("/file.txt/", "/newname").await.map(|_| ()));
    let perms = FileAttributes {
        mtime: Some(1_000_000_000),
        atime: Some(1_000_000_000),
        ..Default::default()
    };
    fails(s.setstat("/file.txt/", perms).await.map(|_| ()));
    assert!(!h.alice("newdir").exists() && !h.alice("newname").exists());
    assert_eq!(std::fs::read(h.alice("file.txt")).unwrap(), b"kept");
    // Folders: all as before.
    assert!(s.stat("/dir/").await.is_ok());
    s.rename("/dir/", "/dir2/").await.unwrap();
    assert!(h.alice("dir2").is_dir());
    s.mkdir("/made/", FileAttributes::default()).await.unwrap();
    assert!(h.alice("made").is_dir());
    assert!(s.stat("/file.txt").await.is_ok());
}
