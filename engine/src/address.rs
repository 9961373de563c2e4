//! Per-client-address state, in a second fixed table: authentication failures, the
//! sessions the address has contributed to learning, mid-flow joins, and how many
//! identified sessions it carries.
//!
//! Credential stuffing rotates session cookies, so failures are also counted by client
//! address; learning poisoning rotates them too, so each address's share of the learning
//! sessions is capped. An address's anonymous requests are limited per session it carries
//! (a NAT's address is busy because many customers use it; an attacker's carries few). Like sessions, addresses live in `capacity` fixed slots (one candidate each;
//! a colliding or idle address takes the slot over), so memory stays bounded.

use crate::le::{Reader, Writer};
use crate::rate::WindowCounter;

pub const ADDRESS_SLOT_SIZE: usize = 50;

/// How long an identified session counts as carried by its address after it started
/// here: between one and two of these.
pub const CARRIED_WINDOW_S: u32 = 300;

/// Distinct identified sessions that started from one address in the current and the
/// previous [`CARRIED_WINDOW_S`]: two 64-bit linear-counting sketches (bounded, no list
/// of sessions; the estimate saturates near 266), and the credit they earn.
///
/// The credit grows at most twofold (plus one) per window: a NAT's customers arrive over
/// minutes and its credit follows them, while an attacker who logs in throwaway accounts
/// to pass for a NAT (and widen his anonymous share) needs eight windows, 40 minutes, to
/// reach 255.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Carried {
    pub window_start: u32,
    pub current: u64,
    pub previous: u64,
    /// The credit of the previous window.
    pub credited: u16,
}

impl Carried {
    /// Rolls the windows forward to `now` (seconds).
    fn roll(&mut self, now: u32) {
        let age = now.saturating_sub(self.window_start);
        if age < CARRIED_WINDOW_S {
            return;
        }
        if age < 2 * CARRIED_WINDOW_S {
            self.credited = self.credit();
            self.previous = self.current;
        } else {
            self.credited = 0;
            self.previous = 0;
        }
        self.current = 0;
        self.window_start = now - age % CARRIED_WINDOW_S;
    }

    /// Notes identified session `session` at `now`; whether the sketch changed.
    pub fn add(&mut self, session: u64, now: u32) -> bool {
        let before = *self;
        self.roll(now);
        self.current |= 1 << (session.rotate_left(23) % 64);
        *self != before
    }

    /// Distinct sessions in the two windows as counted (no roll).
    fn counted(&self) -> u16 {
        let zeros = (self.current | self.previous).count_zeros();
        if zeros == 64 {
            return 0;
        }
        let n = -64.0 * (f64::from(zeros.max(1)) / 64.0).ln();
        n.round().clamp(1.0, f64::from(u16::MAX)) as u16
    }

    /// What the counted sessions earn in the current window (no roll).
    fn credit(&self) -> u16 {
        self.counted()
            .min(self.credited.saturating_mul(2).saturating_add(1))
    }

    /// The sessions credited at `now`: counted, at most twice the last window's plus one.
    pub fn estimate(&self, now: u32) -> u16 {
        let mut c = *self;
        c.roll(now);
        c.credit()
    }
}

/// One address's failure count, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressSlot {
    pub fingerprint: u64,
    pub failures: WindowCounter,
    /// Sessions this address started while the filter was learning.
    pub learning_sessions: u32,
    /// Sessions of this address let in mid-flow (see [`AddressSlot::let_in_midflow`]).
    pub midflow: WindowCounter,
    /// Identified sessions started from this address lately.
    pub carried: Carried,
}

impl AddressSlot {
    /// The slot index of an address fingerprint.
    pub fn index(fingerprint: u64, capacity: u32) -> u32 {
        u32::try_from(fingerprint.rotate_left(17) % u64::from(capacity.max(1))).unwrap_or(0)
    }

    /// Failures of `fingerprint` in the window containing `now` (0 if the slot is another's).
    pub fn current(&self, fingerprint: u64, now: u32, window_s: u32) -> u16 {
        if self.fingerprint == fingerprint {
            self.failures.current(now, window_s)
        } else {
            0
        }
    }

    /// Counts one failure of `fingerprint` at `now`, taking the slot over if needed.
    /// Returns the address's new peak if this failure set one (for learning).
    pub fn add(&mut self, fingerprint: u64, now: u32, window_s: u32) -> Option<u16> {
        self.take(fingerprint);
        self.failures.add(now, window_s)
    }

    /// Whether another session of `fingerprint` may join mid-flow at `now`: at most
    /// `budget` per window, so rotating session ids buys an attacker no more than that.
    /// Counts it when it may.
    pub fn let_in_midflow(
        &mut self,
        fingerprint: u64,
        now: u32,
        window_s: u32,
        budget: u32,
    ) -> bool {
        self.take(fingerprint);
        if u32::from(self.midflow.current(now, window_s)) >= budget {
            return false;
        }
        self.midflow.add(now, window_s);
        true
    }

    /// Notes that identified session `session` started from address `fingerprint` at
    /// `now`; whether the slot changed (an unchanged one needs no write).
    pub fn carry(&mut self, fingerprint: u64, session: u64, now: u32) -> bool {
        // Another address's live credit is not taken over: a colliding address (or one
        // rotated to collide) must not reset a NAT's shares. The newcomer earns none.
        if self.fingerprint != fingerprint && self.carries_anyone(now) {
            return false;
        }
        let taken = self.fingerprint != fingerprint;
        self.take(fingerprint);
        self.carried.add(session, now) || taken
    }

    /// Whether this slot's address carried identified sessions in the last two windows.
    pub fn carries_anyone(&self, now: u32) -> bool {
        self.fingerprint != 0 && self.carried.estimate(now) > 0
    }

    /// Identified sessions address `fingerprint` carries at `now` (0 if the slot is
    /// another's: see [`AddressSlot::carries_anyone`]).
    pub fn carried(&self, fingerprint: u64, now: u32) -> u16 {
        if self.fingerprint == fingerprint {
            self.carried.estimate(now)
        } else {
            0
        }
    }

    /// Counts a new learning session of `fingerprint`; returns how many it has started.
    pub fn start_session(&mut self, fingerprint: u64) -> u32 {
        self.take(fingerprint);
        self.learning_sessions = self.learning_sessions.saturating_add(1);
        self.learning_sessions
    }

    fn take(&mut self, fingerprint: u64) {
        if self.fingerprint != fingerprint {
            *self = AddressSlot {
                fingerprint,
                ..AddressSlot::default()
            };
        }
    }

    pub fn encode(&self) -> [u8; ADDRESS_SLOT_SIZE] {
        let mut b = [0u8; ADDRESS_SLOT_SIZE];
        let mut w = Writer::new(&mut b);
        w.put(&self.fingerprint.to_le_bytes());
        w.put(&self.failures.window_start.to_le_bytes());
        w.put(&self.failures.count.to_le_bytes());
        w.put(&self.failures.peak.to_le_bytes());
        w.put(&self.learning_sessions.to_le_bytes());
        w.put(&self.midflow.window_start.to_le_bytes());
        w.put(&self.midflow.count.to_le_bytes());
        w.put(&self.midflow.peak.to_le_bytes());
        w.put(&self.carried.window_start.to_le_bytes());
        w.put(&self.carried.current.to_le_bytes());
        w.put(&self.carried.previous.to_le_bytes());
        w.put(&self.carried.credited.to_le_bytes());
        b
    }

    /// Decodes a record; anything malformed reads as an empty slot.
    pub fn decode(b: &[u8]) -> AddressSlot {
        if b.len() != ADDRESS_SLOT_SIZE {
            return AddressSlot::default();
        }
        let mut r = Reader::new(b);
        AddressSlot {
            fingerprint: u64::from_le_bytes(r.take()),
            failures: WindowCounter {
                window_start: u32::from_le_bytes(r.take()),
                count: u16::from_le_bytes(r.take()),
                peak: u16::from_le_bytes(r.take()),
            },
            learning_sessions: u32::from_le_bytes(r.take()),
            midflow: WindowCounter {
                window_start: u32::from_le_bytes(r.take()),
                count: u16::from_le_bytes(r.take()),
                peak: u16::from_le_bytes(r.take()),
            },
            carried: Carried {
                window_start: u32::from_le_bytes(r.take()),
                current: u64::from_le_bytes(r.take()),
                previous: u64::from_le_bytes(r.take()),
                credited: u16::from_le_bytes(r.take()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_per_address_and_window() {
        let mut a = AddressSlot::default();
        a.add(5, 100, 60);
        a.add(5, 110, 60);
        assert_eq!(a.current(5, 120, 60), 2);
        assert_eq!(a.current(6, 120, 60), 0, "another address reads nothing");
        assert_eq!(a.current(5, 161, 60), 0, "the window passed");
        a.add(6, 120, 60);
        assert_eq!((a.fingerprint, a.current(6, 120, 60)), (6, 1));
        assert_eq!(AddressSlot::decode(&a.encode()), a);
        assert_eq!(AddressSlot::decode(&[1, 2]), AddressSlot::default());
        assert!(AddressSlot::index(u64::MAX, 7) < 7);
    }

    #[test]
    fn counts_learning_sessions_per_address() {
        let mut a = AddressSlot::default();
        a.add(5, 100, 60);
        assert_eq!((a.start_session(5), a.start_session(5)), (1, 2));
        assert_eq!(a.current(5, 100, 60), 1, "failures kept");
        assert_eq!(AddressSlot::decode(&a.encode()), a);
        assert_eq!(a.start_session(6), 1, "another address starts from zero");
        assert_eq!(a.current(6, 100, 60), 0);
    }

    #[test]
    fn midflow_joins_are_budgeted_per_address_and_window() {
        let mut a = AddressSlot::default();
        assert!(a.let_in_midflow(5, 100, 600, 2) && a.let_in_midflow(5, 101, 600, 2));
        assert!(!a.let_in_midflow(5, 102, 600, 2), "budget spent");
        assert!(a.let_in_midflow(5, 701, 600, 2), "a new window");
        assert_eq!(AddressSlot::decode(&a.encode()), a);
        assert!(!a.let_in_midflow(6, 702, 600, 0), "budget 0: never");
    }

    #[test]
    fn carried_sessions_earn_credit_that_at_most_doubles_per_window() {
        let mut a = AddressSlot::default();
        let w = CARRIED_WINDOW_S;
        assert_eq!(a.carried(5, 100), 0);
        // Session fingerprints are keyed hashes: mix the test's numbers like one.
        let session = |i: u64| {
            let z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        // 20 sessions at once (a warm-up, or a NAT's first minutes): credit 1.
        for s in 0..20 {
            a.carry(5, session(s), 100);
        }
        assert_eq!(a.carried(5, 100), 1);
        assert!(
            !a.carry(5, session(0), 101),
            "a session already counted changes nothing"
        );
        assert_eq!(AddressSlot::decode(&a.encode()), a);
        // Sessions keep arriving: 3, 7, 15, then what is counted.
        let mut credits = Vec::new();
        for k in 1..=5u32 {
            let now = 100 + k * w;
            for s in 0..10 {
                a.carry(5, session(u64::from(k) * 100 + s), now);
            }
            credits.push(a.carried(5, now));
        }
        assert_eq!(credits[..3], [3, 7, 15], "{credits:?}");
        assert!(
            credits[3..].iter().all(|c| (15..=26).contains(c)),
            "20 sessions counted: {credits:?}"
        );
        assert_eq!(AddressSlot::decode(&a.encode()), a);
        assert_eq!(
            a.carried(6, 100 + 5 * w),
            0,
            "another address carries nothing"
        );
        assert_eq!(
            a.carried(5, 100 + 8 * w),
            0,
            "idle for two windows: it ages out"
        );
        let live = 100 + 5 * w;
        assert!(
            !a.carry(6, 1, live),
            "a colliding address does not reset a live credit"
        );
        assert_eq!((a.fingerprint, a.carried(6, live)), (5, 0));
        let idle = 100 + 8 * w;
        assert!(a.carry(6, 1, idle), "an idle slot is taken over");
        assert_eq!(a.carried(6, idle), 1);
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = AddressSlot::decode(&bytes);
        }
    }
}
