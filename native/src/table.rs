//! The native host's shared state: a bounded in-process key-value table with Envoy
//! shared data's compare-and-swap semantics, behind [`store::Host`].
//!
//! Every key carries a version token; a write with a stale token loses (`Ok(false)`), a
//! write with token 0 is unconditional. Session and address slots (`fg/s/<n>`,
//! `fg/a/<n>`, `n` below `session.capacity`) live in two arrays of that many entries, each
//! behind its own lock and found by index: the request path reads and writes them without
//! hashing a key or taking a lock another slot shares. Every other key (the learning
//! registry and counters, the model) is in a small sharded map that refuses a new key
//! beyond its `max_keys`. So the table's memory is bounded whatever the traffic.

use flowguard_engine::keys::{Key, SlotKind};
use flowguard_engine::store::Host;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::Mutex;

/// FNV-1a with a final mix: the table's keys are the engine's own short keys
/// (`fg/s/<n>`, `fg/a/<n>`, a few more), never chosen by a client, so they need no
/// keyed hash; SipHash was a tenth of the module's cost per request.
#[derive(Clone, Copy)]
pub struct KeyHasher(u64);

impl Default for KeyHasher {
    fn default() -> Self {
        KeyHasher(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        let h = self.0 ^ (self.0 >> 29);
        let h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h ^ (h >> 32)
    }
}

type Keys = BuildHasherDefault<KeyHasher>;

const SHARDS: usize = 16;

/// Why the table did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableError {
    /// A shard's lock was poisoned (a panic while it was held).
    Poisoned,
    /// A new key beyond the bound.
    Full,
    /// Every compare-and-swap attempt of an update lost its race.
    Contended,
}

#[derive(Default)]
struct Shard {
    values: HashMap<String, (Vec<u8>, u32), Keys>,
    next_cas: u32,
}

/// One slot: its bytes and token (0: absent).
#[derive(Default)]
struct Entry {
    value: Vec<u8>,
    cas: u32,
}

pub struct Table {
    shards: [Mutex<Shard>; SHARDS],
    hasher: Keys,
    /// New keys each shard may still take.
    max_per_shard: usize,
    /// Session slots, then address slots, by index.
    sessions: Box<[Mutex<Entry>]>,
    addresses: Box<[Mutex<Entry>]>,
}

impl Table {
    /// A table of at most about `max_keys` keys (rounded up to a multiple of the shards),
    /// slots included.
    pub fn new(max_keys: usize) -> Table {
        Table::with_slots(max_keys, 0)
    }

    /// The table for `capacity` session slots: as many address slots, and room for the
    /// learning registry, counters and model keys.
    pub fn for_capacity(capacity: u32) -> Table {
        Table::with_slots(64 * SHARDS, usize::try_from(capacity).unwrap_or(usize::MAX))
    }

    fn with_slots(max_keys: usize, slots: usize) -> Table {
        let entries = || (0..slots).map(|_| Mutex::new(Entry::default())).collect();
        Table {
            shards: std::array::from_fn(|_| Mutex::new(Shard::default())),
            hasher: Keys::default(),
            max_per_shard: max_keys.div_ceil(SHARDS).max(1),
            sessions: entries(),
            addresses: entries(),
        }
    }

    /// The entry of slot `(kind, index)`, locked, if the arrays hold it (else the slot's
    /// key lives in the map like any other).
    fn entry(&self, (kind, index): (SlotKind, u32)) -> Option<std::sync::MutexGuard<'_, Entry>> {
        let slots = match kind {
            SlotKind::Session => &self.sessions,
            SlotKind::Address => &self.addresses,
        };
        let entry = slots.get(usize::try_from(index).ok()?)?;
        // A lock poisoned by a panic is taken over: an entry is plain bytes, written whole.
        Some(
            entry
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// [`Table::read`] of a slot's key.
    pub fn read_key<R>(
        &self,
        key: Key,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, TableError> {
        match self.entry(key.slot()) {
            Some(entry) if entry.cas == 0 => Ok(f(None, 0)),
            Some(entry) => Ok(f(Some(&entry.value), entry.cas)),
            None => self.read_map(key.as_str(), f),
        }
    }

    /// [`Table::set`] of a slot's key.
    pub fn set_key(&self, key: Key, value: &[u8], cas: u32) -> Result<bool, TableError> {
        let Some(mut entry) = self.entry(key.slot()) else {
            return self.set_map(key.as_str(), value, cas);
        };
        if cas != 0 && cas != entry.cas {
            return Ok(false); // a stale token, or the key it named is gone
        }
        entry.value.clear();
        entry.value.extend_from_slice(value);
        entry.cas = entry.cas.wrapping_add(1).max(1);
        Ok(true)
    }

    /// The shard of `key`, locked. A lock poisoned by a panic is taken over: the
    /// values are plain bytes, each written whole.
    fn shard(&self, key: &str) -> Result<std::sync::MutexGuard<'_, Shard>, TableError> {
        let index = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        Ok(self
            .shards
            .get(index)
            .ok_or(TableError::Poisoned)?
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub fn get(&self, key: &str) -> Result<(Option<Vec<u8>>, u32), TableError> {
        self.read(key, |v, cas| (v.map(<[u8]>::to_vec), cas))
    }

    /// Lends `key`'s bytes and token to `f` under its lock (keep `f` short).
    pub fn read<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, TableError> {
        match slot_of(key) {
            Some(slot) => self.read_key(slot, f),
            None => self.read_map(key, f),
        }
    }

    fn read_map<R>(
        &self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, TableError> {
        let shard = self.shard(key)?;
        Ok(match shard.values.get(key) {
            Some((v, cas)) => f(Some(v), *cas),
            None => f(None, 0),
        })
    }

    /// Writes `value` if the key's token is still `cas` (0: unconditionally).
    pub fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<bool, TableError> {
        match slot_of(key) {
            Some(slot) => self.set_key(slot, value, cas),
            None => self.set_map(key, value, cas),
        }
    }

    fn set_map(&self, key: &str, value: &[u8], cas: u32) -> Result<bool, TableError> {
        let mut shard = self.shard(key)?;
        let max = self.max_per_shard;
        let shard = &mut *shard;
        shard.next_cas = shard.next_cas.wrapping_add(1).max(1);
        let token = shard.next_cas;
        let full = shard.values.len() >= max;
        match shard.values.get_mut(key) {
            Some((_, current)) if cas != 0 && cas != *current => Ok(false),
            Some((old, current)) => {
                old.clear();
                old.extend_from_slice(value);
                *current = token;
                Ok(true)
            }
            None if cas != 0 => Ok(false), // the key the token named is gone
            None if full => Err(TableError::Full),
            None => {
                shard.values.insert(key.to_owned(), (value.to_vec(), token));
                Ok(true)
            }
        }
    }

    /// How many keys hold a value.
    pub fn len(&self) -> usize {
        let slots = self
            .sessions
            .iter()
            .chain(self.addresses.iter())
            .filter(|e| e.lock().is_ok_and(|e| e.cas != 0))
            .count();
        let others: usize = self
            .shards
            .iter()
            .filter_map(|s| s.lock().ok().map(|s| s.values.len()))
            .sum();
        slots + others
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The slot key `key` spells, if it is one (the same slot, whichever way it is named).
fn slot_of(key: &str) -> Option<Key> {
    let (kind, index) = SlotKind::parse(key)?;
    Some(match kind {
        SlotKind::Session => flowguard_engine::keys::slot_key(index),
        SlotKind::Address => flowguard_engine::keys::address_key(index),
    })
}

/// The table as one request's [`Host`]: the client address comes from `address`, asked
/// only when the engine needs it.
pub struct TableHost<'a, F: FnMut() -> Option<Vec<u8>>> {
    pub table: &'a Table,
    pub address: F,
}

impl<F: FnMut() -> Option<Vec<u8>>> Host for TableHost<'_, F> {
    type Error = TableError;

    fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), TableError> {
        self.table.get(key)
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, TableError> {
        self.table.set(key, value, cas)
    }

    fn read<R>(
        &mut self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, TableError> {
        self.table.read(key, f)
    }

    fn read_key<R>(
        &mut self,
        key: Key,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, TableError> {
        self.table.read_key(key, f)
    }

    fn set_key(&mut self, key: Key, value: &[u8], cas: u32) -> Result<bool, TableError> {
        self.table.set_key(key, value, cas)
    }

    fn client_address(&mut self) -> Result<Option<Vec<u8>>, TableError> {
        Ok((self.address)())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowguard_engine::store::{self, StoreError};

    #[test]
    fn a_stale_token_loses() {
        let t = Table::new(100);
        assert_eq!(t.set("k", b"a", 0), Ok(true));
        let (_, cas) = t.get("k").unwrap();
        assert_eq!(t.set("k", b"b", cas), Ok(true));
        assert_eq!(t.set("k", b"c", cas), Ok(false), "token used");
        assert_eq!(t.get("k").unwrap().0.as_deref(), Some(&b"b"[..]));
        assert_eq!(t.set("absent", b"x", 7), Ok(false));
        assert_eq!(t.get("absent").unwrap(), (None, 0));
    }

    #[test]
    fn a_slot_is_one_entry_by_index_or_by_name() {
        use flowguard_engine::keys::{address_key, slot_key};
        let t = Table::for_capacity(8);
        assert_eq!(
            t.read_key(slot_key(3), |v, cas| (v.is_none(), cas)),
            Ok((true, 0))
        );
        assert_eq!(t.set_key(slot_key(3), b"one", 0), Ok(true));
        let (v, cas) = t.get("fg/s/3").unwrap();
        assert_eq!(v.as_deref(), Some(&b"one"[..]));
        assert_eq!(t.set("fg/s/3", b"two", cas), Ok(true));
        assert_eq!(
            t.set_key(slot_key(3), b"three", cas),
            Ok(false),
            "token used"
        );
        let now = t.read_key(slot_key(3), |v, cas| (v.map(<[u8]>::to_vec), cas));
        let (v, cas) = now.unwrap();
        assert_eq!(v.as_deref(), Some(&b"two"[..]));
        assert_eq!(t.set_key(slot_key(3), b"four", cas), Ok(true));
        // A token for an absent slot names nothing; another kind is another entry.
        assert_eq!(t.set_key(slot_key(4), b"x", 7), Ok(false));
        assert_eq!(t.get("fg/a/3").unwrap(), (None, 0));
        assert_eq!(t.set_key(address_key(3), b"a", 0), Ok(true));
        // Beyond the arrays a slot key is a key like any other, in the bounded map.
        assert_eq!(t.set_key(slot_key(100), b"far", 0), Ok(true));
        assert_eq!(t.get("fg/s/100").unwrap().0.as_deref(), Some(&b"far"[..]));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn the_table_is_bounded() {
        let t = Table::new(SHARDS * 2);
        let refused = (0..1000)
            .filter(|i| t.set(&format!("k{i}"), b"v", 0) == Err(TableError::Full))
            .count();
        assert!(refused > 0);
        assert!(t.len() <= SHARDS * 2, "{}", t.len());
        // Known keys are still written.
        let (_, cas) = t.get("k0").unwrap();
        if cas != 0 {
            assert_eq!(t.set("k0", b"w", cas), Ok(true));
        }
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        let t = std::sync::Arc::new(Table::new(100));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    let mut host = TableHost {
                        table: &t,
                        address: || None,
                    };
                    let mut done = 0;
                    while done < 500 {
                        let r = store::update(&mut host, "n", |b| {
                            let n = b.map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap()));
                            Some((n + 1).to_le_bytes().to_vec())
                        });
                        match r {
                            Ok(true) => done += 1,
                            Err(StoreError::Contended) => {}
                            other => panic!("{other:?}"),
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let (n, _) = t.get("n").unwrap();
        assert_eq!(u32::from_le_bytes(n.unwrap().try_into().unwrap()), 2000);
    }
}
