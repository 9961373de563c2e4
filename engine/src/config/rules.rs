//! `rules`: each rule's action, and the thresholds of the rules that count.

use super::values::{int_in, invalid, narrow};
use super::ConfigError;
use crate::rule::{Action, Rule};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The action of each rule in `enforce`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleActions([Action; Rule::ALL.len()]);

impl Default for RuleActions {
    fn default() -> Self {
        RuleActions(Rule::ALL.map(Rule::default_action))
    }
}

impl RuleActions {
    pub fn get(&self, rule: Rule) -> Action {
        self.0.get(rule as usize).copied().unwrap_or(Action::Off)
    }

    pub fn set(&mut self, rule: Rule, action: Action) {
        if let Some(a) = self.0.get_mut(rule as usize) {
            *a = action;
        }
    }
}

/// How a learned threshold is chosen: `max(floor, ceil(p99 x margin))`, unless `limit`
/// overrides it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Threshold {
    pub margin: f64,
    pub floor: u32,
    pub limit: Option<u32>,
}

impl Threshold {
    /// The threshold from a learned 99th percentile.
    pub fn choose(&self, p99: u32) -> u32 {
        self.limit
            .unwrap_or_else(|| ((f64::from(p99) * self.margin).ceil() as u32).max(self.floor))
    }
}

/// Thresholds and windows of the rules that count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Requests per `learning.window_s`, per session and endpoint.
    pub rate: Threshold,
    /// Requests per window, per session over all endpoints.
    pub session_rate: Threshold,
    /// Distinct identifiers per window, per session and template.
    pub enumeration: Threshold,
    /// 401/403 answers per `auth_window_s`, per session and per client address.
    pub auth: Threshold,
    /// 401/403 answers per auth window, per client address over all its sessions (NAT'd
    /// clients share an address, so its floor is higher).
    pub address_auth: Threshold,
    /// Anonymous (address-keyed) requests per window, per client address and endpoint,
    /// per identified session the address carries.
    pub address_rate: Threshold,
    /// Distinct identifiers per window of an address's anonymous requests, per template
    /// and identified session the address carries.
    pub address_enumeration: Threshold,
    pub auth_window_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            rate: Threshold {
                margin: 3.0,
                floor: 20,
                limit: None,
            },
            session_rate: Threshold {
                margin: 3.0,
                floor: 60,
                limit: None,
            },
            enumeration: Threshold {
                margin: 3.0,
                floor: 15,
                limit: None,
            },
            auth: Threshold {
                margin: 3.0,
                floor: 10,
                limit: None,
            },
            address_auth: Threshold {
                margin: 3.0,
                floor: 30,
                limit: None,
            },
            address_rate: Threshold {
                margin: 3.0,
                floor: 10,
                limit: None,
            },
            address_enumeration: Threshold {
                margin: 3.0,
                floor: 15,
                limit: None,
            },
            auth_window_s: 300,
        }
    }
}

/// Response-body inspection for `response.sensitive_data`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SensitiveSettings {
    /// JSON bodies up to this size are inspected; larger ones are not read at all.
    pub max_bytes: u32,
    /// JSON keys whose presence in a response is sensitive.
    pub fields: Vec<String>,
}

impl Default for SensitiveSettings {
    fn default() -> Self {
        SensitiveSettings {
            max_bytes: 65_536,
            fields: vec!["password".into(), "password_hash".into(), "ssn".into()],
        }
    }
}

/// `rules` as written: rule id to an action or an object.
#[derive(Deserialize, Default)]
#[serde(transparent)]
pub(super) struct RawRules(BTreeMap<String, serde_json::Value>);

/// What `rules` configures: actions, thresholds, and response inspection.
pub(super) struct RuleSettings {
    pub actions: RuleActions,
    pub limits: Limits,
    pub sensitive: SensitiveSettings,
}

/// A rule's configuration: an action, or an object with the action and thresholds.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawRule {
    Action(Action),
    Full(RawRuleFull),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawRuleFull {
    action: Option<Action>,
    margin: Option<f64>,
    floor: Option<i64>,
    limit: Option<i64>,
    window_s: Option<i64>,
    session_floor: Option<i64>,
    address_floor: Option<i64>,
    max_bytes: Option<i64>,
    fields: Option<Vec<String>>,
}

impl TryFrom<RawRules> for RuleSettings {
    type Error = ConfigError;

    fn try_from(raw: RawRules) -> Result<Self, ConfigError> {
        let mut rules = RuleActions::default();
        let mut limits = Limits::default();
        let mut sensitive = SensitiveSettings::default();
        for (id, value) in raw.0 {
            let key = format!("rules.{id}");
            let rule = Rule::ALL
                .into_iter()
                .find(|r| r.id() == id)
                .ok_or_else(|| invalid(&key, "unknown rule id (README, Rules)"))?;
            let full = match serde_json::from_value::<RawRule>(value) {
                Ok(RawRule::Action(a)) => RawRuleFull { action: Some(a), ..Default::default() },
                Ok(RawRule::Full(f)) => f,
                Err(_) => {
                    return Err(invalid(
                        &key,
                        "expected \"block\", \"flag\", \"off\" or {\"action\", \"margin\", \"floor\", \"limit\", \"window_s\"}",
                    ))
                }
            };
            if let Some(a) = full.action {
                if rule == Rule::SensitiveData && a == Action::Block {
                    return Err(invalid(
                        &format!("{key}.action"),
                        "response.sensitive_data can only flag (the answer is already on its way)",
                    ));
                }
                rules.set(rule, a);
            }
            if rule == Rule::SensitiveData {
                if full.max_bytes.is_some() {
                    let k = format!("{key}.max_bytes");
                    sensitive.max_bytes = narrow(&k, int_in(&k, full.max_bytes, 0, 1, 16 << 20)?)?;
                }
                if let Some(fields) = &full.fields {
                    sensitive.fields = fields.clone();
                }
            } else if full.max_bytes.is_some() || full.fields.is_some() {
                return Err(invalid(
                    &key,
                    "max_bytes and fields apply to response.sensitive_data",
                ));
            }
            apply_thresholds(rule, &key, &full, &mut limits)?;
        }

        Ok(RuleSettings {
            actions: rules,
            limits,
            sensitive,
        })
    }
}

fn apply_thresholds(
    rule: Rule,
    key: &str,
    f: &RawRuleFull,
    limits: &mut Limits,
) -> Result<(), ConfigError> {
    let has_any = f.margin.is_some()
        || f.floor.is_some()
        || f.limit.is_some()
        || f.window_s.is_some()
        || f.session_floor.is_some()
        || f.address_floor.is_some();
    let target = match rule {
        Rule::RateSession => &mut limits.rate,
        Rule::RateEnumeration => &mut limits.enumeration,
        Rule::AuthFailures => &mut limits.auth,
        _ if has_any => return Err(invalid(key, "this rule takes only an action")),
        _ => return Ok(()),
    };
    if let Some(m) = f.margin {
        if !(1.0..=1000.0).contains(&m) {
            return Err(invalid(
                &format!("{key}.margin"),
                format!("expected a number from 1 to 1000, got {m}"),
            ));
        }
        target.margin = m;
    }
    if f.floor.is_some() {
        target.floor = narrow(
            &format!("{key}.floor"),
            int_in(&format!("{key}.floor"), f.floor, 0, 1, 65_535)?,
        )?;
    }
    if f.limit.is_some() {
        target.limit = Some(narrow(
            &format!("{key}.limit"),
            int_in(&format!("{key}.limit"), f.limit, 0, 1, 65_535)?,
        )?);
    }
    if f.address_floor.is_some() {
        let k = format!("{key}.address_floor");
        let floor = narrow(&k, int_in(&k, f.address_floor, 0, 1, 65_535)?)?;
        let (address, margin) = match rule {
            Rule::AuthFailures => (&mut limits.address_auth, limits.auth.margin),
            Rule::RateSession => (&mut limits.address_rate, limits.rate.margin),
            _ => (&mut limits.address_enumeration, limits.enumeration.margin),
        };
        address.floor = floor;
        address.margin = margin;
    }
    match (rule, f.window_s, f.session_floor) {
        (Rule::AuthFailures, Some(w), None) => {
            limits.auth_window_s = narrow(
                &format!("{key}.window_s"),
                int_in(&format!("{key}.window_s"), Some(w), 0, 1, 86_400)?,
            )?;
        }
        (Rule::RateSession, None, Some(sf)) => {
            limits.session_rate.floor = narrow(
                &format!("{key}.session_floor"),
                int_in(&format!("{key}.session_floor"), Some(sf), 0, 1, 65_535)?,
            )?;
            limits.session_rate.margin = limits.rate.margin;
        }
        (_, None, None) => {}
        (Rule::RateSession | Rule::RateEnumeration, Some(_), _) => {
            return Err(invalid(
                &format!("{key}.window_s"),
                "the rate window is learning.window_s",
            ));
        }
        _ => {
            return Err(invalid(
                key,
                "session_floor applies to rate.session, window_s to auth.failures",
            ))
        }
    }
    Ok(())
}
