//! flowguard as an Envoy dynamic module: the engine's exchange (`engine::exchange`) over
//! in-process state, loaded by `envoy.filters.http.dynamic_modules`.
//!
//! One [`Filter`] per filter configuration (Envoy's `filter_config`, the same JSON as the
//! Wasm filter's plugin configuration), shared by every worker thread: a bounded sharded
//! slot table ([`table::Table`], Envoy shared data's compare-and-swap semantics) and one
//! `engine::node::Node` behind a `Mutex`, with the table as its shared data: the Wasm
//! filter's learning, relearning, publishing, adopting and retiring, one code. Requests
//! judge with a snapshot of what the node holds ([`Installed`], behind an
//! `RwLock<Arc<…>>`, swapped whole when it changes); their learning counters wait for the
//! node's tick, which runs at most every `learning.tick_ms`: from Envoy's main thread
//! (woken by a ticker thread), or from a request that finds it due and the node free.
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
use flowguard_engine::endpoint_set::EndpointId;
use flowguard_engine::exchange::{
    AnswerNeeds, Exchange, FleetCount, RequestStep, ResponseHead, ResponseStep, Scope, REGISTRY_KEY,
};
use flowguard_engine::fleet_join::{Fleet, Seed};
use flowguard_engine::learn::{LearnStats, Registry};
use flowguard_engine::model::Model;
use flowguard_engine::node::{Happened, Node};
use flowguard_engine::policy::Policy;
use flowguard_engine::rule::Rule;
use flowguard_engine::verdict::Outcome;
use flowguard_proto::v1;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
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

/// What requests judge with: a snapshot of the node's model, registry map and normaliser
/// ([`Core::node`]), swapped whole whenever the node's state changes.
pub struct Installed {
    pub model: Option<Model>,
    /// Learning-registry id to model id, for slots recorded while learning.
    pub registry_map: Vec<Option<EndpointId>>,
    /// Normalises while learning.
    pub base: Normaliser,
    /// How many learned variable positions the registry held when `base` was taken.
    prefixes: usize,
    /// When each model endpoint was last called normally here (seconds); merged into the
    /// node's last-use times on its tick.
    last_used: Arc<Vec<AtomicU32>>,
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

    fn version(&self) -> u64 {
        self.model.as_ref().map_or(0, |m| m.version)
    }
}

/// Learning counters of exchanges not yet merged into the node, and the id space they
/// count in.
#[derive(Default)]
struct Pending {
    space: u64,
    stats: LearnStats,
}

/// One filter configuration: the state every worker shares ([`Core`]) and the telemetry
/// thread, if a collector is configured. Configurations with the same JSON share one
/// (`registry`), so a reload keeps the model and the sessions.
pub struct Filter {
    core: Arc<Core>,
    /// Dropped with the filter: stops the ticker thread ([`ticker`]).
    _ticker: Option<std::sync::mpsc::Sender<()>>,
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
    /// What requests judge with: a snapshot of `node`.
    installed: RwLock<Arc<Installed>>,
    /// The engine's node (`engine::node`) over the table: learning, relearning,
    /// publishing, adopting and retiring, ticked every `learning.tick_ms`.
    node: Mutex<Node>,
    pending: Mutex<Pending>,
    /// Endpoints noted failing authentication (model version, endpoint), for the node.
    auth_notes: Mutex<Vec<(u64, EndpointId)>>,
    started: AtomicU32,
    serial: AtomicU64,
    /// Learning's merged sessions, requests, unlearned and weak sessions, for the gauges.
    learned: [AtomicU64; 4],
    /// Bumped whenever a gauge's value may have changed.
    generation: AtomicU64,
    /// When the node was last ticked (ms).
    ticked_ms: AtomicU64,
    /// What wakes Envoy's main thread to tick (the last id given, and the wakers).
    wakers: Mutex<(u64, Vec<(u64, telemetry::Waker)>)>,
    log: Log,
}

/// One stream's exchange and the filter it belongs to.
pub struct Stream {
    pub filter: Arc<Filter>,
    pub exchange: Exchange,
    /// The model the request was judged with (its answer is settled with the same one).
    installed: Option<Arc<Installed>>,
}

impl Drop for Stream {
    /// Gives the template buffer back to the worker's spares.
    fn drop(&mut self) {
        let mut template = std::mem::take(&mut self.exchange.template);
        if template.capacity() == 0 || template.capacity() > MAX_SPARE_TEMPLATE {
            return;
        }
        template.clear();
        let _ = TEMPLATES.try_with(|t| {
            let mut spares = t.borrow_mut();
            if spares.len() < MAX_SPARE_TEMPLATES {
                spares.push(template);
            }
        });
    }
}

/// Spare template buffers each worker thread keeps (a stream's endpoint template is
/// written into one, so the request path allocates none), and the largest kept.
const MAX_SPARE_TEMPLATES: usize = 64;
const MAX_SPARE_TEMPLATE: usize = 512;

thread_local! {
    static TEMPLATES: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };

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

/// Every `learning.tick_ms`, off the request path, wakes Envoy's main thread to tick the
/// node ([`Core::register_ticker`]; with none registered, ticks it itself), so that
/// learning completes (and endpoints retire) when traffic stops; requests tick it too
/// when due. Stops once the filter (holding the returned sender) is dropped.
fn ticker(core: &Arc<Core>) -> Option<std::sync::mpsc::Sender<()>> {
    let s = &core.settings;
    if s.policy.is_some() && s.endpoints.retire_after_s == 0 {
        return None; // nothing to learn or retire
    }
    let period = std::time::Duration::from_millis(u64::from(s.learning.tick_ms.max(1)));
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let weak = Arc::downgrade(core);
    let spawned = std::thread::Builder::new()
        .name("flowguard-tick".to_owned())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(period)
            {
                let Some(core) = weak.upgrade() else {
                    return;
                };
                let wakers = core.wakers.lock().unwrap_or_else(PoisonError::into_inner);
                if wakers.1.is_empty() {
                    drop(wakers);
                    core.tick_if_due(now_ms());
                } else {
                    // Envoy's main thread ticks (and reports the gauges).
                    wakers.1.iter().for_each(|(_, wake)| wake());
                }
            }
        });
    spawned.ok().map(|_| stop)
}

fn now_secs() -> u32 {
    u32::try_from(now_ms() / 1000).unwrap_or(u32::MAX)
}

pub fn now_ms() -> u64 {
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
        let ticker = ticker(&core);
        Ok(Filter {
            core,
            _ticker: ticker,
            telemetry,
        })
    }

    pub fn stream(self: &Arc<Self>) -> Stream {
        let template = TEMPLATES.with(|t| t.borrow_mut().pop()).unwrap_or_default();
        let mut exchange = Exchange::default();
        exchange.template = template;
        Stream {
            filter: self.clone(),
            exchange,
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
        self.installed().version()
    }

    fn install(&self, policy: Policy, _model: Model) -> bool {
        if self.settings.policy.is_some() {
            return false; // the operator's policy stands
        }
        self.adopt(&policy)
    }

    fn log(&self, level: Level, message: &str) {
        (self.log)(level, message);
    }
}

impl Core {
    fn new(json: &[u8], log: Log) -> Result<Core, String> {
        let settings = Settings::from_json(json).map_err(|e| e.to_string())?;
        let mut node = Node::new(&settings);
        let mut happened = Vec::new();
        if let Some(policy) = &settings.policy {
            let model = Model::compile(policy, &settings).map_err(|e| format!("policy.{e}"))?;
            happened.push(node.install(model, now_secs()));
        }
        let table = Table::for_capacity(settings.session.capacity);
        let core = Core {
            installed: RwLock::new(Arc::new(Core::snapshot(&settings, &mut node, None))),
            node: Mutex::new(node),
            pending: Mutex::new(Pending::default()),
            auth_notes: Mutex::new(Vec::new()),
            started: AtomicU32::new(0),
            serial: AtomicU64::new(0),
            learned: std::array::from_fn(|_| AtomicU64::new(0)),
            generation: AtomicU64::new(1),
            ticked_ms: AtomicU64::new(0),
            wakers: Mutex::new((0, Vec::new())),
            table,
            settings,
            log,
        };
        core.report(happened);
        Ok(core)
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
            relearns: Node::relearns(&self.settings),
            registry: None,
        }
    }

    /// Whether exchanges judged with `installed` teach anything.
    fn learning(&self, installed: &Installed) -> bool {
        self.settings.policy.is_none()
            && (installed.model.is_none() || Node::relearns(&self.settings))
    }

    /// Keeps an exchange's learning counters (counted in id space `space`) for the
    /// node's next tick; counters of another space than the snapshot's are dropped.
    fn learn(&self, delta: &LearnStats, space: u64) {
        if delta.is_empty() {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.space != space {
            if space != self.installed().space() {
                return; // judged with a model replaced meanwhile
            }
            *pending = Pending {
                space,
                stats: LearnStats::default(),
            };
        }
        pending.stats.merge(delta);
    }

    /// Registers what wakes a thread to call [`Core::tick_if_due`] every
    /// `learning.tick_ms` (Envoy's main thread, through a configuration's scheduler).
    pub fn register_ticker(&self, wake: telemetry::Waker) -> u64 {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        wakers.0 += 1;
        let id = wakers.0;
        wakers.1.push((id, wake));
        id
    }

    /// Once this returns, the waker `id` is never called again.
    pub fn unregister_ticker(&self, id: u64) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        wakers.1.retain(|(i, _)| *i != id);
    }

    /// The node's tick, if `learning.tick_ms` has passed since the last one and no other
    /// thread ticks now (a request never waits for it).
    pub fn tick_if_due(&self, now_ms: u64) {
        let last = self.ticked_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(last) < u64::from(self.settings.learning.tick_ms)
            || self
                .ticked_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let node = match self.node.try_lock() {
            Ok(node) => node,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        self.tick_locked(node, now_ms);
    }

    /// Ticks the node now, waiting for the lock (the ticker thread; tests).
    pub fn tick(&self) {
        let now_ms = now_ms();
        self.ticked_ms.store(now_ms, Ordering::Relaxed);
        let node = self.node.lock().unwrap_or_else(PoisonError::into_inner);
        self.tick_locked(node, now_ms);
    }

    /// Merges what requests counted and last used into the node, ticks it
    /// (`engine::node`: merge counters, share last-use times and retire, adopt, learn or
    /// relearn and publish, all through the table) and swaps in what it holds now.
    fn tick_locked(&self, mut node: MutexGuard<'_, Node>, now_ms: u64) {
        let installed = self.installed();
        let pending =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let layout = node.model.as_ref().map_or(0, |m| m.layout);
        if pending.space == layout {
            node.delta.merge(&pending.stats);
        }
        if installed.version() == node.model_version() {
            for (mine, used) in node.last_used.iter_mut().zip(installed.last_used.iter()) {
                *mine = (*mine).max(used.load(Ordering::Relaxed));
            }
        }
        let notes = std::mem::take(
            &mut *self
                .auth_notes
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let version = node.model_version();
        if let Some(model) = node.model.as_mut() {
            for (_, endpoint) in notes.iter().filter(|(v, _)| *v == version) {
                model.note_auth_failure(*endpoint);
            }
        }
        if self.settings.policy.is_none() && node.model.is_none() {
            // The registry the exchanges write: its learned variable positions normalise.
            if let Ok((Some(bytes), _)) = self.table.get(REGISTRY_KEY) {
                node.adopt_registry(&self.settings, Registry::decode(&bytes));
            }
        }
        let mut host = TableHost {
            table: &self.table,
            address: || None,
        };
        let mut happened = Vec::new();
        if let Err(e) = node.tick(&self.settings, &mut host, now_ms, &mut happened) {
            (self.log)(Level::Debug, &format!("flowguard: tick: {e:?}"));
        }
        self.report(happened);
        self.refresh(&mut node, &installed);
    }

    /// Swaps in a snapshot of what the node holds, unless nothing requests see changed.
    fn refresh(&self, node: &mut Node, installed: &Arc<Installed>) {
        let same_model = installed.version() == node.model_version();
        let retiring = self.settings.endpoints.retire_after_s != 0;
        let noted = node.model.as_ref().is_some_and(|m| {
            installed.model.as_ref().is_some_and(|i| {
                (0..m.len()).any(|e| {
                    EndpointId::try_from(e)
                        .is_ok_and(|e| m.checks_address(Some(e)) != i.checks_address(Some(e)))
                })
            })
        });
        if same_model
            && !noted
            && !(retiring && node.model.is_some())
            && installed.prefixes == node.registry.variable_prefixes().len()
        {
            return;
        }
        let keep = same_model.then_some(&installed.last_used);
        let snapshot = Core::snapshot(&self.settings, node, keep);
        *self
            .installed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// What requests judge with, from the node (`last_used`: the times to keep, for the
    /// same model).
    fn snapshot(
        settings: &Settings,
        node: &mut Node,
        last: Option<&Arc<Vec<AtomicU32>>>,
    ) -> Installed {
        let prefixes = node.registry.variable_prefixes().len();
        let (scope, _) = node.scope(settings);
        let now = now_secs();
        Installed {
            last_used: last.cloned().unwrap_or_else(|| last_used(scope.model, now)),
            model: scope.model.cloned(),
            registry_map: scope.registry_map.to_vec(),
            base: scope.base_normaliser.clone(),
            prefixes,
        }
    }

    /// Logs and counts what the node did.
    fn report(&self, happened: Vec<Happened>) {
        for h in happened {
            match h {
                Happened::Installed { version, endpoints } => {
                    self.generation.fetch_add(1, Ordering::Relaxed);
                    (self.log)(
                        Level::Info,
                        &format!(
                            "flowguard: model version {version} active ({endpoints} endpoints)"
                        ),
                    );
                }
                Happened::Learned {
                    version,
                    sessions,
                    requests,
                    json,
                } => (self.log)(
                    Level::Info,
                    &format!(
                        "flowguard: learned policy version {version} from {sessions} sessions, \
                         {requests} requests: {json}"
                    ),
                ),
                Happened::Refused { version, error } => (self.log)(
                    Level::Error,
                    &format!("flowguard: refused policy version {version}: {error}"),
                ),
                Happened::Invalid { error } => (self.log)(
                    Level::Error,
                    &format!("flowguard: learned policy is invalid: {error}"),
                ),
                Happened::Progress {
                    sessions,
                    requests,
                    unlearned,
                    weak,
                } => {
                    let values = [sessions, requests, unlearned, weak];
                    let mut changed = false;
                    for (gauge, value) in self.learned.iter().zip(values) {
                        changed |= gauge.swap(value, Ordering::Relaxed) != value;
                    }
                    if changed {
                        self.generation.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    /// From now on, requests to `endpoint` (of model `version`) are checked against their
    /// client address's failures: it answered 401/403 (the learning sample may have held
    /// none). The snapshot is copied with the note and swapped in, once per endpoint; the
    /// node's model takes it on its next tick.
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
            last_used: slot.last_used.clone(),
        });
        drop(slot);
        self.auth_notes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((version, endpoint));
    }

    /// Publishes a policy the collector served (`Node::publish`) and adopts it, unless
    /// its version is the node's.
    fn adopt(&self, policy: &Policy) -> bool {
        let mut node = self.node.lock().unwrap_or_else(PoisonError::into_inner);
        if node.model_version() == policy.version {
            return false;
        }
        let mut host = TableHost {
            table: &self.table,
            address: || None,
        };
        let published = Node::published_version(&mut host)
            .and_then(|(_, cas)| Node::publish(&mut host, policy.version, &policy.to_json(), cas));
        if published != Ok(true) {
            return false;
        }
        let installed = self.installed();
        let mut happened = Vec::new();
        let adopted = node.adopt_published(&self.settings, &mut host, now_secs(), &mut happened);
        let done = adopted.is_ok()
            && happened.iter().any(
                |h| matches!(h, Happened::Installed { version, .. } if *version == policy.version),
            );
        self.report(happened);
        self.refresh(&mut node, &installed);
        done
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
        if let Some(delta) = delta {
            filter.learn(&delta, installed.space());
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
        *judged_with = Some(installed);
        filter.tick_if_due(now_ms);
        let mut step = step;
        if let Some(event) = step.as_mut().ok().and_then(|s| s.event.take()) {
            filter.record(*event); // a local reply's, complete now
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
            x.response_head_clocked(scope, host, head, end_of_stream, || Ok(now_ms()), delta)
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
            x.response_body_clocked(scope, host, chunk, end_of_stream, || Ok(now_ms()), delta)
        })
    }

    /// The stream ended: what still waits for the body is settled by its status.
    pub fn finish(
        &mut self,
        address: impl FnMut() -> Option<Vec<u8>>,
    ) -> Result<ResponseStep, TableError> {
        let step = self.respond(address, |x, scope, host, delta| {
            x.finish_clocked(scope, host, || Ok(now_ms()), delta)
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
        if let Some(delta) = delta {
            filter.learn(&delta, installed.space());
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
