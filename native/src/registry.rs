//! The filters of the process, by configuration JSON: a reload keeps what was learned.
//!
//! Envoy creates a new filter configuration whenever it rebuilds a listener (an LDS
//! update, a change elsewhere in the listener), and destroys the old one once its
//! connections have drained. The Wasm filter keeps its model and session slots in Envoy's
//! shared data, which outlives any VM; the native module keeps them in its [`Filter`], so
//! without this registry a reload would forget every session mid-flow (judged as new
//! sessions, each skipping its earlier steps) and restart learning.
//!
//! So a configuration is looked up by its exact JSON (hashed, and compared in full): a
//! new configuration with the JSON of one still alive shares its [`Filter`] (model, slot
//! table, learning counters, telemetry thread and its buffered events). A different JSON
//! starts fresh: its settings may change what a slot or a template means. The registry
//! holds only [`Weak`] references, so a filter lives as long as a configuration or a
//! stream uses it: when the last configuration with that JSON is destroyed (and its last
//! stream has ended) the filter and its thread go, and a later configuration with the same
//! JSON starts fresh. Envoy creates the new configuration before it destroys the old one,
//! so a reload always finds it.
//!
//! Two listeners given the same JSON share one filter too, as two Wasm filters with the
//! same VM share shared data.

use crate::{Filter, Log};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Live filters by configuration JSON.
#[derive(Default)]
pub struct Registry {
    filters: Mutex<HashMap<Vec<u8>, Weak<Filter>>>,
}

/// Whether [`Registry::filter`] built the filter or found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    New,
    /// Shared with a live configuration of the same JSON.
    Adopted,
}

impl Registry {
    /// The live filter configured by exactly `json`, else a new one (`Filter::new`).
    pub fn filter(&self, json: &[u8], log: Log) -> Result<(Arc<Filter>, Origin), String> {
        let mut filters = self.filters.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = filters.get(json).and_then(Weak::upgrade) {
            return Ok((live, Origin::Adopted));
        }
        // Built under the lock: two configurations of one JSON created at once share.
        let filter = Arc::new(Filter::new(json, log)?);
        filters.retain(|_, f| f.strong_count() > 0);
        filters.insert(json.to_vec(), Arc::downgrade(&filter));
        Ok((filter, Origin::New))
    }

    /// How many filters are alive.
    pub fn live(&self) -> usize {
        self.filters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|f| f.strong_count() > 0)
            .count()
    }
}

/// The process's registry (the one the ABI uses).
pub fn global() -> &'static Registry {
    static GLOBAL: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    GLOBAL.get_or_init(Registry::default)
}
