//! Compiling counters into a policy: endpoints, the evidence behind order rules, limits.

use super::LearnStats;
use crate::config::{LearningSettings, Limits, Threshold};
use crate::endpoint::{template_parts, Normaliser};
use crate::endpoint_set::{EndpointId, MAX_ENDPOINTS};
use crate::evidence::{self, Evidence};
use crate::policy::{EndpointPolicy, LearnedFrom, Limit, Policy, Transition, START};
use crate::registry::Registry;
use crate::slot::NO_ENDPOINT;
use crate::support::Support;
use std::collections::{BTreeSet, HashMap};

/// The learned percentiles of a distribution given as `at_least(k)` = units that reached
/// `k`, over `n` units, and the threshold chosen from them. The threshold is not set from
/// the sample 99th percentile but from a value shown, at `confidence`, to be at least the
/// true one (an order statistic; the largest peak when too few units back any): a limit
/// needs evidence as a prerequisite does, and without it errs towards the customer.
pub fn limit_from(
    at_least: impl Fn(u32) -> u64,
    n: u64,
    max_k: u32,
    t: &Threshold,
    confidence: f64,
) -> Limit {
    let quantile = |p: f64| -> u32 {
        let allowed_above = (1.0 - p) * n as f64;
        (0..=max_k)
            .find(|k| at_least(k + 1) as f64 <= allowed_above)
            .unwrap_or(max_k)
    };
    let largest = (0..=max_k).rev().find(|k| at_least(*k) > 0).unwrap_or(0);
    let bound = match evidence::quantile_upper_rank(n, 0.99, confidence) {
        // The rank-r value: the smallest k with at least r units at or below it.
        Some(r) => (0..=max_k)
            .find(|k| n.saturating_sub(at_least(k + 1)) >= r)
            .unwrap_or(largest),
        None => largest,
    };
    Limit {
        p50: quantile(0.50),
        p90: quantile(0.90),
        p99: quantile(0.99),
        limit: t.choose(bound),
        bound,
        units: n,
    }
}

/// Template prefixes whose next segment took many literal values: `GET /api/users`.
pub fn variable_prefixes(templates: &[String], min_distinct: u32) -> BTreeSet<String> {
    let mut values: HashMap<(String, String), BTreeSet<&str>> = HashMap::new();
    for t in templates {
        let (method, segments) = template_parts(t);
        let segments: Vec<&str> = segments.collect();
        for (i, seg) in segments
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.starts_with('{'))
        {
            let prefix = format!("{method} {}", join(segments.get(..i).unwrap_or_default()));
            let suffix = join(segments.get(i + 1..).unwrap_or_default());
            values.entry((prefix, suffix)).or_default().insert(seg);
        }
    }
    values
        .into_iter()
        .filter(|(_, v)| v.len() >= min_distinct as usize)
        .map(|((prefix, _), _)| prefix)
        .collect()
}

/// Whether a template's method only reads (`GET`, `OPTIONS`; the normaliser serves `HEAD`
/// as `GET`).
fn is_read(template: &str) -> bool {
    template.starts_with("GET ") || template.starts_with("OPTIONS ")
}

fn join(segments: &[&str]) -> String {
    segments.iter().map(|s| format!("/{s}")).collect()
}

/// Compiles counters over `registry` into a policy, as of `version`.
pub fn compile(
    stats: &LearnStats,
    registry: &Registry,
    s: &LearningSettings,
    limits: &Limits,
    version: u64,
) -> Policy {
    let mut prefixes = variable_prefixes(registry.templates(), s.variable_segment_min);
    prefixes.extend(registry.variable_prefixes().iter().cloned());
    let normaliser = Normaliser::new(Vec::new(), prefixes.iter().cloned().collect());
    // Re-normalise registry templates so learned identifiers merge into one endpoint.
    let mut merged = Registry::default();
    let map: Vec<Option<EndpointId>> = registry
        .templates()
        .iter()
        .map(|t| {
            let (method, path) = t.split_once(' ').unwrap_or(("", t));
            let mut out = String::new();
            normaliser.normalise(method, path, &mut out);
            merged.add(&out, MAX_ENDPOINTS as u16)
        })
        .collect();
    let to_new = |id: EndpointId| map.get(usize::from(id)).copied().flatten();

    let m = stats.remap(to_new);
    let needed = evidence::sessions_needed(s.prerequisite_ratio, s.confidence);
    // A fact is learned only with support from enough distinct sessions and addresses.
    let supported = |support: Option<&Support>| {
        support
            .copied()
            .unwrap_or_default()
            .meets(s.min_sessions_per_fact, s.min_addresses)
    };
    // Without thresholds every violator is evidence enough: the plain ratio rule.
    let thresholds = s.has_support_thresholds();
    let absence_unsupported =
        |key: &(EndpointId, EndpointId)| thresholds && !supported(m.lacking.get(key));
    let kept = |id: EndpointId| id == NO_ENDPOINT || supported(m.reached_support.get(&id));
    let known_transition = |key: &(EndpointId, EndpointId), n: u64| {
        n >= s.transition_min_count
            && kept(key.0)
            && kept(key.1)
            && supported(m.transition_support.get(key))
    };

    // A gate: a state-changing step that clients retried until it succeeded, in at
    // least `min_support` sessions. Its success is what they waited for; a read is never
    // one (skipping it gains an attacker nothing, and parallel reads look like retries).
    // It fails sometimes, not always: a step that failed first in most sessions is a test
    // suite's negative case played every run, not a client waiting for a success.
    let gate = |p: EndpointId| {
        let read = merged
            .templates()
            .get(usize::from(p))
            .is_some_and(|t| is_read(t));
        let recovered = m.recovered.get(&p).copied().unwrap_or(0);
        let reached = m.reached.get(&p).copied().unwrap_or(0);
        !read && recovered >= s.min_support && recovered.saturating_mul(2) <= reached
    };
    let name = |id: EndpointId| {
        if id == NO_ENDPOINT {
            START.to_owned()
        } else {
            merged
                .templates()
                .get(usize::from(id))
                .cloned()
                .unwrap_or_default()
        }
    };
    // Per step: transitions arriving there, and ways in seen exactly once (Good-Turing:
    // their share estimates how often a normal session arrives by a way never seen).
    let mut arrivals: HashMap<EndpointId, (u64, u64)> = HashMap::new();
    for ((_, to), n) in &m.transitions {
        let a = arrivals.entry(*to).or_default();
        a.0 = a.0.saturating_add(*n);
        a.1 += u64::from(*n == 1);
    }
    let endpoints = merged
        .templates()
        .iter()
        .enumerate()
        .map(|(i, template)| (EndpointId::try_from(i).unwrap_or(NO_ENDPOINT), template))
        .filter(|(id, _)| *id != NO_ENDPOINT && kept(*id))
        .map(|(id, template)| {
            let reached = m.reached.get(&id).copied().unwrap_or(0);
            let routes = m.routes.get(&id).map_or(0, |r| {
                let mut r = r.clone();
                r.drop_member(id);
                r.len()
            });
            let varied = routes >= s.min_routes as usize;
            let has_ids = template.contains('{');
            // `p` is a prerequisite when the data show, at `confidence`, that at least
            // `prerequisite_ratio` of the sessions reaching this step completed `p` first
            // (violators lacking the support to count as normal traffic are discounted),
            // and sessions came here by several routes: one route is a script, not order.
            // Whether `n` of `of` shows, at `confidence`, a share of at least the ratio.
            // Two tiers: at `confidence` a rule blocks; at the lower `flag_confidence` it
            // only flags, so skip attempts show while the evidence grows.
            let shows_at = |n: u64, of: u64, confidence: f64| {
                evidence::share_at_least(n, of, s.prerequisite_ratio, confidence)
            };
            let session_wide = |confidence: f64| -> Vec<String> {
                if reached < s.min_support || !varied {
                    return Vec::new();
                }
                m.prior
                    .range((id, 0)..=(id, NO_ENDPOINT))
                    .filter(|((_, p), n)| {
                        let n = (**n).min(reached);
                        kept(*p)
                            && n >= s.min_support
                            && (shows_at(n, reached, confidence)
                                || (absence_unsupported(&(id, *p)) && shows_at(n, n, confidence)))
                    })
                    .map(|((_, p), _)| name(*p))
                    .collect()
            };
            let prerequisites = session_wide(s.confidence);
            // `p` is bound to the object when, at the same confidence, the requests that
            // reached this step on an object found `p` already done on that object; it
            // still needs the sessions a session-wide rule needs. Then either sessions
            // came by several routes, or this step changes state and `p` is a gate (see
            // `gate`): in a sample that always takes one path, a habit on one object is
            // not told from a dependency otherwise, and a look at an object is no step
            // to skip.
            let object_reached = m.object_reached.get(&id).copied().unwrap_or(0);
            let changes_state = !is_read(template);
            let bound = |confidence: f64| -> Vec<String> {
                let needed = evidence::sessions_needed(s.prerequisite_ratio, confidence);
                if !has_ids || reached < needed.max(s.min_support) {
                    return Vec::new();
                }
                m.object_prior
                    .range((id, 0)..=(id, NO_ENDPOINT))
                    .filter(|((_, p), n)| {
                        kept(*p)
                            && shows_at((**n).min(object_reached), object_reached, confidence)
                            && (varied || (changes_state && gate(*p)))
                    })
                    .map(|((_, p), _)| name(*p))
                    .collect()
            };
            let bound_prerequisites = bound(s.confidence);
            // A bound rule says more than the session-wide one for the same step.
            let prerequisites: Vec<String> = prerequisites
                .into_iter()
                .filter(|p| !bound_prerequisites.contains(p))
                .collect();
            // The flag tier: what the lower bound shows and the blocking tier does not.
            let (flag_prerequisites, flag_bound_prerequisites) = if s.flag_confidence < s.confidence
            {
                let blocks =
                    |p: &String| prerequisites.contains(p) || bound_prerequisites.contains(p);
                let flag_bound: Vec<String> = bound(s.flag_confidence)
                    .into_iter()
                    .filter(|p| !blocks(p))
                    .collect();
                let flag_session: Vec<String> = session_wide(s.flag_confidence)
                    .into_iter()
                    .filter(|p| !blocks(p) && !flag_bound.contains(p))
                    .collect();
                (flag_session, flag_bound)
            } else {
                (Vec::new(), Vec::new())
            };
            let note = if !varied && !bound_prerequisites.is_empty() {
                Some(format!(
                    "bound to the object on {routes} route{}: {} retried until it succeeded",
                    if routes == 1 { "" } else { "s" },
                    bound_prerequisites.join(", ")
                ))
            } else if routes < s.min_routes as usize {
                Some(format!(
                    "no evidence of order: {routes} route{} seen, {} needed",
                    if routes == 1 { "" } else { "s" },
                    s.min_routes
                ))
            } else if reached < needed {
                Some(format!(
                    "order not enforced yet: {reached} of {needed} sessions"
                ))
            } else {
                None
            };
            let evidence = Evidence {
                sessions: reached,
                sessions_needed: needed,
                routes: u32::try_from(routes).unwrap_or(u32::MAX),
                routes_needed: s.min_routes,
                note,
            };
            let rate_at = |k: u32| {
                u8::try_from(k).map_or(0, |k| m.rate_at_least.get(&(id, k)).copied().unwrap_or(0))
            };
            let ids_at = |k: u32| {
                u8::try_from(k).map_or(0, |k| m.ids_at_least.get(&(id, k)).copied().unwrap_or(0))
            };
            let callers = rate_at(1);
            // An unknown way in means something only where the sample showed how
            // sessions arrive: by several routes (not one script), and seldom a new way.
            let (arrived, singletons) = arrivals.get(&id).copied().unwrap_or_default();
            let novelty = (singletons + 1) as f64 / (arrived + 1) as f64;
            let open_transitions = !varied || novelty > s.transition_novelty;
            let address_rate_at = |k: u32| {
                u8::try_from(k).map_or(0, |k| {
                    m.address_rate_at_least.get(&(id, k)).copied().unwrap_or(0)
                })
            };
            let address_ids_at = |k: u32| {
                u8::try_from(k).map_or(0, |k| {
                    m.address_ids_at_least.get(&(id, k)).copied().unwrap_or(0)
                })
            };
            // Addresses that called this endpoint anonymously: the units of its limits.
            let addresses = address_rate_at(1);
            EndpointPolicy {
                template: template.clone(),
                entry: m
                    .transitions
                    .get(&(NO_ENDPOINT, id))
                    .is_some_and(|n| known_transition(&(NO_ENDPOINT, id), *n)),
                sessions: reached,
                successes: m.succeeded.get(&id).copied().unwrap_or(0),
                prerequisites,
                bound_prerequisites,
                flag_prerequisites,
                flag_bound_prerequisites,
                rate: (callers > 0)
                    .then(|| limit_from(rate_at, callers, 255, &limits.rate, s.confidence)),
                distinct_ids: (has_ids && callers > 0)
                    .then(|| limit_from(ids_at, callers, 255, &limits.enumeration, s.confidence)),
                address_rate: (addresses > 0).then(|| {
                    limit_from(
                        address_rate_at,
                        addresses,
                        255,
                        &limits.address_rate,
                        s.confidence,
                    )
                }),
                address_distinct_ids: (has_ids && addresses > 0).then(|| {
                    limit_from(
                        address_ids_at,
                        addresses,
                        255,
                        &limits.address_enumeration,
                        s.confidence,
                    )
                }),
                auth_failures: m.auth_failures.get(&id).copied().unwrap_or(0),
                deprecated: false,
                open_transitions,
                evidence: Some(evidence),
                sensitive: m.sensitive.get(&id).copied().filter(|b| !b.is_empty()),
            }
        })
        .collect();
    let transitions = m
        .transitions
        .iter()
        .filter(|(key, n)| known_transition(key, **n))
        .map(|((a, b), n)| Transition {
            from: name(*a),
            to: name(*b),
            count: *n,
        })
        .collect();
    Policy {
        version,
        learned_from: LearnedFrom {
            sessions: stats.sessions,
            requests: stats.requests,
        },
        variable_prefixes: prefixes.into_iter().collect(),
        endpoints,
        transitions,
        window_s: s.window_s,
        session_rate: Some(limit_from(
            |k| u8::try_from(k).map_or(0, |k| stats.total_at_least.get(&k).copied().unwrap_or(0)),
            stats.sessions,
            255,
            &limits.session_rate,
            s.confidence,
        )),
        auth_failures: Some(limit_from(
            |k| u16::try_from(k).map_or(0, |k| stats.auth_at_least.get(&k).copied().unwrap_or(0)),
            stats.sessions,
            1000,
            &limits.auth,
            s.confidence,
        )),
        address_auth_failures: {
            let at = |k: u32| {
                u16::try_from(k).map_or(0, |k| {
                    stats.address_auth_at_least.get(&k).copied().unwrap_or(0)
                })
            };
            Some(limit_from(
                at,
                at(1),
                1000,
                &limits.address_auth,
                s.confidence,
            ))
        },
        layout_since: 0,
        decisions: Default::default(),
    }
}
