//! An operator's decisions: what a form asks, checked, and applied to the policy's
//! `decisions` (rule actions globally or per endpoint, a prerequisite pinned or
//! forgotten, an endpoint's rate limit loosened). The learned fields stay what learning
//! found; the engine applies `decisions` when it compiles the model, and learning carries
//! them into every later version. Edited as JSON here so that the console writes exactly
//! the contract's shape; the engine's `Policy::from_json` has the last word.

use crate::store::Decided;
use flowguard_engine::policy::Policy;
use flowguard_engine::rule::Rule;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

/// The actions a rule can be set to.
pub const ACTIONS: [&str; 3] = ["off", "flag", "block"];

/// One decision, as a form asks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A rule's action, for every endpoint or one; `None`: back to the configuration's.
    Rule {
        endpoint: Option<String>,
        rule: String,
        action: Option<String>,
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

fn field<'a>(form: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    form.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

fn need<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, String> {
    field(form, name).ok_or_else(|| format!("the form lacks `{name}`"))
}

fn rule_id(id: &str) -> Result<String, String> {
    Rule::ALL
        .iter()
        .find(|r| r.id() == id)
        .map(|r| r.id().to_owned())
        .ok_or_else(|| format!("unknown rule {id:?}"))
}

/// The decision a form asks for: `kind` = rule | pin | unpin | forget | unforget | limit.
pub fn parse(form: &HashMap<String, String>) -> Result<Change, String> {
    match need(form, "kind")? {
        "rule" => {
            let action = match need(form, "action")? {
                "default" => None,
                a if ACTIONS.contains(&a) => Some(a.to_owned()),
                a => return Err(format!("unknown action {a:?}: off, flag, block or default")),
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
            "{rule} {} {}",
            endpoint
                .as_deref()
                .map_or("everywhere".to_owned(), |e| format!("on {e}")),
            action
                .as_deref()
                .map_or("back to the configuration".to_owned(), |a| format!(
                    "set to {a}"
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

fn object<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Map<String, Value>, String> {
    let map = v.as_object_mut().ok_or("the policy is not a JSON object")?;
    let entry = map.entry(key).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry
        .as_object_mut()
        .ok_or_else(|| format!("`{key}` is not an object"))
}

fn list_set(map: &mut Map<String, Value>, key: &str, item: &str, on: bool) {
    let mut items: Vec<String> = map
        .get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    items.retain(|i| i != item);
    if on {
        items.push(item.to_owned());
    }
    if items.is_empty() {
        map.remove(key);
    } else {
        map.insert(key.to_owned(), json!(items));
    }
}

fn templates(policy: &Value) -> Vec<String> {
    policy
        .get("endpoints")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| e.get("template")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Applies `change` to the policy JSON `policy` (decisions only; nothing learned moves).
pub fn apply_to(policy: &mut Value, change: &Change) -> Result<(), String> {
    let known = templates(policy);
    let endpoint_of = |c: &Change| -> Option<String> {
        match c {
            Change::Rule { endpoint, .. } => endpoint.clone(),
            Change::Pin { endpoint, .. }
            | Change::Forget { endpoint, .. }
            | Change::RateLimit { endpoint, .. } => Some(endpoint.clone()),
        }
    };
    if let Some(e) = endpoint_of(change) {
        if !known.contains(&e) {
            return Err(format!("{e:?} is not an endpoint of the policy"));
        }
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
        if !known.contains(prerequisite) || prerequisite == endpoint {
            return Err(format!(
                "{prerequisite:?} is not another endpoint of the policy"
            ));
        }
    }
    let decisions = object(policy, "decisions")?;
    let mut decisions_value = Value::Object(std::mem::take(decisions));
    match change {
        Change::Rule {
            endpoint: None,
            rule,
            action,
        } => {
            let rules = object(&mut decisions_value, "rules")?;
            match action {
                Some(a) => {
                    rules.insert(rule.clone(), json!(a));
                }
                None => {
                    rules.remove(rule);
                }
            }
        }
        _ => {
            let endpoint = endpoint_of(change).unwrap_or_default();
            let endpoints = object(&mut decisions_value, "endpoints")?;
            let entry = endpoints
                .entry(endpoint.clone())
                .or_insert_with(|| json!({}));
            if !entry.is_object() {
                *entry = json!({});
            }
            match change {
                Change::Rule { rule, action, .. } => {
                    let rules = object(entry, "rules")?;
                    match action {
                        Some(a) => {
                            rules.insert(rule.clone(), json!(a));
                        }
                        None => {
                            rules.remove(rule);
                        }
                    }
                }
                Change::Pin {
                    prerequisite, on, ..
                } => {
                    let e = entry.as_object_mut().ok_or("not an object")?;
                    list_set(e, "pin", prerequisite, *on);
                    if *on {
                        list_set(e, "forget", prerequisite, false);
                    }
                }
                Change::Forget {
                    prerequisite, on, ..
                } => {
                    let e = entry.as_object_mut().ok_or("not an object")?;
                    list_set(e, "forget", prerequisite, *on);
                    if *on {
                        list_set(e, "pin", prerequisite, false);
                    }
                }
                Change::RateLimit { limit, .. } => {
                    let e = entry.as_object_mut().ok_or("not an object")?;
                    match limit {
                        Some(l) => {
                            e.insert("rate_limit".into(), json!(l));
                        }
                        None => {
                            e.remove("rate_limit");
                        }
                    }
                }
            }
            prune_endpoint(endpoints, &endpoint);
        }
    }
    prune(&mut decisions_value);
    let map = policy
        .as_object_mut()
        .ok_or("the policy is not a JSON object")?;
    match decisions_value {
        Value::Object(d) if !d.is_empty() => {
            map.insert("decisions".into(), Value::Object(d));
        }
        _ => {
            map.remove("decisions");
        }
    }
    Ok(())
}

fn empty(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        _ => false,
    }
}

fn prune_endpoint(endpoints: &mut Map<String, Value>, endpoint: &str) {
    if let Some(Value::Object(e)) = endpoints.get_mut(endpoint) {
        if empty(e.get("rules")) {
            e.remove("rules");
        }
        if e.is_empty() {
            endpoints.remove(endpoint);
        }
    }
}

fn prune(decisions: &mut Value) {
    if let Value::Object(d) = decisions {
        for key in ["rules", "endpoints"] {
            if empty(d.get(key)) {
                d.remove(key);
            }
        }
    }
}

/// The next policy version from the newest stored row with `change` applied, checked by
/// the engine: what a decision stores.
pub fn decide(latest: Option<(u64, String)>, change: &Change) -> Result<Decided, String> {
    let (version, json) = latest.ok_or(
        "no policy has been learned yet: there is nothing to decide on (let traffic flow until the collector learns one)",
    )?;
    let mut value: Value = serde_json::from_str(&json)
        .map_err(|e| format!("the stored policy version {version} is not JSON: {e}"))?;
    apply_to(&mut value, change)?;
    let next = version + 1;
    if let Some(map) = value.as_object_mut() {
        map.insert("version".into(), json!(next));
    }
    let policy = checked(&value)?;
    Ok(Decided {
        version: next,
        json: policy.to_json(),
        summary: describe(change),
    })
}

/// The engine's reading of a policy JSON value.
pub fn checked(value: &Value) -> Result<Policy, String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    Policy::from_json(&bytes).map_err(|e| format!("the engine refuses this policy: {e}"))
}

/// The `decisions` object of a policy JSON (empty when it has none).
pub fn of(policy_json: &str) -> Value {
    serde_json::from_str::<Value>(policy_json)
        .ok()
        .and_then(|v| v.get("decisions").cloned())
        .filter(|d| d.is_object())
        .unwrap_or_else(|| json!({}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn policy() -> Value {
        json!({"version": 7, "endpoints": [
            {"template": "POST /pay"}, {"template": "POST /confirm", "prerequisites": ["POST /pay"]},
            {"template": "GET /cart"}]})
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
                rule: "order.missing_prerequisite".into(),
                action: Some("block".into())
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
    fn changes_write_the_contracts_shape_and_undo_cleanly() {
        let mut p = policy();
        let rule = |endpoint: Option<&str>, action: Option<&str>| Change::Rule {
            endpoint: endpoint.map(str::to_owned),
            rule: "rate.session".into(),
            action: action.map(str::to_owned),
        };
        apply_to(&mut p, &rule(None, Some("block"))).unwrap();
        apply_to(&mut p, &rule(Some("POST /confirm"), Some("off"))).unwrap();
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
        assert_eq!(
            p["decisions"],
            json!({"rules": {"rate.session": "block"}, "endpoints": {"POST /confirm": {
                "rules": {"rate.session": "off"}, "pin": ["GET /cart"], "rate_limit": 40}}})
        );
        let forget = Change::Forget {
            endpoint: "POST /confirm".into(),
            prerequisite: "GET /cart".into(),
            on: true,
        };
        apply_to(&mut p, &forget).unwrap();
        assert_eq!(
            p["decisions"]["endpoints"]["POST /confirm"]["forget"],
            json!(["GET /cart"])
        );
        assert!(
            p["decisions"]["endpoints"]["POST /confirm"]
                .get("pin")
                .is_none(),
            "forgetting unpins"
        );
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
        assert!(p.get("decisions").is_none(), "{p}");
        assert_eq!(
            p["endpoints"],
            policy()["endpoints"],
            "nothing learned moved"
        );
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
