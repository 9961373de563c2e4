//! The native module's own work per exchange, without Envoy: `perf.py`'s policy and
//! request mix through `Stream::request` / `response_head` / `finish`, for
//! `valgrind --tool=callgrind` (`python3 native/perf/perf.py instr-engine` runs it).
//!
//!   cargo run --profile native -p flowguard-native --example exchanges -- [COUNT]

use flowguard::{Filter, Level};
use std::sync::Arc;

fn quiet(_: Level, _: &str) {}

/// 60 templates `GET /api/catalog/s<i>/items/{id}`, every transition known, limits
/// no request reaches: every request is judged and allowed.
fn policy() -> String {
    let templates: Vec<String> = (0..60)
        .map(|i| format!("GET /api/catalog/s{i}/items/{{id}}"))
        .collect();
    let limit = r#"{"p50":1,"p90":2,"p99":3,"limit":100000}"#;
    let endpoints: Vec<String> = templates
        .iter()
        .map(|t| {
            format!(
                r#"{{"template":"{t}","entry":true,"sessions":100,"successes":100,"rate":{limit},"distinct_ids":{limit}}}"#
            )
        })
        .collect();
    let mut transitions: Vec<String> = templates
        .iter()
        .map(|t| format!(r#"{{"from":"^","to":"{t}","count":10}}"#))
        .collect();
    for a in &templates {
        for b in &templates {
            transitions.push(format!(r#"{{"from":"{a}","to":"{b}","count":10}}"#));
        }
    }
    format!(
        r#"{{"version":1,"window_s":10,"endpoints":[{}],"transitions":[{}],"session_rate":{limit},
        "auth_failures":{{"p50":0,"p90":0,"p99":0,"limit":100000}}}}"#,
        endpoints.join(","),
        transitions.join(",")
    )
}

fn exchange(filter: &Arc<Filter>, path: &str, cookie: &str) {
    let headers: [(&[u8], &[u8]); 7] = [
        (b":authority", b"127.0.0.1:19100"),
        (b":path", path.as_bytes()),
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b"cookie", cookie.as_bytes()),
        (b"x-forwarded-proto", b"http"),
        (b"x-request-id", b"5a6f2c1e-8d2b-4c7a-9f1e-2b3c4d5e6f70"),
    ];
    let answer: [(&[u8], &[u8]); 4] = [
        (b":status", b"200"),
        (b"content-length", b"2"),
        (b"content-type", b"text/plain"),
        (b"date", b"Wed, 02 Dec 2026 18:00:00 GMT"),
    ];
    let mut stream = filter.stream();
    let Ok(step) = stream.request(&headers, || Some(b"127.0.0.1:40000".to_vec())) else {
        return;
    };
    if step.reply.is_none() {
        let _ = stream.response_head(&answer, false, || None);
        let _ = stream.response_body(b"ok", true, || None);
        let _ = stream.finish(|| None);
    }
}

fn main() {
    let count: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let json = format!(
        r#"{{"mode":"enforce","session":{{"capacity":32768}},"policy":{}}}"#,
        policy()
    );
    let filter = match Filter::new(json.as_bytes(), quiet) {
        Ok(f) => Arc::new(f),
        Err(e) => {
            eprintln!("configuration: {e}");
            std::process::exit(2);
        }
    };
    // The mix's strings, made before the count starts.
    let paths: Vec<String> = (0..3000)
        .map(|k| format!("/api/catalog/s{}/items/{}", k % 60, k % 1000))
        .collect();
    let cookies: Vec<String> = (0..3000).map(|k| format!("session=b{k}")).collect();
    let mix = paths.iter().zip(&cookies).cycle();
    // Warm up as perf.py does: every session of the mix has been seen.
    for (path, cookie) in mix.take(3000 + count) {
        exchange(&filter, path, cookie);
    }
}
