//! The allocator's thread caches, emptied when a runtime worker goes idle.
//!
//! jemalloc gives each thread a cache of freed blocks (its tcache), trimmed only as that thread
//! allocates again. A tokio worker that parks when a load ends keeps its cache as it was at
//! the last request, and every cached block keeps its whole slab (a run of pages shared with
//! blocks still in use elsewhere) resident: 60 s after 1,024 SFTP sessions had ended, the
//! gateway's anonymous memory was 14.1 MiB, and 10.2 MiB once every thread's cache was
//! flushed by hand (bench/README.md, "Thread caches after the load").
//!
//! So every [`FLUSH_EVERY`] a timer asks each worker to flush its own cache the next time it
//! parks (the only place a worker runs code of ours between tasks): [`on_park`] is the
//! runtime's `on_thread_park` hook, and [`flush_idle_workers`] the timer's task, which also
//! wakes the parked workers so that each parks again and sees the request. Under load a
//! worker flushes at most once per period: its cached blocks go back to their arena, as that
//! many frees would, and its next allocations refill the cache.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How often workers are asked to flush: long beside a request, short beside the 60 s after
/// a load in which memory should fall back.
pub const FLUSH_EVERY: Duration = Duration::from_secs(5);

/// Bumped by each request to flush; a worker flushes when it parks and sees a new value.
static REQUESTS: AtomicU64 = AtomicU64::new(0);

/// Flushes done, counted for the tests.
static FLUSHES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The request this thread flushed for last.
    static SEEN: Cell<u64> = const { Cell::new(0) };
}

/// The runtime's `on_thread_park` hook: flushes this thread's cache when a flush was asked for
/// since its last one. One atomic load otherwise.
pub fn on_park() {
    let want = REQUESTS.load(Ordering::Relaxed);
    if SEEN.with(|s| s.replace(want)) != want {
        flush_this_thread();
    }
}

/// Returns this thread's cached blocks to their arenas.
fn flush_this_thread() {
    // SAFETY: `thread.tcache.flush` reads and writes nothing: every pointer is null and the
    // length 0, as jemalloc's mallctl documents for it. The name is NUL-terminated.
    let rc = unsafe {
        tikv_jemalloc_sys::mallctl(
            c"thread.tcache.flush".as_ptr(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            0,
        )
    };
    // Non-zero only where this thread has no cache (caches turned off by `MALLOC_CONF`).
    if rc == 0 {
        FLUSHES.fetch_add(1, Ordering::Relaxed);
    }
}

/// Asks every worker of the current runtime to flush at its next park, and wakes the idle ones
/// so that they park again. Runs until the runtime stops.
pub async fn flush_idle_workers() {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        request_flush();
    }
}

/// Tokio cannot run a task on a chosen worker, and one spawned task wakes one sleeping worker
/// at most (the one that parked last, so the same one each time: with empty tasks, 2 of 4
/// workers flushed). A worker that finds work wakes another before it runs it, so tasks that
/// take a moment (1 ms asleep: 2 ms of one worker's time per request and worker) wake them
/// in a chain until each has had one (16 of 16 workers in the test, on 2 cores).
fn request_flush() {
    REQUESTS.fetch_add(1, Ordering::Relaxed);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    for _ in 0..2 * workers {
        tokio::spawn(async { std::thread::sleep(Duration::from_millis(1)) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every worker flushes after a request, including one that was parked with nothing to do,
    /// and none flushes twice for one request.
    #[test]
    fn every_worker_flushes_once_per_request() {
        const WORKERS: usize = 16;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .on_thread_park(on_park)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Let every worker start and park; whatever first parks flushed count here.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for round in 0..10 {
                let before = FLUSHES.load(Ordering::Relaxed);
                tokio::spawn(async { request_flush() }).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                let flushed = FLUSHES.load(Ordering::Relaxed) - before;
                // Other tests of this binary run beside this one but never flush (they install
                // no hook), so all that moved is this runtime's four workers.
                assert_eq!(
                    flushed, WORKERS as u64,
                    "round {round}: {flushed} of {WORKERS} workers flushed"
                );
            }
        });
    }
}
