//! Mid-flow joins on evidence, through real Envoys and the real collector: a session new
//! to a proxy whose first request skips a step is let through only if the fleet saw it
//! take that step (`Sessions.Completed`); without an answer in time, the per-address
//! budget applies, flagged and counted.
//!
//! Proxies are addressed directly here (a session "moves" by being sent to another one),
//! so every case is deterministic; `fleet.rs` moves sessions the real way, through a
//! ring-hash edge and a killed proxy.

use flowguard_engine::config::Settings;
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use flowguard_integration::collector::{scratch_db, Collector};
use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Reply, GOOD_CARD};
use flowguard_proto::v1::sessions_client::SessionsClient;
use flowguard_proto::v1::CompletedRequest;
use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "x-client-ip";
const PAY: &str = "POST /api/orders/{id}/pay";

const POLICY: &str = r#"{"version":3,"endpoints":[
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

/// A flowguard Envoy reporting to `collector`. Sampling is off and the regular flush is
/// slow: what the fleet knows comes from the prompt reports alone.
fn proxy(shop: &ShopServer, collector: &Collector, midflow: &str) -> Envoy {
    proxy_in("enforce", shop, collector, midflow)
}

fn proxy_in(mode: &str, shop: &ShopServer, collector: &Collector, midflow: &str) -> Envoy {
    proxy_with(POLICY, mode, shop, collector, midflow)
}

fn proxy_with(
    policy: &str,
    mode: &str,
    shop: &ShopServer,
    collector: &Collector,
    midflow: &str,
) -> Envoy {
    let json = format!(
        r#"{{"mode":"{mode}","session":{{"midflow":{midflow}}},"policy":{policy},
            "collector":{{"cluster":"flowguard_collector","node":"fleet","sample_rate":0.0,
                         "flush_interval_ms":5000,"timeout_ms":1000,"policy_interval_ms":0}}}}"#
    );
    let mut cfg = EnvoyConfig::new(&json, shop.addr);
    cfg.collector = Some(collector.addr);
    cfg.client_ip_header = Some(CLIENT_IP);
    Envoy::start(&cfg).expect("a flowguard Envoy")
}

/// A shop customer: a session cookie and a client address, sent to whichever proxy.
struct Customer {
    cookie: String,
    ip: String,
}

impl Customer {
    fn new(name: &str, i: usize) -> Customer {
        Customer {
            cookie: format!("session={name}-{i}-{:08x}", fastrand::u32(..)),
            ip: traffic::numbered_address(i),
        }
    }

    fn call(&self, at: &Client, method: &str, path: &str, body: Option<Value>) -> Reply {
        let headers = [
            ("cookie", self.cookie.as_str()),
            (CLIENT_IP, self.ip.as_str()),
        ];
        at.send(method, path, &headers, body.as_ref())
    }

    fn login(&self, at: &Client) -> Reply {
        let body = json!({"user": "alice", "password": "secret"});
        self.call(at, "POST", "/api/login", Some(body))
    }

    fn order(&self, at: &Client) -> u64 {
        let reply = self.call(at, "POST", "/api/orders", None);
        serde_json::from_str::<Value>(&reply.body)
            .ok()
            .and_then(|v| v.get("id")?.as_u64())
            .expect("an order id")
    }

    fn pay(&self, at: &Client, order: u64) -> Reply {
        let body = json!({"card": GOOD_CARD});
        self.call(at, "POST", &format!("/api/orders/{order}/pay"), Some(body))
    }

    fn confirm(&self, at: &Client, order: u64) -> Reply {
        self.call(at, "POST", &format!("/api/orders/{order}/confirm"), None)
    }
}

/// The session fingerprint the proxy told the upstream (`x-flowguard-session`).
fn fingerprint(reply: &Reply) -> u64 {
    let hex = reply
        .upstream
        .split(" | ")
        .find_map(|h| h.strip_prefix("x-flowguard-session="))
        .expect("the session header reached the shop");
    u64::from_str_radix(hex, 16).expect("hex")
}

/// The session fingerprint of a `cookie` header, as the filter computes it (default
/// `session.sources` and `hash_key`), for an upstream that does not echo it.
fn session_of(cookie: &str) -> u64 {
    let settings = Settings::from_json(b"{}").expect("settings");
    let sources = &settings.session.sources;
    let key =
        flowguard_engine::session::derive(sources, |n| (n == "cookie").then_some(cookie), None)
            .expect("a session key");
    settings
        .session
        .fingerprinter
        .fingerprint(key.kind, key.value.as_bytes())
}

/// The identifier hash of a path's `{id}` values, as the filter computes it.
fn ids_of(method: &str, path: &str) -> u64 {
    let settings = Settings::from_json(b"{}").expect("settings");
    let policy = Policy::from_json(POLICY.as_bytes()).expect("policy");
    let model = Model::compile(&policy, &settings).expect("model");
    let mut template = String::new();
    model
        .normaliser
        .normalise(method, path, &mut template)
        .expect("an identifier")
}

/// Asks the collector directly, as a proxy does.
struct Fleet {
    runtime: tokio::runtime::Runtime,
    client: SessionsClient<tonic::transport::Channel>,
}

impl Fleet {
    fn connect(collector: &Collector) -> Fleet {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let url = format!("http://{}", collector.addr);
        let channel = runtime
            .block_on(
                tonic::transport::Endpoint::from_shared(url)
                    .expect("url")
                    .connect(),
            )
            .expect("the collector's Sessions service");
        let client = SessionsClient::new(channel);
        Fleet { runtime, client }
    }

    /// Whether the fleet answers that `session` paid order `ids`.
    fn paid(&mut self, session: u64, ids: u64) -> bool {
        let question = CompletedRequest {
            session,
            templates: vec![PAY.to_owned()],
            ids,
            horizon_s: 1800,
        };
        self.runtime
            .block_on(self.client.completed(question))
            .is_ok_and(|a| a.into_inner().on_object.iter().any(|t| t == PAY))
    }
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() - 1) * p / 100]
}

fn blocked(r: &Reply) -> bool {
    r.status == 403 && r.body.contains("request blocked")
}

#[test]
fn the_fleets_evidence_lets_customers_in_and_every_skip_is_blocked() {
    let collector = Collector::start(
        &scratch_db("fleet-join").expect("db"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    // Budgets open at any time (`always`, 3 per address): the fallback a fleet without
    // evidence would use. The third proxy never asks the fleet: what this replaces.
    let a = proxy(&shop, &collector, r#"{"always":true}"#);
    let b = proxy(&shop, &collector, r#"{"always":true}"#);
    let trusting = proxy(&shop, &collector, r#"{"always":true,"fleet_timeout_ms":0}"#);
    let (at_a, at_b, at_trusting) = (
        Client::new(&a.url),
        Client::new(&b.url),
        Client::new(&trusting.url),
    );
    let mut fleet = Fleet::connect(&collector);

    // Customers pay at A; how soon the fleet can tell B so is measured per payment.
    let mut gaps = Vec::new();
    let customers: Vec<(Customer, u64)> = (0..20)
        .map(|i| {
            let c = Customer::new("customer", 1_000 + i);
            assert_eq!(c.login(&at_a).status, 200);
            let order = c.order(&at_a);
            let paid = c.pay(&at_a, order);
            let done = Instant::now();
            assert_eq!(paid.status, 200, "{}", paid.body);
            let (fp, ids) = (
                fingerprint(&paid),
                ids_of("POST", &format!("/api/orders/{order}/pay")),
            );
            // Polled every 2 ms, so the figure is the gap, not the polling interval.
            while !fleet.paid(fp, ids) {
                assert!(done.elapsed() < Duration::from_secs(10), "never reported");
                std::thread::sleep(Duration::from_millis(2));
            }
            gaps.push(done.elapsed());
            (c, order)
        })
        .collect();
    gaps.sort();
    println!(
        "reporting gap (payment answered at A -> the collector answers it), 20 payments: \
         median {:?}, p90 {:?}, max {:?}",
        percentile(&gaps, 50),
        percentile(&gaps, 90),
        gaps[gaps.len() - 1]
    );
    // Reports go out at once, not with the 5 s flush: nine in ten within a second. One
    // may wait for a resend (a 1 s callout timeout while the collector's durable write
    // stalls on a busy disk), but none waits for the flush.
    assert!(
        percentile(&gaps, 90) < Duration::from_millis(1000)
            && gaps[gaps.len() - 1] < Duration::from_millis(4000),
        "prompt reports lag: {gaps:?}"
    );

    // At B (new to each of them) they confirm and look at the order: nobody is blocked,
    // and the order rule does not even flag (the steps were seen, elsewhere).
    let mut first_at_b = Vec::new();
    for (c, order) in &customers {
        let started = Instant::now();
        let confirmed = c.confirm(&at_b, *order);
        first_at_b.push(started.elapsed());
        assert_eq!(confirmed.status, 200, "{}", confirmed.body);
        let verdict = confirmed.upstream_verdict().unwrap_or_default().to_owned();
        assert!(!verdict.contains("order.missing_prerequisite"), "{verdict}");
        let status = c.call(&at_b, "GET", &format!("/api/orders/{order}"), None);
        assert_eq!(status.status, 200);
    }
    first_at_b.sort();
    println!(
        "a moved customer's first request at B (paused for the fleet's answer): median {:?}, max {:?}",
        percentile(&first_at_b, 50),
        first_at_b[first_at_b.len() - 1]
    );
    b.counter_at_least("flowguard.midflow.fleet_joined", 20)
        .expect("20 joined on evidence");

    // 50 step-skippers from 50 addresses, each new to B: 25 never seen anywhere, 25 who
    // logged in and ordered at A but never paid. Every one is blocked at B, where a
    // budget of 3 per address would have let each through.
    let skippers: Vec<(Customer, u64)> = (0..50)
        .map(|i| {
            let s = Customer::new("skipper", 50_000 + i);
            let order = if i % 2 == 0 {
                1_000_000 + i as u64
            } else {
                s.login(&at_a);
                s.order(&at_a)
            };
            (s, order)
        })
        .collect();
    // Their logins and orders reach the fleet first (as a customer's would).
    std::thread::sleep(percentile(&gaps, 90) * 3);
    let refused = skippers
        .iter()
        .filter(|(s, order)| blocked(&s.confirm(&at_b, *order)))
        .count();
    println!("fresh sessions from 50 addresses skipping payment at B: {refused} of 50 blocked");
    assert_eq!(refused, 50);
    b.counter_at_least("flowguard.midflow.fleet_refused", 50)
        .expect("50 refused on the fleet's answer");
    assert_eq!(
        b.counter("flowguard.sessions.midflow"),
        0,
        "no budget spent"
    );
    assert_eq!(b.metric("flowguard.midflow.fleet_unavailable"), 0);

    // The same skips at a proxy that trusts new sessions within the budget: all pass.
    let passed = skippers
        .iter()
        .map(|(s, order)| {
            let again = Customer {
                cookie: format!("{}-again", s.cookie),
                ip: s.ip.clone(),
            };
            again.confirm(&at_trusting, *order)
        })
        .filter(|r| r.status != 0 && !blocked(r))
        .count();
    println!("the same skips at a proxy without the fleet's evidence: {passed} of 50 passed");
    assert_eq!(passed, 50);

    // In monitor the fleet is asked too, so the verdict the upstream is told is the one
    // enforce would act on: a moved customer is not said to skip, a skipper is.
    let monitor = proxy_in("monitor", &shop, &collector, r#"{"always":true}"#);
    let at_monitor = Client::new(&monitor.url);
    let (customer, order) = &customers[0];
    let moved = Customer {
        cookie: customer.cookie.clone(),
        ip: customer.ip.clone(),
    };
    let told = moved.confirm(&at_monitor, *order);
    let verdict = told.upstream_verdict().unwrap_or_default().to_owned();
    assert!(
        told.status == 200 && !verdict.contains("order.missing_prerequisite"),
        "{verdict}"
    );
    let (skipper, order) = &skippers[1];
    let told = skipper.confirm(&at_monitor, *order);
    let verdict = told.upstream_verdict().unwrap_or_default().to_owned();
    assert!(
        told.status == 200
            && verdict.starts_with("block")
            && verdict.contains("order.missing_prerequisite"),
        "{verdict}"
    );
}

/// A raw request whose client gives up after `wait`: the stream is reset while the
/// filter holds it.
fn abandoned_request(url: &str, c: &Customer, order: u64, wait: Duration) {
    let addr = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    let request = format!(
        "POST /api/orders/{order}/confirm HTTP/1.1\r\nhost: shop\r\ncookie: {}\r\n{CLIENT_IP}: {}\r\ncontent-length: 0\r\n\r\n",
        c.cookie, c.ip
    );
    stream.write_all(request.as_bytes()).expect("write");
    std::thread::sleep(wait);
    drop(stream);
}

#[test]
fn without_the_fleets_answer_in_time_the_budget_applies_flagged_and_counted() {
    let collector = Collector::start(
        &scratch_db("fleet-join-fallback").expect("db"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let a = proxy(&shop, &collector, r#"{"always":true,"budget":2}"#);
    let b = proxy(&shop, &collector, r#"{"always":true,"budget":2}"#);
    // A patient proxy (1 s deadline), for a client that leaves while it waits.
    let patient = proxy(
        &shop,
        &collector,
        r#"{"always":true,"budget":2,"fleet_timeout_ms":1000}"#,
    );
    let (at_a, at_b) = (Client::new(&a.url), Client::new(&b.url));

    // A customer pays at A; then the collector stalls (stopped, its port still open).
    let customer = Customer::new("customer", 7);
    customer.login(&at_a);
    let order = customer.order(&at_a);
    let paid = customer.pay(&at_a, order);
    assert_eq!(paid.status, 200);
    let mut fleet = Fleet::connect(&collector);
    let (fp, ids) = (
        fingerprint(&paid),
        ids_of("POST", &format!("/api/orders/{order}/pay")),
    );
    eventually("the payment reported", || fleet.paid(fp, ids).then_some(())).expect("reported");
    collector.freeze();

    // At B the question times out (50 ms): the budget lets the customer in, flagged.
    let started = Instant::now();
    let confirmed = customer.confirm(&at_b, order);
    let waited = started.elapsed();
    println!("a confirm at B while the collector is stalled: {waited:?} (deadline 50 ms)");
    assert_eq!(confirmed.status, 200, "{}", confirmed.body);
    let verdict = confirmed.upstream_verdict().unwrap_or_default().to_owned();
    assert!(
        verdict.starts_with("flag") && verdict.contains("order.missing_prerequisite"),
        "{verdict}"
    );
    assert!(waited >= Duration::from_millis(50), "{waited:?}");
    // The same address's next new sessions skipping payment: one more budgeted join
    // (budget 2), then blocks.
    let statuses: Vec<u16> = (0..3)
        .map(|i| {
            let rotated = Customer {
                cookie: format!("session=rotated-{i}"),
                ip: customer.ip.clone(),
            };
            rotated.confirm(&at_b, 4_000 + i).status
        })
        .collect();
    assert_eq!(statuses, [200, 403, 403]);

    // A client leaving while its request waits for a stalled collector: the stream is
    // reset in the pause; the proxy goes on serving.
    let leaving = Customer::new("leaving", 8);
    abandoned_request(&patient.url, &leaving, 5_000, Duration::from_millis(200));
    // Its question's deadline passes after the stream is gone: the answer (gRPC status
    // 4) arrives for a context that no longer exists.
    std::thread::sleep(Duration::from_millis(1_000));

    // Unreachable (killed): the same fallback, at once.
    collector.thaw();
    drop(fleet);
    let mut collector = collector;
    collector.kill();
    let elsewhere = Customer::new("customer", 9);
    let started = Instant::now();
    let confirmed = elsewhere.confirm(&at_b, 6_000);
    println!(
        "a new session's skip at B with the collector down: {} in {:?}",
        confirmed.status,
        started.elapsed()
    );
    assert_eq!(
        confirmed.status, 200,
        "the budget (its address's first join)"
    );
    b.counter_at_least("flowguard.midflow.fleet_unavailable", 5)
        .expect("every unanswered question counted");
    assert_eq!(b.metric("flowguard.midflow.fleet_unavailable"), 5);
    assert_eq!(b.metric("flowguard.sessions.midflow"), 3, "joins on budget");
    assert_eq!(b.metric("flowguard.midflow.fleet_joined"), 0);

    // The patient proxy lived through the reset stream, and its deadline still ends
    // a question to a dead collector.
    let after = Customer::new("after", 10);
    let reply = after.confirm(&Client::new(&patient.url), 7_000);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        !patient.log().contains("VM is now unusable"),
        "the patient proxy panicked:\n{}",
        patient.log()
    );
    patient
        .counter_at_least("flowguard.midflow.fleet_asked", 2)
        .expect("both asked");
}

/// The same question on PostgreSQL, where several collector replicas share one database:
/// one replica stores a proxy's report, another answers for it.
#[test]
fn replicas_on_postgres_answer_for_each_others_reports() {
    use flowguard_integration::postgres::Postgres;
    use flowguard_proto::v1::telemetry_client::TelemetryClient;
    use flowguard_proto::v1::{Event, ReportRequest, Verdict};

    let pg = Postgres::start().expect("PostgreSQL");
    let url = pg.url();
    let args = ["--learn-interval-s", "0"];
    let stores = Collector::start(std::path::Path::new(&url), &args).expect("replica a");
    let answers = Collector::start(std::path::Path::new(&url), &args).expect("replica b");
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let event = |session: u64, template: &str, status: u32, ids: u64, age_s: u64| Event {
        time_ms: now_ms - age_s * 1000,
        session,
        template: template.to_owned(),
        status,
        verdict: Verdict::Allow.into(),
        ids,
        ..Event::default()
    };
    let report = ReportRequest {
        node: "proxy-1".into(),
        batch_id: 1,
        worker: 1,
        dropped: 0,
        events: vec![
            event(9, "POST /api/login", 200, 0, 10),
            event(9, PAY, 200, 77, 5),
            event(9, PAY, 402, 78, 4),
            event(10, "POST /api/login", 401, 0, 3),
            event(12, "POST /api/login", 200, 0, 7_200),
        ],
        ..ReportRequest::default()
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let channel = |c: &Collector| {
            let endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{}", c.addr)).expect("url");
            async move { endpoint.connect().await }
        };
        let mut telemetry = TelemetryClient::new(channel(&stores).await.expect("replica a"));
        let stored = telemetry.report(report).await.expect("stored").into_inner();
        assert_eq!(stored.stored, 5);
        let mut sessions = SessionsClient::new(channel(&answers).await.expect("replica b"));
        let paid = ask(&mut sessions, 9, 77).await;
        assert!(paid.known);
        assert_eq!(paid.completed, ["POST /api/login", PAY]);
        assert_eq!(paid.on_object, [PAY]);
        let declined = ask(&mut sessions, 9, 78).await;
        assert!(declined.on_object.is_empty(), "its payment was declined");
        let failed = ask(&mut sessions, 10, 0).await;
        assert!(failed.known && failed.completed.is_empty());
        let old = ask(&mut sessions, 12, 0).await;
        assert!(!old.known, "beyond the horizon");
        assert!(!ask(&mut sessions, 11, 0).await.known);
    });
}

async fn ask(
    sessions: &mut SessionsClient<tonic::transport::Channel>,
    session: u64,
    ids: u64,
) -> flowguard_proto::v1::CompletedResponse {
    let question = CompletedRequest {
        session,
        templates: vec![
            "POST /api/login".into(),
            "POST /api/orders".into(),
            PAY.into(),
        ],
        ids,
        horizon_s: 1800,
    };
    sessions
        .completed(question)
        .await
        .expect("answered")
        .into_inner()
}

/// An API that answers a failed login `200 {"status": "fail"}` (`endpoints.failure`): the
/// fleet hears the login's outcome once its body is judged, so a failed login at one proxy
/// is no evidence at another.
#[test]
fn a_failure_answered_2xx_is_no_evidence() {
    let collector = Collector::start(
        &scratch_db("fleet-join-failure").expect("db"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let library = ShopServer::library().expect("library");
    let json = r#"{"mode":"enforce","policy":{"version":1,"endpoints":[
            {"template":"POST /api/v2/users/login","entry":true},
            {"template":"POST /api/v2/loans","prerequisites":["POST /api/v2/users/login"]}],
          "transitions":[{"from":"^","to":"POST /api/v2/users/login","count":1},
            {"from":"POST /api/v2/users/login","to":"POST /api/v2/loans","count":1}]},
        "endpoints":{"failure":{"json":{"status":["fail"]},"auth":["POST /api/v2/users/login"]}},
        "collector":{"cluster":"flowguard_collector","node":"fleet","sample_rate":0.0,
                     "flush_interval_ms":5000,"timeout_ms":1000,"policy_interval_ms":0}}"#;
    let mut cfg = EnvoyConfig::new(json, library.addr);
    cfg.collector = Some(collector.addr);
    cfg.client_ip_header = Some(CLIENT_IP);
    let a = Envoy::start(&cfg).expect("proxy a");
    let b = Envoy::start(&cfg).expect("proxy b");
    let (at_a, at_b) = (Client::new(&a.url), Client::new(&b.url));
    let mut fleet = Fleet::connect(&collector);
    let login = |c: &Customer, password: &str| {
        let body = json!({"username": "reader_a", "password": password});
        c.call(&at_a, "POST", "/api/v2/users/login", Some(body))
    };
    let reported = |fleet: &mut Fleet, c: &Customer| {
        let question = CompletedRequest {
            session: session_of(&c.cookie),
            templates: vec!["POST /api/v2/users/login".into()],
            ids: 0,
            horizon_s: 1800,
        };
        eventually("the login reported", || {
            let a = fleet
                .runtime
                .block_on(fleet.client.completed(question.clone()))
                .ok()?
                .into_inner();
            a.known.then_some(a.completed.len())
        })
        .expect("reported")
    };
    let failed = Customer::new("failed", 20);
    let reply = login(&failed, "wrong");
    assert!(
        reply.status == 200 && reply.body.contains("fail"),
        "{reply:?}"
    );
    assert_eq!(
        reported(&mut fleet, &failed),
        0,
        "a failed login completes nothing"
    );
    let borrowed = failed.call(&at_b, "POST", "/api/v2/loans", None);
    assert!(blocked(&borrowed), "{borrowed:?}");

    let reader = Customer::new("reader", 21);
    let reply = login(&reader, "secret");
    assert!(reply.body.contains("success"), "{reply:?}");
    assert_eq!(reported(&mut fleet, &reader), 1);
    let borrowed = reader.call(&at_b, "POST", "/api/v2/loans", None);
    assert!(!blocked(&borrowed), "{borrowed:?}");
    b.counter_at_least("flowguard.midflow.fleet_refused", 1)
        .expect("refused on the answer");
    b.counter_at_least("flowguard.midflow.fleet_joined", 1)
        .expect("joined on the answer");
}

/// A login that sets a new session cookie continues the flow under the new cookie at the
/// proxy that saw it (`session.handover`); at the edge that cookie may hash to another
/// proxy, which asks the fleet about it: the hand-over is reported, so the customer goes
/// on, while a cookie that never logged in is still refused.
#[test]
fn a_login_cookie_continues_at_another_proxy() {
    const WEB: &str = r#"{"version":4,"endpoints":[
        {"template":"POST /api/auth/session","entry":true},
        {"template":"POST /api/orders","prerequisites":["POST /api/auth/session"]}],
        "transitions":[{"from":"^","to":"POST /api/auth/session","count":1},
                       {"from":"POST /api/auth/session","to":"POST /api/orders","count":1}]}"#;
    let collector = Collector::start(
        &scratch_db("fleet-join-handover").expect("db"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let web_proxy = || proxy_with(WEB, "enforce", &shop, &collector, r#"{"budget":0}"#);
    let (a, b) = (web_proxy(), web_proxy());
    let (at_a, at_b) = (Client::new(&a.url), Client::new(&b.url));
    let mut fleet = Fleet::connect(&collector);

    let anonymous = Customer::new("web", 1);
    let login = anonymous.call(
        &at_a,
        "POST",
        "/api/auth/session",
        Some(json!({"user": "alice", "password": "secret"})),
    );
    let set_cookie = login.set_cookie.expect("the login sets a new cookie");
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    a.counter_at_least("flowguard.sessions.handovers", 1)
        .expect("handed over at proxy A");
    let logged_in = session_of(&cookie);
    eventually("the fleet knows the new cookie logged in", || {
        let question = CompletedRequest {
            session: logged_in,
            templates: vec!["POST /api/auth/session".to_owned()],
            ids: 0,
            horizon_s: 1800,
        };
        fleet
            .runtime
            .block_on(fleet.client.completed(question))
            .ok()
            .filter(|a| {
                a.get_ref()
                    .completed
                    .iter()
                    .any(|t| t == "POST /api/auth/session")
            })
    })
    .expect("the hand-over is reported");

    let customer = Customer {
        cookie,
        ip: anonymous.ip.clone(),
    };
    let order = customer.call(&at_b, "POST", "/api/orders", None);
    assert!(
        !blocked(&order),
        "the logged-in customer is refused at B: {order:?}"
    );
    let stranger = Customer::new("web", 2);
    let skip = stranger.call(&at_b, "POST", "/api/orders", None);
    assert!(
        blocked(&skip),
        "a cookie that never logged in passes: {skip:?}"
    );
}
