//! One worker's state: settings, the cached model, learning deltas and scratch buffers.
//!
//! Each Envoy worker thread runs its own VM, so this is per worker; what workers share
//! goes through `shared`.

use crate::host::{self, HostResult};
use crate::metrics::Metrics;
use crate::shared;
use crate::telemetry::Telemetry;

use flowguard_engine::config::Settings;
use flowguard_engine::endpoint::Normaliser;
use flowguard_engine::endpoint_set::EndpointId;
use flowguard_engine::judge::Judge;
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
    pub scratch: Scratch,
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

/// Buffers reused across requests, so the request path does not allocate for them.
#[derive(Default)]
pub struct Scratch {
    pub template: String,
    pub header: String,
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
            scratch: Scratch::default(),
            requests_seen: 0,
            last_used: Vec::new(),
            telemetry,
            fleet_waiting: 0,
            last_tick_ms: 0,
        }
    }

    /// The tag slots are written under: the model's layout, the first version with its
    /// endpoint ids (0 while learning). A relearned model keeps its predecessor's ids and
    /// so its tag: workers that have installed it and workers still on the previous
    /// version agree on what every session has completed.
    pub fn epoch(&self) -> u32 {
        self.model
            .as_ref()
            .map_or(0, |m| u32::try_from(m.layout).unwrap_or(u32::MAX))
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

    /// The endpoint id of `scratch.template`: the model's, or the learning registry's
    /// (adding the template, generalised by the positions learned so far, to the shared
    /// registry if it is new and there is room). `scratch.template` becomes the template
    /// the id stands for.
    pub fn endpoint_id(&mut self) -> HostResult<Option<EndpointId>> {
        let template = self.scratch.template.as_str();
        if let Some(model) = &self.model {
            return Ok(model.endpoint(template));
        }
        if let Some(id) = self.registry.get(template) {
            return Ok(Some(id));
        }
        let limit = self.settings.learning.max_endpoints;
        let min_distinct = self.settings.learning.variable_segment_min;
        let mut found = None;
        let mut latest = Registry::default();
        shared::update(shared::REGISTRY_KEY, |bytes| {
            latest = bytes.map(Registry::decode).unwrap_or_default();
            let before = latest.encode();
            found = latest.learn(template, limit, min_distinct);
            let after = latest.encode();
            (after != before).then_some(after)
        })?;
        // The last attempt saw (and, if it wrote, extended) what is shared: other workers'
        // additions too. It is the new local cache; no second read.
        self.registry = latest;
        if let Some(t) = found.and_then(|id| self.registry.templates().get(usize::from(id))) {
            self.scratch.template.clone_from(t);
        }
        self.sync_normaliser();
        Ok(found)
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

    /// What this worker knows to judge a request with (`engine::judge`).
    pub fn judge(&self) -> Judge<'_> {
        Judge {
            settings: &self.settings,
            model: self.model.as_ref(),
            epoch: self.epoch(),
            registry_map: &self.registry_map,
            started: self.started.unwrap_or(0),
            relearns: self.relearns(),
        }
    }
}
