//! An operator's decisions: what a form asks, checked, and applied to the policy's
//! `decisions` (rule actions globally or per endpoint, a prerequisite pinned or
//! forgotten, an endpoint's rate limit loosened). The learned fields stay what learning
//! found; the engine applies `decisions` when it compiles the model, and learning carries
//! them into every later version. Edited as the engine's typed `Decisions`, so that the
//! console can only write keys and values the contract has; the engine's validation has
//! the last word.

use crate::store::Decided;
use flowguard_engine::policy::{Decisions, EndpointDecisions, Policy};
use flowguard_engine::rule::{Action, Rule};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The actions a rule can be set to, in the forms' order.
pub const ACTIONS: [Action; 3] = [Action::Off, Action::Flag, Action::Block];

/// An action as the contract spells it (its serde name).
pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Off => "off",
        Action::Flag => "flag",
        Action::Block => "block",
    }
}

/// One decision, as a form asks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A rule's action, for every endpoint or one; `None`: back to the configuration's.
    Rule {
        endpoint: Option<String>,
        rule: Rule,
        action: Option<Action>,
    },
    /// Enforce (`on`) or stop pinning a prerequisite of `endpoint`.
    Pin {
        endpoint: String,
        prerequisite: String,
        on: bool,
    },
    /// Never enforce (`on`) or stop forgetting a prerequisite of `endpoint`.
    Forget {
        endpoint: String,
        prerequisite: String,
        on: bool,
    },
    /// The endpoint's per-session rate limit is at least `limit` (`None`: as learned).
    RateLimit {
        endpoint: String,
        limit: Option<u32>,
    },
}

impl Change {
    /// The endpoint the decision is about (`None`: every endpoint).
    fn endpoint(&self) -> Option<&str> {
        match self {
            Change::Rule { endpoint, .. } => endpoint.as_deref(),
            Change::Pin { endpoint, .. }
            | Change::Forget { endpoint, .. }
            | Change::RateLimit { endpoint, .. } => Some(endpoint),
        }
    }
}

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn need<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, String> {
    field(form, name).ok_or_else(|| format!("the form lacks `{name}`"))
}

fn rule_id(id: &str) -> Result<Rule, String> {
    Decisions::rule(id).ok_or_else(|| format!("unknown rule {id:?}"))
}

/// The decision a form asks for: `kind` = rule | pin | unpin | forget | unforget | limit.
pub fn parse(form: &HashMap<String, String>) -> Result<Change, String> {
    match need(form, "kind")? {
        "rule" => {
            let action = match need(form, "action")? {
                "default" => None,
                a => Some(
                    ACTIONS
                        .into_iter()
                        .find(|x| action_name(*x) == a)
                        .ok_or_else(|| {
                            format!("unknown action {a:?}: off, flag, block or default")
                        })?,
                ),
            };
            Ok(Change::Rule {
                endpoint: field(form, "endpoint").map(str::to_owned),
                rule: rule_id(need(form, "rule")?)?,
                action,
            })
        }
        kind @ ("pin" | "unpin" | "forget" | "unforget") => {
            let endpoint = need(form, "endpoint")?.to_owned();
            let prerequisite = need(form, "prerequisite")?.to_owned();
            Ok(match kind {
                "pin" | "unpin" => Change::Pin {
                    endpoint,
                    prerequisite,
                    on: kind == "pin",
                },
                _ => Change::Forget {
                    endpoint,
                    prerequisite,
                    on: kind == "forget",
                },
            })
        }
        "limit" => {
            let limit = match field(form, "limit") {
                None => None,
                Some(l) => Some(
                    l.parse::<u32>()
                        .ok()
                        .filter(|l| (1..=1_000_000).contains(l))
                        .ok_or_else(|| {
                            format!("a limit is a whole number from 1 to 1000000, not {l:?}")
                        })?,
                ),
            };
            Ok(Change::RateLimit {
                endpoint: need(form, "endpoint")?.to_owned(),
                limit,
            })
        }
        k => Err(format!("unknown decision {k:?}")),
    }
}

/// The decision in words, for the audit trail.
pub fn describe(c: &Change) -> String {
    match c {
        Change::Rule {
            endpoint,
            rule,
            action,
        } => format!(
            "{} {} {}",
            rule.id(),
            endpoint
                .as_deref()
                .map_or("everywhere".to_owned(), |e| format!("on {e}")),
            action.map_or("back to the configuration".to_owned(), |a| format!(
                "set to {}",
                action_name(a)
            ))
        ),
        Change::Pin {
            endpoint,
            prerequisite,
            on,
        } => format!(
            "{endpoint}: {} {prerequisite}",
            if *on { "pin prerequisite" } else { "unpin" }
        ),
        Change::Forget {
            endpoint,
            prerequisite,
            on,
        } => format!(
            "{endpoint}: {} {prerequisite}",
            if *on {
                "forget prerequisite"
            } else {
                "stop forgetting"
            }
        ),
        Change::RateLimit { endpoint, limit } => match limit {
            Some(l) => format!("{endpoint}: rate limit at least {l} per window"),
            None => format!("{endpoint}: rate limit as learned"),
        },
    }
}

/// Puts `item` in `list` (last), taking it out of `opposite` (a prerequisite is pinned or
/// forgotten, never both), or takes it out of `list`.
fn list_set(list: &mut Vec<String>, opposite: &mut Vec<String>, item: &str, on: bool) {
    list.retain(|i| i != item);
    if on {
        opposite.retain(|i| i != item);
        list.push(item.to_owned());
    }
}

fn rule_set(rules: &mut BTreeMap<String, Action>, rule: Rule, action: Option<Action>) {
    match action {
        Some(a) => {
            rules.insert(rule.id().to_owned(), a);
        }
        None => {
            rules.remove(rule.id());
        }
    }
}

/// Applies `change` to `policy`'s decisions (nothing learned moves). An endpoint left
/// with no decision is dropped, so undoing every decision leaves none stored.
pub fn apply_to(policy: &mut Policy, change: &Change) -> Result<(), String> {
    let known = |t: &str| policy.endpoint(t).is_some();
    if let Some(e) = change.endpoint().filter(|e| !known(e)) {
        return Err(format!("{e:?} is not an endpoint of the policy"));
    }
    if let Change::Pin {
        endpoint,
        prerequisite,
        ..
    }
    | Change::Forget {
        endpoint,
        prerequisite,
        ..
    } = change
    {
        if !known(prerequisite) || prerequisite == endpoint {
            return Err(format!(
                "{prerequisite:?} is not another endpoint of the policy"
            ));
        }
    }
    let Some(template) = change.endpoint() else {
        if let Change::Rule { rule, action, .. } = change {
            rule_set(&mut policy.decisions.rules, *rule, *action);
        }
        return Ok(());
    };
    let e = policy
        .decisions
        .endpoints
        .entry(template.to_owned())
        .or_default();
    match change {
        Change::Rule { rule, action, .. } => rule_set(&mut e.rules, *rule, *action),
        Change::Pin {
            prerequisite, on, ..
        } => list_set(&mut e.pin, &mut e.forget, prerequisite, *on),
        Change::Forget {
            prerequisite, on, ..
        } => list_set(&mut e.forget, &mut e.pin, prerequisite, *on),
        Change::RateLimit { limit, .. } => e.rate_limit = *limit,
    }
    if *e == EndpointDecisions::default() {
        policy.decisions.endpoints.remove(template);
    }
    Ok(())
}

/// The next policy version from the newest stored row with `change` applied, checked by
/// the engine: what a decision stores.
pub fn decide(latest: Option<(u64, String)>, change: &Change) -> Result<Decided, String> {
    let (version, json) = latest.ok_or(
        "no policy has been learned yet: there is nothing to decide on (let traffic flow until the collector learns one)",
    )?;
    let mut policy: Policy = serde_json::from_str(&json)
        .map_err(|e| format!("the stored policy version {version} is not a policy: {e}"))?;
    apply_to(&mut policy, change)?;
    policy.version = version + 1;
    let policy = checked(policy)?;
    Ok(Decided {
        version: policy.version,
        json: policy.to_json(),
        summary: describe(change),
    })
}

/// `policy` if the engine accepts it (decisions name known rules and endpoints, no pin
/// closes a cycle, ...).
pub fn checked(policy: Policy) -> Result<Policy, String> {
    policy
        .validate()
        .map_err(|e| format!("the engine refuses this policy: {e}"))?;
    Ok(policy)
}

/// The part of a stored policy the audit trail reads: whatever else an older version
/// holds, its decisions are read strictly (an unknown key is an error, not dropped).
#[derive(Deserialize)]
struct Stored {
    #[serde(default)]
    decisions: Decisions,
}

/// The decisions of a stored policy JSON (none in an empty one: the audit's `before` of
/// the first version).
pub fn of(policy_json: &str) -> Result<Decisions, String> {
    if policy_json.trim().is_empty() {
        return Ok(Decisions::default());
    }
    serde_json::from_str::<Stored>(policy_json)
        .map(|s| s.decisions)
        .map_err(|e| format!("unreadable decisions: {e}"))
}

/// Decisions (or one endpoint's) as the pages show them: compact JSON with its keys
/// sorted (through a JSON value), as the console has always shown them, whatever order
/// the engine's structs declare their fields in.
pub fn shown(d: &impl Serialize) -> String {
    serde_json::to_value(d).map_or_else(|e| e.to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy_json() -> Value {
        json!({"version": 7, "endpoints": [
            {"template": "POST /pay"}, {"template": "POST /confirm", "prerequisites": ["POST /pay"]},
            {"template": "GET /cart"}]})
    }

    fn policy() -> Policy {
        Policy::from_json(policy_json().to_string().as_bytes()).unwrap()
    }

    /// The decisions `changes_write_the_contracts_shape_and_undo_cleanly` writes, as the
    /// policy JSON has stored them since the console first wrote them.
    fn stored_decisions() -> Value {
        json!({"rules": {"rate.session": "block"}, "endpoints": {"POST /confirm": {
            "rules": {"rate.session": "off"}, "pin": ["GET /cart"], "rate_limit": 40}}})
    }

    #[test]
    fn forms_become_changes_and_bad_values_are_clear_errors() {
        assert_eq!(
            parse(&form(&[
                ("kind", "rule"),
                ("rule", "order.missing_prerequisite"),
                ("action", "block")
            ])),
            Ok(Change::Rule {
                endpoint: None,
                rule: Rule::MissingPrerequisite,
                action: Some(Action::Block)
            })
        );
        let e = |f: &[(&str, &str)]| parse(&form(f)).unwrap_err();
        assert!(
            e(&[("kind", "rule"), ("rule", "x.y"), ("action", "block")]).contains("unknown rule")
        );
        assert!(e(&[
            ("kind", "rule"),
            ("rule", "rate.session"),
            ("action", "drop")
        ])
        .contains("unknown action"));
        assert!(e(&[
            ("kind", "limit"),
            ("endpoint", "GET /cart"),
            ("limit", "-3")
        ])
        .contains("whole number"));
        assert!(e(&[
            ("kind", "limit"),
            ("endpoint", "GET /cart"),
            ("limit", "99999999999")
        ])
        .contains("whole number"));
        assert!(e(&[("kind", "pin"), ("endpoint", "POST /confirm")]).contains("prerequisite"));
        assert!(e(&[]).contains("kind"));
        assert!(e(&[("kind", "<script>")]).contains("unknown decision"));
    }

    #[test]
    fn every_action_parses_under_its_contract_name() {
        for a in ACTIONS {
            assert_eq!(json!(a), json!(action_name(a)));
            assert_eq!(
                parse(&form(&[
                    ("kind", "rule"),
                    ("rule", "rate.session"),
                    ("action", action_name(a))
                ])),
                Ok(Change::Rule {
                    endpoint: None,
                    rule: Rule::RateSession,
                    action: Some(a)
                })
            );
        }
    }

    #[test]
    fn changes_write_the_contracts_shape_and_undo_cleanly() {
        let mut p = policy();
        let rule = |endpoint: Option<&str>, action: Option<Action>| Change::Rule {
            endpoint: endpoint.map(str::to_owned),
            rule: Rule::RateSession,
            action,
        };
        apply_to(&mut p, &rule(None, Some(Action::Block))).unwrap();
        apply_to(&mut p, &rule(Some("POST /confirm"), Some(Action::Off))).unwrap();
        let pin = Change::Pin {
            endpoint: "POST /confirm".into(),
            prerequisite: "GET /cart".into(),
            on: true,
        };
        apply_to(&mut p, &pin).unwrap();
        apply_to(
            &mut p,
            &Change::RateLimit {
                endpoint: "POST /confirm".into(),
                limit: Some(40),
            },
        )
        .unwrap();
        let written: Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(written["decisions"], stored_decisions());
        let forget = Change::Forget {
            endpoint: "POST /confirm".into(),
            prerequisite: "GET /cart".into(),
            on: true,
        };
        apply_to(&mut p, &forget).unwrap();
        let confirm = p.decisions.endpoint("POST /confirm").unwrap();
        assert_eq!(confirm.forget, ["GET /cart"]);
        assert!(confirm.pin.is_empty(), "forgetting unpins");
        // Undo everything: no `decisions` left.
        apply_to(&mut p, &rule(None, None)).unwrap();
        apply_to(&mut p, &rule(Some("POST /confirm"), None)).unwrap();
        let unforget = Change::Forget {
            endpoint: "POST /confirm".into(),
            prerequisite: "GET /cart".into(),
            on: false,
        };
        apply_to(&mut p, &unforget).unwrap();
        apply_to(
            &mut p,
            &Change::RateLimit {
                endpoint: "POST /confirm".into(),
                limit: None,
            },
        )
        .unwrap();
        assert!(p.decisions.is_empty(), "{:?}", p.decisions);
        assert!(!p.to_json().contains("decisions"), "{}", p.to_json());
        assert_eq!(p.endpoints, policy().endpoints, "nothing learned moved");
    }

    #[test]
    fn a_stored_decision_document_round_trips_through_the_typed_form() {
        let mut with_forget = stored_decisions();
        with_forget["endpoints"]["GET /cart"] = json!({"forget": ["POST /pay"]});
        for stored in [stored_decisions(), with_forget] {
            let typed: Decisions = serde_json::from_value(stored.clone()).unwrap();
            assert_eq!(serde_json::to_value(&typed).unwrap(), stored);
            // In a whole stored policy, through the engine and a decision's reading.
            let mut doc = policy_json();
            doc["decisions"] = stored.clone();
            let text = doc.to_string();
            let p = Policy::from_json(text.as_bytes()).unwrap();
            assert_eq!(p.decisions, typed);
            let again: Value = serde_json::from_str(&p.to_json()).unwrap();
            assert_eq!(again["decisions"], stored);
            assert_eq!(again["endpoints"][1]["prerequisites"], json!(["POST /pay"]));
            assert_eq!(of(&text), Ok(typed.clone()));
            let next = decide(
                Some((7, text)),
                &Change::RateLimit {
                    endpoint: "POST /pay".into(),
                    limit: None,
                },
            )
            .unwrap();
            let next: Value = serde_json::from_str(&next.json).unwrap();
            assert_eq!(next["decisions"], stored, "an unrelated undo keeps them");
            assert_eq!(next["version"], json!(8));
        }
        assert_eq!(of(""), Ok(Decisions::default()));
        assert_eq!(shown(&Decisions::default()), "{}");
        assert_eq!(
            shown(&serde_json::from_value::<Decisions>(stored_decisions()).unwrap()),
            stored_decisions().to_string(),
            "shown as the JSON value prints"
        );
    }

    #[test]
    fn a_misspelt_key_or_a_wrong_type_is_an_error_not_dropped() {
        let bad = [
            json!({"endpoints": {"POST /confirm": {"pinned": ["GET /cart"]}}}),
            json!({"endpoints": {"POST /confirm": {"rate_limit": "40"}}}),
            json!({"rules": {"rate.session": "drop"}}),
            json!({"rule": {"rate.session": "off"}}),
        ];
        for d in bad {
            let mut doc = policy_json();
            doc["decisions"] = d.clone();
            let text = doc.to_string();
            assert!(of(&text).is_err(), "{d}");
            let e = decide(
                Some((7, text)),
                &Change::RateLimit {
                    endpoint: "POST /pay".into(),
                    limit: None,
                },
            )
            .map(|d| d.json)
            .unwrap_err();
            assert!(e.contains("is not a policy"), "{d}: {e}");
        }
    }

    #[test]
    fn unknown_endpoints_and_self_prerequisites_are_refused() {
        let mut p = policy();
        let e = apply_to(
            &mut p,
            &Change::RateLimit {
                endpoint: "GET /nope".into(),
                limit: Some(3),
            },
        )
        .unwrap_err();
        assert!(e.contains("not an endpoint"), "{e}");
        let e = apply_to(
            &mut p,
            &Change::Pin {
                endpoint: "POST /pay".into(),
                prerequisite: "POST /pay".into(),
                on: true,
            },
        )
        .unwrap_err();
        assert!(e.contains("not another endpoint"), "{e}");
        assert!(decide(
            None,
            &Change::RateLimit {
                endpoint: "x".into(),
                limit: None
            }
        )
        .is_err());
        assert!(decide(
            Some((3, "{not json".into())),
            &Change::RateLimit {
                endpoint: "x".into(),
                limit: None
            }
        )
        .is_err());
    }
}
