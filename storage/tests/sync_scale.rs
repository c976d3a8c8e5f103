//! 10,000 small files between two local folders: the first run copies them all, the second
//! finds nothing to do, and a few changes are then found among them.

use crate::sync_common as common;

use bucketgate_storage::sync::{ConflictPolicy, Direction};
use common::*;
use std::time::Instant;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_files() {
    if !bucketgate_testkit::alone(module_path!(), "ten_thousand_small_files") {
        return;
    }
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    const N: usize = 10_000;
    for i in 0..N {
        write(
            &s,
            &format!("d{:02}/f{i:05}.txt", i % 100),
            format!("file {i}").as_bytes(),
        );
    }
    let job = env.job(Direction::TwoWay, true, ConflictPolicy::KeepBoth);

    let t = Instant::now();
    let sum = env.run(&job).await;
    let first = t.elapsed();
    assert_eq!(sum.copied_to_remote, N as u64, "{sum:?}");
    assert_eq!(sum.errors, 0);

    let t = Instant::now();
    let sum = env.run(&job).await;
    let second = t.elapsed();
    assert_eq!(counts(&sum), (0, 0, 0, 0, 0, 0, 0));

    write(&s, "d07/f00007.txt", b"changed");
    rm(&r, "d08/f00008.txt");
    write(&r, "new.txt", b"new");
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (1, 1, 0, 1, 0, 0, 0));
    assert_eq!(tree(&s), tree(&r));
    println!(
        "10,000 files: first run {first:?}, unchanged run {second:?}, peak RSS {} MiB",
        peak_rss_kib() / 1024
    );
    // Loose: the listings are spooled, so memory does not grow with the job.
    assert!(peak_rss_kib() < 400 * 1024);
}
