//! Refusals: missing files, folder permissions, paths that try to leave the home, bad logins,
//! bans and caps, over-long or non-UTF-8 lines, the login grace, foreign data connections, and
//! shutdown.

use crate::ftp_harness;

use ftp_harness::{reply_text, Harness, RawFtp, Setup, PASSWORD, USER};
use std::io::Cursor;
use std::time::Duration;
use suppaftp::tokio::AsyncFtpStream;

/// The error of a download that must fail. libunftp answers `150` before it opens the file, so
/// the `550` may come only at the end of the transfer.
async fn retr_err(c: &mut AsyncFtpStream, path: &str) -> suppaftp::FtpError {
    match c.retr_as_stream(path).await {
        Err(e) => e,
        Ok(mut s) => {
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf).await;
            assert!(buf.is_empty());
            s.finish().await.unwrap_err()
        }
    }
}

#[tokio::test]
async fn missing_files_are_550() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    for err in [
        retr_err(&mut c, "nope.txt").await,
        c.size("nope.txt").await.unwrap_err(),
        c.mdtm("nope.txt").await.unwrap_err(),
        c.rm("nope.txt").await.unwrap_err(),
        c.rmdir("nope").await.unwrap_err(),
        c.cwd("nope").await.unwrap_err(),
        c.rename("nope", "other").await.unwrap_err(),
        c.list(Some("nope")).await.unwrap_err(),
    ] {
        assert!(reply_text(&err).starts_with("550"), "{err:?}");
    }
    // Still usable afterwards.
    c.noop().await.unwrap();
}

#[tokio::test]
async fn mkd_of_an_existing_folder_is_550() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    c.mkdir("docs").await.unwrap();
    // RFC 959 lists no 553 for MKD; clients that mirror treat 550 as "already there".
    let err = c.mkdir("docs").await.unwrap_err();
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    assert!(h.file("docs").is_dir());
}

#[tokio::test]
async fn read_only_folder_refuses_changes_and_leaves_nothing() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;

    let err = c
        .put_file("ro/new.txt", &mut Cursor::new(b"nope".to_vec()))
        .await
        .unwrap_err();
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    assert!(!h.file("ro/new.txt").exists());
    assert!(h.staging_empty());

    let err = c.rm("ro/locked.txt").await.unwrap_err();
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    let err = c.rename("ro/locked.txt", "stolen.txt").await.unwrap_err();
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    let err = c.mkdir("ro/sub").await.unwrap_err();
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    let err = c
        .append_file("ro/locked.txt", &mut Cursor::new(b"more".to_vec()))
        .await
        .unwrap_err();
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    let err = c
        .custom_command(
            "MFMT 20200102030405 ro/locked.txt",
            &[suppaftp::Status::File],
        )
        .await
        .unwrap_err();
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    assert_eq!(h.read("ro/locked.txt"), b"read only");
    assert!(!h.file("stolen.txt").exists());
    assert!(!h.file("ro/sub").exists());

    // Reading and listing are allowed there.
    let mut s = c.retr_as_stream("ro/locked.txt").await.unwrap();
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf)
        .await
        .unwrap();
    s.finish().await.unwrap();
    assert_eq!(buf, b"read only");
    assert_eq!(c.nlst(Some("ro")).await.unwrap(), ["locked.txt"]);
}

#[tokio::test]
async fn paths_cannot_leave_the_home() {
    let h = Harness::start(Setup::default()).await;
    std::fs::write(h.root.join("secret.txt"), b"outside").unwrap();
    let mut c = h.client().await;

    // `..` stops at the user's root, as in a chroot.
    c.put_file("../../x.txt", &mut Cursor::new(b"x".to_vec()))
        .await
        .unwrap();
    assert_eq!(h.read("x.txt"), b"x");
    assert!(!h.root.join("x.txt").exists());
    assert!(!h.dir.path().join("x.txt").exists());

    let err = retr_err(&mut c, "../../secret.txt").await;
    assert!(reply_text(&err).starts_with("550"), "{err:?}");
    c.cwd("../../..").await.unwrap();
    assert_eq!(c.pwd().await.unwrap(), "/");
    let names = c.nlst(Some("../..")).await.unwrap();
    assert!(
        !names.iter().any(|n| n == "secret.txt" || n == "users"),
        "{names:?}"
    );
    assert!(c.rm("../../secret.txt").await.is_err());
    assert_eq!(
        std::fs::read(h.root.join("secret.txt")).unwrap(),
        b"outside"
    );
}

#[tokio::test]
async fn bad_logins_get_530() {
    let h = Harness::start(Setup::default()).await;
    let mut c = AsyncFtpStream::connect(h.addr).await.unwrap();
    let err = c.login(USER, "wrong").await.unwrap_err();
    assert!(reply_text(&err).starts_with("530"), "{err:?}");
    let err = c.login("mallory", PASSWORD).await.unwrap_err();
    assert!(reply_text(&err).starts_with("530"), "{err:?}");
    // Nothing works before a login.
    assert!(c.list(None).await.is_err());
    // The right password still works on the same connection.
    c.login(USER, PASSWORD).await.unwrap();
    c.noop().await.unwrap();
}

#[tokio::test]
async fn banned_addresses_are_refused_at_connect() {
    let h = Harness::start(Setup {
        ban_threshold: 3,
        ..Setup::default()
    })
    .await;
    let mut c = AsyncFtpStream::connect(h.addr).await.unwrap();
    for _ in 0..3 {
        assert!(c.login(USER, "wrong").await.is_err());
    }
    let (_raw, greeting) = RawFtp::connect(h.addr).await;
    assert!(greeting.starts_with("421"), "{greeting}");
}

#[tokio::test]
async fn sessions_per_address_are_capped() {
    let h = Harness::start(Setup {
        max_sessions_per_ip: 1,
        ..Setup::default()
    })
    .await;
    let mut first = h.client().await;
    let (_raw, greeting) = RawFtp::connect(h.addr).await;
    assert!(greeting.starts_with("421"), "{greeting}");
    first.quit().await.unwrap();
    drop(first);
    // The slot comes back once the first session is gone. The server notices the QUIT
    // asynchronously, so poll on the connection's own answers (bounded).
    let mut tries = 0;
    loop {
        let (_raw, greeting) = RawFtp::connect(h.addr).await;
        if greeting.starts_with("220") {
            break;
        }
        tries += 1;
        assert!(tries < 200, "the session slot never came back");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn long_and_non_utf8_lines() {
    let h = Harness::start(Setup {
        max_line_len: 256,
        ..Setup::default()
    })
    .await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    raw.send(b"STOR \xff\xfe.txt\r\n").await;
    let r = raw.reply().await;
    assert!(r.starts_with("553"), "{r}");
    assert!(raw.cmd("NOOP").await.starts_with("200"));
    let long = format!("NOOP {}", "x".repeat(300));
    let r = raw.cmd(&long).await;
    assert!(r.starts_with("500"), "{r}");
    // And the connection is closed.
    assert_eq!(raw.reply().await, "");

    // A line without an end is cut off too.
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.send("y".repeat(1000).as_bytes()).await;
    let r = raw.reply().await;
    assert!(r.starts_with("500"), "{r}");
}

#[tokio::test]
async fn login_grace_closes_idle_connections() {
    let h = Harness::start(Setup {
        login_grace: Duration::from_millis(300),
        ..Setup::default()
    })
    .await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    let r = raw.reply().await;
    assert!(r.starts_with("421"), "{r}");
    assert_eq!(raw.reply().await, "");
}

#[tokio::test]
async fn active_mode_is_off_by_default() {
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    let r = raw.cmd("PORT 127,0,0,1,200,1").await;
    assert!(r.starts_with("502"), "{r}");
    let r = raw.cmd("EPRT |1|127.0.0.1|51201|").await;
    assert!(r.starts_with("502"), "{r}");
}

#[tokio::test]
async fn active_mode_only_to_the_client_itself() {
    let h = Harness::start(Setup {
        active_mode: true,
        ..Setup::default()
    })
    .await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    // Another host, or a privileged port: refused before any connection is tried.
    let r = raw.cmd("PORT 10,1,2,3,200,1").await;
    assert!(r.starts_with("500"), "{r}");
    let r = raw.cmd("PORT 127,0,0,1,0,22").await;
    assert!(r.starts_with("500"), "{r}");
    let r = raw.cmd("EPRT |1|10.1.2.3|51201|").await;
    assert!(r.starts_with("500"), "{r}");

    // To the client's own address it works, with PORT and with EPRT.
    h.write("act.txt", b"active bytes");
    for use_eprt in [false, true] {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let cmd = if use_eprt {
            format!("EPRT |1|127.0.0.1|{port}|")
        } else {
            format!("PORT 127,0,0,1,{},{}", port >> 8, port & 0xff)
        };
        let r = raw.cmd(&cmd).await;
        assert!(r.starts_with("200"), "{r}");
        let r = raw.cmd("RETR act.txt").await;
        assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
        let (mut data, _) = l.accept().await.unwrap();
        let mut buf = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut data, &mut buf)
            .await
            .unwrap();
        assert_eq!(buf, b"active bytes");
        let r = raw.reply().await;
        assert!(r.starts_with("226"), "{r}");
    }
}

#[tokio::test]
async fn data_connections_only_from_the_control_address() {
    let h = Harness::start(Setup::default()).await;
    // The session comes from 127.0.0.2 (still loopback); an intruder on 127.0.0.1 races it
    // to the passive port.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let (mut raw, _) = RawFtp::over(sock.connect(h.addr).await.unwrap()).await;
    raw.login_ok(USER, PASSWORD).await;
    h.write("secret.bin", b"for the session only");
    let r = raw.cmd("EPSV").await;
    assert!(r.starts_with("229"), "{r}");
    let port: u16 = r
        .split("(|||")
        .nth(1)
        .unwrap()
        .split('|')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let data_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let mut intruder = tokio::net::TcpStream::connect(data_addr).await.unwrap();
    let own = tokio::net::TcpSocket::new_v4().unwrap();
    own.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut own = own.connect(data_addr).await.unwrap();
    let r = raw.cmd("RETR secret.bin").await;
    assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
    let mut buf = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut own, &mut buf)
        .await
        .unwrap();
    assert_eq!(buf, b"for the session only");
    assert!(raw.reply().await.starts_with("226"));
    // The intruder got nothing but a closed connection.
    let mut stolen = Vec::new();
    let _ = tokio::io::AsyncReadExt::read_to_end(&mut intruder, &mut stolen).await;
    assert!(stolen.is_empty());
}

#[tokio::test]
async fn shutdown_says_goodbye_to_idle_sessions() {
    let mut h = Harness::start(Setup::default()).await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    h.shutdown.cancel();
    let r = raw.reply().await;
    assert!(r.starts_with("421"), "{r}");
    h.stop().await;
    assert!(tokio::net::TcpStream::connect(h.addr).await.is_err());
}

#[tokio::test]
async fn interrupted_upload_leaves_nothing() {
    let h = Harness::start(Setup::default()).await;
    h.write("keep.bin", b"old content");
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    for name in ["new.bin", "keep.bin"] {
        let r = raw.cmd("EPSV").await;
        assert!(r.starts_with("229"), "{r}");
        let port: u16 = r
            .split("(|||")
            .nth(1)
            .unwrap()
            .split('|')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let mut data = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let r = raw.cmd(&format!("STOR {name}")).await;
        assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
        tokio::io::AsyncWriteExt::write_all(&mut data, &vec![1u8; 64 * 1024])
            .await
            .unwrap();
        // A reset, not a clean end of file: the client went away mid-upload.
        data.set_zero_linger().unwrap();
        drop(data);
        let r = raw.reply().await;
        assert!(r.starts_with('4') || r.starts_with('5'), "{r}");
    }
    assert!(!h.file("new.bin").exists());
    assert_eq!(h.read("keep.bin"), b"old content");
    assert!(h.staging_empty());
}

/// A data connection reset the moment the transfer starts: libunftp 0.24 asks the peer
/// address of its side of the data connection first, and when the relay had already reset that
/// side it dropped the transfer without a reply, so the session hung (found by the
/// differential runner's reset uploads, one in a few dozen on a loaded machine). Every such
/// transfer must still get its final reply, and no upload may store anything.
// Several workers: the relay's splice and libunftp's accept must be able to race.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn data_connections_reset_at_once_still_get_a_final_reply() {
    let h = Harness::start(Setup::default()).await;
    h.write("keep.bin", b"old content");
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    for i in 0..300 {
        let cmd = match i % 4 {
            0 => "STOR new.bin",
            1 => "STOR keep.bin",
            2 => "RETR keep.bin",
            _ => "LIST",
        };
        let mut data = raw.epsv().await;
        let r = raw.cmd(cmd).await;
        assert!(r.starts_with("150") || r.starts_with("125"), "{cmd}: {r}");
        if cmd.starts_with("STOR") {
            let _ = tokio::io::AsyncWriteExt::write_all(&mut data, &[7u8; 150]).await;
        }
        data.set_zero_linger().unwrap();
        drop(data);
        // `reply` fails the test when none comes in time.
        let r = raw.reply().await;
        assert!(
            r.starts_with('2') || r.starts_with('4') || r.starts_with('5'),
            "{cmd} #{i}: {r:?}"
        );
        if cmd.starts_with("STOR") {
            assert!(!r.starts_with('2'), "{cmd} #{i} was reset, yet: {r}");
        }
    }
    assert!(!h.file("new.bin").exists());
    assert_eq!(h.read("keep.bin"), b"old content");
    assert!(raw.cmd("NOOP").await.starts_with("200"));
}

/// A line libunftp's parser refuses used to end the session after its 501; clients that send
/// `OPTS MLST` because FEAT lists MLST then could not log in.
#[tokio::test]
async fn refused_command_lines_keep_the_session() {
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    // Before the login as well.
    for (cmd, code) in [
        ("OPTS UTF8 ON", "200"),
        ("FEAT now", "501"),
        ("NOOP  ", "200"),
    ] {
        let r = raw.cmd(cmd).await;
        assert!(r.starts_with(code), "{cmd:?}: {r}");
        let r = raw.cmd("NOOP").await;
        assert!(r.starts_with("200"), "after {cmd:?}: {r}");
    }
    raw.login_ok(USER, PASSWORD).await;
    let feat = raw.cmd("FEAT").await;
    assert!(
        feat.contains("\r\n MLST type*;size*;modify*;\r\n"),
        "{feat}"
    );
    for (cmd, code) in [
        ("OPTS MLST type;size;", "200 MLST OPTS type;size;modify;"),
        ("OPTS MLST", "200"),
        ("OPTS UTF8 ON", "200"),
        ("OPTS utf8 On", "200"),
        ("OPTS UTF8", "200"),
        ("OPTS UTF8 OFF", "504"),
        ("OPTS WHATEVER 1", "501"),
        ("OPTS", "501"),
        ("REST abc", "501"),
        ("REST -1", "501"),
        ("REST", "501"),
        ("SIZE", "501"),
        ("SIZE  ", "501"),
        ("MDTM", "501"),
        ("RETR", "501"),
        ("STOR", "501"),
        ("APPE", "501"),
        ("DELE", "501"),
        ("RMD", "501"),
        ("MKD", "501"),
        ("RNFR", "501"),
        ("SITE MD5", "501"),
        ("NOOP now", "501"),
        ("PWD x", "501"),
        ("QUIT now", "501"),
        ("STOU x", "501"),
        ("STRU X", "501"),
        ("STRU f", "200"),
        ("MODE Q", "501"),
        ("MODE s", "200"),
        ("PBSZ 1", "502"),
        ("PROT Q", "502"),
        ("NOOP\rx", "501"),
        ("NOOP ", "200"),
    ] {
        let r = raw.cmd(cmd).await;
        assert!(r.starts_with(code), "{cmd:?}: {r}");
        let r = raw.cmd("PWD").await;
        assert!(r.starts_with("257"), "after {cmd:?}: {r}");
    }
}

/// A client killed mid-upload closes both its sockets normally: the end of the data looks like
/// the end of the file. Nothing may be stored, and an existing file keeps its bytes.
#[tokio::test]
async fn killed_client_stores_nothing() {
    let h = Harness::start(Setup::default()).await;
    h.write("keep.bin", b"old content");
    for control_first in [true, false] {
        for name in ["new.bin", "keep.bin"] {
            for _ in 0..2 {
                let (mut raw, _) = RawFtp::connect(h.addr).await;
                raw.login_ok(USER, PASSWORD).await;
                let mut data = raw.epsv().await;
                let r = raw.cmd(&format!("STOR {name}")).await;
                assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
                tokio::io::AsyncWriteExt::write_all(&mut data, &vec![7u8; 1 << 20])
                    .await
                    .unwrap();
                h.await_staging_empty(false).await;
                // Both sockets close at once (no await in between: the server cannot run), in
                // either order, with a FIN each as when the process is killed.
                if control_first {
                    drop(raw);
                    drop(data);
                } else {
                    drop(data);
                    drop(raw);
                }
                // The upload is over once nothing is staged any more (committed or given up).
                h.await_staging_empty(true).await;
                assert!(
                    !h.file("new.bin").exists(),
                    "control first: {control_first}"
                );
                assert_eq!(
                    h.read("keep.bin"),
                    b"old content",
                    "control first: {control_first}"
                );
            }
        }
    }
}

/// RFC 959: ABOR during a transfer gets the transfer's 426 first, then its own 226; the
/// aborted upload stores nothing, the aborted download stops.
#[tokio::test]
async fn abor_during_a_transfer_answers_426_then_226() {
    let h = Harness::start(Setup::default()).await;
    h.write("keep.bin", b"old content");
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    // Plain, then as Telnet clients send it (IAC IP, IAC DM before the command).
    let abors: [&[u8]; 2] = [b"ABOR\r\n", b"\xff\xf4\xff\xf2ABOR\r\n"];
    for (name, abor) in [("new.bin", abors[0]), ("keep.bin", abors[1])] {
        let mut data = raw.epsv().await;
        let r = raw.cmd(&format!("STOR {name}")).await;
        assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
        tokio::io::AsyncWriteExt::write_all(&mut data, &vec![7u8; 1 << 20])
            .await
            .unwrap();
        h.await_staging_empty(false).await;
        raw.send(abor).await;
        let first = raw.reply().await;
        let second = raw.reply().await;
        assert!(first.starts_with("426"), "{first} then {second}");
        assert!(second.starts_with("226"), "{first} then {second}");
        drop(data);
        assert!(raw.cmd("NOOP").await.starts_with("200"));
        assert!(h.staging_empty());
    }
    assert!(!h.file("new.bin").exists());
    assert_eq!(h.read("keep.bin"), b"old content");

    // A download the client does not read.
    h.write("big.bin", &vec![1u8; 8 << 20]);
    let _data = raw.epsv().await;
    let r = raw.cmd("RETR big.bin").await;
    assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
    raw.send(b"ABOR\r\n").await;
    let first = raw.reply().await;
    let second = raw.reply().await;
    assert!(first.starts_with("426"), "{first} then {second}");
    assert!(second.starts_with("226"), "{first} then {second}");

    // A listing the client does not read (libunftp sends no reply for a listing it could not
    // finish writing: the ABOR's replies must not wait for one forever).
    for i in 0..4000 {
        h.write(&format!("many/{i:05}-{}", "n".repeat(150)), b"");
    }
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let r = raw.cmd("EPSV").await;
    let port: u16 = r
        .split("(|||")
        .nth(1)
        .and_then(|x| x.split('|').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    let _data = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let r = raw.cmd("LIST many").await;
    assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
    raw.send(b"ABOR\r\n").await;
    let first = raw.reply().await;
    let second = raw.reply().await;
    assert!(first.starts_with("426"), "{first} then {second}");
    assert!(second.starts_with("226"), "{first} then {second}");

    // With no transfer, ABOR is just answered.
    assert!(raw.cmd("ABOR").await.starts_with("22"));
    assert!(raw.cmd("NOOP").await.starts_with("200"));
}

/// ABOR sent as TCP urgent data, as Python's ftplib (`FTP.abort()`: all of `ABOR\r\n` with
/// MSG_OOB) and BSD ftp (IAC IP IAC urgent, then DM and `ABOR\r\n`) send it, is answered like
/// a plain one: during a download the client does not read, during an upload, and with no
/// transfer. Before, a read stopped at the urgent mark left the ftplib line without its
/// final byte and the session never answered.
#[tokio::test]
async fn abor_sent_as_urgent_data_is_answered() {
    let h = Harness::start(Setup::default()).await;
    h.write("big.bin", &vec![1u8; 8 << 20]);
    h.write("keep.bin", b"old content");
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    let urgent = |raw: &RawFtp, bytes: &[u8]| {
        let n = socket2::SockRef::from(raw.w.as_ref())
            .send_out_of_band(bytes)
            .unwrap();
        assert_eq!(n, bytes.len());
    };
    let answered = |first: &str, second: &str| {
        assert!(first.starts_with("426"), "{first} then {second}");
        assert!(second.starts_with("226"), "{first} then {second}");
    };
    for style in ["ftplib", "bsd"] {
        // A download the client does not read.
        let _data = raw.epsv().await;
        let r = raw.cmd("RETR big.bin").await;
        assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
        if style == "ftplib" {
            urgent(&raw, b"ABOR\r\n");
        } else {
            urgent(&raw, b"\xff\xf4\xff");
            raw.send(b"\xf2ABOR\r\n").await;
        }
        let (first, second) = (raw.reply().await, raw.reply().await);
        answered(&first, &second);
        assert!(raw.cmd("NOOP").await.starts_with("200"), "{style}");

        // An upload: nothing stored.
        let mut data = raw.epsv().await;
        let r = raw.cmd("STOR keep.bin").await;
        assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
        tokio::io::AsyncWriteExt::write_all(&mut data, &vec![7u8; 1 << 20])
            .await
            .unwrap();
        h.await_staging_empty(false).await;
        urgent(&raw, b"ABOR\r\n");
        let (first, second) = (raw.reply().await, raw.reply().await);
        answered(&first, &second);
        drop(data);
        assert!(raw.cmd("NOOP").await.starts_with("200"), "{style}");
        assert_eq!(h.read("keep.bin"), b"old content");
    }
    // No transfer: just answered.
    urgent(&raw, b"ABOR\r\n");
    assert!(raw.reply().await.starts_with("22"));
    assert!(raw.cmd("NOOP").await.starts_with("200"));
}

/// REST beyond the end of the file and SIZE/MDTM of a folder are refused, as servers on a
/// disk do.
#[tokio::test]
async fn rest_beyond_the_end_and_size_of_a_folder_are_refused() {
    let h = Harness::start(Setup::default()).await;
    let body: Vec<u8> = (0..36u8).collect();
    h.write("a.bin", &body);
    h.write("dir/x.txt", b"x");
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;

    assert!(raw.cmd("REST 37").await.starts_with("350"));
    let (got, r) = raw.retr("a.bin").await;
    assert!(r.starts_with("554"), "{r}");
    assert!(got.is_empty());
    // At the size exactly there is nothing left to send.
    assert!(raw.cmd("REST 36").await.starts_with("350"));
    let (got, r) = raw.retr("a.bin").await;
    assert!(r.starts_with("226"), "{r}");
    assert!(got.is_empty());
    let (got, r) = raw.retr("a.bin").await;
    assert!(r.starts_with("226"), "{r}");
    assert_eq!(got, body);

    for cmd in ["SIZE dir", "MDTM dir", "SIZE /dir/", "MDTM ."] {
        let r = raw.cmd(cmd).await;
        assert!(r.starts_with("550"), "{cmd}: {r}");
    }
    assert_eq!(raw.cmd("SIZE a.bin").await, "213 36\r\n");
    assert!(raw.cmd("MDTM a.bin").await.starts_with("213 "));
}

/// QUIT sent while an upload is still under way (RFC 959): the transfer is finished and
/// answered first, then 221; libunftp closed at once, leaving the upload unreported.
#[tokio::test]
async fn quit_during_an_upload_waits_for_it() {
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    let mut data = raw.epsv().await;
    let r = raw.cmd("STOR q.bin").await;
    assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
    let body = vec![3u8; 600_000];
    tokio::io::AsyncWriteExt::write_all(&mut data, &body)
        .await
        .unwrap();
    raw.send(b"QUIT\r\n").await;
    drop(data);
    let first = raw.reply().await;
    let second = raw.reply().await;
    assert!(first.starts_with("226"), "{first} then {second}");
    assert!(second.starts_with("221"), "{first} then {second}");
    assert_eq!(raw.reply().await, "");
    assert_eq!(h.read("q.bin"), body);
}

/// A client process killed with SIGKILL mid-upload (its kernel closes both sockets): nothing
/// is stored, and an existing file keeps its bytes.
#[tokio::test]
async fn sigkilled_client_process_stores_nothing() {
    const CLIENT: &str = r#"
import socket, sys, time
port, user, password, name = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
c = socket.create_connection(("127.0.0.1", port))
f = c.makefile("rb")
def cmd(line):
    if line:
        c.sendall(line.encode() + b"\r\n")
    return f.readline()
assert cmd("").startswith(b"220")
assert cmd("USER " + user).startswith(b"331")
assert cmd("PASS " + password).startswith(b"230")
r = cmd("EPSV")
d = socket.create_connection(("127.0.0.1", int(r.split(b"|||")[1].split(b"|")[0])))
assert cmd("STOR " + name)[:3] in (b"150", b"125")
d.sendall(b"x" * (1 << 20))
print("sent", flush=True)
time.sleep(600)
"#;
    let h = Harness::start(Setup::default()).await;
    h.write("keep.bin", b"old content");
    for name in ["new.bin", "keep.bin"].repeat(2) {
        let mut py = ftp_harness::tool("python3");
        py.arg("-c")
            .arg(CLIENT)
            .arg(h.addr.port().to_string())
            .args([USER, PASSWORD, name])
            .stdout(std::process::Stdio::piped());
        let mut child = py.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let line = tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
            line
        })
        .await
        .unwrap();
        assert_eq!(line, "sent\n");
        h.await_staging_empty(false).await;
        child.kill().unwrap();
        tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        h.await_staging_empty(true).await;
        assert!(!h.file("new.bin").exists());
        assert_eq!(h.read("keep.bin"), b"old content");
    }
}

/// A client whose data connection breaks during a listing gets 426 (libunftp sent no reply at
/// all, and the session waited for one).
///
/// The listing (about 7.5 MiB) is larger than what the kernel queues towards a client that
/// stops reading (about 3 MiB on loopback with Linux's default `tcp_wmem`): the relay is still
/// writing when the reset comes, whatever its speed. With 0.6 MiB, the relay that splices in
/// the kernel had queued all of it before the reset, and the server rightly answered 226.
#[tokio::test]
async fn broken_listing_answers_426() {
    let h = Harness::start(Setup::default()).await;
    for i in 0..30_000 {
        h.write(&format!("many/{i:05}-{}", "n".repeat(190)), b"");
    }
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let r = raw.cmd("EPSV").await;
    let port: u16 = r
        .split("(|||")
        .nth(1)
        .and_then(|x| x.split('|').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("{r}"));
    let mut data = sock.connect(([127, 0, 0, 1], port).into()).await.unwrap();
    let r = raw.cmd("LIST many").await;
    assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
    let mut some = [0u8; 1000];
    tokio::io::AsyncReadExt::read_exact(&mut data, &mut some)
        .await
        .unwrap();
    // The client goes away from its data connection: a reset.
    data.set_zero_linger().unwrap();
    drop(data);
    let r = raw.reply().await;
    assert!(r.starts_with("426"), "{r}");
    assert!(raw.cmd("NOOP").await.starts_with("200"));
}

/// A small download whose data connection the client reset before its RETR: libunftp wrote
/// the file into its side of the connection and answered 226, and the client was told its
/// download succeeded although it got nothing. A server on disk fails its write to the reset
/// connection and answers 426; so does the gateway now.
#[tokio::test]
async fn a_download_into_a_reset_connection_answers_426() {
    let h = Harness::start(Setup::default()).await;
    h.write("small.txt", b"a few bytes");
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    for i in 0..5 {
        let port = epsv_port(&raw.cmd("EPSV").await);
        let data = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        data.set_zero_linger().unwrap();
        drop(data);
        let r = raw.cmd("RETR small.txt").await;
        if r.starts_with("150") || r.starts_with("125") {
            let r = raw.reply().await;
            assert!(r.starts_with("426"), "download {i}: {r}");
        } else {
            assert!(r.starts_with("425"), "download {i}: {r}");
        }
        assert!(raw.cmd("NOOP").await.starts_with("200"));
    }
}

/// The port of a 229 reply.
fn epsv_port(r: &str) -> u16 {
    r.split("(|||")
        .nth(1)
        .and_then(|x| x.split('|').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or_else(|| panic!("no port in {r}"))
}

/// A passive data connection whose command the gateway refused itself (RETR of a missing file),
/// opened late, while the next EPSV is on its way, never carries the next upload. libunftp's
/// data task for the old port took its connection after the next EPSV and with it that EPSV's
/// command channel: the APPE that followed read the old connection's end as the whole file,
/// answered 226 and stored an empty file (the FTP differential runner, seed 2084378779, 1 in
/// about 10,000 sequences under load; here the late connection makes it likely at once).
#[tokio::test]
async fn a_stale_data_connection_never_carries_the_next_upload() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    for i in 0..40 {
        let r = raw.cmd("EPSV").await;
        assert!(r.starts_with("229"), "{r}");
        let old = epsv_port(&r);
        let r = raw.cmd("RETR missing").await;
        assert!(r.starts_with("550"), "{r}");
        // The next EPSV, and the old port connected (and left at once) meanwhile.
        raw.send(b"EPSV\r\n").await;
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", old)).await {
            drop(s);
        }
        let r = raw.reply().await;
        assert!(r.starts_with("229"), "{r}");
        let mut data = tokio::net::TcpStream::connect(("127.0.0.1", epsv_port(&r)))
            .await
            .unwrap();
        let name = format!("f{i}");
        let body = format!("upload {i:02}: every byte counts").into_bytes();
        let r = raw.cmd(&format!("APPE {name}")).await;
        assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
        // The gateway may have given up on this connection: the reply says so.
        let _ = data.write_all(&body).await;
        let _ = data.shutdown().await;
        drop(data);
        let r = raw.reply().await;
        if r.starts_with("226") {
            assert_eq!(
                h.read(&name),
                body,
                "{name}: 226, so the file must hold every byte sent"
            );
        } else {
            assert!(!h.file(&name).exists(), "{name}: refused ({r}), yet stored");
        }
    }
}

/// A data connection the client opened waits for its transfer command as on a plain FTP
/// server, even past the 15 s libunftp keeps a passive port (the relay holds it); a passive
/// port nobody connected to in 15 s is closed, and a transfer command after that is refused
/// with 425, storing nothing; the next EPSV works.
#[tokio::test]
async fn a_data_connection_waits_for_its_command_and_an_unused_port_times_out() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::start(Setup::default()).await;
    let (mut waiting, _) = RawFtp::connect(h.addr).await;
    waiting.login_ok(USER, PASSWORD).await;
    let (mut never, _) = RawFtp::connect(h.addr).await;
    never.login_ok(USER, PASSWORD).await;
    let mut data = waiting.epsv().await;
    let r = never.cmd("EPSV").await;
    assert!(r.starts_with("229"), "{r}");
    tokio::time::sleep(Duration::from_secs(16)).await;

    let r = waiting.cmd("STOR waited.txt").await;
    assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
    data.write_all(b"sent after a long pause").await.unwrap();
    drop(data);
    let end = waiting.reply().await;
    assert!(end.starts_with("226"), "{end}");
    assert_eq!(h.read("waited.txt"), b"sent after a long pause");

    let r = never.cmd("STOR late.txt").await;
    assert!(r.starts_with("425"), "{r}");
    assert!(!h.file("late.txt").exists());
    let (r, end) = never.stor("late.txt", b"sent in time").await;
    assert!(r.starts_with("150") || r.starts_with("125"), "{r}");
    assert!(end.starts_with("226"), "{end}");
    assert_eq!(h.read("late.txt"), b"sent in time");
}

/// A transfer command with no data connection set up is refused with 425 and stores nothing;
/// so is one after a transfer used the data connection (each PASV/EPSV/PORT/EPRT is for one
/// transfer).
#[tokio::test]
async fn a_transfer_without_its_own_data_connection_is_refused() {
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = RawFtp::connect(h.addr).await;
    raw.login_ok(USER, PASSWORD).await;
    let r = raw.cmd("STOR none.txt").await;
    assert!(r.starts_with("425"), "{r}");
    let (r, end) = raw.stor("once.txt", b"one").await;
    assert!(r.starts_with("150") && end.starts_with("226"), "{r} {end}");
    let r = raw.cmd("APPE once.txt").await;
    assert!(r.starts_with("425"), "{r}");
    assert!(!h.file("none.txt").exists());
    assert_eq!(h.read("once.txt"), b"one");
    assert!(raw.cmd("NOOP").await.starts_with("200"));
}
