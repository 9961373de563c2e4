//! Typed access to Envoy shared data: what every worker of this VM id sees.
//!
//! Keys: `fg/s/<n>` session slots and `fg/a/<n>` client-address slots (their keys and
//! protocol are `engine::store` and `engine::judge`), `fg/reg` the learning registry of templates,
//! `fg/learn` merged learning counters, `fg/model/v` the active model's version (a cheap
//! probe for workers' ticks) and `fg/model` its policy JSON.

use crate::host::{self, EnvoyHost, HostResult};
use flowguard_engine::learn::LearnStats;
use flowguard_engine::store;

pub const REGISTRY_KEY: &str = "fg/reg";
pub const STATS_KEY: &str = "fg/learn";
pub const MODEL_VERSION_KEY: &str = "fg/model/v";
pub const MODEL_KEY: &str = "fg/model";

/// Read-modify-write of `key` under compare-and-swap (see [`store::update`]).
pub fn update(key: &str, f: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>) -> HostResult<bool> {
    store::update(&mut EnvoyHost, key, f).map_err(host::from_store)
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
