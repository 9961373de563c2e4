//! `learning`: how much traffic a model needs, and the evidence each learned rule needs.

use super::values::{int_in, invalid, narrow, support_in};
use super::ConfigError;
use crate::endpoint_set::MAX_ENDPOINTS;
use serde::Deserialize;

#[derive(Clone, Debug, PartialEq)]
pub struct LearningSettings {
    pub min_sessions: u64,
    pub min_requests: u64,
    pub min_support: u64,
    pub prerequisite_ratio: f64,
    /// Confidence at which the data must show `prerequisite_ratio` (exact binomial bound).
    pub confidence: f64,
    /// The lower confidence at which a prerequisite is flagged, not yet blocked (at most
    /// `confidence`; equal to it: no flag tier).
    pub flag_confidence: f64,
    /// Distinct routes into a step before an order rule is learned for it.
    pub min_routes: u32,
    pub transition_min_count: u64,
    /// The largest estimated share of arrivals at a step by transitions never seen at
    /// which its unknown transitions are still flagged (Good-Turing: singletons / all).
    pub transition_novelty: f64,
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
            flag_confidence: 0.9,
            min_routes: 2,
            transition_min_count: 1,
            transition_novelty: 0.01,
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

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLearning {
    min_sessions: Option<i64>,
    min_requests: Option<i64>,
    min_support: Option<i64>,
    prerequisite_ratio: Option<f64>,
    confidence: Option<f64>,
    flag_confidence: Option<f64>,
    min_routes: Option<i64>,
    transition_min_count: Option<i64>,
    transition_novelty: Option<f64>,
    variable_segment_min: Option<i64>,
    max_endpoints: Option<i64>,
    tick_ms: Option<i64>,
    window_s: Option<i64>,
    min_sessions_per_fact: Option<i64>,
    min_addresses: Option<i64>,
    max_sessions_per_address: Option<i64>,
}

impl TryFrom<RawLearning> for LearningSettings {
    type Error = ConfigError;

    fn try_from(l: RawLearning) -> Result<Self, ConfigError> {
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
        let transition_novelty = l.transition_novelty.unwrap_or(d.transition_novelty);
        if !(0.0..=1.0).contains(&transition_novelty) {
            return Err(invalid(
                "learning.transition_novelty",
                format!("expected a number in [0, 1], got {transition_novelty}"),
            ));
        }
        let flag_confidence = l
            .flag_confidence
            .unwrap_or(d.flag_confidence.min(confidence));
        if !(0.5..=confidence).contains(&flag_confidence) {
            return Err(invalid(
                "learning.flag_confidence",
                format!("expected a number in [0.5, learning.confidence], got {flag_confidence}"),
            ));
        }
        Ok(LearningSettings {
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
            flag_confidence,
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
            transition_novelty,
            variable_segment_min: narrow(
                "learning.variable_segment_min",
                int_in(
                    "learning.variable_segment_min",
                    l.variable_segment_min,
                    d.variable_segment_min.into(),
                    2,
                    crate::registry::MAX_DISTINCT.into(),
                )?,
            )?,
            max_endpoints: narrow(
                "learning.max_endpoints",
                int_in(
                    "learning.max_endpoints",
                    l.max_endpoints,
                    d.max_endpoints.into(),
                    1,
                    MAX_ENDPOINTS as u64,
                )?,
            )?,
            tick_ms: narrow(
                "learning.tick_ms",
                int_in("learning.tick_ms", l.tick_ms, d.tick_ms.into(), 50, 60_000)?,
            )?,
            window_s: narrow(
                "learning.window_s",
                int_in("learning.window_s", l.window_s, d.window_s.into(), 1, 3600)?,
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
        })
    }
}
