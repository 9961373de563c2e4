//! Fleet learning: one policy from every proxy's stored traffic, by the engine's own
//! learner (`flowguard_engine::learn`), exactly as each filter learns.

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

/// What learning from `observations` yields after the stored `latest` policy (and the
/// newest version number, `latest_version`): a new version to store only when its rules
/// differ. The same for every store.
pub fn next_policy(
    mut observations: Vec<Observation>,
    latest: Option<Policy>,
    latest_version: u64,
    settings: &Settings,
    now_ms: u64,
) -> Outcome {
    let version = latest_version.max((now_ms / 1000).saturating_sub(1)) + 1;
    let mut policy = match learn_policy(&mut observations, settings, version) {
        Ok(p) => p,
        Err((sessions, requests)) => return Outcome::NotReady { sessions, requests },
    };
    if let Some(old) = latest {
        // Learning never overrides an operator's decisions (the console's): they carry
        // over, as far as the endpoints they name are still learned.
        policy.carry_decisions(&old.decisions);
        // Endpoints the fleet knew keep their ids (new ones come after them), so proxies
        // keep every session's progress across the new version instead of forgetting it.
        let kept = keep_layout(&old, &mut policy);
        if same_rules(&old, &policy) {
            return Outcome::Unchanged(old.version);
        }
        if kept {
            policy.layout_since = old.layout();
        }
    }
    Outcome::Learned(Box::new(policy))
}

/// Whether two policies enforce the same thing (ignoring version and traffic counts).
/// Orders `new`'s endpoints as `old` had them, new ones last, when `new` still has every
/// endpoint of `old`: then an endpoint's id (its position) is the same in both. Rules
/// name endpoints by template, so the order changes nothing else. Returns whether it could.
fn keep_layout(old: &Policy, new: &mut Policy) -> bool {
    let position = |t: &str| old.endpoints.iter().position(|e| e.template == t);
    let kept = old
        .endpoints
        .iter()
        .all(|o| new.endpoints.iter().any(|e| e.template == o.template));
    if kept {
        new.endpoints
            .sort_by_key(|e| position(&e.template).unwrap_or(usize::MAX));
    }
    kept
}

fn same_rules(a: &Policy, b: &Policy) -> bool {
    let strip = |p: &Policy| {
        let mut p = p.clone();
        p.version = 1;
        p.learned_from = Default::default();
        for e in &mut p.endpoints {
            e.sessions = 0;
            e.successes = 0;
            e.auth_failures = e.auth_failures.min(1);
            // The evidence's counts grow with every session; the rules they back do not.
            e.evidence = None;
            for l in [&mut e.rate, &mut e.distinct_ids].into_iter().flatten() {
                l.units = 0;
            }
        }
        for l in [
            &mut p.session_rate,
            &mut p.auth_failures,
            &mut p.address_auth_failures,
        ]
        .into_iter()
        .flatten()
        {
            l.units = 0;
        }
        p.transitions
            .iter_mut()
            .for_each(|t| t.count = t.count.min(1));
        p
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowguard_engine::evidence::Evidence;
    use flowguard_engine::policy::{EndpointPolicy, Limit};

    #[test]
    fn growing_counts_behind_the_same_rules_are_no_new_version() {
        let policy = |sessions: u64| Policy {
            version: 1,
            endpoints: vec![EndpointPolicy {
                template: "POST /pay".into(),
                sessions,
                rate: Some(Limit {
                    limit: 20,
                    bound: 2,
                    units: sessions,
                    ..Limit::default()
                }),
                evidence: Some(Evidence {
                    sessions,
                    sessions_needed: 228,
                    ..Evidence::default()
                }),
                ..EndpointPolicy::default()
            }],
            ..Policy::default()
        };
        assert!(same_rules(&policy(60), &policy(61)));
        let mut stricter = policy(61);
        stricter.endpoints[0].prerequisites = vec!["POST /login".into()];
        assert!(!same_rules(&policy(60), &stricter));
        let endpoint = |t: &str| EndpointPolicy {
            template: t.into(),
            ..EndpointPolicy::default()
        };
        let mut wider = stricter.clone();
        wider.endpoints.insert(0, endpoint("POST /login"));
        assert!(
            keep_layout(&stricter, &mut wider),
            "every old endpoint is still there"
        );
        let order: Vec<&str> = wider
            .endpoints
            .iter()
            .map(|e| e.template.as_str())
            .collect();
        assert_eq!(
            order,
            ["POST /pay", "POST /login"],
            "old ids first, new ones after"
        );
        let mut narrower = policy(60);
        narrower.endpoints = vec![endpoint("GET /menu")];
        assert!(
            !keep_layout(&wider, &mut narrower),
            "an endpoint went: a new layout"
        );
    }
}
