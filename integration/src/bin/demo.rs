//! `make demo`: a real Envoy with flowguard in `enforce` protecting the demo shop. It
//! learns from normal sessions, then plays every attack kind beside normal customers and
//! shows what flowguard allowed, flagged and blocked, with the rule that fired.

use flowguard_engine::rule::Rule;
use flowguard_integration::collector::Collector;
use flowguard_integration::envoy::{repo_root, Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};
use flowguard_integration::world::World;

/// The header Envoy takes the client address from (the demo's load balancer).
const CLIENT_IP: &str = "x-client-ip";

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
    // The operator's console on loopback (read-only without credentials); decisions need
    // the token: FLOWGUARD_CONSOLE_TOKEN, or one made up for this run and printed below.
    let console_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&e.to_string()));
    let console_listen = format!("127.0.0.1:{console_port}");
    let console_token = std::env::var("FLOWGUARD_CONSOLE_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| format!("demo-{:016x}", fastrand::u64(..)));
    let collector = Collector::start(
        &run_dir.join("flowguard.db"),
        &[
            "--learn-interval-s",
            "0",
            "--console",
            &console_listen,
            "--console-token",
            &console_token,
        ],
    )
    .unwrap_or_else(|e| fail(&e));
    let shop = ShopServer::start().unwrap_or_else(|e| fail(&e.to_string()));
    let mut cfg = EnvoyConfig::new(CONFIG, shop.addr);
    cfg.concurrency = 2;
    cfg.collector = Some(collector.addr);
    // Envoy takes each client's address from a header, as behind a load balancer: every
    // customer of the demo has their own address, as real ones do.
    cfg.client_ip_header = Some(CLIENT_IP);
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
    traffic::play_normal_from(&world.client, 360, CLIENT_IP, 1);
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
            "   {:<32} {:>10} {:>12} {:>10}  must succeed first (or why nothing is enforced)",
            "endpoint", "rate/10s", "ids/10s", "anon/10s"
        );
        for e in &policy.endpoints {
            let lim = |l: Option<flowguard_engine::policy::Limit>| {
                l.map_or("-".into(), |l| format!("p99 {} -> {}", l.p99, l.limit))
            };
            let mut order = match (&e.evidence, e.order_rules()) {
                (Some(ev), None) => format!("- ({})", ev.describe()),
                (_, rules) => format!("{} [blocks]", rules.unwrap_or_default()),
            };
            if let Some(flagged) = e.flag_rules() {
                order.push_str(&format!("; {flagged} [flags: some evidence]"));
            }
            println!(
                "   {:<32} {:>10} {:>12} {:>10}  {}",
                e.template,
                lim(e.rate),
                lim(e.distinct_ids),
                e.address_rate.map_or("-".into(), |l| l.limit.to_string()),
                order
            );
        }
        println!("   (anon: requests without a cookie or token, per client address and customer it carries)");
        println!();
    }

    println!("2. enforcing: customers and attackers side by side\n");
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}  rules that fired",
        "scenario", "requests", "allowed", "blocked", "flagged"
    );
    println!("{}", "-".repeat(119));
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
        "pay one order, confirm a second one unpaid",
        |s| {
            traffic::pay_once_confirm_many(s);
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
            for i in 0..20 {
                let ip = traffic::numbered_address(5_000 + i);
                let mut c = Session::from_address(&client, CLIENT_IP, &ip);
                traffic::normal_order(&mut c);
                s.calls.extend(c.calls);
            }
        },
        &client,
    );
    let before = rule_counts(&world.envoy);
    let statuses = traffic::credential_stuffing_from(&client, 60, CLIENT_IP, "172.16.0.9");
    let blocked = statuses.iter().filter(|s| **s == 429).count();
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}  {}",
        "credential stuffing: 60 logins, new cookie each",
        statuses.len(),
        statuses.len() - blocked,
        blocked,
        "-",
        fired_since(&world.envoy, &before)
    );
    // No cookie at all: the request is keyed by its client address, whose anonymous
    // requests have limits of their own (the shop takes any password but "wrong": no
    // failure to count, only the rate shows it).
    let before = rule_counts(&world.envoy);
    let replies: Vec<traffic::Reply> = (0..400)
        .map(|i| {
            let body = serde_json::json!({"user": "alice", "password": format!("guess{i}")});
            client.send(
                "POST",
                "/api/login",
                &[(CLIENT_IP, "172.16.0.10")],
                Some(&body),
            )
        })
        .collect();
    let blocked = replies
        .iter()
        .filter(|r| r.body.contains("request blocked"))
        .count();
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}  {}",
        "anonymous brute force: 400 logins, no cookie",
        replies.len(),
        replies.len() - blocked,
        blocked,
        replies.iter().filter(|r| is_flagged(r)).count(),
        fired_since(&world.envoy, &before)
    );
    scenario(
        &world.envoy,
        "fresh sessions confirm first (10 addresses)",
        |s| {
            // Each a session this proxy never saw, from its own address, whose first
            // request confirms an order: the collector is asked whether the fleet saw it
            // pay; it did not, so the skip is blocked.
            for i in 0..10 {
                let ip = traffic::numbered_address(7_000 + i);
                let mut c = Session::from_address(&client, CLIENT_IP, &ip);
                c.confirm(1 + i as u64);
                s.calls.extend(c.calls);
            }
        },
        &client,
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
    library_demo();

    let dir = world.envoy.keep_files().to_path_buf();
    println!(
        "\nEnvoy's config and log (with the learned policy as JSON) are in {}",
        dir.display()
    );
    println!(
        "\nThe operator's console: http://{console_listen}/ (fleet, learned API, flow graph, blocks and flags, what-if, decisions; log in with token {console_token} to decide)"
    );
    if std::env::var_os("DEMO_HOLD").is_some() {
        println!(
            "DEMO_HOLD is set: Envoy ({}), the collector and its console (http://{console_listen}/) keep running until you press Ctrl-C.",
            world.envoy.url
        );
        loop {
            std::thread::park();
        }
    }
    println!(
        "Run `DEMO_HOLD=1 make demo` to keep Envoy and the console up and explore {}/stats/prometheus.",
        world.envoy.admin
    );
}

/// Part 6: the same filter, default settings but for how the API says "failed", in front of
/// an API built unlike the shop.
fn library_demo() {
    use flowguard_integration::library_traffic::{self as lib, attacks, Reader};
    println!("\n6. a second API flowguard was not built around: a lending library");
    println!("   (user names and book slugs in paths, /api/v2, register then log in for a");
    println!(
        "   bearer token, optional steps, several loans per reader, failures answered 200 with\n   {{\"status\":\"fail\"}}; pickup trusts the client to have paid the deposit)"
    );
    let library = ShopServer::library().unwrap_or_else(|e| fail(&e.to_string()));
    // Its failures come as 200 {"status":"fail"} (login) and {"status":"declined"} (card);
    // its login hands out the bearer token in the body (`auth_token`).
    println!("   filter configuration:\n{}", lib::CONFIG);
    let mut cfg = EnvoyConfig::new(lib::CONFIG, library.addr);
    cfg.concurrency = 2;
    cfg.client_ip_header = Some(lib::CLIENT_IP);
    let envoy = Envoy::start(&cfg).unwrap_or_else(|e| fail(&e));
    let client = Client::new(&envoy.url);
    let mut rng = fastrand::Rng::with_seed(7);
    println!("   learning from 400 readers (a fifth behind three NAT addresses), default evidence and session sources...");
    for i in 0..400 {
        lib::normal_visit(
            &mut Reader::new(&client, &lib::customer_address(i)),
            &mut rng,
        );
    }
    if let Err(e) = envoy.wait_for_model() {
        fail(&format!("{e}\n{}", envoy.log()));
    }
    println!(
        "   {} logins handed their reader's flow from the client address (a weak session) to\n   the token in the answer (session.handover)",
        envoy.counter("flowguard.sessions.handovers")
    );
    if let Some(policy) = envoy.learned_policy() {
        println!(
            "   {} endpoints learned, among them:",
            policy.endpoints.len()
        );
        for e in policy.endpoints.iter().filter(|e| e.template.contains('{')) {
            let mut order = match (&e.evidence, e.order_rules()) {
                (Some(ev), None) => format!("({})", ev.describe()),
                (_, rules) => format!("needs {} [blocks]", rules.unwrap_or_default()),
            };
            if let Some(flagged) = e.flag_rules() {
                order.push_str(&format!("; {flagged} [flags]"));
            }
            println!("     {:<36} {order}", e.template);
        }
    }
    let (mut wronged, mut nat, mut requests, mut flagged) = (0, 0, 0, 0);
    for i in 0..200 {
        let ip = lib::customer_address(10_000 + i);
        let mut r = Reader::new(&client, &ip);
        lib::normal_visit(&mut r, &mut rng);
        wronged += usize::from(r.was_blocked());
        nat += usize::from(lib::NAT_ADDRESSES.contains(&ip.as_str()));
        requests += r.calls.len();
        flagged += r.flagged;
    }
    println!(
        "   200 readers it never learned from ({nat} behind the NAT addresses): {wronged} blocked, {flagged} of {requests} requests flagged"
    );
    let blocked = |replies: Vec<flowguard_integration::traffic::Reply>| {
        let n = replies.iter().filter(|r| lib::is_block(r)).count();
        format!("{n} of {} decisive calls blocked", replies.len())
    };
    let reader = |n: usize| Reader::new(&client, &lib::address(50_000 + n));
    for (name, outcome) in [
        (
            "pickup without deposit",
            blocked(attacks::pickup_without_deposit(&mut reader(1), &mut rng)),
        ),
        (
            "pickup after a declined card",
            blocked(attacks::pickup_after_declined_deposit(
                &mut reader(2),
                &mut rng,
            )),
        ),
        (
            "one deposit, then a second pickup",
            blocked(attacks::deposit_once_pickup_many(&mut reader(6), &mut rng)),
        ),
        (
            "walk loan ids 1..150",
            blocked(attacks::walk_loans(&mut reader(3), 150)),
        ),
        (
            "flood the catalogue (100 calls)",
            blocked(attacks::flood_books(&mut reader(4), 100)),
        ),
        (
            "credential stuffing (60 logins)",
            blocked(attacks::stuffing(&mut reader(5), 60)),
        ),
        (
            "login brute force (400, no token)",
            blocked(attacks::brute_force(&mut reader(7), 400)),
        ),
        (
            "registration flood (300 accounts)",
            blocked(attacks::registration_flood(&mut reader(8), 300)),
        ),
    ] {
        println!("   {name:<34} {outcome}");
    }
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
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(9_000);
    let before = rule_counts(envoy);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut s = Session::from_address(client, CLIENT_IP, &traffic::numbered_address(n));
    play(&mut s);
    let blocked = s
        .calls
        .iter()
        .filter(|c| c.reply.body.contains("request blocked"))
        .count();
    let flagged = s.calls.iter().filter(|c| is_flagged(&c.reply)).count();
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}  {}",
        name,
        s.calls.len(),
        s.calls.len() - blocked,
        blocked,
        flagged,
        fired_since(envoy, &before)
    );
}

/// Whether the upstream saw the request flagged (`x-flowguard-verdict: flag; ...`).
fn is_flagged(r: &traffic::Reply) -> bool {
    r.upstream_verdict().is_some_and(|v| v.starts_with("flag"))
}
