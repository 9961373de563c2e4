//! flowguard-engine: the pure decision core of flowguard.
//!
//! It knows nothing of proxy-wasm or Envoy: time, storage and header values come in as
//! arguments, so every decision can be reproduced in a unit test, a benchmark, the
//! collector or `flowguard replay`.
#![forbid(unsafe_code)]

pub mod address;
pub mod config;
pub mod decision;
pub mod endpoint;
pub mod endpoint_set;
pub mod evidence;
pub mod exchange;
pub mod failure;
pub mod fingerprint;
pub mod fleet_join;
pub mod handover;
pub mod header_map;
pub mod judge;
pub mod keys;
pub mod le;
pub mod learn;
pub mod model;
pub mod node;
pub mod object;
pub mod policy;
pub mod rate;
pub mod registry;
pub mod rule;
pub mod sensitive;
pub mod session;
pub mod slot;
pub mod slot_table;
pub mod store;
pub mod support;
pub mod telemetry;
pub mod verdict;
