//! Fleet learning: one policy from every proxy's stored traffic, by the engine's own
//! learner (`flowguard_engine::learn`), exactly as each filter learns.

use crate::store::{Store, StoreError};
use flowguard_engine::config::Settings;
use flowguard_engine::learn::{self, Observation};
use flowguard_engine::policy::Policy;

/// What a learning run produced.
#[derive(Debug)]
pub enum Outcome {
    /// Not enough traffic yet.
    NotReady {
        sessions: u64,
        requests: u64,
    },
    /// The policy learned equals the current one: nothing new was stored.
    Unchanged(u64),
    Learned(Box<Policy>),
}

/// Learns from `observations` as of `version`; `None` until the thresholds are met.
pub fn learn_policy(
    observations: &mut [Observation],
    settings: &Settings,
    version: u64,
) -> Result<Policy, (u64, u64)> {
    let (stats, registry) = learn::learn_from(observations, &settings.learning, &settings.limits);
    if !stats.is_ready(&settings.learning) {
        return Err((stats.sessions, stats.requests));
    }
    Ok(learn::compile(
        &stats,
        &registry,
        &settings.learning,
        &settings.limits,
        version,
    ))
}

/// Learns from the store and keeps a new version when the result differs.
pub fn learn_and_store(
    store: &Store,
    settings: &Settings,
    now_ms: u64,
) -> Result<Outcome, StoreError> {
    let mut observations: Vec<Observation> = store
        .events(true)?
        .into_iter()
        .map(|e| e.observation)
        .collect();
    let latest = store.latest_policy()?;
    let version = store.latest_version()?.max(now_ms / 1000 - 1) + 1;
    let policy = match learn_policy(&mut observations, settings, version) {
        Ok(p) => p,
        Err((sessions, requests)) => return Ok(Outcome::NotReady { sessions, requests }),
    };
    if let Some(old) = latest {
        if same_rules(&old, &policy) {
            return Ok(Outcome::Unchanged(old.version));
        }
    }
    store.save_policy(&policy, now_ms)?;
    Ok(Outcome::Learned(Box::new(policy)))
}

/// Whether two policies enforce the same thing (ignoring version and traffic counts).
fn same_rules(a: &Policy, b: &Policy) -> bool {
    let strip = |p: &Policy| {
        let mut p = p.clone();
        p.version = 1;
        p.learned_from = Default::default();
        for e in &mut p.endpoints {
            e.sessions = 0;
            e.successes = 0;
            e.auth_failures = e.auth_failures.min(1);
        }
        p.transitions
            .iter_mut()
            .for_each(|t| t.count = t.count.min(1));
        p
    };
    strip(a) == strip(b)
}
