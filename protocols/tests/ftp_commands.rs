//! Every FTP command clients use, through the in-process suppaftp client, checked against the
//! files on disk.

use crate::ftp_harness;

use ftp_harness::{Harness, Setup};
use std::io::Cursor;
use suppaftp::list::File as ListFile;
use suppaftp::types::FileType;
use suppaftp::Status;
use tokio::io::AsyncReadExt;

async fn get(c: &mut suppaftp::tokio::AsyncFtpStream, path: &str) -> Vec<u8> {
    let mut s = c.retr_as_stream(path).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    s.finish().await.unwrap();
    buf
}

#[tokio::test]
async fn upload_download_list_and_folders() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;

    // STOR, and a 0-byte STOR.
    let n = c
        .put_file("hello.txt", &mut Cursor::new(b"hello world".to_vec()))
        .await
        .unwrap();
    assert_eq!(n, 11);
    assert_eq!(h.read("hello.txt"), b"hello world");
    c.put_file("empty.bin", &mut Cursor::new(Vec::new()))
        .await
        .unwrap();
    assert_eq!(h.read("empty.bin"), b"");

    // RETR, SIZE, MDTM.
    assert_eq!(get(&mut c, "hello.txt").await, b"hello world");
    assert_eq!(c.size("hello.txt").await.unwrap(), 11);
    let mdtm = c.mdtm("hello.txt").await.unwrap();
    let disk: chrono::DateTime<chrono::Utc> = std::fs::metadata(h.file("hello.txt"))
        .unwrap()
        .modified()
        .unwrap()
        .into();
    assert_eq!(mdtm.and_utc().timestamp(), disk.timestamp());

    // MKD, CWD, PWD, CDUP, RMD.
    c.mkdir("docs").await.unwrap();
    assert!(h.file("docs").is_dir());
    c.cwd("docs").await.unwrap();
    assert_eq!(c.pwd().await.unwrap(), "/docs");
    c.put_file("inner.txt", &mut Cursor::new(b"x".to_vec()))
        .await
        .unwrap();
    assert_eq!(h.read("docs/inner.txt"), b"x");
    c.cdup().await.unwrap();
    assert_eq!(c.pwd().await.unwrap(), "/");
    c.cwd("/docs/../docs/./").await.unwrap();
    assert_eq!(c.pwd().await.unwrap(), "/docs");
    c.cwd("/").await.unwrap();

    // LIST in `ls -l` format that a parser understands.
    let lines = c.list(None).await.unwrap();
    let files: Vec<ListFile> = lines
        .iter()
        .map(|l| {
            l.parse::<ListFile>()
                .unwrap_or_else(|e| panic!("{l:?}: {e:?}"))
        })
        .collect();
    let hello = files.iter().find(|f| f.name() == "hello.txt").unwrap();
    assert!(hello.is_file());
    assert_eq!(hello.size(), 11);
    let docs = files.iter().find(|f| f.name() == "docs").unwrap();
    assert!(docs.is_directory());
    assert!(files.iter().any(|f| f.name() == "ro" && f.is_directory()));

    // NLST.
    let mut names = c.nlst(None).await.unwrap();
    names.sort();
    assert_eq!(names, ["docs", "empty.bin", "hello.txt", "ro"]);
    assert_eq!(c.nlst(Some("docs")).await.unwrap(), ["inner.txt"]);

    // MLSD / MLST.
    let mlsd = c.mlsd(None).await.unwrap();
    let hello = mlsd.iter().find(|l| l.ends_with(" hello.txt")).unwrap();
    assert!(
        hello.contains("type=file;") && hello.contains("size=11;"),
        "{hello}"
    );
    let docs = mlsd.iter().find(|l| l.ends_with(" docs")).unwrap();
    assert!(docs.contains("type=dir;"), "{docs}");
    let mlst = c.mlst(Some("hello.txt")).await.unwrap();
    assert!(mlst.contains("size=11"), "{mlst}");

    // RMD only on an empty folder.
    assert!(c.rmdir("docs").await.is_err());
    c.rm("docs/inner.txt").await.unwrap();
    assert!(!h.file("docs/inner.txt").exists());
    c.rmdir("docs").await.unwrap();
    assert!(!h.file("docs").exists());

    // DELE.
    c.rm("empty.bin").await.unwrap();
    assert!(!h.file("empty.bin").exists());
    c.quit().await.unwrap();
}

#[tokio::test]
async fn rename_files_and_folders() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    h.write("a.txt", b"aaa");
    h.write("dir/inner.txt", b"in");

    c.rename("a.txt", "b.txt").await.unwrap();
    assert!(!h.file("a.txt").exists());
    assert_eq!(h.read("b.txt"), b"aaa");

    c.rename("dir", "moved").await.unwrap();
    assert!(!h.file("dir").exists());
    assert_eq!(h.read("moved/inner.txt"), b"in");

    // Into a subfolder, with a path.
    c.rename("b.txt", "moved/c.txt").await.unwrap();
    assert_eq!(h.read("moved/c.txt"), b"aaa");

    // RNTO onto an existing file replaces it.
    h.write("d.txt", b"new");
    c.rename("d.txt", "moved/c.txt").await.unwrap();
    assert_eq!(h.read("moved/c.txt"), b"new");
}

#[tokio::test]
async fn restart_and_append() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    h.write("r.bin", b"0123456789");

    // REST + RETR.
    c.resume_transfer(4).await.unwrap();
    assert_eq!(get(&mut c, "r.bin").await, b"456789");
    // The offset applies to one transfer only.
    assert_eq!(get(&mut c, "r.bin").await, b"0123456789");

    // REST 0 + STOR replaces.
    c.custom_command("REST 0", &[Status::RequestFilePending])
        .await
        .unwrap();
    c.put_file("r.bin", &mut Cursor::new(b"abc".to_vec()))
        .await
        .unwrap();
    assert_eq!(h.read("r.bin"), b"abc");

    // REST <current size> + STOR appends.
    c.resume_transfer(3).await.unwrap();
    c.put_file("r.bin", &mut Cursor::new(b"def".to_vec()))
        .await
        .unwrap();
    assert_eq!(h.read("r.bin"), b"abcdef");

    // Any other offset is refused with 554, and the file is untouched.
    c.resume_transfer(2).await.unwrap();
    let err = c
        .put_file("r.bin", &mut Cursor::new(b"zz".to_vec()))
        .await
        .unwrap_err();
    assert!(ftp_harness::reply_text(&err).starts_with("554 "), "{err:?}");
    assert_eq!(h.read("r.bin"), b"abcdef");
    assert!(h.staging_empty());
    // The session still works.
    c.noop().await.unwrap();

    // APPE appends, and creates a missing file.
    c.append_file("r.bin", &mut Cursor::new(b"ghi".to_vec()))
        .await
        .unwrap();
    assert_eq!(h.read("r.bin"), b"abcdefghi");
    c.append_file("new.log", &mut Cursor::new(b"line1\n".to_vec()))
        .await
        .unwrap();
    c.append_file("new.log", &mut Cursor::new(b"line2\n".to_vec()))
        .await
        .unwrap();
    assert_eq!(h.read("new.log"), b"line1\nline2\n");
}

#[tokio::test]
async fn mfmt_sets_the_modification_time() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    h.write("sub/t.txt", b"t");
    let feat = c.feat().await.unwrap();
    assert!(feat.contains_key("MFMT"), "{feat:?}");
    assert!(feat.contains_key("REST"), "{feat:?}");
    c.cwd("sub").await.unwrap();
    let r = c
        .custom_command("MFMT 20200102030405 t.txt", &[Status::File])
        .await
        .unwrap();
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.contains("Modify=20200102030405"), "{body}");
    let disk = std::fs::metadata(h.file("sub/t.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        disk.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
        1_577_934_245
    );
    let mdtm = c.mdtm("t.txt").await.unwrap();
    assert_eq!(mdtm.and_utc().timestamp(), 1_577_934_245);
    // A bad time and a missing file are errors.
    assert!(c
        .custom_command("MFMT 2020 t.txt", &[Status::File])
        .await
        .is_err());
    assert!(c
        .custom_command("MFMT 20200102030405 nope.txt", &[Status::File])
        .await
        .is_err());
}

#[tokio::test]
async fn session_commands() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    // TYPE A transfers bytes unchanged; TYPE I too.
    c.transfer_type(FileType::Ascii(suppaftp::types::FormatControl::Default))
        .await
        .unwrap();
    h.write("crlf.txt", b"a\r\nb\n");
    let mut s = c.retr_as_stream("crlf.txt").await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    s.finish().await.unwrap();
    assert_eq!(buf, b"a\r\nb\n");
    c.transfer_type(FileType::Binary).await.unwrap();

    let r = c.custom_command("SYST", &[Status::Name]).await.unwrap();
    assert!(String::from_utf8_lossy(&r.body).contains("UNIX"));
    c.custom_command("OPTS UTF8 ON", &[Status::CommandOk])
        .await
        .unwrap();
    c.noop().await.unwrap();
    let feat = c.feat().await.unwrap();
    for f in ["SIZE", "MDTM", "MLST", "EPSV", "UTF8"] {
        assert!(feat.contains_key(f), "{f} missing from {feat:?}");
    }
    // Extended passive mode works as well as PASV.
    c.set_mode(suppaftp::Mode::ExtendedPassive);
    assert_eq!(get(&mut c, "crlf.txt").await, b"a\r\nb\n");
    c.quit().await.unwrap();
}

#[tokio::test]
async fn utf8_names() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    c.put_file("héllo wörld ✓.txt", &mut Cursor::new(b"u".to_vec()))
        .await
        .unwrap();
    assert_eq!(h.read("héllo wörld ✓.txt"), b"u");
    let names = c.nlst(None).await.unwrap();
    assert!(names.iter().any(|n| n == "héllo wörld ✓.txt"), "{names:?}");
}

#[tokio::test]
async fn listings_are_bounded() {
    let h = Harness::start(Setup {
        max_list_entries: 5,
        ..Setup::default()
    })
    .await;
    for i in 0..8 {
        h.write(&format!("many/f{i}"), b"x");
    }
    let mut c = h.client().await;
    assert_eq!(c.nlst(Some("many")).await.unwrap().len(), 5);
}

/// Files of several transfer chunks (uploads are handed on in full 256 KiB buffers, downloads
/// written chunk by chunk): every byte arrives in order, and REST works at an offset that is
/// not on a chunk boundary.
#[tokio::test]
async fn large_files_cross_chunk_boundaries() {
    let h = Harness::start(Setup::default()).await;
    let mut c = h.client().await;
    c.transfer_type(FileType::Binary).await.unwrap();
    // Not a multiple of any buffer size, and no repeating pattern a shifted chunk could match.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let data: Vec<u8> = (0..5 * 1024 * 1024 + 12_345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();

    let n = c
        .put_file("big.bin", &mut Cursor::new(data.clone()))
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(h.read("big.bin") == data, "stored bytes differ");

    assert!(
        get(&mut c, "big.bin").await == data,
        "downloaded bytes differ"
    );
    let offset = 256 * 1024 + 7;
    c.resume_transfer(offset).await.unwrap();
    assert!(
        get(&mut c, "big.bin").await == data[offset..],
        "bytes from the REST offset differ"
    );
}

/// A REST offset is for the next transfer command only, whatever its outcome (libunftp kept
/// it after a refused command: a later RETR sent only the end of the file).
#[tokio::test]
async fn rest_applies_to_the_next_transfer_only() {
    let h = Harness::start(Setup::default()).await;
    let body: Vec<u8> = (0..36u8).map(|i| b'a' + i % 26).collect();
    h.write("a", &body);
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    raw.login_ok(ftp_harness::USER, ftp_harness::PASSWORD).await;

    // REST + a STOR that cannot be done at that offset: refused, the file untouched.
    assert!(raw.cmd("REST 18").await.starts_with("350"));
    let (first, _) = raw.stor("a", b"zz").await;
    assert!(first.starts_with("554"), "{first}");
    assert_eq!(h.read("a"), body);
    let (got, r) = raw.retr("a").await;
    assert!(r.starts_with("226"), "{r}");
    assert_eq!(got, body);

    // REST + a RETR of a missing file.
    assert!(raw.cmd("REST 5").await.starts_with("350"));
    let (_, r) = raw.retr("missing").await;
    assert!(r.starts_with("550"), "{r}");
    let (got, r) = raw.retr("a").await;
    assert!(r.starts_with("226"), "{r}");
    assert_eq!(got, body);

    // Plain STORs work again, and replace.
    let (first, last) = raw.stor("a", b"fresh").await;
    assert!(first.starts_with("150"), "{first}");
    assert!(last.starts_with("226"), "{last}");
    assert_eq!(h.read("a"), b"fresh");
    let (_, last) = raw.stor("b", b"new").await;
    assert!(last.starts_with("226"), "{last}");
    assert_eq!(h.read("b"), b"new");
}

/// MLST and STAT of a path look it up in the working folder, as every FTP server on a disk
/// does (libunftp took the path from the root: ncftp's `MLST name` in a subfolder was answered
/// "not available", and `STAT name` listed another folder's file).
#[tokio::test]
async fn mlst_and_stat_of_a_relative_path_use_the_working_folder() {
    let h = Harness::start(Setup::default()).await;
    h.write("sub/f.txt", b"in the subfolder");
    h.write("f.txt", b"at the top");
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    raw.login_ok(ftp_harness::USER, ftp_harness::PASSWORD).await;
    assert!(raw.cmd("CWD sub").await.starts_with("250"));
    for (cmd, size) in [
        ("MLST f.txt", "size=16;"),
        ("MLST ../sub/f.txt", "size=16;"),
        ("MLST ../f.txt", "size=10;"),
        ("MLST /f.txt", "size=10;"),
        ("MLST", "type=dir;"),
    ] {
        let r = raw.cmd(cmd).await;
        assert!(r.starts_with("250") && r.contains(size), "{cmd}: {r}");
    }
    let r = raw.cmd("MLST missing").await;
    assert!(r.starts_with("550"), "{r}");
    // STAT of a file lists that file, as LIST does; of a folder, its entries; between 213
    // replies, as FTP servers on a disk answer.
    let r = raw.cmd("STAT f.txt").await;
    assert!(
        r.starts_with("213-") && r.contains(" 16 ") && r.contains(" f.txt\r\n"),
        "{r}"
    );
    assert!(r.ends_with("213 End of status\r\n"), "{r}");
    let r = raw.cmd("STAT -l ../f.txt").await;
    assert!(r.starts_with("213-") && r.contains(" 10 "), "{r}");
    let r = raw.cmd("STAT ..").await;
    assert!(r.contains(" sub\r\n") && r.contains(" f.txt\r\n"), "{r}");
    // One line per entry: no empty line between them (a client reading the listing from
    // the reply took them for entries).
    assert!(!r.contains("\r\n\r\n"), "{r}");
    assert!(raw.cmd("STAT missing").await.starts_with("550"));
    // A CWD and a MLST sent together: the MLST is looked up in the new folder.
    raw.send(b"CWD /\r\nMLST f.txt\r\n").await;
    assert!(raw.reply().await.starts_with("250"));
    let r = raw.reply().await;
    assert!(r.starts_with("250") && r.contains("size=10;"), "{r}");
}

/// `NLST *.csv` and `LIST *.csv` list the matching names, as vsftpd and ProFTPD do: Windows
/// ftp.exe's and tnftp's `mget`/`mdelete` send them and then act on each name listed (the
/// gateway answered 550, as for a missing file).
#[tokio::test]
async fn nlst_and_list_of_a_pattern_list_the_matching_names() {
    let h = Harness::start(Setup::default()).await;
    for name in ["a.csv", "b.csv", "c.txt", ".hidden.csv", "sub/d.csv", "x*y"] {
        h.write(name, name.as_bytes());
    }
    let mut c = h.client().await;
    assert_eq!(c.nlst(Some("*.csv")).await.unwrap(), ["a.csv", "b.csv"]);
    assert_eq!(c.nlst(Some("?.c*")).await.unwrap(), ["a.csv", "b.csv"]);
    assert_eq!(c.nlst(Some(".*.csv")).await.unwrap(), [".hidden.csv"]);
    // With a folder, the names carry it as typed, so that each can be fetched from here.
    let names = c.nlst(Some("sub/*.csv")).await.unwrap();
    assert_eq!(names, ["sub/d.csv"]);
    assert_eq!(get(&mut c, &names[0]).await, b"sub/d.csv");
    let lines = c.list(Some("[ab].csv")).await.unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].ends_with(" a.csv") && lines[1].ends_with(" b.csv"),
        "{lines:?}"
    );
    // A name that exists is itself, wildcard or not; no match, or a wildcard above the last
    // part, is "no such file" as before.
    assert_eq!(c.nlst(Some("x*y")).await.unwrap(), ["x*y"]);
    for missing in ["*.zip", "s*/d.csv"] {
        assert!(c.nlst(Some(missing)).await.is_err(), "{missing}");
    }
    c.cwd("sub").await.unwrap();
    assert_eq!(c.nlst(Some("../*.txt")).await.unwrap(), ["../c.txt"]);
}

/// Waits until `budget` holds `want` bytes (a data task starts and ends a moment after the
/// replies the client sees); what it holds then.
async fn budget_reaches(budget: &bucketgate_storage::budget::MemoryBudget, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while budget.in_use() != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    budget.in_use()
}

/// A session holds its share of the memory budget while an upload or a download runs (what a
/// transfer keeps outside the transfer buffers), and none between transfers.
#[tokio::test]
async fn a_transfer_holds_its_share_of_the_memory_budget() {
    use bucketgate_storage::budget::MemoryBudget;
    use tokio::io::AsyncWriteExt;
    const SHARE: u64 = 96 * 1024;
    let budget = MemoryBudget::shared(4 * 1024 * 1024);
    let h = Harness::start(Setup {
        memory: Some(budget.clone()),
        ..Setup::default()
    })
    .await;
    let mut c = h.client().await;
    c.transfer_type(FileType::Binary).await.unwrap();
    c.list(None).await.unwrap();
    assert_eq!(budget.in_use(), 0, "no transfer, no share");

    let mut up = c.put_with_stream("held.bin").await.unwrap();
    up.write_all(b"the first bytes").await.unwrap();
    up.flush().await.unwrap();
    assert_eq!(
        budget_reaches(&budget, SHARE).await,
        SHARE,
        "upload running"
    );
    up.write_all(b", then the rest").await.unwrap();
    up.finish().await.unwrap();
    assert_eq!(budget_reaches(&budget, 0).await, 0, "upload over");
    assert_eq!(h.read("held.bin"), b"the first bytes, then the rest");

    // A download the client does not read yet: the server waits on the socket, holding it.
    let big: Vec<u8> = (0..16 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    h.write("big.bin", &big);
    let mut down = c.retr_as_stream("big.bin").await.unwrap();
    assert_eq!(
        budget_reaches(&budget, SHARE).await,
        SHARE,
        "download running"
    );
    let mut got = Vec::new();
    down.read_to_end(&mut got).await.unwrap();
    down.finish().await.unwrap();
    assert!(got == big, "the download differs");
    assert_eq!(budget_reaches(&budget, 0).await, 0, "download over");
}

/// RFC 775's verbs, as Windows' built-in ftp.exe sends them (`mkdir`, `cd`, `pwd`, `rmdir`):
/// XRMD was answered 500, so `rmdir` failed there while every other command worked.
#[tokio::test]
async fn rfc775_folder_verbs_work_as_their_rfc959_twins() {
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    raw.login_ok(ftp_harness::USER, ftp_harness::PASSWORD).await;
    let r = raw.cmd("XMKD win").await;
    assert!(r.starts_with("257"), "{r}");
    assert!(h.file("win").is_dir());
    assert!(raw.cmd("XCWD win").await.starts_with("250"));
    assert!(raw.cmd("XPWD").await.contains("\"/win\""));
    assert!(raw.cmd("XCUP").await.starts_with("250"));
    let r = raw.cmd("xrmd win").await;
    assert!(r.starts_with("250"), "{r}");
    assert!(!h.file("win").exists());
    let r = raw.cmd("XRMD win").await;
    assert!(r.starts_with("550"), "{r}");
    assert!(raw.cmd("XRMD").await.starts_with("501"));
}

/// A name ending in `/` names a folder, as on a disk: `STOR newdir/` made a file named
/// `newdir`, `DELE file/` removed `file`, and `RNTO newdir/` gave a file that name. Each is
/// refused now with nothing changed (on a disk open(2), unlink(2) and rename(2) of `name/`
/// fail unless it is a folder); folders are unchanged.
#[tokio::test]
async fn a_name_ending_in_a_slash_is_a_folder_or_nothing() {
    let h = Harness::start(Setup::default()).await;
    h.write("file.txt", b"kept");
    h.write("dir/inner.txt", b"in");
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    raw.login_ok(ftp_harness::USER, ftp_harness::PASSWORD).await;
    for path in ["newdir/", "file.txt/", "newdir/."] {
        let r = raw.stor(path, b"data").await.0;
        assert!(r.starts_with('5'), "STOR {path}: {r}");
    }
    for cmd in [
        "RETR file.txt/",
        "SIZE file.txt/",
        "MDTM file.txt/",
        "DELE file.txt/",
        "RNFR file.txt/",
    ] {
        let r = raw.cmd(cmd).await;
        assert!(r.starts_with("550"), "{cmd}: {r}");
    }
    assert!(raw.cmd("RNFR file.txt").await.starts_with("350"));
    let r = raw.cmd("RNTO newname/").await;
    assert!(r.starts_with("550"), "{r}");
    assert!(!h.file("newdir").exists() && !h.file("newname").exists());
    assert_eq!(h.read("file.txt"), b"kept");
    // A folder's name with its `/` works as before.
    assert!(raw.cmd("RNFR dir/").await.starts_with("350"));
    let r = raw.cmd("RNTO dir2/").await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(h.read("dir2/inner.txt"), b"in");
    let r = raw.stor("dir2/new.txt", b"x").await.1;
    assert!(r.starts_with("226"), "{r}");
}

/// A refused MKD, RMD, DELE or RNTO says why, in the words SFTP uses: libunftp answered its
/// fixed text for the error's kind, "550 Directory not found" to an MKD of a folder that
/// exists and "553 File name not allowed" to a rename onto one. Codes are unchanged.
#[tokio::test]
async fn a_refused_folder_or_name_command_says_why() {
    let h = Harness::start(Setup::default()).await;
    h.write("dir/inner.txt", b"in");
    h.write("file.txt", b"kept");
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    raw.login_ok(ftp_harness::USER, ftp_harness::PASSWORD).await;
    for (cmd, want) in [
        ("MKD dir", "550 mkdir /dir: already exists"),
        ("XMKD dir", "550 mkdir /dir: already exists"),
        ("RMD dir", "550 rmdir /dir: folder not empty"),
        ("RMD nowhere", "550 rmdir /nowhere: no such file or folder"),
        (
            "DELE nowhere",
            "550 remove /nowhere: no such file or folder",
        ),
        ("DELE dir", "550 remove /dir:"),
    ] {
        let r = raw.cmd(cmd).await;
        assert!(r.starts_with(want), "{cmd}: {r}");
    }
    assert!(raw.cmd("RNFR file.txt").await.starts_with("350"));
    let r = raw.cmd("RNTO dir").await;
    assert!(r.starts_with("553 rename /dir: already exists"), "{r}");
    // An RNTO with no RNFR is RFC 959's 503 (libunftp's 450 said "try again"), and a reason
    // is never carried over to the next command's reply.
    let r = raw.cmd("RNTO other").await;
    assert!(r.starts_with("503"), "{r}");
    assert!(raw.cmd("MKD fresh").await.starts_with("257"));
    assert_eq!(h.read("file.txt"), b"kept");
    assert_eq!(h.read("dir/inner.txt"), b"in");

    // Pipelined, each reply keeps its own command's reason (the gateway may refuse the next
    // before the first reply is out); one whose reason went astray gets the plain text.
    for _ in 0..20 {
        raw.send(b"MKD dir\r\nRMD dir\r\nDELE nowhere\r\nRMD nowhere\r\nNOOP\r\n")
            .await;
        let replies = [
            raw.reply().await,
            raw.reply().await,
            raw.reply().await,
            raw.reply().await,
            raw.reply().await,
        ];
        let want = [
            ("550 ", "mkdir /dir"),
            ("550 ", "rmdir /dir"),
            ("550 ", "remove /nowhere"),
            ("550 ", "rmdir /nowhere"),
            ("200 ", ""),
        ];
        for (r, (code, path)) in replies.iter().zip(want) {
            assert!(r.starts_with(code), "{replies:?}");
            let said = &r[4..];
            assert!(!said.contains(" /") || said.contains(path), "{replies:?}");
        }
    }
}

/// TYPE E (EBCDIC), L 7 and the Telnet or ASA formats were answered "200 Always in binary mode"
/// and the file then sent unconverted: a client that asked for a conversion got other bytes
/// than it expected. They are refused with 504 now; A, A N, I and L 8 are accepted as before.
#[tokio::test]
async fn types_that_would_need_a_conversion_are_refused() {
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    raw.login_ok(ftp_harness::USER, ftp_harness::PASSWORD).await;
    for t in ["E", "A T", "A C", "L 7", "E N"] {
        let r = raw.cmd(&format!("TYPE {t}")).await;
        assert!(r.starts_with("504"), "TYPE {t}: {r}");
    }
    for t in ["A", "a n", "I", "L 8"] {
        let r = raw.cmd(&format!("TYPE {t}")).await;
        assert!(r.starts_with("200"), "TYPE {t}: {r}");
    }
    let r = raw.stor("t.bin", b"a\r\nb").await.1;
    assert!(r.starts_with("226"), "{r}");
    assert_eq!(h.read("t.bin"), b"a\r\nb");
}

/// HELP lists the commands and names no software or version (libunftp's said "Powered by
/// libunftp: 0.24.0"); every command it lists is answered as a known command.
#[tokio::test]
async fn help_lists_the_commands_and_no_version() {
    let h = Harness::start(Setup::default()).await;
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    raw.login_ok(ftp_harness::USER, ftp_harness::PASSWORD).await;
    let help = raw.cmd("HELP").await;
    assert!(help.starts_with("214-"), "{help}");
    assert!(help.trim_end().ends_with("214 Help OK"), "{help}");
    assert!(!help.to_ascii_lowercase().contains("unftp"), "{help}");
    assert!(!help.contains("0.2"), "{help}");
    let listed: Vec<&str> = help
        .lines()
        .skip(1)
        .filter(|l| l.starts_with(' '))
        .flat_map(|l| l.split_whitespace())
        .collect();
    assert!(listed.len() > 40, "{listed:?}");
    // Without TLS configured, its commands are not offered.
    assert!(!listed.contains(&"AUTH"), "{listed:?}");
    for verb in ["STOR", "RETR", "MLSD", "EPSV", "MFMT", "XRMD", "HELP"] {
        assert!(listed.contains(&verb), "{verb} in {listed:?}");
    }
    for verb in listed {
        // PORT and EPRT are 502 while `ftp.active_mode` is off (the default here); a PASV or
        // EPSV would make the next transfer command wait for its connection.
        if matches!(
            verb,
            "QUIT" | "USER" | "PASS" | "HELP" | "PORT" | "EPRT" | "PASV" | "EPSV"
        ) {
            continue;
        }
        let r = raw.cmd(verb).await;
        assert!(
            !r.starts_with("500") && !r.starts_with("502"),
            "{verb}: {r}"
        );
    }
}

/// Pipelined commands are answered in their order. libunftp runs PASS, DELE, MKD, RNFR, SIZE
/// and others in tasks of their own and answers NOOP or PWD at once: `MKD a`, `NOOP` sent
/// together were answered 200 then 257, and each reply was taken for another command's
/// (a client that pipelines, as lftp does, read a failure as a success).
#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let h = Harness::start(Setup::default()).await;
    h.write("a.txt", b"a");
    let (mut raw, _) = ftp_harness::RawFtp::connect(h.addr).await;
    let login = format!(
        "USER {}\r\nPASS {}\r\nPWD\r\n",
        ftp_harness::USER,
        ftp_harness::PASSWORD
    );
    raw.send(login.as_bytes()).await;
    for want in ["331", "230", "257"] {
        let r = raw.reply().await;
        assert!(r.starts_with(want), "{want}: {r}");
    }
    raw.send(
        b"MKD made\r\nNOOP\r\nDELE missing\r\nPWD\r\nSIZE a.txt\r\nRNFR a.txt\r\n\
          RNTO b.txt\r\nMKD made\r\nSYST\r\nRMD made\r\nNOOP\r\n",
    )
    .await;
    let mut got = Vec::new();
    for _ in 0..11 {
        got.push(raw.reply().await);
    }
    let want = [
        "257", "200", "550", "257", "213 1", "350", "250", "550", "215", "250", "200",
    ];
    for (r, w) in got.iter().zip(want) {
        assert!(r.starts_with(w), "want {w}: {got:?}");
    }
    assert_eq!(h.read("b.txt"), b"a");
    assert!(!h.file("made").exists());
}
