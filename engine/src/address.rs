//! Per-client-address state, in a second fixed table: authentication failures, and the
//! sessions the address has contributed to learning.
//!
//! Credential stuffing rotates session cookies, so failures are also counted by client
//! address; learning poisoning rotates them too, so each address's share of the learning
//! sessions is capped. Like sessions, addresses live in `capacity` fixed slots (one candidate each;
//! a colliding or idle address takes the slot over), so memory stays bounded.

use crate::le::{Reader, Writer};
use crate::rate::WindowCounter;

pub const ADDRESS_SLOT_SIZE: usize = 28;

/// One address's failure count, in seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressSlot {
    pub fingerprint: u64,
    pub failures: WindowCounter,
    /// Sessions this address started while the filter was learning.
    pub learning_sessions: u32,
    /// Sessions of this address let in mid-flow (see [`AddressSlot::let_in_midflow`]).
    pub midflow: WindowCounter,
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

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = AddressSlot::decode(&bytes);
        }
    }
}
