//! How many parts an upload keeps in flight, bounded in time as well as in count.
//!
//! After a client's last byte the gateway still has the parts in flight and the one being
//! filled to store before it can answer (FTP's `226`, SFTP's CLOSE status), and the client
//! waits in silence meanwhile: FileZilla gives up after 20 s by default, WinSCP after 15 s, curl
//! after 60 s. With `transfers.concurrency` parts of `part_size` in flight, that tail is 40 MiB
//! at the defaults: nothing on a fast remote, but over a minute for an upload whose share of a
//! busy link is under 0.7 MB/s (a thousand uploads on 1 GB/s), and the client then reports a
//! failure for an upload that completes after it gave up.
//!
//! So a new part is sent only while the bytes in flight, with it, are what this upload's remote
//! has been storing in `transfers.finish_within`: measured over the upload's last parts as
//! their bytes over the time at least one of them was in flight (the union of their
//! intervals), so that parts slowed by sharing a link count against each other, and parts
//! slowed by latency alone (which more parts in flight do hide) do not. Until a first part is
//! stored the count alone limits; one part may always be in flight.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The parts the rate is measured over.
const SAMPLES: usize = 8;

/// One part's upload: when it was sent, when it was stored, its bytes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Sample {
    pub start: Instant,
    pub end: Instant,
    pub bytes: u64,
}

#[derive(Debug)]
pub(super) struct Pace {
    within: Duration,
    in_flight: u64,
    recent: VecDeque<Sample>,
}

impl Pace {
    pub(super) fn new(within: Duration) -> Pace {
        Pace {
            within,
            in_flight: 0,
            recent: VecDeque::with_capacity(SAMPLES),
        }
    }

    /// A part of `bytes` was sent.
    pub(super) fn sent(&mut self, bytes: u64) {
        self.in_flight += bytes;
    }

    /// A part sent with [`Pace::sent`] ended (stored or failed).
    pub(super) fn ended(&mut self, s: Sample) {
        self.in_flight = self.in_flight.saturating_sub(s.bytes);
        if self.recent.len() == SAMPLES {
            self.recent.pop_front();
        }
        self.recent.push_back(s);
    }

    /// Bytes per second this upload's remote stored lately; `None` before a part is stored.
    pub(super) fn rate(&self) -> Option<f64> {
        let mut spans: Vec<(Instant, Instant)> =
            self.recent.iter().map(|s| (s.start, s.end)).collect();
        spans.sort();
        let mut busy = Duration::ZERO;
        let mut cur: Option<(Instant, Instant)> = None;
        for (a, b) in spans {
            cur = match cur {
                Some((ca, cb)) if a <= cb => Some((ca, cb.max(b))),
                Some((ca, cb)) => {
                    busy += cb - ca;
                    Some((a, b))
                }
                None => Some((a, b)),
            };
        }
        if let Some((a, b)) = cur {
            busy += b - a;
        }
        let bytes: u64 = self.recent.iter().map(|s| s.bytes).sum();
        // Under a millisecond is too short to measure, and means a fast remote.
        (bytes > 0 && busy >= Duration::from_millis(1)).then(|| bytes as f64 / busy.as_secs_f64())
    }

    /// Whether a part of `bytes` may be sent now, beside those in flight.
    pub(super) fn admits(&self, bytes: u64) -> bool {
        if self.in_flight == 0 {
            return true;
        }
        match self.rate() {
            None => true,
            Some(r) => (self.in_flight + bytes) as f64 <= r * self.within.as_secs_f64(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn at(t0: Instant, a: f64, b: f64, bytes: u64) -> Sample {
        Sample {
            start: t0 + Duration::from_secs_f64(a),
            end: t0 + Duration::from_secs_f64(b),
            bytes,
        }
    }

    #[test]
    fn parts_sharing_a_link_count_against_each_other() {
        // 4 parts of 8 MB sent together on a 2 MB/s link: each takes 16 s.
        let t0 = Instant::now();
        let mut p = Pace::new(Duration::from_secs(10));
        for _ in 0..4 {
            p.sent(8 * MB);
        }
        for _ in 0..4 {
            p.ended(at(t0, 0.0, 16.0, 8 * MB));
        }
        let r = p.rate().unwrap();
        assert!((r - 2.0 * MB as f64).abs() < 1.0, "{r}");
        // 20 MB in 10 s: two parts, not three.
        assert!(p.admits(8 * MB));
        p.sent(8 * MB);
        assert!(p.admits(8 * MB));
        p.sent(8 * MB);
        assert!(!p.admits(8 * MB));
    }

    #[test]
    fn parts_slowed_by_latency_alone_keep_their_count() {
        // 4 parts of 8 MB in flight at once, each 3 s (latency, not a shared link): 10.7 MB/s.
        let t0 = Instant::now();
        let mut p = Pace::new(Duration::from_secs(10));
        for i in 0..8 {
            let s = (i / 4) as f64 * 3.0;
            p.sent(8 * MB);
            p.ended(at(t0, s, s + 3.0, 8 * MB));
        }
        for _ in 0..4 {
            assert!(p.admits(8 * MB));
            p.sent(8 * MB);
        }
    }

    #[test]
    fn one_part_may_always_be_in_flight_and_unmeasured_uploads_are_not_held() {
        let t0 = Instant::now();
        let mut p = Pace::new(Duration::from_secs(10));
        assert!(p.admits(8 * MB));
        p.sent(8 * MB);
        assert!(p.admits(8 * MB), "no rate measured yet");
        p.ended(at(t0, 0.0, 100.0, 8 * MB));
        // 80 kB/s: not even one part fits in 10 s, but one may go.
        assert!(p.admits(8 * MB));
        p.sent(8 * MB);
        assert!(!p.admits(8 * MB));
    }
}
