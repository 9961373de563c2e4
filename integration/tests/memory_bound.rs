//! Session-id rotation cannot grow Envoy's memory: 200,000 distinct sessions leave the
//! slot table at its configured capacity.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::Client;
use std::time::Instant;

const CAPACITY: u64 = 2000;
const THREADS: u64 = 8;

/// Sends one request for each session id in `from..to`, spread over threads.
fn rotate_sessions(url: &str, from: u64, to: u64) {
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let client = Client::new(url);
            s.spawn(move || {
                for id in (from + t..to).step_by(THREADS as usize) {
                    let cookie = format!("session=rot{id}");
                    let reply = client.send("GET", "/api/menu", &[("cookie", &cookie)], None);
                    assert_eq!(reply.status, 200, "{}", reply.body);
                }
            });
        }
    });
}

#[test]
fn two_hundred_thousand_session_ids_stay_within_capacity() {
    let shop = ShopServer::start().expect("shop starts");
    let json = format!(
        r#"{{"mode":"enforce","session":{{"capacity":{CAPACITY}}},"learning":{{"tick_ms":100}},
            "policy":{{"version":1,"endpoints":[{{"template":"GET /api/menu","entry":true}}],
                       "transitions":[{{"from":"^","to":"GET /api/menu","count":1}}]}}}}"#
    );
    let envoy = Envoy::start(&EnvoyConfig::new(&json, shop.addr)).expect("Envoy starts");

    let started = Instant::now();
    rotate_sessions(&envoy.url, 0, 20_000);
    let rss_warm = envoy.rss_kib();
    rotate_sessions(&envoy.url, 20_000, 200_000);
    let rss_end = envoy.rss_kib();
    let elapsed = started.elapsed();

    let new = envoy.counter("flowguard.sessions.new");
    let evicted = envoy.counter("flowguard.slots.evictions");
    eprintln!(
        "200000 sessions in {elapsed:?}: new {new}, evicted {evicted}, RSS {rss_warm} KiB -> {rss_end} KiB"
    );
    assert_eq!(new, 200_000, "every rotated id was a new session");
    // At most CAPACITY sessions ever found a free slot; every other one displaced one.
    assert!(evicted >= 200_000 - CAPACITY, "evicted {evicted}");
    // Unbounded per-session keys would cost >= 180,000 x ~150 B = ~26 MiB here.
    assert!(
        rss_end.saturating_sub(rss_warm) < 8 * 1024,
        "Envoy grew from {rss_warm} KiB to {rss_end} KiB"
    );
}
