//! flowguard as an Envoy dynamic module: the engine's exchange (`engine::exchange`) over
//! in-process state, loaded by `envoy.filters.http.dynamic_modules`.
//!
//! One [`Filter`] per filter configuration (Envoy's `filter_config`, the same JSON as the
//! Wasm filter's plugin configuration), shared by every worker thread: a bounded sharded
//! slot table ([`table::Table`], Envoy shared data's compare-and-swap semantics), the
//! installed model behind an `RwLock<Arc<…>>` swapped whole, and the learning counters
//! behind a `Mutex`, merged after each exchange. When `learning.min_sessions` and
//! `learning.min_requests` are met the policy is compiled and the model swapped in, as
//! the Wasm filter's tick does.
//!
//! With a `collector` section (and the native-only `collector.address`), the exchange's
//! telemetry events go to the collector from a background thread ([`telemetry`]), which
//! also installs newer policies the collector serves, and asks the fleet about a new
//! session's step-skipping first request while Envoy holds it paused
//! ([`Filter::ask`], answered through the stream's scheduler in `abi`). Configurations with the same JSON
//! share one [`Filter`] ([`registry`]): an Envoy reload keeps the model and the sessions.
//!
//! Everything here is safe Rust and testable without Envoy; `abi` holds every `unsafe`
//! line: the hooks Envoy resolves and the callbacks the module calls.

#[cfg(not(test))]
pub mod abi;
pub mod registry;
pub mod table;
pub mod telemetry;

use flowguard_engine::config::Settings;
use flowguard_engine::endpoint::Normaliser;
use flowguard_engine::endpoint_set::{EndpointId, EndpointSet};
use flowguard_engine::exchange::{
    self, AnswerNeeds, Exchange, FleetCount, RequestStep, ResponseHead, ResponseStep, Scope,
    REGISTRY_KEY,
};
use flowguard_engine::fleet_join::{Fleet, Seed};
use flowguard_engine::learn::{self, LearnStats, Registry};
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use flowguard_engine::rule::Rule;
use flowguard_engine::verdict::Outcome;
use flowguard_proto::v1;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use table::{Table, TableError, TableHost};

/// Log levels, as Envoy numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
    Critical = 5,
}

/// Where log lines go (Envoy's log in the module; a test's buffer in tests).
pub type Log = fn(Level, &str);

/// Counters, under the Wasm filter's names (`flowguard.*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Requests,
    Sessionless,
    Allow,
    Flag,
    Block,
    LocalReplies,
    SessionsNew,
    Evictions,
    SlotConflicts,
    Midflow,
    Handovers,
    HostErrors,
    TelemetrySent,
    TelemetryDropped,
    TelemetryFailed,
    PolicyUpdates,
    PolicyRefused,
    PolicyFailed,
    FleetAsked,
    FleetJoined,
    FleetRefused,
    FleetUnavailable,
}

pub const COUNTERS: [(Counter, &str); 22] = [
    (Counter::Requests, "flowguard.requests"),
    (Counter::Sessionless, "flowguard.requests_without_session"),
    (Counter::Allow, "flowguard.verdict.allow"),
    (Counter::Flag, "flowguard.verdict.flag"),
    (Counter::Block, "flowguard.verdict.block"),
    (Counter::LocalReplies, "flowguard.local_replies"),
    (Counter::SessionsNew, "flowguard.sessions.new"),
    (Counter::Evictions, "flowguard.slots.evictions"),
    (Counter::SlotConflicts, "flowguard.slots.conflicts"),
    (Counter::Midflow, "flowguard.sessions.midflow"),
    (Counter::Handovers, "flowguard.sessions.handovers"),
    (Counter::HostErrors, "flowguard.host_errors"),
    (Counter::TelemetrySent, "flowguard.telemetry.sent"),
    (Counter::TelemetryDropped, "flowguard.telemetry.dropped"),
    (Counter::TelemetryFailed, "flowguard.telemetry.failed"),
    (Counter::PolicyUpdates, "flowguard.policy.updates"),
    (Counter::PolicyRefused, "flowguard.policy.refused"),
    (Counter::PolicyFailed, "flowguard.policy.poll_failed"),
    (Counter::FleetAsked, "flowguard.midflow.fleet_asked"),
    (Counter::FleetJoined, "flowguard.midflow.fleet_joined"),
    (Counter::FleetRefused, "flowguard.midflow.fleet_refused"),
    (
        Counter::FleetUnavailable,
        "flowguard.midflow.fleet_unavailable",
    ),
];

/// The telemetry thread's counts, by counter (reported from Envoy's main thread).
pub fn telemetry_counts(c: telemetry::Counts) -> [(Counter, u64); 6] {
    [
        (Counter::TelemetrySent, c.sent),
        (Counter::TelemetryDropped, c.dropped),
        (Counter::TelemetryFailed, c.failed),
        (Counter::PolicyUpdates, c.policy_updates),
        (Counter::PolicyRefused, c.policy_refused),
        (Counter::PolicyFailed, c.policy_failed),
    ]
}

/// Gauges, under the Wasm filter's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gauge {
    PolicyVersion,
    Endpoints,
    LearningSessions,
    LearningRequests,
    LearningUnlearned,
    LearningWeak,
}

pub const GAUGES: [(Gauge, &str); 6] = [
    (Gauge::PolicyVersion, "flowguard.policy.version"),
    (Gauge::Endpoints, "flowguard.endpoints"),
    (Gauge::LearningSessions, "flowguard.learning.sessions"),
    (Gauge::LearningRequests, "flowguard.learning.requests"),
    (
        Gauge::LearningUnlearned,
        "flowguard.learning.unlearned_sessions",
    ),
    (Gauge::LearningWeak, "flowguard.learning.weak_sessions"),
];

/// The counter name of a rule (`flowguard.rule.<id>`).
pub fn rule_counter(rule: Rule) -> String {
    format!("flowguard.rule.{}", rule.id())
}

/// What the host counts for a request step.
pub fn counted(step: &RequestStep) -> impl Iterator<Item = Counter> {
    let c = step.counts;
    [
        (true, Counter::Requests),
        (c.sessionless, Counter::Sessionless),
        (c.slot_conflict, Counter::SlotConflicts),
        (c.new_session, Counter::SessionsNew),
        (c.eviction, Counter::Evictions),
        (c.midflow, Counter::Midflow),
        (c.outcome == Some(Outcome::Allow), Counter::Allow),
        (c.outcome == Some(Outcome::Flag), Counter::Flag),
        (
            matches!(c.outcome, Some(Outcome::Block { .. })),
            Counter::Block,
        ),
        (step.reply.is_some(), Counter::LocalReplies),
        (c.fleet == Some(FleetCount::Joined), Counter::FleetJoined),
        (c.fleet == Some(FleetCount::Refused), Counter::FleetRefused),
        (
            c.fleet == Some(FleetCount::Unavailable),
            Counter::FleetUnavailable,
        ),
    ]
    .into_iter()
    .filter_map(|(on, counter)| on.then_some(counter))
}

/// What the host counts for a response step (and the rule it flagged, if any).
pub fn counted_response(step: &ResponseStep) -> impl Iterator<Item = Counter> {
    [
        (step.handed_over, Counter::Handovers),
        (step.slot_conflict, Counter::SlotConflicts),
        (step.sensitive, Counter::Flag),
    ]
    .into_iter()
    .filter_map(|(on, counter)| on.then_some(counter))
}

/// The rules a counted verdict fired.
pub fn fired(step: &RequestStep) -> impl Iterator<Item = Rule> {
    step.verdict
        .filter(|_| step.counts.outcome.is_some())
        .map(|v| v.fired)
        .into_iter()
        .flat_map(flowguard_engine::rule::RuleSet::iter)
}

/// The installed model with what goes with it; swapped whole.
pub struct Installed {
    pub model: Option<Model>,
    /// Learning-registry id to model id, for slots recorded while learning.
    pub registry_map: Vec<Option<EndpointId>>,
    /// Normalises while learning.
    pub base: Normaliser,
    /// How many learned variable positions `base` holds.
    prefixes: usize,
    /// The policy this host learned (relearning starts from it).
    policy: Option<Policy>,
    /// When each model endpoint was last called normally (seconds), for retiring those
    /// unused for `endpoints.retire_after_s`; shared by the models of one endpoint list.
    last_used: Arc<Vec<AtomicU32>>,
    /// The endpoints the model has retired for disuse.
    retired: EndpointSet,
}

fn last_used(model: Option<&Model>, now: u32) -> Arc<Vec<AtomicU32>> {
    Arc::new(
        (0..model.map_or(0, Model::len))
            .map(|_| AtomicU32::new(now))
            .collect(),
    )
}

impl Installed {
    /// The endpoint-id space learning counts in: the model's layout (0: the registry's).
    fn space(&self) -> u64 {
        self.model.as_ref().map_or(0, |m| m.layout)
    }
}

struct Learner {
    /// The id space `stats` count in ([`Installed::space`]).
    space: u64,
    stats: LearnStats,
    /// Requests merged since the registry was last looked at.
    since_sync: u32,
}

/// How often (requests) learning looks at the registry for new variable positions.
const SYNC_EVERY: u32 = 32;

/// One filter configuration: the state every worker shares ([`Core`]) and the telemetry
/// thread, if a collector is configured. Configurations with the same JSON share one
/// (`registry`), so a reload keeps the model and the sessions.
pub struct Filter {
    core: Arc<Core>,
    /// Dropped last: stops and joins the thread.
    telemetry: Option<telemetry::Telemetry>,
}

impl std::ops::Deref for Filter {
    type Target = Core;

    fn deref(&self) -> &Core {
        &self.core
    }
}

/// Settings and the state every worker (and the telemetry thread) shares.
pub struct Core {
    pub settings: Settings,
    table: Table,
    installed: RwLock<Arc<Installed>>,
    learner: Mutex<Learner>,
    started: AtomicU32,
    serial: AtomicU64,
    /// Learning's merged sessions, requests, unlearned and weak sessions, for the gauges.
    learned: [AtomicU64; 4],
    /// Bumped whenever a gauge's value may have changed.
    generation: AtomicU64,
    /// When unused endpoints were last looked for (ms).
    retire_checked_ms: AtomicU64,
    log: Log,
}

/// One stream's exchange and the filter it belongs to.
pub struct Stream {
    pub filter: Arc<Filter>,
    pub exchange: Exchange,
    /// The model the request was judged with (its answer is settled with the same one).
    installed: Option<Arc<Installed>>,
}

thread_local! {
    /// The learning counters of the exchange step under way, reused by each worker
    /// thread: a step that teaches nothing (a configured policy, say) leaves them empty
    /// and costs no allocation.
    static DELTA: std::cell::RefCell<LearnStats> = std::cell::RefCell::new(LearnStats::default());
}

/// Runs `step` with this thread's learning counters; returns what it counted if
/// learning takes it (`learning`), leaving the counters empty.
fn counting<T>(learning: bool, step: impl FnOnce(&mut LearnStats) -> T) -> (T, Option<LearnStats>) {
    DELTA.with(|cell| match cell.try_borrow_mut() {
        Ok(mut delta) => {
            let out = step(&mut delta);
            let taken = learning.then(|| std::mem::take(&mut *delta));
            (out, taken)
        }
        // Re-entered (never on Envoy's threads): count into a fresh one.
        Err(_) => {
            let mut delta = LearnStats::default();
            let out = step(&mut delta);
            (out, learning.then_some(delta))
        }
    })
}

fn now_secs() -> u32 {
    u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Filter {
    /// Parses the configuration JSON (the Wasm filter's; a collector is reached at
    /// `collector.address`), compiling a configured policy, and starts the telemetry thread
    /// if a collector is configured. The error names the offending key.
    pub fn new(json: &[u8], log: Log) -> Result<Filter, String> {
        let core = Arc::new(Core::new(json, log)?);
        let address = core
            .settings
            .collector
            .as_ref()
            .and_then(|c| c.address.clone());
        if let Some(a) = &address {
            telemetry::check_address(a)?;
        }
        let telemetry = match (&core.settings.collector, address) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(
                    "collector.address: the native module reports to the collector \
                    itself: give its address (http://host:port)"
                        .to_owned(),
                )
            }
            (Some(c), Some(address)) => Some(telemetry::Telemetry::start(
                address,
                &core.settings,
                c,
                core.clone(),
            )?),
        };
        Ok(Filter { core, telemetry })
    }

    pub fn stream(self: &Arc<Self>) -> Stream {
        Stream {
            filter: self.clone(),
            exchange: Exchange::default(),
            installed: None,
        }
    }

    /// Buffers a telemetry event (never waits; a full buffer drops and counts it).
    pub fn record(&self, event: flowguard_engine::telemetry::Event) {
        if let Some(t) = &self.telemetry {
            t.queue.push(event);
        }
    }

    /// Whether a paused request may ask the fleet now: a collector is configured and
    /// fewer than [`telemetry::MAX_WAITING`] questions are outstanding.
    pub fn can_ask(&self) -> bool {
        self.telemetry.as_ref().is_some_and(|t| t.queue.can_ask())
    }

    /// Asks the fleet about a paused request's session; `wake` is called from the
    /// telemetry thread once the answer is in. `None`: not asked (the budget decides).
    pub fn ask(
        &self,
        question: &flowguard_engine::exchange::Question,
        wake: telemetry::Waker,
    ) -> Option<Arc<telemetry::Answer>> {
        self.telemetry.as_ref()?.queue.ask(question, wake)
    }

    /// Questions to the fleet outstanding (tests).
    pub fn questions_outstanding(&self) -> u32 {
        self.telemetry.as_ref().map_or(0, |t| t.queue.outstanding())
    }

    /// The telemetry thread's counts and wakers, when a collector is configured.
    pub fn pending(&self) -> Option<&Arc<telemetry::Pending>> {
        self.telemetry.as_ref().map(|t| &t.queue.pending)
    }

    /// Whether the telemetry thread runs (tests).
    pub fn reporting(&self) -> bool {
        self.telemetry
            .as_ref()
            .is_some_and(telemetry::Telemetry::is_running)
    }
}

impl telemetry::Sink for Core {
    fn version(&self) -> u64 {
        self.installed().model.as_ref().map_or(0, |m| m.version)
    }

    fn install(&self, policy: Policy, model: Model) -> bool {
        if self.settings.policy.is_some() {
            return false; // the operator's policy stands
        }
        self.adopt(policy, model)
    }

    fn log(&self, level: Level, message: &str) {
        (self.log)(level, message);
    }
}

impl Core {
    fn new(json: &[u8], log: Log) -> Result<Core, String> {
        let settings = Settings::from_json(json).map_err(|e| e.to_string())?;
        let model = match &settings.policy {
            Some(policy) => {
                Some(Model::compile(policy, &settings).map_err(|e| format!("policy.{e}"))?)
            }
            None => None,
        };
        let base = exchange::base_normaliser(&settings, &Registry::default());
        let table = Table::for_capacity(settings.session.capacity);
        Ok(Core {
            installed: RwLock::new(Arc::new(Installed {
                last_used: last_used(model.as_ref(), now_secs()),
                retired: EndpointSet::EMPTY,
                model,
                registry_map: Vec::new(),
                base,
                prefixes: 0,
                policy: None,
            })),
            learner: Mutex::new(Learner {
                space: 0,
                stats: LearnStats::default(),
                since_sync: 0,
            }),
            started: AtomicU32::new(0),
            serial: AtomicU64::new(0),
            learned: std::array::from_fn(|_| AtomicU64::new(0)),
            generation: AtomicU64::new(1),
            retire_checked_ms: AtomicU64::new(0),
            table,
            settings,
            log,
        })
    }

    /// Changes whenever a gauge's value may have (a host reports them when it does).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// The gauges' values now.
    pub fn gauges(&self) -> [(Gauge, u64); 6] {
        let installed = self.installed();
        let (version, endpoints) = installed
            .model
            .as_ref()
            .map_or((0, 0), |m| (m.version, m.len() as u64));
        let [sessions, requests, unlearned, weak] = &self.learned;
        [
            (Gauge::PolicyVersion, version),
            (Gauge::Endpoints, endpoints),
            (Gauge::LearningSessions, sessions.load(Ordering::Relaxed)),
            (Gauge::LearningRequests, requests.load(Ordering::Relaxed)),
            (Gauge::LearningUnlearned, unlearned.load(Ordering::Relaxed)),
            (Gauge::LearningWeak, weak.load(Ordering::Relaxed)),
        ]
    }

    /// The installed model (and what goes with it).
    pub fn installed(&self) -> Arc<Installed> {
        self.installed
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn scope<'a>(&'a self, installed: &'a Installed) -> Scope<'a> {
        Scope {
            settings: &self.settings,
            model: installed.model.as_ref(),
            registry_map: &installed.registry_map,
            base_normaliser: &installed.base,
            started: self.started.load(Ordering::Relaxed),
            relearns: self.relearns(),
            registry: None,
        }
    }

    /// Whether exchanges judged with `installed` teach anything.
    fn learning(&self, installed: &Installed) -> bool {
        self.settings.policy.is_none() && (installed.model.is_none() || self.relearns())
    }

    /// Whether learning goes on once a model is active: for a model this host learned
    /// itself (a configured policy is the operator's), as the Wasm filter does.
    fn relearns(&self) -> bool {
        self.settings.policy.is_none() && self.settings.collector.is_none()
    }

    /// Merges an exchange's learning counters (counted in id space `space`); compiles and
    /// installs the model when the thresholds are met, and learns it again (adding only
    /// rules that now have their evidence) once the counters have grown by a quarter.
    fn learn(&self, delta: LearnStats, space: u64) {
        if self.settings.policy.is_some() {
            return;
        }
        let installed = self.installed();
        if installed.model.is_some() && !self.relearns() {
            return;
        }
        let first = {
            let mut learner = self.learner.lock().unwrap_or_else(PoisonError::into_inner);
            if learner.space != space {
                return; // counted in another model's ids (one was installed meanwhile)
            }
            if !delta.is_empty() {
                learner.stats.merge(&delta);
                let st = &learner.stats;
                let values = [
                    st.sessions,
                    st.requests,
                    st.unlearned_sessions,
                    st.weak_sessions,
                ];
                for (gauge, value) in self.learned.iter().zip(values) {
                    gauge.store(value, Ordering::Relaxed);
                }
                self.generation.fetch_add(1, Ordering::Relaxed);
            }
            learner.since_sync = learner.since_sync.saturating_add(1);
            let sync = learner.since_sync >= SYNC_EVERY;
            if sync {
                learner.since_sync = 0;
            }
            match (&installed.model, &installed.policy) {
                (None, _) if learner.stats.is_ready(&self.settings.learning) => {
                    Some(std::mem::take(&mut learner.stats))
                }
                (None, _) => {
                    if sync {
                        self.sync_normaliser(&installed);
                    }
                    None
                }
                (Some(model), Some(current))
                    if learn::relearn_due(
                        model.learned_sessions,
                        &learner.stats,
                        &self.settings.learning,
                    ) =>
                {
                    // Under the lock: one relearning at a time, rarely.
                    self.relearn(&installed, current, &learner.stats);
                    None
                }
                (Some(_), _) => None,
            }
        };
        if let Some(stats) = first {
            self.compile(&stats);
        }
    }

    /// Learns the installed policy again from `stats` (in its ids) and swaps it in.
    fn relearn(&self, installed: &Installed, current: &Policy, stats: &LearnStats) {
        let s = &self.settings;
        let policy = learn::relearn(current, stats, &s.learning, &s.limits);
        let model = match Model::compile(&policy, s) {
            Ok(m) => m,
            Err(e) => {
                (self.log)(
                    Level::Error,
                    &format!("flowguard: learned policy is invalid: {e}"),
                );
                return;
            }
        };
        self.log_learned(&policy, &model, stats);
        let mut slot = self
            .installed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::Relaxed);
        *slot = Arc::new(Installed {
            model: Some(model),
            registry_map: installed.registry_map.clone(),
            base: installed.base.clone(),
            prefixes: installed.prefixes,
            policy: Some(policy),
            // The same endpoint list: the same last-use times; retired again on the next
            // look.
            last_used: installed.last_used.clone(),
            retired: EndpointSet::EMPTY,
        });
    }

    fn log_learned(&self, policy: &Policy, model: &Model, stats: &LearnStats) {
        (self.log)(
            Level::Info,
            &format!(
                "flowguard: learned policy version {} from {} sessions, {} requests: {}",
                policy.version,
                stats.sessions,
                stats.requests,
                policy.to_json()
            ),
        );
        (self.log)(
            Level::Info,
            &format!(
                "flowguard: model version {} active ({} endpoints)",
                model.version,
                model.len()
            ),
        );
    }

    fn registry(&self) -> Registry {
        match self.table.get(REGISTRY_KEY) {
            Ok((Some(bytes), _)) => Registry::decode(&bytes),
            _ => Registry::default(),
        }
    }

    /// Learning normalises with the registry's learned variable positions.
    fn sync_normaliser(&self, installed: &Installed) {
        let registry = self.registry();
        let prefixes = registry.variable_prefixes().len();
        if prefixes == installed.prefixes {
            return;
        }
        let mut slot = self
            .installed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.model.is_none() {
            *slot = Arc::new(Installed {
                model: None,
                registry_map: Vec::new(),
                base: exchange::base_normaliser(&self.settings, &registry),
                prefixes,
                policy: None,
                last_used: Arc::new(Vec::new()),
                retired: EndpointSet::EMPTY,
            });
        }
    }

    /// From now on, requests to `endpoint` (of model `version`) are checked against their
    /// client address's failures: it answered 401/403 (the learning sample may have held
    /// none). The model is copied with the note and swapped in, once per endpoint.
    fn note_auth_failure(&self, version: u64, endpoint: EndpointId) {
        let noted = |i: &Installed| {
            i.model
                .as_ref()
                .is_none_or(|m| m.version != version || m.checks_address(Some(endpoint)))
        };
        if noted(&self.installed()) {
            return;
        }
        let mut slot = self
            .installed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if noted(&slot) {
            return;
        }
        let mut model = slot.model.clone();
        if let Some(m) = model.as_mut() {
            m.note_auth_failure(endpoint);
        }
        *slot = Arc::new(Installed {
            model,
            registry_map: slot.registry_map.clone(),
            base: slot.base.clone(),
            prefixes: slot.prefixes,
            policy: slot.policy.clone(),
            last_used: slot.last_used.clone(),
            retired: slot.retired,
        });
    }

    /// Retires the model's endpoints unused for `endpoints.retire_after_s` (looked at
    /// every `learning.tick_ms`): a copy of the model with them retired is swapped in
    /// when the set changed, as the Wasm filter's tick does.
    fn retire_unused(&self, now_ms: u64) {
        let retire_after = self.settings.endpoints.retire_after_s;
        if retire_after == 0 {
            return;
        }
        let last = self.retire_checked_ms.load(Ordering::Relaxed);
        let tick = u64::from(self.settings.learning.tick_ms);
        if now_ms.saturating_sub(last) < tick
            || self
                .retire_checked_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return; // not due, or another thread looks
        }
        let installed = self.installed();
        if installed.model.is_none() {
            return;
        }
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let mut retired = EndpointSet::EMPTY;
        for (i, last) in installed.last_used.iter().enumerate() {
            if now.saturating_sub(last.load(Ordering::Relaxed)) > retire_after {
                if let Ok(id) = EndpointId::try_from(i) {
                    retired.insert(id);
                }
            }
        }
        if retired == installed.retired {
            return;
        }
        let mut slot = self
            .installed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&slot, &installed) {
            return; // swapped meanwhile: the next look sees the new one
        }
        let mut model = slot.model.clone();
        if let Some(m) = model.as_mut() {
            m.set_retired(retired);
        }
        *slot = Arc::new(Installed {
            model,
            registry_map: slot.registry_map.clone(),
            base: slot.base.clone(),
            prefixes: slot.prefixes,
            policy: slot.policy.clone(),
            last_used: slot.last_used.clone(),
            retired,
        });
    }

    /// Compiles the learned policy and swaps the model in.
    fn compile(&self, stats: &LearnStats) {
        let registry = self.registry();
        let s = &self.settings;
        let policy = learn::compile(stats, &registry, &s.learning, &s.limits, 1);
        let model = match Model::compile(&policy, s) {
            Ok(m) => m,
            Err(e) => {
                (self.log)(
                    Level::Error,
                    &format!("flowguard: learned policy is invalid: {e}"),
                );
                return;
            }
        };
        self.log_learned(&policy, &model, stats);
        let layout = model.layout;
        let registry_map = self.install(policy, model, &registry);
        if self.relearns() {
            // Learning goes on in the model's ids: what was counted is carried over.
            let map = |id: EndpointId| registry_map.get(usize::from(id)).copied().flatten();
            let mut learner = self.learner.lock().unwrap_or_else(PoisonError::into_inner);
            let mut carried = stats.remap(map);
            carried.merge(&learner.stats.remap(map));
            learner.stats = carried;
            learner.space = layout;
        }
    }

    /// Swaps `model` in (for `policy`); slots recorded while learning map through
    /// `registry`. The learning-registry-to-model map.
    fn install(
        &self,
        policy: Policy,
        model: Model,
        registry: &Registry,
    ) -> Vec<Option<EndpointId>> {
        let registry_map: Vec<Option<EndpointId>> = registry
            .templates()
            .iter()
            .map(|t| {
                let (method, path) = t.split_once(' ').unwrap_or(("", t));
                let mut out = String::new();
                model.normaliser.normalise(method, path, &mut out);
                model.endpoint(&out)
            })
            .collect();
        let base = exchange::base_normaliser(&self.settings, registry);
        let mut slot = self
            .installed
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        self.generation.fetch_add(1, Ordering::Relaxed);
        *slot = Arc::new(Installed {
            last_used: last_used(Some(&model), now_secs()),
            retired: EndpointSet::EMPTY,
            model: Some(model),
            registry_map: registry_map.clone(),
            base,
            prefixes: registry.variable_prefixes().len(),
            policy: Some(policy),
        });
        registry_map
    }

    /// Installs a policy the collector served (compiled by the telemetry thread), unless
    /// its version is the installed one's.
    fn adopt(&self, policy: Policy, model: Model) -> bool {
        if self.installed().model.as_ref().map(|m| m.version) == Some(model.version) {
            return false;
        }
        let registry = self.registry();
        let layout = model.layout;
        self.install(policy, model, &registry);
        // Local learning stops with a collector; its counts were in another id space.
        let mut learner = self.learner.lock().unwrap_or_else(PoisonError::into_inner);
        learner.space = layout;
        learner.stats = LearnStats::default();
        true
    }
}

impl Stream {
    /// The request step; `address` reads the client address (`ip:port`) when the engine
    /// needs it. A table error fails open (the request passes; counted).
    pub fn request(
        &mut self,
        headers: &[(&[u8], &[u8])],
        address: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<RequestStep, TableError> {
        self.exchange.can_ask = self.filter.can_ask();
        self.judge(address, |x, scope, host, now_ms, serial, delta| {
            x.request(scope, host, headers, now_ms, serial, delta)
        })
    }

    /// Finishes a request paused by [`RequestStep::ask`] with the fleet's answer
    /// (`None`: none came in time), judged with the model installed now.
    pub fn resume(
        &mut self,
        answer: Option<v1::CompletedResponse>,
        address: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<RequestStep, TableError> {
        let installed = self.filter.installed();
        let fleet = match (answer, installed.model.as_ref()) {
            (Some(a), Some(model)) => Fleet::Answered(Seed::from_answer(
                model,
                a.known,
                a.completed.iter().map(String::as_str),
                a.on_object.iter().map(String::as_str),
            )),
            _ => Fleet::Unavailable,
        };
        self.judge(address, |x, scope, host, now_ms, serial, delta| {
            x.resume(scope, host, fleet, now_ms, serial, delta)
        })
    }

    /// Runs a request-phase step (the request, or its resumption) with the model
    /// installed now, and keeps that model for the answer.
    fn judge<F: FnMut() -> Option<Vec<u8>>>(
        &mut self,
        address: F,
        step: impl FnOnce(
            &mut Exchange,
            &Scope,
            &mut TableHost<'_, F>,
            u64,
            u64,
            &mut LearnStats,
        )
            -> Result<RequestStep, flowguard_engine::store::StoreError<TableError>>,
    ) -> Result<RequestStep, TableError> {
        let Stream {
            filter,
            exchange,
            installed: judged_with,
        } = self;
        let now_ms = now_ms();
        let now = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        if filter.started.load(Ordering::Relaxed) == 0 {
            let _ = filter
                .started
                .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
        let installed = filter.installed();
        let serial = filter.serial.fetch_add(1, Ordering::Relaxed);
        let mut host = TableHost {
            table: &filter.table,
            address,
        };
        let scope = filter.scope(&installed);
        let (step, delta) = counting(filter.learning(&installed), |delta| {
            step(exchange, &scope, &mut host, now_ms, serial, delta).map_err(store_error)
        });
        let space = installed.space();
        if let Some(delta) = delta {
            filter.learn(delta, space);
        }
        if let Ok(RequestStep {
            endpoint: Some(e),
            verdict: Some(v),
            ..
        }) = &step
        {
            if !v.fired.contains(Rule::DeprecatedEndpoint) {
                if let Some(t) = installed.last_used.get(usize::from(*e)) {
                    t.store(now, Ordering::Relaxed);
                }
            }
        }
        filter.retire_unused(now_ms);
        *judged_with = Some(installed);
        let mut step = step;
        if let Some(event) = step.as_mut().ok().and_then(|s| s.event.take()) {
            filter.record(event); // a local reply's, complete now
        }
        step
    }

    /// The response-head step, from the answer's headers (`end_of_stream`: no body).
    pub fn response_head(
        &mut self,
        headers: &[(&[u8], &[u8])],
        end_of_stream: bool,
        address: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<ResponseStep, TableError> {
        let head = ResponseHead::from_headers(&self.filter.settings, headers);
        self.response_head_of(&head, end_of_stream, address)
    }

    /// How much of the answer's head the response step needs, judged with the model the
    /// request was (`end_of_stream`: no body follows): a host reads no more (nothing at
    /// all: the step is skipped; the status alone: one header).
    pub fn answer_needs(&self, end_of_stream: bool) -> AnswerNeeds {
        match self.installed.as_deref() {
            Some(installed) => self
                .exchange
                .answer_needs_in(&self.filter.scope(installed), end_of_stream),
            None => self.exchange.answer_needs(&self.filter.settings),
        }
    }

    /// Whether [`Stream::finish`] has anything to settle or report; if not, a host may
    /// skip it.
    pub fn unfinished(&self) -> bool {
        self.installed.is_some() && self.exchange.unfinished()
    }

    /// The response-head step, from what the host read of the answer's head.
    pub fn response_head_of(
        &mut self,
        head: &ResponseHead,
        end_of_stream: bool,
        address: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<ResponseStep, TableError> {
        self.respond(address, |x, scope, host, delta| {
            x.response_head(scope, host, head, end_of_stream, now_ms(), delta)
        })
    }

    /// Whether the answer's body is wanted ([`Stream::response_body`]).
    pub fn wants_body(&self) -> bool {
        self.exchange.wants_body()
    }

    /// The response-body step: one chunk of the answer.
    pub fn response_body(
        &mut self,
        chunk: &[u8],
        end_of_stream: bool,
        address: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<ResponseStep, TableError> {
        self.respond(address, |x, scope, host, delta| {
            x.response_body(scope, host, chunk, end_of_stream, now_ms(), delta)
        })
    }

    /// The stream ended: what still waits for the body is settled by its status.
    pub fn finish(
        &mut self,
        address: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<ResponseStep, TableError> {
        let step = self.respond(address, |x, scope, host, delta| {
            x.finish(scope, host, now_ms(), delta)
        });
        self.installed = None;
        step
    }

    /// Runs a response step with the model the request was judged with.
    fn respond<F: FnMut() -> Option<Vec<u8>>>(
        &mut self,
        address: F,
        step: impl FnOnce(
            &mut Exchange,
            &Scope,
            &mut TableHost<'_, F>,
            &mut LearnStats,
        )
            -> Result<ResponseStep, flowguard_engine::store::StoreError<TableError>>,
    ) -> Result<ResponseStep, TableError> {
        let Stream {
            filter,
            exchange,
            installed,
        } = self;
        let Some(installed) = installed.as_deref() else {
            return Ok(ResponseStep::default());
        };
        let mut host = TableHost {
            table: &filter.table,
            address,
        };
        let scope = filter.scope(installed);
        let (step, delta) = counting(filter.learning(installed), |delta| {
            step(exchange, &scope, &mut host, delta).map_err(store_error)
        });
        if let Some(delta) = delta.filter(|d| !d.is_empty()) {
            filter.learn(delta, installed.space());
        }
        let mut step = step;
        if let Ok(s) = &mut step {
            for event in s.events.drain(..) {
                filter.record(event);
            }
        }
        let version = installed.model.as_ref().map(|m| m.version);
        if let (
            Ok(ResponseStep {
                auth_failure: Some(Some(endpoint)),
                ..
            }),
            Some(version),
        ) = (&step, version)
        {
            filter.note_auth_failure(version, *endpoint);
        }
        step
    }
}

/// Runs `body`; a panic is answered with `fallback` (fail open) and reported to `log`.
/// Every ABI hook runs under it: a panic must never unwind into Envoy.
pub fn guarded<T>(fallback: T, log: Log, body: impl FnOnce() -> T) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(_) => {
            // Even the log line must not unwind across the ABI.
            let _ = std::panic::catch_unwind(|| {
                log(Level::Error, "flowguard: panic caught, failing open")
            });
            fallback
        }
    }
}

fn store_error(e: flowguard_engine::store::StoreError<TableError>) -> TableError {
    match e {
        flowguard_engine::store::StoreError::Host(e) => e,
        flowguard_engine::store::StoreError::Contended => TableError::Contended,
    }
}

#[cfg(test)]
mod tests;
