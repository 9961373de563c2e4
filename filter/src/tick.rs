//! Periodic work of each worker: prompt telemetry, then (every `learning.tick_ms`) the
//! node's tick (`engine::node`: merge learning counters, adopt, learn or relearn and
//! publish, retire) and the collector's report and policy poll.

use crate::host::{self, EnvoyHost, HostResult};
use crate::metrics::Metrics;
use crate::worker::Worker;
use proxy_wasm::types::LogLevel;

/// The tick period with a collector: how long a completion some rule waits for may wait
/// in the prompt buffer before it is sent (the rest of the periodic work keeps
/// `learning.tick_ms`).
pub const PROMPT_MS: u32 = 50;

/// The host's tick period for these settings.
pub fn period_ms(w: &Worker) -> u32 {
    let tick = w.settings.learning.tick_ms;
    match w.telemetry {
        Some(_) => tick.min(PROMPT_MS),
        None => tick,
    }
}

pub fn run(w: &mut Worker) {
    if let Some(t) = w.telemetry.as_mut() {
        if t.has_prompt() {
            t.send_prompt(&w.metrics);
        }
    }
    let now = host::now_ms().unwrap_or(0);
    let tick = u64::from(w.settings.learning.tick_ms);
    // A short tick (prompt reports) does nothing else until `tick_ms` has passed.
    if now != 0 && now.saturating_sub(w.last_tick_ms) + u64::from(PROMPT_MS) / 2 < tick {
        Metrics::flush();
        return;
    }
    w.last_tick_ms = now;
    if let Err(e) = step(w, now) {
        Metrics::inc(w.metrics.host_errors);
        host::log(
            LogLevel::Debug,
            &format!("flowguard: tick: host error {e:?}"),
        );
    }
    Metrics::flush();
}

fn step(w: &mut Worker, now_ms: u64) -> HostResult<()> {
    let mut happened = Vec::new();
    let ticked = w
        .node
        .tick(&w.settings, &mut EnvoyHost, now_ms, &mut happened)
        .map_err(host::from_store);
    happened.into_iter().for_each(|h| w.report(h));
    if let Some(t) = w.telemetry.as_mut() {
        let version = w.node.model_version();
        t.tick(now_ms, version, &w.metrics);
    }
    ticked
}

/// Installs the model already published in shared data, if any (`Node::adopt_published`).
pub fn adopt_published(w: &mut Worker) -> HostResult<()> {
    let mut happened = Vec::new();
    let now = host::now_secs()?;
    let adopted = w
        .node
        .adopt_published(&w.settings, &mut EnvoyHost, now, &mut happened);
    happened.into_iter().for_each(|h| w.report(h));
    adopted
}
