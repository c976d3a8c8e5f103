//! The programs people use: OpenSSH `sftp -b` and `scp` (SFTP mode and legacy `-O`), as
//! subprocesses against the real server on 127.0.0.1.

use crate::sftp_common;

use sftp_common::{require_tool, Harness};
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// A key made by `ssh-keygen`, as users make theirs; alice accepts it.
async fn keygen(dir: &Path) -> PathBuf {
    let keygen = require_tool("ssh-keygen");
    let f = dir.join("id_ed25519");
    let out = Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&f)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    f
}

async fn start() -> (Harness, tempfile::TempDir) {
    let local = tempfile::tempdir().unwrap();
    let key = keygen(local.path()).await;
    (Harness::start_with_key_file(key).await, local)
}

async fn run(prog: &str, args: Vec<String>) -> (String, String) {
    let bin = require_tool(prog);
    let out = Command::new(bin)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "{prog} {args:?} failed\nstdout:\n{o}\nstderr:\n{e}"
    );
    (o, e)
}

/// The arguments of OpenSSH's sftp running `batch` as alice.
fn batch_args(h: &Harness, batch: &str) -> Vec<String> {
    let bf = h.dir.path().join("batch");
    std::fs::write(&bf, batch).unwrap();
    let mut args = h.ssh_opts("-P");
    args.extend([
        "-b".into(),
        bf.display().to_string(),
        "alice@127.0.0.1".into(),
    ]);
    args
}

async fn sftp_batch(h: &Harness, batch: &str) -> String {
    run("sftp", batch_args(h, batch)).await.0
}

/// Runs `batch` with OpenSSH's sftp: whether it succeeded (a refused step fails the batch).
async fn sftp_batch_succeeds(h: &Harness, batch: &str) -> bool {
    let out = Command::new(require_tool("sftp"))
        .args(batch_args(h, batch))
        .output();
    out.await.unwrap().status.success()
}

fn random_bytes(n: usize) -> Vec<u8> {
    (0..n).map(|_| rand::random::<u8>()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_batch_put_get_ls_mkdir_rename_rm() {
    let (h, local) = start().await;
    let l = local.path();
    let data = random_bytes(3 * 1024 * 1024 + 17);
    std::fs::write(l.join("up.bin"), &data).unwrap();
    let out = sftp_batch(
        &h,
        &format!(
            "lcd {l}\nput up.bin\nmkdir dir1\nput up.bin dir1/copy.bin\nls -l\nls -l dir1\n\
             get up.bin down.bin\nrename up.bin dir1/moved.bin\nrm dir1/copy.bin\n",
            l = l.display()
        ),
    )
    .await;
    assert_eq!(std::fs::read(l.join("down.bin")).unwrap(), data);
    assert_eq!(std::fs::read(h.alice("dir1/moved.bin")).unwrap(), data);
    assert!(!h.alice("up.bin").exists() && !h.alice("dir1/copy.bin").exists());
    // `ls -l` prints our long names.
    let line = out
        .lines()
        .find(|l| l.ends_with(" up.bin") && l.starts_with("-rw"))
        .unwrap_or_else(|| panic!("no ls -l line for up.bin in:\n{out}"));
    assert!(line.contains(&data.len().to_string()), "{line}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('d') && l.ends_with(" dir1")),
        "{out}"
    );
    assert!(out.lines().any(|l| l.ends_with(" copy.bin")), "{out}");

    // A refused operation fails the batch (and changes nothing).
    std::fs::write(l.join("up.bin"), b"x").unwrap();
    let batch = format!("lcd {}\nput up.bin archive/up.bin\n", l.display());
    assert!(!sftp_batch_succeeds(&h, &batch).await);
    assert!(!h.alice("archive/up.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_batch_reput_and_reget_resume() {
    let (h, local) = start().await;
    let l = local.path();
    let data = random_bytes(2 * 1024 * 1024 + 5);
    let half = data.len() / 2;
    std::fs::write(l.join("full.bin"), &data).unwrap();
    std::fs::write(l.join("half.bin"), &data[..half]).unwrap();

    // An interrupted upload, as the server keeps it: the first half as a complete file.
    sftp_batch(&h, &format!("lcd {}\nput half.bin full.bin\n", l.display())).await;
    assert_eq!(
        std::fs::metadata(h.alice("full.bin")).unwrap().len(),
        half as u64
    );
    sftp_batch(
        &h,
        &format!("lcd {}\nreput full.bin full.bin\n", l.display()),
    )
    .await;
    assert!(
        std::fs::read(h.alice("full.bin")).unwrap() == data,
        "reput result differs"
    );

    // And a download resumed from a local half.
    std::fs::write(l.join("down.bin"), &data[..half]).unwrap();
    sftp_batch(
        &h,
        &format!("lcd {}\nreget full.bin down.bin\n", l.display()),
    )
    .await;
    assert!(
        std::fs::read(l.join("down.bin")).unwrap() == data,
        "reget result differs"
    );
}

fn make_tree(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let files = vec![
        (PathBuf::from("top.txt"), b"top".to_vec()),
        (PathBuf::from("sub/a.bin"), random_bytes(300_000)),
        (PathBuf::from("sub/deeper/b.txt"), b"deep".to_vec()),
        (PathBuf::from("sub/empty.txt"), Vec::new()),
    ];
    for (p, d) in &files {
        let full = root.join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, d).unwrap();
    }
    // An old time, to see -p carry it.
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_600_000_000);
    std::fs::File::options()
        .write(true)
        .open(root.join("top.txt"))
        .unwrap()
        .set_modified(t)
        .unwrap();
    files
}

async fn scp(h: &Harness, extra: &[&str], from: String, to: String) {
    let mut args = h.ssh_opts("-P");
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([from, to]);
    run("scp", args).await;
}

/// Runs scp: whether it succeeded.
async fn scp_succeeds(h: &Harness, extra: &[&str], from: String, to: String) -> bool {
    let mut args = h.ssh_opts("-P");
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([from, to]);
    let out = Command::new(require_tool("scp")).args(&args).output();
    out.await.unwrap().status.success()
}

async fn remote_mtime(h: &Harness, path: &str) -> u32 {
    let s = h.sftp_alice_key().await.unwrap();
    s.stat(path).await.unwrap().attrs.mtime.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_scp_recursive_with_times_up_and_down() {
    let (h, local) = start().await;
    let src = local.path().join("tree");
    let files = make_tree(&src);

    scp(
        &h,
        &["-O", "-r", "-p"],
        src.display().to_string(),
        "alice@127.0.0.1:/".into(),
    )
    .await;
    for (p, d) in &files {
        assert_eq!(
            &std::fs::read(h.alice("tree").join(p)).unwrap(),
            d,
            "{}",
            p.display()
        );
    }
    assert_eq!(remote_mtime(&h, "/tree/top.txt").await, 1_600_000_000);

    // Into a new name: the folder becomes the target itself.
    scp(
        &h,
        &["-O", "-r"],
        src.display().to_string(),
        "alice@127.0.0.1:/copy".into(),
    )
    .await;
    assert_eq!(
        std::fs::read(h.alice("copy/sub/deeper/b.txt")).unwrap(),
        b"deep"
    );

    let dst = local.path().join("back");
    std::fs::create_dir(&dst).unwrap();
    scp(
        &h,
        &["-O", "-r", "-p"],
        "alice@127.0.0.1:/tree".into(),
        dst.display().to_string(),
    )
    .await;
    for (p, d) in &files {
        assert_eq!(
            &std::fs::read(dst.join("tree").join(p)).unwrap(),
            d,
            "{}",
            p.display()
        );
    }
    let m = std::fs::metadata(dst.join("tree/top.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(
        m.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        1_600_000_000
    );

    // A single file both ways, and a refused target.
    scp(
        &h,
        &["-O"],
        src.join("top.txt").display().to_string(),
        "alice@127.0.0.1:/one.txt".into(),
    )
    .await;
    assert_eq!(std::fs::read(h.alice("one.txt")).unwrap(), b"top");
    scp(
        &h,
        &["-O"],
        "alice@127.0.0.1:/one.txt".into(),
        local.path().join("one.txt").display().to_string(),
    )
    .await;
    assert_eq!(std::fs::read(local.path().join("one.txt")).unwrap(), b"top");
    let mut args = h.ssh_opts("-P");
    args.extend([
        "-O".into(),
        src.join("top.txt").display().to_string(),
        "alice@127.0.0.1:/archive/x.txt".into(),
    ]);
    let st = Command::new(require_tool("scp"))
        .args(&args)
        .output()
        .await
        .unwrap();
    assert!(!st.status.success());
    assert!(!h.alice("archive/x.txt").exists());
}

/// `scp -O host:'dir/*.txt' .` runs `scp -f dir/*.txt` on the server, where OpenSSH's shell
/// expands the pattern. Before, the gateway took `*.txt` as a name and answered "no such
/// file". As a shell: sorted matches, no dot files for `*`, a quoted pattern is a name, a
/// pattern matching nothing is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_scp_expands_remote_wildcards_as_a_shell_would() {
    let (h, local) = start().await;
    for (name, body) in [
        ("w/a.txt", "a"),
        ("w/b.txt", "b"),
        ("w/c.csv", "c"),
        ("w/.hidden.txt", "h"),
        ("w/sub.txt/inner.txt", "i"),
        ("w/*.txt", "literal"),
    ] {
        let p = h.alice(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }
    let fetch = |dir: &str, extra: &[&str], remote: &str| {
        let dst = local.path().join(dir);
        std::fs::create_dir_all(&dst).unwrap();
        let mut args = h.ssh_opts("-P");
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend([
            format!("alice@127.0.0.1:{remote}"),
            dst.display().to_string(),
        ]);
        async move {
            let out = Command::new(require_tool("scp"))
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .unwrap();
            let mut got: Vec<String> = walkdir(&dst);
            got.sort();
            (
                out.status.success(),
                got,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };
    // `*.txt` matches the files a.txt, b.txt and `*.txt` itself, and the folder sub.txt
    // (refused without -r, so scp exits 1 after copying the files); not .hidden.txt.
    let (ok, got, err) = fetch("one", &["-O"], "/w/*.txt").await;
    assert!(!ok, "the folder is refused without -r");
    assert!(err.contains("not a regular file"), "{err}");
    assert_eq!(got, ["*.txt", "a.txt", "b.txt"]);
    let (ok, got, err) = fetch("two", &["-O", "-r"], "/w/[a-b].*").await;
    assert!(ok, "{err}");
    assert_eq!(got, ["a.txt", "b.txt"]);
    let (ok, got, err) = fetch("three", &["-O", "-r"], "/w/s?b.txt").await;
    assert!(ok, "{err}");
    assert_eq!(got, ["sub.txt", "sub.txt/inner.txt"]);
    let (ok, got, err) = fetch("four", &["-O"], "/w/.h*").await;
    assert!(ok, "{err}");
    assert_eq!(got, [".hidden.txt"]);
    // Escaped for the remote shell: one name, not a pattern (quotes would do the same on the
    // server, but OpenSSH's scp then refuses the name it gets as not matching its request).
    let (ok, got, err) = fetch("five", &["-O"], r"/w/\*.txt").await;
    assert!(ok, "{err}");
    assert_eq!(got, ["*.txt"]);
    assert_eq!(
        std::fs::read(local.path().join("five/*.txt")).unwrap(),
        b"literal"
    );
    let (ok, got, err) = fetch("six", &["-O"], "/w/*.none").await;
    assert!(!ok && got.is_empty());
    assert!(err.contains("no such file"), "{err}");
    // A wildcard above the last part is refused, and says so.
    let (ok, got, err) = fetch("seven", &["-O"], "/w*/a.txt").await;
    assert!(!ok && got.is_empty());
    assert!(err.contains("last part of a path only"), "{err}");
}

/// Every file and folder below `root`, as relative paths.
fn walkdir(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            out.push(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_scp_uses_sftp_up_and_down() {
    let (h, local) = start().await;
    let src = local.path().join("tree");
    let files = make_tree(&src);
    scp(
        &h,
        &["-r", "-p"],
        src.display().to_string(),
        "alice@127.0.0.1:/".into(),
    )
    .await;
    for (p, d) in &files {
        assert_eq!(
            &std::fs::read(h.alice("tree").join(p)).unwrap(),
            d,
            "{}",
            p.display()
        );
    }
    assert_eq!(remote_mtime(&h, "/tree/top.txt").await, 1_600_000_000);
    let dst = local.path().join("back");
    std::fs::create_dir(&dst).unwrap();
    scp(
        &h,
        &["-r"],
        "alice@127.0.0.1:/tree".into(),
        dst.display().to_string(),
    )
    .await;
    for (p, d) in &files {
        assert_eq!(
            &std::fs::read(dst.join("tree").join(p)).unwrap(),
            d,
            "{}",
            p.display()
        );
    }
}

/// OpenSSH's `sftp cp` (the `copy-data` extension, as OpenSSH's own server has it since 9.0):
/// the copy is made on the server, a new file and over an existing one, and the source stays
/// as it was. It was refused ("Server does not support copy-data extension").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sftp_cp_copies_on_the_server() {
    let (h, _local) = start().await;
    // Several READ-sized pieces, and a tail.
    let data = random_bytes(700 * 1024 + 5);
    std::fs::write(h.alice("src.bin"), &data).unwrap();
    std::fs::write(
        h.alice("old.bin"),
        b"an older, longer file than nothing at all",
    )
    .unwrap();
    std::fs::write(h.alice("small.txt"), b"tiny").unwrap();
    sftp_batch(
        &h,
        "cp src.bin copy.bin\ncp small.txt old.bin\nmkdir d\ncp src.bin d/in.bin\n",
    )
    .await;
    assert_eq!(std::fs::read(h.alice("copy.bin")).unwrap(), data);
    assert_eq!(std::fs::read(h.alice("d/in.bin")).unwrap(), data);
    // Over an existing file: replaced, not written into (sftp opens the target with TRUNC).
    assert_eq!(std::fs::read(h.alice("old.bin")).unwrap(), b"tiny");
    assert_eq!(std::fs::read(h.alice("src.bin")).unwrap(), data);
    // A missing source or a target in a missing folder: the batch fails, nothing is made.
    for batch in ["cp missing.bin x.bin\n", "cp src.bin nofolder/x.bin\n"] {
        assert!(!sftp_batch_succeeds(&h, batch).await, "{batch}");
    }
    assert!(!h.alice("x.bin").exists() && !h.alice("nofolder").exists());
}

/// `scp file host:newdir/` where `newdir` does not exist: OpenSSH's server refuses it (open(2)
/// of `newdir/` fails), and the gateway made a file named `newdir`; a second file sent there
/// then replaced the first. Both scp protocols now fail, and nothing is made; to an existing
/// folder the same command works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scp_to_a_missing_folder_makes_no_file_of_its_name() {
    let (h, local) = start().await;
    let src = local.path().join("one.txt");
    std::fs::write(&src, b"first").unwrap();
    for legacy in [false, true] {
        let extra: &[&str] = if legacy { &["-O"] } else { &[] };
        let to = "alice@127.0.0.1:newdir/".to_string();
        let ok = scp_succeeds(&h, extra, src.display().to_string(), to).await;
        assert!(!ok, "legacy {legacy}: scp succeeded");
        assert!(!h.alice("newdir").exists(), "legacy {legacy}");
    }
    std::fs::create_dir(h.alice("newdir")).unwrap();
    scp(
        &h,
        &[],
        src.display().to_string(),
        "alice@127.0.0.1:newdir/".into(),
    )
    .await;
    assert_eq!(std::fs::read(h.alice("newdir/one.txt")).unwrap(), b"first");
}
