//! Memory while listing a huge folder. The test runs in a process of its own
//! (`bucketgate_testkit::alone`): it measures the process's RSS, which other tests running
//! beside it in one process (S3 servers, uploads) would disturb.

use bucketgate_storage::{Permissions, VPath};
use bucketgate_tests::fixtures::{area, user_view, Fixture};
use futures::StreamExt;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().map(|n| n.parse().unwrap()))
        .unwrap()
}

/// 100,000 entries list through the tree one bounded page at a time, and memory stays flat:
/// the listing never holds the folder whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_of_100_000_entries_lists_with_flat_memory() {
    if !bucketgate_testkit::alone(
        module_path!(),
        "a_folder_of_100_000_entries_lists_with_flat_memory",
    ) {
        return;
    }
    let f = Fixture::local().await;
    let disk = bucketgate_tests::fixtures::local_root(&f).join("big");
    std::fs::create_dir(&disk).unwrap();
    for i in 0..100_000 {
        std::fs::File::create(disk.join(format!("file-with-a-longish-name-{i:06}.dat"))).unwrap();
    }
    let fs = user_view(area(&f.backend, &f.prefix), vec![], "/", Permissions::all());
    let before = rss_kib();
    let mut pages = fs.list(&VPath::parse("/big").unwrap()).await.unwrap();
    let (mut count, mut largest, mut peak) = (0usize, 0usize, before);
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        largest = largest.max(page.len());
        count += page.len();
        peak = peak.max(rss_kib());
    }
    assert_eq!(count, 100_000);
    assert!(largest <= 1000, "a page held {largest} entries");
    // 100,000 entries held at once take about 15 MiB (name, times, etag each).
    let grew = peak.saturating_sub(before);
    eprintln!("listing 100,000 entries grew RSS by {grew} KiB");
    assert!(grew < 8 * 1024, "memory grew by {grew} KiB while listing");
}
