//! Plugin configuration: one JSON object, every key optional, unknown keys refused.
//!
//! JSON is parsed by serde into raw structs, one per section, then each is validated into
//! its settings through its own `TryFrom`, so an invalid value cannot exist past
//! `on_configure`. Every error names its key: `session.capacity: expected an integer
//! from 1 to 1048576, got 0`. Defaults live in each settings type's `Default`.

mod collector;
mod endpoints;
mod learning;
mod rules;
mod session;
#[cfg(test)]
mod tests;
mod values;

pub use collector::CollectorSettings;
pub use endpoints::EndpointSettings;
pub use learning::LearningSettings;
pub use rules::{Limits, RuleActions, SensitiveSettings, Threshold};
pub use session::{SessionSettings, DEFAULT_HASH_KEY};

use crate::policy::Policy;
use serde::Deserialize;
use values::invalid;

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

impl Mode {
    /// The mode as configured (`learn`, `monitor`, `enforce`).
    pub const fn id(self) -> &'static str {
        match self {
            Mode::Learn => "learn",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    session: session::RawSession,
    #[serde(default)]
    learning: learning::RawLearning,
    #[serde(default)]
    endpoints: endpoints::RawEndpoints,
    #[serde(default)]
    rules: rules::RawRules,
    policy: Option<Policy>,
    collector: Option<collector::RawCollector>,
}

impl TryFrom<Raw> for Settings {
    type Error = ConfigError;

    fn try_from(raw: Raw) -> Result<Self, ConfigError> {
        let session = SessionSettings::try_from(raw.session)?;
        let learning = LearningSettings::try_from(raw.learning)?;
        let rules = rules::RuleSettings::try_from(raw.rules)?;
        if let Some(p) = &raw.policy {
            p.validate()
                .map_err(|e| invalid(&format!("policy.{}", e.key), e.message))?;
        }

        Ok(Settings {
            mode: raw.mode,
            session,
            learning,
            endpoints: EndpointSettings::try_from(raw.endpoints)?,
            rules: rules.actions,
            limits: rules.limits,
            sensitive: rules.sensitive,
            collector: raw.collector.map(CollectorSettings::try_from).transpose()?,
            policy: raw.policy,
        })
    }
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
