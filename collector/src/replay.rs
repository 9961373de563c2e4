//! `flowguard replay`: what a policy would have flagged and blocked on stored traffic,
//! session by session through the engine's own verdicts, before anyone enforces it.

use flowguard_engine::config::Settings;
use flowguard_engine::learn::Observation;
use flowguard_engine::model::Model;
use flowguard_engine::rule::Rule;
use flowguard_engine::slot::Slot;
use flowguard_engine::verdict::{evaluate, Outcome, Request};
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub requests: u64,
    pub sessions: u64,
    pub allowed: u64,
    pub flagged: u64,
    pub blocked: u64,
    pub by_rule: BTreeMap<&'static str, u64>,
    /// Sessions with at least one block, and an example of each rule's first hit.
    pub blocked_sessions: u64,
    pub examples: BTreeMap<&'static str, String>,
    /// The first [`LISTED`] sessions blocked, each with its first blocked request:
    /// (session, template, rules that fired).
    pub blocked_list: Vec<(u64, String, String)>,
}

/// Blocked sessions a report names at most.
pub const LISTED: usize = 200;

/// Runs `model` over `observations` (any order; grouped by session and time here).
pub fn replay(model: &Model, settings: &Settings, observations: &mut [Observation]) -> Report {
    observations.sort_by_key(|o| (o.session, o.time_ms));
    let mut report = Report::default();
    let mut slot = Slot::default();
    let mut session_blocked = false;
    for o in observations.iter() {
        if slot.fingerprint != o.session || report.requests == 0 {
            report.sessions += 1;
            report.blocked_sessions += u64::from(session_blocked);
            session_blocked = false;
            slot = Slot::new(
                o.session,
                u32::try_from(o.time_ms / 1000).unwrap_or(u32::MAX),
                u32::try_from(model.version).unwrap_or(0),
            );
        }
        report.requests += 1;
        let endpoint = model.endpoint(&o.template);
        let req = Request {
            endpoint,
            deprecated_template: endpoint.is_none() && model.matches_deprecated(&o.template),
            id: o.ids,
            now_ms: o.time_ms,
            address_failures: 0,
            weak_session: o.weak,
            // Replay judges stored sessions from their first request on: none is mid-flow.
            midflow_ok: false,
            // Stored requests do not say what their address carried: the lone share.
            carried: 0,
            ..Request::default()
        };
        let (_, v) = evaluate(Some(model), settings, &mut slot, &req);
        match v.outcome {
            Outcome::Allow => report.allowed += 1,
            Outcome::Flag => report.flagged += 1,
            Outcome::Block { .. } => {
                report.blocked += 1;
                if !session_blocked && report.blocked_list.len() < LISTED {
                    let rules: Vec<&str> = v.fired.iter().map(|r| r.id()).collect();
                    report
                        .blocked_list
                        .push((o.session, o.template.clone(), rules.join(",")));
                }
                session_blocked = true;
            }
        }
        for rule in v.fired.iter() {
            *report.by_rule.entry(rule.id()).or_insert(0) += 1;
            report.examples.entry(rule.id()).or_insert_with(|| {
                format!("session {:016x}: {} -> {}", o.session, o.template, o.status)
            });
        }
        // A blocked request never reached the upstream: it completes nothing.
        if let (Some(e), false) = (endpoint, matches!(v.outcome, Outcome::Block { .. })) {
            let object = o.ids.filter(|_| model.binds(e));
            slot.record_response(e, object, o.status, o.time_ms, model.auth_window_ms);
        }
    }
    report.blocked_sessions += u64::from(session_blocked);
    report
}

impl Report {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "replayed {} requests in {} sessions",
            self.requests, self.sessions
        );
        let _ = writeln!(
            out,
            "would allow {}, flag {}, block {} (in {} sessions)",
            self.allowed, self.flagged, self.blocked, self.blocked_sessions
        );
        for rule in Rule::ALL {
            if let Some(n) = self.by_rule.get(rule.id()) {
                let example = self.examples.get(rule.id()).map_or("", String::as_str);
                let _ = writeln!(out, "  {:<32} {:>7}   e.g. {example}", rule.id(), n);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowguard_engine::policy::{EndpointPolicy, Policy, Transition, START};

    fn obs(session: u64, t: u64, template: &str, status: u16) -> Observation {
        Observation {
            session,
            time_ms: 1_000_000 + t,
            template: template.into(),
            status,
            ids: None,
            weak: false,
        }
    }

    #[test]
    fn reports_what_the_policy_would_block() {
        let settings = Settings::from_json(b"{}").unwrap();
        let p = Policy {
            version: 5,
            window_s: 10,
            endpoints: vec![
                EndpointPolicy {
                    template: "POST /pay".into(),
                    ..Default::default()
                },
                EndpointPolicy {
                    template: "POST /confirm".into(),
                    prerequisites: vec!["POST /pay".into()],
                    ..Default::default()
                },
            ],
            transitions: vec![
                Transition {
                    from: START.into(),
                    to: "POST /pay".into(),
                    count: 1,
                },
                Transition {
                    from: "POST /pay".into(),
                    to: "POST /confirm".into(),
                    count: 1,
                },
            ],
            ..Default::default()
        };
        let model = Model::compile(&p, &settings).unwrap();
        let mut log = vec![
            obs(1, 0, "POST /pay", 200),
            obs(1, 1, "POST /confirm", 200),
            obs(2, 0, "POST /confirm", 200),
            obs(3, 0, "POST /pay", 402),
            obs(3, 1, "POST /confirm", 200),
            obs(3, 2, "GET /admin", 200),
        ];
        let r = replay(&model, &settings, &mut log);
        assert_eq!(
            (r.requests, r.sessions, r.blocked, r.blocked_sessions),
            (6, 3, 2, 2)
        );
        assert_eq!(r.by_rule.get("order.missing_prerequisite"), Some(&2));
        assert_eq!(r.by_rule.get("inventory.unknown_endpoint"), Some(&1));
        assert!(r.render().contains("would allow"));
        let listed: Vec<u64> = r.blocked_list.iter().map(|b| b.0).collect();
        assert_eq!(listed, [2, 3], "each blocked session once");
    }
}
