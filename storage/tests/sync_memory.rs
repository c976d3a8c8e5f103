//! Flat memory: a sync job over 100,000 entries needs no more memory than one over 20,000.
//!
//! The listings, the saved state, the journal and the new state are spooled to disk in sorted
//! runs and merged as streams, so the peak does not grow with the job. Were any of them held
//! whole (every listed entry is ~150-250 bytes in memory, and a run holds two listings and a
//! state), the 100,000-entry run would need about five times the 20,000-entry run's growth.
//!
//! Local folders on both sides: the S3 client streams its listings page by page (see
//! `sync_s3_scale` for 10,000 files against real S3 servers), and 100,000 PUTs to the
//! in-process s3s-fs server take many minutes in a debug build, so the size is tested here.
//!
//! Peak RSS (VmHWM) is a whole-process figure, so the test runs in a process of its own
//! (`bucketgate_testkit::alone`).

use crate::sync_common as common;

use bucketgate_storage::sync::{ConflictPolicy, Direction};
use common::*;
use std::path::Path;

/// (current RSS, peak RSS) of this process in KiB.
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Files below `root`, counted without keeping their names.
fn count_files(root: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                if e.file_name() != bucketgate_storage::local::STAGING {
                    stack.push(e.path());
                }
            } else {
                n += 1;
            }
        }
    }
    n
}

/// Lines of the job's saved state (a header, then one record per synced path).
fn state_records(env: &Env) -> usize {
    let f = std::fs::File::open(env.state.join("sync/acme-inbound.state")).expect("state");
    std::io::BufRead::lines(std::io::BufReader::new(f)).count() - 1
}

/// Runs a first sync over `n` entries and a no-change rerun; returns how far the peak RSS rose
/// above `base` (KiB).
///
/// The entries are folders present on both sides plus a few files on the site: copying
/// 100,000 files costs an fsync each and would take minutes, while every entry, folder or
/// file, goes through the same listing spools, merge and state. (Folders are the smaller
/// entries, so this understates what holding them would cost.)
async fn job_of(n: usize, base: u64) -> u64 {
    const FILES: usize = 200;
    let env = Env::new();
    let (s, r) = (env.s(), env.r());
    for i in 0..n - FILES {
        let rel = format!("d{:03}/e{i:06}", i / 1000);
        mkdir(&s, &rel);
        mkdir(&r, &rel);
    }
    for i in 0..FILES {
        write(&s, &format!("files/f{i:03}"), b"x");
    }
    let job = env.job(Direction::TwoWay, true, ConflictPolicy::KeepBoth);
    let t = std::time::Instant::now();
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (FILES as u64, 0, 0, 0, 0, 0, 0), "{sum:?}");
    let first = t.elapsed();
    // Every entry (and the parent folders) was compared and recorded.
    assert!(state_records(&env) >= n, "{} records", state_records(&env));
    let t = std::time::Instant::now();
    let sum = env.run(&job).await;
    assert_eq!(counts(&sum), (0, 0, 0, 0, 0, 0, 0), "{sum:?}");
    let second = t.elapsed();
    let growth = rss_kib().1.saturating_sub(base);
    assert_eq!(
        count_files(&r.join("files")),
        FILES,
        "files on the remote side"
    );
    assert!(state_records(&env) >= n, "{} records", state_records(&env));
    println!(
        "{n} entries: first run {first:?}, no-change rerun {second:?}, peak RSS {growth} KiB above the start"
    );
    growth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_from_20k_to_100k_entries() {
    if !bucketgate_testkit::alone(module_path!(), "memory_stays_flat_from_20k_to_100k_entries") {
        return;
    }
    let (base, _) = rss_kib();
    let small = job_of(20_000, base).await;
    let big = job_of(100_000, base).await;
    // Holding the entries would make `big` about 5 × `small` (the fixed costs aside); spooled,
    // both peaks are set by the spools' in-memory cap, not by the job.
    assert!(
        big < 2 * small,
        "peak RSS grew by {small} KiB for 20,000 entries but {big} KiB for 100,000"
    );
}
