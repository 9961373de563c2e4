//! Periodic work of each worker: merge learning counters, pick up a new model, and
//! compile and publish one when the learning thresholds are met.

use crate::host::{self, HostResult};
use crate::metrics::Metrics;
use crate::shared;
use crate::worker::Worker;
use flowguard_engine::endpoint_set::{EndpointId, EndpointSet};
use flowguard_engine::learn::{self, LearnStats, Registry};
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
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
    if let Err(e) = step(w) {
        Metrics::inc(w.metrics.host_errors);
        host::log(
            LogLevel::Debug,
            &format!("flowguard: tick: host error {e:?}"),
        );
    }
    Metrics::flush();
}

fn step(w: &mut Worker) -> HostResult<()> {
    merge_delta(w)?;
    if let Some(t) = w.telemetry.as_mut() {
        let version = w.model.as_ref().map_or(0, |m| m.version);
        t.tick(host::now_ms()?, version, &w.metrics);
    }

    retire_unused(w)?;
    if w.settings.policy.is_some() {
        return Ok(());
    }
    let (version, cas) = shared::model_version()?;
    if version != 0 && version != w.model_version() {
        return adopt(w, version);
    }
    if w.model.is_none() {
        learn_or_wait(w, cas)?;
    } else if w.relearns() {
        relearn_or_wait(w, cas)?;
    }
    Ok(())
}

fn merge_delta(w: &mut Worker) -> HostResult<()> {
    if w.delta.is_empty() {
        return Ok(());
    }
    let (delta, space) = (&w.delta, w.delta_space);
    shared::update(shared::STATS_KEY, |bytes| {
        let (shared_space, mut stats) = shared::decode_stats(bytes);
        if shared_space != space {
            // Counted in another model's ids (a publication is under way): dropped.
            return None;
        }
        stats.merge(delta);
        Some(shared::encode_stats(space, &stats))
    })?;
    w.delta = LearnStats::default();
    Ok(())
}

fn refresh_registry(w: &mut Worker) -> HostResult<()> {
    let (bytes, _) = host::shared_get(shared::REGISTRY_KEY)?;
    w.registry = bytes.map(|b| Registry::decode(&b)).unwrap_or_default();
    w.sync_normaliser();
    Ok(())
}

/// Installs the model already published in shared data, if any, so that a VM started
/// (or restarted, or reloaded with a listener update) after learning enforces from its
/// first request, and every worker from the first request after another published it,
/// rather than from their next tick. One probe read per call; a version already tried
/// (installed or refused) is not parsed again.
pub fn adopt_published(w: &mut Worker) -> HostResult<()> {
    if w.settings.policy.is_some() {
        return Ok(());
    }
    match shared::model_version()? {
        (0, _) => Ok(()),
        (version, _) => adopt(w, version),
    }
}

/// Loads published `version` unless this worker already installed or refused it (so a
/// refused policy is parsed and logged once, not on every tick or request).
fn adopt(w: &mut Worker, version: u64) -> HostResult<()> {
    if version != w.tried_version && load_model(w, version)? {
        w.tried_version = version;
    }
    Ok(())
}

/// Installs the policy another worker published; a bad one is refused and reported.
/// Returns whether the version was settled (installed or refused).
fn load_model(w: &mut Worker, version: u64) -> HostResult<bool> {
    let (bytes, _) = host::shared_get(shared::MODEL_KEY)?;
    let Some(bytes) = bytes else {
        return Ok(false); // published version, body not written yet: next tick
    };
    let compiled = Policy::from_json(&bytes).and_then(|p| Model::compile(&p, &w.settings));
    match compiled {
        Ok(model) if model.version == version => {
            refresh_registry(w)?;
            w.install(model);
            Ok(true)
        }
        Ok(_) => Ok(false), // the body is of another version: mid-publication
        Err(e) => {
            host::log(
                LogLevel::Error,
                &format!("flowguard: refused policy version {version}: {e}"),
            );
            Ok(true)
        }
    }
}

fn learn_or_wait(w: &mut Worker, version_cas: u32) -> HostResult<()> {
    let (bytes, _) = host::shared_get(shared::STATS_KEY)?;
    let (space, stats) = shared::decode_stats(bytes.as_deref());
    if space != 0 {
        return Ok(()); // a model was published: its adoption is this tick's job
    }
    Metrics::set(w.metrics.learning_sessions, stats.sessions);
    Metrics::set(w.metrics.learning_requests, stats.requests);
    Metrics::set(w.metrics.learning_unlearned, stats.unlearned_sessions);
    Metrics::set(w.metrics.learning_weak, stats.weak_sessions);
    if !stats.is_ready(&w.settings.learning) {
        return Ok(());
    }
    refresh_registry(w)?;
    let policy = learn::compile(
        &stats,
        &w.registry,
        &w.settings.learning,
        &w.settings.limits,
        1,
    );
    if !claim_and_publish(w, &policy, version_cas, stats.sessions, stats.requests)? {
        return Ok(());
    }
    if w.relearns() {
        // Learning goes on in the model's ids: carry what was counted over into them.
        let map: Vec<Option<EndpointId>> = (0..w.registry.len())
            .map(|i| EndpointId::try_from(i).ok().and_then(|i| w.model_id_of(i)))
            .collect();
        let carried = stats.remap(|id| map.get(usize::from(id)).copied().flatten());
        let layout = policy.layout();
        shared::update(shared::STATS_KEY, |_| {
            Some(shared::encode_stats(layout, &carried))
        })?;
    }
    Ok(())
}

/// Learning after the model is active: once the sessions no rule fired on have grown
/// enough, the policy is learned again (adding only the rules that now have their
/// evidence) and published as a new version with the same endpoint ids.
fn relearn_or_wait(w: &mut Worker, version_cas: u32) -> HostResult<()> {
    let Some((layout, since)) = w.model.as_ref().map(|m| (m.layout, m.learned_sessions)) else {
        return Ok(());
    };
    let (bytes, _) = host::shared_get(shared::STATS_KEY)?;
    let (space, stats) = shared::decode_stats(bytes.as_deref());
    if space != layout {
        return Ok(());
    }
    Metrics::set(w.metrics.learning_sessions, stats.sessions);
    Metrics::set(w.metrics.learning_requests, stats.requests);
    // Only when due is the published policy read and parsed again.
    if !learn::relearn_due(since, &stats, &w.settings.learning) {
        return Ok(());
    }
    let (bytes, _) = host::shared_get(shared::MODEL_KEY)?;
    let Some(current) = bytes.and_then(|b| Policy::from_json(&b).ok()) else {
        return Ok(());
    };
    if current.version != w.model_version() {
        return Ok(());
    }
    let policy = learn::relearn(&current, &stats, &w.settings.learning, &w.settings.limits);
    claim_and_publish(w, &policy, version_cas, stats.sessions, stats.requests)?;
    Ok(())
}

/// Compiles `policy`, claims its version (of two workers compiling at once, one
/// publishes), then writes, logs and installs it. Returns whether this worker published.
fn claim_and_publish(
    w: &mut Worker,
    policy: &Policy,
    version_cas: u32,
    sessions: u64,
    requests: u64,
) -> HostResult<bool> {
    let model = match Model::compile(policy, &w.settings) {
        Ok(m) => m,
        Err(e) => {
            host::log(
                LogLevel::Error,
                &format!("flowguard: learned policy is invalid: {e}"),
            );
            return Ok(false);
        }
    };
    let json = policy.to_json();
    if !shared::publish_model(policy.version, &json, version_cas)? {
        return Ok(false);
    }
    w.tried_version = policy.version;
    host::log(
        LogLevel::Info,
        &format!(
            "flowguard: learned policy version {} from {} sessions, {} requests: {}",
            policy.version, sessions, requests, json
        ),
    );
    w.install(model);
    Ok(true)
}

/// Shares when each endpoint was last used normally, and retires those unused for
/// `endpoints.retire_after_s` (zombie endpoints).
fn retire_unused(w: &mut Worker) -> HostResult<()> {
    let retire_after = w.settings.endpoints.retire_after_s;
    let Some(model) = &mut w.model else {
        return Ok(());
    };
    if retire_after == 0 {
        return Ok(());
    }
    let key = format!("fg/used/{}", model.version);
    let mine = &w.last_used;
    let mut merged = mine.clone();
    shared::update(&key, |bytes| {
        merged = mine.clone();
        for (i, chunk) in bytes.unwrap_or_default().chunks_exact(4).enumerate() {
            let theirs = chunk.try_into().map_or(0, u32::from_le_bytes);
            if let Some(m) = merged.get_mut(i) {
                *m = (*m).max(theirs);
            }
        }
        Some(merged.iter().flat_map(|t| t.to_le_bytes()).collect())
    })?;
    let now = host::now_secs()?;
    let mut retired = EndpointSet::EMPTY;
    for (i, last) in merged.iter().enumerate() {
        if now.saturating_sub(*last) > retire_after {
            if let Ok(id) = EndpointId::try_from(i) {
                retired.insert(id);
            }
        }
    }
    model.set_retired(retired);
    w.last_used = merged;
    Ok(())
}
