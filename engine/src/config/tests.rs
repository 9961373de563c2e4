//! The configuration as users write it: defaults, every key, and errors naming keys.

use super::*;
use crate::rule::{Action, Rule};
use crate::session::Source;
use proptest::prelude::*;

fn err(json: &str) -> String {
    Settings::from_json(json.as_bytes())
        .unwrap_err()
        .to_string()
}

#[test]
fn empty_config_is_all_defaults() {
    let s = Settings::from_json(b"").unwrap();
    assert_eq!(s.mode, Mode::Monitor);
    assert_eq!(s.session.capacity, 16384);
    assert_eq!(s.learning, LearningSettings::default());
    assert_eq!(s.rules.get(Rule::MissingPrerequisite), Action::Block);
    assert_eq!(s.rules.get(Rule::UnknownTransition), Action::Flag);
    assert!(Settings::from_json(b"{}").is_ok());
}

#[test]
fn full_config_parses() {
    let s = Settings::from_json(
        br#"{"mode":"enforce","session":{"sources":[{"header":"X-Session"},"bearer","address"],
             "capacity":1000,"idle_timeout_s":60,"hash_key":"0123456789abcdef"},
             "learning":{"min_sessions":3,"min_requests":10,"prerequisite_ratio":0.99,"tick_ms":100},
             "endpoints":{"templates":["GET /u/{name}"]},
             "rules":{"order.unknown_transition":"off"}}"#,
    )
    .unwrap();
    assert_eq!(s.mode, Mode::Enforce);
    assert_eq!(s.session.sources[0], Source::Header("x-session".into()));
    assert_eq!(s.session.capacity, 1000);
    assert_eq!(s.learning.min_sessions, 3);
    assert_eq!(s.rules.get(Rule::UnknownTransition), Action::Off);
    assert_eq!(s.endpoints.templates.len(), 1);
}

#[test]
fn errors_name_the_key() {
    assert!(
        err(r#"{"bogus":1}"#).contains("bogus"),
        "{}",
        err(r#"{"bogus":1}"#)
    );
    assert!(err(r#"{"session":{"capcity":1}}"#).contains("capcity"));
    assert!(err(r#"{"mode":"bogus"}"#).starts_with("mode:"));
    assert!(err(r#"{"session":{"capacity":"big"}}"#).starts_with("session.capacity:"));
    assert!(err(r#"{"session":{"capacity":-3}}"#).contains("got -3"));
    assert!(err(r#"{"learning":{"prerequisite_ratio":1.5}}"#)
        .starts_with("learning.prerequisite_ratio:"));
    assert!(
        err(r#"{"rules":{"order.nope":"block"}}"#).starts_with("rules.order.nope: unknown rule id")
    );
    let e = err(r#"{"rules":{"rate.session":"drop"}}"#);
    assert!(
        e.starts_with("rules.rate.session: expected \"block\""),
        "{e}"
    );
    assert!(err(r#"{"endpoints":{"templates":["nope"]}}"#).starts_with("endpoints.templates[0]:"));
    assert!(err(r#"{"session":{"sources":[]}}"#).starts_with("session.sources:"));
    assert!(err(r#"{"session":{"hash_key":"short"}}"#).starts_with("session.hash_key:"));
    let e = err("[1,2]");
    assert_eq!(e, "(top level): expected a JSON object");
    assert!(err("{").contains("EOF"));
}

#[test]
fn rule_thresholds_parse_and_are_checked() {
    let s = Settings::from_json(
        br#"{"rules":{"rate.session":{"action":"flag","margin":2,"floor":5,"session_floor":30},
                      "rate.enumeration":{"limit":40},
                      "auth.failures":{"window_s":60,"floor":3},
                      "inventory.unknown_endpoint":"block"},
             "endpoints":{"deprecated":["/api/v1/"],"retire_after_s":60,"id_params":["page"]}}"#,
    )
    .unwrap();
    assert_eq!(s.rules.get(Rule::RateSession), Action::Flag);
    assert_eq!(
        s.limits.rate,
        Threshold {
            margin: 2.0,
            floor: 5,
            limit: None
        }
    );
    assert_eq!(s.limits.session_rate.floor, 30);
    assert_eq!(
        s.limits.enumeration.choose(99),
        40,
        "a fixed limit overrides learning"
    );
    assert_eq!((s.limits.auth_window_s, s.limits.auth.floor), (60, 3));
    assert_eq!(s.rules.get(Rule::UnknownEndpoint), Action::Block);
    assert_eq!(s.endpoints.retire_after_s, 60);
    assert_eq!(
        Threshold {
            margin: 3.0,
            floor: 20,
            limit: None
        }
        .choose(4),
        20
    );
    assert_eq!(
        Threshold {
            margin: 3.0,
            floor: 20,
            limit: None
        }
        .choose(9),
        27
    );

    assert!(err(r#"{"rules":{"rate.session":{"margin":0.5}}}"#)
        .starts_with("rules.rate.session.margin:"));
    assert!(err(r#"{"rules":{"rate.session":{"window_s":5}}}"#)
        .starts_with("rules.rate.session.window_s:"));
    assert!(err(r#"{"rules":{"order.unknown_transition":{"floor":5}}}"#)
        .starts_with("rules.order.unknown_transition:"));
    assert!(
        err(r#"{"rules":{"rate.session":{"acton":"block"}}}"#).starts_with("rules.rate.session:")
    );
    assert!(err(r#"{"rules":{"response.sensitive_data":"block"}}"#)
        .starts_with("rules.response.sensitive_data.action:"));
    assert!(err(r#"{"endpoints":{"deprecated":["v1"]}}"#).starts_with("endpoints.deprecated[0]:"));
    let s = Settings::from_json(
        br#"{"rules":{"response.sensitive_data":{"max_bytes":1024,"fields":["iban"]}}}"#,
    )
    .unwrap();
    assert_eq!(
        s.sensitive,
        SensitiveSettings {
            max_bytes: 1024,
            fields: vec!["iban".into()]
        }
    );
    assert!(
        err(r#"{"rules":{"response.sensitive_data":{"max_bytes":0}}}"#)
            .starts_with("rules.response.sensitive_data.max_bytes:")
    );
    assert!(
        err(r#"{"rules":{"rate.session":{"fields":["x"]}}}"#).starts_with("rules.rate.session:")
    );
}

#[test]
fn collector_settings_parse_and_are_checked() {
    let s =
        Settings::from_json(br#"{"collector":{"cluster":"fg","sample_rate":1.0,"node":"edge-1"}}"#)
            .unwrap();
    let c = s.collector.unwrap();
    assert_eq!(
        (
            c.cluster.as_str(),
            c.node.as_str(),
            c.sample_rate,
            c.buffer_events
        ),
        ("fg", "edge-1", 1.0, 1000)
    );
    assert!(Settings::from_json(b"{}").unwrap().collector.is_none());
    assert!(err(r#"{"collector":{}}"#).starts_with("collector.cluster:"));
    assert!(err(r#"{"collector":{"cluster":"x","sample_rate":2}}"#)
        .starts_with("collector.sample_rate:"));
    assert!(err(r#"{"collector":{"cluster":"x","batch_events":5000}}"#)
        .starts_with("collector.batch_events:"));
    assert!(err(r#"{"collector":{"cluster":"x","clutser":1}}"#).contains("clutser"));
    // The native module's way to the collector: an address, alone or beside the cluster.
    let native = Settings::from_json(br#"{"collector":{"address":"http://127.0.0.1:50051"}}"#)
        .unwrap()
        .collector
        .unwrap();
    assert_eq!(
        (native.cluster.as_str(), native.address.as_deref()),
        ("", Some("http://127.0.0.1:50051"))
    );
    for bad in ["https://c:1", "c:1", "http://", "http://c:1/path"] {
        let json = format!(r#"{{"collector":{{"cluster":"x","address":"{bad}"}}}}"#);
        assert!(err(&json).starts_with("collector.address:"), "{bad}");
    }
}

proptest! {
        #[test]
        fn arbitrary_bytes_never_panic
(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Settings::from_json(&bytes);
        }
    }

#[test]
fn authorization_schemes_are_a_source() {
    let s = Settings::from_json(
        br#"{"session":{"sources":[{"authorization":["Bearer","Token"]},"address"]}}"#,
    )
    .unwrap();
    assert_eq!(
        s.session.sources[0],
        Source::Authorization(vec!["Bearer".into(), "Token".into()])
    );
    let jwt = Settings::from_json(br#"{"session":{"sources":[{"jwt_claim":"sub"}]}}"#).unwrap();
    assert_eq!(jwt.session.sources[0], Source::JwtClaim("sub".into()));
    assert!(err(r#"{"session":{"sources":[{"jwt_claim":""}]}}"#).starts_with("session.sources[0]"));
    assert!(err(r#"{"session":{"sources":[{"authorization":[]}]}}"#)
        .starts_with("session.sources[0].authorization:"));
    assert!(
        err(r#"{"session":{"sources":[{"authorization":["Bear er"]}]}}"#)
            .starts_with("session.sources[0].authorization:")
    );
}

#[test]
fn failure_by_body_is_configured_under_endpoints() {
    let s = Settings::from_json(
        br#"{"endpoints":{"failure":{"json":{"status":["fail","error"]},"auth":["POST /users/v1/login"]}}}"#,
    )
    .unwrap();
    assert!(s.endpoints.failure.failed(br#"{"status":"error"}"#));
    assert_eq!(s.endpoints.failure.auth, ["POST /users/v1/login"]);
    assert!(err(r#"{"endpoints":{"failure":{"json":{"status":[]}}}}"#)
        .starts_with("endpoints.failure.json.status:"));
    assert!(
        err(r#"{"endpoints":{"failure":{"json":{"a":["b"]},"auth":["login"]}}}"#)
            .starts_with("endpoints.failure.auth[0]:")
    );
}

#[test]
fn handover_and_weak_addresses_are_configured_under_session() {
    let s = Settings::from_json(b"{}").unwrap();
    assert!(s.session.reads_set_cookie() && s.session.handover.json_field.is_none());
    assert!(
        s.session.address_is_weak(),
        "the default sources end in the address"
    );
    let only = Settings::from_json(br#"{"session":{"sources":["address"]}}"#).unwrap();
    assert!(!only.session.address_is_weak() && !only.session.reads_set_cookie());
    let s = Settings::from_json(
        br#"{"session":{"handover":{"set_cookie":false,"json_field":"auth_token","templates":["POST /login"]}}}"#,
    )
    .unwrap();
    assert!(!s.session.reads_set_cookie());
    assert_eq!(s.session.handover.json_field.as_deref(), Some("auth_token"));
    let nested = Settings::from_json(
        br#"{"session":{"handover":{"json_field":"user.token","templates":["POST /login"]}}}"#,
    )
    .unwrap();
    assert_eq!(
        nested.session.handover.json_field.as_deref(),
        Some("user.token")
    );
    for (json, key) in [
        (
            r#"{"handover":{"json_field":"t"}}"#,
            "session.handover.templates:",
        ),
        (
            r#"{"handover":{"json_field":"","templates":["POST /l"]}}"#,
            "session.handover.json_field:",
        ),
        (
            r#"{"handover":{"json_field":"user..token","templates":["POST /l"]}}"#,
            "session.handover.json_field:",
        ),
        (
            r#"{"handover":{"json_field":"a.b.c.d.e","templates":["POST /l"]}}"#,
            "session.handover.json_field:",
        ),
        (
            r#"{"handover":{"templates":["POST /l"]}}"#,
            "session.handover.templates:",
        ),
        (
            r#"{"handover":{"json_field":"t","templates":["/login"]}}"#,
            "session.handover.templates[0]:",
        ),
        (
            r#"{"sources":[{"cookie":"sid"}],"handover":{"json_field":"t","templates":["POST /l"]}}"#,
            "session.handover.json_field:",
        ),
        (r#"{"handover":{"cookie":true}}"#, "session"),
    ] {
        let e = err(&format!(r#"{{"session":{json}}}"#));
        assert!(e.starts_with(key), "{json}: {e}");
    }
}

#[test]
fn midflow_joins_are_configured_under_session() {
    let s = Settings::from_json(b"{}").unwrap();
    assert_eq!(
        (s.session.midflow_budget, s.session.midflow_window_s),
        (3, 600)
    );
    let off = Settings::from_json(br#"{"session":{"midflow":{"budget":0}}}"#).unwrap();
    assert_eq!(off.session.midflow_budget, 0);
    assert!(s.session.midflow_open(1000, 1599) && !s.session.midflow_open(1000, 1600));
    assert!(!off.session.midflow_open(1000, 1000));
    let fleet = Settings::from_json(br#"{"session":{"midflow":{"always":true}}}"#).unwrap();
    assert!(fleet.session.midflow_open(1000, 1_000_000));
    assert!(err(r#"{"session":{"midflow":{"budget":-1}}}"#).starts_with("session.midflow.budget:"));
    assert!(
        err(r#"{"session":{"midflow":{"window_s":0}}}"#).starts_with("session.midflow.window_s:")
    );
}
