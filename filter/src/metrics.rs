//! Envoy stats the filter reports (under `wasmcustom.flowguard.*` in `/stats`).

use crate::host;
use flowguard_engine::rule::Rule;
use proxy_wasm::types::MetricType;

/// Ids of the filter's metrics in this VM; a metric the host refused to define is `None`
/// and silently not reported.
pub struct Metrics {
    pub requests: Option<u32>,
    pub sessionless: Option<u32>,
    pub allow: Option<u32>,
    pub flag: Option<u32>,
    pub block: Option<u32>,
    pub local_replies: Option<u32>,
    pub sessions_new: Option<u32>,
    pub evictions: Option<u32>,
    pub slot_conflicts: Option<u32>,
    pub handovers: Option<u32>,
    pub midflow: Option<u32>,
    /// New sessions' skipped steps asked about, and what came of it (`crate::fleet`).
    pub fleet_asked: Option<u32>,
    pub fleet_joined: Option<u32>,
    pub fleet_refused: Option<u32>,
    pub fleet_unavailable: Option<u32>,
    pub host_errors: Option<u32>,
    pub policy_version: Option<u32>,
    pub learning_sessions: Option<u32>,
    pub learning_requests: Option<u32>,
    pub learning_unlearned: Option<u32>,
    pub learning_weak: Option<u32>,
    pub endpoints: Option<u32>,
    pub telemetry_sent: Option<u32>,
    pub telemetry_dropped: Option<u32>,
    pub telemetry_failed: Option<u32>,
    pub policy_updates: Option<u32>,
    pub policy_refused: Option<u32>,
    pub policy_failed: Option<u32>,
    rules: [Option<u32>; Rule::ALL.len()],
}

thread_local! {
    /// Counter increments not yet reported (a VM is single-threaded; ~30 entries).
    static PENDING: std::cell::RefCell<Vec<(u32, u64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn counter(name: &str) -> Option<u32> {
    host::define_metric(MetricType::Counter, name).ok()
}

fn gauge(name: &str) -> Option<u32> {
    host::define_metric(MetricType::Gauge, name).ok()
}

impl Metrics {
    pub fn define() -> Metrics {
        Metrics {
            requests: counter("flowguard.requests"),
            sessionless: counter("flowguard.requests_without_session"),
            allow: counter("flowguard.verdict.allow"),
            flag: counter("flowguard.verdict.flag"),
            block: counter("flowguard.verdict.block"),
            local_replies: counter("flowguard.local_replies"),
            sessions_new: counter("flowguard.sessions.new"),
            evictions: counter("flowguard.slots.evictions"),
            slot_conflicts: counter("flowguard.slots.conflicts"),
            handovers: counter("flowguard.sessions.handovers"),
            midflow: counter("flowguard.sessions.midflow"),
            fleet_asked: counter("flowguard.midflow.fleet_asked"),
            fleet_joined: counter("flowguard.midflow.fleet_joined"),
            fleet_refused: counter("flowguard.midflow.fleet_refused"),
            fleet_unavailable: counter("flowguard.midflow.fleet_unavailable"),
            host_errors: counter("flowguard.host_errors"),
            policy_version: gauge("flowguard.policy.version"),
            learning_sessions: gauge("flowguard.learning.sessions"),
            learning_requests: gauge("flowguard.learning.requests"),
            learning_unlearned: gauge("flowguard.learning.unlearned_sessions"),
            learning_weak: gauge("flowguard.learning.weak_sessions"),
            endpoints: gauge("flowguard.endpoints"),
            telemetry_sent: counter("flowguard.telemetry.sent"),
            telemetry_dropped: counter("flowguard.telemetry.dropped"),
            telemetry_failed: counter("flowguard.telemetry.failed"),
            policy_updates: counter("flowguard.policy.updates"),
            policy_refused: counter("flowguard.policy.refused"),
            policy_failed: counter("flowguard.policy.poll_failed"),
            rules: Rule::ALL.map(|r| counter(&format!("flowguard.rule.{}", r.id()))),
        }
    }

    pub fn inc(id: Option<u32>) {
        Metrics::add(id, 1);
    }

    /// Counts locally; `flush` (on tick) hands the sums to Envoy, so the request path
    /// makes no host call for metrics.
    pub fn add(id: Option<u32>, by: u64) {
        let Some(id) = id else { return };
        PENDING.with(|p| {
            let Ok(mut p) = p.try_borrow_mut() else {
                return;
            };
            match p.iter_mut().find(|(k, _)| *k == id) {
                Some((_, n)) => *n = n.saturating_add(by),
                None => p.push((id, by)),
            }
        });
    }

    /// Reports the counts accumulated since the last flush.
    pub fn flush() {
        PENDING.with(|p| {
            let Ok(mut p) = p.try_borrow_mut() else {
                return;
            };
            for (id, n) in p.iter_mut().filter(|(_, n)| *n > 0) {
                let _ = host::increment_metric(*id, i64::try_from(*n).unwrap_or(i64::MAX));
                *n = 0;
            }
        });
    }

    pub fn set(id: Option<u32>, value: u64) {
        if let Some(id) = id {
            let _ = host::record_metric(id, value);
        }
    }

    pub fn rule(&self, rule: Rule) {
        Metrics::inc(self.rules.get(rule as usize).copied().flatten());
    }
}
