//! Typed access to Envoy shared data: what every worker of this VM id sees.
//!
//! Keys: `fg/s/<n>` session slots, `fg/a/<n>` client-address failure counts, `fg/reg` the learning registry of templates,
//! `fg/learn` merged learning counters, `fg/model/v` the active model's version (a cheap
//! probe for workers' ticks) and `fg/model` its policy JSON.

use crate::host::{self, HostResult, CAS_MISMATCH};
use flowguard_engine::learn::LearnStats;
use flowguard_engine::slot::Slot;
use std::fmt::Write;

pub const REGISTRY_KEY: &str = "fg/reg";
pub const STATS_KEY: &str = "fg/learn";
pub const MODEL_VERSION_KEY: &str = "fg/model/v";
pub const MODEL_KEY: &str = "fg/model";

/// How often a compare-and-swap is retried before the caller gives up on the write.
pub const CAS_RETRIES: usize = 4;

/// A shared-data key of a slot (`fg/s/<n>`, `fg/a/<n>`: at most 15 bytes), on the stack,
/// passed by value: the request path neither allocates one nor shares a buffer for it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key {
    bytes: [u8; 16],
    len: usize,
}

impl Key {
    fn new(prefix: &str, index: u32) -> Key {
        let mut key = Key {
            bytes: [0; 16],
            len: 0,
        };
        let _ = write!(key, "{prefix}{index}");
        key
    }

    pub fn as_str(&self) -> &str {
        self.bytes
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

impl Write for Key {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        let room = self.bytes.get_mut(self.len..end).ok_or(std::fmt::Error)?;
        room.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The key of session slot `index`.
pub fn slot_key(index: u32) -> Key {
    Key::new("fg/s/", index)
}

/// The key of client-address slot `index`.
pub fn address_key(index: u32) -> Key {
    Key::new("fg/a/", index)
}

/// A slot and its CAS token; an absent or undecodable record reads as `None` (free).
pub fn read_slot(key: Key) -> HostResult<(Option<Slot>, u32)> {
    let (bytes, cas) = host::shared_get(key.as_str())?;
    Ok((bytes.and_then(|b| Slot::decode(&b).ok()), cas))
}

/// Read-modify-write of `key` under CAS: `f` gets the current bytes and returns the new
/// ones (or `None` to leave the key alone). Returns whether a write happened.
pub fn update(key: &str, mut f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>) -> HostResult<bool> {
    for _ in 0..CAS_RETRIES {
        let (bytes, cas) = host::shared_get(key)?;
        let Some(new) = f(bytes.as_deref()) else {
            return Ok(false);
        };
        match host::shared_set(key, &new, cas) {
            Ok(()) => return Ok(true),
            Err(CAS_MISMATCH) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(CAS_MISMATCH)
}

/// Learning counters as shared: the endpoint-id space they count in (0: the learning
/// registry; else the first model version of that endpoint list), then the counters.
/// Undecodable bytes read as empty counters of the registry.
pub fn decode_stats(bytes: Option<&[u8]>) -> (u64, LearnStats) {
    let Some((space, rest)) = bytes.and_then(|b| b.split_first_chunk::<8>()) else {
        return (0, LearnStats::default());
    };
    match LearnStats::decode(rest) {
        Ok(stats) => (u64::from_le_bytes(*space), stats),
        Err(_) => (0, LearnStats::default()),
    }
}

pub fn encode_stats(space: u64, stats: &LearnStats) -> Vec<u8> {
    let mut out = space.to_le_bytes().to_vec();
    out.extend(stats.encode());
    out
}

/// Publishes a policy to every worker: the one protocol for a learned and a collector
/// policy alike. Claims `version` in the version key by compare-and-swap (`cas` from the
/// read that decided to publish), then writes the body. A reader takes a body only when
/// its version matches the key, so one that reads between the two writes waits for its
/// next tick. Returns false when another worker claimed the key first.
pub fn publish_model(version: u64, json: &str, cas: u32) -> HostResult<bool> {
    match host::shared_set(MODEL_VERSION_KEY, &version.to_le_bytes(), cas) {
        Ok(()) => {}
        Err(host::CAS_MISMATCH) => return Ok(false),
        Err(e) => return Err(e),
    }
    host::shared_set(MODEL_KEY, json.as_bytes(), 0)?;
    Ok(true)
}

/// The active model's version in shared data (0: none yet).
pub fn model_version() -> HostResult<(u64, u32)> {
    let (bytes, cas) = host::shared_get(MODEL_VERSION_KEY)?;
    let version = bytes
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map_or(0, u64::from_le_bytes);
    Ok((version, cas))
}
