//! Shared data as the request path needs it: what the engine asks of its host.
//!
//! The filter implements [`Host`] on Envoy's shared data (every worker of a VM id sees
//! it) and the downstream connection; tests and the fuzzer implement it on a map. The
//! keys are `crate::keys`'.

/// How often a compare-and-swap is retried before the caller gives up on the write.
pub const CAS_RETRIES: usize = 4;

/// What the request path reads and writes through its host.
pub trait Host {
    type Error;
    /// A value and its compare-and-swap token; `(None, 0)` when the key is absent.
    fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), Self::Error>;
    /// Writes `value` if the key's token is still `cas` (0: unconditionally). `Ok(false)`:
    /// another writer came first, nothing was written.
    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, Self::Error>;
    /// Lends `key`'s bytes and token to `f`: [`Host::get`] without the copy, for a host
    /// that holds them in memory (the request path reads every slot this way).
    fn read<R>(
        &mut self,
        key: &str,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, Self::Error> {
        let (bytes, cas) = self.get(key)?;
        Ok(f(bytes.as_deref(), cas))
    }
    /// [`Host::read`] of a slot: a host that keeps slots in arrays indexes them
    /// ([`Key::slot`]) instead of hashing the key's text.
    fn read_key<R>(
        &mut self,
        key: Key,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, Self::Error> {
        self.read(key.as_str(), f)
    }
    /// [`Host::set`] of a slot (see [`Host::read_key`]).
    fn set_key(&mut self, key: Key, value: &[u8], cas: u32) -> Result<bool, Self::Error> {
        self.set(key.as_str(), value, cas)
    }
    /// The downstream client's address (`ip:port`), if the connection has one.
    fn client_address(&mut self) -> Result<Option<Vec<u8>>, Self::Error>;
}

/// Why a shared-data operation did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError<E> {
    /// The host refused the call.
    Host(E),
    /// Every compare-and-swap attempt lost its race.
    Contended,
}

impl<E> From<E> for StoreError<E> {
    fn from(e: E) -> Self {
        StoreError::Host(e)
    }
}

// Every key lives in `crate::keys`; these are what the request path names most.
pub use crate::keys::{address_key, slot_key, Key};

/// A key [`update`] reads and writes: any key's text, or a slot's [`Key`] (which a host
/// may find by index: [`Host::read_key`]).
pub trait StoreKey: Copy {
    fn read<H: Host, R>(
        self,
        host: &mut H,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, H::Error>;
    fn set<H: Host>(self, host: &mut H, value: &[u8], cas: u32) -> Result<bool, H::Error>;
}

impl StoreKey for &str {
    fn read<H: Host, R>(
        self,
        host: &mut H,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, H::Error> {
        host.read(self, f)
    }

    fn set<H: Host>(self, host: &mut H, value: &[u8], cas: u32) -> Result<bool, H::Error> {
        host.set(self, value, cas)
    }
}

impl StoreKey for Key {
    fn read<H: Host, R>(
        self,
        host: &mut H,
        f: impl FnOnce(Option<&[u8]>, u32) -> R,
    ) -> Result<R, H::Error> {
        host.read_key(self, f)
    }

    fn set<H: Host>(self, host: &mut H, value: &[u8], cas: u32) -> Result<bool, H::Error> {
        host.set_key(self, value, cas)
    }
}

/// Read-modify-write of `key` under compare-and-swap: `f` gets the current bytes (lent by
/// the host, not copied) and returns the new ones (or `None` to leave the key alone).
/// Returns whether a write happened.
pub fn update<H: Host, V: AsRef<[u8]>>(
    host: &mut H,
    key: impl StoreKey,
    mut f: impl FnMut(Option<&[u8]>) -> Option<V>,
) -> Result<bool, StoreError<H::Error>> {
    for _ in 0..CAS_RETRIES {
        let (new, cas) = key.read(host, |bytes, cas| (f(bytes), cas))?;
        let Some(new) = new else {
            return Ok(false);
        };
        if key.set(host, new.as_ref(), cas)? {
            return Ok(true);
        }
    }
    Err(StoreError::Contended)
}

/// An in-memory [`Host`] with Envoy's compare-and-swap semantics, for tests and fuzzing.
#[derive(Clone, Debug, Default)]
pub struct MemoryHost {
    values: std::collections::HashMap<String, (Vec<u8>, u32)>,
    next_cas: u32,
    /// The client address [`Host::client_address`] answers.
    pub address: Option<String>,
    /// Writes still to lose (as if another worker had written first), for race tests.
    pub lose_writes: usize,
    /// Reads answered so far (for tests that count a path's shared-data reads).
    pub reads: usize,
}

impl MemoryHost {
    /// How many keys hold a value.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Host for MemoryHost {
    type Error = std::convert::Infallible;

    fn get(&mut self, key: &str) -> Result<(Option<Vec<u8>>, u32), Self::Error> {
        self.reads += 1;
        Ok(self
            .values
            .get(key)
            .map_or((None, 0), |(v, cas)| (Some(v.clone()), *cas)))
    }

    fn set(&mut self, key: &str, value: &[u8], cas: u32) -> Result<bool, Self::Error> {
        let current = self.values.get(key).map_or(0, |(_, c)| *c);
        if self.lose_writes > 0 || (cas != 0 && cas != current) {
            self.lose_writes = self.lose_writes.saturating_sub(1);
            return Ok(false);
        }
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.values
            .insert(key.to_owned(), (value.to_vec(), self.next_cas));
        Ok(true)
    }

    fn client_address(&mut self) -> Result<Option<Vec<u8>>, Self::Error> {
        Ok(self.address.as_ref().map(|a| a.as_bytes().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_retries_a_lost_race_and_gives_up_after_its_retries() {
        let mut host = MemoryHost {
            lose_writes: 2,
            ..MemoryHost::default()
        };
        let mut calls = 0;
        let written = update(&mut host, "k", |_| {
            calls += 1;
            Some(vec![1])
        });
        assert_eq!((written, calls), (Ok(true), 3));
        assert_eq!(host.get("k").unwrap().0, Some(vec![1]));
        host.lose_writes = CAS_RETRIES;
        assert_eq!(
            update(&mut host, "k", |_| Some(vec![2])),
            Err(StoreError::Contended)
        );
        assert_eq!(update(&mut host, "k", |_| None::<Vec<u8>>), Ok(false));
    }

    #[test]
    fn a_stale_token_loses() {
        let mut host = MemoryHost::default();
        assert_eq!(host.set("k", b"a", 0), Ok(true));
        let (_, cas) = host.get("k").unwrap();
        assert_eq!(host.set("k", b"b", cas), Ok(true));
        assert_eq!(host.set("k", b"c", cas), Ok(false), "token used");
        assert_eq!(host.get("k").unwrap().0.as_deref(), Some(&b"b"[..]));
    }
}
