//! A Wasm VM failure under each of Envoy's failure policies, with a test-only build of the
//! filter whose crash switch panics the VM (`make build-crash`).

use flowguard_integration::envoy::{repo_root, Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::Client;

/// A fresh session's first request skips a step here: no mid-flow grace (see `midflow.rs`).
const CONFIG: &str = r#"{"mode":"enforce","learning":{"tick_ms":100},"session":{"midflow":{"budget":0}},"policy":{"version":3,"endpoints":[
    {"template":"POST /api/orders/{id}/pay","entry":true},
    {"template":"POST /api/orders/{id}/confirm","prerequisites":["POST /api/orders/{id}/pay"]}],
    "transitions":[{"from":"^","to":"POST /api/orders/{id}/pay","count":1},
                   {"from":"POST /api/orders/{id}/pay","to":"POST /api/orders/{id}/confirm","count":1}]}}"#;

fn start(policy: &'static str) -> (ShopServer, Envoy, Client) {
    let wasm = repo_root().join("target/flowguard-crash-switch.wasm");
    assert!(wasm.exists(), "run `make build-crash` first");
    let shop = ShopServer::start().expect("shop");
    let mut cfg = EnvoyConfig::new(CONFIG, shop.addr);
    cfg.failure_policy = policy;
    cfg.wasm = Some(wasm);
    let envoy = Envoy::start(&cfg).expect("Envoy starts");
    let client = Client::new(&envoy.url);
    (shop, envoy, client)
}

fn confirm(client: &Client, session: &str) -> u16 {
    client
        .send(
            "POST",
            "/api/orders/1/confirm",
            &[("cookie", session)],
            None,
        )
        .status
}

fn crash(client: &Client) {
    client.send("GET", "/api/menu", &[("x-flowguard-test-crash", "1")], None);
}

#[test]
fn fail_open_serves_unprotected_after_the_vm_dies() {
    let (_shop, envoy, client) = start("FAIL_OPEN");
    assert_eq!(confirm(&client, "session=a"), 403, "protected before");
    crash(&client);
    eventually("requests to pass unprotected", || {
        (confirm(&client, "session=b") == 200).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    eventually("the panic hook's critical log line", || {
        let log = envoy.log();
        log.lines()
            .any(|l| l.contains("[critical]") && l.contains("flowguard: panic"))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert_eq!(
        client.send("GET", "/health", &[], None).status,
        200,
        "Envoy keeps serving"
    );
}

#[test]
fn fail_closed_refuses_after_the_vm_dies() {
    let (_shop, envoy, client) = start("FAIL_CLOSED");
    assert_eq!(confirm(&client, "session=a"), 403);
    crash(&client);
    let status = eventually("requests to be refused", || {
        let s = client.send("GET", "/health", &[], None).status;
        (s >= 500).then_some(s)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert_eq!(status, 503, "fail closed answers 503");
}

#[test]
fn fail_reload_restarts_the_vm_and_the_session_state_survives() {
    let (_shop, envoy, client) = start("FAIL_RELOAD");
    let paid = [("cookie", "session=paid")];
    assert_eq!(
        client.send("POST", "/api/orders/1/pay", &paid, None).status,
        200
    );
    crash(&client);
    // The reloaded VM enforces again, and the payment made before the crash still counts:
    // the slot table lives in Envoy's shared data, not in the VM.
    eventually("the reloaded VM to enforce", || {
        (confirm(&client, "session=fresh") == 403).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert_eq!(
        client
            .send("POST", "/api/orders/1/confirm", &paid, None)
            .status,
        200
    );
}
