//! The learning counters: what normal traffic showed, per endpoint and per session.

use crate::config::LearningSettings;
use crate::endpoint_set::{EndpointId, MAX_ENDPOINTS};
use crate::evidence::Routes;
use crate::sensitive::{Baseline, Findings};
use crate::slot::{Visit, NO_ENDPOINT};
use crate::support::Support;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Counters learned from traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnStats {
    pub sessions: u64,
    pub requests: u64,
    /// Sessions that reached each endpoint.
    pub reached: BTreeMap<EndpointId, u64>,
    /// Successful answers of each endpoint.
    pub succeeded: BTreeMap<EndpointId, u64>,
    /// Sessions whose first success of each endpoint came after it had failed: clients
    /// retried it until it succeeded, so its success mattered to what came next.
    pub recovered: BTreeMap<EndpointId, u64>,
    /// `(endpoint, p)`: sessions that reached `endpoint` with `p` already completed.
    pub prior: BTreeMap<(EndpointId, EndpointId), u64>,
    /// Requests to each endpoint on an object the step had not yet succeeded on (with the
    /// object's earlier steps known).
    pub object_reached: BTreeMap<EndpointId, u64>,
    /// `(endpoint, p)`: of those, the ones whose object had already completed `p`.
    pub object_prior: BTreeMap<(EndpointId, EndpointId), u64>,
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
    /// `(endpoint, k)`: client addresses whose anonymous requests to `endpoint` in one
    /// window reached `k` per identified session they carried.
    pub address_rate_at_least: BTreeMap<(EndpointId, u8), u64>,
    /// `(endpoint, k)`: the same for distinct identifiers.
    pub address_ids_at_least: BTreeMap<(EndpointId, u8), u64>,
    /// Who reached each endpoint.
    pub reached_support: BTreeMap<EndpointId, Support>,
    /// `(endpoint, p)`: who reached `endpoint` without having completed `p` (the evidence
    /// that `p` is not a prerequisite).
    pub lacking: BTreeMap<(EndpointId, EndpointId), Support>,
    /// Who made each transition.
    pub transition_support: BTreeMap<(EndpointId, EndpointId), Support>,
    /// Sessions left out of learning because their address had started its share.
    pub unlearned_sessions: u64,
    /// Weak (address-keyed) sessions, which taught the inventory but no flow.
    pub weak_sessions: u64,
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
    /// What learning takes from a request, live (the exchange) and offline
    /// (`learn::offline`) alike: a weak session's endpoint facts and per-address peaks
    /// (`carried`: the identified sessions its address carries), or a session's flow.
    pub fn learn_request(
        &mut self,
        endpoint: EndpointId,
        visit: &Visit,
        weak: bool,
        carried: u16,
        known: usize,
    ) {
        if weak {
            self.observe_inventory(endpoint, visit, carried);
        } else {
            self.observe_request(endpoint, visit, known);
        }
    }

    /// What learning takes from the answer to a request, live and offline alike: the
    /// outcome of a step of a learned flow (`flow`), or else, for a request learning
    /// counts at all (`facts`, weak sessions too), only that authentication failed there.
    pub fn learn_answer(
        &mut self,
        endpoint: EndpointId,
        (flow, facts): (bool, bool),
        retry: bool,
        status: u16,
        peak: Option<u16>,
    ) {
        if flow {
            self.observe_response(endpoint, retry, status, peak);
        } else if facts && crate::slot::is_auth_failure(status) {
            self.observe_endpoint_failure(endpoint);
        }
    }

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
        if let Some(done) = visit.object.filter(|done| !done.contains(endpoint)) {
            bump(&mut self.object_reached, endpoint, 1);
            for p in done.iter() {
                bump(&mut self.object_prior, (endpoint, p), 1);
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

    /// Counts the answer of `endpoint`; `retry` is the request's [`Visit::retry`] and
    /// `auth_peak` the session's new auth-failure peak.
    pub fn observe_response(
        &mut self,
        endpoint: EndpointId,
        retry: bool,
        status: u16,
        auth_peak: Option<u16>,
    ) {
        if crate::slot::is_success(status) {
            bump(&mut self.succeeded, endpoint, 1);
            if retry {
                bump(&mut self.recovered, endpoint, 1);
            }
        }
        if crate::slot::is_auth_failure(status) {
            bump(&mut self.auth_failures, endpoint, 1);
        }
        if let Some(k) = auth_peak {
            bump(&mut self.auth_at_least, k.min(1000), 1);
        }
    }

    /// Counts a request of a weak (address-keyed) session, which teaches no order: that
    /// the endpoint exists (its support), the transition (so a visitor's first steps
    /// before a login are known ones), and the address's peaks per window on it, per
    /// identified session the address `carried` (a NAT's many customers are one address).
    pub fn observe_inventory(&mut self, endpoint: EndpointId, visit: &Visit, carried: u16) {
        if !visit.learn {
            return;
        }
        if visit.new_session {
            self.weak_sessions = self.weak_sessions.saturating_add(1);
        }
        if visit.first_visit {
            support(&mut self.reached_support, endpoint, visit);
        }
        bump(&mut self.transitions, (visit.previous, endpoint), 1);
        support(
            &mut self.transition_support,
            (visit.previous, endpoint),
            visit,
        );
        let per = u32::from(carried.max(1));
        // The address's k-th request counts once for each per-session level it reaches
        // (a level is reached when ceil(k / carried) grows).
        let level = |k: u8| -> Option<u8> {
            let k = u32::from(k);
            let now = k.div_ceil(per);
            (now > k.saturating_sub(1).div_ceil(per)).then(|| u8::try_from(now).unwrap_or(u8::MAX))
        };
        if let Some(k) = visit.tally.new_peak.and_then(level) {
            bump(&mut self.address_rate_at_least, (endpoint, k), 1);
        }
        if let Some((from, to)) = visit.tally.new_ids_peak {
            for k in from.saturating_add(1)..=to {
                if let Some(l) = level(k) {
                    bump(&mut self.address_ids_at_least, (endpoint, l), 1);
                }
            }
        }
    }

    /// Counts a 401/403 answer of `endpoint` in a session that teaches nothing else (a
    /// weak, address-keyed one): where authentication fails is a fact about the endpoint,
    /// not about one client's flow, and it decides where per-address failures are counted.
    pub fn observe_endpoint_failure(&mut self, endpoint: EndpointId) {
        bump(&mut self.auth_failures, endpoint, 1);
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
        add_all(&mut self.recovered, &other.recovered);
        add_all(&mut self.prior, &other.prior);
        add_all(&mut self.object_reached, &other.object_reached);
        add_all(&mut self.object_prior, &other.object_prior);
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
        add_all(
            &mut self.address_rate_at_least,
            &other.address_rate_at_least,
        );
        add_all(&mut self.address_ids_at_least, &other.address_ids_at_least);
        merge_all(&mut self.reached_support, &other.reached_support);
        merge_all(&mut self.lacking, &other.lacking);
        merge_all(&mut self.transition_support, &other.transition_support);
        self.unlearned_sessions = self
            .unlearned_sessions
            .saturating_add(other.unlearned_sessions);
        self.weak_sessions = self.weak_sessions.saturating_add(other.weak_sessions);
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
            recovered: one(&self.recovered),
            prior: pairs(&self.prior, false),
            object_reached: one(&self.object_reached),
            object_prior: pairs(&self.object_prior, false),
            transitions: pairs(&self.transitions, true),
            rate_at_least: with_k(&self.rate_at_least),
            ids_at_least: with_k(&self.ids_at_least),
            address_rate_at_least: with_k(&self.address_rate_at_least),
            address_ids_at_least: with_k(&self.address_ids_at_least),
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
