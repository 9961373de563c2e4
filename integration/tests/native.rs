//! flowguard's native build (`make native`: `target/libflowguard.so`) loaded into the real
//! Envoy 1.40 as a dynamic module, in front of the demo shop: the same configuration,
//! verdicts, local replies and headers as the Wasm filter, and learning in-process.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::native_envoy;
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};

const POLICY: &str = r#""policy":{"version":3,"window_s":10,"endpoints":[
    {"template":"POST /api/login","entry":true},
    {"template":"GET /api/menu","entry":true,"rate":{"p50":2,"p90":3,"p99":4,"limit":8}},
    {"template":"GET /api/cart"},
    {"template":"POST /api/cart/items"},
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

fn native(json: &str, shop: &ShopServer) -> Envoy {
    let mut cfg = EnvoyConfig::new(json, shop.addr);
    cfg.concurrency = 2; // two workers share the module's slot table
    native_envoy::start(&cfg).unwrap_or_else(|e| panic!("Envoy starts with the module: {e}"))
}

fn assert_blocked(reply: &traffic::Reply, status: u16) {
    assert_eq!(reply.status, status, "{reply:?}");
    assert_eq!(reply.content_type.as_deref(), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON body");
    assert_eq!(body["error"], "request blocked");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(!reply.body.contains("order.") && !reply.body.contains("rate"));
}

#[test]
fn a_configured_policy_is_enforced_by_the_native_module() {
    let shop = ShopServer::start().expect("shop starts");
    let envoy = native(&format!(r#"{{"mode":"enforce",{POLICY}}}"#), &shop);
    eventually("the module's ABI version accepted", || {
        envoy
            .log()
            .contains("Dynamic module ABI version v0.2.0 matched")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    let client = Client::new(&envoy.url);

    // Normal orders pass, and the upstream is told the session and the verdict.
    for _ in 0..10 {
        let mut s = Session::new(&client);
        let reply = traffic::normal_order(&mut s);
        assert_eq!(reply.status, 200, "a normal order: {:?}", s.calls);
        assert!(s
            .calls
            .iter()
            .all(|c| c.reply.status != 403 && c.reply.status != 429));
        let session = reply
            .upstream
            .split(" | ")
            .find_map(|h| h.strip_prefix("x-flowguard-session="))
            .expect("x-flowguard-session reached the shop");
        assert_eq!(session.len(), 16, "{session}");
        assert_eq!(
            reply.upstream_verdict(),
            Some("allow"),
            "{}",
            reply.upstream
        );
    }

    // The pizza fraud: confirm without paying.
    let mut attacker = Session::new(&client);
    let reply = traffic::skip_payment(&mut attacker);
    assert_blocked(&reply, 403);
    assert_eq!(
        &attacker.statuses()[..4],
        [200, 200, 201, 201],
        "the steps before pass"
    );

    // Paying with a declined card completes nothing.
    let mut declined = Session::new(&client);
    assert_blocked(&traffic::confirm_after_failed_payment(&mut declined), 403);

    // A flood: 429 with retry-after once the session's burst is spent.
    let mut flooder = Session::new(&client);
    let statuses = traffic::flood(&mut flooder, 40);
    let first = statuses
        .iter()
        .position(|s| *s == 429)
        .expect("the flood was refused");
    assert!(first <= 10, "refused after {first}: {statuses:?}");
    let blocked = flooder
        .calls
        .iter()
        .find(|c| c.reply.status == 429)
        .expect("a 429");
    assert_blocked(&blocked.reply, 429);
    let retry: u32 = blocked
        .reply
        .retry_after
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("retry-after");
    assert!((1..=10).contains(&retry), "retry-after {retry}");

    // A client may not speak for flowguard: its own x-flowguard-* headers are dropped.
    let forged = client.send(
        "GET",
        "/api/menu",
        &[
            ("cookie", "session=forger"),
            ("x-flowguard-verdict", "forged"),
        ],
        None,
    );
    assert_eq!(forged.status, 200);
    assert!(!forged.upstream.contains("forged"), "{}", forged.upstream);

    // Without a cookie the client address keys the session (read from Envoy).
    let anonymous = client.send("GET", "/api/menu", &[], None);
    assert_eq!(anonymous.status, 200);
    assert!(
        anonymous.upstream.contains("x-flowguard-session="),
        "{}",
        anonymous.upstream
    );

    // The Wasm filter's counters, by the same names.
    let replies = native_envoy::counter(&envoy, "flowguard.local_replies");
    assert!(replies >= 3, "local replies counted: {replies}");
    assert!(native_envoy::counter(&envoy, "flowguard.rule.order.missing_prerequisite") >= 2);
    assert_eq!(native_envoy::counter(&envoy, "flowguard.policy.version"), 3);
    assert_eq!(native_envoy::counter(&envoy, "flowguard.endpoints"), 8);
}

#[test]
fn the_native_module_learns_in_process_then_blocks_the_skip() {
    let shop = ShopServer::start().expect("shop starts");
    let json = r#"{"mode":"enforce","learning":{"min_sessions":60,"min_requests":300,"min_support":5,"prerequisite_ratio":0.9,"confidence":0.9},
        "session":{"capacity":4096}}"#;
    let envoy = native(json, &shop);
    let client = Client::new(&envoy.url);

    // No model yet: a skip passes (learning), the upstream is told the session only.
    let mut early = Session::new(&client);
    let reply = traffic::skip_payment(&mut early);
    assert_eq!(reply.status, 200);
    assert!(reply.upstream_verdict().is_none(), "{}", reply.upstream);

    traffic::play_normal(&client, 90);
    eventually("the module's learned model", || {
        envoy
            .log()
            .contains("flowguard: learned policy version 1")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    let policy = envoy
        .learned_policy()
        .expect("the learned policy is logged");
    let confirm = policy
        .endpoints
        .iter()
        .find(|e| e.template == "POST /api/orders/{id}/confirm")
        .expect("confirm learned");
    assert!(
        confirm
            .bound_prerequisites
            .iter()
            .chain(&confirm.prerequisites)
            .any(|p| p == "POST /api/orders/{id}/pay"),
        "payment before confirm was learned: {confirm:?}"
    );

    let mut attacker = Session::new(&client);
    assert_blocked(&traffic::skip_payment(&mut attacker), 403);
    assert_eq!(native_envoy::counter(&envoy, "flowguard.policy.version"), 1);
    assert!(native_envoy::counter(&envoy, "flowguard.learning.sessions") >= 60);
    let mut customer = Session::new(&client);
    let reply = traffic::normal_order(&mut customer);
    assert_eq!(
        reply.status, 200,
        "a normal order after learning: {:?}",
        customer.calls
    );
    assert!(reply.upstream_verdict().is_some(), "{}", reply.upstream);
}

#[test]
fn a_bad_configuration_is_refused_at_load_naming_the_key() {
    let shop = ShopServer::start().expect("shop starts");
    for (json, key) in [
        (r#"{"mode":"enforce","sesion":{}}"#, "sesion"),
        (r#"{"session":{"capacity":"many"}}"#, "session.capacity"),
    ] {
        let cfg = EnvoyConfig::new(json, shop.addr);
        let log = native_envoy::expect_refusal(&cfg).expect("Envoy refused the configuration");
        let line = log
            .lines()
            .find(|l| l.contains("flowguard: invalid plugin configuration"))
            .unwrap_or_else(|| panic!("no refusal logged:\n{log}"));
        assert!(line.contains(key), "the line names `{key}`: {line}");
        assert!(line.contains("critical"), "logged as critical: {line}");
    }
}

#[test]
fn the_native_module_reads_answers_hands_over_and_scans() {
    let shop = ShopServer::start().expect("shop starts");
    let json = r#"{"mode":"enforce","session":{"midflow":{"budget":0}},
        "policy":{"version":1,"endpoints":[
          {"template":"POST /api/auth/session","entry":true},
          {"template":"POST /api/orders","prerequisites":["POST /api/auth/session"]},
          {"template":"GET /api/users","entry":true}],
          "transitions":[{"from":"^","to":"POST /api/auth/session","count":9},
                         {"from":"POST /api/auth/session","to":"POST /api/orders","count":9},
                         {"from":"^","to":"GET /api/users","count":9}]}}"#;
    let envoy = native(json, &shop);
    let client = Client::new(&envoy.url);

    // A web login replaces the session cookie: the login step goes with it.
    let mut customer = Session::new(&client);
    let login = customer.cookie_login();
    assert_eq!(login.status, 200);
    assert!(login.set_cookie.is_some(), "the shop issued a new cookie");
    let order = customer.call("POST", "/api/orders", None);
    assert_eq!(
        order.status, 201,
        "the new identity continues the flow: {order:?}"
    );
    let mut skipper = Session::new(&client);
    assert_blocked(&skipper.call("POST", "/api/orders", None), 403);
    eventually("the hand-over counted", || {
        (native_envoy::counter(&envoy, "flowguard.sessions.handovers") >= 1).then_some(())
    })
    .unwrap();

    // An answer leaking e-mails and card numbers, which no learned baseline allows: flagged
    // from its streamed body, and passed on untouched.
    let mut reader = Session::new(&client);
    let users = reader.call("GET", "/api/users", None);
    assert_eq!(users.status, 200);
    assert!(
        users.body.contains("4111 1111 1111 1111"),
        "the body streams on"
    );
    eventually("the sensitive-data flag counted", || {
        (native_envoy::counter(&envoy, "flowguard.rule.response.sensitive_data") >= 1).then_some(())
    })
    .unwrap();
}

#[test]
fn a_panic_in_the_module_is_caught_and_the_request_fails_open() {
    let shop = ShopServer::start().expect("shop starts");
    let cfg = EnvoyConfig::new(&format!(r#"{{"mode":"enforce",{POLICY}}}"#), shop.addr);
    let module = native_envoy::crash_switch_path().expect("the crash-switch build");
    let envoy = native_envoy::start_module(&cfg, &module).expect("Envoy starts");
    let client = Client::new(&envoy.url);
    // A skip that the module would refuse, with the switch pulled: the hook panics, the
    // panic stops at the ABI, and the request passes unjudged (fail open).
    let crashed = client.send(
        "POST",
        "/api/orders/1/confirm",
        &[("cookie", "session=crash"), ("x-flowguard-test-crash", "1")],
        None,
    );
    assert_ne!(crashed.status, 403, "{crashed:?}");
    assert_ne!(crashed.status, 0, "Envoy answered: {crashed:?}");
    eventually("the caught panic logged", || {
        envoy
            .log()
            .contains("flowguard: panic caught, failing open")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    // Envoy and the module go on: the same skip without the switch is refused.
    let mut attacker = Session::new(&client);
    assert_blocked(&traffic::skip_payment(&mut attacker), 403);
}

#[test]
fn rotating_session_ids_stay_within_the_native_table() {
    const CAPACITY: u64 = 2000;
    const THREADS: u64 = 4;
    let shop = ShopServer::start().expect("shop starts");
    let json = format!(
        r#"{{"mode":"enforce","session":{{"capacity":{CAPACITY}}},
            "policy":{{"version":1,"endpoints":[{{"template":"GET /api/menu","entry":true}}],
                       "transitions":[{{"from":"^","to":"GET /api/menu","count":1}}]}}}}"#
    );
    let envoy = native(&json, &shop);
    let rotate = |from: u64, to: u64| {
        std::thread::scope(|s| {
            for t in 0..THREADS {
                let client = Client::new(&envoy.url);
                s.spawn(move || {
                    for id in (from + t..to).step_by(THREADS as usize) {
                        let cookie = format!("session=rot{id}");
                        let reply = client.send("GET", "/api/menu", &[("cookie", &cookie)], None);
                        assert_eq!(reply.status, 200, "{}", reply.body);
                    }
                });
            }
        });
    };
    rotate(0, 10_000);
    let rss_warm = envoy.rss_kib();
    rotate(10_000, 60_000);
    let rss_end = envoy.rss_kib();
    let new = native_envoy::counter(&envoy, "flowguard.sessions.new");
    let evicted = native_envoy::counter(&envoy, "flowguard.slots.evictions");
    eprintln!("60000 sessions: new {new}, evicted {evicted}, RSS {rss_warm} KiB -> {rss_end} KiB");
    assert_eq!(new, 60_000, "every rotated id was a new session");
    assert!(evicted >= 60_000 - CAPACITY, "evicted {evicted}");
    assert_eq!(native_envoy::counter(&envoy, "flowguard.host_errors"), 0);
    // Unbounded per-session keys would cost >= 50,000 x ~250 B = ~12 MiB here.
    assert!(
        rss_end.saturating_sub(rss_warm) < 4 * 1024,
        "Envoy grew from {rss_warm} KiB to {rss_end} KiB"
    );
}
