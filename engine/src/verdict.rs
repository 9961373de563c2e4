//! The verdict for one request: record it in the session's slot, decide which rules
//! fire, and what that means in `enforce`.

use crate::config::{RuleActions, Settings};
use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::model::Model;
use crate::rate::gcra;
use crate::rule::{Action, Rule, RuleSet};
use crate::slot::{Slot, Visit};
use std::borrow::Cow;
use std::fmt::Write;

/// What to do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Flag,
    Block { status: u16 },
}

impl Outcome {
    /// As the verdict header names it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Flag => "flag",
            Outcome::Block { .. } => "block",
        }
    }

    /// A block becomes a flag; anything else stays.
    pub fn min_flag(self) -> Outcome {
        match self {
            Outcome::Block { .. } => Outcome::Flag,
            other => other,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Rules that fired and are not `off`.
    pub fired: RuleSet,
    /// For `order.missing_prerequisite`: the steps the session skipped.
    pub missing: EndpointSet,
    /// For rate rules: seconds until a retry can succeed.
    pub retry_after_s: u32,
    /// `order.missing_prerequisite` fired on the flag tier only (some evidence, not enough
    /// to block): the session still teaches, or the tier would confirm itself.
    pub tentative_order: bool,
    /// The request is blocked for a skipped step and for nothing else: only then may
    /// evidence that the step was done elsewhere (the fleet, a mid-flow join) change it.
    pub order_blocks: bool,
}

impl Verdict {
    /// Whether the session may still teach the learner: no rule fired, or only rules
    /// that say "not seen before" (an unknown transition, the flag tier of the order
    /// rule). Leaving those sessions out would make the model confirm itself: a new way
    /// in would never be learned, a flag-tier rule never shown wrong.
    pub fn teaches(&self) -> bool {
        if matches!(self.outcome, Outcome::Block { .. }) {
            return false; // whatever rule blocked it, as the operator configured
        }
        let mut others = self.fired;
        others.remove(Rule::UnknownTransition);
        if self.tentative_order {
            others.remove(Rule::MissingPrerequisite);
        }
        others.is_empty()
    }

    pub const ALLOW: Verdict = Verdict {
        outcome: Outcome::Allow,
        fired: RuleSet::EMPTY,
        missing: EndpointSet::EMPTY,
        retry_after_s: 0,
        tentative_order: false,
        order_blocks: false,
    };

    /// The `x-flowguard-verdict` value: a static string unless a rule fired, so an
    /// allowed request allocates none.
    pub fn header(&self) -> Cow<'static, str> {
        if self.fired.is_empty() {
            return Cow::Borrowed(self.outcome.name());
        }
        let mut out = String::new();
        self.write_header(&mut out);
        Cow::Owned(out)
    }

    /// The `x-flowguard-verdict` value: `allow`, `flag; rules=a,b` or `block; rules=a`.
    pub fn write_header(&self, out: &mut String) {
        out.clear();
        out.push_str(self.outcome.name());
        for (i, rule) in self.fired.iter().enumerate() {
            out.push_str(if i == 0 { "; rules=" } else { "," });
            let _ = write!(out, "{}", rule.id());
        }
    }
}

/// One request as the engine sees it.
#[derive(Clone, Copy, Debug, Default)]
pub struct Request {
    /// The endpoint in the model (or the learning registry); `None`: not in the inventory.
    pub endpoint: Option<EndpointId>,
    /// For an endpoint outside the inventory: whether its template is declared retired.
    pub deprecated_template: bool,
    /// Hash of the request's identifier values, if its template has any.
    pub id: Option<u64>,
    pub now_ms: u64,
    /// 401/403 answers to the client address in the current auth window (0 if unchecked).
    pub address_failures: u16,
    /// The judge reads `address_failures` (the endpoint is checked per address): with
    /// a weak session's address facts, in the same read.
    pub checks_address: bool,
    /// The session is keyed by a fallback client address, which customers behind one NAT
    /// share: its steps and rates mix clients, so only per-address rules may block it.
    pub weak_session: bool,
    /// A session new here may be taken as joining mid-flow (its address had budget left):
    /// then its order rules flag instead of blocking, for the rest of the session.
    pub midflow_ok: bool,
    /// For a weak session: the identified sessions its address carries (its anonymous
    /// limits are per carried session, at least one).
    pub carried: u16,
    /// For a weak session: its address's slot holds another address's count (a
    /// collision), so what it carries is unknown and its anonymous limits only flag.
    pub address_shared: bool,
    /// For a session new here whose first request skips a step: where it stands with the
    /// fleet (`crate::fleet_join`; set by the judge and the filter only).
    pub fleet: crate::fleet_join::Fleet,
}

/// Records `req` in `slot` and decides on it. Without a model (still learning) the
/// request is only recorded.
pub fn evaluate(
    model: Option<&Model>,
    settings: &Settings,
    slot: &mut Slot,
    req: &Request,
) -> (Visit, Verdict) {
    let before = *slot;
    let Some(model) = model else {
        let window = settings.learning.window_s.saturating_mul(1000);
        return (
            slot.record_request(req.endpoint, req.id, req.now_ms, window),
            Verdict::ALLOW,
        );
    };
    let visit = slot.record_request(req.endpoint, req.id, req.now_ms, model.window_ms);
    let now = slot.clock(req.now_ms);
    let weak = req.weak_session;
    let mut fired = RuleSet::EMPTY;
    // Rules that fired but may only flag in this verdict.
    let mut soft = RuleSet::EMPTY;
    let mut missing = EndpointSet::EMPTY;
    let mut tentative_order = false;
    let mut retry_ms = 0u32;
    let window_retry = |slot: &Slot, retry_ms: &mut u32| {
        let window_start = visit
            .entry
            .and_then(|i| slot.rates.get(i))
            .map_or(now, |r| r.window_start);
        *retry_ms = (*retry_ms).max(
            window_start
                .saturating_add(model.window_ms)
                .saturating_sub(now),
        );
    };

    match req.endpoint {
        Some(e) => {
            // A bound rule asks the request's own object; an object the session's table
            // has forgotten falls back to what the session completed anywhere.
            let on_object = visit.object.unwrap_or(before.completed);
            let skipped = |session: EndpointSet, bound: EndpointSet| {
                EndpointSet(session.difference(before.completed).0 | bound.difference(on_object).0)
            };
            let blocking = skipped(model.prerequisites(e), model.bound_prerequisites(e));
            let tentative = skipped(
                model.flag_prerequisites(e),
                model.flag_bound_prerequisites(e),
            );
            missing = EndpointSet(blocking.0 | tentative.0);
            tentative_order = blocking.is_empty() && !tentative.is_empty();
            if !missing.is_empty() {
                fired.insert(Rule::MissingPrerequisite);
                // The flag tier's evidence is not enough to refuse anyone; a session
                // that joined mid-flow did its earlier steps where this proxy could not
                // see them; a weak session's steps mix the clients of one address.
                if blocking.is_empty() || slot.midflow || weak {
                    soft.insert(Rule::MissingPrerequisite);
                }
            }
            // Clients behind one address interleave: a weak session's transitions are
            // learned, not judged.
            if !weak && !model.knows_transition(before.last_endpoint, e) {
                fired.insert(Rule::UnknownTransition);
            }
            if model.is_deprecated(e) {
                fired.insert(Rule::DeprecatedEndpoint);
            }
            // A weak session is its client address: its anonymous requests have learned
            // limits of their own, per identified session the address carries. Where no
            // anonymous caller was seen in learning, what one session does is the share.
            let per = u32::from(req.carried.max(1));
            let (ids_limit, limit) = if weak {
                let or_session = |address: u32, session: u32| {
                    if address > 0 { address } else { session }.saturating_mul(per)
                };
                (
                    or_session(model.address_ids_limit(e), model.ids_limit(e)),
                    or_session(model.address_rate_limit(e), model.rate_limit(e)),
                )
            } else {
                (model.ids_limit(e), model.rate_limit(e))
            };
            if ids_limit > 0 && u32::from(visit.tally.distinct) > ids_limit {
                fired.insert(Rule::RateEnumeration);
                window_retry(slot, &mut retry_ms);
            }
            if weak && req.address_shared {
                soft.insert(Rule::RateEnumeration);
                soft.insert(Rule::RateSession);
            }
            if let (true, Some(entry)) =
                (limit > 0, visit.entry.and_then(|i| slot.rates.get_mut(i)))
            {
                match gcra(entry.tat, now, clamp16(limit), model.window_ms) {
                    Ok(tat) => entry.tat = tat,
                    Err(wait) => {
                        fired.insert(Rule::RateSession);
                        retry_ms = retry_ms.max(wait);
                    }
                }
            }
        }
        None if req.deprecated_template => fired.insert(Rule::DeprecatedEndpoint),
        None => fired.insert(Rule::UnknownEndpoint),
    }
    if model.session_rate > 0 && !weak {
        match gcra(
            slot.total.tat,
            now,
            clamp16(model.session_rate),
            model.window_ms,
        ) {
            Ok(tat) => slot.total.tat = tat,
            Err(wait) => {
                fired.insert(Rule::RateSession);
                retry_ms = retry_ms.max(wait);
            }
        }
    }
    // A weak session's own failures are its address's: the address rule counts them.
    let by_session = if weak {
        0
    } else {
        u32::from(before.auth.current(now, model.auth_window_ms))
    };
    let by_address = u32::from(req.address_failures);
    let address_hit = model.address_auth_limit > 0 && by_address >= model.address_auth_limit;
    if (model.auth_limit > 0 && by_session >= model.auth_limit) || address_hit {
        fired.insert(Rule::AuthFailures);
        let session_wait = before.auth.remaining(now, model.auth_window_ms);
        retry_ms = retry_ms.max(if session_wait > 0 {
            session_wait
        } else {
            model.auth_window_ms
        });
    }
    if req.midflow_ok && visit.new_session {
        slot.midflow = true;
        if fired.contains(Rule::MissingPrerequisite) {
            soft.insert(Rule::MissingPrerequisite);
        }
    }
    let actions = model.actions(req.endpoint);
    let mut verdict = decide(actions, fired, soft, missing);
    verdict.tentative_order = tentative_order;
    if matches!(verdict.outcome, Outcome::Block { .. })
        && fired.contains(Rule::MissingPrerequisite)
        && !soft.contains(Rule::MissingPrerequisite)
    {
        let mut others = fired;
        others.remove(Rule::MissingPrerequisite);
        verdict.order_blocks = !matches!(
            decide(actions, others, soft, missing).outcome,
            Outcome::Block { .. }
        );
    }
    verdict.retry_after_s = retry_ms
        .div_ceil(1000)
        .max(u32::from(!fired.is_empty() && retry_ms > 0));
    (visit, verdict)
}

/// The verdict on a request that has no session (none of the configured sources was
/// present) but a client address: only the per-address rule applies, so a stuffing bot
/// that sends no cookie is still counted and refused.
pub fn address_only(model: &Model, address_failures: u16) -> Verdict {
    let mut fired = RuleSet::EMPTY;
    if model.address_auth_limit > 0 && u32::from(address_failures) >= model.address_auth_limit {
        fired.insert(Rule::AuthFailures);
    }
    let mut verdict = outcome(model.actions(None), fired, EndpointSet::EMPTY);
    if !fired.is_empty() {
        verdict.retry_after_s = model.auth_window_ms.div_ceil(1000).max(1);
    }
    verdict
}

fn clamp16(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// [`outcome`] of `fired`, where the rules in `soft` may only flag.
fn decide(actions: &RuleActions, fired: RuleSet, soft: RuleSet, missing: EndpointSet) -> Verdict {
    if fired.is_empty() {
        return Verdict {
            missing,
            ..Verdict::ALLOW
        };
    }
    let mut verdict = outcome(actions, fired.difference(soft), missing);
    let flagged = outcome(actions, fired.intersection(soft), missing);
    for rule in flagged.fired.iter() {
        verdict.fired.insert(rule);
    }
    if flagged.outcome != Outcome::Allow && verdict.outcome == Outcome::Allow {
        verdict.outcome = Outcome::Flag;
    }
    verdict
}

/// Turns fired rules into an outcome: the first blocking rule decides the status.
pub fn outcome(actions: &RuleActions, fired: RuleSet, missing: EndpointSet) -> Verdict {
    let mut kept = RuleSet::EMPTY;
    let mut result = Outcome::Allow;
    for rule in fired.iter() {
        match actions.get(rule) {
            Action::Off => continue,
            Action::Flag if result == Outcome::Allow => result = Outcome::Flag,
            Action::Block if !matches!(result, Outcome::Block { .. }) => {
                result = Outcome::Block {
                    status: rule.block_status(),
                }
            }
            _ => {}
        }
        kept.insert(rule);
    }
    Verdict {
        outcome: result,
        fired: kept,
        missing,
        retry_after_s: 0,
        tentative_order: false,
        order_blocks: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{EndpointPolicy, Limit, Policy, Transition, START};
    use crate::slot::NO_ENDPOINT;

    fn settings(json: &str) -> Settings {
        Settings::from_json(json.as_bytes()).unwrap()
    }

    fn shop(s: &Settings) -> Model {
        Model::compile(&shop_policy(), s).unwrap()
    }

    fn shop_policy() -> Policy {
        let ep = |t: &str, pre: &[&str]| EndpointPolicy {
            template: t.into(),
            prerequisites: pre.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let tr = |f: &str, t: &str| Transition {
            from: f.into(),
            to: t.into(),
            count: 5,
        };
        let lim = |limit| {
            Some(Limit {
                p50: 1,
                p90: 2,
                p99: 3,
                limit,
                ..Limit::default()
            })
        };
        let mut orders = ep("GET /orders/{id}", &["POST /login"]);
        orders.rate = lim(30);
        orders.distinct_ids = lim(5);
        let mut login = ep("POST /login", &[]);
        login.auth_failures = 4;
        login.rate = lim(3);
        Policy {
            version: 1,
            window_s: 10,
            endpoints: vec![
                login,
                ep("POST /pay", &["POST /login"]),
                ep("POST /confirm", &["POST /login", "POST /pay"]),
                orders,
            ],
            transitions: vec![
                tr(START, "POST /login"),
                tr("POST /login", "POST /pay"),
                tr("POST /pay", "POST /confirm"),
                tr("POST /login", "GET /orders/{id}"),
                tr("GET /orders/{id}", "GET /orders/{id}"),
                tr("POST /login", "POST /login"),
            ],
            session_rate: Some(Limit {
                p50: 1,
                p90: 1,
                p99: 1,
                limit: 100,
                ..Limit::default()
            }),
            auth_failures: Some(Limit {
                p50: 0,
                p90: 0,
                p99: 1,
                limit: 3,
                ..Limit::default()
            }),
            ..Default::default()
        }
    }

    fn header(v: &Verdict) -> String {
        let mut s = String::new();
        v.write_header(&mut s);
        s
    }

    fn call(
        m: &Model,
        s: &Settings,
        slot: &mut Slot,
        e: Option<u16>,
        status: u16,
        t: u64,
    ) -> Verdict {
        let (_, v) = evaluate(
            Some(m),
            s,
            slot,
            &Request {
                endpoint: e,
                id: Some(t),
                now_ms: t,
                ..Default::default()
            },
        );
        if let Some(e) = e {
            slot.record_response(e, Some(t), status, t, m.auth_window_ms);
        }
        v
    }

    #[test]
    fn a_bound_rule_asks_the_object_and_falls_back_to_the_session_when_forgotten() {
        let s = settings("{}");
        let ep = |t: &str, bound: &[&str]| EndpointPolicy {
            template: t.into(),
            bound_prerequisites: bound.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let p = Policy {
            version: 1,
            window_s: 10,
            endpoints: vec![
                ep("POST /o/{id}/pay", &[]),
                ep("POST /o/{id}/confirm", &["POST /o/{id}/pay"]),
            ],
            ..Default::default()
        };
        let m = Model::compile(&p, &s).unwrap();
        assert!(m.binds(0) && !m.binds(1));
        let step = |slot: &mut Slot, e: u16, object: u64| {
            let req = Request {
                endpoint: Some(e),
                id: Some(object),
                now_ms: 1000,
                ..Default::default()
            };
            let (_, v) = evaluate(Some(&m), &s, slot, &req);
            slot.record_response(e, Some(object), 200, 1000, 1000);
            v
        };
        let mut slot = Slot::new(1, 0, 1);
        step(&mut slot, 0, 10);
        let blocks = |v: Verdict| matches!(v.outcome, Outcome::Block { .. });
        assert!(!blocks(step(&mut slot, 1, 10)));
        let v = step(&mut slot, 1, 11);
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
        assert_eq!(v.missing.iter().collect::<Vec<_>>(), [0]);
        // More paid objects than the table holds: an object it forgot is judged by what
        // the session completed anywhere (lenient), never blocked for being forgotten.
        for o in 20..20 + crate::object::OBJECTS as u64 + 1 {
            step(&mut slot, 0, o << 33);
        }
        assert_ne!(slot.objects.forgotten, 0);
        assert!(!blocks(step(&mut slot, 1, 20 << 33)));
    }

    #[test]
    fn a_weak_session_is_flagged_by_its_flow_and_blocked_only_by_address_failures() {
        let s = settings("{}");
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        let weak = |e, failures| Request {
            endpoint: Some(e),
            now_ms: 1,
            address_failures: failures,
            weak_session: true,
            ..Default::default()
        };
        let (_, v) = evaluate(Some(&m), &s, &mut slot, &weak(2, 0));
        assert!(v.fired.contains(Rule::MissingPrerequisite));
        assert_eq!(v.outcome, Outcome::Flag);
        let (_, v) = evaluate(Some(&m), &s, &mut slot, &weak(0, 50));
        assert_eq!(v.outcome, Outcome::Block { status: 429 });
    }

    #[test]
    fn an_address_flooding_anonymously_is_limited_per_session_it_carries() {
        let s = settings("{}");
        let mut p = shop_policy();
        let login = p.endpoints.iter_mut().find(|e| e.template == "POST /login");
        login.unwrap().address_rate = Some(Limit {
            limit: 4,
            ..Limit::default()
        });
        let m = Model::compile(&p, &s).unwrap();
        let weak = |t: u64, carried| Request {
            endpoint: Some(0),
            now_ms: t,
            weak_session: true,
            carried,
            ..Default::default()
        };
        // A lone address: 4 logins pass, the 5th in the window is refused with a wait.
        let mut lone = Slot::new(1, 0, 1);
        let outcomes: Vec<Outcome> = (0..6)
            .map(|i| {
                evaluate(Some(&m), &s, &mut lone, &weak(i * 10, 0))
                    .1
                    .outcome
            })
            .collect();
        assert_eq!(outcomes[..4], [Outcome::Allow; 4], "{outcomes:?}");
        let (_, v) = evaluate(Some(&m), &s, &mut lone, &weak(70, 0));
        assert_eq!(v.outcome, Outcome::Block { status: 429 });
        assert!(v.fired.contains(Rule::RateSession) && v.retry_after_s >= 1);
        // A NAT's address carrying 10 customers: 40 logins in the window pass.
        let mut nat = Slot::new(2, 0, 1);
        for i in 0..40 {
            let (_, v) = evaluate(Some(&m), &s, &mut nat, &weak(i, 10));
            assert_eq!(v.outcome, Outcome::Allow, "login {i}");
        }
        let (_, v) = evaluate(Some(&m), &s, &mut nat, &weak(40, 10));
        assert_eq!(v.outcome, Outcome::Block { status: 429 }, "the 41st");
    }

    #[test]
    fn an_order_block_is_one_only_when_nothing_else_blocks() {
        let s = settings("{}");
        let m = shop(&s);
        // Confirm without paying: blocked for the skip alone.
        let (_, v) = evaluate(
            Some(&m),
            &s,
            &mut Slot::new(1, 0, 1),
            &Request {
                endpoint: Some(2),
                now_ms: 1,
                ..Default::default()
            },
        );
        assert!(v.order_blocks && !v.teaches());
        // The same skip from an address over its failure limit: the failures block it,
        // and no evidence of the step would change that.
        let (_, v) = evaluate(
            Some(&m),
            &s,
            &mut Slot::new(2, 0, 1),
            &Request {
                endpoint: Some(2),
                now_ms: 1,
                address_failures: 50,
                ..Default::default()
            },
        );
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
        assert!(!v.order_blocks);
    }

    #[test]
    fn a_blocked_request_never_teaches_whatever_rule_blocked_it() {
        let s = settings(r#"{"rules":{"order.unknown_transition":"block"}}"#);
        let m = shop(&s);
        let mut slot = Slot::new(2, 0, 1);
        let v = call(&m, &s, &mut slot, Some(1), 200, 1); // START -> pay: unknown
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
        assert!(
            !v.teaches(),
            "an unknown transition the operator blocks teaches nothing"
        );
    }

    #[test]
    fn an_address_whose_slot_holds_another_only_flags_its_anonymous_limits() {
        let s = settings("{}");
        let mut p = shop_policy();
        let login = p.endpoints.iter_mut().find(|e| e.template == "POST /login");
        login.unwrap().address_rate = Some(Limit {
            limit: 2,
            ..Limit::default()
        });
        let m = Model::compile(&p, &s).unwrap();
        let mut slot = Slot::new(1, 0, 1);
        let weak = |t: u64| Request {
            endpoint: Some(0),
            now_ms: t,
            weak_session: true,
            address_shared: true,
            ..Default::default()
        };
        let outcomes: Vec<Outcome> = (0..5)
            .map(|i| evaluate(Some(&m), &s, &mut slot, &weak(i)).1.outcome)
            .collect();
        assert_eq!(outcomes[4], Outcome::Flag, "{outcomes:?}");
    }

    #[test]
    fn a_step_with_some_evidence_flags_a_skip_and_teaches_on() {
        let s = settings("{}");
        let mut p = shop_policy();
        let pay = p.endpoints.iter_mut().find(|e| e.template == "POST /pay");
        let pay = pay.unwrap();
        pay.prerequisites.clear();
        pay.flag_prerequisites = vec!["POST /login".into()];
        p.transitions.push(Transition {
            from: START.into(),
            to: "POST /pay".into(),
            count: 5,
        });
        let m = Model::compile(&p, &s).unwrap();
        let mut slot = Slot::new(1, 0, 1);
        let v = call(&m, &s, &mut slot, Some(1), 200, 1);
        assert_eq!(v.outcome, Outcome::Flag);
        assert_eq!(header(&v), "flag; rules=order.missing_prerequisite");
        assert!(
            v.tentative_order && v.teaches(),
            "a flag-tier skip still teaches"
        );
        // confirm's blocking rule is untouched, and a block does not teach.
        let v = call(&m, &s, &mut Slot::new(2, 0, 1), Some(2), 200, 1);
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
        assert!(!v.tentative_order && !v.teaches());
        // After the login, no flag.
        let mut slot = Slot::new(3, 0, 1);
        call(&m, &s, &mut slot, Some(0), 200, 1);
        assert_eq!(
            call(&m, &s, &mut slot, Some(1), 200, 2).outcome,
            Outcome::Allow
        );
    }

    #[test]
    fn a_weak_session_is_not_judged_on_transitions() {
        let s = settings("{}");
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        let weak = Request {
            endpoint: Some(3),
            id: Some(1),
            now_ms: 1,
            weak_session: true,
            ..Default::default()
        };
        // START -> GET /orders/{id} was never seen; a weak session mixes clients.
        let (_, v) = evaluate(Some(&m), &s, &mut slot, &weak);
        assert!(!v.fired.contains(Rule::UnknownTransition), "{v:?}");
    }

    #[test]
    fn a_session_joining_mid_flow_is_flagged_by_order_rules_for_its_whole_life() {
        let s = settings("{}");
        let m = shop(&s);
        let req = |e, ok| Request {
            endpoint: Some(e),
            now_ms: 1,
            midflow_ok: ok,
            ..Default::default()
        };
        // Its payment went through another proxy: confirm is its first request here.
        let mut joined = Slot::new(1, 0, 1);
        let (_, v) = evaluate(Some(&m), &s, &mut joined, &req(2, true));
        assert!(v.fired.contains(Rule::MissingPrerequisite));
        assert_eq!(v.outcome, Outcome::Flag);
        let (_, v) = evaluate(Some(&m), &s, &mut joined, &req(1, false));
        assert_eq!(v.outcome, Outcome::Flag, "the rest of its flow too");
        // Without the allowance (its address spent its budget) the same is blocked.
        let mut rotated = Slot::new(2, 0, 1);
        let (_, v) = evaluate(Some(&m), &s, &mut rotated, &req(2, false));
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
        // The allowance only applies to a session's first request here.
        let (_, v) = evaluate(Some(&m), &s, &mut rotated, &req(2, true));
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
    }

    #[test]
    fn skipping_payment_is_blocked() {
        let s = settings("{}");
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        call(&m, &s, &mut slot, Some(0), 200, 0);
        let v = call(&m, &s, &mut slot, Some(2), 200, 1);
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
        assert_eq!(v.missing.iter().collect::<Vec<_>>(), [1]);
        assert_eq!(
            header(&v),
            "block; rules=order.missing_prerequisite,order.unknown_transition"
        );
    }

    #[test]
    fn failed_payment_does_not_unlock_confirm_but_success_does() {
        let s = settings("{}");
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        call(&m, &s, &mut slot, Some(0), 200, 0);
        call(&m, &s, &mut slot, Some(1), 402, 1);
        let mut retry = slot;
        assert_eq!(
            call(&m, &s, &mut slot, Some(2), 200, 2).outcome,
            Outcome::Block { status: 403 }
        );
        call(&m, &s, &mut retry, Some(1), 200, 3);
        let v = call(&m, &s, &mut retry, Some(2), 200, 4);
        assert_eq!(v, Verdict::ALLOW);
        assert_eq!(header(&v), "allow");
    }

    #[test]
    fn unknown_transitions_endpoints_and_actions() {
        let s = settings("{}");
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        assert_eq!(call(&m, &s, &mut slot, Some(0), 200, 0), Verdict::ALLOW);
        assert_eq!(header(&call(&m, &s, &mut slot, Some(1), 200, 1)), "allow");
        assert_eq!(
            header(&call(&m, &s, &mut slot, Some(0), 200, 2)),
            "flag; rules=order.unknown_transition"
        );
        assert_eq!(
            header(&call(&m, &s, &mut slot, None, 200, 3)),
            "flag; rules=inventory.unknown_endpoint"
        );
        let (_, v) = evaluate(
            Some(&m),
            &s,
            &mut slot,
            &Request {
                deprecated_template: true,
                ..Default::default()
            },
        );
        assert_eq!(header(&v), "flag; rules=inventory.deprecated_endpoint");

        let off = settings(
            r#"{"rules":{"order.missing_prerequisite":"flag","order.unknown_transition":"off"}}"#,
        );
        // Actions are compiled into the model (with the operator's decisions over them).
        let m = shop(&off);
        let mut fresh = Slot::new(2, 0, 1);
        let v = call(&m, &off, &mut fresh, Some(2), 200, 0);
        assert_eq!(header(&v), "flag; rules=order.missing_prerequisite");
        assert_eq!(fresh.last_endpoint, 2);
        assert_eq!(Slot::new(3, 0, 1).last_endpoint, NO_ENDPOINT);
    }

    #[test]
    fn a_session_flooding_an_endpoint_is_limited_with_retry_after() {
        let s = settings("{}");
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        call(&m, &s, &mut slot, Some(0), 200, 0);
        let mut blocked = 0;
        for i in 0..100 {
            let req = Request {
                endpoint: Some(3),
                id: Some(7),
                now_ms: 1000 + i,
                ..Default::default()
            };
            let (_, v) = evaluate(Some(&m), &s, &mut slot, &req);
            if let Outcome::Block { status } = v.outcome {
                assert_eq!(status, 429);
                assert!(v.fired.contains(Rule::RateSession));
                assert!((1..=10).contains(&v.retry_after_s), "{}", v.retry_after_s);
                blocked += 1;
            }
        }
        assert_eq!(blocked, 70, "30 per 10 s window are admitted");
        let req = Request {
            endpoint: Some(3),
            id: Some(7),
            now_ms: 20_000,
            ..Default::default()
        };
        let later = evaluate(Some(&m), &s, &mut slot, &req).1;
        assert!(!later.fired.contains(Rule::RateSession), "the limit drains");
    }

    #[test]
    fn walking_identifiers_is_enumeration() {
        let s = settings(r#"{"rules":{"rate.session":"off"}}"#);
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        call(&m, &s, &mut slot, Some(0), 200, 0);
        let mut first_block = None;
        for i in 0..30u64 {
            let id = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let (_, v) = evaluate(
                Some(&m),
                &s,
                &mut slot,
                &Request {
                    endpoint: Some(3),
                    id: Some(id),
                    now_ms: 100 + i,
                    ..Default::default()
                },
            );
            if v.fired.contains(Rule::RateEnumeration) && first_block.is_none() {
                first_block = Some(i);
                assert_eq!(v.outcome, Outcome::Block { status: 429 });
            }
        }
        let first = first_block.expect("enumeration caught");
        assert!(
            (5..12).contains(&first),
            "caught after about 5 distinct ids: {first}"
        );
        // The same few ids, again and again, are no enumeration.
        let mut calm = Slot::new(2, 0, 1);
        call(&m, &s, &mut calm, Some(0), 200, 0);
        for i in 0..20u64 {
            let (_, v) = evaluate(
                Some(&m),
                &s,
                &mut calm,
                &Request {
                    endpoint: Some(3),
                    id: Some(i % 2 + 1),
                    now_ms: i,
                    ..Default::default()
                },
            );
            assert!(!v.fired.contains(Rule::RateEnumeration));
        }
    }

    #[test]
    fn repeated_auth_failures_by_session_or_address_are_blocked() {
        let s = settings("{}");
        let m = shop(&s);
        let mut slot = Slot::new(1, 0, 1);
        for t in 0..3 {
            let v = call(&m, &s, &mut slot, Some(0), 401, t);
            assert!(!v.fired.contains(Rule::AuthFailures), "failure {t}");
        }
        let v = call(&m, &s, &mut slot, Some(0), 401, 4);
        assert!(v.fired.contains(Rule::AuthFailures));
        assert_eq!(v.outcome, Outcome::Block { status: 429 });
        assert!(v.retry_after_s >= 299, "{}", v.retry_after_s);
        // A fresh cookie from the same address is still caught by the address count.
        let mut rotated = Slot::new(2, 0, 1);
        let req = |n| Request {
            endpoint: Some(0),
            address_failures: n,
            ..Default::default()
        };
        assert!(!evaluate(Some(&m), &s, &mut rotated, &req(29))
            .1
            .fired
            .contains(Rule::AuthFailures));
        assert!(evaluate(Some(&m), &s, &mut rotated, &req(30))
            .1
            .fired
            .contains(Rule::AuthFailures));
    }

    #[test]
    fn without_a_model_requests_are_only_recorded() {
        let s = settings("{}");
        let mut slot = Slot::new(1, 0, 0);
        let (visit, v) = evaluate(
            None,
            &s,
            &mut slot,
            &Request {
                endpoint: Some(4),
                now_ms: 5,
                ..Default::default()
            },
        );
        assert_eq!(v, Verdict::ALLOW);
        assert!(visit.new_session && visit.first_visit);
        assert!(slot.visited.contains(4));
    }
}
