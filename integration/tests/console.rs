//! The operator's console in a real browser: a real Envoy (2 workers) with the real Wasm
//! filter in front of the demo shop reports to the real collector serving `--console`;
//! normal customers teach the fleet policy and attacks fill the store. Headless Debian
//! Chromium, driven over WebDriver, reads every page (screenshots under
//! target/console-screenshots/): the Fleet page shows the version Envoy runs and its mode,
//! a blocked request's `x-request-id` is listed and found by the search, the flow graph's
//! labels never overlap; it runs a what-if, is refused a decision until it logs in, then
//! switches `order.missing_prerequisite` from the configuration's `flag` to `block`: the
//! new policy version reaches Envoy (and the Fleet page) and the next step-skipping
//! attack gets 403.

use flowguard_integration::browser::Browser;
use flowguard_integration::collector::{scratch_db, Collector};
use flowguard_integration::envoy::{repo_root, Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const CLIENT_IP: &str = "x-client-ip";
const TOKEN: &str = "console-test-token-5b1e";
const RULE: &str = "order.missing_prerequisite";
/// The `x-request-id` of one blocked request: what its customer would quote to support.
const REQUEST_ID: &str = "console-test-req-4f2a";

/// The filter: enforce, the order rule only flags, learning left to the fleet.
const FILTER: &str = r#"{"mode":"enforce",
  "rules":{"order.missing_prerequisite":"flag"},
  "endpoints":{"deprecated":["/api/v1/"]},
  "learning":{"min_sessions":1000000,"min_requests":1000000,"tick_ms":100},
  "collector":{"cluster":"flowguard_collector","node":"edge-1","sample_rate":1.0,
               "flush_interval_ms":100,"timeout_ms":1000,"policy_interval_ms":300}}"#;

/// The collector's: the same rule actions (the what-if replays with them), quick learning.
const COLLECTOR: &str = r#"{"rules":{"order.missing_prerequisite":"flag"},
  "endpoints":{"deprecated":["/api/v1/"]},
  "learning":{"min_sessions":60,"min_requests":400,"min_support":5,"prerequisite_ratio":0.9,"confidence":0.9}}"#;

fn shots() -> PathBuf {
    repo_root().join("target/console-screenshots")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn attacker<'c>(client: &'c Client, i: usize) -> Session<'c> {
    Session::from_address(client, CLIENT_IP, &traffic::numbered_address(60_000 + i))
}

/// The labels of the graph in the page, as the browser laid them out: no two overlap.
const OVERLAPS: &str = r#"
const boxes = Array.from(document.querySelectorAll('#flow text')).map(t => t.getBBox());
let bad = [];
for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
  const a = boxes[i], b = boxes[j];
  if (a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height)
    bad.push([i, j]);
}
return [boxes.length, bad.length];"#;

#[test]
fn the_console_shows_real_traffic_and_a_rule_switched_to_block_reaches_envoy() {
    let started = Instant::now();
    let config = scratch_db("console-config")
        .expect("path")
        .with_extension("json");
    std::fs::write(&config, COLLECTOR).expect("config");
    let port = free_port();
    let console = format!("http://127.0.0.1:{port}");
    let mut collector = Collector::start(
        &scratch_db("console").expect("db"),
        &[
            "--learn-interval-s",
            "1",
            "--config",
            &config.display().to_string(),
            "--console",
            &format!("127.0.0.1:{port}"),
            "--console-token",
            TOKEN,
        ],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let mut cfg = EnvoyConfig::new(FILTER, shop.addr);
    cfg.concurrency = 2;
    cfg.collector = Some(collector.addr);
    cfg.client_ip_header = Some(CLIENT_IP);
    let envoy = Envoy::start(&cfg).expect("Envoy");
    let client = Client::new(&envoy.url);

    fastrand::seed(21);
    traffic::play_normal_from(&client, 90, CLIENT_IP, 0);
    let first = envoy
        .wait_for_model()
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    println!(
        "fleet policy version {first} installed after {:?}",
        started.elapsed()
    );

    // Attacks while the order rule only flags.
    let skipped = traffic::skip_payment(&mut attacker(&client, 1));
    assert_eq!(skipped.status, 200, "only flagged: {skipped:?}");
    let verdict = skipped.upstream_verdict().unwrap_or_default().to_owned();
    assert!(
        verdict.starts_with("flag") && verdict.contains(RULE),
        "{verdict}"
    );
    // A flood from one session, blocked; its last request carries a known x-request-id,
    // which Envoy passes on and the blocked answer quotes.
    let flooder = traffic::numbered_address(60_002);
    let as_flooder = [
        ("cookie", "session=console-flooder"),
        (CLIENT_IP, flooder.as_str()),
    ];
    let login = json!({"user": "alice", "password": "secret"});
    client.send("POST", "/api/login", &as_flooder, Some(&login));
    let flood: Vec<u16> = (0..120)
        .map(|_| client.send("GET", "/api/menu", &as_flooder, None).status)
        .collect();
    assert!(flood.contains(&429), "the flood is blocked");
    let tagged = client.send(
        "GET",
        "/api/menu",
        &[as_flooder[0], as_flooder[1], ("x-request-id", REQUEST_ID)],
        None,
    );
    assert_eq!(tagged.status, 429, "{tagged:?}");
    assert!(tagged.body.contains(REQUEST_ID), "{tagged:?}");
    let mut shadow = attacker(&client, 3);
    shadow.login();
    shadow.call("GET", "/api/internal/export", None);
    shadow.call("GET", "/api/v1/menu", None);
    let requests = envoy.counter("flowguard.requests");
    eventually("every event stored", || {
        (collector.stats().ok()?.0 >= requests).then_some(())
    })
    .expect("events stored");

    let browser = Browser::start(1400).expect("headless Chromium");
    let page = |path: &str, shot: &str| {
        browser.goto(&format!("{console}{path}")).expect("page");
        browser
            .screenshot(&shots().join(format!("{shot}.png")))
            .expect("screenshot");
        browser.text("main").expect("main")
    };

    // Fleet: the proxy, the policy version it runs (what its Envoy gauge says) and its
    // mode, as its latest batch told the collector.
    let fleet = page("/", "1-fleet");
    assert!(fleet.contains("edge-1"), "{fleet}");
    assert!(!fleet.contains("not known"), "{fleet}");
    assert!(browser
        .text("#served")
        .expect("served")
        .parse::<u64>()
        .is_ok());
    let running = fleet_shows_what_envoy_runs(&browser, &console, &envoy, &client, 0);
    assert!(running >= first, "{running} before {first}");
    browser
        .screenshot(&shots().join("1-fleet.png"))
        .expect("screenshot");

    // Learned API: the step and its prerequisite, limits with percentiles, the unknown
    // and deprecated endpoints the attacks called.
    let api = page("/api", "2-learned-api");
    for needle in [
        "POST /api/orders/{id}/confirm",
        "POST /api/orders/{id}/pay",
        "p99",
        "GET /api/internal/export",
        "GET /api/v1/menu",
    ] {
        assert!(
            api.contains(needle),
            "{needle} missing from the API page:\n{api}"
        );
    }

    // The graph: drawn, prerequisites highlighted, no label over another, DOT download.
    let graph = page("/graph", "3-flow-graph");
    assert!(graph.contains("DOT"), "{graph}");
    assert!(browser.count("#flow g.node").expect("nodes") >= 8);
    assert!(browser.count("#flow path.req").expect("prerequisites") >= 1);
    let overlaps = browser.execute(OVERLAPS, json!([])).expect("bboxes");
    assert!(overlaps[0].as_u64().unwrap_or(0) >= 8, "{overlaps}");
    assert_eq!(overlaps[1], json!(0), "overlapping labels in the browser");
    let dot = ureq::get(&format!("{console}/graph.dot"))
        .call()
        .expect("dot")
        .body_mut()
        .read_to_string()
        .expect("dot body");
    assert!(
        dot.starts_with("digraph") && dot.contains("confirm"),
        "{dot}"
    );

    // Blocks and flags, filtered by rule; the flagged skip is listed with its steps.
    let events = page(&format!("/events?rule={RULE}"), "4-blocks-and-flags");
    assert!(events.contains("POST /api/orders/{id}/confirm"), "{events}");
    assert!(
        events.contains("POST /api/orders 201") || events.contains("POST /api/orders 200"),
        "last steps: {events}"
    );
    let listed = browser.text("table").expect("the list");
    assert!(
        !listed.contains("rate.session"),
        "filtered by rule: {listed}"
    );
    page("/events", "4-blocks-and-flags-all");
    let all = browser.text("table").expect("the list");
    assert!(all.contains("rate.session"), "{all}");
    assert!(all.contains(REQUEST_ID), "the blocked request's id: {all}");

    // The id a customer quotes finds that request, and its session.
    browser
        .type_into("#request-input", REQUEST_ID)
        .expect("the search field");
    browser.click("#request-find").expect("find");
    let found = browser.wait_text("#request-found").expect("found");
    assert!(found.starts_with("1 stored event"), "{found}");
    let result = browser.text("table").expect("the event");
    assert!(
        result.contains(REQUEST_ID) && result.contains("GET /api/menu") && result.contains("block"),
        "{result}"
    );
    browser
        .screenshot(&shots().join("4-request-search.png"))
        .expect("screenshot");
    let flooder_session = browser
        .execute(
            "return document.querySelector('a.session').href;",
            json!([]),
        )
        .expect("its session's link");
    browser
        .goto(flooder_session.as_str().expect("an address"))
        .expect("the session page");
    let flooder_page = browser.text("main").expect("session page");
    assert!(
        flooder_page.contains("Session fingerprint") && flooder_page.contains(REQUEST_ID),
        "{flooder_page}"
    );
    let (status, body) = get(&format!("{console}/request?id=no-such-request"));
    assert!(status == 200 && body.contains("request-none"), "{body}");
    let (status, body) = get(&format!("{console}/request?id=%3Cscript%3E"));
    assert!(
        status == 400 && body.contains("not an x-request-id"),
        "{body}"
    );
    page("/events", "4-blocks-and-flags-all");
    let href = browser
        .execute(
            "return document.querySelector('a.session').href;",
            json!([]),
        )
        .expect("a session link");
    browser
        .goto(href.as_str().expect("an address"))
        .expect("the session page");
    let session = browser.text("main").expect("session page");
    assert!(session.contains("Session fingerprint"), "{session}");
    browser
        .screenshot(&shots().join("5-session.png"))
        .expect("screenshot");

    // What-if: the order rule set to block, over the last hour.
    page("/whatif", "6-what-if-form");
    browser
        .click(&format!("select[name='rule:{RULE}'] option[value='block']"))
        .expect("option");
    browser.click("#run").expect("run");
    let verdict = browser.wait_text("#verdict").expect("what-if verdict");
    browser
        .screenshot(&shots().join("6-what-if.png"))
        .expect("screenshot");
    let blocked: u64 = verdict
        .split("would have blocked ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{verdict}"));
    assert!(blocked >= 1, "the skip would have been blocked: {verdict}");

    // Decisions: refused before logging in.
    page("/decisions", "7-decisions-read-only");
    browser
        .click(&format!("form[data-rule='{RULE}'] option[value='block']"))
        .expect("option");
    browser
        .click(&format!("form[data-rule='{RULE}'] button"))
        .expect("decide");
    let refused = browser.wait_text("#error").expect("refusal");
    assert!(refused.contains("log in"), "{refused}");

    // Log in and switch the rule to block.
    browser.goto(&format!("{console}/login")).expect("login");
    browser
        .type_into("#who-input", "console-test")
        .expect("who");
    browser.type_into("#token-input", TOKEN).expect("token");
    browser.click("#login-button").expect("log in");
    assert_eq!(
        browser.wait_text("#who").expect("signed in"),
        "console-test"
    );
    browser
        .goto(&format!("{console}/decisions"))
        .expect("decisions");
    browser
        .click(&format!("form[data-rule='{RULE}'] option[value='block']"))
        .expect("option");
    browser
        .click(&format!("form[data-rule='{RULE}'] button"))
        .expect("decide");
    let stored: u64 = browser
        .wait_text("#stored b")
        .unwrap_or_else(|e| panic!("{e}: {}", browser.text("main").unwrap_or_default()))
        .parse()
        .expect("a version");
    assert!(stored > first, "{stored} after {first}");
    let decisions = browser.text("main").expect("decisions");
    assert!(decisions.contains("console-test"), "audited: {decisions}");
    assert!(
        decisions.contains(&format!("{RULE} everywhere set to block")),
        "{decisions}"
    );
    browser
        .screenshot(&shots().join("8-decisions.png"))
        .expect("screenshot");

    // CSRF: the login cookie without the form's token, or from another origin, is refused.
    let login_cookie = webdriver_cookie(&browser);
    let forged = |origin: &str, csrf: &str| {
        agent()
            .post(&format!("{console}/decisions"))
            .header("cookie", &format!("fg_console={login_cookie}"))
            .header("origin", origin)
            .content_type("application/x-www-form-urlencoded")
            .send(format!("kind=rule&rule={RULE}&action=off&csrf={csrf}"))
            .expect("answer")
            .status()
            .as_u16()
    };
    assert_eq!(forged(&console, ""), 403, "no CSRF token");
    assert_eq!(forged("http://evil.example", "x"), 403, "another origin");

    // The new version reaches Envoy; the next skip is blocked.
    let reached = eventually("the decided version installed", || {
        (envoy.metric("flowguard.policy.version") >= stored).then_some(())
    });
    reached.unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    let blocked = eventually("the next skip to be blocked", || {
        let r = traffic::skip_payment(&mut attacker(&client, 10 + fastrand::usize(..1000)));
        (r.status == 403).then_some(r)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert!(blocked.body.contains("request blocked"), "{blocked:?}");
    let running = fleet_shows_what_envoy_runs(&browser, &console, &envoy, &client, stored);
    assert!(running >= stored, "{running} before {stored}");
    let normal = traffic::normal_order(&mut Session::from_address(&client, CLIENT_IP, "10.7.7.7"));
    assert!(normal.status < 400, "a customer still orders: {normal:?}");

    // Learning goes on (every second here) and keeps the decision in what it stores.
    std::thread::sleep(Duration::from_millis(2500));
    let latest: Value =
        serde_json::from_str(&get(&format!("{console}/policy.json")).1).expect("the policy JSON");
    assert_eq!(
        latest["decisions"]["rules"][RULE],
        json!("block"),
        "the newest version (learned after the decision: {}) keeps it",
        latest["version"].as_u64().unwrap_or(0) > stored
    );

    // Bad input is a clear error page, never a crash.
    let (status, body) = get(&format!("{console}/session/not-a-session"));
    assert_eq!(status, 400);
    assert!(body.contains("not a session fingerprint"), "{body}");
    let csrf = browser
        .execute(
            "return document.querySelector('input[name=csrf]').value;",
            json!([]),
        )
        .expect("the form's CSRF token");
    let csrf = csrf.as_str().expect("a token");
    let cookie = format!("fg_console={login_cookie}");
    for (path, form, expected) in [
        (
            "/whatif",
            format!("csrf={csrf}&window=hour&policy=%7Bnot+json"),
            "refused",
        ),
        (
            "/whatif",
            format!("csrf={csrf}&window=year"),
            "unknown window",
        ),
        (
            "/decisions",
            format!("csrf={csrf}&kind=limit&endpoint=GET+%2Fapi%2Fmenu&limit=lots"),
            "whole number",
        ),
        (
            "/decisions",
            format!("csrf={csrf}&kind=rule&rule=no.such&action=block"),
            "unknown rule",
        ),
        (
            "/decisions",
            format!("csrf={csrf}&kind=pin&endpoint=GET+%2Fnowhere&prerequisite=GET+%2Fapi%2Fmenu"),
            "not an endpoint",
        ),
        ("/decisions", "%%%&&&==".to_owned(), "CSRF"),
    ] {
        let (status, body) = post(&console, path, &cookie, &form);
        assert!((400..500).contains(&status), "{path} {form}: {status}");
        assert!(body.contains(expected), "{path} {form}: {body}");
    }
    assert!(collector.is_running(), "the collector survived bad input");
    println!(
        "console: rule switched to block in version {stored}; the next skip got 403; {:?} in all",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(150),
        "slow: {:?}",
        started.elapsed()
    );
}

/// Waits until the Fleet page shows edge-1 running the version Envoy's gauge says (at
/// least `at_least`) in enforce mode, a fresh batch at a time; that version.
fn fleet_shows_what_envoy_runs(
    browser: &Browser,
    console: &str,
    envoy: &Envoy,
    client: &Client,
    at_least: u64,
) -> u64 {
    let mut seen = (String::new(), String::new(), 0);
    let running = eventually("the Fleet page to show what Envoy runs", || {
        let gauge = envoy.metric("flowguard.policy.version");
        browser.goto(&format!("{console}/")).ok()?;
        let version = browser.text(".node-version[data-node='edge-1']").ok()?;
        let mode = browser.text(".node-mode[data-node='edge-1']").ok()?;
        if version == gauge.to_string() && mode == "enforce" && gauge >= at_least {
            return Some(gauge);
        }
        seen = (version, mode, gauge);
        // A new version may be installed after the proxy's latest batch: a customer's
        // next request makes the next one.
        Session::from_address(client, CLIENT_IP, "10.7.7.9").login();
        std::thread::sleep(Duration::from_millis(250));
        None
    });
    running.unwrap_or_else(|e| panic!("{e}: the page said {seen:?} (version, mode, gauge)"))
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
}

/// A GET: status and body.
fn get(url: &str) -> (u16, String) {
    let mut r = agent().get(url).call().expect("an answer");
    let body = r.body_mut().read_to_string().unwrap_or_default();
    (r.status().as_u16(), body)
}

/// A form POST from the console's own origin with `cookie`: status and body.
fn post(console: &str, path: &str, cookie: &str, form: &str) -> (u16, String) {
    let mut r = agent()
        .post(&format!("{console}{path}"))
        .header("cookie", cookie)
        .header("origin", console)
        .content_type("application/x-www-form-urlencoded")
        .send(form)
        .expect("an answer");
    let body = r.body_mut().read_to_string().unwrap_or_default();
    (r.status().as_u16(), body)
}

/// The console's login cookie, as the browser holds it (WebDriver reads HttpOnly ones).
fn webdriver_cookie(browser: &Browser) -> String {
    let v: Value = browser
        .cookie("fg_console")
        .unwrap_or_else(|e| panic!("the login cookie: {e}"));
    assert_eq!(v["httpOnly"], json!(true), "{v}");
    assert_eq!(v["sameSite"], json!("Strict"), "{v}");
    v["value"].as_str().unwrap_or_default().to_owned()
}

/// A decision through the store of `backend`: the next version with `decisions`, an audit
/// row with who, when, before and after; a refused one stores nothing.
async fn decide_on(backend: flowguard_collector::backend::Backend) {
    use flowguard_collector::console::decisions;
    use flowguard_collector::store::Decided;
    let learned = json!({"version": 5, "window_s": 10, "endpoints": [
        {"template": "POST /pay"}, {"template": "POST /confirm", "prerequisites": ["POST /pay"]}]})
    .to_string();
    let seeded = backend
        .decide("learner", 1_000, move |latest| {
            assert!(latest.is_none());
            Ok(Decided {
                version: 5,
                json: learned,
                summary: "the learned policy".into(),
            })
        })
        .await
        .expect("stored");
    assert!(seeded.is_ok());
    let form = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let change = decisions::parse(&form(&[
        ("kind", "rule"),
        ("rule", RULE),
        ("action", "block"),
    ]))
    .expect("a decision");
    let d = backend
        .decide("ann", 2_000, move |latest| {
            decisions::decide(latest, &change)
        })
        .await
        .expect("stored")
        .expect("accepted");
    assert_eq!(d.version, 6);
    let (version, stored) = backend.latest_row().await.expect("read").expect("a policy");
    assert_eq!(version, 6);
    let policy = flowguard_engine::policy::Policy::from_json(stored.as_bytes()).expect("valid");
    assert_eq!(
        policy.decisions.rules.get(RULE),
        Some(&flowguard_engine::rule::Action::Block)
    );
    assert_eq!(policy.endpoints.len(), 2, "nothing learned moved");
    // Per endpoint: a rule off, a prerequisite pinned then forgotten, a limit loosened;
    // each a version the engine accepts. A pin that makes two steps wait for each other
    // is refused, with the engine's reason.
    let decide_as = |who: &'static str, pairs: &[(&str, &str)]| {
        let change = decisions::parse(&form(pairs)).expect("a decision");
        backend.decide(who, 2_500, move |latest| decisions::decide(latest, &change))
    };
    let cycle = decide_as(
        "bob",
        &[
            ("kind", "pin"),
            ("endpoint", "POST /pay"),
            ("prerequisite", "POST /confirm"),
        ],
    )
    .await
    .expect("no store error");
    assert!(cycle.is_err_and(|m| m.contains("wait for each other")));
    for pairs in [
        &[
            ("kind", "rule"),
            ("endpoint", "POST /confirm"),
            ("rule", "rate.session"),
            ("action", "off"),
        ][..],
        &[
            ("kind", "pin"),
            ("endpoint", "POST /confirm"),
            ("prerequisite", "POST /pay"),
        ][..],
        &[
            ("kind", "forget"),
            ("endpoint", "POST /confirm"),
            ("prerequisite", "POST /pay"),
        ][..],
        &[
            ("kind", "limit"),
            ("endpoint", "POST /pay"),
            ("limit", "40"),
        ][..],
    ] {
        decide_as("bob", pairs)
            .await
            .expect("stored")
            .unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
    }
    let (_, stored) = backend.latest_row().await.expect("read").expect("a policy");
    let policy = flowguard_engine::policy::Policy::from_json(stored.as_bytes()).expect("valid");
    let confirm = policy.decisions.endpoint("POST /confirm").expect("decided");
    assert_eq!(
        (confirm.rules.len(), confirm.pin.len(), confirm.forget.len()),
        (1, 0, 1)
    );
    assert_eq!(
        policy
            .decisions
            .endpoint("POST /pay")
            .and_then(|d| d.rate_limit),
        Some(40)
    );
    let bad = decisions::parse(&form(&[
        ("kind", "limit"),
        ("endpoint", "GET /nowhere"),
        ("limit", "9"),
    ]))
    .expect("a decision");
    let refused = backend
        .decide("ann", 3_000, move |latest| decisions::decide(latest, &bad))
        .await
        .expect("no store error");
    assert!(refused.is_err_and(|m| m.contains("not an endpoint")));
    let audit = backend.audit(10).await.expect("audit");
    assert_eq!(audit.len(), 6, "the refused one left no row: {audit:?}");
    let ann = &audit[4];
    assert_eq!(
        (ann.who.as_str(), ann.version, ann.time_ms),
        ("ann", 6, 2_000)
    );
    assert!(ann.summary.contains("set to block"), "{}", ann.summary);
    assert!(!ann.before.contains("decisions") && ann.after.contains("\"block\""));
    assert_eq!((audit[0].who.as_str(), audit[0].version), ("bob", 10));
    assert_eq!(
        backend.latest_row().await.expect("read").map(|r| r.0),
        Some(10)
    );
}

/// What the console reads from `backend`: nodes, blocks and flags filtered, a session's
/// events, the templates seen, the events of a window.
async fn reads_on(backend: &flowguard_collector::backend::Backend) {
    use flowguard_proto::v1::{Event, ReportRequest, Verdict};
    let event = |t: u64, session: u64, template: &str, verdict: Verdict, rules: &[&str]| Event {
        time_ms: t,
        session,
        template: template.into(),
        status: if verdict == Verdict::Block { 403 } else { 200 },
        verdict: verdict.into(),
        rules: rules.iter().map(|r| r.to_string()).collect(),
        latency_us: 10,
        summary: true,
        ids: 0,
        weak_session: false,
        request_id: String::new(),
    };
    let batch = |worker: u32, id: u64, events: Vec<Event>| ReportRequest {
        node: "edge-7".into(),
        batch_id: id,
        worker,
        dropped: 2,
        events,
        // Worker 1 enforces version 5, worker 2 still monitors version 4.
        policy_version: 6 - u64::from(worker),
        mode: if worker == 1 { "enforce" } else { "monitor" }.into(),
    };
    let mut events_a = vec![
        event(1_000, 7, "POST /pay", Verdict::Allow, &[]),
        event(
            2_000,
            7,
            "POST /confirm",
            Verdict::Block,
            &[RULE, "order.unknown_transition"],
        ),
        event(3_000, 8, "GET /menu", Verdict::Flag, &["rate.session"]),
    ];
    events_a[1].request_id = "req-confirm-7".into();
    let mut events_b = vec![event(
        9_000,
        9,
        "GET /shadow",
        Verdict::Flag,
        &["inventory.unknown_endpoint"],
    )];
    events_b[0].request_id = "req-shadow-9".into();
    backend
        .insert_batch(batch(1, 1, events_a), 50_000)
        .await
        .expect("stored");
    backend
        .insert_batch(batch(2, 1, events_b), 70_000)
        .await
        .expect("stored");
    let nodes = backend.nodes(60_000).await.expect("nodes");
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    let n = &nodes[0];
    assert_eq!(
        (
            n.workers,
            n.batches,
            n.events,
            n.recent_events,
            n.dropped,
            n.first_ms,
            n.last_ms
        ),
        (2, 2, 4, 1, 4, 50_000, 70_000)
    );
    let running: Vec<_> = n
        .latest
        .iter()
        .map(|w| (w.worker, w.policy_version, w.mode.as_str(), w.last_ms))
        .collect();
    assert_eq!(
        running,
        [(1, 5, "enforce", 50_000), (2, 4, "monitor", 70_000)]
    );
    assert_eq!(
        n.newest().map(|w| (w.policy_version, w.mode.as_str())),
        Some((4, "monitor")),
        "the node's latest batch"
    );
    // The x-request-id: listed, and found exactly.
    let ids: Vec<String> = backend
        .verdict_events(0, "", "")
        .await
        .expect("listed")
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    assert_eq!(ids, ["req-shadow-9", "", "req-confirm-7"]);
    let found = backend
        .request_events("req-confirm-7")
        .await
        .expect("searched");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(
        (
            found[0].template.as_str(),
            found[0].session,
            found[0].verdict
        ),
        ("POST /confirm", 7, 4)
    );
    for not in ["req-confirm", "REQ-CONFIRM-7", ""] {
        assert!(
            backend
                .request_events(not)
                .await
                .expect("searched")
                .is_empty(),
            "{not:?} matches nothing"
        );
    }
    let listed = |template: &'static str, rule: &'static str| async move {
        backend
            .verdict_events(0, template, rule)
            .await
            .expect("listed")
            .iter()
            .map(|e| e.template.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        listed("", "").await,
        ["GET /shadow", "GET /menu", "POST /confirm"]
    );
    assert_eq!(listed("", RULE).await, ["POST /confirm"]);
    assert_eq!(
        listed("", "order").await,
        Vec::<String>::new(),
        "whole rule ids only"
    );
    assert_eq!(listed("GET /menu", "").await, ["GET /menu"]);
    assert_eq!(listed("GET /menu", RULE).await, Vec::<String>::new());
    let history = backend.session_history(7).await.expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(
        (
            history[0].request_id.as_str(),
            history[1].request_id.as_str()
        ),
        ("req-confirm-7", "")
    );
    assert_eq!(
        (
            history[0].template.as_str(),
            history[0].verdict,
            history[0].status
        ),
        ("POST /confirm", 4, 403)
    );
    let seen = backend.templates_seen().await.expect("seen");
    assert_eq!(seen.len(), 4);
    assert!(
        seen.contains(&("GET /shadow".to_owned(), 1, 9_000)),
        "{seen:?}"
    );
    assert_eq!(backend.events_since(2_500).await.expect("window").len(), 2);
}

/// A PostgreSQL database made before events carried a request id and batches a policy
/// version and mode (the tables as they were, one batch in them): the collector adds
/// the columns, old rows read with their defaults, new batches store what they carry.
async fn old_postgres_gains_the_columns(pg: &flowguard_integration::postgres::Postgres) {
    use flowguard_proto::v1::{Event, ReportRequest, Verdict};
    let connect = |url: String| async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
    };
    connect(pg.url())
        .await
        .batch_execute("CREATE DATABASE flowguard_old")
        .await
        .expect("a second database");
    let url = format!("{}_old", pg.url());
    connect(url.clone())
        .await
        .batch_execute(
            "CREATE TABLE batches (
                node TEXT NOT NULL, worker BIGINT NOT NULL, batch_id BIGINT NOT NULL,
                received_ms BIGINT NOT NULL, events BIGINT NOT NULL, dropped BIGINT NOT NULL,
                PRIMARY KEY (node, worker, batch_id));
             CREATE TABLE events (
                id BIGSERIAL PRIMARY KEY, node TEXT NOT NULL, time_ms BIGINT NOT NULL,
                session BIGINT NOT NULL, template TEXT NOT NULL, status BIGINT NOT NULL,
                verdict INTEGER NOT NULL, rules TEXT NOT NULL, latency_us BIGINT NOT NULL,
                summary BOOLEAN NOT NULL, ids BIGINT NOT NULL, weak BOOLEAN NOT NULL);
             INSERT INTO batches VALUES ('edge-old', 0, 1, 1000, 1, 0);
             INSERT INTO events (node, time_ms, session, template, status, verdict, rules,
                                 latency_us, summary, ids, weak)
             VALUES ('edge-old', 900, 3, 'GET /menu', 429, 4, 'rate.session', 5, true, 0, false);",
        )
        .await
        .expect("the old tables");
    for _ in 0..2 {
        // Opened twice: the second finds the columns there.
        flowguard_collector::backend::Backend::open(&url, false)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    }
    let backend = flowguard_collector::backend::Backend::open(&url, false)
        .await
        .expect("migrated");
    let old = backend.verdict_events(0, "", "").await.expect("listed");
    assert_eq!((old.len(), old[0].request_id.as_str()), (1, ""), "{old:?}");
    let nodes = backend.nodes(0).await.expect("nodes");
    let w = nodes[0].newest().expect("a batch");
    assert_eq!((w.policy_version, w.mode.as_str()), (0, ""));
    let report = ReportRequest {
        node: "edge-old".into(),
        worker: 0,
        batch_id: 2,
        policy_version: 8,
        mode: "enforce".into(),
        dropped: 0,
        events: vec![Event {
            time_ms: 2_000,
            session: 3,
            template: "GET /menu".into(),
            status: 429,
            verdict: Verdict::Block.into(),
            rules: vec!["rate.session".into()],
            request_id: "req-after-upgrade".into(),
            ..Event::default()
        }],
    };
    assert_eq!(
        backend.insert_batch(report, 3_000).await.expect("stored"),
        1
    );
    let found = backend
        .request_events("req-after-upgrade")
        .await
        .expect("searched");
    assert_eq!((found.len(), found[0].time_ms), (1, 2_000));
    let nodes = backend.nodes(0).await.expect("nodes");
    let w = nodes[0].newest().expect("a batch");
    assert_eq!(
        (w.policy_version, w.mode.as_str(), w.last_ms),
        (8, "enforce", 3_000)
    );
}

#[test]
fn what_the_console_reads_and_decides_is_stored_in_sqlite_and_postgresql() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = scratch_db("console-decide").expect("db");
    runtime.block_on(async {
        let sqlite = flowguard_collector::backend::Backend::open(&db.display().to_string(), false)
            .await
            .expect("SQLite");
        reads_on(&sqlite).await;
        decide_on(sqlite).await;
    });
    let pg = flowguard_integration::postgres::Postgres::start().expect("PostgreSQL");
    runtime.block_on(async {
        let shared = flowguard_collector::backend::Backend::open(&pg.url(), false)
            .await
            .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
        reads_on(&shared).await;
        decide_on(shared).await;
        old_postgres_gains_the_columns(&pg).await;
    });
}

/// A policy of 40 endpoints: a login, then 13 three-step flows with long paths, each step
/// requiring the one before, the last flagging without the login.
fn forty_endpoints() -> String {
    let mut endpoints = vec![json!({"template": "POST /api/login"})];
    let mut transitions = vec![json!({"from": "^", "to": "POST /api/login", "count": 500})];
    for f in 0..13 {
        let base = format!(
            "/api/v2/{}/resources-{f}/{{id}}",
            "segment".repeat(1 + f % 4)
        );
        let steps = [
            format!("GET {base}"),
            format!("POST {base}/reserve"),
            format!("POST {base}/checkout/confirm"),
        ];
        for (k, step) in steps.iter().enumerate() {
            let limit =
                json!({"limit": 12, "p50": 1, "p90": 3, "p99": 6, "bound": 8, "units": 400});
            let mut e = json!({"template": step, "rate": limit, "sessions": 400});
            if k > 0 {
                e["prerequisites"] = json!([steps[k - 1]]);
            }
            if k == 2 {
                e["flag_prerequisites"] = json!(["POST /api/login"]);
            }
            endpoints.push(e);
            let from = if k == 0 {
                "POST /api/login".to_owned()
            } else {
                steps[k - 1].clone()
            };
            transitions.push(json!({"from": from, "to": step, "count": 40 + f}));
        }
    }
    json!({"version": 3, "window_s": 10, "endpoints": endpoints, "transitions": transitions})
        .to_string()
}

#[test]
fn forty_endpoints_are_drawn_with_no_label_over_another_in_chromium() {
    let db = scratch_db("console-forty").expect("db");
    let policy = forty_endpoints();
    tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let backend =
                flowguard_collector::backend::Backend::open(&db.display().to_string(), false)
                    .await
                    .expect("SQLite");
            backend
                .decide("test", 1, move |_| {
                    Ok(flowguard_collector::store::Decided {
                        version: 3,
                        json: policy,
                        summary: "a 40-endpoint policy".into(),
                    })
                })
                .await
                .expect("stored")
                .expect("valid");
        });
    let port = free_port();
    let _collector = Collector::start(
        &db,
        &[
            "--learn-interval-s",
            "0",
            "--console",
            &format!("127.0.0.1:{port}"),
        ],
    )
    .expect("collector");
    let browser = Browser::start(1400).expect("headless Chromium");
    eventually("the console", || {
        browser
            .goto(&format!("http://127.0.0.1:{port}/graph"))
            .ok()
            .and_then(|_| browser.count("#flow g.node").ok())
            .filter(|n| *n == 41)
    })
    .expect("41 boxes: the start and 40 endpoints");
    browser
        .screenshot(&shots().join("9-flow-graph-40-endpoints.png"))
        .expect("screenshot");
    let overlaps = browser.execute(OVERLAPS, json!([])).expect("bboxes");
    assert_eq!(
        overlaps[0],
        json!(80),
        "the start, 40 names and the 39 limits"
    );
    assert_eq!(overlaps[1], json!(0), "overlapping labels: {overlaps}");
    assert_eq!(browser.count("#flow path.req").expect("prerequisites"), 26);
}
