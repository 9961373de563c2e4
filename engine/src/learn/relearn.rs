//! Learning an active policy again as evidence arrives: it only ever tightens.

use super::{compile, LearnStats};
use crate::config::{LearningSettings, Limits};
use crate::endpoint_set::MAX_ENDPOINTS;
use crate::policy::Policy;
use crate::registry::Registry;
use crate::sensitive::Baseline;

/// Whether the counters have grown enough, since a policy learned from `since` sessions,
/// to learn it again: by a quarter, and at least `learning.min_sessions`.
pub fn relearn_due(since: u64, stats: &LearnStats, s: &LearningSettings) -> bool {
    stats.sessions >= since.saturating_add((since / 4).max(s.min_sessions))
}

/// The active policy learned again from `stats`, counted in its own endpoint ids since it
/// was installed (from sessions no rule fired on): order rules that have their evidence
/// now are added, with the evidence notes. It only tightens: no prerequisite, limit or
/// endpoint goes, and the endpoint list (so every session's progress) stays as it is.
pub fn relearn(
    current: &Policy,
    stats: &LearnStats,
    s: &LearningSettings,
    limits: &Limits,
) -> Policy {
    let mut registry = Registry::default();
    for e in &current.endpoints {
        registry.add(&e.template, MAX_ENDPOINTS as u16);
    }
    let version = current.version.saturating_add(1);
    let fresh = compile(stats, &registry, s, limits, version);
    let mut next = current.clone();
    next.version = version;
    next.layout_since = current.layout();
    next.learned_from = fresh.learned_from;
    for e in &mut next.endpoints {
        let Some(learned) = fresh.endpoint(&e.template) else {
            continue;
        };
        for p in &learned.bound_prerequisites {
            // Bound is stricter than session-wide: a session-wide rule kept from before
            // stays as it is, the bound one is added beside it.
            if !e.bound_prerequisites.contains(p) {
                e.bound_prerequisites.push(p.clone());
            }
        }
        for p in &learned.prerequisites {
            if !e.prerequisites.contains(p) && !e.bound_prerequisites.contains(p) {
                e.prerequisites.push(p.clone());
            }
        }
        for p in &learned.flag_bound_prerequisites {
            if !e.flag_bound_prerequisites.contains(p) {
                e.flag_bound_prerequisites.push(p.clone());
            }
        }
        for p in &learned.flag_prerequisites {
            if !e.flag_prerequisites.contains(p) {
                e.flag_prerequisites.push(p.clone());
            }
        }
        // A rule that blocks now leaves the flag tier.
        let blocks = e.prerequisites.clone();
        let blocks_bound = e.bound_prerequisites.clone();
        e.flag_prerequisites
            .retain(|p| !blocks.contains(p) && !blocks_bound.contains(p));
        e.flag_bound_prerequisites
            .retain(|p| !blocks.contains(p) && !blocks_bound.contains(p));
        // A limit is kept as learned; one the first sample had no evidence for (no
        // anonymous caller yet) is added.
        if e.address_rate.is_none() {
            e.address_rate = learned.address_rate;
        }
        if e.address_distinct_ids.is_none() {
            e.address_distinct_ids = learned.address_distinct_ids;
        }
        // Transitions are judged once a sample shows how sessions arrive (more evidence
        // only adds the ways in it saw).
        e.open_transitions &= learned.open_transitions;
        e.sessions = e.sessions.max(learned.sessions);
        // What answers normally carry is learned on: a larger normal is not a looser rule
        // on anyone's access, only fewer flags.
        if let Some(b) = learned.sensitive {
            e.sensitive.get_or_insert_with(Baseline::default).merge(&b);
        }
        e.evidence = learned.evidence.clone();
        let has_rules = !e.prerequisites.is_empty() || !e.bound_prerequisites.is_empty();
        if let Some(ev) = e.evidence.as_mut().filter(|_| has_rules) {
            ev.note = None; // a rule kept from before stands, whatever this sample says
        }
    }
    for t in fresh.transitions {
        let known = next
            .transitions
            .iter()
            .any(|k| k.from == t.from && k.to == t.to);
        if !known {
            next.transitions.push(t);
        }
    }
    next
}
