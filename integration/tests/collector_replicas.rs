//! Two collectors (`flowguard serve --db postgres://…`) sharing one real PostgreSQL
//! (a throwaway cluster), driven over real gRPC: a batch sent through both is stored
//! once; one learner at a time; both serve the database's policy; one replica killed with
//! SIGKILL mid-stream loses nothing it acknowledged and duplicates nothing; and a filter
//! reporting through one Envoy cluster of both keeps reporting when one dies.

use flowguard_integration::collector::{run_flowguard, Collector};
use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::postgres::Postgres;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{Client, Session};
use flowguard_proto::v1;
use flowguard_proto::v1::policies_client::PoliciesClient;
use flowguard_proto::v1::telemetry_client::TelemetryClient;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CONFIG: &str = r#"{"learning":{"min_sessions":40,"min_requests":200,"min_support":5}}"#;
/// The learner's advisory lock key (collector/src/pg.rs).
const LEARNER_LOCK: i64 = 0x666c_6f77_0002;
const STEPS: [&str; 4] = [
    "GET /shop/items",
    "POST /shop/cart",
    "POST /shop/pay",
    "POST /shop/confirm",
];

/// `sessions` customers walking the shop's four steps, as one batch.
fn batch(id: u64, first_session: u64, sessions: u64) -> v1::ReportRequest {
    let events = (first_session..first_session + sessions)
        .flat_map(|s| {
            STEPS.iter().enumerate().map(move |(i, t)| v1::Event {
                time_ms: 1_700_000_000_000 + s * 100 + i as u64,
                session: 0x9e37_79b9_7f4a_7c15_u64.wrapping_mul(s + 1),
                template: (*t).into(),
                status: 200,
                verdict: v1::Verdict::Allow.into(),
                rules: vec![],
                latency_us: 300,
                summary: true,
                ids: 0,
                weak_session: false,
                request_id: String::new(),
            })
        })
        .collect();
    v1::ReportRequest {
        node: "edge-1".into(),
        worker: 0,
        policy_version: 0,
        mode: String::new(),
        batch_id: id,
        dropped: 0,
        events,
    }
}

async fn channel(c: &Collector) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn telemetry(c: &Collector) -> TelemetryClient<tonic::transport::Channel> {
    TelemetryClient::new(channel(c).await)
}

async fn served_version(c: &Collector) -> u64 {
    let mut client = PoliciesClient::new(channel(c).await);
    let answer = client
        .get_policy(v1::GetPolicyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        answer.unchanged || !answer.policy_json.is_empty(),
        "{answer:?}"
    );
    answer.version
}

async fn sql_count(db: &tokio_postgres::Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_postgres_store_once_learn_once_and_survive_a_sigkill() {
    let pg = Postgres::start().unwrap();
    let url = pg.url();
    let dir = std::env::temp_dir().join(format!("fg-replicas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.json");
    std::fs::write(&config, CONFIG).unwrap();
    let config = config.display().to_string();
    let args = ["--config", config.as_str(), "--learn-interval-s", "0"];
    let mut a = Collector::start(Path::new(&url), &args).unwrap();
    let b = Collector::start(Path::new(&url), &args).unwrap();
    let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);

    // 1. The same batch through both replicas at once: stored once.
    let first = batch(1, 0, 60);
    let (mut ta, mut tb) = (telemetry(&a).await, telemetry(&b).await);
    let (ra, rb) = tokio::join!(ta.report(first.clone()), tb.report(first.clone()));
    let stored = ra.unwrap().into_inner().stored + rb.unwrap().into_inner().stored;
    assert_eq!(
        stored, 240,
        "one replica stores the batch, the other skips it"
    );
    assert_eq!(sql_count(&db, "events").await, 240);
    assert_eq!(sql_count(&db, "batches").await, 1);

    // 2. One learner at a time: while another holds the learner's lock, learning waits.
    db.execute("SELECT pg_advisory_lock($1)", &[&LEARNER_LOCK])
        .await
        .unwrap();
    let learn = |url: String, config: String| {
        tokio::task::spawn_blocking(move || {
            run_flowguard(&["learn", "--db", &url, "--config", &config])
        })
    };
    let (code, _, err) = learn(url.clone(), config.clone()).await.unwrap();
    assert_ne!(code, 0);
    assert!(err.contains("another collector is learning"), "{err}");
    assert_eq!(sql_count(&db, "policies").await, 0);
    db.execute("SELECT pg_advisory_unlock($1)", &[&LEARNER_LOCK])
        .await
        .unwrap();
    let (code, out, err) = learn(url.clone(), config.clone()).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let version: i64 = db
        .query_one("SELECT MAX(version) FROM policies", &[])
        .await
        .unwrap()
        .get(0);
    let version = version as u64;

    // 3. Both replicas serve the database's policy, although neither learned it.
    assert_eq!(served_version(&a).await, version);
    assert_eq!(served_version(&b).await, version);

    // 4. Four streams of batches into replica A; SIGKILL while they run. What A did not
    // acknowledge is sent again through B, as a filter's retry through the cluster would.
    const BATCHES: u64 = 300;
    let next = Arc::new(AtomicU64::new(2));
    let acked_by_a = Arc::new(AtomicU64::new(0));
    let unacked = Arc::new(Mutex::new(Vec::new()));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (next, acked_by_a, unacked) = (next.clone(), acked_by_a.clone(), unacked.clone());
        let mut client = telemetry(&a).await;
        senders.push(tokio::spawn(async move {
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id > BATCHES + 1 {
                    break;
                }
                match client.report(batch(id, id * 10, 5)).await {
                    Ok(_) => {
                        acked_by_a.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => unacked.lock().unwrap().push(id),
                }
            }
        }));
    }
    while acked_by_a.load(Ordering::Relaxed) < 60 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::task::block_in_place(|| a.kill());
    for s in senders {
        s.await.unwrap();
    }
    let unacked = std::mem::take(&mut *unacked.lock().unwrap());
    let acked = acked_by_a.load(Ordering::Relaxed);
    assert_eq!(acked + unacked.len() as u64, BATCHES);
    assert!(
        !unacked.is_empty(),
        "the kill landed after the stream ended"
    );
    let mut already = 0;
    for id in &unacked {
        let stored = tb
            .report(batch(*id, id * 10, 5))
            .await
            .unwrap()
            .into_inner()
            .stored;
        if stored == 0 {
            already += 1; // A committed it, then died before answering
        }
    }
    eprintln!(
        "replica A acknowledged {acked} batches before SIGKILL; {} resent through B, {already} of them A had already stored",
        unacked.len()
    );
    assert_eq!(
        sql_count(&db, "batches").await,
        1 + BATCHES as i64,
        "every batch stored once"
    );
    assert_eq!(
        sql_count(&db, "events").await,
        240 + BATCHES as i64 * 20,
        "no event lost, none twice"
    );
    // 5. The survivor still serves the policy.
    assert_eq!(served_version(&b).await, version);
    let (code, out, _) = run_flowguard(&["stats", "--db", &url]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("events {}", 240 + BATCHES * 20)),
        "{out}"
    );
    drop(b);
    let _ = std::fs::remove_dir_all(&dir);
    drop(pg);
}

/// Reports every request, flushes every 100 ms; never learns by itself.
const REPORTING: &str = r#"{"mode":"monitor","learning":{"min_sessions":1000000,"min_requests":1000000,"tick_ms":100},
    "collector":{"cluster":"flowguard_collector","node":"edge","sample_rate":1.0,
                 "flush_interval_ms":100,"timeout_ms":1000,"policy_interval_ms":300}}"#;

fn customers(client: &Client, n: usize) {
    for _ in 0..n {
        let mut s = Session::new(client);
        s.menu();
        assert!(s.statuses().iter().all(|st| *st == 200));
    }
}

#[test]
fn a_filter_reports_through_one_cluster_of_replicas_and_survives_losing_one() {
    let pg = Postgres::start().unwrap();
    let url = pg.url();
    let args = ["--learn-interval-s", "0"];
    let mut a = Collector::start(Path::new(&url), &args).unwrap();
    let b = Collector::start(Path::new(&url), &args).unwrap();
    let shop = ShopServer::start().unwrap();
    let mut cfg = EnvoyConfig::new(REPORTING, shop.addr);
    cfg.collector = Some(a.addr);
    cfg.collector_replicas = vec![b.addr];
    let envoy = Envoy::start(&cfg).unwrap();
    let client = Client::new(&envoy.url);
    let sent = |e: &Envoy| e.counter("flowguard.telemetry.sent");
    let failed = |e: &Envoy| {
        e.counter("flowguard.telemetry.failed") + e.counter("flowguard.telemetry.dropped")
    };

    customers(&client, 100);
    let before = eventually("reports of 100 requests acknowledged", || {
        (sent(&envoy) >= 100).then(|| sent(&envoy))
    })
    .unwrap();
    a.kill();
    // A batch that goes to the dead replica fails (and is counted); Envoy's balancer sends
    // the others to the survivor. Customers keep coming, a few per flush, so that more
    // than one or two batches are sent (both could go to the dead one), until the
    // survivor has acknowledged some.
    let mut requests = 100;
    for _ in 0..40 {
        customers(&client, 10);
        requests += 10;
        std::thread::sleep(std::time::Duration::from_millis(150));
        if requests >= 300 && sent(&envoy) > before {
            break;
        }
    }
    let (acked, lost) = eventually("every report answered", || {
        let (s, f) = (sent(&envoy), failed(&envoy));
        (s + f >= requests).then_some((s, f))
    })
    .unwrap();
    let stored = b.stats().unwrap().0;
    eprintln!(
        "through one cluster: {before} acknowledged before SIGKILL of one replica; in all {acked} acknowledged, {lost} counted failed, {stored} stored"
    );
    assert!(acked > before, "the surviving replica took the reports");
    assert!(stored >= acked, "{acked} acknowledged, {stored} stored");
    assert!(stored <= acked + lost, "nothing stored twice");
    drop(envoy);
    drop(b);
    drop(pg);
}
