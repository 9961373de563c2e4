//! Support: which distinct sessions and client addresses back a learned fact.
//!
//! One attacker inside the learning window must not be able to teach the model that an
//! endpoint exists, that a transition is normal or that a step may be skipped. So each
//! such fact carries two 32-bit linear-counting sketches (one bit per session, one per
//! client address); they merge by OR across workers and hosts, and compile checks the
//! estimates against `learning.min_sessions_per_fact` and `learning.min_addresses`.
//! Sketch collisions only ever under-count, so they err towards keeping a rule.

use crate::rate::DistinctSketch;
use serde::{Deserialize, Serialize};

/// Largest support a sketch can tell apart reliably; thresholds are validated against it.
pub const MAX_SUPPORT: u32 = 32;

/// The sketch bit of a session or address fingerprint (keyed SipHash: uniform bits).
pub fn bit_of(fingerprint: u64) -> u8 {
    (fingerprint >> 59) as u8
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Support {
    pub sessions: u32,
    pub addresses: u32,
}

impl Support {
    /// Counts one session (`session_bit`) from one address (`address_bit`), both `< 32`.
    pub fn add(&mut self, session_bit: u8, address_bit: u8) {
        self.sessions |= 1u32 << (session_bit % 32);
        self.addresses |= 1u32 << (address_bit % 32);
    }

    pub fn merge(&mut self, other: Support) {
        self.sessions |= other.sessions;
        self.addresses |= other.addresses;
    }

    pub fn sessions(self) -> u32 {
        estimate(self.sessions)
    }

    pub fn addresses(self) -> u32 {
        estimate(self.addresses)
    }

    /// Whether at least `sessions` distinct sessions from `addresses` distinct addresses
    /// back the fact.
    pub fn meets(self, sessions: u32, addresses: u32) -> bool {
        self.sessions() >= sessions && self.addresses() >= addresses
    }
}

/// Linear counting, but never below the bits set (small counts are exact unless bits
/// collide).
fn estimate(bits: u32) -> u32 {
    u32::from(DistinctSketch(bits).estimate()).max(bits.count_ones())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn counts_distinct_sessions_and_addresses() {
        let mut s = Support::default();
        assert!(!s.meets(1, 1), "no support at all");
        s.add(1, 7);
        s.add(1, 7);
        assert_eq!(
            (s.sessions(), s.addresses()),
            (1, 1),
            "one session counts once"
        );
        s.add(2, 7);
        s.add(3, 7);
        assert_eq!((s.sessions(), s.addresses()), (3, 1));
        assert!(
            s.meets(3, 1) && !s.meets(3, 2),
            "one address stays one address"
        );
        let mut t = Support::default();
        t.add(9, 8);
        s.merge(t);
        assert!(s.meets(4, 2));
    }

    proptest! {
        #[test]
        fn estimates_grow_with_distinct_bits(bits in proptest::collection::btree_set(0u8..32, 0..32)) {
            let mut s = Support::default();
            for b in &bits {
                s.add(*b, *b);
            }
            prop_assert!(s.sessions() >= bits.len() as u32);
            prop_assert_eq!(s.sessions(), s.addresses());
        }
    }
}
