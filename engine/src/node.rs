//! One proxy worker's learning and publication, over shared data (`crate::keys`): what a
//! host's periodic tick does, and what its exchanges judge with.
//!
//! Every worker merges its learning counters into shared data, and adopts the model
//! another published. When the counters meet the learning thresholds, one worker compiles
//! the policy, claims its version by compare-and-swap on the version key and publishes
//! it; later, while it relearns, it publishes new versions with the same endpoint ids. A
//! collector's policy is published by the same protocol ([`Node::publish`]). The host
//! logs and counts what [`Happened`].

use crate::config::Settings;
use crate::endpoint::Normaliser;
use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::exchange::{self, Scope};
use crate::keys;
use crate::learn::{self, LearnStats, Registry};
use crate::model::Model;
use crate::policy::Policy;
use crate::store::{self, Host, StoreError};

/// What a tick (or an adoption) did, for the host's log and metrics.
#[derive(Clone, Debug, PartialEq)]
pub enum Happened {
    /// A model is active here (`endpoints` of them).
    Installed { version: u64, endpoints: usize },
    /// This worker learned and published a policy.
    Learned {
        version: u64,
        sessions: u64,
        requests: u64,
        json: String,
    },
    /// A published policy this worker cannot install (logged once per version).
    Refused { version: u64, error: String },
    /// A learned policy failed to compile: nothing was published.
    Invalid { error: String },
    /// Learning's progress so far (shared counters).
    Progress {
        sessions: u64,
        requests: u64,
        unlearned: u64,
        weak: u64,
    },
}

impl Happened {
    fn progress(stats: &LearnStats) -> Happened {
        Happened::Progress {
            sessions: stats.sessions,
            requests: stats.requests,
            unlearned: stats.unlearned_sessions,
            weak: stats.weak_sessions,
        }
    }
}

/// A worker's model, learning state and last-use times.
pub struct Node {
    /// When this worker handled its first request (seconds): a restarted proxy lets
    /// sessions join mid-flow for `session.midflow.window_s` from then.
    pub started: Option<u32>,
    pub model: Option<Model>,
    /// Learning-registry cache; its indices are what slots use before a model exists.
    pub registry: Registry,
    /// Normalises while learning (declared templates and learned variable positions).
    base_normaliser: Normaliser,
    /// How many learned variable prefixes `base_normaliser` holds.
    learned_prefixes: usize,
    /// Registry index to model index, for slots recorded while learning.
    registry_map: Vec<Option<EndpointId>>,
    /// Learning counters not yet merged into shared data, and the endpoint-id space they
    /// count in (0: the registry's; else the model layout's).
    pub delta: LearnStats,
    delta_layout: u64,
    /// The published version this worker last installed or refused.
    tried_version: u64,
    /// When each model endpoint was last called normally here (seconds), for retiring
    /// endpoints unused for `endpoints.retire_after_s`.
    pub last_used: Vec<u32>,
}

impl Node {
    pub fn new(settings: &Settings) -> Node {
        Node {
            started: None,
            model: None,
            registry: Registry::default(),
            base_normaliser: exchange::base_normaliser(settings, &Registry::default()),
            learned_prefixes: 0,
            registry_map: Vec::new(),
            delta: LearnStats::default(),
            delta_layout: 0,
            tried_version: 0,
            last_used: Vec::new(),
        }
    }

    /// The installed model's version (0: none).
    pub fn model_version(&self) -> u64 {
        self.model.as_ref().map_or(0, |m| m.version)
    }

    /// Whether learning goes on once a model is active: for a model this host learned
    /// itself (a configured policy is the operator's; with a collector, the fleet learns).
    pub fn relearns(settings: &Settings) -> bool {
        settings.policy.is_none() && settings.collector.is_none()
    }

    /// What the exchange judges with, and the learning counters it adds to.
    pub fn scope<'a>(&'a mut self, settings: &'a Settings) -> (Scope<'a>, &'a mut LearnStats) {
        let scope = Scope {
            settings,
            model: self.model.as_ref(),
            registry_map: &self.registry_map,
            base_normaliser: &self.base_normaliser,
            started: self.started.unwrap_or(0),
            relearns: Node::relearns(settings),
            registry: Some(&self.registry),
        };
        (scope, &mut self.delta)
    }

    /// Takes the registry an exchange read from shared data as the new cache.
    pub fn adopt_registry(&mut self, settings: &Settings, registry: Registry) {
        self.registry = registry;
        self.sync_normaliser(settings);
    }

    /// Learning normalises with the registry's learned variable positions, so identifier
    /// values there are counted as identifiers (distinct ids per window) from the start.
    fn sync_normaliser(&mut self, settings: &Settings) {
        let learned = self.registry.variable_prefixes().len();
        if learned != self.learned_prefixes {
            self.learned_prefixes = learned;
            self.base_normaliser = exchange::base_normaliser(settings, &self.registry);
        }
    }

    /// Installs a compiled model (`now`: seconds, every endpoint counts as just used).
    pub fn install(&mut self, model: Model, now: u32) -> Happened {
        if self.delta_layout != model.layout {
            // Counters of another id space cannot be merged into this one's.
            self.delta = LearnStats::default();
            self.delta_layout = model.layout;
        }
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
        let happened = Happened::Installed {
            version: model.version,
            endpoints: model.len(),
        };
        self.model = Some(model);
        happened
    }

    /// Creates the version key if absent, so publishing a model later is a real
    /// compare-and-swap.
    pub fn create_version_key<H: Host>(host: &mut H) -> Result<(), H::Error> {
        if host.get(keys::MODEL_VERSION)?.0.is_none() {
            host.set(keys::MODEL_VERSION, &0u64.to_le_bytes(), 0)?;
        }
        Ok(())
    }

    /// The active model's version in shared data (0: none yet), and its token.
    pub fn published_version<H: Host>(host: &mut H) -> Result<(u64, u32), H::Error> {
        let (bytes, cas) = host.get(keys::MODEL_VERSION)?;
        let version = bytes
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map_or(0, u64::from_le_bytes);
        Ok((version, cas))
    }

    /// Publishes a policy to every worker: the one protocol for a learned and a collector
    /// policy alike. Claims `version` in the version key by compare-and-swap (`cas` from
    /// the read that decided to publish), then writes the body. A reader takes a body only
    /// when its version matches the key, so one that reads between the two writes waits
    /// for its next tick. Returns false when another worker claimed the key first.
    pub fn publish<H: Host>(
        host: &mut H,
        version: u64,
        json: &str,
        cas: u32,
    ) -> Result<bool, H::Error> {
        if !host.set(keys::MODEL_VERSION, &version.to_le_bytes(), cas)? {
            return Ok(false);
        }
        host.set(keys::MODEL, json.as_bytes(), 0)?;
        Ok(true)
    }

    /// Installs the model already published in shared data, if any, so that a worker
    /// started (or reloaded) after learning enforces from its first request, and every
    /// worker from the first request after another published it. One probe read per
    /// call; a version already tried (installed or refused) is not parsed again.
    pub fn adopt_published<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
        now: u32,
        out: &mut Vec<Happened>,
    ) -> Result<(), H::Error> {
        if settings.policy.is_some() {
            return Ok(());
        }
        match Node::published_version(host)? {
            (0, _) => Ok(()),
            (version, _) => self.adopt(settings, host, version, now, out),
        }
    }

    /// The periodic work: merge learning counters, share last-use times and retire
    /// endpoints, pick up a new model, and learn or relearn one when due.
    pub fn tick<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
        now_ms: u64,
        out: &mut Vec<Happened>,
    ) -> Result<(), StoreError<H::Error>> {
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        self.merge_delta(host)?;
        self.retire_unused(settings, host, now)?;
        if settings.policy.is_some() {
            return Ok(());
        }
        let (version, cas) = Node::published_version(host)?;
        if version != 0 && version != self.model_version() {
            return Ok(self.adopt(settings, host, version, now, out)?);
        }
        if self.model.is_none() {
            self.learn_or_wait(settings, host, cas, now, out)?;
        } else if Node::relearns(settings) {
            self.relearn_or_wait(settings, host, cas, now, out)?;
        }
        Ok(())
    }

    fn merge_delta<H: Host>(&mut self, host: &mut H) -> Result<(), StoreError<H::Error>> {
        if self.delta.is_empty() {
            return Ok(());
        }
        let (delta, space) = (&self.delta, self.delta_layout);
        store::update(host, keys::STATS, |bytes| {
            let (shared_space, mut stats) = decode_stats(bytes);
            if shared_space != space {
                // Counted in another model's ids (a publication is under way): dropped.
                return None;
            }
            stats.merge(delta);
            Some(encode_stats(space, &stats))
        })?;
        self.delta = LearnStats::default();
        Ok(())
    }

    fn refresh_registry<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
    ) -> Result<(), H::Error> {
        let (bytes, _) = host.get(keys::REGISTRY)?;
        let registry = bytes.map(|b| Registry::decode(&b)).unwrap_or_default();
        self.adopt_registry(settings, registry);
        Ok(())
    }

    /// Loads published `version` unless this worker already installed or refused it (so
    /// a refused policy is parsed and logged once, not on every tick or request).
    fn adopt<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
        version: u64,
        now: u32,
        out: &mut Vec<Happened>,
    ) -> Result<(), H::Error> {
        if version == self.tried_version {
            return Ok(());
        }
        let (bytes, _) = host.get(keys::MODEL)?;
        let Some(bytes) = bytes else {
            return Ok(()); // published version, body not written yet: next tick
        };
        match Policy::from_json(&bytes).and_then(|p| Model::compile(&p, settings)) {
            Ok(model) if model.version == version => {
                self.refresh_registry(settings, host)?;
                out.push(self.install(model, now));
                self.tried_version = version;
            }
            Ok(_) => {} // the body is of another version: mid-publication
            Err(e) => {
                out.push(Happened::Refused {
                    version,
                    error: e.to_string(),
                });
                self.tried_version = version;
            }
        }
        Ok(())
    }

    fn learn_or_wait<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
        version_cas: u32,
        now: u32,
        out: &mut Vec<Happened>,
    ) -> Result<(), StoreError<H::Error>> {
        let (bytes, _) = host.get(keys::STATS)?;
        let (space, stats) = decode_stats(bytes.as_deref());
        if space != 0 {
            return Ok(()); // a model was published: its adoption is this tick's job
        }
        out.push(Happened::progress(&stats));
        if !stats.is_ready(&settings.learning) {
            return Ok(());
        }
        self.refresh_registry(settings, host)?;
        let policy = learn::compile(
            &stats,
            &self.registry,
            &settings.learning,
            &settings.limits,
            1,
        );
        if !self.claim_and_publish(settings, host, &policy, version_cas, &stats, now, out)? {
            return Ok(());
        }
        if Node::relearns(settings) {
            // Learning goes on in the model's ids: carry what was counted over into them.
            let map = &self.registry_map;
            let carried = stats.remap(|id| map.get(usize::from(id)).copied().flatten());
            let layout = policy.layout();
            store::update(host, keys::STATS, |_| Some(encode_stats(layout, &carried)))?;
        }
        Ok(())
    }

    /// Learning after the model is active: once the sessions no rule fired on have grown
    /// enough, the policy is learned again (adding only the rules that now have their
    /// evidence) and published as a new version with the same endpoint ids.
    fn relearn_or_wait<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
        version_cas: u32,
        now: u32,
        out: &mut Vec<Happened>,
    ) -> Result<(), StoreError<H::Error>> {
        let Some((layout, since)) = self.model.as_ref().map(|m| (m.layout, m.learned_sessions))
        else {
            return Ok(());
        };
        let (bytes, _) = host.get(keys::STATS)?;
        let (space, stats) = decode_stats(bytes.as_deref());
        if space != layout {
            return Ok(());
        }
        out.push(Happened::progress(&stats));
        // Only when due is the published policy read and parsed again.
        if !learn::relearn_due(since, &stats, &settings.learning) {
            return Ok(());
        }
        let (bytes, _) = host.get(keys::MODEL)?;
        let Some(current) = bytes.and_then(|b| Policy::from_json(&b).ok()) else {
            return Ok(());
        };
        if current.version != self.model_version() {
            return Ok(());
        }
        let policy = learn::relearn(&current, &stats, &settings.learning, &settings.limits);
        self.claim_and_publish(settings, host, &policy, version_cas, &stats, now, out)?;
        Ok(())
    }

    /// Compiles `policy`, claims its version (of two workers compiling at once, one
    /// publishes), then writes and installs it. Returns whether this worker published.
    #[allow(clippy::too_many_arguments)]
    fn claim_and_publish<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
        policy: &Policy,
        version_cas: u32,
        stats: &LearnStats,
        now: u32,
        out: &mut Vec<Happened>,
    ) -> Result<bool, H::Error> {
        let model = match Model::compile(policy, settings) {
            Ok(m) => m,
            Err(e) => {
                out.push(Happened::Invalid {
                    error: e.to_string(),
                });
                return Ok(false);
            }
        };
        let json = policy.to_json();
        if !Node::publish(host, policy.version, &json, version_cas)? {
            return Ok(false);
        }
        self.tried_version = policy.version;
        out.push(Happened::Learned {
            version: policy.version,
            sessions: stats.sessions,
            requests: stats.requests,
            json,
        });
        out.push(self.install(model, now));
        Ok(true)
    }

    /// Shares when each endpoint was last used normally, and retires those unused for
    /// `endpoints.retire_after_s` (zombie endpoints).
    fn retire_unused<H: Host>(
        &mut self,
        settings: &Settings,
        host: &mut H,
        now: u32,
    ) -> Result<(), StoreError<H::Error>> {
        let retire_after = settings.endpoints.retire_after_s;
        let Some(model) = &mut self.model else {
            return Ok(());
        };
        if retire_after == 0 {
            return Ok(());
        }
        let mine = &self.last_used;
        let mut merged = mine.clone();
        store::update(host, keys::used(model.version).as_str(), |bytes| {
            merged = mine.clone();
            for (i, chunk) in bytes.unwrap_or_default().chunks_exact(4).enumerate() {
                let theirs = chunk.try_into().map_or(0, u32::from_le_bytes);
                if let Some(m) = merged.get_mut(i) {
                    *m = (*m).max(theirs);
                }
            }
            Some(
                merged
                    .iter()
                    .flat_map(|t| t.to_le_bytes())
                    .collect::<Vec<u8>>(),
            )
        })?;
        let mut retired = EndpointSet::EMPTY;
        for (i, last) in merged.iter().enumerate() {
            if now.saturating_sub(*last) > retire_after {
                if let Ok(id) = EndpointId::try_from(i) {
                    retired.insert(id);
                }
            }
        }
        model.set_retired(retired);
        self.last_used = merged;
        Ok(())
    }
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

#[cfg(test)]
mod tests;
