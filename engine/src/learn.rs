//! Learning: counters from normal traffic, and their compilation into a [`Policy`].
//!
//! Counters are keyed by registry index (the order in which endpoints were first seen),
//! are plain sums, and merge by addition: each worker keeps its own and folds them into
//! the shared copy on tick.

use crate::config::{LearningSettings, Limits, Threshold};
use crate::endpoint::{template_parts, Normaliser};
use crate::endpoint_set::{EndpointId, MAX_ENDPOINTS};
use crate::evidence::{self, Evidence, Routes};
use crate::policy::{EndpointPolicy, LearnedFrom, Limit, Policy, Transition, START};
pub use crate::registry::Registry;
use crate::sensitive::{Baseline, Findings};
use crate::slot::{Visit, NO_ENDPOINT};
use crate::support::Support;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Counters learned from traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnStats {
    pub sessions: u64,
    pub requests: u64,
    /// Sessions that reached each endpoint.
    pub reached: BTreeMap<EndpointId, u64>,
    /// Successful answers of each endpoint.
    pub succeeded: BTreeMap<EndpointId, u64>,
    /// `(endpoint, p)`: sessions that reached `endpoint` with `p` already completed.
    pub prior: BTreeMap<(EndpointId, EndpointId), u64>,
    /// `(from, to)` call counts; `from` = `NO_ENDPOINT` is the session start.
    pub transitions: BTreeMap<(EndpointId, EndpointId), u64>,
    /// `(endpoint, k)`: sessions whose requests to `endpoint` in one window reached `k`.
    pub rate_at_least: BTreeMap<(EndpointId, u8), u64>,
    /// `(endpoint, k)`: sessions whose distinct ids on `endpoint` in one window reached `k`.
    pub ids_at_least: BTreeMap<(EndpointId, u8), u64>,
    /// `k`: sessions whose requests in one window (all endpoints) reached `k`.
    pub total_at_least: BTreeMap<u8, u64>,
    /// `k`: sessions whose 401/403 answers in one auth window reached `k`.
    pub auth_at_least: BTreeMap<u16, u64>,
    /// 401/403 answers per endpoint.
    pub auth_failures: BTreeMap<EndpointId, u64>,
    /// `k`: client addresses whose 401/403 answers in one auth window reached `k`.
    pub address_auth_at_least: BTreeMap<u16, u64>,
    /// Who reached each endpoint.
    pub reached_support: BTreeMap<EndpointId, Support>,
    /// `(endpoint, p)`: who reached `endpoint` without having completed `p` (the evidence
    /// that `p` is not a prerequisite).
    pub lacking: BTreeMap<(EndpointId, EndpointId), Support>,
    /// Who made each transition.
    pub transition_support: BTreeMap<(EndpointId, EndpointId), Support>,
    /// Sessions left out of learning because their address had started its share.
    pub unlearned_sessions: u64,
    /// The distinct routes (steps completed before) on which sessions first reached each
    /// endpoint: one route is a script, not evidence of order.
    pub routes: BTreeMap<EndpointId, Routes>,
    /// The sensitive values each endpoint's answers carried at most.
    pub sensitive: BTreeMap<EndpointId, Baseline>,
}

fn bump<K: Ord>(map: &mut BTreeMap<K, u64>, key: K, by: u64) {
    let v = map.entry(key).or_insert(0);
    *v = v.saturating_add(by);
}

/// Adds every count of `from` into `into`.
fn add_all<K: Ord + Copy>(into: &mut BTreeMap<K, u64>, from: &BTreeMap<K, u64>) {
    for (k, v) in from {
        bump(into, *k, *v);
    }
}

fn support<K: Ord>(map: &mut BTreeMap<K, Support>, key: K, visit: &Visit) {
    map.entry(key)
        .or_default()
        .add(visit.session_bit, visit.address_bit);
}

fn merge_all<K: Ord + Copy>(into: &mut BTreeMap<K, Support>, from: &BTreeMap<K, Support>) {
    for (k, v) in from {
        into.entry(*k).or_default().merge(*v);
    }
}

impl LearnStats {
    /// Counts a request to `endpoint` described by `visit`; the absence of endpoints
    /// `0..known` before it is recorded as evidence
    /// ([`LearningSettings::absences_to_record`] says how many).
    pub fn observe_request(&mut self, endpoint: EndpointId, visit: &Visit, known: usize) {
        if !visit.learn {
            if visit.new_session {
                self.unlearned_sessions = self.unlearned_sessions.saturating_add(1);
            }
            return;
        }
        self.requests = self.requests.saturating_add(1);
        if visit.new_session {
            self.sessions = self.sessions.saturating_add(1);
        }
        if visit.first_visit {
            bump(&mut self.reached, endpoint, 1);
            support(&mut self.reached_support, endpoint, visit);
            let mut route = visit.completed_before;
            route.remove(endpoint);
            self.routes.entry(endpoint).or_default().add(route);
            for p in visit.completed_before.iter().filter(|p| *p != endpoint) {
                bump(&mut self.prior, (endpoint, p), 1);
            }
            let known = EndpointId::try_from(known.min(MAX_ENDPOINTS)).unwrap_or(0);
            for p in (0..known).filter(|p| *p != endpoint && !visit.completed_before.contains(*p)) {
                support(&mut self.lacking, (endpoint, p), visit);
            }
        }
        bump(&mut self.transitions, (visit.previous, endpoint), 1);
        support(
            &mut self.transition_support,
            (visit.previous, endpoint),
            visit,
        );
        if let Some(k) = visit.tally.new_peak {
            bump(&mut self.rate_at_least, (endpoint, k), 1);
        }
        if let Some((from, to)) = visit.tally.new_ids_peak {
            for k in from.saturating_add(1)..=to {
                bump(&mut self.ids_at_least, (endpoint, k), 1);
            }
        }
        if let Some(k) = visit.total_peak {
            bump(&mut self.total_at_least, k, 1);
        }
    }

    /// Counts the answer of `endpoint`; `auth_peak` is the session's new auth-failure peak.
    pub fn observe_response(&mut self, endpoint: EndpointId, status: u16, auth_peak: Option<u16>) {
        if crate::slot::is_success(status) {
            bump(&mut self.succeeded, endpoint, 1);
        }
        if crate::slot::is_auth_failure(status) {
            bump(&mut self.auth_failures, endpoint, 1);
        }
        if let Some(k) = auth_peak {
            bump(&mut self.auth_at_least, k.min(1000), 1);
        }
    }

    /// Counts what a scanned answer of `endpoint` carried.
    pub fn observe_sensitive(&mut self, endpoint: EndpointId, findings: &Findings) {
        self.sensitive
            .entry(endpoint)
            .or_default()
            .observe(findings);
    }

    /// Counts a client address's new auth-failure peak.
    pub fn observe_address_failure(&mut self, peak: Option<u16>) {
        if let Some(k) = peak {
            bump(&mut self.address_auth_at_least, k.min(1000), 1);
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &LearnStats) {
        self.sessions = self.sessions.saturating_add(other.sessions);
        self.requests = self.requests.saturating_add(other.requests);
        add_all(&mut self.reached, &other.reached);
        add_all(&mut self.succeeded, &other.succeeded);
        add_all(&mut self.prior, &other.prior);
        add_all(&mut self.transitions, &other.transitions);
        add_all(&mut self.rate_at_least, &other.rate_at_least);
        add_all(&mut self.ids_at_least, &other.ids_at_least);
        add_all(&mut self.total_at_least, &other.total_at_least);
        add_all(&mut self.auth_at_least, &other.auth_at_least);
        add_all(&mut self.auth_failures, &other.auth_failures);
        add_all(
            &mut self.address_auth_at_least,
            &other.address_auth_at_least,
        );
        merge_all(&mut self.reached_support, &other.reached_support);
        merge_all(&mut self.lacking, &other.lacking);
        merge_all(&mut self.transition_support, &other.transition_support);
        self.unlearned_sessions = self
            .unlearned_sessions
            .saturating_add(other.unlearned_sessions);
        for (e, r) in &other.routes {
            self.routes.entry(*e).or_default().merge(r);
        }
        for (e, b) in &other.sensitive {
            self.sensitive.entry(*e).or_default().merge(b);
        }
    }

    /// The same counters with every endpoint mapped through `map` (learning registry to
    /// merged templates, or to a model's ids); endpoints mapped to `None` drop out, and
    /// counters of endpoints that merge add up. The session start stays itself.
    pub fn remap(&self, map: impl Fn(EndpointId) -> Option<EndpointId>) -> LearnStats {
        let to = |id: EndpointId| {
            if id == NO_ENDPOINT {
                Some(NO_ENDPOINT)
            } else {
                map(id)
            }
        };
        let one = |from: &BTreeMap<EndpointId, u64>| {
            let mut out = BTreeMap::new();
            for (k, v) in from {
                if let Some(k) = to(*k) {
                    bump(&mut out, k, *v);
                }
            }
            out
        };
        let pairs = |from: &BTreeMap<(EndpointId, EndpointId), u64>, self_pairs: bool| {
            let mut out = BTreeMap::new();
            for ((a, b), v) in from {
                if let (Some(a), Some(b)) = (to(*a), to(*b)) {
                    if self_pairs || a != b {
                        bump(&mut out, (a, b), *v);
                    }
                }
            }
            out
        };
        let with_k = |from: &BTreeMap<(EndpointId, u8), u64>| {
            let mut out = BTreeMap::new();
            for ((e, k), v) in from {
                if let Some(e) = to(*e) {
                    bump(&mut out, (e, *k), *v);
                }
            }
            out
        };
        let support_pairs = |from: &BTreeMap<(EndpointId, EndpointId), Support>| {
            let mut out: BTreeMap<(EndpointId, EndpointId), Support> = BTreeMap::new();
            for ((a, b), v) in from {
                if let (Some(a), Some(b)) = (to(*a), to(*b)) {
                    out.entry((a, b)).or_default().merge(*v);
                }
            }
            out
        };
        let mut reached_support: BTreeMap<EndpointId, Support> = BTreeMap::new();
        for (e, v) in &self.reached_support {
            if let Some(e) = to(*e) {
                reached_support.entry(e).or_default().merge(*v);
            }
        }
        let mut routes: BTreeMap<EndpointId, Routes> = BTreeMap::new();
        for (e, r) in &self.routes {
            if let Some(e) = to(*e) {
                routes.entry(e).or_default().merge(&r.remap(to));
            }
        }
        let mut sensitive: BTreeMap<EndpointId, Baseline> = BTreeMap::new();
        for (e, b) in &self.sensitive {
            if let Some(e) = to(*e) {
                sensitive.entry(e).or_default().merge(b);
            }
        }
        LearnStats {
            sensitive,
            reached: one(&self.reached),
            succeeded: one(&self.succeeded),
            prior: pairs(&self.prior, false),
            transitions: pairs(&self.transitions, true),
            rate_at_least: with_k(&self.rate_at_least),
            ids_at_least: with_k(&self.ids_at_least),
            auth_failures: one(&self.auth_failures),
            reached_support,
            lacking: support_pairs(&self.lacking),
            transition_support: support_pairs(&self.transition_support),
            routes,
            ..self.clone()
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == LearnStats::default()
    }

    /// Whether enough traffic was seen to compile a model.
    pub fn is_ready(&self, s: &LearningSettings) -> bool {
        self.sessions >= s.min_sessions && self.requests >= s.min_requests
    }

    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<LearnStats, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// The learning step of one request and its answer, exactly as the filter takes it (in
/// its request and response phases): the collector and `flowguard learn` call this, so
/// the fleet's policy comes from the same code as each filter's.
#[allow(clippy::too_many_arguments)]
pub fn observe_exchange(
    stats: &mut LearnStats,
    slot: &mut crate::slot::Slot,
    endpoint: EndpointId,
    known: usize,
    id: Option<u64>,
    now_ms: u64,
    status: u16,
    window_ms: u32,
    auth_window_ms: u32,
) {
    let visit = slot.record_request(Some(endpoint), id, now_ms, window_ms);
    stats.observe_request(endpoint, &visit, known);
    let peak = slot.record_response(endpoint, status, now_ms, auth_window_ms);
    if visit.learn {
        stats.observe_response(endpoint, status, peak);
    }
}

/// One stored request, as telemetry or an access log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub session: u64,
    pub time_ms: u64,
    pub template: String,
    pub status: u16,
    pub ids: Option<u64>,
}

/// Learns from stored requests: each session's requests, in time order, go through a
/// session slot and [`observe_exchange`], as they went through the filter.
pub fn learn_from(
    observations: &mut [Observation],
    s: &LearningSettings,
    limits: &Limits,
) -> (LearnStats, Registry) {
    observations.sort_by_key(|o| (o.session, o.time_ms));
    let mut stats = LearnStats::default();
    let mut registry = Registry::default();
    let mut slot = crate::slot::Slot::new(0, 0, 0);
    let window_ms = s.window_s.saturating_mul(1000);
    let auth_window_ms = limits.auth_window_s.saturating_mul(1000);
    for o in observations.iter() {
        if slot.fingerprint != o.session || !slot.seen {
            let first_seen = u32::try_from(o.time_ms / 1000).unwrap_or(u32::MAX);
            slot = crate::slot::Slot::new(o.session, first_seen, 0);
        }
        if let Some(e) = registry.learn(&o.template, s.max_endpoints, s.variable_segment_min) {
            observe_exchange(
                &mut stats,
                &mut slot,
                e,
                s.absences_to_record(registry.len()),
                o.ids,
                o.time_ms,
                o.status,
                window_ms,
                auth_window_ms,
            );
        }
    }
    (stats, registry)
}

/// The learned percentiles of a distribution given as `at_least(k)` = units that reached
/// `k`, over `n` units, and the threshold chosen from them.
pub fn limit_from(at_least: impl Fn(u32) -> u64, n: u64, max_k: u32, t: &Threshold) -> Limit {
    let quantile = |p: f64| -> u32 {
        let allowed_above = (1.0 - p) * n as f64;
        (0..=max_k)
            .find(|k| at_least(k + 1) as f64 <= allowed_above)
            .unwrap_or(max_k)
    };
    let p99 = quantile(0.99);
    Limit {
        p50: quantile(0.50),
        p90: quantile(0.90),
        p99,
        limit: t.choose(p99),
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
            // `p` is a prerequisite when the data show, at `confidence`, that at least
            // `prerequisite_ratio` of the sessions reaching this step completed `p` first
            // (violators lacking the support to count as normal traffic are discounted),
            // and sessions came here by several routes: one route is a script, not order.
            let shown =
                |n: u64| evidence::share_at_least(n, reached, s.prerequisite_ratio, s.confidence);
            let prerequisites = if reached >= s.min_support && varied {
                m.prior
                    .range((id, 0)..=(id, NO_ENDPOINT))
                    .filter(|((_, p), n)| {
                        let n = (**n).min(reached);
                        kept(*p)
                            && n >= s.min_support
                            && (shown(n)
                                || (absence_unsupported(&(id, *p))
                                    && evidence::share_at_least(
                                        n,
                                        n,
                                        s.prerequisite_ratio,
                                        s.confidence,
                                    )))
                    })
                    .map(|((_, p), _)| name(*p))
                    .collect()
            } else {
                Vec::new()
            };
            let note = if routes < s.min_routes as usize {
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
            let has_ids = template.contains('{');
            EndpointPolicy {
                template: template.clone(),
                entry: m
                    .transitions
                    .get(&(NO_ENDPOINT, id))
                    .is_some_and(|n| known_transition(&(NO_ENDPOINT, id), *n)),
                sessions: reached,
                successes: m.succeeded.get(&id).copied().unwrap_or(0),
                prerequisites,
                rate: (callers > 0).then(|| limit_from(rate_at, callers, 255, &limits.rate)),
                distinct_ids: (has_ids && callers > 0)
                    .then(|| limit_from(ids_at, callers, 255, &limits.enumeration)),
                auth_failures: m.auth_failures.get(&id).copied().unwrap_or(0),
                deprecated: false,
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
        )),
        auth_failures: Some(limit_from(
            |k| u16::try_from(k).map_or(0, |k| stats.auth_at_least.get(&k).copied().unwrap_or(0)),
            stats.sessions,
            1000,
            &limits.auth,
        )),
        address_auth_failures: {
            let at = |k: u32| {
                u16::try_from(k).map_or(0, |k| {
                    stats.address_auth_at_least.get(&k).copied().unwrap_or(0)
                })
            };
            Some(limit_from(at, at(1), 1000, &limits.address_auth))
        },
        layout_since: 0,
    }
}

/// Sessions the active model must have grown by before it is learned again.
pub fn relearn_due(current: &Policy, stats: &LearnStats, s: &LearningSettings) -> bool {
    let since = current.learned_from.sessions;
    stats.sessions >= since.saturating_add((since / 4).max(s.min_sessions))
}

/// The active policy learned again from `stats`, counted in its own endpoint ids since it
/// was installed (from sessions no rule fired on): order rules that have their evidence
/// now are added, with the evidence notes. It only tightens: no prerequisite, limit or
/// endpoint goes, and the endpoint list (so every session's progress) stays as it is.
pub fn relearn(
    current: &Policy,
    stats: &LearnStats,
    s: &LearningSettings,
    limits: &Limits,
) -> Policy {
    let mut registry = Registry::default();
    for e in &current.endpoints {
        registry.add(&e.template, MAX_ENDPOINTS as u16);
    }
    let version = current.version.saturating_add(1);
    let fresh = compile(stats, &registry, s, limits, version);
    let mut next = current.clone();
    next.version = version;
    next.layout_since = current.layout();
    next.learned_from = fresh.learned_from;
    for e in &mut next.endpoints {
        let Some(learned) = fresh.endpoint(&e.template) else {
            continue;
        };
        for p in &learned.prerequisites {
            if !e.prerequisites.contains(p) {
                e.prerequisites.push(p.clone());
            }
        }
        e.sessions = e.sessions.max(learned.sessions);
        // What answers normally carry is learned on: a larger normal is not a looser rule
        // on anyone's access, only fewer flags.
        if let Some(b) = learned.sensitive {
            e.sensitive.get_or_insert_with(Baseline::default).merge(&b);
        }
        e.evidence = learned.evidence.clone();
        if let Some(ev) = e.evidence.as_mut().filter(|_| !e.prerequisites.is_empty()) {
            ev.note = None; // a rule kept from before stands, whatever this sample says
        }
    }
    for t in fresh.transitions {
        let known = next
            .transitions
            .iter()
            .any(|k| k.from == t.from && k.to == t.to);
        if !known {
            next.transitions.push(t);
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Model;
    use crate::slot::Slot;
    use proptest::prelude::*;

    /// Plays `calls` (template, status) as one session through a slot, like the filter does.
    fn play(stats: &mut LearnStats, reg: &mut Registry, fp: u64, calls: &[(&str, u16)]) {
        play_from(stats, reg, fp, None, calls);
    }

    /// [`play`] for a session whose client address has support sketch bit `address`.
    fn play_from(
        stats: &mut LearnStats,
        reg: &mut Registry,
        fp: u64,
        address: Option<u8>,
        calls: &[(&str, u16)],
    ) {
        let mut slot = Slot::new(fp.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, 0, 0);
        slot.address_bit = address;
        for (n, (t, status)) in calls.iter().enumerate() {
            let id = reg.add(t, 128).unwrap();
            let now = n as u64 * 1000;
            let visit = slot.record_request(
                Some(id),
                Some((n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                now,
                10_000,
            );
            stats.observe_request(id, &visit, reg.len());
            let peak = slot.record_response(id, *status, now, 300_000);
            stats.observe_response(id, *status, peak);
        }
    }

    fn compile(stats: &LearnStats, reg: &Registry, s: &LearningSettings, v: u64) -> Policy {
        super::compile(stats, reg, s, &Limits::default(), v)
    }

    /// Small samples for tests: 22 sessions without a violation show a share of 0.9 at
    /// 0.9 confidence.
    fn settings() -> LearningSettings {
        LearningSettings {
            min_support: 3,
            prerequisite_ratio: 0.9,
            confidence: 0.9,
            ..LearningSettings::default()
        }
    }

    /// 40 customers from their own addresses pay before they confirm; one attacker's
    /// address plays 12 sessions inside the learning window that skip payment, open
    /// with confirm and call a hidden endpoint.
    fn poisoned() -> (LearnStats, Registry) {
        let mut stats = LearnStats::default();
        let mut reg = Registry::default();
        for i in 0..40u64 {
            let mut calls = vec![("POST /login", 200), ("POST /pay", 200)];
            if i % 2 == 1 {
                calls.insert(1, ("GET /menu", 200)); // two routes into confirm
            }
            calls.push(("POST /confirm", 200));
            play_from(&mut stats, &mut reg, i, Some((i % 32) as u8), &calls);
        }
        for i in 100..112u64 {
            let calls = [("POST /confirm", 200), ("GET /admin/export", 200)];
            play_from(&mut stats, &mut reg, i, Some(7), &calls);
        }
        (stats, reg)
    }

    #[test]
    fn one_address_cannot_teach_an_absence_a_transition_or_an_endpoint() {
        let (stats, reg) = poisoned();
        let trusting = compile(&stats, &reg, &settings(), 1);
        let confirm = trusting.endpoint("POST /confirm").unwrap();
        assert!(
            confirm.prerequisites.is_empty(),
            "without support checks the attacker removes the prerequisite"
        );

        let s = LearningSettings {
            min_addresses: 3,
            min_sessions_per_fact: 3,
            ..settings()
        };
        let p = compile(&stats, &reg, &s, 1);
        let confirm = p.endpoint("POST /confirm").unwrap();
        assert_eq!(confirm.prerequisites, ["POST /login", "POST /pay"]);
        assert!(!confirm.entry, "only the attacker opened with confirm");
        assert!(
            p.endpoint("GET /admin/export").is_none(),
            "one address's endpoint"
        );
        assert!(
            p.transitions.iter().all(|t| t.to != "GET /admin/export"),
            "no transition into an endpoint left out"
        );
        p.validate().expect("the compiled policy is consistent");
        let m = Model::compile(&p, &crate::config::Settings::from_json(b"{}").unwrap()).unwrap();
        let (login, pay, confirm) = (
            m.endpoint("POST /login").unwrap(),
            m.endpoint("POST /pay").unwrap(),
            m.endpoint("POST /confirm").unwrap(),
        );
        assert!(m.knows_transition(login, pay) && m.knows_transition(pay, confirm));
        assert!(!m.knows_transition(NO_ENDPOINT, confirm));
    }

    #[test]
    fn absences_with_support_are_still_learned() {
        let (mut stats, mut reg) = poisoned();
        // Five more addresses' customers really do confirm without paying (a free tier).
        for i in 200..210u64 {
            let calls = [("POST /login", 200), ("POST /confirm", 200)];
            play_from(&mut stats, &mut reg, i, Some((i % 5) as u8 + 20), &calls);
        }
        let s = LearningSettings {
            min_addresses: 3,
            min_sessions_per_fact: 3,
            ..settings()
        };
        let p = compile(&stats, &reg, &s, 1);
        assert_eq!(
            p.endpoint("POST /confirm").unwrap().prerequisites,
            ["POST /login"]
        );
    }

    #[test]
    fn unlearned_sessions_are_counted_apart() {
        let mut stats = LearnStats::default();
        let mut slot = Slot::new(42, 0, 0);
        slot.unlearned = true;
        let visit = slot.record_request(Some(0), None, 0, 10_000);
        stats.observe_request(0, &visit, 1);
        assert_eq!(
            (stats.sessions, stats.requests, stats.unlearned_sessions),
            (0, 0, 1)
        );
        assert!(stats.reached.is_empty());
    }

    #[test]
    fn learns_that_confirm_needs_a_successful_payment() {
        let mut stats = LearnStats::default();
        let mut reg = Registry::default();
        for i in 0..60u64 {
            let mut calls = vec![("POST /login", 200), ("GET /menu", 200)];
            if i % 2 == 0 {
                calls.push(("GET /cart", 200)); // an optional step: another route
            }
            if i % 3 == 0 {
                calls.push(("POST /orders/{id}/pay", 402));
            }
            calls.extend([
                ("POST /orders/{id}/pay", 200),
                ("POST /orders/{id}/confirm", 200),
            ]);
            if i % 4 == 0 {
                calls = vec![("POST /login", 200), ("GET /menu", 200)];
            }
            play(&mut stats, &mut reg, i + 1, &calls);
        }
        let p = compile(&stats, &reg, &settings(), 1);
        p.validate().unwrap();
        let confirm = p
            .endpoints
            .iter()
            .find(|e| e.template == "POST /orders/{id}/confirm")
            .unwrap();
        assert_eq!(
            confirm.prerequisites,
            ["POST /login", "GET /menu", "POST /orders/{id}/pay"]
        );
        let login = p
            .endpoints
            .iter()
            .find(|e| e.template == "POST /login")
            .unwrap();
        assert!(login.entry && login.prerequisites.is_empty());
        assert_eq!(
            p.learned_from,
            LearnedFrom {
                sessions: 60,
                requests: stats.requests
            }
        );
        let m = Model::compile(&p, &crate::config::Settings::from_json(b"{}").unwrap()).unwrap();
        let pay = m.endpoint("POST /orders/{id}/pay").unwrap();
        assert!(
            m.knows_transition(pay, pay),
            "a failed payment retried is a learned transition"
        );
    }

    #[test]
    fn one_scripted_route_teaches_no_order() {
        // A test suite replayed 300 times: register, login, publish, read tags.
        let mut stats = LearnStats::default();
        let mut reg = Registry::default();
        for i in 0..300u64 {
            let calls = [
                ("POST /users", 201),
                ("POST /users/login", 200),
                ("POST /articles", 201),
                ("GET /tags", 200),
            ];
            play(&mut stats, &mut reg, i + 1, &calls);
        }
        let p = compile(&stats, &reg, &LearningSettings::default(), 1);
        for e in &p.endpoints {
            assert!(
                e.prerequisites.is_empty(),
                "{}: {:?}",
                e.template,
                e.prerequisites
            );
        }
        let tags = p.endpoint("GET /tags").unwrap().evidence.clone().unwrap();
        assert_eq!(tags.routes, 1);
        assert_eq!(
            tags.describe(),
            "no evidence of order: 1 route seen, 2 needed"
        );
    }

    #[test]
    fn a_small_sample_asserts_no_prerequisite_a_large_one_does() {
        // 70 % of sessions fetch a book before their profile: no rule at any size. Every
        // session logs in first: a rule once the sample shows it at the default 0.98 and
        // 0.99 confidence (228 sessions), none from 21.
        let learn = |n: u64| {
            let mut stats = LearnStats::default();
            let mut reg = Registry::default();
            for i in 0..n {
                let mut calls = vec![("POST /login", 200)];
                if i % 10 < 7 {
                    calls.push(("GET /books/{id}", 200));
                }
                calls.push(("GET /users/{id}", 200));
                play(&mut stats, &mut reg, i + 1, &calls);
            }
            compile(&stats, &reg, &LearningSettings::default(), 1)
        };
        let small = learn(21);
        let user = small.endpoint("GET /users/{id}").unwrap();
        assert!(user.prerequisites.is_empty());
        assert_eq!(
            user.evidence.as_ref().unwrap().describe(),
            "order not enforced yet: 21 of 228 sessions"
        );
        let large = learn(228);
        let user = large.endpoint("GET /users/{id}").unwrap();
        assert_eq!(user.prerequisites, ["POST /login"]);
        assert_eq!(user.evidence.as_ref().unwrap().note, None);
        assert_eq!(
            user.evidence.as_ref().unwrap().describe(),
            "order evidence: 228 sessions (needs 228), 2 routes (needs 2)"
        );
    }

    #[test]
    fn relearning_adds_rules_once_evidence_arrives_and_keeps_ids() {
        let shop = |stats: &mut LearnStats, reg: &mut Registry, n: u64| {
            for i in 0..n {
                let mut calls = vec![("POST /login", 200)];
                if i % 2 == 0 {
                    calls.push(("GET /menu", 200));
                }
                calls.extend([("POST /pay", 200), ("POST /confirm", 200)]);
                play(stats, reg, 1000 + i, &calls);
            }
        };
        let s = LearningSettings::default();
        let (mut stats, mut reg) = (LearnStats::default(), Registry::default());
        shop(&mut stats, &mut reg, 60);
        let first = compile(&stats, &reg, &s, 1);
        assert!(first.endpoints.iter().all(|e| e.prerequisites.is_empty()));
        assert!(!relearn_due(&first, &stats, &s));

        // The model's own ids: a registry in the policy's endpoint order.
        let mut model_reg = Registry::default();
        for e in &first.endpoints {
            model_reg.add(&e.template, 128);
        }
        let mut since = stats.remap(|id| model_reg.get(reg.templates().get(usize::from(id))?));
        shop(&mut since, &mut model_reg, 240);
        assert_eq!(model_reg.len(), first.endpoints.len(), "no new endpoint");
        assert!(relearn_due(&first, &since, &s));
        let next = relearn(&first, &since, &s, &Limits::default());
        assert_eq!(
            (next.version, next.layout(), next.learned_from.sessions),
            (2, 1, 300)
        );
        let templates = |p: &Policy| {
            p.endpoints
                .iter()
                .map(|e| e.template.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(templates(&next), templates(&first));
        assert_eq!(
            next.endpoint("POST /confirm").unwrap().prerequisites,
            ["POST /login", "POST /pay"]
        );
        next.validate().unwrap();
        // Relearning never loosens: a sample without the rule keeps it.
        let mut none = LearnStats::default();
        for i in 0..400 {
            play(
                &mut none,
                &mut model_reg,
                5000 + i,
                &[("POST /confirm", 200)],
            );
        }
        let again = relearn(&next, &none, &s, &Limits::default());
        assert_eq!(
            again.endpoint("POST /confirm").unwrap().prerequisites,
            ["POST /login", "POST /pay"]
        );
        assert_eq!(again.layout(), 1);
    }

    #[test]
    fn a_step_some_sessions_skip_is_no_prerequisite() {
        let mut stats = LearnStats::default();
        let mut reg = Registry::default();
        for i in 0..10u64 {
            let calls: &[(&str, u16)] = if i % 2 == 0 {
                &[("GET /menu", 200), ("POST /pay", 200)]
            } else {
                &[("POST /pay", 200)]
            };
            play(&mut stats, &mut reg, i + 1, calls);
        }
        let p = compile(&stats, &reg, &settings(), 1);
        assert!(p.endpoints.iter().all(|e| e.prerequisites.is_empty()));
        // Too little support: nothing is required.
        let strict = LearningSettings {
            min_support: 50,
            ..settings()
        };
        assert!(compile(&stats, &reg, &strict, 1)
            .endpoints
            .iter()
            .all(|e| e.prerequisites.is_empty()));
    }

    #[test]
    fn high_cardinality_segments_merge_into_one_endpoint() {
        let mut stats = LearnStats::default();
        let mut reg = Registry::default();
        for i in 0..40u64 {
            let user = format!(
                "GET /api/users/user{}x/profile",
                (b'a' + (i % 20) as u8) as char
            );
            let mut calls = vec![("POST /login", 200), (user.as_str(), 200)];
            if i % 2 == 0 {
                calls.insert(1, ("GET /menu", 200));
            }
            play(&mut stats, &mut reg, i + 1, &calls);
        }
        let p = compile(
            &stats,
            &reg,
            &LearningSettings {
                variable_segment_min: 16,
                ..settings()
            },
            1,
        );
        assert_eq!(p.variable_prefixes, ["GET /api/users"]);
        let templates: Vec<_> = p.endpoints.iter().map(|e| e.template.as_str()).collect();
        assert_eq!(
            templates,
            ["POST /login", "GET /menu", "GET /api/users/{id}/profile"]
        );
        assert_eq!(p.endpoints[2].prerequisites, ["POST /login"]);
        assert_eq!(p.endpoints[2].sessions, 40);
    }

    #[test]
    fn merge_adds_and_codecs_round_trip() {
        let mut a = LearnStats::default();
        let mut reg = Registry::default();
        play(&mut a, &mut reg, 1, &[("GET /a", 200), ("GET /b", 200)]);
        let mut sum = a.clone();
        sum.merge(&a);
        assert_eq!(sum.requests, 4);
        assert_eq!(sum.transitions.get(&(0, 1)), Some(&2));
        assert_eq!(LearnStats::decode(&sum.encode()).unwrap(), sum);
        assert!(LearnStats::decode(&[0xff; 3]).is_err());
        assert_eq!(Registry::decode(&reg.encode()), reg);
        assert!(reg.add("GET /c", 2).is_none(), "registry is bounded");
        assert!(reg.add("GET /a", 2).is_some());
    }

    #[test]
    fn rates_and_distinct_ids_are_learned_with_their_percentiles() {
        let mut stats = LearnStats::default();
        let mut reg = Registry::default();
        for i in 0..100u64 {
            // Most sessions look at one or two orders; a few at five.
            let views = if i % 20 == 0 { 5 } else { 1 + i % 2 };
            let calls: Vec<(&str, u16)> = std::iter::once(("POST /login", 200))
                .chain((0..views).map(|_| ("GET /orders/{id}", 200)))
                .chain(if i % 10 == 0 {
                    vec![("POST /login", 401)]
                } else {
                    vec![]
                })
                .collect();
            play(&mut stats, &mut reg, i + 1, &calls);
        }
        let p = compile(&stats, &reg, &settings(), 1);
        let orders = p
            .endpoints
            .iter()
            .find(|e| e.template == "GET /orders/{id}")
            .unwrap();
        let rate = orders.rate.unwrap();
        assert_eq!((rate.p50, rate.p90, rate.p99), (2, 2, 5), "{rate:?}");
        assert_eq!(rate.limit, 20, "the floor wins over 5 x 3");
        let ids = orders.distinct_ids.unwrap();
        assert!(ids.p99 >= 4 && ids.limit >= 15, "{ids:?}");
        let login = p
            .endpoints
            .iter()
            .find(|e| e.template == "POST /login")
            .unwrap();
        assert!(
            login.distinct_ids.is_none(),
            "no identifiers in the template"
        );
        assert_eq!(login.auth_failures, 10);
        let auth = p.auth_failures.unwrap();
        assert_eq!((auth.p50, auth.p90, auth.p99, auth.limit), (0, 1, 1, 10));
        assert!(p.session_rate.unwrap().p99 >= 5);
        p.validate().unwrap();
    }

    #[test]
    fn percentiles_of_an_at_least_distribution() {
        let t = Threshold {
            margin: 2.0,
            floor: 1,
            limit: None,
        };
        // 100 units: everyone reached 1, half reached 2, 5 reached 3, 1 reached 10.
        let at = |k: u32| match k {
            0 | 1 => 100,
            2 => 50,
            3 => 5,
            4..=10 => 1,
            _ => 0,
        };
        assert_eq!(
            limit_from(at, 100, 255, &t),
            Limit {
                p50: 1,
                p90: 2,
                p99: 3,
                limit: 6
            }
        );
        assert_eq!(
            limit_from(|_| 0, 0, 255, &t),
            Limit {
                p50: 0,
                p90: 0,
                p99: 0,
                limit: 1
            }
        );
    }

    #[test]
    fn the_fleet_learner_equals_the_filters() {
        // The filter's path: request phase, then response phase, per exchange.
        let mut filter_stats = LearnStats::default();
        let mut filter_reg = Registry::default();
        let mut log = Vec::new();
        for i in 0..30u64 {
            let mut slot = Slot::new(i + 1, 1000, 0);
            let mut calls = vec![
                ("POST /login", 200u16),
                ("GET /menu", 200),
                ("POST /pay", 402),
                ("POST /pay", 200),
                ("POST /confirm", 200),
            ];
            if i % 5 == 0 {
                calls.insert(0, ("POST /login", 401));
            }
            for (n, (t, status)) in calls.into_iter().enumerate() {
                let now = 1_000_000 + n as u64 * 700;
                let id = filter_reg.learn(t, 128, 16).unwrap();
                let visit = slot.record_request(Some(id), None, now, 10_000);
                let known = settings().absences_to_record(filter_reg.len());
                assert_eq!(known, 0, "without thresholds no absence is recorded");
                filter_stats.observe_request(id, &visit, known); // as the filter
                let peak = slot.record_response(id, status, now, 300_000);
                filter_stats.observe_response(id, status, peak);
                log.push(Observation {
                    session: i + 1,
                    time_ms: now,
                    template: t.into(),
                    status,
                    ids: None,
                });
            }
        }
        log.reverse(); // stored order does not matter
        let (fleet_stats, fleet_reg) = learn_from(&mut log, &settings(), &Limits::default());
        assert_eq!(fleet_stats, filter_stats);
        assert_eq!(fleet_reg, filter_reg);
        assert_eq!(
            compile(&fleet_stats, &fleet_reg, &settings(), 2),
            compile(&filter_stats, &filter_reg, &settings(), 2)
        );
    }

    proptest! {
            #[test]
            fn stats_decode_never_panics
    (bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = LearnStats::decode(&bytes);
                let _ = Registry::decode(&bytes);
            }

            #[test]
            fn compiled_policies_always_validate(seq in proptest::collection::vec((0u8..12, prop_oneof![Just(200u16), Just(402u16)]), 0..60)) {
                let mut stats = LearnStats::default();
                let mut reg = Registry::default();
                let names: Vec<String> = (0..12).map(|i| format!("GET /e{}/x", i % 7)).collect();
                for (n, chunk) in seq.chunks(5).enumerate() {
                    let calls: Vec<(&str, u16)> = chunk.iter().map(|(e, s)| (names[*e as usize].as_str(), *s)).collect();
                    play(&mut stats, &mut reg, n as u64 + 1, &calls);
                }
                let p = compile(&stats, &reg, &LearningSettings { min_support: 1, variable_segment_min: 3, ..settings() }, 1);
                prop_assert!(p.validate().is_ok());
            }
        }
}
