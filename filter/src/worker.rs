//! One worker's state: settings, the cached model, learning deltas and a scratch buffer.
//!
//! Each Envoy worker thread runs its own VM, so this is per worker; what workers share
//! goes through `shared`.

use crate::host;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;

use flowguard_engine::config::Settings;
use flowguard_engine::endpoint::Normaliser;
use flowguard_engine::endpoint_set::EndpointId;
use flowguard_engine::exchange::Scope;
use flowguard_engine::learn::{LearnStats, Registry};
use flowguard_engine::model::Model;
use proxy_wasm::types::LogLevel;

/// This worker's state, shared by the root context and its HTTP contexts (one thread).
pub type SharedWorker = std::rc::Rc<std::cell::RefCell<Option<Worker>>>;

pub struct Worker {
    pub settings: Settings,
    pub metrics: Metrics,
    /// When this worker handled its first request (seconds): a restarted proxy lets
    /// sessions join mid-flow for `session.midflow.window_s` from then.
    pub started: Option<u32>,
    /// Normalises while learning (declared templates and learned variable positions).
    pub base_normaliser: Normaliser,
    /// How many learned variable prefixes `base_normaliser` holds.
    learned_prefixes: usize,
    pub model: Option<Model>,
    /// Learning registry cache; its indices are what slots use before a model exists.
    pub registry: Registry,
    /// The published model version this worker last installed or refused.
    pub tried_version: u64,
    /// Registry index to model index, for slots recorded while learning.
    registry_map: Vec<Option<EndpointId>>,
    /// Learning counters not yet merged into shared data, and the endpoint-id space they
    /// count in (see [`crate::shared::decode_stats`]).
    pub delta: LearnStats,
    pub delta_space: u64,
    /// The template buffer each request's exchange borrows, so none allocates one.
    pub scratch_template: String,
    pub requests_seen: u64,
    /// When each model endpoint was last called normally here (seconds), for retiring
    /// endpoints unused for `endpoints.retire_after_s`.
    pub last_used: Vec<u32>,
    /// Telemetry and policy polling, when a collector is configured.
    pub telemetry: Option<Telemetry>,
    /// Requests paused for the fleet's answer (`crate::fleet`).
    pub fleet_waiting: u32,
    /// When the periodic work last ran (ms): ticks come faster with a collector, for
    /// prompt reports, and the rest runs every `learning.tick_ms`.
    pub last_tick_ms: u64,
}

impl Worker {
    pub fn new(settings: Settings) -> Worker {
        let telemetry = settings.collector.clone().map(Telemetry::new);

        let base_normaliser =
            Normaliser::new(settings.endpoints.templates.clone(), Default::default())
                .with_id_params(settings.endpoints.id_params.clone())
                .case_insensitive(settings.endpoints.case_insensitive);
        Worker {
            settings,
            metrics: Metrics::define(),
            started: None,
            base_normaliser,
            learned_prefixes: 0,
            model: None,
            registry: Registry::default(),
            tried_version: 0,
            registry_map: Vec::new(),
            delta: LearnStats::default(),
            delta_space: 0,
            scratch_template: String::new(),
            requests_seen: 0,
            last_used: Vec::new(),
            telemetry,
            fleet_waiting: 0,
            last_tick_ms: 0,
        }
    }

    /// The installed model's version (0: none).
    pub fn model_version(&self) -> u64 {
        self.model.as_ref().map_or(0, |m| m.version)
    }

    /// Whether learning goes on once a model is active: for a model this filter learned
    /// itself (a configured policy is the operator's; with a collector, the fleet learns).
    pub fn relearns(&self) -> bool {
        self.settings.policy.is_none() && self.settings.collector.is_none()
    }

    /// The model id of a learning-registry id (for counters recorded while learning).
    pub fn model_id_of(&self, registry_id: EndpointId) -> Option<EndpointId> {
        self.registry_map
            .get(usize::from(registry_id))
            .copied()
            .flatten()
    }

    /// Installs a compiled model for this worker.
    pub fn install(&mut self, model: Model) {
        if self.delta_space != model.layout {
            // Counters of another id space cannot be merged into this one's.
            self.delta = LearnStats::default();
            self.delta_space = model.layout;
        }
        let now = host::now_secs().unwrap_or(0);
        self.last_used = vec![now; model.len()];
        self.registry_map = self
            .registry
            .templates()
            .iter()
            .map(|t| {
                let (method, path) = t.split_once(' ').unwrap_or(("", t));
                let mut out = String::new();
                model.normaliser.normalise(method, path, &mut out);
                model.endpoint(&out)
            })
            .collect();
        Metrics::set(self.metrics.policy_version, model.version);
        Metrics::set(self.metrics.endpoints, model.len() as u64);
        host::log(
            LogLevel::Info,
            &format!(
                "flowguard: model version {} active ({} endpoints)",
                model.version,
                model.len()
            ),
        );
        self.model = Some(model);
    }

    /// Learning normalises with the registry's learned variable positions, so identifier
    /// values there are counted as identifiers (distinct ids per window) from the start.
    pub fn sync_normaliser(&mut self) {
        let learned = self.registry.variable_prefixes();
        if learned.len() == self.learned_prefixes {
            return;
        }
        self.learned_prefixes = learned.len();
        self.base_normaliser = Normaliser::new(
            self.settings.endpoints.templates.clone(),
            learned.iter().cloned().collect(),
        )
        .with_id_params(self.settings.endpoints.id_params.clone())
        .case_insensitive(self.settings.endpoints.case_insensitive);
    }

    /// What the exchange (`engine::exchange`) judges with, and the learning counters it
    /// adds to (borrowed apart).
    pub fn scope(&mut self) -> (Scope<'_>, &mut LearnStats) {
        let relearns = self.relearns();
        let scope = Scope {
            settings: &self.settings,
            model: self.model.as_ref(),
            registry_map: &self.registry_map,
            base_normaliser: &self.base_normaliser,
            started: self.started.unwrap_or(0),
            relearns,
            registry: Some(&self.registry),
        };
        (scope, &mut self.delta)
    }
}
