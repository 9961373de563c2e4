//! Learning and publication between workers over one in-memory shared data.

use super::*;
use crate::exchange::{Exchange, ResponseHead};
use crate::store::MemoryHost;

const LEARN: &str = r#"{"mode":"enforce","session":{"sources":[{"cookie":"session"}]},
    "learning":{"min_sessions":4,"min_requests":8,"tick_ms":100}}"#;

fn settings(json: &str) -> Settings {
    Settings::from_json(json.as_bytes()).unwrap()
}

/// One worker's flow `/pay` then `/confirm` for `session`, answered 200.
fn flow(node: &mut Node, settings: &Settings, host: &mut MemoryHost, session: &str, now_ms: u64) {
    for path in ["/pay", "/confirm"] {
        let cookie = format!("session={session}");
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", path.as_bytes()),
            (b"cookie", cookie.as_bytes()),
        ];
        let mut x = Exchange::default();
        let (scope, delta) = node.scope(settings);
        let step = x.request(&scope, host, &headers, now_ms, 1, delta).unwrap();
        let head = ResponseHead {
            status: 200,
            ..ResponseHead::default()
        };
        x.response_head(&scope, host, &head, true, now_ms, delta)
            .unwrap();
        if let Some(registry) = step.registry {
            node.adopt_registry(settings, *registry);
        }
    }
}

fn tick(node: &mut Node, settings: &Settings, host: &mut MemoryHost, now_ms: u64) -> Vec<Happened> {
    let mut out = Vec::new();
    node.tick(settings, host, now_ms, &mut out).unwrap();
    out
}

#[test]
fn one_worker_publishes_what_all_learned_and_the_others_adopt_it() {
    let s = settings(LEARN);
    let mut host = MemoryHost::default();
    Node::create_version_key(&mut host).unwrap();
    let (mut a, mut b) = (Node::new(&s), Node::new(&s));
    // Half the sessions on each worker: neither alone meets the thresholds.
    for i in 0..3 {
        flow(&mut a, &s, &mut host, &format!("a{i}"), 1_000_000 + i);
        flow(&mut b, &s, &mut host, &format!("b{i}"), 1_000_000 + i);
    }
    let progress = tick(&mut a, &s, &mut host, 1_001_000);
    assert!(
        matches!(
            progress.as_slice(),
            [Happened::Progress { sessions: 3, .. }]
        ),
        "{progress:?}"
    );
    let published = tick(&mut b, &s, &mut host, 1_001_000);
    let [Happened::Progress { sessions: 6, .. }, Happened::Learned {
        version: 1,
        sessions: 6,
        json,
        ..
    }, installed] = published.as_slice()
    else {
        panic!("b merges and publishes: {published:?}");
    };
    assert!(json.contains("POST /confirm"));
    assert!(matches!(
        installed,
        Happened::Installed {
            version: 1,
            endpoints: 2
        }
    ));
    assert_eq!(Node::published_version(&mut host).unwrap().0, 1);
    // a adopts it on its next tick; a worker started now, at its first request.
    let adopted = tick(&mut a, &s, &mut host, 1_002_000);
    assert!(matches!(
        adopted.as_slice(),
        [Happened::Installed { version: 1, .. }]
    ));
    let mut c = Node::new(&s);
    let mut out = Vec::new();
    c.adopt_published(&s, &mut host, 1_002, &mut out).unwrap();
    assert_eq!(c.model_version(), 1);
    // Adopted once: no second install.
    out.clear();
    c.adopt_published(&s, &mut host, 1_003, &mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn a_lost_claim_publishes_nothing() {
    let mut host = MemoryHost::default();
    Node::create_version_key(&mut host).unwrap();
    let (_, cas) = Node::published_version(&mut host).unwrap();
    assert!(Node::publish(&mut host, 7, "{}", cas).unwrap());
    // Another worker decided on the same read: it loses the claim.
    assert!(!Node::publish(&mut host, 8, "{}", cas).unwrap());
    assert_eq!(Node::published_version(&mut host).unwrap().0, 7);
}

#[test]
fn a_bad_published_policy_is_refused_once() {
    let s = settings(LEARN);
    let mut host = MemoryHost::default();
    Node::create_version_key(&mut host).unwrap();
    let (_, cas) = Node::published_version(&mut host).unwrap();
    Node::publish(&mut host, 3, r#"{"version":3,"endpoints":"nope"}"#, cas).unwrap();
    let mut node = Node::new(&s);
    let refused = tick(&mut node, &s, &mut host, 1_000_000);
    assert!(
        matches!(refused.as_slice(), [Happened::Refused { version: 3, .. }]),
        "{refused:?}"
    );
    assert!(node.model.is_none());
    let again = tick(&mut node, &s, &mut host, 1_001_000);
    assert!(
        !again.iter().any(|h| matches!(h, Happened::Refused { .. })),
        "{again:?}"
    );
}

#[test]
fn endpoints_unused_everywhere_are_retired() {
    let s = settings(
        r#"{"mode":"enforce","session":{"sources":[{"cookie":"session"}]},
        "endpoints":{"retire_after_s":60},
        "policy":{"version":1,"endpoints":[{"template":"GET /a","entry":true},
            {"template":"GET /b","entry":true}]}}"#,
    );
    let mut host = MemoryHost::default();
    let (mut a, mut b) = (Node::new(&s), Node::new(&s));
    let model = Model::compile(s.policy.as_ref().unwrap(), &s).unwrap();
    a.install(model.clone(), 1_000);
    b.install(model, 1_000);
    let (ea, eb) = (0usize, 1usize);
    // /a used on worker b only; /b on none.
    b.last_used[ea] = 1_100;
    tick(&mut b, &s, &mut host, 1_100_000);
    tick(&mut a, &s, &mut host, 1_100_000);
    let retired = |n: &Node, e: usize| {
        n.model
            .as_ref()
            .unwrap()
            .is_deprecated(EndpointId::try_from(e).unwrap())
    };
    assert!(!retired(&a, ea), "used on another worker");
    assert!(retired(&a, eb), "unused for 100 s");
    assert_eq!(a.last_used[ea], 1_100);
}
