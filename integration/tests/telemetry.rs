//! Telemetry over Envoy's gRPC callout to the real collector (tonic + SQLite), fleet
//! learning, and what happens when the collector fails.

use flowguard_integration::collector::{reporting_section, scratch_db, Collector};
use flowguard_integration::envoy::Envoy;
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};
use std::time::{Duration, Instant};

/// A filter that reports every session (sample 1.0) and flushes often.
fn reporting(mode: &str, learning: &str, extra: &str) -> String {
    format!(
        r#"{{"mode":"{mode}","learning":{learning},{}}}"#,
        reporting_section("edge", extra)
    )
}

const QUICK: &str = r#"{"min_sessions":40,"min_requests":200,"min_support":5,"prerequisite_ratio":0.9,"confidence":0.9,"tick_ms":100}"#;
/// Thresholds no test reaches: the filter cannot learn by itself.
const NEVER: &str = r#"{"min_sessions":1000000,"min_requests":1000000,"tick_ms":100}"#;

fn envoy_with(json: &str, shop: &ShopServer, collector: &Collector) -> Envoy {
    Envoy::start(&collector.envoy_config(json, shop.addr))
        .unwrap_or_else(|e| panic!("Envoy starts: {e}"))
}

#[test]
fn events_arrive_in_the_collector_and_are_queryable() {
    let collector = Collector::start(
        &scratch_db("arrive").expect("scratch database"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let envoy = envoy_with(&reporting("monitor", QUICK, ""), &shop, &collector);
    let client = Client::new(&envoy.url);
    traffic::play_normal(&client, 20);
    let requests = envoy.counter("flowguard.requests");
    let stored = eventually("every event stored", || {
        let (events, _, _) = collector.stats().ok()?;
        (events >= requests).then_some(events)
    })
    .unwrap_or_else(|e| panic!("{e}: {:?} stored of {requests}", collector.stats()));
    assert_eq!(
        stored, requests,
        "sample_rate 1.0 reports each request once"
    );
    assert_eq!(envoy.counter("flowguard.telemetry.sent"), requests);
    assert_eq!(
        envoy.counter("flowguard.telemetry.dropped") + envoy.counter("flowguard.telemetry.failed"),
        0
    );
}

#[test]
fn two_proxies_learn_one_fleet_policy_and_block_the_same_attack() {
    let config = scratch_db("fleet-config")
        .expect("scratch database")
        .with_extension("json");
    std::fs::write(&config, format!(r#"{{"learning":{QUICK}}}"#)).expect("config");
    let collector = Collector::start(
        &scratch_db("fleet").expect("scratch database"),
        &[
            "--learn-interval-s",
            "1",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let json = reporting("enforce", NEVER, "");
    let a = envoy_with(&json, &shop, &collector);
    let b = envoy_with(&json, &shop, &collector);
    // Half the normal traffic through each proxy: neither could learn alone.
    traffic::play_normal(&Client::new(&a.url), 30);
    traffic::play_normal(&Client::new(&b.url), 30);
    for envoy in [&a, &b] {
        let version = envoy
            .wait_for_model()
            .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
        assert!(
            version > 1_000_000,
            "a collector version (time-based), got {version}"
        );
        assert_eq!(envoy.counter("flowguard.policy.refused"), 0);
        let client = Client::new(&envoy.url);
        let mut attacker = Session::new(&client);
        assert_eq!(
            traffic::skip_payment(&mut attacker).status,
            403,
            "{:?}",
            attacker.calls
        );
        let mut customer = Session::new(&client);
        assert_eq!(
            traffic::normal_order(&mut customer).status,
            200,
            "{:?}",
            customer.calls
        );
    }
    // The customers just played are learned too: evidence may tighten a rule and the
    // collector serve a newer version; both proxies end on the same one.
    flowguard_integration::patience::eventually("both proxies on one policy version", || {
        let (va, vb) = (
            a.metric("flowguard.policy.version"),
            b.metric("flowguard.policy.version"),
        );
        (va == vb).then_some(())
    })
    .expect("one fleet version");

    // The operator's tools on the same store.
    let shown = collector.tool(&["policy", "show"]).expect("policy show");
    assert!(
        shown.contains("POST /api/orders/{id}/confirm") && shown.contains("requires"),
        "{shown}"
    );
    let svg = collector.tool(&["policy", "graph"]).expect("policy graph");
    assert!(
        svg.starts_with("<svg") && svg.contains("stroke-dasharray"),
        "graph has prerequisites"
    );
    let report = collector.tool(&["replay"]).expect("replay");
    assert!(
        report.contains("would allow") && report.contains("order.missing_prerequisite"),
        "{report}"
    );
}

fn timed(client: &Client, n: usize) -> (Vec<u16>, Duration) {
    let mut statuses = Vec::new();
    let mut times = Vec::new();
    for _ in 0..n {
        let mut s = Session::new(client);
        let started = Instant::now();
        traffic::normal_order(&mut s);
        times.push(started.elapsed() / s.calls.len().max(1) as u32);
        statuses.extend(s.statuses());
    }
    times.sort();
    (statuses, times[times.len() / 2])
}

#[test]
fn a_dead_collector_costs_requests_nothing_and_reporting_resumes() {
    let mut collector = Collector::start(
        &scratch_db("outage").expect("scratch database"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let envoy = envoy_with(&reporting("monitor", QUICK, ""), &shop, &collector);
    let client = Client::new(&envoy.url);
    let (_, before) = timed(&client, 15);

    collector.kill();
    let (statuses, during) = timed(&client, 15);
    assert!(
        statuses.iter().all(|s| *s < 500),
        "requests unaffected: {statuses:?}"
    );
    assert!(
        during <= before * 3 + Duration::from_millis(5),
        "median {during:?} with the collector down, {before:?} before"
    );
    let lost = eventually("the outage's events to be counted", || {
        let n = envoy.counter("flowguard.telemetry.failed")
            + envoy.counter("flowguard.telemetry.dropped");
        (n > 0).then_some(n)
    })
    .expect("drops counted");

    collector.restart().expect("collector restarts");
    let stored_before = collector.stats().expect("stats").0;
    traffic::play_normal(&client, 5);
    eventually("reporting to resume", || {
        (collector.stats().ok()?.0 > stored_before).then_some(())
    })
    .expect("reporting resumed");
    eprintln!("outage: median per request {before:?} -> {during:?}, {lost} events counted lost");
}

#[test]
fn no_acknowledged_event_is_lost_when_the_collector_is_killed_mid_write() {
    let mut collector = Collector::start(
        &scratch_db("kill").expect("scratch database"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let envoy = envoy_with(
        &reporting("monitor", QUICK, r#","batch_events":20"#),
        &shop,
        &collector,
    );
    let url = envoy.url.clone();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let acknowledged = std::thread::scope(|s| {
        s.spawn(|| {
            let client = Client::new(&url);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                traffic::play_normal(&client, 1);
            }
        });
        eventually("batches to flow", || {
            (envoy.counter("flowguard.telemetry.sent") > 200).then_some(())
        })
        .expect("telemetry flowing");
        collector.kill(); // SIGKILL while batches are being written
        let acked = envoy.counter("flowguard.telemetry.sent");
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        acked
    });
    collector
        .restart()
        .expect("collector restarts on the same database");
    let (stored, _, _) = collector.stats().expect("stats");
    assert!(
        stored >= acknowledged,
        "{acknowledged} events were acknowledged, {stored} survived"
    );
}

#[test]
fn the_collector_takes_telemetry_only_from_filters_with_its_token() {
    let token = "s3cret-token-for-the-fleet";
    let collector = Collector::start(
        &scratch_db("token").expect("scratch database"),
        &["--learn-interval-s", "0", "--token", token],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let intruder = envoy_with(
        &reporting("monitor", QUICK, r#","token":"wrong-token-0123456789""#),
        &shop,
        &collector,
    );
    let member = envoy_with(
        &reporting("monitor", QUICK, &format!(r#","token":"{token}""#)),
        &shop,
        &collector,
    );
    traffic::play_normal(&Client::new(&intruder.url), 5);
    eventually("the intruder's batches refused", || {
        (intruder.counter("flowguard.telemetry.failed") > 0).then_some(())
    })
    .expect("refused and counted");
    assert_eq!(
        collector.stats().expect("stats").0,
        0,
        "nothing from a wrong token is stored"
    );
    assert_eq!(intruder.counter("flowguard.telemetry.sent"), 0);
    traffic::play_normal(&Client::new(&member.url), 5);
    eventually("the member's events stored", || {
        (collector.stats().ok()?.0 > 0).then_some(())
    })
    .expect("stored");
}
