//! The learner's behaviour, from sessions played through slots as the filter plays them.

use super::*;
use crate::config::{LearningSettings, Limits, Threshold};
use crate::model::Model;
use crate::policy::{LearnedFrom, Limit, Policy, START};
use crate::slot::{Slot, NO_ENDPOINT};
use proptest::prelude::*;

/// Plays `calls` (template, status) as one session through a slot, like the filter does.
fn play(stats: &mut LearnStats, reg: &mut Registry, fp: u64, calls: &[(&str, u16)]) {
    play_from(stats, reg, fp, None, calls);
}

/// [`play`] for a session whose client address has support sketch bit `address`.
fn play_from(
    stats: &mut LearnStats,
    reg: &mut Registry,
    fp: u64,
    address: Option<u8>,
    calls: &[(&str, u16)],
) {
    let mut slot = Slot::new(fp.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, 0, 0);
    slot.address_bit = address;
    for (n, (t, status)) in calls.iter().enumerate() {
        let id = reg.add(t, 128).unwrap();
        let now = n as u64 * 1000;
        let object = Some((n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let visit = slot.record_request(Some(id), object, now, 10_000);
        stats.observe_request(id, &visit, reg.len());
        let peak = slot.record_response(id, object, *status, now, 300_000);
        stats.observe_response(id, visit.retry, *status, peak);
    }
}

fn compile(stats: &LearnStats, reg: &Registry, s: &LearningSettings, v: u64) -> Policy {
    super::compile(stats, reg, s, &Limits::default(), v)
}

/// Small samples for tests: 22 sessions without a violation show a share of 0.9 at
/// 0.9 confidence; transitions are judged however few sessions arrived.
fn settings() -> LearningSettings {
    LearningSettings {
        min_support: 3,
        prerequisite_ratio: 0.9,
        confidence: 0.9,
        transition_novelty: 1.0,
        ..LearningSettings::default()
    }
}

/// 40 customers from their own addresses pay before they confirm; one attacker's
/// address plays 12 sessions inside the learning window that skip payment, open
/// with confirm and call a hidden endpoint.
fn poisoned() -> (LearnStats, Registry) {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    for i in 0..40u64 {
        let mut calls = vec![("POST /login", 200), ("POST /pay", 200)];
        if i % 2 == 1 {
            calls.insert(1, ("GET /menu", 200)); // two routes into confirm
        }
        calls.push(("POST /confirm", 200));
        play_from(&mut stats, &mut reg, i, Some((i % 32) as u8), &calls);
    }
    for i in 100..112u64 {
        let calls = [("POST /confirm", 200), ("GET /admin/export", 200)];
        play_from(&mut stats, &mut reg, i, Some(7), &calls);
    }
    (stats, reg)
}

#[test]
fn one_address_cannot_teach_an_absence_a_transition_or_an_endpoint() {
    let (stats, reg) = poisoned();
    let trusting = compile(&stats, &reg, &settings(), 1);
    let confirm = trusting.endpoint("POST /confirm").unwrap();
    assert!(
        confirm.prerequisites.is_empty(),
        "without support checks the attacker removes the prerequisite"
    );

    let s = LearningSettings {
        min_addresses: 3,
        min_sessions_per_fact: 3,
        ..settings()
    };
    let p = compile(&stats, &reg, &s, 1);
    let confirm = p.endpoint("POST /confirm").unwrap();
    assert_eq!(confirm.prerequisites, ["POST /login", "POST /pay"]);
    assert!(!confirm.entry, "only the attacker opened with confirm");
    assert!(
        p.endpoint("GET /admin/export").is_none(),
        "one address's endpoint"
    );
    assert!(
        p.transitions.iter().all(|t| t.to != "GET /admin/export"),
        "no transition into an endpoint left out"
    );
    p.validate().expect("the compiled policy is consistent");
    let m = Model::compile(&p, &crate::config::Settings::from_json(b"{}").unwrap()).unwrap();
    let (login, pay, confirm) = (
        m.endpoint("POST /login").unwrap(),
        m.endpoint("POST /pay").unwrap(),
        m.endpoint("POST /confirm").unwrap(),
    );
    assert!(m.knows_transition(login, pay) && m.knows_transition(pay, confirm));
    assert!(!m.knows_transition(NO_ENDPOINT, confirm));
}

#[test]
fn absences_with_support_are_still_learned() {
    let (mut stats, mut reg) = poisoned();
    // Five more addresses' customers really do confirm without paying (a free tier).
    for i in 200..210u64 {
        let calls = [("POST /login", 200), ("POST /confirm", 200)];
        play_from(&mut stats, &mut reg, i, Some((i % 5) as u8 + 20), &calls);
    }
    let s = LearningSettings {
        min_addresses: 3,
        min_sessions_per_fact: 3,
        ..settings()
    };
    let p = compile(&stats, &reg, &s, 1);
    assert_eq!(
        p.endpoint("POST /confirm").unwrap().prerequisites,
        ["POST /login"]
    );
}

#[test]
fn unlearned_sessions_are_counted_apart() {
    let mut stats = LearnStats::default();
    let mut slot = Slot::new(42, 0, 0);
    slot.unlearned = true;
    let visit = slot.record_request(Some(0), None, 0, 10_000);
    stats.observe_request(0, &visit, 1);
    assert_eq!(
        (stats.sessions, stats.requests, stats.unlearned_sessions),
        (0, 0, 1)
    );
    assert!(stats.reached.is_empty());
}

#[test]
fn learns_that_confirm_needs_a_successful_payment() {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    for i in 0..60u64 {
        let mut calls = vec![("POST /login", 200), ("GET /menu", 200)];
        if i % 2 == 0 {
            calls.push(("GET /cart", 200)); // an optional step: another route
        }
        if i % 3 == 0 {
            calls.push(("POST /orders/{id}/pay", 402));
        }
        calls.extend([
            ("POST /orders/{id}/pay", 200),
            ("POST /orders/{id}/confirm", 200),
        ]);
        if i % 4 == 0 {
            calls = vec![("POST /login", 200), ("GET /menu", 200)];
        }
        play(&mut stats, &mut reg, i + 1, &calls);
    }
    let p = compile(&stats, &reg, &settings(), 1);
    p.validate().unwrap();
    let confirm = p
        .endpoints
        .iter()
        .find(|e| e.template == "POST /orders/{id}/confirm")
        .unwrap();
    assert_eq!(
        confirm.prerequisites,
        ["POST /login", "GET /menu", "POST /orders/{id}/pay"]
    );
    let login = p
        .endpoints
        .iter()
        .find(|e| e.template == "POST /login")
        .unwrap();
    assert!(login.entry && login.prerequisites.is_empty());
    assert_eq!(
        p.learned_from,
        LearnedFrom {
            sessions: 60,
            requests: stats.requests
        }
    );
    let m = Model::compile(&p, &crate::config::Settings::from_json(b"{}").unwrap()).unwrap();
    let pay = m.endpoint("POST /orders/{id}/pay").unwrap();
    assert!(
        m.knows_transition(pay, pay),
        "a failed payment retried is a learned transition"
    );
}

#[test]
fn one_scripted_route_teaches_no_order() {
    // A test suite replayed 300 times: register, login, publish, read tags.
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    for i in 0..300u64 {
        let calls = [
            ("POST /users", 201),
            ("POST /users/login", 200),
            ("POST /articles", 201),
            ("GET /tags", 200),
        ];
        play(&mut stats, &mut reg, i + 1, &calls);
    }
    let p = compile(&stats, &reg, &LearningSettings::default(), 1);
    for e in &p.endpoints {
        assert!(
            e.prerequisites.is_empty(),
            "{}: {:?}",
            e.template,
            e.prerequisites
        );
    }
    let tags = p.endpoint("GET /tags").unwrap().evidence.clone().unwrap();
    assert_eq!(tags.routes, 1);
    assert_eq!(
        tags.describe(),
        "no evidence of order: 1 route seen, 2 needed"
    );
}

#[test]
fn a_small_sample_asserts_no_prerequisite_a_large_one_does() {
    // 70 % of sessions fetch a book before their profile: no rule at any size. Every
    // session logs in first: a rule once the sample shows it at the default 0.98 and
    // 0.99 confidence (228 sessions), none from 21.
    let learn = |n: u64| {
        let mut stats = LearnStats::default();
        let mut reg = Registry::default();
        for i in 0..n {
            let mut calls = vec![("POST /login", 200)];
            if i % 10 < 7 {
                calls.push(("GET /books/{id}", 200));
            }
            calls.push(("GET /users/{id}", 200));
            play(&mut stats, &mut reg, i + 1, &calls);
        }
        compile(&stats, &reg, &LearningSettings::default(), 1)
    };
    let small = learn(21);
    let user = small.endpoint("GET /users/{id}").unwrap();
    assert!(user.prerequisites.is_empty());
    assert_eq!(
        user.evidence.as_ref().unwrap().describe(),
        "order not enforced yet: 21 of 228 sessions"
    );
    let large = learn(228);
    let user = large.endpoint("GET /users/{id}").unwrap();
    assert_eq!(user.prerequisites, ["POST /login"]);
    assert_eq!(user.evidence.as_ref().unwrap().note, None);
    assert_eq!(
        user.evidence.as_ref().unwrap().describe(),
        "order evidence: 228 sessions (needs 228), 2 routes (needs 2)"
    );
}

#[test]
fn relearning_adds_rules_once_evidence_arrives_and_keeps_ids() {
    let shop = |stats: &mut LearnStats, reg: &mut Registry, n: u64| {
        for i in 0..n {
            let mut calls = vec![("POST /login", 200)];
            if i % 2 == 0 {
                calls.push(("GET /menu", 200));
            }
            calls.extend([("POST /pay", 200), ("POST /confirm", 200)]);
            play(stats, reg, 1000 + i, &calls);
        }
    };
    let s = LearningSettings::default();
    let (mut stats, mut reg) = (LearnStats::default(), Registry::default());
    shop(&mut stats, &mut reg, 60);
    let first = compile(&stats, &reg, &s, 1);
    assert!(first.endpoints.iter().all(|e| e.prerequisites.is_empty()));
    assert!(!relearn_due(first.learned_from.sessions, &stats, &s));

    // The model's own ids: a registry in the policy's endpoint order.
    let mut model_reg = Registry::default();
    for e in &first.endpoints {
        model_reg.add(&e.template, 128);
    }
    let mut since = stats.remap(|id| model_reg.get(reg.templates().get(usize::from(id))?));
    shop(&mut since, &mut model_reg, 240);
    assert_eq!(model_reg.len(), first.endpoints.len(), "no new endpoint");
    assert!(relearn_due(first.learned_from.sessions, &since, &s));
    let next = relearn(&first, &since, &s, &Limits::default());
    assert_eq!(
        (next.version, next.layout(), next.learned_from.sessions),
        (2, 1, 300)
    );
    let templates = |p: &Policy| {
        p.endpoints
            .iter()
            .map(|e| e.template.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(templates(&next), templates(&first));
    assert_eq!(
        next.endpoint("POST /confirm").unwrap().prerequisites,
        ["POST /login", "POST /pay"]
    );
    next.validate().unwrap();
    // Relearning never loosens: a sample without the rule keeps it.
    let mut none = LearnStats::default();
    for i in 0..400 {
        play(
            &mut none,
            &mut model_reg,
            5000 + i,
            &[("POST /confirm", 200)],
        );
    }
    let again = relearn(&next, &none, &s, &Limits::default());
    assert_eq!(
        again.endpoint("POST /confirm").unwrap().prerequisites,
        ["POST /login", "POST /pay"]
    );
    assert_eq!(again.layout(), 1);
}

#[test]
fn a_step_some_sessions_skip_is_no_prerequisite() {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    for i in 0..10u64 {
        let calls: &[(&str, u16)] = if i % 2 == 0 {
            &[("GET /menu", 200), ("POST /pay", 200)]
        } else {
            &[("POST /pay", 200)]
        };
        play(&mut stats, &mut reg, i + 1, calls);
    }
    let p = compile(&stats, &reg, &settings(), 1);
    assert!(p.endpoints.iter().all(|e| e.prerequisites.is_empty()));
    // Too little support: nothing is required.
    let strict = LearningSettings {
        min_support: 50,
        ..settings()
    };
    assert!(compile(&stats, &reg, &strict, 1)
        .endpoints
        .iter()
        .all(|e| e.prerequisites.is_empty()));
}

#[test]
fn high_cardinality_segments_merge_into_one_endpoint() {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    for i in 0..40u64 {
        let user = format!(
            "GET /api/users/user{}x/profile",
            (b'a' + (i % 20) as u8) as char
        );
        let mut calls = vec![("POST /login", 200), (user.as_str(), 200)];
        if i % 2 == 0 {
            calls.insert(1, ("GET /menu", 200));
        }
        play(&mut stats, &mut reg, i + 1, &calls);
    }
    let p = compile(
        &stats,
        &reg,
        &LearningSettings {
            variable_segment_min: 16,
            ..settings()
        },
        1,
    );
    assert_eq!(p.variable_prefixes, ["GET /api/users"]);
    let templates: Vec<_> = p.endpoints.iter().map(|e| e.template.as_str()).collect();
    assert_eq!(
        templates,
        ["POST /login", "GET /menu", "GET /api/users/{id}/profile"]
    );
    assert_eq!(p.endpoints[2].prerequisites, ["POST /login"]);
    assert_eq!(p.endpoints[2].sessions, 40);
}

#[test]
fn merge_adds_and_codecs_round_trip() {
    let mut a = LearnStats::default();
    let mut reg = Registry::default();
    play(&mut a, &mut reg, 1, &[("GET /a", 200), ("GET /b", 200)]);
    let mut sum = a.clone();
    sum.merge(&a);
    assert_eq!(sum.requests, 4);
    assert_eq!(sum.transitions.get(&(0, 1)), Some(&2));
    assert_eq!(LearnStats::decode(&sum.encode()).unwrap(), sum);
    assert!(LearnStats::decode(&[0xff; 3]).is_err());
    assert_eq!(Registry::decode(&reg.encode()), reg);
    assert!(reg.add("GET /c", 2).is_none(), "registry is bounded");
    assert!(reg.add("GET /a", 2).is_some());
}

#[test]
fn rates_and_distinct_ids_are_learned_with_their_percentiles() {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    for i in 0..100u64 {
        // Most sessions look at one or two orders; a few at five.
        let views = if i % 20 == 0 { 5 } else { 1 + i % 2 };
        let calls: Vec<(&str, u16)> = std::iter::once(("POST /login", 200))
            .chain((0..views).map(|_| ("GET /orders/{id}", 200)))
            .chain(if i % 10 == 0 {
                vec![("POST /login", 401)]
            } else {
                vec![]
            })
            .collect();
        play(&mut stats, &mut reg, i + 1, &calls);
    }
    let p = compile(&stats, &reg, &settings(), 1);
    let orders = p
        .endpoints
        .iter()
        .find(|e| e.template == "GET /orders/{id}")
        .unwrap();
    let rate = orders.rate.unwrap();
    assert_eq!((rate.p50, rate.p90, rate.p99), (2, 2, 5), "{rate:?}");
    assert_eq!(rate.limit, 20, "the floor wins over 5 x 3");
    let ids = orders.distinct_ids.unwrap();
    assert!(ids.p99 >= 4 && ids.limit >= 15, "{ids:?}");
    let login = p
        .endpoints
        .iter()
        .find(|e| e.template == "POST /login")
        .unwrap();
    assert!(
        login.distinct_ids.is_none(),
        "no identifiers in the template"
    );
    assert_eq!(login.auth_failures, 10);
    let auth = p.auth_failures.unwrap();
    assert_eq!((auth.p50, auth.p90, auth.p99, auth.limit), (0, 1, 1, 10));
    assert!(p.session_rate.unwrap().p99 >= 5);
    p.validate().unwrap();
}

#[test]
fn percentiles_of_an_at_least_distribution() {
    let t = Threshold {
        margin: 2.0,
        floor: 1,
        limit: None,
    };
    // 100 units: everyone reached 1, half reached 2, 5 reached 3, 1 reached 10.
    let at = |k: u32| match k {
        0 | 1 => 100,
        2 => 50,
        3 => 5,
        4..=10 => 1,
        _ => 0,
    };
    // 100 units cannot show the 99th percentile at 0.99 (459 can): the limit stands on
    // the largest peak seen, not on the sample p99.
    assert_eq!(
        limit_from(at, 100, 255, &t, 0.99),
        Limit {
            p50: 1,
            p90: 2,
            p99: 3,
            limit: 20,
            bound: 10,
            units: 100
        }
    );
    // At 0.5 confidence 100 units show it: an order statistic just above the sample p99.
    let shown = limit_from(at, 100, 255, &t, 0.5);
    assert!((3..=10).contains(&shown.bound), "{shown:?}");
    assert_eq!(shown.limit, shown.bound * 2);
    assert_eq!(
        limit_from(|_| 0, 0, 255, &t, 0.99),
        Limit {
            p50: 0,
            p90: 0,
            p99: 0,
            limit: 1,
            bound: 0,
            units: 0
        }
    );
}

#[test]
fn the_fleet_learner_equals_the_filters() {
    // The filter's path: request phase, then response phase, per exchange.
    let mut filter_stats = LearnStats::default();
    let mut filter_reg = Registry::default();
    let mut log = Vec::new();
    for i in 0..30u64 {
        let mut slot = Slot::new(i + 1, 1000, 0);
        let mut calls = vec![
            ("POST /login", 200u16),
            ("GET /menu", 200),
            ("POST /pay", 402),
            ("POST /pay", 200),
            ("POST /confirm", 200),
        ];
        if i % 5 == 0 {
            calls.insert(0, ("POST /login", 401));
        }
        for (n, (t, status)) in calls.into_iter().enumerate() {
            let now = 1_000_000 + n as u64 * 700;
            let id = filter_reg.learn(t, 128, 16).unwrap();
            let visit = slot.record_request(Some(id), None, now, 10_000);
            let known = settings().absences_to_record(filter_reg.len());
            assert_eq!(known, 0, "without thresholds no absence is recorded");
            filter_stats.observe_request(id, &visit, known); // as the filter
            let peak = slot.record_response(id, None, status, now, 300_000);
            filter_stats.observe_response(id, visit.retry, status, peak);
            log.push(Observation {
                session: i + 1,
                time_ms: now,
                template: t.into(),
                status,
                ids: None,
                weak: false,
            });
        }
    }
    log.reverse(); // stored order does not matter
    let (fleet_stats, fleet_reg) = learn_from(&mut log, &settings(), &Limits::default());
    assert_eq!(fleet_stats, filter_stats);
    assert_eq!(fleet_reg, filter_reg);
    assert_eq!(
        compile(&fleet_stats, &fleet_reg, &settings(), 2),
        compile(&filter_stats, &filter_reg, &settings(), 2)
    );
}

proptest! {
        #[test]
        fn stats_decode_never_panics
(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = LearnStats::decode(&bytes);
            let _ = Registry::decode(&bytes);
        }

        #[test]
        fn compiled_policies_always_validate(seq in proptest::collection::vec((0u8..12, prop_oneof![Just(200u16), Just(402u16)]), 0..60)) {
            let mut stats = LearnStats::default();
            let mut reg = Registry::default();
            let names: Vec<String> = (0..12).map(|i| format!("GET /e{}/x", i % 7)).collect();
            for (n, chunk) in seq.chunks(5).enumerate() {
                let calls: Vec<(&str, u16)> = chunk.iter().map(|(e, s)| (names[*e as usize].as_str(), *s)).collect();
                play(&mut stats, &mut reg, n as u64 + 1, &calls);
            }
            let p = compile(&stats, &reg, &LearningSettings { min_support: 1, variable_segment_min: 3, ..settings() }, 1);
            prop_assert!(p.validate().is_ok());
        }
    }

/// Plays `calls` (method and concrete path, status) as one session, each path normalised
/// and its identifier values hashed as the filter does.
fn play_paths(stats: &mut LearnStats, reg: &mut Registry, fp: u64, calls: &[(&str, u16)]) {
    let normaliser = crate::endpoint::Normaliser::new(Vec::new(), Default::default());
    let mut slot = Slot::new(fp.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, 0, 0);
    let mut template = String::new();
    for (n, (call, status)) in calls.iter().enumerate() {
        let (method, path) = call.split_once(' ').unwrap();
        let object = normaliser.normalise(method, path, &mut template);
        let id = reg.add(&template, 128).unwrap();
        let now = n as u64 * 1000;
        let visit = slot.record_request(Some(id), object, now, 10_000);
        stats.observe_request(id, &visit, reg.len());
        let peak = slot.record_response(id, object, *status, now, 300_000);
        stats.observe_response(id, visit.retry, *status, peak);
    }
}

/// Customers with one to three orders, paid and confirmed in varying interleavings;
/// `unpaid_confirms` of every ten sessions also confirm an order paid elsewhere.
fn orders(unpaid_confirms: u64) -> (LearnStats, Registry) {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    for i in 0..60u64 {
        let a = format!("/orders/{}", 1000 + 3 * i);
        let b = format!("/orders/{}", 1001 + 3 * i);
        let mut calls = vec![("POST /login".to_string(), 200)];
        if i % 3 == 0 {
            calls.push(("GET /menu".into(), 200)); // two routes in
        }
        calls.push((format!("POST {a}/pay"), 200));
        if i % 2 == 0 {
            calls.push((format!("POST {b}/pay"), 200));
            calls.push((format!("POST {a}/confirm"), 200));
            calls.push((format!("POST {b}/confirm"), 200));
        } else {
            calls.push((format!("POST {a}/confirm"), 200));
        }
        if i % 10 < unpaid_confirms {
            calls.push((format!("POST /orders/{}/confirm", 1002 + 3 * i), 200));
        }
        let calls: Vec<(&str, u16)> = calls.iter().map(|(c, s)| (c.as_str(), *s)).collect();
        play_paths(&mut stats, &mut reg, i, &calls);
    }
    (stats, reg)
}

#[test]
fn a_step_on_the_same_object_is_learned_as_a_bound_prerequisite() {
    let (stats, reg) = orders(0);
    let p = compile(&stats, &reg, &settings(), 1);
    let confirm = p.endpoint("POST /orders/{id}/confirm").unwrap();
    assert_eq!(confirm.bound_prerequisites, ["POST /orders/{id}/pay"]);
    assert_eq!(
        confirm.prerequisites,
        ["POST /login"],
        "pay is bound, not session-wide"
    );
    assert!(p
        .endpoint("POST /orders/{id}/pay")
        .unwrap()
        .bound_prerequisites
        .is_empty());
    p.validate().unwrap();

    // Sessions that confirm orders they did not pay in this session are evidence against.
    let (stats, reg) = orders(3);
    let p = compile(&stats, &reg, &settings(), 1);
    let confirm = p.endpoint("POST /orders/{id}/confirm").unwrap();
    assert!(confirm.bound_prerequisites.is_empty());
}

/// What `m` does with each call of `calls` (method and concrete path, each answered 200),
/// played as one session.
fn outcomes(
    m: &Model,
    s: &crate::config::Settings,
    calls: &[&str],
) -> Vec<crate::verdict::Outcome> {
    let mut slot = Slot::new(9, 0, 1);
    let mut template = String::new();
    calls
        .iter()
        .map(|call| {
            let (method, path) = call.split_once(' ').unwrap();
            let id = m.normaliser.normalise(method, path, &mut template);
            let endpoint = m.endpoint(&template);
            let req = crate::verdict::Request {
                endpoint,
                id,
                now_ms: 1000,
                ..Default::default()
            };
            let (_, v) = crate::verdict::evaluate(Some(m), s, &mut slot, &req);
            if let Some(e) = endpoint {
                let object = id.filter(|_| m.binds(e));
                slot.record_response(e, object, 200, 1000, 300_000);
            }
            v.outcome
        })
        .collect()
}

#[test]
fn paying_once_does_not_confirm_every_order() {
    let (stats, reg) = orders(0);
    let p = compile(&stats, &reg, &settings(), 1);
    let s = crate::config::Settings::from_json(b"{}").unwrap();
    let m = Model::compile(&p, &s).unwrap();
    use crate::verdict::Outcome::{Allow, Block};
    let several = outcomes(
        &m,
        &s,
        &[
            "POST /login",
            "POST /orders/7/pay",
            "POST /orders/8/pay",
            "POST /orders/8/confirm",
            "POST /orders/7/confirm",
        ],
    );
    assert!(several.iter().all(|o| *o == Allow), "{several:?}");
    let fraud = outcomes(
        &m,
        &s,
        &[
            "POST /login",
            "POST /orders/7/pay",
            "POST /orders/7/confirm",
            "POST /orders/9/confirm",
        ],
    );
    assert_eq!(fraud.last(), Some(&Block { status: 403 }));
}

/// One fixed script, 300 times, as an API's test suite would play it: one route into
/// every step. Its order teaches nothing, but for a payment that is declined now and
/// then and retried until it succeeds before the order is confirmed: a gate (for a step
/// that changes state; the receipt read after it is not gated). Other
/// valid paths pass; confirming without paying is blocked.
#[test]
fn a_fixed_script_teaches_only_the_step_it_retried_until_it_succeeded() {
    let learn = |declines: bool, rejected_address: bool| {
        let (mut stats, mut reg) = (LearnStats::default(), Registry::default());
        for i in 0..300u64 {
            let order = format!("/orders/{}", 1000 + i);
            let mut calls = vec![
                ("POST /users".to_string(), 201),
                ("POST /users/login".into(), 200),
                ("GET /menu".into(), 200),
                ("POST /orders".into(), 201),
                (format!("GET {order}"), 200),
            ];
            // A suite's negative case, every run: an address refused, then a good one.
            if rejected_address {
                calls.push((format!("PUT {order}/address"), 422));
            }
            calls.push((format!("PUT {order}/address"), 200));
            if declines && i % 10 == 0 {
                calls.push((format!("POST {order}/pay"), 402));
            }
            calls.push((format!("POST {order}/pay"), 200));
            calls.push((format!("POST {order}/confirm"), 200));
            calls.push((format!("GET {order}/receipt"), 200));
            calls.push(("GET /tags".into(), 200));
            let calls: Vec<(&str, u16)> = calls.iter().map(|(c, s)| (c.as_str(), *s)).collect();
            play_paths(&mut stats, &mut reg, i, &calls);
        }
        compile(&stats, &reg, &LearningSettings::default(), 1)
    };
    // Without a decline the script is all habit: no rule at all.
    assert!(learn(false, false).order_rules().is_empty());
    // A step that fails first in every run is the script's, not a client's gate.
    assert_eq!(
        learn(true, true).order_rules(),
        ["POST /orders/{id}/confirm: same object: POST /orders/{id}/pay"]
    );

    let p = learn(true, false);
    assert_eq!(
        p.order_rules(),
        ["POST /orders/{id}/confirm: same object: POST /orders/{id}/pay"]
    );
    let confirm = p.endpoint("POST /orders/{id}/confirm").unwrap();
    assert_eq!(
        confirm.evidence.as_ref().unwrap().describe(),
        "bound to the object on 1 route: POST /orders/{id}/pay retried until it succeeded"
    );

    let s = crate::config::Settings::from_json(b"{}").unwrap();
    let m = Model::compile(&p, &s).unwrap();
    use crate::verdict::Outcome::Block;
    let other_paths: [&[&str]; 4] = [
        // An anonymous reader.
        &["GET /menu", "GET /tags"],
        // A returning customer: no registration, no address edit, a look at the receipt
        // before paying (a read is never gated).
        &[
            "POST /users/login",
            "POST /orders",
            "GET /orders/5/receipt",
            "POST /orders/5/pay",
            "POST /orders/5/confirm",
        ],
        // Independent steps in another order, two orders.
        &[
            "GET /tags",
            "POST /users/login",
            "POST /orders",
            "POST /orders/6/pay",
            "PUT /orders/6/address",
            "POST /orders",
            "POST /orders/7/pay",
            "POST /orders/7/confirm",
            "GET /orders/6",
            "POST /orders/6/confirm",
            "GET /menu",
        ],
        // Registration only.
        &["POST /users", "GET /menu"],
    ];
    for path in other_paths {
        let o = outcomes(&m, &s, path);
        assert!(
            !o.iter().any(|o| matches!(o, Block { .. })),
            "{path:?}: {o:?}"
        );
    }
    let skip = outcomes(
        &m,
        &s,
        &[
            "POST /users/login",
            "POST /orders",
            "POST /orders/8/confirm",
        ],
    );
    assert_eq!(skip.last(), Some(&Block { status: 403 }), "{skip:?}");
    let pay_once = outcomes(
        &m,
        &s,
        &[
            "POST /users/login",
            "POST /orders/8/pay",
            "POST /orders/8/confirm",
            "POST /orders/9/confirm",
        ],
    );
    assert_eq!(
        pay_once.last(),
        Some(&Block { status: 403 }),
        "{pay_once:?}"
    );
}

#[test]
fn weak_sessions_teach_the_inventory_transitions_and_address_rates_but_no_order() {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    // One shared address logs in for everyone (weak); the flows it hands over to are strong.
    let mut weak = Slot::new(77, 0, 0);
    let login = reg.add("POST /login", 128).unwrap();
    for n in 0..30u64 {
        let visit = weak.record_request(Some(login), None, n * 1000, 10_000);
        stats.observe_inventory(login, &visit, 0);
    }
    for i in 0..30u64 {
        play(
            &mut stats,
            &mut reg,
            i,
            &[("GET /menu", 200), ("POST /pay", 200)],
        );
    }
    assert_eq!((stats.sessions, stats.weak_sessions), (30, 1));
    let p = compile(&stats, &reg, &settings(), 1);
    assert!(
        p.endpoint("POST /login").is_some(),
        "still in the inventory"
    );
    let login = p.endpoint("POST /login").unwrap();
    assert_eq!(login.sessions, 0, "no session-wide fact");
    assert!(login.prerequisites.is_empty() && login.rate.is_none());
    // Its transitions are known (a visitor's first steps are not "unknown"), and the
    // address's peak (one login a second: 10 per 10 s window) is its anonymous rate.
    assert!(p
        .transitions
        .iter()
        .any(|t| t.from == START && t.to == "POST /login"));
    let rate = login.address_rate.expect("a per-address limit");
    assert_eq!((rate.units, rate.p99, rate.bound), (1, 10, 10), "{rate:?}");
    assert_eq!(rate.limit, 30, "3 x the bound");
}

#[test]
fn an_address_peak_counts_per_identified_session_it_carries() {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    let login = reg.add("POST /login", 128).unwrap();
    // A NAT's address: 40 logins in one window while it carries 20 customers, and a
    // lone customer's address: 2 logins.
    let mut nat = Slot::new(1, 0, 0);
    for n in 0..40u64 {
        let visit = nat.record_request(Some(login), None, n * 100, 10_000);
        stats.observe_inventory(login, &visit, 20);
    }
    let mut lone = Slot::new(2, 0, 0);
    for n in 0..2u64 {
        let visit = lone.record_request(Some(login), None, n * 100, 10_000);
        stats.observe_inventory(login, &visit, 0);
    }
    assert_eq!(stats.address_rate_at_least.get(&(login, 1)), Some(&2));
    assert_eq!(stats.address_rate_at_least.get(&(login, 2)), Some(&2));
    assert_eq!(
        stats.address_rate_at_least.get(&(login, 3)),
        None,
        "40 / 20 is 2"
    );
}

#[test]
fn unknown_ways_in_are_judged_only_where_the_sample_showed_how_sessions_arrive() {
    let mut stats = LearnStats::default();
    let mut reg = Registry::default();
    // 300 runs of one script, and 300 varied sessions that reach /pay from the menu or
    // the cart and /cart from the menu or a search (one search seen once).
    for i in 0..300u64 {
        play(
            &mut stats,
            &mut reg,
            i,
            &[("POST /login", 200), ("GET /menu", 200), ("POST /pay", 200)],
        );
    }
    for i in 300..600u64 {
        let mut calls = vec![("POST /login", 200), ("GET /menu", 200)];
        if i % 2 == 0 {
            calls.push(("POST /cart", 200));
        }
        calls.push(("POST /pay", 200));
        play(&mut stats, &mut reg, i, &calls);
    }
    play(
        &mut stats,
        &mut reg,
        600,
        &[("GET /search", 200), ("POST /cart", 200)],
    );
    let s = LearningSettings {
        transition_novelty: 0.01,
        ..settings()
    };
    let p = compile(&stats, &reg, &s, 1);
    let open = |t: &str| p.endpoint(t).unwrap().open_transitions;
    assert!(!open("POST /pay"), "two ways in, each seen often: judged");
    assert!(
        open("POST /cart"),
        "a way in seen once among 151: new ways are not rare"
    );
    assert!(open("POST /login"), "one route only: a script's habit");
    let m = Model::compile(&p, &crate::config::Settings::from_json(b"{}").unwrap()).unwrap();
    let (login, pay, cart) = (
        m.endpoint("POST /login").unwrap(),
        m.endpoint("POST /pay").unwrap(),
        m.endpoint("POST /cart").unwrap(),
    );
    assert!(!m.knows_transition(login, pay), "judged: unknown");
    assert!(m.knows_transition(login, cart), "open: not flagged");
}
