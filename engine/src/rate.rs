//! Per-session rate state that fits in a slot: fixed windows for learning (peaks),
//! GCRA for enforcing (no burst at window edges), and a tiny distinct-id sketch.
//!
//! Times are milliseconds since the slot's `first_seen`, as `u32` (49 days); a session
//! older than that saturates, which only makes its windows longer.

use crate::le::{Reader, Writer};

/// A 32-bit linear-counting sketch of distinct identifiers: bounded, mergeable by OR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DistinctSketch(pub u32);

impl DistinctSketch {
    pub fn insert(&mut self, hash: u64) {
        // Mix the high bits in: the low bits of a SipHash are fine, but be robust anyway.
        let bit = (hash ^ (hash >> 32) ^ (hash >> 17)) % 32;
        self.0 |= 1 << bit;
    }

    /// Estimated distinct values, capped at 255 (saturated sketch).
    pub fn estimate(self) -> u8 {
        let zeros = self.0.count_zeros();
        if zeros == 0 {
            return u8::MAX;
        }
        let n = -32.0 * (f64::from(zeros) / 32.0).ln();
        n.round().clamp(0.0, 255.0) as u8
    }
}

/// Generic cell rate algorithm: a burst of up to `limit` requests, then `limit` per
/// `window_ms` sustained (so no sliding window holds more than twice the limit).
/// Returns `Ok(new_tat)` to admit, or `Err(retry_after_ms)` to refuse (state unchanged).
pub fn gcra(tat: u32, now: u32, limit: u16, window_ms: u32) -> Result<u32, u32> {
    let interval = window_ms / u32::from(limit.max(1));
    let tolerance = window_ms.saturating_sub(interval);
    let tat = tat.max(now);
    if tat > now.saturating_add(tolerance) {
        return Err(tat - tolerance - now);
    }
    Ok(tat.saturating_add(interval))
}

/// One endpoint's rate and enumeration state within a session.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateEntry {
    /// `NO_ENDPOINT` when unused.
    pub endpoint: u16,
    /// Requests in the current window, and the highest count of any window so far.
    pub count: u8,
    pub peak: u8,
    /// Highest distinct-id estimate of any window so far.
    pub ids_peak: u8,
    pub window_start: u32,
    pub tat: u32,
    pub ids: DistinctSketch,
}

/// What a request did to a rate entry: new peaks are what the learner counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub new_peak: Option<u8>,
    /// The distinct-id peak rose from `.0` to `.1`.
    pub new_ids_peak: Option<(u8, u8)>,
    pub distinct: u8,
}

impl RateEntry {
    pub const SIZE: usize = 18;

    pub fn fresh(endpoint: u16, now: u32) -> RateEntry {
        RateEntry {
            endpoint,
            window_start: now,
            ..RateEntry::default()
        }
    }

    /// Counts a request at `now` in fixed windows of `window_ms`, with an optional id.
    pub fn tally(&mut self, now: u32, window_ms: u32, id: Option<u64>) -> Tally {
        if now.saturating_sub(self.window_start) >= window_ms {
            self.window_start = now;
            self.count = 0;
            self.ids = DistinctSketch::default();
        }
        self.count = self.count.saturating_add(1);
        let mut t = Tally::default();
        if self.count > self.peak {
            self.peak = self.count;
            t.new_peak = Some(self.count);
        }
        if let Some(h) = id {
            self.ids.insert(h);
            t.distinct = self.ids.estimate();
            if t.distinct > self.ids_peak {
                t.new_ids_peak = Some((self.ids_peak, t.distinct));
                self.ids_peak = t.distinct;
            }
        }
        t
    }

    pub fn encode(&self, out: &mut [u8]) {
        let mut w = Writer::new(out);
        w.put(&self.endpoint.to_le_bytes());
        w.put(&[self.count, self.peak, self.ids_peak, 0]);
        w.put(&self.window_start.to_le_bytes());
        w.put(&self.tat.to_le_bytes());
        w.put(&self.ids.0.to_le_bytes());
    }

    pub fn decode(b: &[u8]) -> RateEntry {
        let mut r = Reader::new(b);
        let endpoint = u16::from_le_bytes(r.take());
        let [count, peak, ids_peak, _] = r.take::<4>();
        RateEntry {
            endpoint,
            count,
            peak,
            ids_peak,
            window_start: u32::from_le_bytes(r.take()),
            tat: u32::from_le_bytes(r.take()),
            ids: DistinctSketch(u32::from_le_bytes(r.take())),
        }
    }
}

/// Counts events (such as 401/403 answers) in fixed windows, remembering the peak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounter {
    pub window_start: u32,
    pub count: u16,
    pub peak: u16,
}

impl WindowCounter {
    /// The count in the window containing `now` (0 if that window has passed).
    pub fn current(&self, now: u32, window_ms: u32) -> u16 {
        if now.saturating_sub(self.window_start) >= window_ms {
            0
        } else {
            self.count
        }
    }

    /// Adds one event at `now`; returns the new peak if this event set one.
    pub fn add(&mut self, now: u32, window_ms: u32) -> Option<u16> {
        if now.saturating_sub(self.window_start) >= window_ms {
            self.window_start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        (self.count > self.peak).then(|| {
            self.peak = self.count;
            self.count
        })
    }

    /// Milliseconds until the current window ends.
    pub fn remaining(&self, now: u32, window_ms: u32) -> u32 {
        self.window_start
            .saturating_add(window_ms)
            .saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gcra_admits_the_limit_then_refuses_until_it_drains() {
        let (limit, window) = (5, 10_000);
        let mut tat = 0;
        for _ in 0..5 {
            tat = gcra(tat, 1000, limit, window).unwrap();
        }
        let retry = gcra(tat, 1000, limit, window).unwrap_err();
        assert_eq!(retry, 2000, "one emission interval later");
        assert!(gcra(tat, 3000, limit, window).is_ok());
        // Spread evenly, the limit is sustainable forever.
        let mut tat = 0;
        for i in 0..100 {
            tat = gcra(tat, i * 2000, limit, window).unwrap();
        }
    }

    #[test]
    fn gcra_edge_cases_never_panic_or_overflow() {
        assert!(gcra(u32::MAX, u32::MAX, 1, 1).is_ok() || gcra(u32::MAX, u32::MAX, 1, 1).is_err());
        assert!(gcra(0, 0, 0, 0).is_ok());
        assert_eq!(gcra(0, u32::MAX, u16::MAX, u32::MAX).map(|_| ()), Ok(()));
    }

    #[test]
    fn windows_reset_and_peaks_are_reported_once() {
        let mut e = RateEntry::fresh(3, 0);
        assert_eq!(e.tally(0, 1000, None).new_peak, Some(1));
        assert_eq!(e.tally(10, 1000, None).new_peak, Some(2));
        assert_eq!(
            e.tally(1500, 1000, None).new_peak,
            None,
            "new window, count 1"
        );
        assert_eq!(e.tally(1600, 1000, None).new_peak, None);
        assert_eq!(e.tally(1700, 1000, None).new_peak, Some(3));
        for _ in 0..300 {
            e.tally(1800, 1000, None);
        }
        assert_eq!((e.count, e.peak), (255, 255), "saturates, never wraps");
    }

    #[test]
    fn distinct_ids_are_estimated() {
        let mut e = RateEntry::fresh(1, 0);
        for i in 0..3 {
            let h = (i + 1u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            e.tally(0, 60_000, Some(h));
            e.tally(0, 60_000, Some(h));
        }
        assert!((2..=4).contains(&e.ids_peak), "{}", e.ids_peak);
        let mut walk = DistinctSketch::default();
        let mut h = 1u64;
        for _ in 0..200 {
            h = h
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            walk.insert(h);
        }
        assert!(
            walk.estimate() >= 60,
            "a walk over 200 ids reads as many: {}",
            walk.estimate()
        );
        assert_eq!(DistinctSketch(u32::MAX).estimate(), 255);
        assert_eq!(DistinctSketch(0).estimate(), 0);
    }

    #[test]
    fn window_counter_counts_per_window() {
        let mut c = WindowCounter::default();
        assert_eq!(c.add(0, 100), Some(1));
        assert_eq!(c.add(50, 100), Some(2));
        assert_eq!(c.current(60, 100), 2);
        assert_eq!(c.current(100, 100), 0);
        assert_eq!(c.remaining(60, 100), 40);
        assert_eq!(c.add(150, 100), None);
    }

    proptest! {
        #[test]
        fn entries_round_trip(endpoint: u16, count: u8, peak: u8, ids_peak: u8, ws: u32, tat: u32, ids: u32) {
            let e = RateEntry { endpoint, count, peak, ids_peak, window_start: ws, tat, ids: DistinctSketch(ids) };
            let mut b = [0u8; RateEntry::SIZE];
            e.encode(&mut b);
            prop_assert_eq!(RateEntry::decode(&b), e);
        }

        #[test]
        fn gcra_never_admits_more_than_the_limit_in_a_window(limit in 1u16..50, start in 0u32..1_000_000, gaps in proptest::collection::vec(0u32..500, 1..300)) {
            let window = 10_000;
            let mut tat = 0;
            let mut now = start;
            let mut admitted: Vec<u32> = Vec::new();
            for g in gaps {
                now += g;
                if let Ok(t) = gcra(tat, now, limit, window) {
                    tat = t;
                    admitted.push(now);
                }
            }
            // A burst of `limit`, then `limit` per window: no sliding window holds more
            // than 2 x limit, and from a standing start at most `limit` come at once.
            for (i, t) in admitted.iter().enumerate() {
                let inside = admitted[i..].iter().take_while(|u| **u < t + window).count();
                prop_assert!(inside <= 2 * usize::from(limit), "{} in a window, limit {}", inside, limit);
            }
            let burst = admitted.iter().take_while(|u| **u == start).count();
            prop_assert!(burst <= usize::from(limit));
        }
    }
}
