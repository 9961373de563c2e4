//! The monitoring kit (`envoy/monitoring/`) against the real thing: `promtool` checks and
//! unit-tests the alerting rules; then a real Prometheus (Debian's `prometheus`) scrapes
//! two real Envoys running flowguard, one healthy (a real collector, a learned model,
//! attacks blocked and flagged) and one whose collector is down and which has no policy.
//! Every query of every dashboard panel must return series, every alert expression must
//! evaluate on the server, and the alerts for a dead collector and a missing policy must
//! fire on the second Envoy and not on the first.

use flowguard_integration::collector::{scratch_db, Collector};
use flowguard_integration::envoy::{repo_root, Envoy, EnvoyConfig};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};
use flowguard_integration::world::quick_learning;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn monitoring_dir() -> PathBuf {
    repo_root().join("envoy/monitoring")
}

/// A program from Debian's `prometheus` package, which `make test` installs.
fn debian_tool(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no `{name}` on PATH: install Debian's prometheus package \
                 (`make test` does: apt-get install prometheus)"
            )
        })
}

fn run_promtool(args: &[&str]) {
    let out = Command::new(debian_tool("promtool"))
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .expect("promtool runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    println!("promtool {}: {}", args.join(" "), text.trim());
}

#[test]
fn promtool_checks_and_unit_tests_the_alerting_rules() {
    run_promtool(&["check", "rules", "flowguard-alerts.yml"]);
    run_promtool(&["test", "rules", "flowguard-alerts.test.yml"]);
}

/// A real Prometheus in a temporary directory, on a free loopback port; killed on drop
/// (its log's tail printed if the test failed).
struct Prometheus {
    child: Child,
    dir: PathBuf,
    url: String,
    agent: ureq::Agent,
}

impl Prometheus {
    /// Scrapes `/stats/prometheus` of each admin address (`127.0.0.1:PORT`) every second
    /// and evaluates `rules` every second.
    fn start(admins: &[String], rules: &Path) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("flowguard-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("Prometheus directory");
        let targets = serde_json::to_string(admins).expect("targets");
        let rules = serde_json::to_string(&rules.display().to_string()).expect("path");
        let config = format!(
            r#"global: {{ scrape_interval: 1s, evaluation_interval: 1s }}
rule_files: [{rules}]
scrape_configs:
- job_name: envoy
  metrics_path: /stats/prometheus
  scrape_interval: 1s
  scrape_timeout: 1s
  static_configs:
  - targets: {targets}
"#
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("config");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log file");
        let child = Command::new(debian_tool("prometheus"))
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Prometheus starts");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let mut prometheus = Prometheus {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
            agent,
        };
        let ready = eventually("Prometheus to be ready", || {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                return Some(Err(format!("Prometheus exited with {status}")));
            }
            let resp = prometheus
                .agent
                .get(format!("{}/-/ready", prometheus.url))
                .call()
                .ok()?;
            (resp.status() == 200).then_some(Ok(()))
        });
        if let Err(e) = ready.and_then(|r| r) {
            panic!("{e}\n{}", prometheus.log());
        }
        prometheus
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// GET on the HTTP API: the answer's `data`, or its error.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let mut req = self.agent.get(format!("{}{path}", self.url));
        for (k, v) in params {
            req = req.query(*k, *v);
        }
        let mut resp = req.call().map_err(|e| e.to_string())?;
        let body: Value = resp.body_mut().read_json().map_err(|e| e.to_string())?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    /// An instant query (`/api/v1/query`): its result vector.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        match data["resultType"].as_str() {
            Some("vector") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            other => Err(format!("{expr}: a {other:?}, not an instant vector")),
        }
    }

    /// The value of `expr`'s one series, if it has exactly one.
    fn value(&self, expr: &str) -> Option<f64> {
        let result = self.query(expr).ok()?;
        let [series] = result.as_slice() else {
            return None;
        };
        series["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("--- last lines of the Prometheus log ---");
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every PromQL expression of the dashboard's panels (rows' nested panels too), by panel.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            let title = panel["title"].as_str().unwrap_or("?").to_owned();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| {
                    panic!("panel {title:?}: a target without a PromQL `expr`: {target}")
                });
                out.push((title.clone(), expr.to_owned()));
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// Grafana's variables replaced as Grafana would for "all instances" over a short range.
fn concrete(expr: &str) -> String {
    let expr = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "5m")
        .replace("${instance}", ".+")
        .replace("$instance", ".+");
    assert!(
        !expr.contains('$'),
        "a Grafana variable the test does not know: {expr}"
    );
    expr
}

/// The alerting rules' names and expressions, as the file declares them.
fn alert_rules() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("flowguard-alerts.yml"))
        .expect("flowguard-alerts.yml");
    let rules: Value = serde_norway::from_str(&text).expect("rules YAML");
    rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            let name = r["alert"].as_str().expect("an alerting rule").to_owned();
            let expr = r["expr"].as_str().expect("an expression").to_owned();
            (name, expr)
        })
        .collect()
}

/// Successful scrapes of `instance` so far.
fn scrapes(prometheus: &Prometheus, instance: &str) -> f64 {
    prometheus
        .value(&format!(
            r#"sum_over_time(up{{instance="{instance}"}}[10m])"#
        ))
        .unwrap_or(0.0)
}

fn instances(result: &[Value]) -> BTreeSet<String> {
    result
        .iter()
        .filter_map(|s| s["metric"]["instance"].as_str().map(str::to_owned))
        .collect()
}

/// Whether each alert's expression must (Some(true)) or must not (Some(false)) hold now on
/// the healthy Envoy and on the one with a dead collector and no policy; None: not
/// asserted (depends on how fast this machine played the attacks).
fn expectations() -> BTreeMap<&'static str, (Option<bool>, Option<bool>)> {
    BTreeMap::from([
        ("FlowguardBlocksSpiking", (None, Some(false))),
        ("FlowguardTelemetryFailing", (Some(false), Some(true))),
        ("FlowguardTelemetryDropped", (Some(false), Some(false))),
        ("FlowguardCollectorUnreachable", (Some(false), Some(true))),
        ("FlowguardPolicyPollFailing", (Some(false), Some(true))),
        ("FlowguardPolicyRefused", (Some(false), Some(false))),
        ("FlowguardPolicyNotInstalled", (Some(false), Some(true))),
        ("FlowguardHostErrors", (Some(false), Some(false))),
        ("FlowguardSlotConflictsHigh", (Some(false), Some(false))),
        ("FlowguardSlotEvictionsSurge", (Some(false), Some(false))),
    ])
}

#[test]
fn every_dashboard_query_and_alert_answers_on_a_real_prometheus_scraping_envoy() {
    let started = Instant::now();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(monitoring_dir().join("flowguard-dashboard.json"))
            .expect("flowguard-dashboard.json"),
    )
    .expect("dashboard JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 20, "{} queries", queries.len());
    let rules = alert_rules();
    let expected = expectations();
    let names: BTreeSet<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        expected.keys().copied().collect(),
        "every alert has its expectation here"
    );

    // Healthy: a real collector, a learned model, attacks.
    let collector = Collector::start(
        &scratch_db("monitoring").expect("scratch database"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let shop = ShopServer::start().expect("shop");
    let collector_json = r#""collector":{"cluster":"flowguard_collector","node":"monitoring","flush_interval_ms":100,"policy_interval_ms":300,"timeout_ms":5000}"#;
    let mut cfg = EnvoyConfig::new(
        &quick_learning(
            "enforce",
            &format!(r#""endpoints":{{"deprecated":["/api/v1/"]}},{collector_json}"#),
        ),
        shop.addr,
    );
    cfg.collector = Some(collector.addr);
    let healthy = Envoy::start(&cfg).unwrap_or_else(|e| panic!("Envoy starts: {e}"));
    // Unhealthy: its collector's port answers nothing, and it never learns a policy.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let mut cfg = EnvoyConfig::new(
        r#"{"mode":"enforce","learning":{"min_sessions":1000000,"min_requests":1000000,"tick_ms":100},
            "collector":{"cluster":"flowguard_collector","sample_rate":1.0,"flush_interval_ms":100,"policy_interval_ms":300,"timeout_ms":500}}"#,
        shop.addr,
    );
    cfg.collector = Some(dead);
    let orphan = Envoy::start(&cfg).unwrap_or_else(|e| panic!("Envoy starts: {e}"));
    let admin = |e: &Envoy| e.admin.trim_start_matches("http://").to_owned();
    let (a, b) = (admin(&healthy), admin(&orphan));

    let prometheus = Prometheus::start(
        &[a.clone(), b.clone()],
        &monitoring_dir().join("flowguard-alerts.yml"),
    );

    // Scrapes before, during and after the traffic.
    eventually("Prometheus to scrape both Envoys", || {
        (scrapes(&prometheus, &a) >= 2.0 && scrapes(&prometheus, &b) >= 2.0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", prometheus.api("/api/v1/targets", &[])));
    let client = Client::new(&healthy.url);
    traffic::play_normal(&client, 80);
    healthy
        .wait_for_model()
        .unwrap_or_else(|e| panic!("{e}\n{}", healthy.log()));
    for _ in 0..3 {
        let mut attacker = Session::new(&client);
        assert_eq!(traffic::skip_payment(&mut attacker).status, 403);
    }
    let mut flooder = Session::new(&client);
    assert!(
        traffic::flood(&mut flooder, 60).contains(&429),
        "flood limited"
    );
    let mut explorer = Session::new(&client);
    explorer.login();
    let shadow = explorer.call("GET", "/api/internal/export", None);
    assert!(
        shadow
            .upstream_verdict()
            .is_some_and(|v| v.starts_with("flag")),
        "{}",
        shadow.upstream
    );
    traffic::play_normal(&client, 5);
    traffic::play_normal(&Client::new(&orphan.url), 5);
    for name in ["flowguard.verdict.block", "flowguard.verdict.flag"] {
        healthy.counter_at_least(name, 1).unwrap();
    }
    for name in [
        "flowguard.policy.poll_failed",
        "flowguard.telemetry.failed",
        "flowguard.requests",
    ] {
        orphan.counter_at_least(name, 1).unwrap();
    }

    // Prometheus has scraped what the Envoys count now (and a few times before).
    let requests = healthy.counter("flowguard.requests");
    let blocks = healthy.metric("flowguard.verdict.block");
    eventually("Prometheus to scrape the latest counts", || {
        let seen = |m: &str| prometheus.value(&format!(r#"{m}{{instance="{a}"}}"#));
        (seen("flowguard_requests")? >= requests as f64
            && seen("flowguard_verdict_block")? >= blocks as f64)
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {:?}", prometheus.query("flowguard_requests")));
    // A few scrapes after the last of the traffic, so rates and alert windows see it.
    let after = scrapes(&prometheus, &a);
    eventually("three more scrapes", || {
        (scrapes(&prometheus, &a) >= after + 3.0 && scrapes(&prometheus, &b) >= after + 3.0)
            .then_some(())
    })
    .expect("Prometheus scrapes every second");

    // Every dashboard query answers.
    let mut empty = Vec::new();
    for (panel, expr) in &queries {
        let expr = concrete(expr);
        match prometheus.query(&expr) {
            Ok(result) if !result.is_empty() => {
                println!("{:>3} series  {panel}: {expr}", result.len());
            }
            Ok(_) => empty.push(format!("{panel}: {expr} returned nothing")),
            Err(e) => empty.push(format!("{panel}: {expr}: {e}")),
        }
    }
    assert!(
        empty.is_empty(),
        "dashboard queries without an answer:\n{}",
        empty.join("\n")
    );
    // The instance variable's values: both Envoys.
    let values = prometheus
        .api(
            "/api/v1/label/instance/values",
            &[("match[]", "flowguard_requests")],
        )
        .expect("label values");
    for instance in [&a, &b] {
        assert!(
            values
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x == instance.as_str())),
            "$instance offers {instance}: {values}"
        );
    }
    // The data the panels show is the traffic played.
    let at_a = |m: &str| {
        prometheus
            .value(&format!(r#"{m}{{instance="{a}"}}"#))
            .unwrap_or(0.0)
    };
    assert!(at_a("flowguard_verdict_block") >= 3.0);
    assert!(at_a("flowguard_verdict_flag") >= 1.0);
    assert!(at_a("flowguard_rule_order_missing_prerequisite") >= 3.0);
    assert!(at_a("flowguard_policy_version") > 0.0);

    // Every alert expression evaluates on the server, and says what it should.
    let mut wrong = Vec::new();
    for (name, expr) in &rules {
        let result = prometheus
            .query(expr)
            .unwrap_or_else(|e| panic!("alert {name}: {e}\n{expr}"));
        let on = instances(&result);
        let (want_a, want_b) = expected[name.as_str()];
        println!("alert {name}: holds on {on:?}");
        for (instance, want, which) in [(&a, want_a, "healthy"), (&b, want_b, "orphan")] {
            if want.is_some_and(|w| w != on.contains(instance.as_str())) {
                wrong.push(format!(
                    "{name} on the {which} Envoy ({instance}): expected {want:?}, result {result:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Prometheus loaded the rules file itself and evaluates every rule without error.
    let groups = eventually("every rule evaluated", || {
        let data = prometheus.api("/api/v1/rules", &[]).ok()?;
        let groups = data["groups"].as_array()?.clone();
        groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .all(|r| r["health"] != "unknown")
            .then_some(groups)
    })
    .expect("rules evaluated");
    let loaded: Vec<&Value> = groups
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    assert_eq!(loaded.len(), rules.len(), "{groups:?}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    println!("monitoring test took {:?}", started.elapsed());
}
