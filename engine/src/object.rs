//! The objects a session acted on: which steps succeeded on which identifier, so a rule
//! bound to an object (`confirm` of order B needs a payment *of order B*) can be checked.
//!
//! A session remembers its [`OBJECTS`] most recently completed objects. When one with
//! completed steps is pushed out, a 32-bit sketch of forgotten keys remembers that it
//! was: an object the table no longer holds is then unknown, not "never touched", and
//! bound rules fall back to the session-wide steps for it. An object never completed
//! stays known as such (a collision in the sketch only makes it unknown: the lenient
//! side), so learning still counts the sessions that act on fresh objects, and an
//! attacker who pushes out entries does not unlock other objects.

use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::le::{Reader, Writer};

/// Objects a slot remembers.
pub const OBJECTS: usize = 4;

/// The key of an object: its identifier hash folded to 32 bits, never 0 (0 marks a free
/// entry). A collision between two objects only ever makes a rule more lenient.
pub fn key_of(id_hash: u64) -> u32 {
    let folded = (id_hash >> 32) as u32 ^ id_hash as u32;
    folded.max(1)
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectEntry {
    pub key: u32,
    /// Steps that succeeded on this object.
    pub completed: EndpointSet,
}

/// Most recently completed first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    pub entries: [ObjectEntry; OBJECTS],
    /// Bit `key % 32` of every entry pushed out with completed steps.
    pub forgotten: u32,
}

fn sketch_bit(key: u32) -> u32 {
    1 << (key % 32)
}

impl Objects {
    pub const SIZE: usize = 4 + OBJECTS * 20;

    /// The steps completed on `id_hash`'s object: empty for an object never completed,
    /// `None` when the table may have forgotten it.
    pub fn completed(&self, id_hash: u64) -> Option<EndpointSet> {
        let key = key_of(id_hash);
        match self.entries.iter().find(|e| e.key == key) {
            Some(e) => Some(e.completed),
            None if self.forgotten & sketch_bit(key) != 0 => None,
            None => Some(EndpointSet::EMPTY),
        }
    }

    /// Records that `endpoint` succeeded on `id_hash`'s object.
    pub fn complete(&mut self, id_hash: u64, endpoint: EndpointId) {
        self.complete_key(key_of(id_hash), endpoint);
    }

    fn complete_key(&mut self, key: u32, endpoint: EndpointId) {
        let at = self
            .entries
            .iter()
            .position(|e| e.key == key)
            .unwrap_or(OBJECTS - 1);
        let mut entry = match self.entries.get(at) {
            Some(e) if e.key == key => *e,
            Some(pushed_out) => {
                if !pushed_out.completed.is_empty() {
                    self.forgotten |= sketch_bit(pushed_out.key);
                }
                ObjectEntry {
                    key,
                    completed: EndpointSet::EMPTY,
                }
            }
            None => return,
        };
        entry.completed.insert(endpoint);
        // Move to the front: the least recently completed object is the one to forget.
        if let Some(head) = self.entries.get_mut(..=at) {
            head.rotate_right(1);
            if let Some(first) = head.first_mut() {
                *first = entry;
            }
        }
    }

    /// Takes in another table's objects (an identity hand-over): steps of objects both
    /// know join; the other's objects fill this table from its end, and whatever either
    /// forgot stays forgotten.
    pub fn absorb(&mut self, other: &Objects) {
        self.forgotten |= other.forgotten;
        for theirs in other.entries.iter().rev().filter(|e| e.key != 0) {
            for step in theirs.completed.iter() {
                self.complete_key(theirs.key, step);
            }
        }
    }

    /// Rewrites every completed step through `map` (see [`EndpointSet::remap`]).
    pub fn remap(&mut self, map: impl Fn(EndpointId) -> Option<EndpointId> + Copy) {
        for e in &mut self.entries {
            e.completed = e.completed.remap(map);
        }
    }

    pub fn encode(&self, w: &mut Writer<'_>) {
        w.put(&self.forgotten.to_le_bytes());
        for e in &self.entries {
            w.put(&e.key.to_le_bytes());
            w.put(&e.completed.0.to_le_bytes());
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Objects {
        let mut out = Objects {
            forgotten: u32::from_le_bytes(r.take()),
            ..Objects::default()
        };
        for e in &mut out.entries {
            e.key = u32::from_le_bytes(r.take());
            e.completed = EndpointSet(u128::from_le_bytes(r.take()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(o: &Objects, id: u64) -> Option<Vec<EndpointId>> {
        o.completed(id).map(|s| s.iter().collect())
    }

    #[test]
    fn steps_are_kept_per_object() {
        let mut o = Objects::default();
        assert_eq!(steps(&o, 10), Some(vec![]));
        o.complete(10, 3);
        o.complete(11, 3);
        o.complete(10, 4);
        assert_eq!(steps(&o, 10), Some(vec![3, 4]));
        assert_eq!(steps(&o, 11), Some(vec![3]));
        assert_eq!(steps(&o, 12), Some(vec![]));
        assert_eq!(o.entries[0].key, key_of(10), "most recent first");
    }

    #[test]
    fn a_forgotten_object_is_unknown_not_untouched() {
        let mut o = Objects::default();
        for id in 10..10 + OBJECTS as u64 {
            o.complete(id << 32, 1);
        }
        assert_eq!(o.forgotten, 0);
        o.complete(10 << 32, 2); // refreshes the oldest
        o.complete(99 << 32, 1);
        assert_eq!(steps(&o, 10 << 32), Some(vec![1, 2]), "recently used stays");
        assert_eq!(steps(&o, 11 << 32), None, "least recently used went");
        assert_eq!(
            steps(&o, 77 << 32),
            Some(vec![]),
            "never completed, still known"
        );
    }

    #[test]
    fn a_handed_over_table_keeps_both_sides_objects() {
        let mut old = Objects::default();
        old.complete(1, 3);
        old.complete(2, 3);
        let mut new = Objects::default();
        new.complete(2, 4);
        new.absorb(&old);
        assert_eq!(steps(&new, 1), Some(vec![3]));
        assert_eq!(steps(&new, 2), Some(vec![3, 4]));
    }

    #[test]
    fn keys_are_never_zero() {
        assert_eq!(key_of(0), 1);
        assert_eq!(key_of(0x0000_0001_0000_0001), 1);
        assert_ne!(key_of(5), key_of(6));
    }
}
