//! The compiled model: a policy plus configuration turned into bitsets, limits and hash
//! lookups for the request path.

use crate::config::{RuleActions, Settings};
use crate::endpoint::{template_parts, Normaliser};
use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::policy::{
    Decisions, EndpointDecisions, EndpointPolicy, Limit, Policy, PolicyError, START,
};
use crate::sensitive::{Baseline, Findings};
use crate::slot::NO_ENDPOINT;
use std::collections::{HashMap, HashSet};

/// The request path's hasher for the model's own keys.
type Fast = foldhash::fast::RandomState;

/// What the filter consults per request. Endpoint ids are positions in the policy.
#[derive(Clone, Debug)]
pub struct Model {
    pub version: u64,
    /// The first version with this model's endpoint ids ([`Policy::layout`]).
    pub layout: u64,
    /// Sessions the policy was learned from (when relearning is due is measured from it).
    pub learned_sessions: u64,
    pub normaliser: Normaliser,
    pub window_ms: u32,
    pub auth_window_ms: u32,
    /// Requests per window of one session over all endpoints (0: no limit).
    pub session_rate: u32,
    /// 401/403 answers per auth window of a session.
    pub auth_limit: u32,
    /// 401/403 answers per auth window of a client address.
    pub address_auth_limit: u32,
    /// Template → id, looked up on every request: foldhash, not SipHash (the keys are
    /// the policy's templates; a client only looks up).
    index: HashMap<String, EndpointId, Fast>,
    templates: Vec<String>,
    prerequisites: Vec<EndpointSet>,
    /// Prerequisites per endpoint that must have succeeded on the request's own object.
    bound: Vec<EndpointSet>,
    /// The flag tier of both (some evidence, not enough to block).
    flag_prerequisites: Vec<EndpointSet>,
    flag_bound: Vec<EndpointSet>,
    /// Endpoints some bound rule waits for: the only ones whose successes per object a
    /// session records, so browsing many objects does not push out the ones that matter.
    binding: EndpointSet,
    /// Endpoints some rule waits for (session-wide or bound): a success of any other one
    /// changes no verdict.
    required: EndpointSet,
    transitions: HashSet<(EndpointId, EndpointId), Fast>,
    rate_limits: Vec<u32>,
    ids_limits: Vec<u32>,
    /// Per client address and identified session it carries, for anonymous requests.
    address_rate_limits: Vec<u32>,
    address_ids_limits: Vec<u32>,
    auth_endpoints: EndpointSet,
    /// Endpoints whose unknown ways in are not flagged ([`EndpointPolicy::open_transitions`]).
    open_transitions: EndpointSet,
    deprecated: EndpointSet,
    /// Learned endpoints retired at run time for disuse (`endpoints.retire_after_s`).
    retired: EndpointSet,
    deprecated_rules: Vec<(Option<String>, String)>,
    /// What each endpoint's answers normally carry.
    sensitive: Vec<Baseline>,
    /// Each rule's action per endpoint, and for requests without one: the plugin
    /// configuration's `rules` with the operator's decisions over them.
    actions: Vec<RuleActions>,
    global_actions: RuleActions,
}

/// `configured` with the policy-wide decisions over it, then the endpoint's.
fn decided_actions(
    configured: &RuleActions,
    decisions: &Decisions,
    endpoint: Option<&EndpointDecisions>,
) -> RuleActions {
    let mut actions = *configured;
    let endpoint_rules = endpoint.map(|e| &e.rules).into_iter().flatten();
    for (id, action) in decisions.rules.iter().chain(endpoint_rules) {
        if let Some(rule) = Decisions::rule(id) {
            actions.set(rule, *action);
        }
    }
    actions
}

fn configured(limit: Option<u32>, learned: Option<Limit>) -> u32 {
    limit.or(learned.map(|l| l.limit)).unwrap_or(0)
}

impl Model {
    /// Validates and compiles `policy` under `settings` (declared templates, deprecated
    /// endpoints, and configured limits, which override learned ones).
    pub fn compile(policy: &Policy, settings: &Settings) -> Result<Model, PolicyError> {
        policy.validate()?;
        let templates: Vec<String> = policy
            .endpoints
            .iter()
            .map(|e| e.template.clone())
            .collect();
        let index: HashMap<String, EndpointId, Fast> = templates
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.clone(), EndpointId::try_from(i).ok()?)))
            .collect();
        let id = |t: &str| {
            if t == START {
                Some(NO_ENDPOINT)
            } else {
                index.get(t).copied()
            }
        };
        let count = templates.len();
        let set_of = |pred: &dyn Fn(usize) -> bool| {
            let mut set = EndpointSet::EMPTY;
            (0..count)
                .filter(|i| pred(*i))
                .filter_map(|i| EndpointId::try_from(i).ok())
                .for_each(|i| set.insert(i));
            set
        };
        let set_of_names = |names: &[String]| {
            let mut set = EndpointSet::EMPTY;
            names
                .iter()
                .filter_map(|p| id(p))
                .for_each(|p| set.insert(p));
            set
        };
        // The operator's decisions (`Policy::decisions`) over what was learned: pinned
        // prerequisites are enforced, forgotten ones neither enforced nor flagged.
        let decided = |e: &EndpointPolicy| policy.decisions.endpoint(&e.template);
        let forgotten =
            |e: &EndpointPolicy| decided(e).map_or(EndpointSet::EMPTY, |d| set_of_names(&d.forget));
        let prerequisites: Vec<EndpointSet> = policy
            .endpoints
            .iter()
            .map(|e| {
                let names: Vec<String> = e
                    .decided_prerequisites(decided(e))
                    .into_iter()
                    .map(str::to_owned)
                    .collect();
                set_of_names(&names)
            })
            .collect();
        let less = |sets: Vec<EndpointSet>, minus: &dyn Fn(usize) -> EndpointSet| {
            sets.into_iter()
                .enumerate()
                .map(|(i, s)| EndpointSet(s.0 & !minus(i).0))
                .collect::<Vec<EndpointSet>>()
        };
        let forgotten_at = |i: usize| {
            policy
                .endpoints
                .get(i)
                .map_or(EndpointSet::EMPTY, forgotten)
        };
        let bound = less(
            policy
                .endpoints
                .iter()
                .map(|e| set_of_names(&e.bound_prerequisites))
                .collect(),
            &forgotten_at,
        );
        let enforced_or_forgotten = |i: usize| {
            let enforced = prerequisites.get(i).copied().unwrap_or(EndpointSet::EMPTY);
            EndpointSet(forgotten_at(i).0 | enforced.0)
        };
        let flag_prerequisites = less(
            policy
                .endpoints
                .iter()
                .map(|e| set_of_names(&e.flag_prerequisites))
                .collect(),
            &enforced_or_forgotten,
        );
        let flag_bound = less(
            policy
                .endpoints
                .iter()
                .map(|e| set_of_names(&e.flag_bound_prerequisites))
                .collect(),
            &forgotten_at,
        );
        let binding = EndpointSet(bound.iter().chain(&flag_bound).fold(0, |all, s| all | s.0));
        let required = EndpointSet(
            prerequisites
                .iter()
                .chain(&flag_prerequisites)
                .fold(binding.0, |all: u128, s: &EndpointSet| all | s.0),
        );
        let transitions = policy
            .transitions
            .iter()
            .filter(|t| t.count > 0)
            .filter_map(|t| Some((id(&t.from)?, id(&t.to)?)))
            .collect();
        let limits = &settings.limits;
        let deprecated_rules: Vec<(Option<String>, String)> = settings
            .endpoints
            .deprecated
            .iter()
            .map(|d| match d.split_once(' ') {
                Some((m, p)) => (Some(m.to_ascii_uppercase()), p.to_owned()),
                None => (None, d.clone()),
            })
            .collect();
        let mut model = Model {
            version: policy.version,
            layout: policy.layout(),
            learned_sessions: policy.learned_from.sessions,
            normaliser: Normaliser::new(
                settings.endpoints.templates.clone(),
                policy.variable_prefixes.iter().cloned().collect(),
            )
            .with_id_params(settings.endpoints.id_params.clone())
            .case_insensitive(settings.endpoints.case_insensitive),
            window_ms: policy.window_s.saturating_mul(1000),
            auth_window_ms: limits.auth_window_s.saturating_mul(1000),
            session_rate: configured(limits.session_rate.limit, policy.session_rate),
            address_auth_limit: limits
                .address_auth
                .limit
                .or(policy.address_auth_failures.map(|l| l.limit))
                .unwrap_or_else(|| limits.address_auth.choose(0)),
            auth_limit: limits
                .auth
                .limit
                .or(policy.auth_failures.map(|l| l.limit))
                .unwrap_or_else(|| limits.auth.choose(0)),
            rate_limits: policy
                .endpoints
                .iter()
                .map(|e| {
                    let limit = configured(limits.rate.limit, e.rate);
                    match decided(e).and_then(|d| d.rate_limit) {
                        // Loosened by an operator (0 is no limit: nothing to loosen).
                        Some(at_least) if limit > 0 => limit.max(at_least),
                        _ => limit,
                    }
                })
                .collect(),
            actions: policy
                .endpoints
                .iter()
                .map(|e| decided_actions(&settings.rules, &policy.decisions, decided(e)))
                .collect(),
            global_actions: decided_actions(&settings.rules, &policy.decisions, None),
            ids_limits: policy
                .endpoints
                .iter()
                .map(|e| {
                    configured(
                        limits
                            .enumeration
                            .limit
                            .filter(|_| e.template.contains('{')),
                        e.distinct_ids,
                    )
                })
                .collect(),
            address_rate_limits: policy
                .endpoints
                .iter()
                .map(|e| configured(limits.address_rate.limit, e.address_rate))
                .collect(),
            address_ids_limits: policy
                .endpoints
                .iter()
                .map(|e| {
                    configured(
                        limits
                            .address_enumeration
                            .limit
                            .filter(|_| e.template.contains('{')),
                        e.address_distinct_ids,
                    )
                })
                .collect(),
            auth_endpoints: set_of(&|i| {
                policy.endpoints.get(i).is_some_and(|e| e.auth_failures > 0)
            }),
            open_transitions: set_of(&|i| {
                policy.endpoints.get(i).is_some_and(|e| e.open_transitions)
            }),
            deprecated: EndpointSet::EMPTY,
            retired: EndpointSet::EMPTY,
            prerequisites,
            bound,
            flag_prerequisites,
            flag_bound,
            binding,
            required,
            transitions,
            index,
            templates,
            deprecated_rules,
            sensitive: policy
                .endpoints
                .iter()
                .map(|e| e.sensitive.unwrap_or_default())
                .collect(),
        };
        model.deprecated = set_of(&|i| {
            policy
                .endpoints
                .get(i)
                .is_some_and(|e| e.deprecated || model.matches_deprecated(&e.template))
        });
        Ok(model)
    }

    /// Whether a template is retired by configuration (`endpoints.deprecated`).
    pub fn matches_deprecated(&self, template: &str) -> bool {
        let (method, _) = template_parts(template);
        let path = template.split_once(' ').map_or(template, |(_, p)| p);
        self.deprecated_rules.iter().any(|(m, p)| {
            m.as_deref().is_none_or(|m| m == method)
                && if p.ends_with('/') {
                    path.starts_with(p.as_str()) || format!("{path}/") == *p
                } else {
                    path == p
                }
        })
    }

    /// Whether a scanned answer of `endpoint` (unknown: `None`) carries more sensitive
    /// data than its answers normally do.
    pub fn sensitive_beyond_normal(&self, endpoint: Option<EndpointId>, f: &Findings) -> bool {
        let normal = endpoint
            .and_then(|e| self.sensitive.get(usize::from(e)))
            .copied()
            .unwrap_or_default();
        f.beyond(&normal)
    }

    /// The id of a template, if the model knows it.
    pub fn endpoint(&self, template: &str) -> Option<EndpointId> {
        self.index.get(template).copied()
    }

    pub fn template(&self, id: EndpointId) -> Option<&str> {
        self.templates.get(usize::from(id)).map(String::as_str)
    }

    pub fn templates(&self) -> &[String] {
        &self.templates
    }

    pub fn len(&self) -> usize {
        self.templates.len()
    }

    pub fn is_empty(&self) -> bool {
        self.templates.is_empty()
    }

    /// Endpoints that must have succeeded before `id` is called.
    pub fn prerequisites(&self, id: EndpointId) -> EndpointSet {
        self.prerequisites
            .get(usize::from(id))
            .copied()
            .unwrap_or_default()
    }

    /// Endpoints that must have succeeded on the request's object before `id` is called.
    pub fn bound_prerequisites(&self, id: EndpointId) -> EndpointSet {
        self.bound.get(usize::from(id)).copied().unwrap_or_default()
    }

    /// The flag tier of [`Model::prerequisites`]: skipping one is flagged, not blocked.
    pub fn flag_prerequisites(&self, id: EndpointId) -> EndpointSet {
        self.flag_prerequisites
            .get(usize::from(id))
            .copied()
            .unwrap_or_default()
    }

    /// The flag tier of [`Model::bound_prerequisites`].
    pub fn flag_bound_prerequisites(&self, id: EndpointId) -> EndpointSet {
        self.flag_bound
            .get(usize::from(id))
            .copied()
            .unwrap_or_default()
    }

    /// Anonymous requests per window allowed to one client address on `id`, per
    /// identified session the address carries (0: no limit).
    pub fn address_rate_limit(&self, id: EndpointId) -> u32 {
        self.address_rate_limits
            .get(usize::from(id))
            .copied()
            .unwrap_or(0)
    }

    /// Distinct identifiers per window allowed to one address's anonymous requests on
    /// `id`, per identified session it carries (0: no limit).
    pub fn address_ids_limit(&self, id: EndpointId) -> u32 {
        self.address_ids_limits
            .get(usize::from(id))
            .copied()
            .unwrap_or(0)
    }

    /// Every step some rule waits for.
    pub fn required(&self) -> EndpointSet {
        self.required
    }

    /// Whether some rule waits for `id` (a success of another endpoint changes nothing).
    pub fn is_required(&self, id: EndpointId) -> bool {
        self.required.contains(id)
    }

    /// Whether a success of `id` must be recorded against its object.
    pub fn binds(&self, id: EndpointId) -> bool {
        self.binding.contains(id)
    }

    /// Whether `from -> to` was seen in learning (`from` = `NO_ENDPOINT`: session start),
    /// or is not judged: `to`'s ways in were not learned well enough
    /// ([`EndpointPolicy::open_transitions`]).
    pub fn knows_transition(&self, from: EndpointId, to: EndpointId) -> bool {
        self.open_transitions.contains(to) || self.transitions.contains(&(from, to))
    }

    /// Requests per window allowed to one session on `id` (0: no limit).
    pub fn rate_limit(&self, id: EndpointId) -> u32 {
        self.rate_limits.get(usize::from(id)).copied().unwrap_or(0)
    }

    /// Distinct identifiers per window allowed to one session on `id` (0: no limit).
    pub fn ids_limit(&self, id: EndpointId) -> u32 {
        self.ids_limits.get(usize::from(id)).copied().unwrap_or(0)
    }

    /// Whether requests to `endpoint` should also be checked against the client address's
    /// authentication failures: endpoints that answered 401/403 in learning or since
    /// ([`Model::note_auth_failure`]), and unknown ones.
    pub fn checks_address(&self, endpoint: Option<EndpointId>) -> bool {
        endpoint.is_none_or(|e| self.auth_endpoints.contains(e))
    }

    /// Notes that `endpoint` answered 401/403. A learning sample may hold no failed login
    /// at all: the address's failures are counted from the first one anyway, and from now
    /// on this endpoint's requests are checked against them, so a stuffing run on a login
    /// never seen failing is still refused.
    pub fn note_auth_failure(&mut self, endpoint: EndpointId) {
        self.auth_endpoints.insert(endpoint);
    }

    /// Each rule's action for a request to `endpoint` (`None`: outside the inventory, or
    /// no session): the configuration's, as the operator's decisions changed it.
    pub fn actions(&self, endpoint: Option<EndpointId>) -> &RuleActions {
        endpoint
            .and_then(|e| self.actions.get(usize::from(e)))
            .unwrap_or(&self.global_actions)
    }

    /// Whether `id` is retired: declared deprecated, or unused for too long.
    pub fn is_deprecated(&self, id: EndpointId) -> bool {
        self.deprecated.contains(id) || self.retired.contains(id)
    }

    /// Marks learned endpoints retired for disuse (computed by the caller on tick).
    pub fn set_retired(&mut self, retired: EndpointSet) {
        self.retired = retired;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EndpointPolicy, Transition};

    fn settings(json: &str) -> Settings {
        Settings::from_json(json.as_bytes()).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            version: 9,
            window_s: 10,
            variable_prefixes: vec!["GET /u".into()],
            endpoints: vec![
                EndpointPolicy {
                    template: "POST /pay".into(),
                    rate: Some(Limit {
                        p50: 1,
                        p90: 1,
                        p99: 2,
                        limit: 20,
                        ..Limit::default()
                    }),
                    auth_failures: 3,
                    ..Default::default()
                },
                EndpointPolicy {
                    template: "POST /orders/{id}/confirm".into(),
                    prerequisites: vec!["POST /pay".into()],
                    distinct_ids: Some(Limit {
                        p50: 1,
                        p90: 1,
                        p99: 1,
                        limit: 15,
                        ..Limit::default()
                    }),
                    ..Default::default()
                },
                EndpointPolicy {
                    template: "GET /api/v1/menu".into(),
                    ..Default::default()
                },
            ],
            transitions: vec![
                Transition {
                    from: START.into(),
                    to: "POST /pay".into(),
                    count: 2,
                },
                Transition {
                    from: "POST /pay".into(),
                    to: "POST /orders/{id}/confirm".into(),
                    count: 0,
                },
            ],
            ..Default::default()
        }
    }

    #[test]
    fn compiles_prerequisites_transitions_and_limits() {
        let m = Model::compile(&policy(), &settings("{}")).unwrap();
        assert_eq!((m.version, m.len(), m.window_ms), (9, 3, 10_000));
        assert_eq!(m.endpoint("POST /orders/{id}/confirm"), Some(1));
        assert_eq!(m.prerequisites(1).iter().collect::<Vec<_>>(), [0]);
        assert!(m.prerequisites(7).is_empty());
        assert!(
            m.is_required(0) && !m.is_required(1),
            "only pay is waited for"
        );
        assert!(m.knows_transition(NO_ENDPOINT, 0));
        assert!(
            !m.knows_transition(0, 1),
            "zero-count transitions are unknown"
        );
        assert_eq!(
            (m.rate_limit(0), m.rate_limit(1), m.ids_limit(1)),
            (20, 0, 15)
        );
        assert_eq!(
            m.auth_limit, 10,
            "the configured floor when the policy has none"
        );
        assert!(m.checks_address(Some(0)) && !m.checks_address(Some(1)) && m.checks_address(None));
        let mut m = m;
        m.note_auth_failure(1);
        assert!(
            m.checks_address(Some(1)),
            "a login that failed only after learning"
        );
        let mut out = String::new();
        m.normaliser.normalise("GET", "/u/alice", &mut out);
        assert_eq!(out, "GET /u/{id}");
    }

    #[test]
    fn configuration_overrides_and_deprecations_apply() {
        let s = settings(
            r#"{"rules":{"rate.session":{"limit":5},"rate.enumeration":{"limit":7},"auth.failures":{"limit":4}},
                "endpoints":{"deprecated":["/api/v1/","DELETE /pay"]}}"#,
        );
        let mut m = Model::compile(&policy(), &s).unwrap();
        assert_eq!(
            (
                m.rate_limit(0),
                m.rate_limit(1),
                m.ids_limit(1),
                m.ids_limit(0)
            ),
            (5, 5, 7, 0)
        );
        assert_eq!(m.auth_limit, 4);
        assert!(m.is_deprecated(2) && !m.is_deprecated(0));
        assert!(m.matches_deprecated("GET /api/v1/orders/{id}"));
        assert!(m.matches_deprecated("DELETE /pay") && !m.matches_deprecated("POST /pay"));
        let mut retired = EndpointSet::EMPTY;
        retired.insert(0);
        m.set_retired(retired);
        assert!(m.is_deprecated(0));
    }
}
