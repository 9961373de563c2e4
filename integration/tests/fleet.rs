//! A fleet through real Envoys: an edge Envoy (`envoy/fleet/edge.yaml`: ring hash on the
//! session cookie) in front of three flowguard Envoys that report to one collector and
//! enforce the fleet policy it learns, in front of the demo shop. Normal customers pass
//! and every attack is blocked; then one flowguard Envoy is killed under traffic and
//! started again, and what customers experience is counted, without and with mid-flow
//! joins on the fleet's evidence (`session.midflow`: a moved session's skipped step is
//! let through only if the collector saw it taken at another proxy). The figures it
//! prints are the README's.

use flowguard_integration::collector::{scratch_db, Collector};
use flowguard_integration::envoy::{bootstrap_yaml, repo_root, wasm_path, Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Reply, Session};
use flowguard_proto::v1::sessions_client::SessionsClient;
use flowguard_proto::v1::CompletedRequest;
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "x-client-ip";

fn config(midflow: &str) -> String {
    format!(
        r#"{{"mode":"enforce","session":{{"midflow":{midflow}}},
            "learning":{{"min_sessions":1000000,"min_requests":1000000,"tick_ms":100}},
            "collector":{{"cluster":"flowguard_collector","node":"fleet","sample_rate":1.0,
                         "flush_interval_ms":100,"timeout_ms":1000,"policy_interval_ms":300}}}}"#
    )
}

struct Fleet {
    cfg: EnvoyConfig,
    proxies: Vec<Option<Envoy>>,
    ports: Vec<String>,
    edge: Envoy,
}

impl Fleet {
    fn start(midflow: &str, shop: &ShopServer, collector: &Collector) -> Fleet {
        let mut cfg = EnvoyConfig::new(&config(midflow), shop.addr);
        cfg.collector = Some(collector.addr);
        cfg.client_ip_header = Some(CLIENT_IP);
        let proxies: Vec<Envoy> = (0..3)
            .map(|_| Envoy::start(&cfg).expect("a flowguard Envoy"))
            .collect();
        let ports: Vec<String> = proxies
            .iter()
            .map(|p| p.url.rsplit(':').next().expect("port").to_owned())
            .collect();
        let mut yaml =
            std::fs::read_to_string(repo_root().join("envoy/fleet/edge.yaml")).expect("edge");
        for fixed in ["9902", "8000"] {
            yaml = yaml.replace(&format!("port_value: {fixed}"), "port_value: 0");
        }
        for (i, port) in ports.iter().enumerate() {
            yaml = yaml.replace(
                &format!("port_value: 808{}", i + 1),
                &format!("port_value: {port}"),
            );
        }
        let edge = Envoy::start_yaml(&yaml, 1, "warning").expect("the edge");
        Fleet {
            cfg,
            proxies: proxies.into_iter().map(Some).collect(),
            ports,
            edge,
        }
    }

    fn kill(&mut self, i: usize) {
        drop(self.proxies[i].take());
    }

    /// Starts proxy `i` again on its port, with empty shared data (a restart).
    fn restart(&mut self, i: usize) {
        let yaml = bootstrap_yaml(&self.cfg, &wasm_path().expect("wasm"));
        // The admin port stays free; the listener takes the old port back.
        let listener = yaml
            .match_indices("port_value: 0")
            .nth(1)
            .map(|(at, _)| at)
            .expect("a listener port");
        let yaml = format!(
            "{}port_value: {}{}",
            &yaml[..listener],
            self.ports[i],
            &yaml[listener + "port_value: 0".len()..]
        );
        let envoy = Envoy::start_yaml(&yaml, self.cfg.concurrency, "info").expect("restart");
        envoy.wait_for_model().expect("the fleet policy again");
        self.proxies[i] = Some(envoy);
    }
}

/// What customers met: (customers, of them refused by flowguard, of them failed).
#[derive(Debug, Default, PartialEq)]
struct Met {
    customers: usize,
    blocked: usize,
    failed: usize,
}

fn tally(sessions: &[Session]) -> Met {
    let mut met = Met {
        customers: sessions.len(),
        ..Met::default()
    };
    for s in sessions {
        let refused = |r: &Reply| r.body.contains("request blocked");
        if s.calls.iter().any(|c| refused(&c.reply)) {
            met.blocked += 1;
        } else if s
            .calls
            .iter()
            .any(|c| c.reply.status == 0 || c.reply.status >= 500)
        {
            met.failed += 1;
        }
    }
    met
}

/// Customers half-way through an order (logged in, cart filled, order created).
fn half_way(client: &Client, first: usize, n: usize) -> Vec<(Session<'_>, u64)> {
    (first..first + n)
        .map(|i| {
            let mut s = Session::from_address(client, CLIENT_IP, &traffic::numbered_address(i));
            s.login();
            s.menu();
            s.add_to_cart(1);
            let order = s.create_order();
            (s, order)
        })
        .collect()
}

fn finish(customers: Vec<(Session<'_>, u64)>) -> Vec<Session<'_>> {
    customers
        .into_iter()
        .map(|(mut s, order)| {
            s.pay(order, traffic::GOOD_CARD);
            s.confirm(order);
            s
        })
        .collect()
}

/// Learns, checks customers and attacks, then kills and restarts proxy 0 under traffic.
/// Returns what customers met during the kill and during the restart.
fn run(midflow: &str, db: &str) -> (Met, Met, u64, Duration) {
    let collector = Collector::start(
        &scratch_db(db).expect("db"),
        &["--learn-interval-s", "1", "--config", &quick_config(db)],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let mut fleet = Fleet::start(midflow, &shop, &collector);
    let client = Client::new(&fleet.edge.url);
    traffic::play_normal_from(&client, 80, CLIENT_IP, 0);
    for p in fleet.proxies.iter().flatten() {
        p.wait_for_model()
            .unwrap_or_else(|e| panic!("{e}\n{}", p.log()));
    }

    let customers = finish(half_way(&client, 1_000, 30));
    let wronged: Vec<_> = customers
        .iter()
        .filter(|s| {
            s.calls
                .iter()
                .any(|c| c.reply.body.contains("request blocked"))
        })
        .map(|s| {
            s.calls
                .iter()
                .map(|c| (c.path.clone(), c.reply.status))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        wronged.is_empty(),
        "normal customers blocked: {wronged:?}\n{}",
        fleet.edge.log()
    );
    let attacker = |i: usize| {
        Session::from_address(&client, CLIENT_IP, &traffic::numbered_address(50_000 + i))
    };
    assert_eq!(traffic::skip_payment(&mut attacker(1)).status, 403);
    assert_eq!(traffic::pay_once_confirm_many(&mut attacker(2)).status, 403);
    assert!(traffic::flood(&mut attacker(3), 150).contains(&429));
    // A stuffing bot without cookies: the edge hashes it by address, onto one proxy.
    // (One that rotates cookies is spread over the proxies: each counts its share.)
    let ip = traffic::numbered_address(50_004);
    let stuffing = (0..60).any(|i| {
        let body = serde_json::json!({"user": format!("victim{i}"), "password": "wrong"});
        let headers = [(CLIENT_IP, ip.as_str())];
        client
            .send("POST", "/api/login", &headers, Some(&body))
            .status
            == 429
    });
    assert!(stuffing, "credential stuffing blocked");

    // Kill one proxy with customers half-way: the ring moves its sessions elsewhere. A
    // step completed within the reporting gap before the kill dies with the proxy: the
    // gap until every customer's last step is answerable is measured (under this fleet's
    // load, the collector learning every second), then the proxy is killed.
    let started = half_way(&client, 2_000, 30);
    let gap = reporting_gap(&collector, &started);
    fleet.kill(0);
    let during_kill = tally(&finish(started));
    // Customers who start while it is down, and finish once it is back: their sessions
    // move back to it, and it has forgotten everything (a restart).
    let started = half_way(&client, 3_000, 30);
    fleet.restart(0);
    let back = fleet.proxies[0].as_ref().expect("restarted");
    // Outlier ejection lasts 5 s; then the ring sends its sessions home. Visitors browse
    // meanwhile, and show when it serves again.
    eventually("the restarted proxy back in the ring", || {
        for _ in 0..5 {
            let mut visitor = Session::from_address(&client, CLIENT_IP, "10.9.9.9");
            visitor.menu();
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
        (back.counter("flowguard.requests") > 0).then_some(())
    })
    .expect("the restarted proxy serves again");
    let during_restart = tally(&finish(started));
    let joined = fleet
        .proxies
        .iter()
        .flatten()
        .map(|p| p.counter("flowguard.midflow.fleet_joined"))
        .sum();
    (during_kill, during_restart, joined, gap)
}

/// How long after the last customer's last step the collector answers for every
/// customer's last step (their orders), polled every 2 ms: the proxy is killed only then.
fn reporting_gap(collector: &Collector, customers: &[(Session<'_>, u64)]) -> Duration {
    let mut waiting: Vec<u64> = customers
        .iter()
        .map(|(s, _)| {
            s.calls
                .last()
                .expect("the order")
                .reply
                .upstream
                .split(" | ")
                .find_map(|h| h.strip_prefix("x-flowguard-session="))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                .expect("the session header reached the shop")
        })
        .collect();
    let since = Instant::now();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let url = format!("http://{}", collector.addr);
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("the collector");
        let mut sessions = SessionsClient::new(channel);
        while let Some(&session) = waiting.last() {
            let question = CompletedRequest {
                session,
                templates: vec!["POST /api/orders".to_owned()],
                ..CompletedRequest::default()
            };
            if let Ok(a) = sessions.completed(question).await {
                if !a.into_inner().completed.is_empty() {
                    waiting.pop();
                    continue;
                }
            }
            assert!(since.elapsed() < Duration::from_secs(10), "never reported");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });
    since.elapsed()
}

fn quick_config(db: &str) -> String {
    let path = scratch_db(&format!("{db}-config"))
        .expect("path")
        .with_extension("json");
    std::fs::write(
        &path,
        r#"{"learning":{"min_sessions":60,"min_requests":400,"min_support":5,"prerequisite_ratio":0.9,"confidence":0.9}}"#,
    )
    .expect("config");
    path.display().to_string()
}

#[test]
fn a_fleet_keeps_customers_through_a_proxy_restart() {
    // No budget at all in either run: only the fleet's evidence lets a moved session in.
    let strict = run(r#"{"budget":0,"fleet_timeout_ms":0}"#, "fleet-strict");
    let joined = run(r#"{"budget":0}"#, "fleet-midflow");
    println!("fleet of 3 behind a ring-hash edge, one proxy killed then restarted (30 customers half-way each time):");
    println!(
        "  without mid-flow joins:              kill {:?}, restart {:?}",
        strict.0, strict.1
    );
    println!(
        "  with joins on the fleet's evidence: kill {:?}, restart {:?} ({} sessions joined)",
        joined.0, joined.1, joined.2
    );
    println!(
        "  reporting gap before the kill (the last customer's order -> the collector answers for all 30): {:?}, {:?}",
        strict.3, joined.3
    );
    assert!(
        strict.0.blocked + strict.1.blocked > 0,
        "the strict fleet should show the false blocks a moved session causes"
    );
    assert_eq!(
        joined.0.blocked + joined.1.blocked,
        0,
        "customers blocked with mid-flow joins on evidence"
    );
    assert!(
        joined.2 > 0,
        "moved sessions joined on the fleet's evidence"
    );
    assert!(
        strict.3.max(joined.3) < Duration::from_secs(2),
        "completions reach the collector late: {:?}, {:?}",
        strict.3,
        joined.3
    );
    assert_eq!(strict.2, 0);
    // A request that reaches the dead proxy before the edge ejects it (two connection
    // failures) fails at the edge, whatever flowguard does: a handful at most.
    assert!(
        joined.0.failed + joined.1.failed <= 3,
        "customers failed at the edge: {joined:?}"
    );
}
