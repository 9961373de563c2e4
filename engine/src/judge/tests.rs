//! The request path against an in-memory host: the mode table, races, mid-flow joins and
//! the memory bound, as the filter runs them.

use super::*;
use crate::config::Mode;
use crate::policy::Policy;
use crate::rule::Rule;
use crate::store::MemoryHost;

const POLICY: &str = r#"{"version":1,"endpoints":[
    {"template":"POST /pay","entry":true},
    {"template":"POST /confirm","prerequisites":["POST /pay"]}],
  "transitions":[{"from":"^","to":"POST /pay","count":9},
    {"from":"POST /pay","to":"POST /confirm","count":9}]}"#;
const PAY: EndpointId = 0;
const CONFIRM: EndpointId = 1;

fn memory(address: Option<&str>, lose_writes: usize) -> MemoryHost {
    let mut host = MemoryHost::default();
    host.address = address.map(str::to_owned);
    host.lose_writes = lose_writes;
    host
}

fn settings(json: &str) -> Settings {
    Settings::from_json(json.as_bytes()).unwrap()
}

fn model(s: &Settings) -> Model {
    Model::compile(&Policy::from_json(POLICY.as_bytes()).unwrap(), s).unwrap()
}

fn judge<'a>(s: &'a Settings, m: Option<&'a Model>) -> Judge<'a> {
    Judge {
        settings: s,
        model: m,
        layout: m.map_or(0, |m| u32::try_from(m.layout).unwrap()),
        registry_map: &[],
        started: 1_000,
        relearns: false,
    }
}

fn request(endpoint: EndpointId, now: u32) -> Request {
    Request {
        endpoint: Some(endpoint),
        now_ms: u64::from(now) * 1000,
        ..Request::default()
    }
}

/// Judges one request and, like the filter's response phase, records a 200 answer.
fn call(j: &Judge, host: &mut MemoryHost, fp: u64, endpoint: EndpointId, now: u32) -> Judged {
    let judged = j
        .request(host, &mut request(endpoint, now), fp, None, now)
        .unwrap()
        .expect("written");
    let key = judged.located.key;
    store::update(host, key.as_str(), |bytes| {
        let mut slot = Slot::decode(bytes?).ok()?;
        slot.record_response(endpoint, None, 200, u64::from(now) * 1000, 300_000);
        Some(slot.encode().to_vec())
    })
    .unwrap();
    judged
}

#[test]
fn the_mode_table_on_a_skipped_step() {
    for (mode, with_model, expected) in [
        ("learn", true, Decision::Pass),
        ("monitor", false, Decision::Session),
        ("enforce", false, Decision::Session),
        ("monitor", true, Decision::Annotate),
        (
            "enforce",
            true,
            Decision::Reply {
                status: 403,
                retry_after_s: 0,
            },
        ),
    ] {
        let s = settings(&format!(r#"{{"mode":"{mode}"}}"#));
        let m = model(&s);
        let j = judge(&s, with_model.then_some(&m));
        let mut host = MemoryHost::default();
        let judged = call(&j, &mut host, 7, CONFIRM, 2_000);
        assert_eq!(judged.decision, expected, "{mode}, model: {with_model}");
        if with_model {
            assert!(judged.verdict.fired.contains(Rule::MissingPrerequisite));
        }
    }
}

#[test]
fn a_session_keeps_its_steps_across_requests() {
    let s = settings(r#"{"mode":"enforce"}"#);
    assert_eq!(s.mode, Mode::Enforce);
    let m = model(&s);
    let j = judge(&s, Some(&m));
    let mut host = MemoryHost::default();
    assert_eq!(
        call(&j, &mut host, 7, PAY, 2_000).decision,
        Decision::Annotate
    );
    let confirm = call(&j, &mut host, 7, CONFIRM, 2_001);
    assert_eq!(confirm.verdict.outcome, Outcome::Allow);
    assert_eq!(confirm.located.placement, Placement::Own);
    // Another session has paid nothing.
    assert!(matches!(
        call(&j, &mut host, 8, CONFIRM, 2_002).decision,
        Decision::Reply { status: 403, .. }
    ));
}

#[test]
fn a_lost_race_is_judged_again_and_every_lost_race_writes_nothing() {
    let s = settings(r#"{"mode":"enforce"}"#);
    let m = model(&s);
    let j = judge(&s, Some(&m));
    let mut host = memory(None, 1);
    assert!(j
        .request(&mut host, &mut request(PAY, 2_000), 7, None, 2_000)
        .unwrap()
        .is_some());
    let mut host = memory(None, CAS_RETRIES);
    let judged = j
        .request(&mut host, &mut request(PAY, 2_000), 7, None, 2_000)
        .unwrap();
    assert!(judged.is_none());
    assert!(host.is_empty());
}

#[test]
fn sessions_join_mid_flow_within_their_address_budget() {
    let s = settings(r#"{"mode":"enforce","session":{"midflow":{"budget":2,"window_s":60}}}"#);
    let m = model(&s);
    let j = judge(&s, Some(&m));
    let mut host = memory(Some("10.0.0.1:5000"), 0);
    let outcomes: Vec<Outcome> = (0..3)
        .map(|fp| {
            call(&j, &mut host, 100 + fp, CONFIRM, 1_010)
                .verdict
                .outcome
        })
        .collect();
    assert_eq!(
        outcomes,
        [Outcome::Flag, Outcome::Flag, Outcome::Block { status: 403 }],
        "rotating ids buys no more than the budget"
    );
    // Past the proxy's first window, a new session skipping a step is blocked.
    let late = call(&j, &mut host, 200, CONFIRM, 1_100);
    assert_eq!(late.verdict.outcome, Outcome::Block { status: 403 });
}

#[test]
fn rotating_session_ids_never_grow_the_table() {
    let s = settings(r#"{"session":{"capacity":64}}"#);
    let m = model(&s);
    let j = judge(&s, Some(&m));
    let mut host = MemoryHost::default();
    for fp in 1..=10_000u64 {
        call(
            &j,
            &mut host,
            fp.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            PAY,
            2_000,
        );
    }
    assert!(host.len() <= 64, "{} keys", host.len());
}

#[test]
fn a_sessionless_stuffing_run_is_refused_by_its_address() {
    let s = settings(r#"{"mode":"enforce","rules":{"auth.failures":{"address_floor":3}}}"#);
    let m = model(&s);
    let j = judge(&s, Some(&m));
    let mut host = memory(Some("10.0.0.9:4000"), 0);
    let address = b"10.0.0.9:4001".to_vec(); // another connection, the same client
    let decisions: Vec<Decision> = (0..4)
        .map(|_| {
            let (_, decision) = j.sessionless(&mut host, &address, 2_000).unwrap().unwrap();
            j.record_address_failure(&mut host, 2_000).unwrap();
            decision
        })
        .collect();
    assert_eq!(decisions[..3], [Decision::Annotate; 3], "{decisions:?}");
    assert!(
        matches!(decisions[3], Decision::Reply { status: 429, .. }),
        "{decisions:?}"
    );
}

#[test]
fn an_address_carrying_customers_gets_their_share_of_anonymous_requests() {
    let s = settings(r#"{"mode":"enforce"}"#);
    let mut p = Policy::from_json(POLICY.as_bytes()).unwrap();
    if let Some(pay) = p.endpoints.first_mut() {
        pay.address_rate = Some(crate::policy::Limit {
            limit: 2,
            ..Default::default()
        });
    }
    let m = Model::compile(&p, &s).unwrap();
    let j = judge(&s, Some(&m));
    let weak = |host: &mut MemoryHost, n: u32| {
        let mut refused = 0;
        for i in 0..n {
            let mut r = request(PAY, 2_000);
            r.now_ms += u64::from(i);
            r.weak_session = true;
            let judged = j.request(host, &mut r, 77, None, 2_000).unwrap().unwrap();
            refused += u32::from(matches!(judged.decision, Decision::Reply { .. }));
        }
        refused
    };
    // An address carrying nobody: 2 anonymous payments a window, then 429s.
    let mut lone = memory(Some("10.0.0.1:1"), 0);
    assert_eq!(weak(&mut lone, 10), 8);
    // A NAT: 5 identified sessions start from it every window (5 minutes), for five
    // windows: it carries the last two windows' 10, and 20 of 20 anonymous payments pass.
    let fp = |i: u64| {
        let z = (i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z ^ (z >> 31)
    };
    let mut nat = memory(Some("10.0.0.2:1"), 0);
    for k in 0..5u32 {
        for i in 0..5u64 {
            call(&j, &mut nat, fp(u64::from(k) * 10 + i), PAY, 600 + k * 300);
        }
    }
    assert_eq!(weak(&mut nat, 20), 0);
    assert!(weak(&mut nat, 5) > 0, "beyond its share, refused");
    // An attacker who starts 10 sessions at once to pass for a NAT earns one share.
    let mut warmed = memory(Some("10.0.0.3:1"), 0);
    for i in 0..10u64 {
        call(&j, &mut warmed, fp(100 + i), PAY, 1_990);
    }
    assert_eq!(weak(&mut warmed, 10), 8);
}

#[test]
fn a_weak_session_on_a_checked_endpoint_reads_its_address_once() {
    let s = settings(r#"{"mode":"enforce","session":{"sources":["address"]}}"#);
    let m = model(&s);
    let j = judge(&s, Some(&m));
    let reads = |checks_address: bool| {
        let mut host = memory(Some("10.0.0.9:1234"), 0);
        j.record_address_failure(&mut host, 1_990).unwrap();
        let mut r = Request {
            weak_session: true,
            checks_address,
            ..request(PAY, 2_000)
        };
        j.request(&mut host, &mut r, 77, Some(b"10.0.0.9:1234"), 2_000)
            .unwrap()
            .expect("written");
        (host.reads, r.address_failures)
    };
    let (checked, unchecked) = (reads(true), reads(false));
    assert_eq!(
        checked.0, unchecked.0,
        "carried and failures share one read"
    );
    assert_eq!((checked.1, unchecked.1), (1, 0));
}
