//! One worker's state: settings, its node (model and learning, `engine::node`), metrics,
//! telemetry and a scratch buffer.
//!
//! Each Envoy worker thread runs its own VM, so this is per worker; what workers share
//! goes through shared data (`engine::keys`).

use crate::host;
use crate::metrics::Metrics;
use crate::telemetry::Telemetry;
use flowguard_engine::config::Settings;
use flowguard_engine::exchange::Scope;
use flowguard_engine::learn::LearnStats;
use flowguard_engine::model::Model;
use flowguard_engine::node::{Happened, Node};
use proxy_wasm::types::LogLevel;

/// This worker's state, shared by the root context and its HTTP contexts (one thread).
pub type SharedWorker = std::rc::Rc<std::cell::RefCell<Option<Worker>>>;

pub struct Worker {
    pub settings: Settings,
    pub metrics: Metrics,
    pub node: Node,
    /// The template buffer each request's exchange borrows, so none allocates one.
    pub scratch_template: String,
    pub requests_seen: u64,
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
        Worker {
            telemetry: settings
                .collector
                .clone()
                .map(|c| Telemetry::new(c, settings.mode)),
            node: Node::new(&settings),
            settings,
            metrics: Metrics::define(),
            scratch_template: String::new(),
            requests_seen: 0,
            fleet_waiting: 0,
            last_tick_ms: 0,
        }
    }

    /// The installed model, if any.
    pub fn model(&self) -> Option<&Model> {
        self.node.model.as_ref()
    }

    /// What the exchange (`engine::exchange`) judges with, and the learning counters it
    /// adds to.
    pub fn scope(&mut self) -> (Scope<'_>, &mut LearnStats) {
        self.node.scope(&self.settings)
    }

    /// Installs a compiled model for this worker.
    pub fn install(&mut self, model: Model) {
        let now = host::now_secs().unwrap_or(0);
        let happened = self.node.install(model, now);
        self.report(happened);
    }

    /// Logs and counts what the node did.
    pub fn report(&self, happened: Happened) {
        let m = &self.metrics;
        match happened {
            Happened::Installed { version, endpoints } => {
                Metrics::set(m.policy_version, version);
                Metrics::set(m.endpoints, endpoints as u64);
                host::log(
                    LogLevel::Info,
                    &format!("flowguard: model version {version} active ({endpoints} endpoints)"),
                );
            }
            Happened::Learned {
                version,
                sessions,
                requests,
                json,
            } => host::log(
                LogLevel::Info,
                &format!(
                    "flowguard: learned policy version {version} from {sessions} sessions, \
                     {requests} requests: {json}"
                ),
            ),
            Happened::Refused { version, error } => host::log(
                LogLevel::Error,
                &format!("flowguard: refused policy version {version}: {error}"),
            ),
            Happened::Invalid { error } => host::log(
                LogLevel::Error,
                &format!("flowguard: learned policy is invalid: {error}"),
            ),
            Happened::Progress {
                sessions,
                requests,
                unlearned,
                weak,
            } => {
                Metrics::set(m.learning_sessions, sessions);
                Metrics::set(m.learning_requests, requests);
                Metrics::set(m.learning_unlearned, unlearned);
                Metrics::set(m.learning_weak, weak);
            }
        }
    }
}
