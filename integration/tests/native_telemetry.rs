//! The native module (`make native`) reporting to the real collector (`flowguard serve`,
//! tonic + SQLite) from its background thread: every event stored (and durable: read back
//! after the collector is killed), blocked requests with the rule that fired, the module's
//! telemetry counters reported without further traffic, drops counted when the collector
//! stalls, and a fleet policy learned by the collector installed by the module.

use flowguard_integration::collector::{reporting_section, scratch_db, Collector};
use flowguard_integration::envoy::Envoy;
use flowguard_integration::native_envoy::{self, counter};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};

const POLICY: &str = r#""policy":{"version":3,"window_s":10,"endpoints":[
    {"template":"POST /api/login","entry":true},
    {"template":"GET /api/menu","entry":true},
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

fn native(json: &str, shop: &ShopServer, collector: &Collector) -> Envoy {
    let mut cfg = collector.envoy_config(json, shop.addr);
    cfg.concurrency = 2;
    native_envoy::start(&cfg).unwrap_or_else(|e| panic!("Envoy starts with the module: {e}"))
}

/// `(template, status, verdict, rules)` of every stored event, read from the database.
fn stored(db: &std::path::Path) -> Vec<(String, u32, i32, String)> {
    let conn = rusqlite::Connection::open(db).expect("the collector's database");
    let mut rows = conn
        .prepare("SELECT template, status, verdict, rules FROM events WHERE node = 'edge-native'")
        .expect("query");
    rows.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("decoded")
}

#[test]
fn native_events_are_stored_by_the_collector_and_blocks_carry_the_rule() {
    let mut collector = Collector::start(
        &scratch_db("native-events").expect("scratch database"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let envoy = native(
        &format!(
            r#"{{"mode":"enforce",{},{POLICY}}}"#,
            reporting_section("edge-native", "")
        ),
        &shop,
        &collector,
    );
    let client = Client::new(&envoy.url);
    for _ in 0..10 {
        let mut customer = Session::new(&client);
        assert_eq!(traffic::normal_order(&mut customer).status, 200);
    }
    let mut attacker = Session::new(&client);
    assert_eq!(traffic::skip_payment(&mut attacker).status, 403);
    let requests = counter(&envoy, "flowguard.requests");
    assert!(requests >= 60, "{requests} requests");

    // Every request's event is stored once (sample_rate 1.0), acknowledged only once
    // stored; and the module's counters say so with no further request.
    let events = eventually("every event stored", || {
        let (events, _, _) = collector.stats().ok()?;
        (events >= requests).then_some(events)
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?} of {requests}\n{}",
            collector.stats(),
            envoy.log()
        )
    });
    assert_eq!(events, requests, "each request reported once");
    let sent = eventually("the sent counter", || {
        let sent = counter(&envoy, "flowguard.telemetry.sent");
        (sent >= requests).then_some(sent)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert_eq!(sent, requests);
    assert_eq!(
        counter(&envoy, "flowguard.telemetry.dropped")
            + counter(&envoy, "flowguard.telemetry.failed"),
        0
    );

    // Durable: what the collector acknowledged is on disk after a SIGKILL.
    collector.kill();
    let rows = stored(&collector.db);
    assert_eq!(rows.len() as u64, requests);
    let blocked: Vec<_> = rows.iter().filter(|r| r.1 == 403).collect();
    assert_eq!(blocked.len(), 1, "the skip's local reply: {blocked:?}");
    let (template, _, verdict, rules) = blocked[0];
    assert_eq!(template, "POST /api/orders/{id}/confirm");
    assert_eq!(
        *verdict,
        flowguard_proto::v1::Verdict::Block as i32,
        "reported as a block"
    );
    assert!(rules.contains("order.missing_prerequisite"), "{rules}");
    let learning = flowguard_proto::v1::Verdict::Learning as i32;
    let answered = rows
        .iter()
        .filter(|r| r.2 != learning && r.1 / 100 == 2)
        .count();
    assert!(
        answered >= 50,
        "normal orders reported with their verdict and the shop's status: {answered}"
    );
    assert!(
        rows.iter().any(|r| r.0 == "POST /api/orders/{id}/pay"),
        "templates as the policy names them"
    );
}

#[test]
fn a_stalled_collector_costs_requests_nothing_and_drops_are_counted() {
    let collector = Collector::start(
        &scratch_db("native-stall").expect("scratch database"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let envoy = native(
        &format!(
            r#"{{"mode":"enforce",{},{POLICY}}}"#,
            reporting_section("edge-native", r#","buffer_events":10,"batch_events":5"#)
        ),
        &shop,
        &collector,
    );
    let client = Client::new(&envoy.url);
    traffic::play_normal(&client, 2);
    eventually("reporting to start", || {
        (collector.stats().ok()?.0 > 0).then_some(())
    })
    .expect("events stored");

    // The collector stops answering (its port still accepts): batches wait, the buffer
    // fills, events are dropped and counted; requests go on untouched.
    collector.freeze();
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let mut customer = Session::new(&client);
        traffic::normal_order(&mut customer);
        statuses.extend(customer.statuses());
    }
    let elapsed = started.elapsed();
    assert!(
        statuses
            .iter()
            .all(|s| (1..500).contains(s) && *s != 403 && *s != 429),
        "{statuses:?}"
    );
    assert!(
        elapsed < std::time::Duration::from_secs(20),
        "60 requests took {elapsed:?}"
    );
    let dropped = eventually("drops counted", || {
        let n = counter(&envoy, "flowguard.telemetry.dropped");
        (n > 0).then_some(n)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    collector.thaw();
    // The batches' `dropped` field tells the collector too, once it answers again.
    let reported = eventually("the collector told of the drops", || {
        let (_, reported, _) = collector.stats().ok()?;
        (reported > 0).then_some(reported)
    })
    .expect("drops reported in a batch");
    eprintln!("stalled collector: {dropped} events dropped (counted), {reported} reported");
    assert!(
        reported <= dropped,
        "{reported} reported, {dropped} counted"
    );
}

#[test]
fn the_native_module_installs_the_fleet_policy_the_collector_learned() {
    let config = scratch_db("native-fleet-config")
        .expect("scratch database")
        .with_extension("json");
    std::fs::write(
        &config,
        r#"{"learning":{"min_sessions":40,"min_requests":200,"min_support":5,"prerequisite_ratio":0.9,"confidence":0.9}}"#,
    )
    .expect("config");
    let collector = Collector::start(
        &scratch_db("native-fleet").expect("scratch database"),
        &[
            "--learn-interval-s",
            "1",
            "--config",
            config.to_str().expect("utf-8"),
        ],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    // Thresholds the module never reaches: only the fleet can give it a model.
    let json = format!(
        r#"{{"mode":"enforce","learning":{{"min_sessions":1000000,"min_requests":1000000}},{}}}"#,
        reporting_section("edge-native", "")
    );
    let envoy = native(&json, &shop, &collector);
    let client = Client::new(&envoy.url);
    let mut early = Session::new(&client);
    assert_eq!(
        traffic::skip_payment(&mut early).status,
        200,
        "no model yet"
    );
    traffic::play_normal(&client, 60);
    // The gauge is reported from the main thread once the thread installs it.
    let version = eventually("the fleet policy installed", || {
        let v = counter(&envoy, "flowguard.policy.version");
        (v > 1_000_000).then_some(v)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    eventually("the installation logged", || {
        envoy
            .log()
            .contains("flowguard: collector policy version ")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: version {version}\n{}", envoy.log()));
    assert!(counter(&envoy, "flowguard.policy.updates") >= 1);
    assert_eq!(counter(&envoy, "flowguard.policy.refused"), 0);
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
