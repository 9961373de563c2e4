//! Resource exhaustion: huge paths and cookies, multi-megabyte bodies and thousands of
//! distinct templates leave memory at its bounds and the per-request cost flat.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{Client, Session};
use std::time::{Duration, Instant};

fn median_request(
    client: &Client,
    n: usize,
    headers: &[(&str, &str)],
    path: impl Fn(usize) -> String,
) -> Duration {
    let mut times: Vec<Duration> = (0..n)
        .map(|i| {
            let started = Instant::now();
            let r = client.send("GET", &path(i), headers, None);
            assert!(r.status != 0 && r.status < 500, "{} {}", r.status, r.body);
            started.elapsed()
        })
        .collect();
    times.sort();
    times[n / 2]
}

#[test]
fn huge_inputs_and_template_floods_stay_within_bounds() {
    let shop = ShopServer::start().expect("shop");
    // Still learning: the registry of templates is what a template flood would grow.
    let json = r#"{"mode":"monitor","learning":{"min_sessions":1000000,"max_endpoints":64,"tick_ms":100},"session":{"capacity":1024}}"#;
    let envoy = Envoy::start(&EnvoyConfig::new(json, shop.addr)).expect("Envoy starts");
    let client = Client::new(&envoy.url);
    let plain = [("cookie", "session=plain")];
    let before = median_request(&client, 300, &plain, |_| "/api/menu".into());
    let rss_before = envoy.rss_kib();

    // 5,000 distinct templates, 40 KiB paths, 40 KiB cookies.
    let long_segment = "a".repeat(40 * 1024);
    let big_cookie = format!("session={}", "c".repeat(40 * 1024));
    median_request(&client, 5000, &plain, |i| format!("/api/t{i}x/items"));
    median_request(&client, 200, &plain, |i| format!("/api/{long_segment}/{i}"));
    median_request(&client, 200, &[("cookie", big_cookie.as_str())], |_| {
        "/api/menu".into()
    });
    // A 5 MB JSON answer streams through unscanned (over max_bytes) and intact.
    let mut s = Session::new(&client);
    let report = s.call("GET", "/api/reports/big", None);
    assert_eq!(report.status, 200);
    assert!(report.body.len() > 5 << 20 && report.body.ends_with("}]}"));

    let after = median_request(&client, 300, &plain, |_| "/api/menu".into());
    let rss_after = envoy.rss_kib();
    eprintln!("median request {before:?} -> {after:?}; RSS {rss_before} -> {rss_after} KiB");
    assert!(
        after <= before * 3 + Duration::from_millis(2),
        "per-request cost stays flat: {before:?} -> {after:?}"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 48 * 1024,
        "RSS {rss_before} -> {rss_after} KiB"
    );
    assert_eq!(envoy.counter("flowguard.host_errors"), 0);
    // That the body past max_bytes is not read is tested where a model judges answers
    // (rules.rs): this filter never leaves learning, and learning flags nothing.
    assert!(!envoy.log().contains("panic"));
}
