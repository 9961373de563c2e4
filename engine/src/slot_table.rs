//! Where a session lives in the fixed slot table, and whom it may displace.
//!
//! Shared data has no delete and no expiry, so sessions live in `capacity` slots and
//! memory is `capacity × slot size` whatever the traffic. Each session has two candidate
//! slots (two-choice hashing), which keeps live sessions from being displaced by a
//! single colliding newcomer.

use crate::slot::Slot;

/// The two candidate slot indices of a fingerprint in a table of `capacity` slots.
pub fn candidates(fingerprint: u64, capacity: u32) -> [u32; 2] {
    let cap = u64::from(capacity.max(1));
    let a = fingerprint % cap;
    let b = (fingerprint.rotate_left(32) ^ 0x9e37_79b9_7f4a_7c15) % cap;
    // `cap` fits in u32, so both remainders do.
    [a as u32, b as u32]
}

/// What to do with a candidate slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// The slot is this session's own.
    Own,
    /// The slot is free (empty, unreadable or idle past the timeout).
    Free,
    /// Every candidate is live and owned by someone else: displace the least recent.
    Evict,
}

/// Picks one of the candidates for `fingerprint`, given what each holds (`None`: nothing).
/// Returns the index into `held` and how it was chosen.
pub fn choose(
    fingerprint: u64,
    held: [Option<&Slot>; 2],
    now: u32,
    idle: u32,
) -> (usize, Placement) {
    let [a, b] = held;
    for (i, slot) in [(0, a), (1, b)] {
        if slot.is_some_and(|s| s.fingerprint == fingerprint) {
            return (i, Placement::Own);
        }
    }
    for (i, slot) in [(0, a), (1, b)] {
        if slot.is_none_or(|s| s.is_stale(now, idle)) {
            return (i, Placement::Free);
        }
    }
    // Least recently seen; within the same second, the older session: a session that
    // started this second is most likely a client in the middle of its flow.
    let age = |s: Option<&Slot>| s.map_or((0, 0), |s| (s.last_seen, s.first_seen));
    let i = usize::from(age(b) < age(a));
    (i, Placement::Evict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn own_then_free_then_least_recent() {
        let mine = Slot::new(5, 100, 0);
        let other = Slot::new(6, 100, 0);
        let mut old = Slot::new(7, 50, 0);
        old.last_seen = 90;
        assert_eq!(
            choose(5, [Some(&other), Some(&mine)], 100, 60),
            (1, Placement::Own)
        );
        assert_eq!(
            choose(5, [Some(&other), None], 100, 60),
            (1, Placement::Free)
        );
        assert_eq!(
            choose(5, [Some(&old), Some(&other)], 200, 60),
            (0, Placement::Free)
        );
        assert_eq!(
            choose(5, [Some(&other), Some(&old)], 100, 60),
            (1, Placement::Evict)
        );
        let mut veteran = Slot::new(8, 40, 0);
        veteran.last_seen = 100;
        assert_eq!(
            choose(5, [Some(&other), Some(&veteran)], 100, 60),
            (1, Placement::Evict),
            "seen in the same second: the session that started this second stays"
        );
    }

    proptest! {
        #[test]
        fn candidates_stay_in_range(fp: u64, cap in 0u32..=u32::MAX) {
            for c in candidates(fp, cap) {
                prop_assert!(c < cap.max(1));
            }
        }
    }
}
