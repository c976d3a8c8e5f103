//! Connection-level behaviour: admission, algorithms, graceful shutdown, packet limits.

use crate::sftp_common;

use bucketgate_protocols::auth::Protocol;
use russh::keys::PrivateKeyWithHashAlg;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use sftp_common::{Harness, TrustAll, ALICE_PW};
use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Reads the server's first bytes; a refused connection closes without an SSH banner.
async fn banner(h: &Harness) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("server neither answered nor closed")
        .unwrap_or(0);
    buf.truncate(n);
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_address_is_refused_before_key_exchange() {
    let h = Harness::start().await;
    assert!(banner(&h).await.starts_with(b"SSH-2.0-"));
    // Unknown users score 2 each; the default threshold is 15.
    for _ in 0..8 {
        let _ = h
            .login
            .login_password(Protocol::Sftp, LOCAL, "nobody", "x")
            .await;
    }
    assert!(h.login.is_banned(LOCAL));
    assert!(banner(&h).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cap_refuses_then_frees_the_slot() {
    let h = Harness::start_limited(1).await;
    let s = h.sftp_password("alice", ALICE_PW).await.unwrap();
    assert_eq!(h.limiter.active(), 1);
    assert!(banner(&h).await.is_empty(), "second session admitted");
    s.ssh
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await
        .unwrap();
    drop(s);
    // The slot comes back when the connection ends.
    tokio::time::timeout(Duration::from_secs(10), async {
        while h.limiter.active() != 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("slot not released");
    h.sftp_password("alice", ALICE_PW).await.unwrap();
}

async fn connect_with(h: &Harness, preferred: russh::Preferred) -> Result<(), russh::Error> {
    let config = Arc::new(russh::client::Config {
        preferred,
        ..Default::default()
    });
    let mut c = russh::client::connect(config, h.addr, TrustAll).await?;
    let key = PrivateKeyWithHashAlg::new(Arc::new(h.alice_key.clone()), None);
    assert!(c.authenticate_publickey("alice", key).await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sha1_key_exchange_only_with_legacy_algorithms() {
    let old = russh::Preferred {
        kex: Cow::Owned(vec![russh::kex::DH_G14_SHA1]),
        ..Default::default()
    };
    let h = Harness::start().await;
    assert!(connect_with(&h, old.clone()).await.is_err());
    let h = Harness::start_with(|o| o.legacy_algorithms = true).await;
    connect_with(&h, old).await.unwrap();
    connect_with(&h, russh::Preferred::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_transfer_finish_and_closes_idle_sessions() {
    let mut h = Harness::start_with(|o| o.shutdown_grace = Duration::from_secs(20)).await;
    let idle = h.sftp_alice_key().await.unwrap();
    let busy = h.sftp_alice_key().await.unwrap();
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let w = busy
        .open("/late.txt", flags, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    busy.write(&w, 0, b"first ".to_vec()).await.unwrap();

    h.begin_stop();
    // New connections are no longer accepted.
    tokio::time::timeout(Duration::from_secs(10), async {
        while tokio::net::TcpStream::connect(h.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("still accepting");
    // The idle session is closed...
    tokio::time::timeout(Duration::from_secs(10), async {
        while !idle.ssh.is_closed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("idle session not closed");
    // ...while the upload in progress goes on and commits.
    busy.write(&w, 6, b"second".to_vec()).await.unwrap();
    busy.close(&w).await.unwrap();
    h.stopped().await;
    assert_eq!(std::fs::read(h.alice("late.txt")).unwrap(), b"first second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_grace_over_aborts_unfinished_uploads() {
    let mut h = Harness::start_with(|o| o.shutdown_grace = Duration::from_millis(300)).await;
    let s = h.sftp_alice_key().await.unwrap();
    let flags = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
    let w = s
        .open("/never.txt", flags, FileAttributes::default())
        .await
        .unwrap()
        .handle;
    s.write(&w, 0, b"partial".to_vec()).await.unwrap();
    h.stop().await;
    assert!(s.ssh.is_closed() || s.close(&w).await.is_err());
    assert!(!h.alice("never.txt").exists());
}

/// An SFTP packet of type `kind` (its id, if any, at the start of `body`).
fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut v = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    v.push(kind);
    v.extend_from_slice(body);
    v
}

/// An SSH `string`.
fn string(s: &[u8]) -> Vec<u8> {
    let mut v = (s.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(s);
    v
}

/// The next reply: its type and the rest.
async fn reply(st: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u8, Vec<u8>) {
    let len = st.read_u32().await.unwrap() as usize;
    let mut b = vec![0u8; len];
    st.read_exact(&mut b).await.unwrap();
    (b[0], b[1..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_packet_is_refused_and_the_stream_stays_in_step() {
    let h = Harness::start_with(|o| o.max_packet_len = 64 * 1024).await;
    let c = h.alice_logged_in().await;
    let ch = c.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let mut st = ch.into_stream();
    st.write_all(&packet(1, &3u32.to_be_bytes())).await.unwrap(); // INIT
    assert_eq!(reply(&mut st).await.0, 2); // VERSION

    // A WRITE of 100 KiB to a bogus handle: longer than the limit, skipped whole.
    let mut body = 7u32.to_be_bytes().to_vec();
    body.extend(string(b"nohandle"));
    body.extend(0u64.to_be_bytes());
    body.extend(string(&vec![0u8; 100 * 1024]));
    st.write_all(&packet(6, &body)).await.unwrap();
    let (kind, b) = reply(&mut st).await;
    assert_eq!(kind, 101); // STATUS
    assert_eq!(&b[..4], &7u32.to_be_bytes());
    assert_eq!(&b[4..8], &(StatusCode::Failure as u32).to_be_bytes());

    // The next request is read correctly.
    let mut body = 8u32.to_be_bytes().to_vec();
    body.extend(string(b"/archive"));
    st.write_all(&packet(17, &body)).await.unwrap(); // STAT
    let (kind, b) = reply(&mut st).await;
    assert_eq!(kind, 105); // ATTRS
    assert_eq!(&b[..4], &8u32.to_be_bytes());
}

/// Whatever a client sends on a session channel before asking for the subsystem (OpenSSH's
/// `SendEnv LANG LC_*` sends one env request per variable set; others ask for a pty, agent or
/// X11 forwarding, resize, signal, or send data early), the SFTP session then starts and
/// answers. russh queued each of these for the channel and waited while its queue (two
/// messages) was full; nothing read that queue before the subsystem started, so the third
/// request hung the connection for good (CI's lftp test, with two locale variables set).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_before_the_subsystem_do_not_stop_the_session() {
    let h = Harness::start().await;
    let c = h.alice_logged_in().await;
    let ch = c.channel_open_session().await.unwrap();
    for (k, v) in [
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C.UTF-8"),
        ("LC_CTYPE", "C.UTF-8"),
        ("LC_MESSAGES", "C"),
        ("LC_TIME", "C"),
        ("LC_NUMERIC", "C"),
    ] {
        ch.set_env(true, k, v).await.unwrap();
    }
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.agent_forward(true).await.unwrap();
    ch.request_x11(true, false, "MIT-MAGIC-COOKIE-1", "00ff", 0)
        .await
        .unwrap();
    ch.window_change(100, 40, 0, 0).await.unwrap();
    ch.signal(russh::Sig::INT).await.unwrap();
    ch.data(&b"early bytes nobody reads"[..]).await.unwrap();
    ch.set_env(false, "TZ", "UTC").await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let raw = russh_sftp::client::RawSftpSession::new(ch.into_stream());
    let answered = tokio::time::timeout(Duration::from_secs(60), async {
        raw.init().await.unwrap();
        raw.stat("/").await.unwrap()
    })
    .await
    .expect("the session never answered after the channel's early requests");
    assert!(answered.attrs.is_dir());
}

/// An SFTP session holds its share of the memory budget while it has a file open (what russh
/// and the packet loop keep per transferring session lives outside the transfer buffers),
/// takes it only when the budget has it free, and gives it back when its files are closed or
/// it ends. An idle session holds none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_with_a_file_open_holds_its_share_of_the_memory_budget() {
    use bucketgate_storage::budget::MemoryBudget;
    const SHARE: u64 = 96 * 1024;
    let budget = MemoryBudget::shared(1024 * 1024);
    let b = budget.clone();
    let h = Harness::start_with(move |o| o.memory = Some(b)).await;
    // A new file open for writing; its handle.
    async fn create(s: &sftp_common::Sftp, path: &str) -> String {
        let write = OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE;
        let opened = s.raw.open(path, write, FileAttributes::empty()).await;
        opened.unwrap().handle
    }
    let one = h.sftp_password("alice", ALICE_PW).await.unwrap();
    let dir = one.raw.opendir("/").await.unwrap().handle;
    assert_eq!(budget.in_use(), 0, "an open folder is not a transfer");
    let f1 = create(&one, "/one.bin").await;
    assert_eq!(budget.in_use(), SHARE);
    let two = h.sftp_password("alice", ALICE_PW).await.unwrap();
    two.raw.stat("/").await.unwrap();
    assert_eq!(budget.in_use(), SHARE, "an idle session holds none");
    let f2 = create(&two, "/two.bin").await;
    let f3 = create(&two, "/three.bin").await;
    assert_eq!(budget.in_use(), 2 * SHARE, "one share per session");
    one.raw.close(f1).await.unwrap();
    assert_eq!(budget.in_use(), SHARE);
    one.raw.close(dir).await.unwrap();
    two.raw.close(f2).await.unwrap();
    assert_eq!(budget.in_use(), SHARE, "a file is still open");
    // The session ends with its file open: the share goes with it.
    let _ = f3;
    two.ssh
        .disconnect(russh::Disconnect::ByApplication, "", "")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while budget.in_use() != 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(budget.in_use(), 0, "an ended session kept its share");

    // A budget with no room for the share: the upload works all the same.
    let full = MemoryBudget::shared(1024 * 1024);
    let all = full.try_acquire(1024 * 1024).unwrap();
    let f = full.clone();
    let h = Harness::start_with(move |o| o.memory = Some(f)).await;
    let s = h.sftp_password("alice", ALICE_PW).await.unwrap();
    let fh = create(&s, "/full.bin").await;
    s.raw
        .write(fh.clone(), 0, b"written".to_vec())
        .await
        .unwrap();
    s.raw.close(fh).await.unwrap();
    assert_eq!(std::fs::read(h.alice("full.bin")).unwrap(), b"written");
    assert_eq!(full.in_use(), 1024 * 1024);
    drop(all);
}

/// A client's TCP stream that can stop reading, as a client whose process is stopped (or whose
/// network stalls) does: the server's replies then pile up in the socket buffers.
struct Stalling {
    tcp: tokio::net::TcpStream,
    paused: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
}

impl tokio::io::AsyncRead for Stalling {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::sync::atomic::Ordering;
        if self.paused.load(Ordering::SeqCst) {
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.paused.load(Ordering::SeqCst) {
                return std::task::Poll::Pending;
            }
        }
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Stalling {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// A download whose client stopped reading: the server has filled the client's SSH window and
/// has more replies waiting for room in it.
struct Stalled {
    s: Arc<sftp_common::Sftp>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    waker: Arc<std::sync::Mutex<Option<std::task::Waker>>>,
    /// The client's socket, for ending it as a killed client process would.
    socket: std::net::TcpStream,
    reads: Vec<
        tokio::task::JoinHandle<
            Result<russh_sftp::protocol::Data, russh_sftp::client::error::Error>,
        >,
    >,
}

impl Stalled {
    async fn start(h: &Harness) -> Stalled {
        std::fs::write(h.alice("big.bin"), vec![7u8; 8 << 20]).unwrap();
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waker: Arc<std::sync::Mutex<Option<std::task::Waker>>> = Arc::default();
        let tcp = tokio::net::TcpStream::connect(h.addr).await.unwrap();
        let std_tcp = tcp.into_std().unwrap();
        let socket = std_tcp.try_clone().unwrap();
        let stream = Stalling {
            tcp: tokio::net::TcpStream::from_std(std_tcp).unwrap(),
            paused: paused.clone(),
            waker: waker.clone(),
        };
        let config = Arc::new(russh::client::Config {
            window_size: 64 * 1024,
            ..Default::default()
        });
        let mut ssh = russh::client::connect_stream(config, stream, TrustAll)
            .await
            .unwrap();
        let r = ssh.authenticate_password("alice", ALICE_PW).await.unwrap();
        assert!(r.success());
        let s = Arc::new(sftp_common::open_sftp(ssh).await.unwrap());
        let fh = s
            .raw
            .open("/big.bin", OpenFlags::READ, FileAttributes::default())
            .await
            .unwrap()
            .handle;
        paused.store(true, std::sync::atomic::Ordering::SeqCst);
        // 8 MiB of reads asked for at once; the client reads none of the replies.
        let reads = (0..256u64)
            .map(|i| {
                let (s, fh) = (s.clone(), fh.clone());
                tokio::spawn(async move { s.raw.read(fh, i * 32768, 32768).await })
            })
            .collect();
        // Time for the server to fill the client's window and its queue behind it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        Stalled {
            s,
            paused,
            waker,
            socket,
            reads,
        }
    }

    fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        for r in &self.reads {
            r.abort();
        }
    }
}

/// A server with a memory budget, and a download of it that stalled.
async fn stalled_download() -> (
    Harness,
    Arc<bucketgate_storage::budget::MemoryBudget>,
    Stalled,
) {
    let budget = bucketgate_storage::budget::MemoryBudget::shared(64 << 20);
    let b = budget.clone();
    let h = Harness::start_with(move |o| o.memory = Some(b)).await;
    let stalled = Stalled::start(&h).await;
    (h, budget, stalled)
}

/// What a session holds on the server: (session slots, budget bytes, logged-in sessions), once
/// they are all back to nothing or after a minute.
async fn held_after_the_end(
    h: &Harness,
    budget: &bucketgate_storage::budget::MemoryBudget,
) -> (usize, u64, usize) {
    let held = || (h.limiter.active(), budget.in_use(), h.login.sessions_open());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while held() != (0, 0, 0) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    held()
}

/// A reload that removes the user of a session whose client has stopped reading in the middle
/// of a download ends that session, its connection and everything it holds, although the
/// client never reads again: the server's replies fill the client's SSH window, russh then
/// takes no message from its queue (the disconnect included) until the client makes room, and
/// the server must give up on a polite goodbye and close the connection itself. (It used to
/// release the session's slot but leave russh's connection task running, with the session's
/// open file and its share of the memory budget, until the idle timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_ends_even_when_its_client_stopped_reading() {
    let (h, budget, stalled) = stalled_download().await;
    assert_eq!(h.limiter.active(), 1);
    assert!(
        budget.in_use() > 0,
        "the open file holds the session's share"
    );
    let tree = h.login.directory().tree().clone();
    let effect = h
        .login
        .replace_directory(bucketgate_protocols::auth::Directory::new(vec![], tree));
    assert_eq!(effect.closed, 1, "alice's session is closed by the reload");
    // The session is gone, although its client still does not read.
    assert_eq!(
        held_after_the_end(&h, &budget).await,
        (0, 0, 0),
        "the revoked session still holds something"
    );
    // The connection itself was closed: once the client reads again, it finds the end of it
    // behind the replies that were on their way.
    stalled.resume();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !stalled.s.ssh.is_closed() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stalled.s.ssh.is_closed(),
        "the revoked session's connection is still open"
    );
}

/// A client killed in the middle of a download, while the server waits for room in its SSH
/// window, leaves nothing behind: the replies waiting for that room are given up when the
/// connection ends. (They used to wait forever, holding the session's open file and its share of
/// the memory budget, and keeping a graceful shutdown waiting for its whole grace period.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_killed_while_its_window_is_full_leaves_nothing_behind() {
    let (h, budget, stalled) = stalled_download().await;
    assert!(
        budget.in_use() > 0,
        "the open file holds the session's share"
    );
    // The client process dies: its socket is closed under it.
    stalled.socket.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(
        held_after_the_end(&h, &budget).await,
        (0, 0, 0),
        "the killed client's session still holds something"
    );
}

/// A name that is not UTF-8 (a client in another character set: `café` in Latin-1, `caf\xe9`)
/// was decoded with a replacement character, so `caf\xe9.txt` and `caf\xe8.txt` were one file
/// and the second upload replaced the first. Such a name is refused with a FAILURE now, in
/// every request that carries names, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_utf8_are_refused_not_replaced() {
    let h = Harness::start().await;
    let c = h.alice_logged_in().await;
    let ch = c.channel_open_session().await.unwrap();
    ch.request_subsystem(true, "sftp").await.unwrap();
    let mut st = ch.into_stream();
    // A request: its type, its id, its body.
    let packet = |kind: u8, id: u32, body: &[u8]| {
        let mut b = id.to_be_bytes().to_vec();
        b.extend_from_slice(body);
        packet(kind, &b)
    };
    st.write_all(&[0, 0, 0, 5, 1, 0, 0, 0, 3]).await.unwrap(); // INIT v3
    assert_eq!(reply(&mut st).await.0, 2); // VERSION
    let latin1 = b"/caf\xe9.txt".as_slice();
    // OPEN for writing (CREAT|TRUNC|WRITE, no attributes), MKDIR, STAT, RENAME to and from,
    // posix-rename.
    let mut open = string(latin1);
    open.extend(0x1au32.to_be_bytes());
    open.extend(0u32.to_be_bytes());
    let mut mkdir = string(b"/d\xe9");
    mkdir.extend(0u32.to_be_bytes());
    let mut rename_to = string(b"/archive");
    rename_to.extend(string(latin1));
    let mut rename_from = string(latin1);
    rename_from.extend(string(b"/x.txt"));
    let mut posix = string(b"posix-rename@openssh.com");
    posix.extend(string(b"/archive"));
    posix.extend(string(latin1));
    let requests: [(u8, Vec<u8>); 6] = [
        (3, open),
        (14, mkdir),
        (17, string(latin1)),
        (18, rename_to),
        (18, rename_from),
        (200, posix),
    ];
    for (i, (kind, body)) in requests.into_iter().enumerate() {
        let id = 10 + i as u32;
        st.write_all(&packet(kind, id, &body)).await.unwrap();
        let (k, b) = reply(&mut st).await;
        assert_eq!(k, 101, "request {i}: a STATUS");
        assert_eq!(&b[..4], &id.to_be_bytes());
        assert_eq!(
            &b[4..8],
            &(StatusCode::Failure as u32).to_be_bytes(),
            "request {i}"
        );
    }
    // Nothing was made or moved, and the session still answers.
    let names: Vec<_> = std::fs::read_dir(h.alice(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.contains('\u{FFFD}')), "{names:?}");
    assert!(h.alice("archive").is_dir());
    st.write_all(&packet(17, 99, &string(b"/archive")))
        .await
        .unwrap();
    assert_eq!(reply(&mut st).await.0, 105); // ATTRS
}
