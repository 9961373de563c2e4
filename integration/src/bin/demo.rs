//! `make demo`: a real Envoy with flowguard in `enforce` protecting the demo shop. It
//! learns from normal sessions, then normal orders and attacks run side by side.

use flowguard_engine::rule::Rule;
use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Reply, Session};

const CONFIG: &str = r#"{
  "mode": "enforce",
  "session": { "sources": [{"cookie": "session"}, "bearer", "address"], "capacity": 16384 },
  "learning": { "min_sessions": 80, "min_requests": 400, "tick_ms": 200 }
}"#;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo failed: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let shop = ShopServer::start().map_err(|e| format!("shop: {e}"))?;
    let mut envoy = Envoy::start(&EnvoyConfig::new(CONFIG, shop.addr))?;
    println!(
        "flowguard demo: Envoy 1.40 on {} -> demo shop on {}",
        envoy.url, shop.addr
    );
    println!("filter configuration:\n{CONFIG}\n");

    let client = Client::new(&envoy.url);
    println!(
        "1. learning: playing 100 normal sessions (orders, declined cards retried, browsing)..."
    );
    traffic::play_normal(&client, 100);
    let version = envoy.wait_for_model()?;
    std::thread::sleep(std::time::Duration::from_millis(300)); // let Envoy flush its log
    println!("   model version {version} learned and active on every worker.\n");
    if let Some(policy) = envoy.learned_policy() {
        println!("   learned prerequisites (what must succeed earlier in the session):");
        for e in policy
            .endpoints
            .iter()
            .filter(|e| !e.prerequisites.is_empty())
        {
            println!("   {:<34} <- {}", e.template, e.prerequisites.join(", "));
        }
        println!();
    }

    println!("2. enforcing: normal customers and attackers, side by side\n");
    println!(
        "{:<38} {:<34} {:>6}  flowguard",
        "scenario", "request", "status"
    );
    println!("{}", "-".repeat(96));
    for round in 0..3 {
        let mut customer = Session::new(&client);
        let reply = traffic::normal_order(&mut customer);
        row("normal order", &customer, &reply);
        let mut fraud = Session::new(&client);
        let reply = traffic::skip_payment(&mut fraud);
        row("confirm without paying (pizza fraud)", &fraud, &reply);
        let mut declined = Session::new(&client);
        let reply = traffic::confirm_after_failed_payment(&mut declined);
        row("confirm after a declined card", &declined, &reply);
        if round == 0 {
            let mut browser = Session::new(&client);
            traffic::browsing(&mut browser);
            if let Some(last) = browser.calls.last() {
                row("browsing only", &browser, &last.reply.clone());
            }
        }
    }

    println!(
        "\n3. what Envoy counted (admin {}/stats?filter=flowguard):",
        envoy.admin
    );
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
            envoy.metric(&format!("flowguard.{name}"))
        );
    }
    for rule in Rule::ALL {
        let n = envoy.metric(&format!("flowguard.rule.{}", rule.id()));
        if n > 0 {
            println!("   flowguard.rule.{:<35} {n}", rule.id());
        }
    }
    let dir = envoy.keep_files().to_path_buf();
    println!(
        "\nEnvoy's config and log (with flowguard's learned policy) are in {}",
        dir.display()
    );
    if std::env::var_os("DEMO_HOLD").is_some() {
        println!(
            "DEMO_HOLD is set: Envoy keeps running at {} until you press Ctrl-C.",
            envoy.url
        );
        loop {
            std::thread::park();
        }
    }
    println!(
        "Run `DEMO_HOLD=1 make demo` to keep Envoy up and explore {}/stats/prometheus.",
        envoy.admin
    );
    Ok(())
}

fn row(scenario: &str, session: &Session, reply: &Reply) {
    // The step that decides the scenario: the confirm call where there is one.
    let request = session
        .calls
        .iter()
        .rev()
        .find(|c| c.path.ends_with("/confirm"))
        .or(session.calls.last())
        .map(|c| format!("{} {}", c.method, c.path))
        .unwrap_or_default();
    let verdict = match (reply.status, reply.upstream_verdict()) {
        (403 | 429, _) if reply.body.contains("request blocked") => "BLOCKED".to_owned(),
        (_, Some(v)) => v.to_owned(),
        (_, None) => "-".to_owned(),
    };
    println!(
        "{scenario:<38} {request:<34} {:>6}  {verdict}",
        reply.status
    );
}
