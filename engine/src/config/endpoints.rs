//! `endpoints`: declared templates, retired endpoints, and how paths are read.

use super::values::{int_in, invalid, narrow};
use super::ConfigError;
use crate::endpoint::DeclaredTemplate;
use crate::failure::FailureMatch;
use serde::Deserialize;

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
    /// 2xx JSON answers that mean failure (`{"status":"fail"}`).
    pub failure: FailureMatch,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEndpoints {
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
    #[serde(default)]
    failure: RawFailure,
}

/// `endpoints.failure`: `{"json": {"status": ["fail", "error"]}, "auth": ["POST /login"]}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFailure {
    #[serde(default)]
    json: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    auth: Vec<String>,
}

impl TryFrom<RawEndpoints> for EndpointSettings {
    type Error = ConfigError;

    fn try_from(e: RawEndpoints) -> Result<Self, ConfigError> {
        let templates = e
            .templates
            .iter()
            .enumerate()
            .map(|(i, t)| {
                DeclaredTemplate::parse(t)
                    .map_err(|m| invalid(&format!("endpoints.templates[{i}]"), m))
            })
            .collect::<Result<_, _>>()?;

        for (i, d) in e.deprecated.iter().enumerate() {
            if !d.contains('/') {
                return Err(invalid(
                    &format!("endpoints.deprecated[{i}]"),
                    format!("expected a path prefix or \"METHOD /path\", got {d:?}"),
                ));
            }
        }
        let f = e.failure;
        if let Some((k, _)) = f.json.iter().find(|(k, v)| k.is_empty() || v.is_empty()) {
            return Err(invalid(
                &format!("endpoints.failure.json.{k}"),
                "expected a field name and at least one value",
            ));
        }
        if let Some(i) = f.auth.iter().position(|t| t.split_once(' ').is_none()) {
            return Err(invalid(
                &format!("endpoints.failure.auth[{i}]"),
                "expected a template as flowguard names it: \"METHOD /path\"",
            ));
        }
        if f.json.is_empty() && !f.auth.is_empty() {
            return Err(invalid(
                "endpoints.failure.auth",
                "applies only with endpoints.failure.json",
            ));
        }
        let failure = FailureMatch {
            fields: f.json.into_iter().collect(),
            auth: f.auth,
        };
        Ok(EndpointSettings {
            failure,
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
        })
    }
}
