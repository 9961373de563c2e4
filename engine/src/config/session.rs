//! `session`: where the session id comes from, and the table that holds sessions.

use super::values::{int_in, invalid, narrow};
use super::ConfigError;
use crate::fingerprint::Fingerprinter;
use crate::session::{default_sources, Source};
use serde::Deserialize;

/// Slots in the session table by default (and in the client-address table).
pub const DEFAULT_CAPACITY: u64 = 16_384;
/// Seconds a slot may stay idle before another session may take it, by default.
pub const DEFAULT_IDLE_TIMEOUT_S: u64 = 1800;

/// The public default of `session.hash_key` (set your own).
pub const DEFAULT_HASH_KEY: &str = "flowguard-default-key-change-me";

#[derive(Clone, Debug)]
pub struct SessionSettings {
    pub sources: Vec<Source>,
    pub capacity: u32,
    pub idle_timeout_s: u32,
    pub fingerprinter: Fingerprinter,
    pub handover: Handover,
    /// Sessions per client address and window that may join mid-flow (0: none).
    pub midflow_budget: u32,
    pub midflow_window_s: u32,
    /// Whether sessions may join mid-flow at any time (a fleet whose ring moves sessions),
    /// not only in the first window after this proxy started (a restart).
    pub midflow_always: bool,
    /// How long a proxy with a collector waits for the fleet's answer about a new
    /// session's skipped step before falling back to the budget (0: never asks).
    pub midflow_fleet_timeout_ms: u32,
}

/// `session.handover`: which answers hand the session over to a new identity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Handover {
    /// An answer setting a configured session cookie (`set-cookie`) hands over to it.
    pub set_cookie: bool,
    /// A top-level field of these templates' 2xx JSON answers holding the token the
    /// client sends next (`auth_token`), with the templates (logins, token refreshes).
    pub json_field: Option<String>,
    pub templates: Vec<String>,
}

impl SessionSettings {
    /// Whether the client address is only a fallback source: then the sessions it keys
    /// are weak (one NAT's customers share them): they teach nothing and no rule of
    /// theirs blocks but the per-address ones.
    pub fn address_is_weak(&self) -> bool {
        self.sources.len() > 1 && self.sources.contains(&Source::Address)
    }

    /// Whether a session new at `now` may be taken as joining mid-flow, for a proxy that
    /// started at `started`.
    pub fn midflow_open(&self, started: u32, now: u32) -> bool {
        self.midflow_budget > 0
            && (self.midflow_always || now.saturating_sub(started) < self.midflow_window_s)
    }

    /// Whether an answer's `set-cookie` is read for a hand-over.
    pub fn reads_set_cookie(&self) -> bool {
        self.handover.set_cookie && self.sources.iter().any(|s| matches!(s, Source::Cookie(_)))
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSession {
    sources: Option<Vec<Source>>,
    capacity: Option<i64>,
    idle_timeout_s: Option<i64>,
    hash_key: Option<String>,
    #[serde(default)]
    handover: RawHandover,
    #[serde(default)]
    midflow: RawMidflow,
}

/// `session.midflow`: `{"budget": 3, "window_s": 600, "fleet_timeout_ms": 50}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawMidflow {
    budget: Option<i64>,
    window_s: Option<i64>,
    always: Option<bool>,
    fleet_timeout_ms: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHandover {
    set_cookie: Option<bool>,
    json_field: Option<String>,
    #[serde(default)]
    templates: Vec<String>,
}

impl RawHandover {
    fn settle(self, sources: &[Source]) -> Result<Handover, ConfigError> {
        if let Some(f) = &self.json_field {
            // A path into the answer (`user.token`): bounded, so the scan stays cheap.
            let segments = f.split('.').count();
            if f.len() > 64 || f.contains('"') || segments > 4 || f.split('.').any(str::is_empty) {
                return Err(invalid(
                    "session.handover.json_field",
                    "expected a JSON field name, or a path of up to 4 names joined by '.' (\"user.token\"), of 1 to 64 characters",
                ));
            }
            let keyed_by_token = sources.iter().any(|s| {
                matches!(
                    s,
                    Source::Bearer | Source::Authorization(_) | Source::JwtClaim(_)
                )
            });
            if !keyed_by_token {
                return Err(invalid(
                    "session.handover.json_field",
                    "needs a bearer, authorization or jwt_claim session source to key the token by",
                ));
            }
            if self.templates.is_empty() || self.templates.len() > 16 {
                return Err(invalid(
                    "session.handover.templates",
                    "expected 1 to 16 templates whose answers carry the token",
                ));
            }
        } else if !self.templates.is_empty() {
            return Err(invalid(
                "session.handover.templates",
                "applies only with session.handover.json_field",
            ));
        }
        if let Some(i) = self
            .templates
            .iter()
            .position(|t| t.split_once(' ').is_none())
        {
            return Err(invalid(
                &format!("session.handover.templates[{i}]"),
                "expected a template as flowguard names it: \"METHOD /path\"",
            ));
        }
        Ok(Handover {
            set_cookie: self.set_cookie.unwrap_or(true),
            json_field: self.json_field,
            templates: self.templates,
        })
    }
}

impl TryFrom<RawSession> for SessionSettings {
    type Error = ConfigError;

    fn try_from(s: RawSession) -> Result<Self, ConfigError> {
        let sources = s.sources.unwrap_or_else(default_sources);
        if sources.is_empty() {
            return Err(invalid("session.sources", "expected at least one source"));
        }
        if let Some(i) = sources.iter().position(|src| {
            matches!(src, Source::Cookie(n) | Source::Header(n) | Source::JwtClaim(n) if n.is_empty() || n.bytes().any(|b| b.is_ascii_whitespace()))
        }) {
            return Err(invalid(&format!("session.sources[{i}]"), "expected a non-empty name without spaces"));
        }
        if let Some(i) = sources.iter().position(|src| {
            matches!(src, Source::Authorization(schemes) if schemes.is_empty() || schemes.len() > 8
                || schemes.iter().any(|s| s.is_empty() || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')))
        }) {
            return Err(invalid(
                &format!("session.sources[{i}].authorization"),
                "expected 1 to 8 scheme names such as \"Bearer\" or \"Token\"",
            ));
        }
        let sources: Vec<Source> = sources
            .into_iter()
            .map(|src| match src {
                Source::Header(n) => Source::Header(n.to_ascii_lowercase()),
                other => other,
            })
            .collect();
        let handover = s.handover.settle(&sources)?;
        let hash_key = s.hash_key.unwrap_or_else(|| DEFAULT_HASH_KEY.to_owned());
        if hash_key.len() < 16 {
            return Err(invalid(
                "session.hash_key",
                "expected at least 16 characters",
            ));
        }
        Ok(SessionSettings {
            sources,
            capacity: narrow(
                "session.capacity",
                int_in("session.capacity", s.capacity, DEFAULT_CAPACITY, 1, 1 << 20)?,
            )?,
            idle_timeout_s: narrow(
                "session.idle_timeout_s",
                int_in(
                    "session.idle_timeout_s",
                    s.idle_timeout_s,
                    DEFAULT_IDLE_TIMEOUT_S,
                    1,
                    7 * 86400,
                )?,
            )?,
            fingerprinter: Fingerprinter::from_secret(&hash_key),
            handover,
            midflow_budget: narrow(
                "session.midflow.budget",
                int_in("session.midflow.budget", s.midflow.budget, 3, 0, 1000)?,
            )?,
            midflow_window_s: narrow(
                "session.midflow.window_s",
                int_in(
                    "session.midflow.window_s",
                    s.midflow.window_s,
                    600,
                    1,
                    86_400,
                )?,
            )?,
            midflow_always: s.midflow.always.unwrap_or(false),
            midflow_fleet_timeout_ms: narrow(
                "session.midflow.fleet_timeout_ms",
                int_in(
                    "session.midflow.fleet_timeout_ms",
                    s.midflow.fleet_timeout_ms,
                    50,
                    0,
                    1000,
                )?,
            )?,
        })
    }
}
