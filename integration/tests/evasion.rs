//! Evasion: the endpoint a rule sees is the endpoint the upstream serves. Encodings,
//! slashes, dot segments, path parameters, case, method override, HEAD and HTTP/2 all
//! land on the same template and the same verdict, with Envoy's path normalisation on
//! and off.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::Client;
use std::process::Command;

/// An inline policy: confirming needs a successful payment.
const POLICY: &str = r#""policy":{"version":3,"endpoints":[
    {"template":"POST /api/orders/{id}/pay","entry":true},
    {"template":"POST /api/orders/{id}/confirm","prerequisites":["POST /api/orders/{id}/pay"]},
    {"template":"GET /api/menu","entry":true}],
    "transitions":[{"from":"^","to":"POST /api/orders/{id}/pay","count":1},
                   {"from":"^","to":"GET /api/menu","count":1},
                   {"from":"POST /api/orders/{id}/pay","to":"POST /api/orders/{id}/confirm","count":1}]}"#;

/// Each spelling is tried as a fresh session's first request: no mid-flow grace (a
/// restarted proxy's), which would flag the first few instead (see `midflow.rs`).
fn start(normalize: bool, extra: &str) -> (ShopServer, Envoy) {
    let shop = ShopServer::start().expect("shop");
    let json = format!(
        r#"{{"mode":"enforce","session":{{"midflow":{{"budget":0}}}},"endpoints":{{"case_insensitive":true,"method_override":true}}{extra},{POLICY}}}"#
    );
    let mut cfg = EnvoyConfig::new(&json, shop.addr);
    cfg.normalize_path = normalize;
    let envoy = Envoy::start(&cfg).expect("Envoy starts");
    (shop, envoy)
}

/// Every spelling of "confirm order 7" a client might try.
const CONFIRM_SPELLINGS: [&str; 7] = [
    "/api/orders/7/confirm",
    "/api/orders/%37/confirm",
    "//api//orders/7/confirm/",
    "/api/cart/../orders/7/confirm",
    "/api/orders/7;jsessionid=x/confirm",
    "/API/Orders/7/CONFIRM",
    "/api/orders/7/confirm?via=query",
];

#[test]
fn every_spelling_of_a_skipped_step_is_blocked_with_and_without_envoy_normalisation() {
    for normalize in [true, false] {
        let (_shop, envoy) = start(normalize, "");
        let client = Client::new(&envoy.url);
        for (n, path) in CONFIRM_SPELLINGS.iter().enumerate() {
            let cookie = format!("session=evader{n}");
            let reply = client.send("POST", path, &[("cookie", cookie.as_str())], None);
            assert_eq!(reply.status, 403, "normalize_path={normalize}: POST {path}");
        }
        // The disguise: a POST the upstream will serve as confirm, dressed as a menu read.
        let reply = client.send(
            "POST",
            "/api/orders/7/confirm",
            &[
                ("cookie", "session=override"),
                ("x-http-method-override", "POST"),
            ],
            None,
        );
        assert_eq!(reply.status, 403, "method override");
        // A legitimate flow still works: pay, then confirm (in another spelling, which the
        // filter lets through; whether the shop itself accepts `//` is the shop's business).
        let c = [("cookie", "session=honest")];
        assert_eq!(
            client.send("POST", "/api/orders/7/pay", &c, None).status,
            200
        );
        let confirm = client.send("POST", "/api/orders/%37/confirm", &c, None);
        assert_ne!(
            confirm.status, 403,
            "normalize_path={normalize}: {}",
            confirm.body
        );
    }
}

#[test]
fn head_and_http2_land_on_the_same_template() {
    let (_shop, envoy) = start(true, "");
    let client = Client::new(&envoy.url);
    let get = client.send("GET", "/api/menu", &[("cookie", "session=h1")], None);
    assert_eq!(get.upstream_verdict(), Some("allow"));
    // HEAD is served as GET: no unknown endpoint.
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-I",
            "-H",
            "cookie: session=head",
        ])
        .arg(format!("{}/api/menu", envoy.url))
        .output()
        .expect("curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    // HTTP/2 (prior knowledge, h2c): the same verdict as HTTP/1.1.
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-X",
            "POST",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
        ])
        .args(["-H", "cookie: session=h2"])
        .arg(format!("{}/api/orders/7/confirm", envoy.url))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 403",
        "HTTP/2 skip is blocked too"
    );
    assert_eq!(
        envoy.counter("flowguard.rule.inventory.unknown_endpoint"),
        0,
        "HEAD was not an unknown endpoint"
    );
}
