//! The observable contract: bad configuration is refused at load naming the key, and
//! clients cannot forge flowguard's headers.

use flowguard_integration::envoy::{expect_refusal, Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::Client;

#[test]
fn bad_configuration_is_refused_naming_the_key() {
    let shop = ShopServer::start().expect("shop starts");
    for (json, key) in [
        (r#"{"mode":"enforce","sesion":{}}"#, "sesion"),
        (r#"{"session":{"capacity":"lots"}}"#, "session.capacity"),
        (r#"{"mode":"bogus"}"#, "mode"),
        (
            r#"{"learning":{"min_sessions":-1}}"#,
            "learning.min_sessions",
        ),
        (
            r#"{"rules":{"order.missing_prerequisite":"explode"}}"#,
            "rules.order.missing_prerequisite",
        ),
        (r#"not json"#, "(top level)"),
    ] {
        let log = expect_refusal(&EnvoyConfig::new(json, shop.addr)).expect("Envoy refuses");
        let line = log
            .lines()
            .find(|l| l.contains("flowguard: invalid plugin configuration"))
            .unwrap_or_else(|| panic!("no configuration error for {json} in:\n{log}"));
        assert!(
            line.contains(key),
            "{json}: the log line names {key:?}: {line}"
        );
    }
}

#[test]
fn client_sent_flowguard_headers_never_reach_the_upstream() {
    let shop = ShopServer::start().expect("shop starts");
    // The forger's first request skips a step: no mid-flow grace, so the verdict is plain.
    let policy = r#"{"mode":"monitor","session":{"midflow":{"budget":0}},"policy":{"version":7,"endpoints":[
        {"template":"GET /api/menu","entry":true},
        {"template":"POST /api/orders/{id}/confirm","prerequisites":["GET /api/menu"]}],
        "transitions":[{"from":"^","to":"GET /api/menu","count":10}]}}"#;
    for json in [r#"{"mode":"learn"}"#, policy] {
        let envoy = Envoy::start(&EnvoyConfig::new(json, shop.addr)).expect("Envoy starts");
        let client = Client::new(&envoy.url);
        let reply = client.send(
            "POST",
            "/api/orders/1/confirm",
            &[
                ("cookie", "session=forger"),
                ("x-flowguard-verdict", "allow"),
                ("X-Flowguard-Session", "trusted"),
                ("x-flowguard-anything", "1"),
            ],
            None,
        );
        assert_eq!(reply.status, 200);
        assert!(
            !reply.upstream.contains("allow"),
            "{json}: forged verdict leaked: {}",
            reply.upstream
        );
        assert!(
            !reply.upstream.contains("trusted") && !reply.upstream.contains("anything"),
            "{}",
            reply.upstream
        );
        if json.contains("policy") {
            assert_eq!(
                reply.upstream_verdict(),
                Some("block; rules=order.missing_prerequisite,order.unknown_transition"),
                "the filter's own verdict replaces the forged one"
            );
            assert_eq!(
                envoy.counter("flowguard.policy.version"),
                7,
                "an inline policy is active at once"
            );
        } else {
            assert_eq!(reply.upstream, "", "learn mode adds nothing upstream");
        }
    }
}

#[test]
fn every_shipped_envoy_yaml_is_loaded_by_envoy() {
    let dir = flowguard_integration::envoy::repo_root().join("envoy");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("envoy/ exists") {
        let path = entry.expect("readable").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let out = flowguard_integration::envoy::validate(&path)
                .unwrap_or_else(|log| panic!("{} does not validate:\n{log}", path.display()));
            assert!(
                out.contains("flowguard: configured"),
                "the filter was configured: {out}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 1);
}
