//! `collector`: telemetry and the fleet policy, over Envoy's gRPC callout to a cluster (the
//! Wasm filter) or to an address (the native module, which cannot dial a cluster).

use super::values::{int_in, invalid, narrow};
use super::ConfigError;
use serde::Deserialize;

/// Where and how the filter reports to the collector.
#[derive(Clone, Debug, PartialEq)]
pub struct CollectorSettings {
    /// The Envoy cluster (HTTP/2) of the collector: how the Wasm filter reaches it (empty
    /// when only `address` is given).
    pub cluster: String,
    /// `http://host:port`: how the native module reaches it (plaintext gRPC from a thread
    /// of its own). One configuration may carry both.
    pub address: Option<String>,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCollector {
    cluster: Option<String>,
    address: Option<String>,
    node: Option<String>,
    timeout_ms: Option<i64>,
    flush_interval_ms: Option<i64>,
    sample_rate: Option<f64>,
    buffer_events: Option<i64>,
    batch_events: Option<i64>,
    policy_interval_ms: Option<i64>,
    token: Option<String>,
}

impl TryFrom<RawCollector> for CollectorSettings {
    type Error = ConfigError;

    fn try_from(c: RawCollector) -> Result<Self, ConfigError> {
        let cluster = c.cluster.unwrap_or_default();
        let named = !cluster.trim().is_empty();
        if (named || c.address.is_none()) && (!named || cluster.len() > 100 || !cluster.is_ascii())
        {
            return Err(invalid(
            "collector.cluster",
            "expected the name (ASCII, at most 100 characters) of the collector's Envoy cluster",
        ));
        }
        if let Some(a) = &c.address {
            let authority = a.strip_prefix("http://").map(|r| r.trim_end_matches('/'));
            if !authority.is_some_and(|h| !h.is_empty() && !h.contains('/') && h.len() <= 200) {
                return Err(invalid(
                    "collector.address",
                    format!(
                        "expected http://host:port (plaintext gRPC; TLS to the collector goes \
                         through an Envoy cluster, `collector.cluster`), got {a:?}"
                    ),
                ));
            }
        }

        let rate = c.sample_rate.unwrap_or(0.01);
        if !(0.0..=1.0).contains(&rate) {
            return Err(invalid(
                "collector.sample_rate",
                format!("expected a number in [0, 1], got {rate}"),
            ));
        }
        let num = |key: &str,
                   v: Option<i64>,
                   default: u64,
                   min: u64,
                   max: u64|
         -> Result<u32, ConfigError> {
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
            address: c.address,
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
}
