//! The storage behaviour suite: one set of cases for the virtual file tree, run against every
//! backend (local disk, and S3 servers on loopback). Each case asserts on what a user would
//! see: the bytes, the listing, the error kind, and what the backend actually holds.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::{ErrorKind, OpenMode, PermSet, Permissions, UserFs, VPath};
use bucketgate_tests::fixtures::{area, user_view, Fixture};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn p(s: &str) -> VPath {
    VPath::parse(s).unwrap()
}

fn write_mode() -> OpenMode {
    OpenMode {
        create: true,
        truncate: true,
        ..Default::default()
    }
}

async fn put(fs: &UserFs, path: &str, data: &[u8]) -> bucketgate_storage::Result<()> {
    let mut w = fs.open_write(&p(path), write_mode()).await?;
    let mut off = 0u64;
    for chunk in data.chunks(32 * 1024) {
        w.write_at(off, Bytes::copy_from_slice(chunk)).await?;
        off += chunk.len() as u64;
    }
    w.close().await.map(|_| ())
}

async fn get(fs: &UserFs, path: &str) -> bucketgate_storage::Result<Vec<u8>> {
    let mut r = fs.open_read(&p(path)).await?;
    let mut out = Vec::new();
    loop {
        let b = r.read_at(out.len() as u64, 64 * 1024).await?;
        if b.is_empty() {
            return Ok(out);
        }
        out.extend_from_slice(&b);
    }
}

async fn names(fs: &UserFs, path: &str) -> Vec<(String, bool)> {
    let mut pages = fs.list(&p(path)).await.expect("list");
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        for e in page.expect("page") {
            out.push((e.name.clone(), e.is_dir()));
        }
    }
    out.sort();
    out
}

/// Every key the backend holds below `key` of the test's area (files and folder markers), as
/// the bucket sees it.
async fn backend_keys(f: &Fixture, key: &str) -> Vec<String> {
    let full = format!("{}{key}", f.prefix);
    let mut pages = f.backend.walk(full.trim_end_matches('/'));
    let mut out = Vec::new();
    while let Some(page) = pages.next().await {
        for e in page.expect("walk page") {
            out.push(if e.is_dir() {
                format!("{}/", e.name)
            } else {
                e.name.clone()
            });
        }
    }
    out.sort();
    out
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Alice's home: `/users/alice`, or the area root where the server cannot keep the folder
/// markers a home needs (the byte-moving cases do not depend on where the home is).
fn home_of(f: &Fixture) -> &'static str {
    if f.caps.markers {
        "/users/alice"
    } else {
        "/"
    }
}

fn alice(f: &Fixture) -> UserFs {
    user_view(
        area(&f.backend, &f.prefix),
        vec![],
        home_of(f),
        Permissions::all(),
    )
}

/// Leaves a folder-dependent case out for a server without folder markers, visibly.
fn needs_folders(f: &Fixture) -> bool {
    if !f.caps.markers {
        f.lacks("folders (markers)");
        return false;
    }
    true
}

fn admin(f: &Fixture) -> UserFs {
    user_view(area(&f.backend, &f.prefix), vec![], "/", Permissions::all())
}

async fn case_round_trip_and_overwrite(f: &Fixture) {
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    let a = pattern(100_000, 1);
    put(&fs, "/a.bin", &a).await.unwrap();
    assert_eq!(get(&fs, "/a.bin").await.unwrap(), a);
    // An overwrite keeps the old content visible until the new one is complete.
    let b = pattern(50_000, 2);
    let mut w = fs.open_write(&p("/a.bin"), write_mode()).await.unwrap();
    w.write_at(0, Bytes::from(b.clone())).await.unwrap();
    assert_eq!(
        get(&fs, "/a.bin").await.unwrap(),
        a,
        "old content until close"
    );
    w.close().await.unwrap();
    assert_eq!(get(&fs, "/a.bin").await.unwrap(), b);
    // An aborted overwrite changes nothing.
    let mut w = fs.open_write(&p("/a.bin"), write_mode()).await.unwrap();
    w.write_at(0, Bytes::from_static(b"partial")).await.unwrap();
    w.abort().await;
    assert_eq!(get(&fs, "/a.bin").await.unwrap(), b);
    // A new file that is aborted leaves nothing behind.
    let mut w = fs.open_write(&p("/gone.bin"), write_mode()).await.unwrap();
    w.write_at(0, Bytes::from(pattern(10_000, 3)))
        .await
        .unwrap();
    w.abort().await;
    assert_eq!(
        fs.stat(&p("/gone.bin")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let keys = backend_keys(f, home_of(f).trim_start_matches('/')).await;
    assert_eq!(keys, vec!["a.bin".to_string()], "{}", f.name);
}

async fn case_sizes(f: &Fixture) {
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    for (i, n) in [0usize, 1, 5 * 1024 * 1024, 5 * 1024 * 1024 + 1]
        .into_iter()
        .enumerate()
    {
        let data = pattern(n, i as u8);
        let name = format!("/s{i}.bin");
        put(&fs, &name, &data).await.unwrap();
        let st = fs.stat(&p(&name)).await.unwrap();
        assert_eq!(st.size, n as u64, "{}: size of {n}", f.name);
        assert_eq!(
            get(&fs, &name).await.unwrap(),
            data,
            "{}: bytes of {n}",
            f.name
        );
    }
}

async fn case_random_reads(f: &Fixture) {
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    let data = pattern(3 * 1024 * 1024 + 17, 9);
    put(&fs, "/r.bin", &data).await.unwrap();
    let mut r = fs.open_read(&p("/r.bin")).await.unwrap();
    for &(off, len) in &[
        (0u64, 10usize),
        (2_000_000, 4096),
        (100, 50),
        (3 * 1024 * 1024, 100),
        (10, 10),
    ] {
        let got = r.read_at(off, len).await.unwrap();
        let end = ((off as usize) + len).min(data.len());
        assert_eq!(
            &got[..],
            &data[off as usize..end],
            "{}: read at {off}",
            f.name
        );
    }
    assert!(r.read_at(data.len() as u64, 10).await.unwrap().is_empty());
}

/// A handle opened before the file was replaced reads the version it opened, or fails: never
/// bytes of the new version (a new request starts past the read-ahead and on a seek back).
async fn case_replaced_while_open(f: &Fixture) {
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    let old = pattern(3 * 1024 * 1024 + 17, 1);
    put(&fs, "/v.bin", &old).await.unwrap();
    let mut r = fs.open_read(&p("/v.bin")).await.unwrap();
    assert_eq!(&r.read_at(0, 10).await.unwrap()[..], &old[..10]);
    // Same size: only the version tells the two apart.
    let new = pattern(old.len(), 2);
    put(&fs, "/v.bin", &new).await.unwrap();
    let mut errors = 0;
    for &(off, len) in &[
        (10u64, 4096usize),
        (2_000_000, 4096),
        (100, 50),
        (3 * 1024 * 1024, 100),
    ] {
        match r.read_at(off, len).await {
            Ok(got) => {
                let end = ((off as usize) + len).min(old.len());
                assert!(
                    got == old[off as usize..end],
                    "{}: new bytes at {off}",
                    f.name
                );
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Conflict, "{}: {e}", f.name);
                assert_eq!(
                    e.to_string(),
                    "read /v.bin: the file changed since it was opened"
                );
                errors += 1;
            }
        }
    }
    assert!(
        errors > 0,
        "{}: a new request cannot serve the old version",
        f.name
    );
    drop(r);
    assert_eq!(get(&fs, "/v.bin").await.unwrap(), new, "{}", f.name);
}

async fn case_write_rules(f: &Fixture) {
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    // Out-of-order writes inside the window are put in order.
    let mut w = fs.open_write(&p("/ooo.bin"), write_mode()).await.unwrap();
    w.write_at(5, Bytes::from_static(b"world")).await.unwrap();
    w.write_at(0, Bytes::from_static(b"hello")).await.unwrap();
    w.close().await.unwrap();
    assert_eq!(get(&fs, "/ooo.bin").await.unwrap(), b"helloworld");
    // A write far beyond the end fails, and nothing is left.
    let mut w = fs.open_write(&p("/far.bin"), write_mode()).await.unwrap();
    let e = w
        .write_at(1 << 40, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput);
    assert!(w.close().await.is_err());
    assert_eq!(
        fs.stat(&p("/far.bin")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // A write behind what was sent fails the upload.
    let mut w = fs.open_write(&p("/back.bin"), write_mode()).await.unwrap();
    w.write_at(0, Bytes::from_static(b"abcdef")).await.unwrap();
    assert!(w.write_at(2, Bytes::from_static(b"zz")).await.is_err());
    assert!(w.close().await.is_err());
    assert!(fs.stat(&p("/back.bin")).await.is_err());
    // Exclusive create refuses an existing file.
    put(&fs, "/x.txt", b"x").await.unwrap();
    let e = fs
        .open_write(
            &p("/x.txt"),
            OpenMode {
                create: true,
                exclusive: true,
                ..Default::default()
            },
        )
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    // A missing parent folder is refused.
    let e = fs
        .open_write(&p("/nodir/x"), write_mode())
        .await
        .err()
        .unwrap();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

async fn case_append(f: &Fixture) {
    if !f.caps.part_copy {
        f.lacks("append");
        return;
    }
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    for (i, base) in [1000usize, 6 * 1024 * 1024].into_iter().enumerate() {
        let name = format!("/ap{i}.bin");
        let first = pattern(base, 4);
        put(&fs, &name, &first).await.unwrap();
        let more = pattern(70_000, 5);
        // Resume style: no APPEND flag, the first write lands at the current size.
        let mut w = fs
            .open_write(
                &p(&name),
                OpenMode {
                    create: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        w.write_at(base as u64, Bytes::from(more.clone()))
            .await
            .unwrap();
        w.close().await.unwrap();
        let mut want = first.clone();
        want.extend_from_slice(&more);
        assert_eq!(
            get(&fs, &name).await.unwrap(),
            want,
            "{}: append to {base}",
            f.name
        );
    }
    // An append that loses the race to another writer changes nothing.
    put(&fs, "/race.bin", b"original").await.unwrap();
    let mut w = fs
        .open_write(
            &p("/race.bin"),
            OpenMode {
                append: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.write_at(0, Bytes::from_static(b"-appended"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new local mtime
    put(&fs, "/race.bin", b"replaced by another writer")
        .await
        .unwrap();
    let e = w.close().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{}", f.name);
    assert_eq!(
        get(&fs, "/race.bin").await.unwrap(),
        b"replaced by another writer"
    );
}

fn mode(create: bool, truncate: bool, append: bool, exclusive: bool) -> OpenMode {
    OpenMode {
        create,
        truncate,
        append,
        exclusive,
        ..Default::default()
    }
}

/// Writes at offsets, in the order sent.
type Writes<'a> = Vec<(u64, &'a [u8])>;

/// What a local disk gives for `writes` laid over `base` (no truncation), for comparison.
fn overlay(base: &[u8], writes: &[(u64, &[u8])]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (off, data) in writes {
        let end = *off as usize + data.len();
        if out.len() < end {
            out.resize(end, 0);
        }
        out[*off as usize..end].copy_from_slice(data);
    }
    out
}

/// Issue 13 items 1 and 16: a write into an existing file without TRUNC changes only the bytes
/// written (as `dd conv=notrunc`, FUSE mounts and `r+` do), never cuts the file; APPEND with
/// TRUNC starts from nothing; overlapping writes end with the last one.
async fn case_in_place_writes(f: &Fixture) {
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    let big = f.caps.part_copy;
    let size = if big { 6 * 1024 * 1024 + 333 } else { 300_000 };
    let base = pattern(size, 7);
    let patch = pattern(4096, 99);
    let cases: Vec<(&str, Writes)> = vec![
        ("at zero", vec![(0, &patch)]),
        ("in the middle", vec![(size as u64 / 2, &patch)]),
        ("near the end", vec![(size as u64 - 100, &patch)]),
        (
            "head and tail",
            vec![(0, &patch[..100]), (size as u64 - 50, &patch[..50])],
        ),
        (
            "overlapping, later wins",
            vec![
                (10_000, &patch[..100]),
                (10_200, &patch),
                (10_300, &patch[..10]),
            ],
        ),
        ("past the end, a hole", vec![(size as u64 + 10, &patch)]),
    ];
    for (i, (what, writes)) in cases.iter().enumerate() {
        let name = format!("/inplace{i}.bin");
        put(&fs, &name, &base).await.unwrap();
        let mut w = fs
            .open_write(&p(&name), mode(true, false, false, false))
            .await
            .unwrap();
        for (off, data) in writes {
            w.write_at(*off, Bytes::copy_from_slice(data))
                .await
                .unwrap();
        }
        let want = overlay(&base, writes);
        assert_eq!(w.size(), want.len() as u64, "{}: {what}: size", f.name);
        w.close().await.unwrap();
        let got = get(&fs, &name).await.unwrap();
        assert_eq!(got.len(), want.len(), "{}: {what}: length", f.name);
        assert!(got == want, "{}: {what}: bytes differ", f.name);
    }
    // WRITE|APPEND|CREAT|TRUNC of an existing file: truncated, then appended to.
    put(&fs, "/at.bin", &pattern(74, 1)).await.unwrap();
    let mut w = fs
        .open_write(&p("/at.bin"), mode(true, true, true, false))
        .await
        .unwrap();
    w.write_at(0, Bytes::from(pattern(95, 2))).await.unwrap();
    w.close().await.unwrap();
    assert_eq!(get(&fs, "/at.bin").await.unwrap(), pattern(95, 2));
    // An in-place write over a file replaced meanwhile changes nothing, and says so.
    put(&fs, "/moved.bin", &base).await.unwrap();
    let mut w = fs
        .open_write(&p("/moved.bin"), mode(false, false, false, false))
        .await
        .unwrap();
    w.write_at(0, Bytes::copy_from_slice(&patch)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // a new local mtime
    put(&fs, "/moved.bin", b"replaced").await.unwrap();
    let e = w
        .close()
        .await
        .expect_err("a stale in-place write is refused");
    // The path as the user sees it: not the key under her home or the mount's prefix.
    assert_eq!(
        (e.kind(), e.to_string().as_str()),
        (
            ErrorKind::Conflict,
            "write /moved.bin: the file changed since it was opened"
        ),
        "{}",
        f.name
    );
    assert_eq!(get(&fs, "/moved.bin").await.unwrap(), b"replaced");
    // A new length, as truncate(2) (SFTP SETSTAT of the size): cut, then grown with zeros.
    put(&fs, "/len.bin", &base).await.unwrap();
    fs.set_len(&p("/len.bin"), 1000).await.unwrap();
    assert!(
        get(&fs, "/len.bin").await.unwrap() == base[..1000],
        "{}: cut",
        f.name
    );
    fs.set_len(&p("/len.bin"), size as u64 + 7).await.unwrap();
    let mut want = base[..1000].to_vec();
    want.resize(size + 7, 0);
    assert!(
        get(&fs, "/len.bin").await.unwrap() == want,
        "{}: grown",
        f.name
    );
    assert_eq!(
        fs.set_len(&p("/nothing.bin"), 5).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // On a handle before its first write (FSETSTAT): laid under the writes.
    let mut w = fs
        .open_write(&p("/len.bin"), mode(false, false, false, false))
        .await
        .unwrap();
    assert!(w.set_len(10));
    w.write_at(20, Bytes::from_static(b"TAIL")).await.unwrap();
    assert!(!w.set_len(5), "{}: a new length after a write", f.name);
    assert_eq!(w.size(), 24);
    w.close().await.unwrap();
    let mut want = base[..10].to_vec();
    want.resize(20, 0);
    want.extend_from_slice(b"TAIL");
    assert_eq!(get(&fs, "/len.bin").await.unwrap(), want, "{}", f.name);
}

/// Issue 13 items 8 and 15: a name being written exists for every session (mkdir, exclusive
/// create, rmdir of its folder, rename over it), an exclusive or no-overwrite create commits
/// only if the name is still free, and a CLOSE never brings back a name removed meanwhile.
async fn case_names_being_written(f: &Fixture) {
    if !needs_folders(f) {
        return;
    }
    let tree = Arc::new(bucketgate_storage::Tree::new(
        area(&f.backend, &f.prefix),
        vec![],
    ));
    let view = |perms: Permissions| UserFs::new(tree.clone(), "alice", p("/"), perms);
    let a = view(Permissions::all());
    let b = view(Permissions::all());
    let upload_only = PermSet::parse(["list", "download", "upload"]).unwrap();
    let u1 = view(Permissions::new([(p("/"), upload_only)]));
    let u2 = view(Permissions::new([(p("/"), upload_only)]));
    a.mkdir(&p("/d")).await.unwrap();

    let mut w = a.open_write(&p("/d/new.bin"), write_mode()).await.unwrap();
    w.write_at(0, Bytes::from_static(b"first")).await.unwrap();
    // Taken for everyone while it is written.
    for fs in [&a, &b] {
        assert_eq!(
            fs.mkdir(&p("/d/new.bin")).await.unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        let e = fs
            .open_write(&p("/d/new.bin"), mode(true, false, false, true))
            .await
            .err()
            .expect("exclusive create of a name being written");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        // The folder's listing does not show the upload: the refusal says why it is not empty.
        let e = fs.rmdir(&p("/d")).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DirectoryNotEmpty);
        assert!(e.to_string().contains("being uploaded"), "{e}");
    }
    put(&b, "/other.txt", b"other").await.unwrap();
    assert_eq!(
        b.rename(&p("/other.txt"), &p("/d/new.bin"), false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        b.rename(&p("/d/new.bin"), &p("/moved.bin"), true)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Conflict
    );
    w.close().await.unwrap();
    assert_eq!(get(&b, "/d/new.bin").await.unwrap(), b"first");

    // A remove during the upload: CLOSE fails and the name stays removed.
    let mut w = a.open_write(&p("/d/gone.bin"), write_mode()).await.unwrap();
    w.write_at(0, Bytes::from_static(b"doomed")).await.unwrap();
    b.remove(&p("/d/gone.bin")).await.unwrap();
    assert_eq!(w.close().await.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(
        b.stat(&p("/d/gone.bin")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // The same for an overwrite of an existing file removed meanwhile.
    put(&a, "/d/old.bin", b"old").await.unwrap();
    let mut w = a.open_write(&p("/d/old.bin"), write_mode()).await.unwrap();
    w.write_at(0, Bytes::from_static(b"new")).await.unwrap();
    b.remove(&p("/d/old.bin")).await.unwrap();
    assert!(w.close().await.is_err());
    assert!(b.stat(&p("/d/old.bin")).await.is_err());
    // A replacing rename onto a name being written wins; the upload does not come back.
    let mut w = a
        .open_write(&p("/d/target.bin"), write_mode())
        .await
        .unwrap();
    w.write_at(0, Bytes::from_static(b"upload")).await.unwrap();
    put(&b, "/src.txt", b"renamed").await.unwrap();
    b.rename(&p("/src.txt"), &p("/d/target.bin"), true)
        .await
        .unwrap();
    assert_eq!(w.close().await.unwrap_err().kind(), ErrorKind::Conflict);
    assert_eq!(get(&b, "/d/target.bin").await.unwrap(), b"renamed");

    // Two upload-only users creating one name at once: the first to commit keeps it.
    let mut w1 = u1
        .open_write(&p("/d/race.bin"), write_mode())
        .await
        .unwrap();
    w1.write_at(0, Bytes::from_static(b"one")).await.unwrap();
    let e = u2
        .open_write(&p("/d/race.bin"), write_mode())
        .await
        .err()
        .expect("a second upload-only create of a name being written");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
    w1.close().await.unwrap();
    assert_eq!(get(&a, "/d/race.bin").await.unwrap(), b"one");
    // The same race between separate trees (another gateway instance) is settled at commit.
    let other = user_view(
        area(&f.backend, &f.prefix),
        vec![],
        "/",
        Permissions::new([(p("/"), upload_only)]),
    );
    let mut w1 = u1
        .open_write(&p("/d/race2.bin"), write_mode())
        .await
        .unwrap();
    let mut w2 = other
        .open_write(&p("/d/race2.bin"), write_mode())
        .await
        .unwrap();
    w1.write_at(0, Bytes::from_static(b"one")).await.unwrap();
    w2.write_at(0, Bytes::from_static(b"two")).await.unwrap();
    w1.close().await.unwrap();
    let e = w2.close().await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{}", f.name);
    assert_eq!(get(&a, "/d/race2.bin").await.unwrap(), b"one");
    // Renaming a missing name onto itself is "no such file", as on a disk.
    assert_eq!(
        a.rename(&p("/d/nothere"), &p("/d/nothere"), true)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

async fn case_folders(f: &Fixture) {
    if !needs_folders(f) {
        return;
    }
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    fs.mkdir(&p("/d")).await.unwrap();
    assert_eq!(
        fs.mkdir(&p("/d")).await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        fs.mkdir(&p("/no/such")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    put(&fs, "/d/f.txt", b"1").await.unwrap();
    assert_eq!(
        fs.rmdir(&p("/d")).await.unwrap_err().kind(),
        ErrorKind::DirectoryNotEmpty
    );
    if f.caps.markers {
        fs.mkdir(&p("/empty")).await.unwrap();
        assert_eq!(
            names(&fs, "/").await,
            vec![("d".into(), true), ("empty".into(), true)],
            "{}",
            f.name
        );
        // Removing the last file keeps a folder that has a marker.
        fs.remove(&p("/d/f.txt")).await.unwrap();
        assert_eq!(names(&fs, "/d").await, vec![]);
        assert!(fs.stat(&p("/d")).await.unwrap().is_dir());
        fs.rmdir(&p("/d")).await.unwrap();
        fs.rmdir(&p("/empty")).await.unwrap();
        assert_eq!(names(&fs, "/").await, vec![]);
        // The home survives its last entry.
        assert!(fs.stat(&p("/")).await.unwrap().is_dir());
    } else {
        f.lacks("empty folder markers");
    }
    assert_eq!(
        fs.remove(&p("/")).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
}

async fn case_times(f: &Fixture) {
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    put(&fs, "/t.txt", b"t").await.unwrap();
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    fs.set_mtime(&p("/t.txt"), t).await.unwrap();
    assert_eq!(
        fs.stat(&p("/t.txt")).await.unwrap().mtime,
        Some(t),
        "{}",
        f.name
    );
    assert_eq!(get(&fs, "/t.txt").await.unwrap(), b"t", "content kept");
    // Folders never show 1970.
    if !needs_folders(f) {
        return;
    }
    fs.mkdir(&p("/dd")).await.unwrap();
    let st = fs.stat(&p("/dd")).await.unwrap();
    assert!(st.mtime.unwrap() > SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000));
    // Listings show the time stat shows: a folder with a marker its marker's, one implied by
    // deeper keys the same as stat gives it.
    if f.name == "local" {
        fs.mkdir(&p("/implied")).await.unwrap();
        put(&fs, "/implied/f", b"f").await.unwrap();
    } else {
        // A folder that only deeper keys imply (no marker), as other programs leave them.
        let key = format!("{}users/alice/implied/f", f.prefix);
        let mut up = f.backend.create(&key, Default::default()).await.unwrap();
        up.write(Bytes::from_static(b"f")).await.unwrap();
        up.finish().await.unwrap();
    }
    let mut pages = fs.list(&p("/")).await.unwrap();
    let mut seen = 0;
    while let Some(page) = pages.next().await {
        for e in page.unwrap() {
            let st = fs.stat(&p(&format!("/{}", e.name))).await.unwrap();
            assert_eq!(
                e.mtime, st.mtime,
                "{}: {} is listed with another time than stat gives",
                f.name, e.name
            );
            seen += 1;
        }
    }
    assert_eq!(seen, 3, "{}", f.name);
}

async fn case_rename(f: &Fixture) {
    if !needs_folders(f) {
        return;
    }
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    put(&fs, "/a.txt", b"A").await.unwrap();
    put(&fs, "/b.txt", b"B").await.unwrap();
    assert_eq!(
        fs.rename(&p("/a.txt"), &p("/b.txt"), false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::AlreadyExists
    );
    fs.rename(&p("/a.txt"), &p("/b.txt"), true).await.unwrap();
    assert_eq!(get(&fs, "/b.txt").await.unwrap(), b"A");
    assert!(fs.stat(&p("/a.txt")).await.is_err());
    // A folder of many files moves whole.
    fs.mkdir(&p("/many")).await.unwrap();
    let n = if f.caps.big { 1000 } else { 200 };
    for i in 0..n {
        put(&fs, &format!("/many/f{i:04}"), format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    fs.mkdir(&p("/many/sub")).await.unwrap();
    put(&fs, "/many/sub/deep.txt", b"deep").await.unwrap();
    fs.rename(&p("/many"), &p("/moved"), false).await.unwrap();
    assert!(fs.stat(&p("/many")).await.is_err());
    assert_eq!(names(&fs, "/moved").await.len(), n + 1);
    assert_eq!(get(&fs, "/moved/f0007").await.unwrap(), b"7");
    assert_eq!(get(&fs, "/moved/sub/deep.txt").await.unwrap(), b"deep");
    assert_eq!(
        fs.rename(&p("/moved"), &p("/moved/sub/x"), false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidInput
    );
}

async fn case_listing_pages(f: &Fixture) {
    if !needs_folders(f) {
        return;
    }
    let fs = alice(f);
    fs.ensure_home().await.unwrap();
    fs.mkdir(&p("/big")).await.unwrap();
    let n = 2100;
    let mut tasks = futures::stream::iter(0..n)
        .map(|i| {
            let fs = fs.clone();
            async move { put(&fs, &format!("/big/{i:05}"), b"x").await }
        })
        .buffer_unordered(16);
    while let Some(r) = tasks.next().await {
        r.unwrap();
    }
    let mut pages = fs.list(&p("/big")).await.unwrap();
    let (mut count, mut npages, mut largest) = (0, 0, 0);
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        npages += 1;
        largest = largest.max(page.len());
        count += page.len();
    }
    assert_eq!(count, n, "{}", f.name);
    assert!(npages >= 3, "{}: listing came in {npages} pages", f.name);
    assert!(largest <= 1000, "{}: a page held {largest} entries", f.name);
}

/// The escape matrix: hostile paths through every operation never reach a sibling home or
/// anything outside the user's own.
async fn case_escape_matrix(f: &Fixture) {
    if !needs_folders(f) {
        return;
    }
    let root = admin(f);
    root.mkdir(&p("/users")).await.unwrap();
    root.mkdir(&p("/users/alice")).await.unwrap();
    root.mkdir(&p("/users/alice2")).await.unwrap();
    put(&root, "/users/alice2/secret", b"alice2's")
        .await
        .unwrap();
    put(&root, "/top-secret", b"root's").await.unwrap();
    let before = backend_keys(f, "").await;
    let fs = alice(f);
    let hostile = [
        "../alice2/secret",
        "..\\alice2\\secret",
        "/../../users/alice2/secret",
        "//..//..//top-secret",
        "./../alice2/secret",
        "a/../../alice2/secret",
        "../../../../../../top-secret",
        "..",
        "/..",
        "%2e%2e/alice2/secret",
        "..%2f..%2ftop-secret",
    ];
    let cwd = VPath::root();
    for h in hostile {
        let Ok(path) = fs.resolve(&cwd, h) else {
            continue;
        };
        assert!(
            path.segments().all(|s| s != ".." && s != "."),
            "{h:?} resolved to {path}"
        );
        let _ = fs.stat(&path).await;
        if let Ok(mut r) = fs.open_read(&path).await {
            let got = r.read_at(0, 100).await.unwrap_or_default();
            assert_ne!(&got[..], b"alice2's", "{h:?} read a sibling's file");
            assert_ne!(&got[..], b"root's", "{h:?} read outside the home");
        }
        let _ = fs.remove(&path).await;
        let _ = fs.rmdir(&path).await;
        let _ = fs.set_mtime(&path, SystemTime::now()).await;
        let _ = fs.rename(&path, &p("/stolen"), true).await;
        let _ = fs.rename(&p("/stolen"), &path, true).await;
        if let Ok(mut pages) = fs.list(&path).await {
            while let Some(page) = pages.next().await {
                for e in page.unwrap_or_default() {
                    assert_ne!(e.name, "secret", "{h:?} listed a sibling's folder");
                    assert_ne!(e.name, "top-secret", "{h:?} listed outside the home");
                }
            }
        }
    }
    // Control characters and NUL never reach storage.
    for bad in ["a\0b", "a\nb", "x\u{1b}y"] {
        assert_eq!(
            fs.resolve(&cwd, bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    let mut after = backend_keys(f, "").await;
    // Anything alice created lives in her own home.
    after.retain(|k| !k.starts_with("users/alice/"));
    let mut want = before.clone();
    want.retain(|k| !k.starts_with("users/alice/"));
    assert_eq!(after, want, "{}: keys outside alice's home changed", f.name);
    assert_eq!(
        get(&root, "/users/alice2/secret").await.unwrap(),
        b"alice2's"
    );
    assert_eq!(get(&root, "/top-secret").await.unwrap(), b"root's");
}

async fn case_permissions(f: &Fixture) {
    if !needs_folders(f) {
        return;
    }
    let root = admin(f);
    root.mkdir(&p("/users")).await.unwrap();
    root.mkdir(&p("/users/alice")).await.unwrap();
    root.mkdir(&p("/users/alice/archive")).await.unwrap();
    put(&root, "/users/alice/archive/old.txt", b"old")
        .await
        .unwrap();
    let perms = Permissions::new([
        (p("/"), PermSet::ALL),
        (p("/archive"), PermSet::parse(["list", "download"]).unwrap()),
    ]);
    let fs = user_view(area(&f.backend, &f.prefix), vec![], "/users/alice", perms);
    let before = backend_keys(f, "users/alice").await;
    let denied = |r: bucketgate_storage::Result<()>| {
        assert_eq!(r.unwrap_err().kind(), ErrorKind::PermissionDenied)
    };
    denied(put(&fs, "/archive/new.txt", b"n").await);
    denied(put(&fs, "/archive/old.txt", b"n").await);
    denied(fs.remove(&p("/archive/old.txt")).await);
    denied(fs.rename(&p("/archive/old.txt"), &p("/x.txt"), false).await);
    denied(fs.mkdir(&p("/archive/sub")).await);
    denied(
        fs.set_mtime(&p("/archive/old.txt"), SystemTime::now())
            .await,
    );
    denied(fs.set_len(&p("/archive/old.txt"), 1).await);
    denied(fs.set_len(&p("/archive/old.txt"), 10).await);
    assert_eq!(get(&fs, "/archive/old.txt").await.unwrap(), b"old");
    assert_eq!(
        names(&fs, "/archive").await,
        vec![("old.txt".into(), false)]
    );
    assert_eq!(backend_keys(f, "users/alice").await, before);
    // `/archive` never covers `/archive2`.
    fs.mkdir(&p("/archive2")).await.unwrap();
    put(&fs, "/archive2/ok.txt", b"ok").await.unwrap();
}

async fn case_mounts(f: &Fixture, site: &Fixture) {
    // A local site tree with `f` mounted at /partners/acme (prefix in/ of the test's area).
    let mounts = vec![bucketgate_storage::Mount {
        path: p("/partners/acme"),
        area: area(&f.backend, &format!("{}in/", f.prefix)),
    }];
    let fs = user_view(
        area(&site.backend, &site.prefix),
        mounts,
        "/",
        Permissions::all(),
    );
    // The folders leading to the mount exist even though the site has none.
    assert_eq!(names(&fs, "/").await, vec![("partners".into(), true)]);
    assert_eq!(names(&fs, "/partners").await, vec![("acme".into(), true)]);
    put(&fs, "/partners/acme/hello.txt", b"hi").await.unwrap();
    assert_eq!(backend_keys(f, "in").await, vec!["hello.txt".to_string()]);
    // `/partners/acmex` is not the mount.
    assert!(fs.stat(&p("/partners/acmex")).await.is_err());
    // Mount points cannot be removed or renamed.
    assert_eq!(
        fs.rmdir(&p("/partners/acme")).await.unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        fs.rename(&p("/partners/acme"), &p("/x"), false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::PermissionDenied
    );
    // A file moves across backends by streaming; folders do not. The file keeps its time, as
    // in a rename within one backend (and as `mv` across file systems).
    let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    fs.set_mtime(&p("/partners/acme/hello.txt"), t)
        .await
        .unwrap();
    fs.rename(&p("/partners/acme/hello.txt"), &p("/hello.txt"), false)
        .await
        .unwrap();
    assert_eq!(get(&fs, "/hello.txt").await.unwrap(), b"hi");
    assert!(backend_keys(f, "in").await.is_empty());
    assert_eq!(fs.stat(&p("/hello.txt")).await.unwrap().mtime, Some(t));
    fs.rename(&p("/hello.txt"), &p("/partners/acme/back.txt"), false)
        .await
        .unwrap();
    let back = fs.stat(&p("/partners/acme/back.txt")).await.unwrap();
    assert_eq!((back.size, back.mtime), (2, Some(t)));
    fs.mkdir(&p("/dir")).await.unwrap();
    assert_eq!(
        fs.rename(&p("/dir"), &p("/partners/acme/dir"), false)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Unsupported
    );
}

macro_rules! suite {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn round_trip_and_overwrite() {
                case_round_trip_and_overwrite(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sizes() {
                case_sizes(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn random_reads() {
                case_random_reads(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn replaced_while_open() {
                case_replaced_while_open(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn write_rules() {
                case_write_rules(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn append() {
                case_append(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn in_place_writes() {
                case_in_place_writes(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn names_being_written() {
                case_names_being_written(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn folders() {
                case_folders(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn times() {
                case_times(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rename() {
                case_rename(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn listing_pages() {
                case_listing_pages(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn escape_matrix() {
                case_escape_matrix(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn permissions() {
                case_permissions(&$make.await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mounts() {
                case_mounts(&$make.await, &Fixture::local().await).await
            }
        }
    };
}

/// A fixture over one of the S3 servers of the storage crate's harness, inside a fresh prefix.
fn from_server(srv: s3_support::Server) -> Fixture {
    let backend = Arc::new(srv.backend_with(|o| {
        o.list_page_size = 1000;
        o.preserve_mtime = true;
    }));
    // Empty folders are there for the tree where the server keeps a marker visible in any
    // way: listed under its own prefix, or answering HEAD (an older MinIO; the tree asks both).
    let mut caps = srv.caps;
    if let Some(p) = &srv.probed {
        caps.markers = p.markers_listed || p.markers_head;
    }
    Fixture {
        name: srv.name,
        backend,
        prefix: srv.prefix.clone(),
        caps,
        _guard: Box::new(srv),
    }
}

async fn s3s_fs() -> Fixture {
    from_server(s3_support::s3s_server(None).await)
}

async fn moto() -> Fixture {
    from_server(s3_support::moto_server().await)
}

/// `BUCKETGATE_TEST_S3_ENDPOINT` (and _BUCKET, _ACCESS_KEY, _SECRET_KEY, _REGION) name any
/// other S3 server; unset, the suite runs on local disk again so the module always runs.
async fn env_or_local() -> Fixture {
    match s3_support::env_server() {
        // Probed, as `serve` probes each remote at start: the tree then uses what this server
        // supports (an older MinIO answers HEAD for an empty folder it does not list).
        Some(srv) => from_server(srv.probed().await),
        None => Fixture::local().await,
    }
}

suite!(local, Fixture::local());
suite!(s3s, s3s_fs());
suite!(moto_s3, moto());
suite!(env_endpoint, env_or_local());

/// Keys written into the bucket by other programs: every name a listing shows leads back to
/// exactly its own key (the path a client sends back resolves to itself, and stat, read and
/// remove act on that key and nothing else); keys that no path names exactly (a backslash, a
/// control character, a name too long) are not listed at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_name_acts_on_exactly_its_own_key() {
    let srv = s3_support::moto_server().await;
    let b: Arc<dyn bucketgate_storage::Backend> = Arc::new(srv.backend());
    let long_ok = "l".repeat(255);
    let long_bad = "L".repeat(256);
    // No `.` or `..` segment here: URL parsing would fold those before the bucket saw them.
    let keys: Vec<&str> = vec![
        "b",
        "back/slash",
        "a\\..\\..\\b",
        "back\\slash",
        "..\\b",
        "c\\",
        "\\d",
        "dir\\x/inner",
        "sp ace",
        " lead",
        "trail ",
        "...",
        ".hidden",
        "%2e%2e",
        "%2fb",
        "u-\u{fc}nicode",
        "tab\tname",
        "del\u{7f}name",
        "star*?[x]",
        "~",
        "-dash",
        "q\"uote'",
        "semi;colon",
        "#hash",
        "+plus",
        "&amp<lt>",
        &long_ok,
        &long_bad,
        "deep/er/key",
        "deep/er/..\\key",
    ];
    for k in &keys {
        s3_support::put(&srv.backend(), &srv.key(k), k.as_bytes(), 1024).await;
    }
    let unservable = |k: &str| {
        k.contains('\\') || k.chars().any(char::is_control) || k.split('/').any(|s| s.len() > 255)
    };
    let fs = user_view(area(&b, &srv.prefix), vec![], "/", Permissions::all());
    // Walk the tree as a client does: list, then send each listed name back as a path.
    let mut files = Vec::new();
    let mut dirs = vec![VPath::root()];
    while let Some(d) = dirs.pop() {
        let mut pages = fs.list(&d).await.unwrap();
        while let Some(page) = pages.next().await {
            for e in page.unwrap() {
                let sent = if d.is_root() {
                    format!("/{}", e.name)
                } else {
                    format!("{d}/{}", e.name)
                };
                let path = fs.resolve(&VPath::root(), &sent).unwrap();
                assert_eq!(path.as_str(), sent, "a listed name does not name itself");
                if e.is_dir() {
                    dirs.push(path);
                } else {
                    files.push((path, e.size));
                }
            }
        }
    }
    let mut listed: Vec<String> = files
        .iter()
        .map(|(p, _)| p.as_str()[1..].to_string())
        .collect();
    listed.sort();
    let mut want: Vec<String> = keys
        .iter()
        .filter(|k| !unservable(k))
        .map(|k| k.to_string())
        .collect();
    want.sort();
    assert_eq!(listed, want, "listed files");
    for (path, size) in &files {
        let key = &path.as_str()[1..];
        assert_eq!(*size, key.len() as u64, "{key:?}");
        assert_eq!(
            fs.stat(path).await.unwrap().size,
            key.len() as u64,
            "{key:?}"
        );
        assert_eq!(
            get(&fs, path.as_str()).await.unwrap(),
            key.as_bytes(),
            "{key:?}"
        );
    }
    // Removing each listed file removes its own key, and no other.
    let mut gone: Vec<&str> = Vec::new();
    for (path, _) in &files {
        let key = &path.as_str()[1..];
        fs.remove(path).await.unwrap();
        gone.push(key);
        for k in &keys {
            let r = b.stat_file(&srv.key(k)).await;
            if gone.contains(k) {
                assert_eq!(
                    r.unwrap_err().kind(),
                    ErrorKind::NotFound,
                    "{k:?} is still there"
                );
            } else {
                assert_eq!(
                    r.unwrap().size,
                    k.len() as u64,
                    "removing {key:?} changed {k:?}"
                );
            }
        }
    }
}

/// A file put on the local disk by another program with a newline in its name would forge FTP
/// listing lines, and one with a backslash would name another file (`a\..\ok.txt` resolves to
/// `/ok.txt`): the tree lists neither.
#[tokio::test]
async fn local_names_with_control_characters_are_not_listed() {
    let f = Fixture::local().await;
    let fs = admin(&f);
    put(&fs, "/ok.txt", b"ok").await.unwrap();
    let disk = bucketgate_tests::fixtures::local_root(&f);
    std::fs::write(
        disk.join("evil\r\n-rw-r--r-- 1 x x 1 Jan 1 00:00 fake"),
        b"x",
    )
    .unwrap();
    std::fs::write(disk.join("a\\..\\ok.txt"), b"not ok").unwrap();
    assert_eq!(names(&fs, "/").await, vec![("ok.txt".to_string(), false)]);
}
