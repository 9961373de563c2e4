//! Engine micro-benchmarks: what one request costs flowguard's logic, natively, without
//! any host call. Targets: the per-request verdict under 1 µs; a slot of at most 128 bytes.
#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // benchmark setup, like a test
use criterion::{criterion_group, criterion_main, Criterion};
use flowguard_engine::config::Settings;
use flowguard_engine::endpoint::Normaliser;
use flowguard_engine::learn::LearnStats;
use flowguard_engine::model::Model;
use flowguard_engine::policy::{EndpointPolicy, Limit, Policy, Transition, START};
use flowguard_engine::slot::{Slot, SLOT_SIZE};
use flowguard_engine::verdict::{evaluate, Request};
use std::hint::black_box;

fn policy() -> Policy {
    let limit = Some(Limit {
        p50: 1,
        p90: 2,
        p99: 3,
        limit: 100_000,
        ..Limit::default()
    });
    let templates: Vec<String> = (0..60)
        .map(|i| format!("GET /api/catalog/s{i}/items/{{id}}"))
        .collect();
    let mut transitions: Vec<Transition> = templates
        .iter()
        .map(|t| Transition {
            from: START.into(),
            to: t.clone(),
            count: 1,
        })
        .collect();
    for a in &templates {
        for b in &templates {
            transitions.push(Transition {
                from: a.clone(),
                to: b.clone(),
                count: 1,
            });
        }
    }
    Policy {
        version: 1,
        window_s: 10,
        endpoints: templates
            .iter()
            .enumerate()
            .map(|(i, t)| EndpointPolicy {
                template: t.clone(),
                entry: true,
                rate: limit,
                distinct_ids: limit,
                prerequisites: if i > 0 {
                    vec![templates[0].clone()]
                } else {
                    vec![]
                },
                ..Default::default()
            })
            .collect(),
        transitions,
        session_rate: limit,
        ..Default::default()
    }
}

fn benches(c: &mut Criterion) {
    let settings = Settings::from_json(b"{}").unwrap();
    let model = Model::compile(&policy(), &settings).unwrap();
    eprintln!("slot: {SLOT_SIZE} bytes; shared data at the default capacity 16384: {} KiB of slot values (+ keys `fg/s/<n>`)", 16384 * SLOT_SIZE / 1024);

    let normaliser = Normaliser::default();
    let mut out = String::with_capacity(128);
    c.bench_function("normalise GET /api/catalog/s17/items/4242?x=1", |b| {
        b.iter(|| {
            normaliser.normalise(
                black_box("GET"),
                black_box("/api/catalog/s17/items/4242?x=1"),
                &mut out,
            )
        })
    });

    let mut slot = Slot::new(42, 1_700_000_000, 1);
    slot.record_request(Some(0), None, 1_700_000_000_000, 10_000);
    slot.record_response(0, None, 200, 1_700_000_000_000, 300_000);
    let bytes = slot.encode();
    c.bench_function("slot encode", |b| b.iter(|| black_box(&slot).encode()));
    c.bench_function("slot decode", |b| {
        b.iter(|| Slot::decode(black_box(&bytes)))
    });

    let mut t = 1_700_000_000_100u64;
    c.bench_function("verdict (60-endpoint model, record + decide)", |b| {
        b.iter(|| {
            t += 7;
            let req = Request {
                endpoint: Some((t % 60) as u16),
                id: Some(t),
                now_ms: t,
                ..Default::default()
            };
            let mut s = slot;
            black_box(evaluate(Some(&model), &settings, &mut s, &req))
        })
    });
    c.bench_function("endpoint lookup (template -> id)", |b| {
        b.iter(|| model.endpoint(black_box("GET /api/catalog/s17/items/{id}")))
    });

    // The default settings record no absences; support thresholds (`min_addresses` > 1,
    // against poisoning) record each first visit's absent endpoints too.
    let hardened = Settings::from_json(br#"{"learning":{"min_addresses":3}}"#).unwrap();
    for (name, learning) in [
        ("learner update (request + response)", &settings.learning),
        (
            "learner update, absences recorded (min_addresses 3)",
            &hardened.learning,
        ),
    ] {
        let known = learning.absences_to_record(60);
        let mut stats = LearnStats::default();
        c.bench_function(name, |b| {
            b.iter(|| {
                t += 3;
                let mut s = slot;
                let e = (t % 60) as u16;
                let visit = s.record_request(Some(e), Some(t), t, 10_000);
                stats.observe_request(e, &visit, known);
                let peak = s.record_response(e, None, 200, t, 300_000);
                stats.observe_response(e, visit.retry, 200, peak);
            })
        });
    }
}

criterion_group!(engine, benches);
criterion_main!(engine);
