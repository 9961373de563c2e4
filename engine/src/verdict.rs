//! The verdict for one request: which rules fire and what that means in `enforce`.

use crate::config::RuleActions;
use crate::endpoint_set::{EndpointId, EndpointSet};
use crate::model::Model;
use crate::rule::{Action, Rule, RuleSet};
use crate::slot::Slot;
use std::fmt::Write;

/// What to do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Flag,
    Block { status: u16 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// Rules that fired and are not `off`.
    pub fired: RuleSet,
    /// For `order.missing_prerequisite`: the steps the session skipped.
    pub missing: EndpointSet,
}

impl Verdict {
    pub const ALLOW: Verdict = Verdict {
        outcome: Outcome::Allow,
        fired: RuleSet::EMPTY,
        missing: EndpointSet::EMPTY,
    };

    /// The `x-flowguard-verdict` value: `allow`, `flag; rules=a,b` or `block; rules=a`.
    pub fn write_header(&self, out: &mut String) {
        out.clear();
        out.push_str(match self.outcome {
            Outcome::Allow => "allow",
            Outcome::Flag => "flag",
            Outcome::Block { .. } => "block",
        });
        for (i, rule) in self.fired.iter().enumerate() {
            out.push_str(if i == 0 { "; rules=" } else { "," });
            let _ = write!(out, "{}", rule.id());
        }
    }
}

/// Decides on a request to `endpoint` (`None`: not in the model) by a session in state
/// `slot`, as it was before this request.
pub fn decide(
    model: &Model,
    actions: &RuleActions,
    slot: &Slot,
    endpoint: Option<EndpointId>,
) -> Verdict {
    let mut fired = RuleSet::EMPTY;
    let mut missing = EndpointSet::EMPTY;
    if let Some(e) = endpoint {
        missing = model.prerequisites(e).difference(slot.completed);
        if !missing.is_empty() {
            fired.insert(Rule::MissingPrerequisite);
        }
        if !model.knows_transition(slot.last_endpoint, e) {
            fired.insert(Rule::UnknownTransition);
        }
    }
    outcome(actions, fired, missing)
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::policy::{EndpointPolicy, Policy, Transition, START};
    use crate::slot::NO_ENDPOINT;

    fn shop() -> Model {
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
        let p = Policy {
            version: 1,
            endpoints: vec![
                ep("POST /login", &[]),
                ep("POST /pay", &["POST /login"]),
                ep("POST /confirm", &["POST /login", "POST /pay"]),
            ],
            transitions: vec![
                tr(START, "POST /login"),
                tr("POST /login", "POST /pay"),
                tr("POST /pay", "POST /confirm"),
            ],
            ..Default::default()
        };
        Model::compile(&p, vec![]).unwrap()
    }

    fn header(v: &Verdict) -> String {
        let mut s = String::new();
        v.write_header(&mut s);
        s
    }

    #[test]
    fn skipping_payment_is_blocked() {
        let m = shop();
        let actions = RuleActions::default();
        let mut slot = Slot::new(1, 0, 1);
        slot.record_request(Some(0), 0);
        slot.record_response(0, 200);
        let v = decide(&m, &actions, &slot, Some(2));
        assert_eq!(v.outcome, Outcome::Block { status: 403 });
        assert_eq!(v.missing.iter().collect::<Vec<_>>(), [1]);
        assert_eq!(
            header(&v),
            "block; rules=order.missing_prerequisite,order.unknown_transition"
        );
    }

    #[test]
    fn failed_payment_does_not_unlock_confirm_but_success_does() {
        let m = shop();
        let actions = RuleActions::default();
        let mut slot = Slot::new(1, 0, 1);
        for (e, status) in [(0, 200), (1, 402)] {
            slot.record_request(Some(e), 0);
            slot.record_response(e, status);
        }
        assert_eq!(
            decide(&m, &actions, &slot, Some(2)).outcome,
            Outcome::Block { status: 403 }
        );
        slot.record_request(Some(1), 0);
        slot.record_response(1, 200);
        let v = decide(&m, &actions, &slot, Some(2));
        assert_eq!(v, Verdict::ALLOW);
        assert_eq!(header(&v), "allow");
    }

    #[test]
    fn unknown_transitions_flag_and_actions_apply() {
        let m = shop();
        let slot = Slot::new(1, 0, 1);
        assert_eq!(slot.last_endpoint, NO_ENDPOINT);
        let v = decide(&m, &RuleActions::default(), &slot, Some(0));
        assert_eq!(v, Verdict::ALLOW);
        let mut s2 = slot;
        s2.record_request(Some(0), 0);
        s2.record_response(0, 200);
        let v = decide(&m, &RuleActions::default(), &s2, Some(0));
        assert_eq!(header(&v), "flag; rules=order.unknown_transition");

        let off = Settings::from_json(
            br#"{"rules":{"order.missing_prerequisite":"flag","order.unknown_transition":"off"}}"#,
        )
        .unwrap()
        .rules;
        let v = decide(&m, &off, &slot, Some(2));
        assert_eq!(header(&v), "flag; rules=order.missing_prerequisite");
        assert!(decide(&m, &off, &slot, None) == Verdict::ALLOW);
    }
}
