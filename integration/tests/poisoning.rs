//! Learning poisoning: an attacker inside the learning window plays many sessions that
//! skip payment, open with confirm and call a hidden endpoint, hoping the model learns
//! all of that as normal. With support thresholds and a per-address share, it does not.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};

const CLIENT_IP: &str = "x-client-ip";
const ATTACKER: &str = "10.66.6.6";

fn config(defended: bool) -> String {
    let support = if defended {
        r#","min_sessions_per_fact":3,"min_addresses":3,"max_sessions_per_address":5"#
    } else {
        ""
    };
    format!(
        r#"{{"mode":"enforce","learning":{{"min_sessions":40,"min_requests":150,"min_support":5,"prerequisite_ratio":0.9,"confidence":0.9,"tick_ms":100{support}}},
            "session":{{"capacity":4096}},"rules":{{"inventory.unknown_endpoint":"block"}}}}"#
    )
}

/// Learns while 60 customers (each from their own address) and the attacker (30
/// sessions from one address) share the learning window.
fn learn_under_attack(defended: bool) -> (ShopServer, Envoy) {
    let shop = ShopServer::start().expect("shop starts");
    let mut cfg = EnvoyConfig::new(&config(defended), shop.addr);
    cfg.client_ip_header = Some(CLIENT_IP);
    let envoy = Envoy::start(&cfg).expect("Envoy starts");
    let client = Client::new(&envoy.url);
    for i in 0..60 {
        let mut customer = Session::from_address(&client, CLIENT_IP, &format!("10.1.0.{i}"));
        if i % 4 == 3 {
            traffic::browsing(&mut customer);
        } else {
            traffic::normal_order(&mut customer);
        }
        if i < 30 {
            let mut attacker = Session::from_address(&client, CLIENT_IP, ATTACKER);
            traffic::skip_payment(&mut attacker);
            attacker.call("GET", "/api/internal/export", None);
        }
    }
    envoy
        .wait_for_model()
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    (shop, envoy)
}

#[test]
fn an_attacker_inside_the_learning_window_cannot_teach_the_model() {
    let (_shop, envoy) = learn_under_attack(true);
    let policy = envoy.learned_policy().expect("policy in the admin log");
    let confirm = policy
        .endpoint("POST /api/orders/{id}/confirm")
        .expect("confirm learned");
    assert!(
        confirm
            .prerequisites
            .iter()
            .any(|p| p == "POST /api/orders/{id}/pay"),
        "payment stays a prerequisite: {confirm:?}"
    );
    assert!(
        policy.endpoint("GET /api/internal/export").is_none(),
        "the attacker's endpoint stays unknown"
    );
    assert!(
        envoy.metric("flowguard.learning.unlearned_sessions") >= 20,
        "sessions beyond the address's share were left out"
    );

    let client = Client::new(&envoy.url);
    let mut attacker = Session::from_address(&client, CLIENT_IP, ATTACKER);
    let reply = traffic::skip_payment(&mut attacker);
    assert_eq!(reply.status, 403, "{:?}", attacker.calls);
    let mut attacker = Session::from_address(&client, CLIENT_IP, ATTACKER);
    attacker.login();
    let reply = attacker.call("GET", "/api/internal/export", None);
    assert_eq!(
        reply.status, 403,
        "the hidden endpoint: {:?}",
        attacker.calls
    );
    for i in 0..10 {
        let mut customer = Session::from_address(&client, CLIENT_IP, &format!("10.2.0.{i}"));
        let reply = traffic::normal_order(&mut customer);
        assert_eq!(
            reply.status, 200,
            "customers still order: {:?}",
            customer.calls
        );
    }
}

/// The same traffic without the defence: the attack is learned as normal, which is what
/// the test above would catch if the thresholds stopped working.
#[test]
fn without_support_thresholds_the_same_attack_is_learned() {
    let (_shop, envoy) = learn_under_attack(false);
    let client = Client::new(&envoy.url);
    let mut attacker = Session::from_address(&client, CLIENT_IP, ATTACKER);
    let reply = traffic::skip_payment(&mut attacker);
    assert_eq!(reply.status, 200, "{:?}", attacker.calls);
}
