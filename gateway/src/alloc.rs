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
//! tries to wake the parked workers so that each parks again and sees the request (best effort:
//! see [`request_flush`]). Under load a worker flushes at most once per period: its cached
//! blocks go back to their arena, as that many frees would, and its next allocations refill
//! the cache.

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

/// Best effort. Tokio cannot run a task on a chosen worker, and one spawned task wakes one
/// sleeping worker at most (the one that parked last, so the same one each time: with empty
/// tasks, 2 of 4 workers flushed). A worker that finds work wakes another before it runs it, so
/// tasks that take a moment (1 ms asleep: 2 ms of one worker's time per request and worker)
/// wake them in a chain: 16 of 16 workers flushed on an idle 2-core machine, 8 of 16 once
/// beside the test suite. A worker not reached keeps its cache until it next parks after a
/// request: after work, or when a later request's chain reaches it.
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
    use std::sync::{mpsc, Arc, Barrier};

    /// A worker that parks after a request flushes once, whatever it was doing, and not again
    /// until the next request. Every worker is made to run and then park: one task each, from
    /// outside the runtime (its shared queue), waiting for the others, so that no worker can
    /// run two.
    #[test]
    fn each_worker_flushes_once_per_request_when_it_parks() {
        const WORKERS: usize = 8;
        let (done, finished) = mpsc::channel();
        // The body in its own thread: a hang fails the test instead of stopping the suite.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(WORKERS)
                .on_thread_park(on_park)
                .enable_all()
                .build()
                .unwrap();
            let run_everywhere = || {
                let all = Arc::new(Barrier::new(WORKERS));
                let tasks: Vec<_> = (0..WORKERS)
                    .map(|_| {
                        let all = all.clone();
                        rt.spawn(async move {
                            all.wait();
                        })
                    })
                    .collect();
                for t in tasks {
                    rt.block_on(t).unwrap();
                }
            };
            // Let every worker start and park once.
            run_everywhere();
            let mut seen = Vec::new();
            for round in 0..5 {
                let before = FLUSHES.load(Ordering::Relaxed);
                // Work without a request: nobody flushes.
                run_everywhere();
                std::thread::sleep(Duration::from_millis(200));
                let idle = FLUSHES.load(Ordering::Relaxed) - before;
                REQUESTS.fetch_add(1, Ordering::Relaxed);
                run_everywhere();
                // Each worker parks once its task is done; wait for all (bounded below).
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while FLUSHES.load(Ordering::Relaxed) - before < WORKERS as u64
                    && std::time::Instant::now() < deadline
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                // More parks (a second round of work), no second flush for the same request.
                run_everywhere();
                std::thread::sleep(Duration::from_millis(200));
                seen.push((round, idle, FLUSHES.load(Ordering::Relaxed) - before));
            }
            done.send(seen).unwrap();
        });
        let seen = finished
            .recv_timeout(Duration::from_secs(300))
            .expect("the workers never all ran: a hang");
        for (round, idle, flushed) in seen {
            assert_eq!(idle, 0, "round {round}: flushed without a request");
            assert_eq!(
                flushed, WORKERS as u64,
                "round {round}: {flushed} flushes for {WORKERS} workers and one request"
            );
        }
    }
}
