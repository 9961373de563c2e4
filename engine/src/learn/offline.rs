//! Learning from stored requests (telemetry, access logs) exactly as the filter learns.

use super::{LearnStats, Registry};
use crate::config::{LearningSettings, Limits};
use crate::endpoint_set::EndpointId;

/// One request and its answer, as the learner takes it.
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    pub endpoint: EndpointId,
    /// Hash of the request's identifier values, if its template has any.
    pub id: Option<u64>,
    pub now_ms: u64,
    pub status: u16,
    /// The session is weak (address-keyed): only endpoint facts are learned from it.
    pub weak: bool,
}

impl Exchange {
    /// The learning step of this exchange, exactly as the filter takes it (in its request
    /// and response phases) through the session's `slot`: the collector and `flowguard
    /// learn` call this, so the fleet's policy comes from the same code as each filter's.
    /// `known` is how many endpoints may be recorded as absent before it
    /// ([`LearningSettings::absences_to_record`]).
    pub fn learn(
        self,
        stats: &mut LearnStats,
        slot: &mut crate::slot::Slot,
        known: usize,
        s: &LearningSettings,
        limits: &Limits,
    ) {
        let window_ms = s.window_s.saturating_mul(1000);
        let auth_window_ms = limits.auth_window_s.saturating_mul(1000);
        let visit = slot.record_request(Some(self.endpoint), self.id, self.now_ms, window_ms);
        // Stored requests do not say how many sessions a weak session's address carried:
        // its peaks count whole, which errs towards a higher (looser) limit.
        stats.learn_request(self.endpoint, &visit, self.weak, 0, known);
        let peak = slot.record_response(
            self.endpoint,
            self.id,
            self.status,
            self.now_ms,
            auth_window_ms,
        );
        let learned = (visit.learn && !self.weak, visit.learn);
        stats.learn_answer(self.endpoint, learned, visit.retry, self.status, peak);
    }
}

/// One stored request, as telemetry or an access log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub session: u64,
    pub time_ms: u64,
    pub template: String,
    pub status: u16,
    pub ids: Option<u64>,
    /// Keyed by a fallback client address (see [`Exchange::weak`]).
    pub weak: bool,
}

/// Learns from stored requests: each session's requests, in time order, go through a
/// session slot and [`Exchange::learn`], as they went through the filter.
pub fn learn_from(
    observations: &mut [Observation],
    s: &LearningSettings,
    limits: &Limits,
) -> (LearnStats, Registry) {
    observations.sort_by_key(|o| (o.session, o.time_ms));
    let mut stats = LearnStats::default();
    let mut registry = Registry::default();
    let mut slot = crate::slot::Slot::new(0, 0, 0);
    for o in observations.iter() {
        if slot.fingerprint != o.session || !slot.seen {
            let first_seen = u32::try_from(o.time_ms / 1000).unwrap_or(u32::MAX);
            slot = crate::slot::Slot::new(o.session, first_seen, 0);
        }
        if let Some(e) = registry.learn(&o.template, s.max_endpoints, s.variable_segment_min) {
            let exchange = Exchange {
                endpoint: e,
                id: o.ids,
                now_ms: o.time_ms,
                status: o.status,
                weak: o.weak,
            };
            exchange.learn(
                &mut stats,
                &mut slot,
                s.absences_to_record(registry.len()),
                s,
                limits,
            );
        }
    }
    (stats, registry)
}
