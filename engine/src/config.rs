//! Plugin configuration: one JSON object, every key optional, unknown keys refused.
//!
//! JSON is parsed by serde into raw structs, then validated into [`Settings`] through
//! `TryFrom`, so an invalid value cannot exist past `on_configure`. Every error names
//! its key: `session.capacity: expected an integer from 1 to 1048576, got 0`.

use crate::endpoint::DeclaredTemplate;
use crate::endpoint_set::MAX_ENDPOINTS;
use crate::fingerprint::Fingerprinter;
use crate::policy::Policy;
use crate::rule::{Action, Rule};
use crate::session::{default_sources, Source};
use serde::Deserialize;
use std::collections::BTreeMap;

/// What the filter does with its verdicts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Observe and learn; never annotate or act.
    Learn,
    /// Decide, annotate and report; never block.
    #[default]
    Monitor,
    /// Act on the rules' actions.
    Enforce,
}

/// A configuration error naming the key at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Validated settings: what the filter runs with.
#[derive(Clone, Debug)]
pub struct Settings {
    pub mode: Mode,
    pub session: SessionSettings,
    pub learning: LearningSettings,
    pub endpoints: EndpointSettings,
    pub rules: RuleActions,
    pub limits: Limits,
    pub sensitive: SensitiveSettings,
    /// Telemetry and policy over gRPC; `None` when no collector is configured.
    pub collector: Option<CollectorSettings>,
    /// A policy given inline: enforced from the start, with no learning phase.
    pub policy: Option<Policy>,
}

#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub sources: Vec<Source>,
    pub capacity: u32,
    pub idle_timeout_s: u32,
    pub fingerprinter: Fingerprinter,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LearningSettings {
    pub min_sessions: u64,
    pub min_requests: u64,
    pub min_support: u64,
    pub prerequisite_ratio: f64,
    /// Confidence at which the data must show `prerequisite_ratio` (exact binomial bound).
    pub confidence: f64,
    /// Distinct routes into a step before an order rule is learned for it.
    pub min_routes: u32,
    pub transition_min_count: u64,
    pub variable_segment_min: u32,
    pub max_endpoints: u16,
    pub tick_ms: u32,
    /// The window of rate and distinct-id counting, in seconds.
    pub window_s: u32,
    /// Distinct sessions and client addresses an endpoint, a transition or a
    /// prerequisite's absence needs before it is learned (poisoning resistance).
    pub min_sessions_per_fact: u32,
    pub min_addresses: u32,
    /// Sessions one client address may contribute to learning (0: no cap).
    pub max_sessions_per_address: u32,
}

impl LearningSettings {
    /// Whether a fact needs more than one session or address (else the learner need not
    /// keep the evidence of absences: any violator is enough).
    pub fn has_support_thresholds(&self) -> bool {
        self.min_sessions_per_fact > 1 || self.min_addresses > 1
    }

    /// How many of the `registered` endpoints a request records as absent before it (the
    /// `known` of [`crate::learn::LearnStats::observe_request`]): all of them against
    /// support thresholds, none without.
    pub fn absences_to_record(&self, registered: usize) -> usize {
        if self.has_support_thresholds() {
            registered
        } else {
            0
        }
    }

    /// Whether learning must look up each new session's client address.
    pub fn counts_addresses(&self) -> bool {
        self.min_addresses > 1 || self.max_sessions_per_address > 0
    }
}

impl Default for LearningSettings {
    fn default() -> Self {
        LearningSettings {
            min_sessions: 50,
            min_requests: 500,
            min_support: 5,
            prerequisite_ratio: 0.98,
            confidence: 0.99,
            min_routes: 2,
            transition_min_count: 1,
            variable_segment_min: 16,
            max_endpoints: MAX_ENDPOINTS as u16,
            tick_ms: 1000,
            window_s: 10,
            min_sessions_per_fact: 1,
            min_addresses: 1,
            max_sessions_per_address: 0,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct EndpointSettings {
    pub templates: Vec<DeclaredTemplate>,
    /// Retired endpoints: `"/api/v1/"` (a prefix, any method) or `"GET /api/old"`.
    pub deprecated: Vec<String>,
    /// A learned endpoint unused for this long counts as retired (0: never).
    pub retire_after_s: u32,
    /// Query parameters whose values count as identifiers for `rate.enumeration`.
    pub id_params: Vec<String>,
    /// The upstream ignores case in paths: templates are built from the lower-cased path.
    pub case_insensitive: bool,
    /// The upstream honours `x-http-method-override`: its value is the method rules see.
    pub method_override: bool,
}

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

/// Where and how the filter reports to the collector.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectorSettings {
    /// The Envoy cluster (HTTP/2) of the collector.
    pub cluster: String,
    /// This proxy's name in telemetry.
    pub node: String,
    pub timeout_ms: u32,
    pub flush_interval_ms: u32,
    /// Share of sessions whose every request is summarised (rule events are always sent).
    pub sample_rate: f64,
    /// Events a worker buffers at most; more are dropped and counted.
    pub buffer_events: u32,
    /// Events per batch at most.
    pub batch_events: u32,
    /// How often to ask the collector for a new policy (0: never).
    pub policy_interval_ms: u32,
    /// Sent as `authorization: Bearer <token>` on every call, when set.
    pub token: Option<String>,
}

pub const DEFAULT_HASH_KEY: &str = "flowguard-default-key-change-me";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    session: RawSession,
    #[serde(default)]
    learning: RawLearning,
    #[serde(default)]
    endpoints: RawEndpoints,
    #[serde(default)]
    rules: BTreeMap<String, serde_json::Value>,
    policy: Option<Policy>,
    collector: Option<RawCollector>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCollector {
    cluster: Option<String>,
    node: Option<String>,
    timeout_ms: Option<i64>,
    flush_interval_ms: Option<i64>,
    sample_rate: Option<f64>,
    buffer_events: Option<i64>,
    batch_events: Option<i64>,
    policy_interval_ms: Option<i64>,
    token: Option<String>,
}

fn collector_settings(c: RawCollector) -> Result<CollectorSettings, ConfigError> {
    let cluster = c.cluster.unwrap_or_default();
    if cluster.trim().is_empty() || cluster.len() > 100 || !cluster.is_ascii() {
        return Err(invalid(
            "collector.cluster",
            "expected the name (ASCII, at most 100 characters) of the collector's Envoy cluster",
        ));
    }

    let rate = c.sample_rate.unwrap_or(0.01);
    if !(0.0..=1.0).contains(&rate) {
        return Err(invalid(
            "collector.sample_rate",
            format!("expected a number in [0, 1], got {rate}"),
        ));
    }
    let num =
        |key: &str, v: Option<i64>, default: u64, min: u64, max: u64| -> Result<u32, ConfigError> {
            let k = format!("collector.{key}");
            narrow(&k, int_in(&k, v, default, min, max)?)
        };
    let buffer_events = num("buffer_events", c.buffer_events, 1000, 1, 1_000_000)?;
    let batch_events = num("batch_events", c.batch_events, 500, 1, 100_000)?;
    if batch_events > buffer_events {
        return Err(invalid(
            "collector.batch_events",
            format!("must not exceed collector.buffer_events ({buffer_events})"),
        ));
    }
    Ok(CollectorSettings {
        cluster,
        node: c.node.unwrap_or_else(|| "flowguard".to_owned()),
        timeout_ms: num("timeout_ms", c.timeout_ms, 2000, 10, 60_000)?,
        flush_interval_ms: num("flush_interval_ms", c.flush_interval_ms, 1000, 50, 600_000)?,
        sample_rate: rate,
        buffer_events,
        batch_events,
        policy_interval_ms: num(
            "policy_interval_ms",
            c.policy_interval_ms,
            10_000,
            0,
            86_400_000,
        )?,
        token: match c.token {
            Some(t) if t.len() < 16 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                return Err(invalid(
                    "collector.token",
                    "expected at least 16 printable ASCII characters",
                ))
            }
            t => t,
        },
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSession {
    sources: Option<Vec<Source>>,
    capacity: Option<i64>,
    idle_timeout_s: Option<i64>,
    hash_key: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLearning {
    min_sessions: Option<i64>,
    min_requests: Option<i64>,
    min_support: Option<i64>,
    prerequisite_ratio: Option<f64>,
    confidence: Option<f64>,
    min_routes: Option<i64>,
    transition_min_count: Option<i64>,
    variable_segment_min: Option<i64>,
    max_endpoints: Option<i64>,
    tick_ms: Option<i64>,
    window_s: Option<i64>,
    min_sessions_per_fact: Option<i64>,
    min_addresses: Option<i64>,
    max_sessions_per_address: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEndpoints {
    #[serde(default)]
    templates: Vec<String>,
    #[serde(default)]
    deprecated: Vec<String>,
    retire_after_s: Option<i64>,
    #[serde(default)]
    id_params: Vec<String>,
    #[serde(default)]
    case_insensitive: bool,
    #[serde(default)]
    method_override: bool,
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

fn int_in(
    key: &str,
    value: Option<i64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 0 && (min..=max).contains(&v.unsigned_abs()) => Ok(v.unsigned_abs()),
        Some(v) => Err(invalid(
            key,
            format!("expected an integer from {min} to {max}, got {v}"),
        )),
    }
}

/// A support threshold: 1 to what a support sketch can count.
fn support_in(key: &str, value: Option<i64>) -> Result<u32, ConfigError> {
    let max = crate::support::MAX_SUPPORT;
    narrow(key, int_in(key, value, 1, 1, max.into())?)
}

fn narrow<T: TryFrom<u64>>(key: &str, v: u64) -> Result<T, ConfigError> {
    T::try_from(v).map_err(|_| invalid(key, format!("{v} is out of range")))
}

impl TryFrom<Raw> for Settings {
    type Error = ConfigError;

    fn try_from(raw: Raw) -> Result<Self, ConfigError> {
        let s = raw.session;
        let sources = s.sources.unwrap_or_else(default_sources);
        if sources.is_empty() {
            return Err(invalid("session.sources", "expected at least one source"));
        }
        if let Some(i) = sources.iter().position(|src| {
            matches!(src, Source::Cookie(n) | Source::Header(n) if n.is_empty() || n.bytes().any(|b| b.is_ascii_whitespace()))
        }) {
            return Err(invalid(&format!("session.sources[{i}]"), "expected a non-empty name without spaces"));
        }
        let sources = sources
            .into_iter()
            .map(|src| match src {
                Source::Header(n) => Source::Header(n.to_ascii_lowercase()),
                other => other,
            })
            .collect();
        let hash_key = s.hash_key.unwrap_or_else(|| DEFAULT_HASH_KEY.to_owned());
        if hash_key.len() < 16 {
            return Err(invalid(
                "session.hash_key",
                "expected at least 16 characters",
            ));
        }
        let session = SessionSettings {
            sources,
            capacity: narrow(
                "session.capacity",
                int_in("session.capacity", s.capacity, 16384, 1, 1 << 20)?,
            )?,
            idle_timeout_s: narrow(
                "session.idle_timeout_s",
                int_in(
                    "session.idle_timeout_s",
                    s.idle_timeout_s,
                    1800,
                    1,
                    7 * 86400,
                )?,
            )?,
            fingerprinter: Fingerprinter::from_secret(&hash_key),
        };

        let l = raw.learning;
        let d = LearningSettings::default();
        let ratio = l.prerequisite_ratio.unwrap_or(d.prerequisite_ratio);
        // No sample shows a share of exactly 1: a ratio of 1 could never be asserted.
        if !(ratio > 0.0 && ratio < 1.0) {
            return Err(invalid(
                "learning.prerequisite_ratio",
                format!("expected a number in (0, 1), got {ratio}"),
            ));
        }
        let confidence = l.confidence.unwrap_or(d.confidence);
        if !(0.5..1.0).contains(&confidence) {
            return Err(invalid(
                "learning.confidence",
                format!("expected a number in [0.5, 1), got {confidence}"),
            ));
        }
        let learning = LearningSettings {
            min_sessions: int_in(
                "learning.min_sessions",
                l.min_sessions,
                d.min_sessions,
                1,
                u32::MAX.into(),
            )?,
            min_requests: int_in(
                "learning.min_requests",
                l.min_requests,
                d.min_requests,
                1,
                u32::MAX.into(),
            )?,
            min_support: int_in(
                "learning.min_support",
                l.min_support,
                d.min_support,
                1,
                u32::MAX.into(),
            )?,
            prerequisite_ratio: ratio,
            confidence,
            min_routes: narrow(
                "learning.min_routes",
                int_in(
                    "learning.min_routes",
                    l.min_routes,
                    d.min_routes.into(),
                    1,
                    crate::evidence::MAX_ROUTES as u64,
                )?,
            )?,
            transition_min_count: int_in(
                "learning.transition_min_count",
                l.transition_min_count,
                d.transition_min_count,
                1,
                u32::MAX.into(),
            )?,
            variable_segment_min: narrow(
                "learning.variable_segment_min",
                int_in(
                    "learning.variable_segment_min",
                    l.variable_segment_min,
                    16,
                    2,
                    crate::registry::MAX_DISTINCT.into(),
                )?,
            )?,
            max_endpoints: narrow(
                "learning.max_endpoints",
                int_in(
                    "learning.max_endpoints",
                    l.max_endpoints,
                    MAX_ENDPOINTS as u64,
                    1,
                    MAX_ENDPOINTS as u64,
                )?,
            )?,
            tick_ms: narrow(
                "learning.tick_ms",
                int_in("learning.tick_ms", l.tick_ms, 1000, 50, 60_000)?,
            )?,
            window_s: narrow(
                "learning.window_s",
                int_in("learning.window_s", l.window_s, 10, 1, 3600)?,
            )?,
            min_sessions_per_fact: support_in(
                "learning.min_sessions_per_fact",
                l.min_sessions_per_fact,
            )?,
            min_addresses: support_in("learning.min_addresses", l.min_addresses)?,
            max_sessions_per_address: narrow(
                "learning.max_sessions_per_address",
                int_in(
                    "learning.max_sessions_per_address",
                    l.max_sessions_per_address,
                    0,
                    0,
                    1_000_000,
                )?,
            )?,
        };

        let templates = raw
            .endpoints
            .templates
            .iter()
            .enumerate()
            .map(|(i, t)| {
                DeclaredTemplate::parse(t)
                    .map_err(|m| invalid(&format!("endpoints.templates[{i}]"), m))
            })
            .collect::<Result<_, _>>()?;

        let mut rules = RuleActions::default();
        let mut limits = Limits::default();
        let mut sensitive = SensitiveSettings::default();
        for (id, value) in raw.rules {
            let key = format!("rules.{id}");
            let rule = Rule::ALL
                .into_iter()
                .find(|r| r.id() == id)
                .ok_or_else(|| invalid(&key, "unknown rule id (see DESIGN.md section 4)"))?;
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

        if let Some(p) = &raw.policy {
            p.validate()
                .map_err(|e| invalid(&format!("policy.{}", e.key), e.message))?;
        }

        let e = raw.endpoints;
        for (i, d) in e.deprecated.iter().enumerate() {
            if !d.contains('/') {
                return Err(invalid(
                    &format!("endpoints.deprecated[{i}]"),
                    format!("expected a path prefix or \"METHOD /path\", got {d:?}"),
                ));
            }
        }
        let endpoints = EndpointSettings {
            templates,
            deprecated: e.deprecated,
            retire_after_s: narrow(
                "endpoints.retire_after_s",
                int_in(
                    "endpoints.retire_after_s",
                    e.retire_after_s,
                    0,
                    0,
                    365 * 86400,
                )?,
            )?,
            id_params: e.id_params,
            case_insensitive: e.case_insensitive,
            method_override: e.method_override,
        };
        Ok(Settings {
            mode: raw.mode,
            session,
            learning,
            endpoints,
            rules,
            limits,
            sensitive,
            collector: raw.collector.map(collector_settings).transpose()?,
            policy: raw.policy,
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
        || f.session_floor.is_some();
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
        if rule != Rule::AuthFailures {
            return Err(invalid(key, "address_floor applies to auth.failures"));
        }
        let k = format!("{key}.address_floor");
        limits.address_auth.floor = narrow(&k, int_in(&k, f.address_floor, 0, 1, 65_535)?)?;
        limits.address_auth.margin = limits.auth.margin;
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

impl Settings {
    /// Parses and validates the plugin configuration; empty input means all defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Settings, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Settings::try_from(Raw::default());
        }
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(invalid("(top level)", "expected a JSON object"));
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: Raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let key = if path == "." {
                "(top level)".to_owned()
            } else {
                path
            };
            invalid(&key, e.into_inner().to_string())
        })?;
        Settings::try_from(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn err(json: &str) -> String {
        Settings::from_json(json.as_bytes())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let s = Settings::from_json(b"").unwrap();
        assert_eq!(s.mode, Mode::Monitor);
        assert_eq!(s.session.capacity, 16384);
        assert_eq!(s.learning, LearningSettings::default());
        assert_eq!(s.rules.get(Rule::MissingPrerequisite), Action::Block);
        assert_eq!(s.rules.get(Rule::UnknownTransition), Action::Flag);
        assert!(Settings::from_json(b"{}").is_ok());
    }

    #[test]
    fn full_config_parses() {
        let s = Settings::from_json(
            br#"{"mode":"enforce","session":{"sources":[{"header":"X-Session"},"bearer","address"],
                 "capacity":1000,"idle_timeout_s":60,"hash_key":"0123456789abcdef"},
                 "learning":{"min_sessions":3,"min_requests":10,"prerequisite_ratio":0.99,"tick_ms":100},
                 "endpoints":{"templates":["GET /u/{name}"]},
                 "rules":{"order.unknown_transition":"off"}}"#,
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Enforce);
        assert_eq!(s.session.sources[0], Source::Header("x-session".into()));
        assert_eq!(s.session.capacity, 1000);
        assert_eq!(s.learning.min_sessions, 3);
        assert_eq!(s.rules.get(Rule::UnknownTransition), Action::Off);
        assert_eq!(s.endpoints.templates.len(), 1);
    }

    #[test]
    fn errors_name_the_key() {
        assert!(
            err(r#"{"bogus":1}"#).contains("bogus"),
            "{}",
            err(r#"{"bogus":1}"#)
        );
        assert!(err(r#"{"session":{"capcity":1}}"#).contains("capcity"));
        assert!(err(r#"{"mode":"bogus"}"#).starts_with("mode:"));
        assert!(err(r#"{"session":{"capacity":"big"}}"#).starts_with("session.capacity:"));
        assert!(err(r#"{"session":{"capacity":-3}}"#).contains("got -3"));
        assert!(err(r#"{"learning":{"prerequisite_ratio":1.5}}"#)
            .starts_with("learning.prerequisite_ratio:"));
        assert!(err(r#"{"rules":{"order.nope":"block"}}"#)
            .starts_with("rules.order.nope: unknown rule id"));
        let e = err(r#"{"rules":{"rate.session":"drop"}}"#);
        assert!(
            e.starts_with("rules.rate.session: expected \"block\""),
            "{e}"
        );
        assert!(
            err(r#"{"endpoints":{"templates":["nope"]}}"#).starts_with("endpoints.templates[0]:")
        );
        assert!(err(r#"{"session":{"sources":[]}}"#).starts_with("session.sources:"));
        assert!(err(r#"{"session":{"hash_key":"short"}}"#).starts_with("session.hash_key:"));
        let e = err("[1,2]");
        assert_eq!(e, "(top level): expected a JSON object");
        assert!(err("{").contains("EOF"));
    }

    #[test]
    fn rule_thresholds_parse_and_are_checked() {
        let s = Settings::from_json(
            br#"{"rules":{"rate.session":{"action":"flag","margin":2,"floor":5,"session_floor":30},
                          "rate.enumeration":{"limit":40},
                          "auth.failures":{"window_s":60,"floor":3},
                          "inventory.unknown_endpoint":"block"},
                 "endpoints":{"deprecated":["/api/v1/"],"retire_after_s":60,"id_params":["page"]}}"#,
        )
        .unwrap();
        assert_eq!(s.rules.get(Rule::RateSession), Action::Flag);
        assert_eq!(
            s.limits.rate,
            Threshold {
                margin: 2.0,
                floor: 5,
                limit: None
            }
        );
        assert_eq!(s.limits.session_rate.floor, 30);
        assert_eq!(
            s.limits.enumeration.choose(99),
            40,
            "a fixed limit overrides learning"
        );
        assert_eq!((s.limits.auth_window_s, s.limits.auth.floor), (60, 3));
        assert_eq!(s.rules.get(Rule::UnknownEndpoint), Action::Block);
        assert_eq!(s.endpoints.retire_after_s, 60);
        assert_eq!(
            Threshold {
                margin: 3.0,
                floor: 20,
                limit: None
            }
            .choose(4),
            20
        );
        assert_eq!(
            Threshold {
                margin: 3.0,
                floor: 20,
                limit: None
            }
            .choose(9),
            27
        );

        assert!(err(r#"{"rules":{"rate.session":{"margin":0.5}}}"#)
            .starts_with("rules.rate.session.margin:"));
        assert!(err(r#"{"rules":{"rate.session":{"window_s":5}}}"#)
            .starts_with("rules.rate.session.window_s:"));
        assert!(err(r#"{"rules":{"order.unknown_transition":{"floor":5}}}"#)
            .starts_with("rules.order.unknown_transition:"));
        assert!(err(r#"{"rules":{"rate.session":{"acton":"block"}}}"#)
            .starts_with("rules.rate.session:"));
        assert!(err(r#"{"rules":{"response.sensitive_data":"block"}}"#)
            .starts_with("rules.response.sensitive_data.action:"));
        assert!(
            err(r#"{"endpoints":{"deprecated":["v1"]}}"#).starts_with("endpoints.deprecated[0]:")
        );
        let s = Settings::from_json(
            br#"{"rules":{"response.sensitive_data":{"max_bytes":1024,"fields":["iban"]}}}"#,
        )
        .unwrap();
        assert_eq!(
            s.sensitive,
            SensitiveSettings {
                max_bytes: 1024,
                fields: vec!["iban".into()]
            }
        );
        assert!(
            err(r#"{"rules":{"response.sensitive_data":{"max_bytes":0}}}"#)
                .starts_with("rules.response.sensitive_data.max_bytes:")
        );
        assert!(err(r#"{"rules":{"rate.session":{"fields":["x"]}}}"#)
            .starts_with("rules.rate.session:"));
    }

    #[test]
    fn collector_settings_parse_and_are_checked() {
        let s = Settings::from_json(
            br#"{"collector":{"cluster":"fg","sample_rate":1.0,"node":"edge-1"}}"#,
        )
        .unwrap();
        let c = s.collector.unwrap();
        assert_eq!(
            (
                c.cluster.as_str(),
                c.node.as_str(),
                c.sample_rate,
                c.buffer_events
            ),
            ("fg", "edge-1", 1.0, 1000)
        );
        assert!(Settings::from_json(b"{}").unwrap().collector.is_none());
        assert!(err(r#"{"collector":{}}"#).starts_with("collector.cluster:"));
        assert!(err(r#"{"collector":{"cluster":"x","sample_rate":2}}"#)
            .starts_with("collector.sample_rate:"));
        assert!(err(r#"{"collector":{"cluster":"x","batch_events":5000}}"#)
            .starts_with("collector.batch_events:"));
        assert!(err(r#"{"collector":{"cluster":"x","clutser":1}}"#).contains("clutser"));
    }

    proptest! {
            #[test]
            fn arbitrary_bytes_never_panic
    (bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                let _ = Settings::from_json(&bytes);
            }
        }
}
