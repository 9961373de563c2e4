//! Following the customer across login, through a real Envoy: the login answer's new
//! session cookie continues the anonymous session's flow (rules learned across the login
//! and enforced on both sides of it), and a client address standing in for a session is a
//! weak session that teaches nothing and is flagged, not blocked, by its flow.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{Client, Reply, Session, GOOD_CARD};

/// Defaults but for the small learning sample (22 clean sessions back a rule at 0.9).
const CONFIG: &str = r#"{"mode":"enforce",
  "learning":{"min_sessions":60,"min_requests":400,"prerequisite_ratio":0.9,"confidence":0.9,"tick_ms":100}}"#;

/// A web customer: fills the cart anonymously, logs in (the answer sets a new session
/// cookie, which the browser uses from then on), orders, pays, confirms.
fn web_customer(s: &mut Session) -> Vec<Reply> {
    s.menu();
    for _ in 0..fastrand::usize(1..3) {
        s.add_to_cart(fastrand::u32(1..4));
    }
    if fastrand::bool() {
        s.call("GET", "/api/cart", None);
    }
    s.cookie_login();
    let order = s.create_order();
    if fastrand::u8(..4) == 0 {
        s.pay(order, flowguard_integration::shop::DECLINED_CARD);
    }
    s.pay(order, GOOD_CARD);
    vec![s.confirm(order)]
}

fn blocked(s: &Session) -> bool {
    s.calls
        .iter()
        .any(|c| c.reply.status == 403 || c.reply.status == 429)
}

#[test]
fn a_flow_continues_across_the_login_cookie_and_is_enforced_on_both_sides() {
    let shop = ShopServer::start().expect("shop");
    let envoy = Envoy::start(&EnvoyConfig::new(CONFIG, shop.addr)).expect("Envoy");
    let client = Client::new(&envoy.url);
    // Cookieless visitors meanwhile (one address for all: a NAT): weak, they teach nothing.
    for _ in 0..10 {
        client.send("GET", "/api/menu", &[], None);
        client.send("POST", "/api/orders", &[], None);
    }
    for _ in 0..70 {
        web_customer(&mut Session::new(&client));
    }
    envoy.wait_for_model().expect("a model is learned");
    let policy = envoy.learned_policy().expect("the learned policy");
    let orders = policy.endpoint("POST /api/orders").expect("orders");
    for needed in ["POST /api/cart/items", "POST /api/auth/session"] {
        assert!(
            orders.prerequisites.iter().any(|p| p == needed),
            "{needed} (before the login) not learned for the order (after it): {orders:?}"
        );
    }
    // Every login hands its flow over, except one whose answer comes after the first
    // model was installed on its worker (its steps are in the learning registry's ids, the
    // new identity's slot in the model's: nothing to continue). With the model learned
    // mid-traffic on two workers, one or two of 70 can straddle it.
    envoy
        .counter_at_least("flowguard.sessions.handovers", 68)
        .unwrap();
    let confirm = policy
        .endpoint("POST /api/orders/{id}/confirm")
        .expect("confirm");
    assert!(
        confirm
            .all_prerequisites()
            .any(|p| p == "POST /api/orders/{id}/pay"),
        "{confirm:?}"
    );

    // Customers it never learned from: none blocked.
    let mut wronged = 0;
    for _ in 0..40 {
        let mut s = Session::new(&client);
        web_customer(&mut s);
        wronged += usize::from(blocked(&s));
    }
    // A browser that ignores the new cookie stays its anonymous session: not blocked either.
    let mut stubborn = Session::new(&client);
    stubborn.menu();
    stubborn.add_to_cart(1);
    stubborn.call(
        "POST",
        "/api/auth/session",
        Some(serde_json::json!({"user": "bob", "password": "secret"})),
    );
    let order = stubborn.create_order();
    stubborn.pay(order, GOOD_CARD);
    stubborn.confirm(order);
    assert!(!blocked(&stubborn), "{:?}", stubborn.calls);
    assert_eq!(wronged, 0, "held-out customers blocked");

    // Before the login: the cart skipped, caught after it, on the new cookie.
    let mut skipper = Session::new(&client);
    skipper.menu();
    skipper.cookie_login();
    let order = skipper.call("POST", "/api/orders", None);
    assert_eq!(order.status, 403, "{}", order.body);
    // After the login: the payment skipped.
    let mut fraud = Session::new(&client);
    fraud.menu();
    fraud.add_to_cart(2);
    fraud.cookie_login();
    let order = fraud.create_order();
    assert_eq!(fraud.confirm(order).status, 403);

    // A cookieless client (a weak session keyed by the shared address) skipping payment is
    // flagged, not blocked: its steps mix every client behind the address.
    client.send("GET", "/api/menu", &[], None);
    let weak = client.send("POST", "/api/orders/424242/confirm", &[], None);
    assert_eq!(weak.status, 200, "{}", weak.body);
    assert!(
        weak.upstream_verdict()
            .is_some_and(|v| v.starts_with("flag") && v.contains("order.missing_prerequisite")),
        "{}",
        weak.upstream
    );
    envoy
        .counter_at_least("flowguard.learning.weak_sessions", 1)
        .unwrap();
}

/// A login answer that nests its token (`{"user": {"token": ...}}`, as RealWorld's
/// Conduit answers): `session.handover.json_field` names it by its path, and every
/// reader's flow continues from their address to their token.
#[test]
fn a_token_nested_in_the_login_answer_continues_the_flow() {
    use flowguard_integration::library_traffic::{self as lib, Reader, CLIENT_IP};
    let config = lib::CONFIG.replace(
        r#""json_field":"auth_token""#,
        r#""json_field":"user.token""#,
    );
    assert!(config.contains("user.token"));
    let library = ShopServer::library().expect("library starts");
    let mut cfg = EnvoyConfig::new(&config, library.addr);
    cfg.client_ip_header = Some(CLIENT_IP);
    let envoy = Envoy::start(&cfg).expect("Envoy starts");
    let client = Client::new(&envoy.url);
    let mut rng = fastrand::Rng::with_seed(21);
    for i in 0..400 {
        lib::normal_visit(&mut Reader::new(&client, &lib::address(i)), &mut rng);
    }
    envoy.wait_for_model().expect("a model is learned");
    envoy
        .counter_at_least("flowguard.sessions.handovers", 380)
        .expect("every login hands over by the nested token");
    let policy = envoy
        .learned_policy()
        .expect("the learned policy is logged");
    let borrow = policy.endpoint("POST /api/v2/loans").expect("borrow");
    assert!(
        borrow
            .prerequisites
            .iter()
            .any(|p| p == "POST /api/v2/users/login"),
        "the login, made before the token, is a step of the token's flow: {borrow:?}"
    );
}
