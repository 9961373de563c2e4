//! An operator's decisions in a policy (`Policy::decisions`), through the exchange as a
//! host runs it: rule actions overridden policy-wide and per endpoint, pinned and
//! forgotten prerequisites, a loosened limit; refused when they name nothing or close a
//! cycle; carried over by relearning.
#![allow(clippy::unwrap_used)]

use flowguard_engine::config::Settings;
use flowguard_engine::exchange::{self, Exchange, ResponseHead, Scope};
use flowguard_engine::learn::{self, LearnStats, Registry};
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use flowguard_engine::store::MemoryHost;

const LEARNED: &str = r#"{"version":4,"endpoints":[
    {"template":"GET /cart","entry":true},
    {"template":"POST /pay","entry":true,
     "rate":{"p50":1,"p90":1,"p99":2,"limit":2}},
    {"template":"POST /confirm","prerequisites":["POST /pay"]},
    {"template":"POST /ship","prerequisites":["POST /confirm"]}]}"#;

/// The learned policy with `decisions` (a JSON object) added.
fn decided(decisions: &str) -> Result<Policy, String> {
    let json = LEARNED.replacen('{', &format!(r#"{{"decisions":{decisions},"#), 1);
    Policy::from_json(json.as_bytes()).map_err(|e| e.key)
}

struct Proxy {
    settings: Settings,
    model: Model,
    host: MemoryHost,
}

impl Proxy {
    /// A proxy in `enforce` whose plugin configuration sets `rules` (a JSON object).
    fn new(rules: &str, policy: &Policy) -> Proxy {
        let json = format!(
            r#"{{"mode":"enforce","session":{{"sources":[{{"cookie":"s"}}]}},"rules":{rules}}}"#
        );
        let settings = Settings::from_json(json.as_bytes()).unwrap();
        let model = Model::compile(policy, &settings).unwrap();
        Proxy {
            settings,
            model,
            host: MemoryHost::default(),
        }
    }

    /// The status the client sees for `path` in session `session` (200: passed and
    /// answered 200 upstream).
    fn call(&mut self, path: &str, session: &str, now_s: u64) -> u16 {
        let base = exchange::base_normaliser(&self.settings, &Registry::default());
        let scope = Scope {
            settings: &self.settings,
            model: Some(&self.model),
            registry_map: &[],
            base_normaliser: &base,
            started: 1,
            relearns: false,
            registry: None,
        };
        let (method, path) = path.split_once(' ').unwrap();
        let cookie = format!("s={session}");
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", method.as_bytes()),
            (b":path", path.as_bytes()),
            (b"cookie", cookie.as_bytes()),
        ];
        let mut x = Exchange::default();
        let mut delta = LearnStats::default();
        let now_ms = now_s * 1000;
        let step = x
            .request(&scope, &mut self.host, &headers, now_ms, 1, &mut delta)
            .unwrap();
        if let Some(reply) = step.reply {
            return reply.status;
        }
        let ok = ResponseHead {
            status: 200,
            ..ResponseHead::default()
        };
        x.response_head(&scope, &mut self.host, &ok, true, now_ms, &mut delta)
            .unwrap();
        200
    }
}

#[test]
fn a_rule_switched_from_flag_to_block_blocks() {
    let flag = r#"{"order.missing_prerequisite":"flag"}"#;
    let mut before = Proxy::new(flag, &decided("{}").unwrap());
    assert_eq!(
        before.call("POST /confirm", "a", 1_000),
        200,
        "only flagged"
    );
    let block = decided(r#"{"rules":{"order.missing_prerequisite":"block"}}"#).unwrap();
    let mut after = Proxy::new(flag, &block);
    assert_eq!(after.call("POST /confirm", "a", 1_000), 403);
    // Per endpoint, the endpoint's decision wins: skipping to the shipping is let through.
    let off_here = decided(
        r#"{"rules":{"order.missing_prerequisite":"block"},
            "endpoints":{"POST /ship":{"rules":{"order.missing_prerequisite":"off"}}}}"#,
    )
    .unwrap();
    let mut mixed = Proxy::new(flag, &off_here);
    assert_eq!(mixed.call("POST /ship", "b", 1_000), 200);
    assert_eq!(mixed.call("POST /confirm", "c", 1_000), 403);
}

#[test]
fn pinned_and_forgotten_prerequisites_and_a_loosened_limit() {
    let p = decided(
        r#"{"endpoints":{"POST /pay":{"pin":["GET /cart"],"rate_limit":5},
                         "POST /confirm":{"forget":["POST /pay"]}}}"#,
    )
    .unwrap();
    // The learned facts stay as learned; the decisions sit beside them.
    assert!(p.endpoint("POST /pay").unwrap().prerequisites.is_empty());
    let mut proxy = Proxy::new("{}", &p);
    assert_eq!(
        proxy.call("POST /pay", "a", 1_000),
        403,
        "pinned: cart first"
    );
    assert_eq!(proxy.call("POST /confirm", "b", 1_000), 200, "forgotten");
    assert_eq!(proxy.call("GET /cart", "c", 1_000), 200);
    // The learned limit of 2 per window is loosened to 5.
    let statuses: Vec<u16> = (0..6)
        .map(|_| proxy.call("POST /pay", "c", 1_001))
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 429]);
}

#[test]
fn decisions_that_name_nothing_or_close_a_cycle_are_refused() {
    assert_eq!(
        decided(r#"{"rules":{"order.nope":"block"}}"#),
        Err("decisions.rules.order.nope".into())
    );
    assert_eq!(
        decided(r#"{"endpoints":{"GET /nope":{"pin":["GET /cart"]}}}"#),
        Err("decisions.endpoints.GET /nope".into())
    );
    assert_eq!(
        decided(r#"{"endpoints":{"POST /pay":{"rate_limit":0}}}"#),
        Err("decisions.endpoints.POST /pay.rate_limit".into())
    );
    // Paying only after shipping, which needs the confirm, which needs the payment.
    assert_eq!(
        decided(r#"{"endpoints":{"POST /pay":{"pin":["POST /ship"]}}}"#),
        Err("decisions.endpoints.POST /pay.pin".into())
    );
    assert!(decided(r#"{"endpoints":{"POST /ship":{"pin":["POST /pay"]}}}"#).is_ok());
}

#[test]
fn learning_again_keeps_the_operators_decisions() {
    let settings = Settings::from_json(b"{}").unwrap();
    let current = decided(
        r#"{"rules":{"rate.session":"off"},"endpoints":{"POST /confirm":{"forget":["POST /pay"]}}}"#,
    )
    .unwrap();
    let next = learn::relearn(
        &current,
        &LearnStats::default(),
        &settings.learning,
        &settings.limits,
    );
    assert_eq!(next.version, 5);
    assert_eq!(next.decisions, current.decisions);
    // A fleet policy learned afresh takes over what still names its endpoints.
    let mut fresh = Policy::from_json(
        br#"{"version":9,"endpoints":[{"template":"POST /pay"},{"template":"GET /new"}]}"#,
    )
    .unwrap();
    fresh.carry_decisions(&current.decisions);
    assert_eq!(fresh.decisions.rules, current.decisions.rules);
    assert!(
        fresh.decisions.endpoints.is_empty(),
        "POST /confirm is gone"
    );
    assert!(Policy::from_json(fresh.to_json().as_bytes()).is_ok());
}
