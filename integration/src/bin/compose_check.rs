//! `compose-check`: the compose harness's runner. From inside the compose network it
//! plays learning traffic through Envoy, waits for flowguard's model, then asserts the
//! same verdicts as the real-Envoy tests. Exits non-zero on the first failed check.
use clap::Parser;
use flowguard_integration::patience::eventually;
use flowguard_integration::traffic::{self, Client, Session};
use std::process::ExitCode;

#[derive(Parser)]
struct Args {
    /// The proxied listener.
    #[arg(long, default_value = "http://envoy:10000")]
    target: String,
    /// Envoy's admin interface.
    #[arg(long, default_value = "http://envoy:9901")]
    admin: String,
    /// The collector (checked for stored events).
    #[arg(long, default_value = "collector:50051")]
    collector: String,
}

fn metric(admin: &str, name: &str) -> u64 {
    let url = format!(
        "{admin}/stats?filter=^wasmcustom\\.{}$",
        name.replace('.', "\\.")
    );
    let body = ureq::get(&url)
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.rsplit(": ").next()?.trim().parse().ok())
        .unwrap_or(0)
}

fn check(what: &str, ok: bool, failures: &mut u32) {
    println!("{} {what}", if ok { "PASS" } else { "FAIL" });
    *failures += u32::from(!ok);
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = eventually("Envoy to be ready", || {
        ureq::get(&format!("{}/ready", args.admin))
            .call()
            .ok()
            .filter(|r| r.status() == 200)
    }) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let client = Client::new(&args.target);
    traffic::play_normal(&client, 80);
    if let Err(e) = eventually("flowguard's model", || {
        (metric(&args.admin, "flowguard.policy.version") > 0).then_some(())
    }) {
        eprintln!("{e}");
        return ExitCode::FAILURE;
    }
    let mut failures = 0;
    let mut s = Session::new(&client);
    check(
        "confirm without paying is blocked (403)",
        traffic::skip_payment(&mut s).status == 403,
        &mut failures,
    );
    let mut s = Session::new(&client);
    check(
        "confirm after a declined card is blocked (403)",
        traffic::confirm_after_failed_payment(&mut s).status == 403,
        &mut failures,
    );
    let mut s = Session::new(&client);
    check(
        "a normal order succeeds (200)",
        traffic::normal_order(&mut s).status == 200,
        &mut failures,
    );
    let mut s = Session::new(&client);
    check(
        "a flood is rate limited (429)",
        traffic::flood(&mut s, 60).contains(&429),
        &mut failures,
    );
    let mut s = Session::new(&client);
    check(
        "an order-id walk is stopped (429)",
        traffic::enumerate_orders(&mut s, 100).contains(&429),
        &mut failures,
    );
    // Counters reach Envoy on the filter's tick.
    check(
        "rate.enumeration fired",
        eventually("the enumeration counter", || {
            (metric(&args.admin, "flowguard.rule.rate.enumeration") > 0).then_some(())
        })
        .is_ok(),
        &mut failures,
    );
    let mut s = Session::new(&client);
    s.login();
    let shadow = s.call("GET", "/api/internal/export", None);
    check(
        "a shadow endpoint is flagged upstream",
        shadow
            .upstream_verdict()
            .is_some_and(|v| v.contains("inventory.unknown_endpoint")),
        &mut failures,
    );
    let collector_up = std::net::TcpStream::connect(args.collector.as_str()).is_ok();
    check("the collector is reachable", collector_up, &mut failures);
    check(
        "telemetry reached the collector",
        eventually("acknowledged telemetry", || {
            (metric(&args.admin, "flowguard.telemetry.sent") > 0).then_some(())
        })
        .is_ok(),
        &mut failures,
    );
    println!("{} passed, {failures} failed", 9 - failures);
    if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
