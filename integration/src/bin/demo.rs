//! `make demo`: a real Envoy with flowguard in `enforce` protecting the demo shop. It
//! learns from normal sessions, then plays every attack kind beside normal customers and
//! shows what flowguard allowed, flagged and blocked, with the rule that fired.

use flowguard_engine::rule::Rule;
use flowguard_integration::collector::Collector;
use flowguard_integration::envoy::{repo_root, Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};
use flowguard_integration::world::World;

const CONFIG: &str = r#"{
  "mode": "enforce",
  "session": { "sources": [{"cookie": "session"}, "bearer", "address"], "capacity": 16384 },
  "learning": { "min_sessions": 340, "min_requests": 2000, "tick_ms": 200 },
  "endpoints": { "deprecated": ["/api/v1/"] },
  "rules": { "auth.failures": { "window_s": 60 } },
  "collector": { "cluster": "flowguard_collector", "node": "demo", "sample_rate": 1.0, "flush_interval_ms": 500 }
}"#;

fn main() {
    println!("flowguard demo: starting the demo shop, the collector and Envoy 1.40 with flowguard in enforce...");
    let run_dir = repo_root().join("target/demo");
    let _ = std::fs::remove_dir_all(&run_dir);
    let _ = std::fs::create_dir_all(&run_dir);
    let collector = Collector::start(&run_dir.join("flowguard.db"), &["--learn-interval-s", "0"])
        .unwrap_or_else(|e| fail(&e));
    let shop = ShopServer::start().unwrap_or_else(|e| fail(&e.to_string()));
    let mut cfg = EnvoyConfig::new(CONFIG, shop.addr);
    cfg.concurrency = 2;
    cfg.collector = Some(collector.addr);
    let envoy = Envoy::start(&cfg).unwrap_or_else(|e| fail(&e));
    let client = Client::new(&envoy.url);
    let mut world = World {
        envoy,
        client,
        shop,
    };
    println!(
        "Envoy on {} (admin {}) -> demo shop on {}; collector on {}",
        world.envoy.url, world.envoy.admin, world.shop.addr, collector.addr
    );
    println!("filter configuration:\n{CONFIG}\n");

    println!(
        "1. learning: 360 normal sessions (orders, declined cards retried, typos, browsing)..."
    );
    traffic::play_normal(&world.client, 360);
    let version = match world.envoy.wait_for_model() {
        Ok(v) => v,
        Err(e) => {
            eprintln!("demo failed: {e}\n{}", world.envoy.log());
            std::process::exit(1);
        }
    };
    std::thread::sleep(std::time::Duration::from_millis(300)); // let Envoy flush its log
    println!("   model version {version} learned, active on both workers.\n");
    if let Some(policy) = world.envoy.learned_policy() {
        println!(
            "   {:<32} {:>10} {:>12}  must succeed first (or why nothing is enforced)",
            "endpoint", "rate/10s", "ids/10s"
        );
        for e in &policy.endpoints {
            let lim = |l: Option<flowguard_engine::policy::Limit>| {
                l.map_or("-".into(), |l| format!("p99 {} -> {}", l.p99, l.limit))
            };
            let order = match (&e.evidence, e.prerequisites.is_empty()) {
                (Some(ev), true) => format!("- ({})", ev.describe()),
                _ => e.prerequisites.join(", "),
            };
            println!(
                "   {:<32} {:>10} {:>12}  {}",
                e.template,
                lim(e.rate),
                lim(e.distinct_ids),
                order
            );
        }
        println!();
    }

    println!("2. enforcing: customers and attackers side by side\n");
    println!(
        "{:<44} {:>8} {:>8} {:>8}  rules that fired",
        "scenario", "requests", "allowed", "blocked"
    );
    println!("{}", "-".repeat(110));
    let client = world.client.clone();
    scenario(
        &world.envoy,
        "normal order",
        |s| {
            traffic::normal_order(s);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "confirm without paying (pizza fraud)",
        |s| {
            traffic::skip_payment(s);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "confirm after a declined card",
        |s| {
            traffic::confirm_after_failed_payment(s);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "flood: 80 menu calls at full speed",
        |s| {
            traffic::flood(s, 80);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "scrape: a customer walks order ids 1..150",
        |s| {
            traffic::enumerate_orders(s, 150);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "shadow API: GET /api/internal/export",
        |s| {
            s.login();
            s.call("GET", "/api/internal/export", None);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "zombie API: GET /api/v1/menu",
        |s| {
            s.login();
            s.call("GET", "/api/v1/menu", None);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "data leak: GET /api/users (e-mails, cards)",
        |s| {
            s.login();
            s.call("GET", "/api/users", None);
        },
        &client,
    );
    scenario(
        &world.envoy,
        "20 more normal customers",
        |s| {
            for _ in 0..20 {
                let mut c = Session::new(&client);
                traffic::normal_order(&mut c);
                s.calls.extend(c.calls);
            }
        },
        &client,
    );
    let before = rule_counts(&world.envoy);
    let statuses = traffic::credential_stuffing(&client, 60);
    let blocked = statuses.iter().filter(|s| **s == 429).count();
    println!(
        "{:<44} {:>8} {:>8} {:>8}  {}",
        "credential stuffing: 60 logins, new cookie each",
        statuses.len(),
        statuses.len() - blocked,
        blocked,
        fired_since(&world.envoy, &before)
    );

    println!(
        "\n3. Envoy's counters (admin {}/stats?filter=flowguard):",
        world.envoy.admin
    );
    std::thread::sleep(std::time::Duration::from_millis(450));
    for name in [
        "requests",
        "verdict.allow",
        "verdict.flag",
        "verdict.block",
        "local_replies",
        "sessions.new",
    ] {
        println!(
            "   flowguard.{name:<40} {}",
            world.envoy.metric(&format!("flowguard.{name}"))
        );
    }
    for rule in Rule::ALL {
        println!(
            "   flowguard.rule.{:<35} {}",
            rule.id(),
            world.envoy.metric(&format!("flowguard.rule.{}", rule.id()))
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(800)); // the last telemetry batch
    println!(
        "\n4. the collector (SQLite {}): {} events stored; the fleet policy learned from them:",
        collector.db.display(),
        collector.stats().map(|s| s.0).unwrap_or(0)
    );
    match collector.tool(&["learn"]) {
        Ok(out) => println!("{}", out.lines().next().unwrap_or("")),
        Err(e) => println!("   (not learned: {e})"),
    }
    let svg = run_dir.join("flow.svg");
    if collector
        .tool(&[
            "policy",
            "graph",
            "--out",
            svg.to_str().unwrap_or("flow.svg"),
        ])
        .is_ok()
    {
        println!(
            "   the learned call graph (prerequisites in red): {}",
            svg.display()
        );
    }
    println!("\n5. replay: what that policy would have done to everything the collector stored");
    match collector.tool(&["replay"]) {
        Ok(out) => out.lines().for_each(|l| println!("   {l}")),
        Err(e) => println!("   {e}"),
    }
    let dir = world.envoy.keep_files().to_path_buf();
    println!(
        "\nEnvoy's config and log (with the learned policy as JSON) are in {}",
        dir.display()
    );
    if std::env::var_os("DEMO_HOLD").is_some() {
        println!(
            "DEMO_HOLD is set: Envoy keeps running at {} until you press Ctrl-C.",
            world.envoy.url
        );
        loop {
            std::thread::park();
        }
    }
    println!(
        "Run `DEMO_HOLD=1 make demo` to keep Envoy up and explore {}/stats/prometheus.",
        world.envoy.admin
    );
}

fn fail(e: &str) -> ! {
    eprintln!("demo failed: {e}");
    std::process::exit(1)
}

fn rule_counts(envoy: &Envoy) -> Vec<u64> {
    // Counters reach Envoy on the filter's tick (200 ms here).
    std::thread::sleep(std::time::Duration::from_millis(450));
    Rule::ALL
        .iter()
        .map(|r| envoy.metric(&format!("flowguard.rule.{}", r.id())))
        .collect()
}

fn fired_since(envoy: &Envoy, before: &[u64]) -> String {
    let now = rule_counts(envoy);
    let fired: Vec<String> = Rule::ALL
        .iter()
        .zip(now.iter().zip(before))
        .filter(|(_, (n, b))| n > b)
        .map(|(r, (n, b))| format!("{} x{}", r.id(), n - b))
        .collect();
    if fired.is_empty() {
        "none: allowed untouched".into()
    } else {
        fired.join(", ")
    }
}

fn scenario(
    envoy: &Envoy,
    name: &str,
    play: impl FnOnce(&mut Session),
    client: &flowguard_integration::traffic::Client,
) {
    let before = rule_counts(envoy);
    let mut s = Session::new(client);
    play(&mut s);
    let blocked = s
        .calls
        .iter()
        .filter(|c| c.reply.body.contains("request blocked"))
        .count();
    println!(
        "{:<44} {:>8} {:>8} {:>8}  {}",
        name,
        s.calls.len(),
        s.calls.len() - blocked,
        blocked,
        fired_since(envoy, &before)
    );
}
