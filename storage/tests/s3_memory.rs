//! What uploads hold of the shared memory budget: small uploads hold about their size (not a
//! whole part each), large ones still send whole parts, and a budget too tight to grow a part
//! spools it to disk instead of deadlocking.

use bucketgate_testkit::s3 as s3_support;

use bucketgate_storage::backend::{Backend, CreateOptions, Upload};
use bucketgate_storage::budget::MemoryBudget;
use bucketgate_storage::s3::S3Backend;
use bytes::Bytes;
use s3_support::*;
use std::sync::Arc;

const KIB: u64 = 1024;

fn backend(srv: &Server, budget: &Arc<MemoryBudget>) -> S3Backend {
    S3Backend::new(srv.options(), budget.clone()).expect("backend")
}

/// The number of parts of a multipart ETag (`"<md5>-N"`), or `None` for a single PUT.
fn parts_of(etag: &str) -> Option<u32> {
    etag.trim_matches('"').rsplit_once('-')?.1.parse().ok()
}

#[tokio::test]
async fn concurrent_small_uploads_hold_about_their_size() {
    const N: usize = 40;
    for srv in servers().await {
        let budget = MemoryBudget::shared(512 * MIB as u64);
        let b = backend(&srv, &budget);
        let part = srv.options().part_size;

        // Size not announced (FTP STOR, SFTP): each holds the first buffer, not a part.
        let mut ups: Vec<Box<dyn Upload>> = Vec::new();
        let mut sent = Vec::new();
        for i in 0..N {
            let key = srv.key(&format!("small/{i}"));
            let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
            let bytes = data(4096, i as u64);
            up.write(Bytes::from(bytes.clone())).await.unwrap();
            ups.push(up);
            sent.push((key, bytes));
        }
        let held = budget.in_use();
        println!(
            "[{}] {N} open 4 KiB uploads hold {} KiB",
            srv.name,
            held / KIB
        );
        assert!(
            held >= N as u64 * 4 * KIB,
            "[{}] the buffers are counted: {held}",
            srv.name
        );
        assert!(
            held <= N as u64 * 64 * KIB,
            "[{}] {N} uploads of 4 KiB hold {held} bytes (a part is {part})",
            srv.name
        );
        let done = futures::future::join_all(ups.into_iter().map(|u| u.finish())).await;
        for r in done {
            r.unwrap();
        }
        assert_eq!(budget.in_use(), 0, "[{}] all released", srv.name);
        for (key, bytes) in &sent {
            assert_eq!(&get(&b, key).await, bytes, "[{}] {key}", srv.name);
        }

        // Size announced: each holds exactly what was announced.
        let mut ups = Vec::new();
        for i in 0..N {
            let opts = CreateOptions {
                size_hint: Some(4096),
                ..Default::default()
            };
            let mut up = b
                .create(&srv.key(&format!("hinted/{i}")), opts)
                .await
                .unwrap();
            up.write(Bytes::from(data(4096, i as u64))).await.unwrap();
            ups.push(up);
        }
        assert_eq!(budget.in_use(), N as u64 * 4 * KIB, "[{}]", srv.name);
        for u in ups {
            u.abort().await;
        }
        assert_eq!(budget.in_use(), 0, "[{}]", srv.name);
    }
}

#[tokio::test]
async fn a_part_grows_as_it_fills() {
    for srv in servers().await {
        let budget = MemoryBudget::shared(512 * MIB as u64);
        let b = backend(&srv, &budget);
        let key = srv.key("grown");
        let bytes = data(300 * KIB as usize, 7);
        let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
        let mut held = Vec::new();
        for c in bytes.chunks(32 * KIB as usize) {
            up.write(Bytes::copy_from_slice(c)).await.unwrap();
            held.push(budget.in_use() / KIB);
        }
        println!("[{}] KiB held after each 32 KiB write: {held:?}", srv.name);
        // 64 KiB doubling: 64, 64, 128, 128, 256 ... up to 512 for 300 KiB.
        assert_eq!(held[0], 64, "[{}]", srv.name);
        assert_eq!(*held.last().unwrap(), 512, "[{}]", srv.name);
        assert!(held.windows(2).all(|w| w[0] <= w[1]), "[{}]", srv.name);
        let e = up.finish().await.unwrap();
        assert_eq!(e.size, bytes.len() as u64);
        assert_eq!(
            parts_of(e.etag.as_deref().unwrap_or("")),
            None,
            "single PUT"
        );
        assert_eq!(get(&b, &key).await, bytes, "[{}]", srv.name);
        assert_eq!(budget.in_use(), 0);
    }
}

#[tokio::test]
async fn a_large_upload_sends_whole_parts_from_memory() {
    for srv in servers().await {
        let budget = MemoryBudget::shared(512 * MIB as u64);
        let b = backend(&srv, &budget);
        let part = srv.options().part_size;
        let concurrency = srv.options().concurrency as u64;
        let key = srv.key("large");
        let bytes = data(3 * part as usize + MIB, 11);
        let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
        let mut peak = 0;
        for c in bytes.chunks(32 * KIB as usize) {
            up.write(Bytes::copy_from_slice(c)).await.unwrap();
            peak = peak.max(budget.in_use());
        }
        println!("[{}] peak held: {} KiB", srv.name, peak / KIB);
        // Whole parts were buffered in memory (not spooled), at most `concurrency` in flight
        // plus the one filling.
        assert!(peak >= part, "[{}] peak {peak}", srv.name);
        assert!(
            peak <= (concurrency + 1) * part,
            "[{}] peak {peak}",
            srv.name
        );
        let e = up.finish().await.unwrap();
        assert_eq!(budget.in_use(), 0, "[{}]", srv.name);
        assert_eq!(e.size, bytes.len() as u64);
        assert_eq!(get(&b, &key).await, bytes, "[{}] bytes", srv.name);
        let etag = e.etag.clone().unwrap_or_default();
        if !srv.skip(parts_of(&etag).is_none(), "multipart ETag part count") {
            // 3 parts of `part_size` and the last MiB.
            assert_eq!(parts_of(&etag), Some(4), "[{}] etag {etag}", srv.name);
        }

        // A sent part's buffer is filled again by a later part (see `Spare`): an upload
        // given up after several parts releases all of it, the kept buffer included, and
        // leaves nothing at its name.
        let gone = srv.key("given-up");
        let mut up = b.create(&gone, CreateOptions::default()).await.unwrap();
        for c in data(5 * part as usize + MIB, 12).chunks(256 * KIB as usize) {
            up.write(Bytes::copy_from_slice(c)).await.unwrap();
            assert!(
                budget.in_use() <= (concurrency + 1) * part,
                "[{}] held {}",
                srv.name,
                budget.in_use()
            );
        }
        up.abort().await;
        assert_eq!(budget.in_use(), 0, "[{}] all released", srv.name);
        assert_eq!(
            b.stat(&gone).await.map(|e| e.size).unwrap_err().kind(),
            bucketgate_storage::error::ErrorKind::NotFound,
            "[{}]",
            srv.name
        );
    }
}

#[tokio::test]
async fn a_budget_too_tight_to_grow_spools_instead_of_deadlocking() {
    const N: usize = 8;
    for srv in servers().await {
        // Room for each upload's first buffer and nothing more: every part must move to disk
        // to grow. One task writes to all uploads in turn, so a writer that waited for the
        // budget while holding its part would hang this test.
        let budget = MemoryBudget::shared(N as u64 * 64 * KIB);
        let b = backend(&srv, &budget);
        let mut ups = Vec::new();
        let mut sent = Vec::new();
        for i in 0..N {
            let key = srv.key(&format!("tight/{i}"));
            ups.push(b.create(&key, CreateOptions::default()).await.unwrap());
            sent.push((key, data(MIB, 100 + i as u64)));
        }
        for off in (0..MIB).step_by(32 * KIB as usize) {
            for (up, (_, bytes)) in ups.iter_mut().zip(&sent) {
                up.write(Bytes::copy_from_slice(&bytes[off..off + 32 * KIB as usize]))
                    .await
                    .unwrap();
            }
        }
        // Everything moved to disk, so the budget is free again.
        assert_eq!(budget.in_use(), 0, "[{}]", srv.name);
        for up in ups {
            up.finish().await.unwrap();
        }
        for (key, bytes) in &sent {
            assert_eq!(&get(&b, key).await, bytes, "[{}] {key}", srv.name);
        }
    }
}

/// Issue 22 item 3: a part that moves to disk when it cannot grow keeps no copy of itself in
/// memory. Through tokio's file, the move copied the part (here 512 KiB) into that file's own
/// buffer, which kept its size until the part was sent: 1,024 sessions held half a GiB beyond
/// the budget so. Counted on the heap of a process of its own (`heap::Counting`).
#[tokio::test]
async fn a_part_moved_to_disk_keeps_no_copy_in_memory() {
    if !bucketgate_testkit::alone(
        module_path!(),
        "a_part_moved_to_disk_keeps_no_copy_in_memory",
    ) {
        return;
    }
    const N: usize = 16;
    const HELD: usize = 512 * KIB as usize;
    let srv = s3s_server(None).await;
    // Room for every upload's buffer to grow to 512 KiB, and not to 1 MiB: each part moves to
    // disk on its next write.
    let budget = MemoryBudget::shared((N * HELD) as u64);
    let b = backend(&srv, &budget);
    let mut ups = Vec::new();
    let mut sent = Vec::new();
    for i in 0..N {
        let key = srv.key(&format!("moved/{i}"));
        ups.push(b.create(&key, CreateOptions::default()).await.unwrap());
        sent.push((key, data(HELD + 64 * KIB as usize, 300 + i as u64)));
    }
    let chunk = 32 * KIB as usize;
    for off in (0..HELD).step_by(chunk) {
        for (up, (_, bytes)) in ups.iter_mut().zip(&sent) {
            up.write(Bytes::copy_from_slice(&bytes[off..off + chunk]))
                .await
                .unwrap();
        }
    }
    assert_eq!(
        budget.in_use(),
        (N * HELD) as u64,
        "every part grew in memory"
    );
    let before = bucketgate_testkit::heap::in_use();
    // The next write moves each part to disk, the ones after it go there too. What a moved
    // part gives back is taken at once (as other sessions would), so that no later part grows
    // in memory instead.
    let mut others = Vec::new();
    for off in (HELD..HELD + 64 * KIB as usize).step_by(chunk) {
        for (up, (_, bytes)) in ups.iter_mut().zip(&sent) {
            up.write(Bytes::copy_from_slice(&bytes[off..off + chunk]))
                .await
                .unwrap();
            if let Some(p) = budget.try_acquire(budget.available()) {
                others.push(p);
            }
        }
    }
    let taken: u64 = others.iter().map(|p| p.bytes()).sum();
    assert_eq!(taken, (N * HELD) as u64, "every part moved to disk");
    let after = bucketgate_testkit::heap::in_use();
    println!(
        "heap with {N} parts of 512 KiB in memory: {} KiB; once on disk: {} KiB",
        before / 1024,
        after / 1024
    );
    // The parts' own buffers (N × 512 KiB) are gone; nothing of that size took their place.
    assert!(
        after + N * HELD / 2 < before,
        "the parts moved to disk still hold memory: {} KiB before, {} KiB after",
        before / 1024,
        after / 1024
    );
    drop(others);
    for up in ups {
        up.finish().await.unwrap();
    }
    for (key, bytes) in &sent {
        assert_eq!(&get(&b, key).await, bytes, "{key}");
    }
}

/// `n` uploads of `size` bytes at once under `dir`, written 32 KiB at a time: each must land
/// whole (`when` says in what conditions, for the message).
async fn uploads_at_once(
    b: &S3Backend,
    srv: &Server,
    dir: &str,
    n: u64,
    size: usize,
    seed: u64,
    when: &str,
) {
    let mut tasks = Vec::new();
    for i in 0..n {
        let b = b.clone();
        let key = srv.key(&format!("{dir}/{i}"));
        tasks.push(tokio::spawn(async move {
            let bytes = data(size, seed + i);
            let mut up = b.create(&key, CreateOptions::default()).await?;
            for c in bytes.chunks(32 * KIB as usize) {
                up.write(Bytes::copy_from_slice(c)).await?;
            }
            up.finish().await?;
            Ok::<_, bucketgate_storage::Error>((key, bytes))
        }));
    }
    for t in tasks {
        let (key, bytes) = t
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("[{}] an upload failed {when}: {e:?}", srv.name));
        assert_eq!(get(b, &key).await, bytes, "[{}] {key}", srv.name);
    }
}

/// Issue 13.9(a) / 22.2: the spool folder `<state_dir>/spool` did not exist, so the first part
/// that had to spill failed the upload with "no such file". It is created when missing.
#[tokio::test]
async fn a_missing_spool_folder_is_created_when_a_part_spills() {
    for srv in servers().await {
        let state = tempfile::tempdir().unwrap();
        let spool = state.path().join("spool");
        // Room for the first buffer and nothing more: the part spills as soon as it grows.
        let budget = MemoryBudget::shared(64 * KIB);
        let mut o = srv.options();
        o.spool_dir = Some(spool.clone());
        let b = S3Backend::new(o, budget.clone()).expect("backend");
        let key = srv.key("spilled");
        let bytes = data(7 * MIB, 7);
        let mut up = b.create(&key, CreateOptions::default()).await.unwrap();
        for c in bytes.chunks(32 * KIB as usize) {
            up.write(Bytes::copy_from_slice(c)).await.unwrap();
        }
        up.finish().await.unwrap();
        assert!(
            spool.is_dir(),
            "[{}] the spool folder was created",
            srv.name
        );
        assert_eq!(get(&b, &key).await, bytes, "[{}]", srv.name);
        assert_eq!(budget.in_use(), 0, "[{}]", srv.name);
    }
}

/// When spilling is impossible (the spool folder cannot be made: here its parent is a file),
/// uploads wait for memory instead of failing, and a part larger than the whole budget shrinks
/// to the budget (parts need not be of one size).
#[tokio::test]
async fn without_a_spool_folder_uploads_wait_for_memory() {
    for srv in servers().await {
        let state = tempfile::tempdir().unwrap();
        let not_a_dir = state.path().join("file");
        std::fs::write(&not_a_dir, b"x").unwrap();
        // Less than one 8 MiB part, more than S3's 5 MiB minimum.
        let budget = MemoryBudget::shared(6 * MIB as u64);
        let mut o = srv.options();
        o.part_size = 8 * MIB as u64;
        o.spool_dir = Some(not_a_dir.join("spool"));
        let b = S3Backend::new(o, budget.clone()).expect("backend");
        uploads_at_once(
            &b,
            &srv,
            "nodisk",
            2,
            13 * MIB,
            20,
            "without a spool folder",
        )
        .await;
        assert_eq!(budget.in_use(), 0, "[{}]", srv.name);
    }
}

/// Set in the child process of [`a_full_spool_disk_makes_uploads_wait_for_memory`].
const FULL_SPOOL_CHILD: &str = "BUCKETGATE_FULL_SPOOL_CHILD";

/// A spool folder on a disk with no room for a part: creating a temp file there still works,
/// writing a part into it does not. Six uploads larger than the budget must all land, waiting
/// for memory, where before a part spilled to the empty file and its upload failed with "file
/// too large" (a full disk: "no space left"). The disk's limit is the child process's
/// RLIMIT_FSIZE (1 MiB), so the S3 server runs here in the parent, beyond its reach.
#[test]
fn a_full_spool_disk_makes_uploads_wait_for_memory() {
    if std::env::var_os(FULL_SPOOL_CHILD).is_some() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let srv = rt.block_on(s3s_server(None));
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "s3_memory::full_spool_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(FULL_SPOOL_CHILD, "1")
    .env("BUCKETGATE_TEST_S3_ENDPOINT", &srv.endpoint)
    .env("BUCKETGATE_TEST_S3_BUCKET", &srv.bucket)
    .env("BUCKETGATE_TEST_S3_ACCESS_KEY", &srv.access)
    .env("BUCKETGATE_TEST_S3_SECRET_KEY", &srv.secret)
    .env_remove("BUCKETGATE_TEST_S3_REGION");
    if let Some(r) = &srv.region {
        cmd.env("BUCKETGATE_TEST_S3_REGION", r);
    }
    // The runtime's workers serve the S3 server while this thread waits for the child.
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the child failed:\n{text}");
    assert!(
        text.contains("6 uploads landed"),
        "the child did not run its uploads:\n{text}"
    );
}

/// The child of [`a_full_spool_disk_makes_uploads_wait_for_memory`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_spool_child() {
    if std::env::var_os(FULL_SPOOL_CHILD).is_none() {
        return; // an ordinary test run: nothing to do
    }
    // SAFETY: plain libc calls on this process, before any file of the test is written.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: MIB as libc::rlim_t,
            rlim_max: MIB as libc::rlim_t,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    let srv = env_server().expect("the parent names its server");
    let state = tempfile::tempdir().unwrap();
    let budget = MemoryBudget::shared(16 * MIB as u64);
    let mut o = srv.options();
    o.part_size = 5 * MIB as u64;
    o.spool_dir = Some(state.path().join("spool"));
    let b = S3Backend::new(o, budget.clone()).expect("backend");
    uploads_at_once(
        &b,
        &srv,
        "fullspool",
        6,
        12 * MIB,
        40,
        "with the spool disk full",
    )
    .await;
    assert_eq!(budget.in_use(), 0);
    println!("6 uploads landed");
}
