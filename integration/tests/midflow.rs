//! Sessions that arrive mid-flow: a proxy that restarted (or that the ring moved a session
//! to) sees a session for the first time in the middle of its flow. Within its address's
//! budget and the proxy's first `window_s`, such a session's order rules flag instead of
//! blocking; past the budget (rotating session ids) or the window, they block again.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{Client, Reply, Session, GOOD_CARD};

const POLICY: &str = r#""policy":{"version":3,"endpoints":[
    {"template":"POST /api/login","entry":true},
    {"template":"POST /api/orders","prerequisites":["POST /api/login"]},
    {"template":"POST /api/orders/{id}/pay","prerequisites":["POST /api/login","POST /api/orders"]},
    {"template":"POST /api/orders/{id}/confirm","prerequisites":["POST /api/login","POST /api/orders"],
     "bound_prerequisites":["POST /api/orders/{id}/pay"]},
    {"template":"GET /api/orders/{id}","prerequisites":["POST /api/login"]}],
    "transitions":[{"from":"^","to":"POST /api/login","count":1},
                   {"from":"POST /api/login","to":"POST /api/orders","count":1},
                   {"from":"POST /api/orders","to":"POST /api/orders/{id}/pay","count":1},
                   {"from":"POST /api/orders/{id}/pay","to":"POST /api/orders/{id}/confirm","count":1},
                   {"from":"POST /api/orders/{id}/confirm","to":"GET /api/orders/{id}","count":1}]}"#;

fn proxy(shop: &ShopServer, midflow: &str) -> Envoy {
    let json = format!(
        r#"{{"mode":"enforce","learning":{{"tick_ms":100}},"session":{{"midflow":{midflow}}},{POLICY}}}"#
    );
    Envoy::start(&EnvoyConfig::new(&json, shop.addr)).expect("Envoy starts")
}

/// A customer who logged in, ordered and paid through one proxy, then (the proxy gone)
/// confirms and checks the order through another. Returns the answers at the second.
fn pay_here_confirm_there(first: &Client, second: &Client, cookie: &str) -> Vec<Reply> {
    let mut s = Session::with_id(first, cookie);
    s.login();
    let order = s.create_order();
    assert_eq!(s.pay(order, GOOD_CARD).status, 200);
    let mut s = Session::with_id(second, cookie);
    vec![s.confirm(order), s.order_status(order)]
}

#[test]
fn a_session_arriving_mid_flow_passes_and_rotating_ids_buys_only_the_budget() {
    let shop = ShopServer::start().expect("shop");
    let before = proxy(&shop, r#"{"budget":3}"#);
    // The restart: the same configuration, its shared data (every session) gone.
    let strict = proxy(&shop, r#"{"budget":0}"#);
    let restarted = proxy(&shop, r#"{"budget":3,"window_s":3}"#);
    let (a, b, c) = (
        Client::new(&before.url),
        Client::new(&strict.url),
        Client::new(&restarted.url),
    );

    // Without the grace, the customer is blocked at confirm: the false block a restart
    // (or a moved session) causes.
    let answers = pay_here_confirm_there(&a, &b, "session=customer-1");
    assert_eq!(answers[0].status, 403, "{}", answers[0].body);

    // With it, the customer finishes; the verdict says what happened.
    let answers = pay_here_confirm_there(&a, &c, "session=customer-2");
    assert!(answers.iter().all(|r| r.status == 200), "{answers:?}");
    assert!(
        answers[0]
            .upstream_verdict()
            .is_some_and(|v| v.starts_with("flag") && v.contains("order.missing_prerequisite")),
        "{}",
        answers[0].upstream
    );
    flowguard_integration::patience::eventually("the mid-flow counter", || {
        (restarted.counter("flowguard.sessions.midflow") == 1).then_some(())
    })
    .expect("one session joined mid-flow");

    // An attacker rotating session ids from the same address to confirm unpaid orders:
    // the address's remaining budget (2 of 3) passes flagged, then every one is blocked.
    let statuses: Vec<u16> = (0..6)
        .map(|i| {
            let mut s = Session::with_id(&c, &format!("rotated-{i}"));
            s.confirm(1000 + i).status
        })
        .collect();
    assert_eq!(statuses, [200, 200, 403, 403, 403, 403]);

    // Past the proxy's first window, a new session's skipped step blocks again.
    std::thread::sleep(std::time::Duration::from_secs(4));
    let mut late = Session::with_id(&c, "after-the-window");
    assert_eq!(late.confirm(77).status, 403);
}
