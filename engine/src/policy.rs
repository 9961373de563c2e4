//! The versioned policy: what was learned, in a portable JSON form.
//!
//! The filter's learner, the collector's fleet learner and `flowguard learn` all produce
//! this; endpoints are named by template, so a policy moves between proxies.

use crate::endpoint_set::MAX_ENDPOINTS;
use crate::rule::{Action, Rule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// `from` of a transition that starts a session.
pub const START: &str = "^";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: u64,
    #[serde(default)]
    pub learned_from: LearnedFrom,
    /// Template prefixes whose next segment was learned to be an identifier.
    #[serde(default)]
    pub variable_prefixes: Vec<String>,
    pub endpoints: Vec<EndpointPolicy>,
    #[serde(default)]
    pub transitions: Vec<Transition>,
    /// The window of the rate and distinct-id limits, in seconds.
    #[serde(default = "default_window")]
    pub window_s: u32,
    /// Requests per window of one session over all endpoints.
    #[serde(default)]
    pub session_rate: Option<Limit>,
    /// 401/403 answers per auth window of one session or client address.
    #[serde(default)]
    pub auth_failures: Option<Limit>,
    /// 401/403 answers per auth window of one client address (over all its sessions).
    #[serde(default)]
    pub address_auth_failures: Option<Limit>,
    /// The first version with this exact endpoint list (0: this version). Sessions
    /// recorded under any version since keep their completed steps when this one is
    /// installed: a policy relearned with more evidence must not reset customers mid-flow.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub layout_since: u64,
    /// An operator's decisions over what was learned (the console); learning carries
    /// them into every version it learns after.
    #[serde(default, skip_serializing_if = "Decisions::is_empty")]
    pub decisions: Decisions,
}

/// An operator's decisions over what learning found. They ride in the policy, so the
/// fleet installs them as it installs any version; the learned fields stay what learning
/// found (the evidence stays visible) and the decisions apply when the model is compiled.
/// Learning never overrides them: a relearned or fleet-learned version carries them over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decisions {
    /// Rule id to action for every endpoint, over the plugin configuration's `rules`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, Action>,
    /// Per endpoint template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, EndpointDecisions>,
}

/// An operator's decisions for one endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointDecisions {
    /// Rule id to action on this endpoint (over the policy-wide decisions).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rules: BTreeMap<String, Action>,
    /// Prerequisites enforced whatever learning says (session-wide).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pin: Vec<String>,
    /// Prerequisites never enforced nor flagged, whatever learning says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forget: Vec<String>,
    /// The endpoint's per-session rate limit is at least this (a loosened limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
}

impl Decisions {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.endpoints.is_empty()
    }

    /// The rule of `id`, if it names one.
    pub fn rule(id: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.id() == id)
    }

    /// `endpoint`'s decisions, if any.
    pub fn endpoint(&self, template: &str) -> Option<&EndpointDecisions> {
        self.endpoints.get(template)
    }
}

impl EndpointPolicy {
    /// The session-wide prerequisites in force: learned ones and pinned ones, less the
    /// forgotten ones.
    pub fn decided_prerequisites<'a>(&'a self, d: Option<&'a EndpointDecisions>) -> Vec<&'a str> {
        let forgotten = |p: &&String| d.is_none_or(|d| !d.forget.contains(p));
        let mut out: Vec<&str> = self
            .prerequisites
            .iter()
            .filter(forgotten)
            .map(String::as_str)
            .collect();
        for p in d.map(|d| d.pin.as_slice()).unwrap_or_default() {
            if !out.contains(&p.as_str()) && !d.is_some_and(|d| d.forget.contains(p)) {
                out.push(p);
            }
        }
        out
    }
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_false(v: &bool) -> bool {
    !*v
}

fn default_window() -> u32 {
    10
}

/// A learned limit with the percentiles it was chosen from, so an operator can see why.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub p50: u32,
    pub p90: u32,
    pub p99: u32,
    /// The threshold in force: `max(floor, ceil(bound x margin))` or the configured limit.
    pub limit: u32,
    /// The value that is, at `learning.confidence`, at least the true 99th percentile
    /// (the largest peak seen while fewer than 459 units back it at 0.99).
    #[serde(default)]
    pub bound: u32,
    /// Units (sessions or addresses) the percentiles come from.
    #[serde(default)]
    pub units: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedFrom {
    pub sessions: u64,
    pub requests: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointPolicy {
    /// `METHOD /path/{id}`.
    pub template: String,
    /// Whether sessions were seen starting here.
    #[serde(default)]
    pub entry: bool,
    /// Learned sessions that reached this endpoint.
    #[serde(default)]
    pub sessions: u64,
    #[serde(default)]
    pub successes: u64,
    /// Endpoints that must have succeeded earlier in the session.
    #[serde(default)]
    pub prerequisites: Vec<String>,
    /// Endpoints that must have succeeded earlier on the same object (the identifier
    /// values in the path): confirming order B needs a payment of order B.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bound_prerequisites: Vec<String>,
    /// Endpoints that some evidence (the bound at `learning.flag_confidence`), not yet
    /// enough to block, shows sessions complete first: skipping one is flagged
    /// (`order.missing_prerequisite`), so step-skipping shows before order is enforced.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flag_prerequisites: Vec<String>,
    /// The same tier for rules bound to the object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flag_bound_prerequisites: Vec<String>,
    /// Requests per window of one session to this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Limit>,
    /// Distinct identifiers per window of one session on this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_ids: Option<Limit>,
    /// Anonymous (address-keyed) requests per window of one client address, per
    /// identified session it carries: learned over addresses, enforced on address-keyed
    /// requests (a login brute force, a registration flood).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_rate: Option<Limit>,
    /// Distinct identifiers per window of one client address's anonymous requests, per
    /// identified session it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address_distinct_ids: Option<Limit>,
    /// 401/403 answers seen in learning: where credential stuffing would aim.
    #[serde(default)]
    pub auth_failures: u64,
    /// A retired (zombie) endpoint: calls are flagged.
    #[serde(default)]
    pub deprecated: bool,
    /// A call arriving here by a transition never learned is not flagged
    /// (`order.unknown_transition`): the sample did not show how sessions arrive here well
    /// enough for a new way in to be unusual (several routes, and a Good-Turing estimate
    /// of the share of arrivals by unseen ways of at most `learning.transition_novelty`).
    /// A script's one path, or a step reached in many ways by few sessions, would make
    /// every other visitor "unknown".
    #[serde(default, skip_serializing_if = "is_false")]
    pub open_transitions: bool,
    /// What the learned order rules of this endpoint stand on (learned policies only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<crate::evidence::Evidence>,
    /// The sensitive values this endpoint's answers normally carry (none: any is flagged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sensitive: Option<crate::sensitive::Baseline>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// A template, or `^` for the start of a session.
    pub from: String,
    pub to: String,
    pub count: u64,
}

/// Why a policy is refused, naming the field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for PolicyError {}

fn bad(key: String, message: impl Into<String>) -> PolicyError {
    PolicyError {
        key,
        message: message.into(),
    }
}

impl EndpointPolicy {
    /// The order rules in words, `None` without any: `POST /login; same object:
    /// POST /orders/{id}/pay`.
    pub fn order_rules(&self) -> Option<String> {
        join_rules(&self.prerequisites, &self.bound_prerequisites)
    }

    /// The order rules of the flag tier in words (some evidence, not enough to block),
    /// `None` without any.
    pub fn flag_rules(&self) -> Option<String> {
        join_rules(&self.flag_prerequisites, &self.flag_bound_prerequisites)
    }

    /// Every endpoint this one waits for, session-wide or on its object.
    pub fn all_prerequisites(&self) -> impl Iterator<Item = &String> {
        self.prerequisites.iter().chain(&self.bound_prerequisites)
    }
}

impl Policy {
    /// Every endpoint's order rules in words, one line each for the endpoints that have
    /// any: `POST /orders/{id}/confirm: POST /login; same object: POST /orders/{id}/pay`.
    pub fn order_rules(&self) -> Vec<String> {
        self.endpoints
            .iter()
            .filter_map(|e| Some(format!("{}: {}", e.template, e.order_rules()?)))
            .collect()
    }

    /// Parses and fully validates a policy from JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Policy, PolicyError> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let p: Policy = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| bad(e.path().to_string(), e.into_inner().to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// The first version whose endpoint ids this policy keeps.
    pub fn layout(&self) -> u64 {
        if self.layout_since == 0 || self.layout_since > self.version {
            self.version
        } else {
            self.layout_since
        }
    }

    /// The endpoint with `template`.
    pub fn endpoint(&self, template: &str) -> Option<&EndpointPolicy> {
        self.endpoints.iter().find(|e| e.template == template)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks what serde cannot: sizes, shapes and that every reference resolves.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.window_s == 0 || self.window_s > 3600 {
            return Err(bad(
                "window_s".into(),
                format!("expected 1 to 3600, got {}", self.window_s),
            ));
        }
        if self.version == 0 || self.version > u64::from(u32::MAX) {
            return Err(bad(
                "version".into(),
                format!("expected 1 to {}, got {}", u32::MAX, self.version),
            ));
        }
        if self.endpoints.len() > MAX_ENDPOINTS {
            return Err(bad(
                "endpoints".into(),
                format!(
                    "at most {MAX_ENDPOINTS} endpoints, got {}",
                    self.endpoints.len()
                ),
            ));
        }
        let mut known = HashSet::new();
        for (i, e) in self.endpoints.iter().enumerate() {
            if !is_template(&e.template) {
                return Err(bad(
                    format!("endpoints[{i}].template"),
                    format!("expected \"METHOD /path\", got {:?}", e.template),
                ));
            }
            if !known.insert(e.template.as_str()) {
                return Err(bad(
                    format!("endpoints[{i}].template"),
                    format!("duplicate {:?}", e.template),
                ));
            }
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let lists = [
                ("prerequisites", &e.prerequisites),
                ("bound_prerequisites", &e.bound_prerequisites),
                ("flag_prerequisites", &e.flag_prerequisites),
                ("flag_bound_prerequisites", &e.flag_bound_prerequisites),
            ];
            for (field, list) in lists {
                for (j, p) in list.iter().enumerate() {
                    if !known.contains(p.as_str()) || *p == e.template {
                        return Err(bad(
                            format!("endpoints[{i}].{field}[{j}]"),
                            format!("{p:?} is not another endpoint of the policy"),
                        ));
                    }
                }
            }
        }
        for (i, t) in self.transitions.iter().enumerate() {
            if t.from != START && !known.contains(t.from.as_str()) {
                return Err(bad(
                    format!("transitions[{i}].from"),
                    format!("unknown endpoint {:?}", t.from),
                ));
            }
            if !known.contains(t.to.as_str()) {
                return Err(bad(
                    format!("transitions[{i}].to"),
                    format!("unknown endpoint {:?}", t.to),
                ));
            }
        }
        for (i, p) in self.variable_prefixes.iter().enumerate() {
            if p.split_once(' ').is_none() {
                return Err(bad(
                    format!("variable_prefixes[{i}]"),
                    format!("expected \"METHOD /path\", got {p:?}"),
                ));
            }
        }
        self.validate_decisions(&known)
    }

    /// Decisions name known rules and endpoints, and a pin never closes a cycle (two
    /// steps each waiting for the other would refuse every session).
    fn validate_decisions(&self, known: &HashSet<&str>) -> Result<(), PolicyError> {
        let d = &self.decisions;
        let check_rules = |at: &str, rules: &BTreeMap<String, Action>| match rules
            .keys()
            .find(|id| Decisions::rule(id).is_none())
        {
            Some(id) => Err(bad(format!("{at}.{id}"), "unknown rule id")),
            None => Ok(()),
        };
        check_rules("decisions.rules", &d.rules)?;
        for (t, e) in &d.endpoints {
            let at = format!("decisions.endpoints.{t}");
            if !known.contains(t.as_str()) {
                return Err(bad(at, "not an endpoint of the policy"));
            }
            check_rules(&format!("{at}.rules"), &e.rules)?;
            for (field, list) in [("pin", &e.pin), ("forget", &e.forget)] {
                for (j, p) in list.iter().enumerate() {
                    if !known.contains(p.as_str()) || p == t {
                        return Err(bad(
                            format!("{at}.{field}[{j}]"),
                            format!("{p:?} is not another endpoint of the policy"),
                        ));
                    }
                }
            }
            if e.rate_limit.is_some_and(|l| l == 0 || l > 1_000_000) {
                return Err(bad(format!("{at}.rate_limit"), "expected 1 to 1000000"));
            }
        }
        if let Some((t, p)) = self.pinned_cycle() {
            return Err(bad(
                format!("decisions.endpoints.{t}.pin"),
                format!("pinning {p:?} makes two steps wait for each other"),
            ));
        }
        Ok(())
    }

    /// Takes `from`'s decisions over, as far as this policy's endpoints allow (a fleet
    /// policy learned again may lack an endpoint a decision named): the decisions that
    /// name a missing endpoint, and pins that would close a cycle, are left out.
    pub fn carry_decisions(&mut self, from: &Decisions) {
        let known: HashSet<String> = self.endpoints.iter().map(|e| e.template.clone()).collect();
        let mut decisions = from.clone();
        decisions.endpoints.retain(|t, _| known.contains(t));
        for (t, e) in &mut decisions.endpoints {
            e.pin.retain(|p| known.contains(p) && p != t);
            e.forget.retain(|p| known.contains(p) && p != t);
        }
        self.decisions = decisions;
        while let Some((t, p)) = self.pinned_cycle() {
            let (t, p) = (t.to_owned(), p.to_owned());
            if let Some(e) = self.decisions.endpoints.get_mut(&t) {
                e.pin.retain(|x| *x != p);
            }
        }
    }

    /// A pin on a cycle of the prerequisites in force, as (endpoint, pinned step).
    fn pinned_cycle(&self) -> Option<(&str, &str)> {
        let after: HashMap<&str, Vec<&str>> = self
            .endpoints
            .iter()
            .map(|e| {
                let d = self.decisions.endpoint(&e.template);
                let mut needs = e.decided_prerequisites(d);
                needs.extend(e.bound_prerequisites.iter().map(String::as_str));
                (e.template.as_str(), needs)
            })
            .collect();
        // Whether `from` waits, directly or not, for `to`.
        let waits = |from: &str, to: &str| {
            let mut seen = HashSet::new();
            let mut stack = vec![from];
            while let Some(at) = stack.pop() {
                for next in after.get(at).into_iter().flatten() {
                    if *next == to {
                        return true;
                    }
                    if seen.insert(*next) {
                        stack.push(next);
                    }
                }
            }
            false
        };
        self.decisions.endpoints.iter().find_map(|(t, e)| {
            e.pin
                .iter()
                .find(|p| waits(p, t))
                .map(|p| (t.as_str(), p.as_str()))
        })
    }
}

/// `a, b; same object: c`.
fn join_rules(session: &[String], bound: &[String]) -> Option<String> {
    let bound = (!bound.is_empty()).then(|| format!("same object: {}", bound.join(", ")));
    let session = (!session.is_empty()).then(|| session.join(", "));
    match (session, bound) {
        (Some(s), Some(b)) => Some(format!("{s}; {b}")),
        (s, b) => s.or(b),
    }
}

fn is_template(t: &str) -> bool {
    match t.split_once(' ') {
        Some((m, p)) => {
            !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase()) && p.starts_with('/')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(t: &str, pre: &[&str]) -> EndpointPolicy {
        EndpointPolicy {
            template: t.into(),
            prerequisites: pre.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn json_round_trips_and_validates() {
        let p = Policy {
            version: 3,
            window_s: 10,
            endpoints: vec![ep("POST /pay", &[]), ep("POST /confirm", &["POST /pay"])],
            transitions: vec![Transition {
                from: START.into(),
                to: "POST /pay".into(),
                count: 4,
            }],
            ..Default::default()
        };
        assert_eq!(Policy::from_json(p.to_json().as_bytes()), Ok(p));
    }

    #[test]
    fn refuses_dangling_references_and_bad_shapes() {
        let e = |p: Policy| p.validate().unwrap_err().key;
        let base = |eps: Vec<EndpointPolicy>| Policy {
            version: 1,
            window_s: 10,
            endpoints: eps,
            ..Default::default()
        };
        assert_eq!(e(Policy::default()), "window_s");
        assert_eq!(
            e(Policy {
                window_s: 10,
                ..Default::default()
            }),
            "version"
        );
        assert_eq!(
            e(base(vec![ep("POST /c", &["POST /x"])])),
            "endpoints[0].prerequisites[0]"
        );
        assert_eq!(
            e(base(vec![ep("POST /c", &["POST /c"])])),
            "endpoints[0].prerequisites[0]"
        );
        assert_eq!(e(base(vec![ep("post /c", &[])])), "endpoints[0].template");
        assert_eq!(
            e(base(vec![ep("GET /a", &[]), ep("GET /a", &[])])),
            "endpoints[1].template"
        );
        let many = (0..=MAX_ENDPOINTS)
            .map(|i| ep(&format!("GET /{i}"), &[]))
            .collect();
        assert_eq!(e(base(many)), "endpoints");
        let t = Policy {
            transitions: vec![Transition {
                from: "GET /z".into(),
                to: "GET /a".into(),
                count: 1,
            }],
            ..base(vec![ep("GET /a", &[])])
        };
        assert_eq!(e(t), "transitions[0].from");
        assert!(Policy::from_json(br#"{"version":1,"endpoints":[],"extra":1}"#).is_err());
        assert!(Policy::from_json(b"\xff").is_err());
    }
}
