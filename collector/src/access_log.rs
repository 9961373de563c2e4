//! Envoy JSON access logs as learning input for `flowguard learn --envoy-log`.
//!
//! Expected fields per line (the format `envoy/flowguard-collector.yaml` configures):
//! `time_ms` (`%START_TIME(%s%3f)%`), `method`, `path`, `status`, and `session` (the
//! `x-flowguard-session` header) or, failing that, `client` (the downstream address).

use flowguard_engine::endpoint::Normaliser;
use flowguard_engine::fingerprint::Fingerprinter;
use flowguard_engine::learn::Observation;
use serde_json::Value;

/// Parses one log; lines that are not usable JSON are counted, not fatal.
pub fn parse(text: &str) -> (Vec<Observation>, usize) {
    let normaliser = Normaliser::default();
    let hasher = Fingerprinter::from_secret("flowguard-access-log");
    let mut skipped = 0;
    let mut out = Vec::new();
    let mut template = String::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            skipped += 1;
            continue;
        };
        let field = |k: &str| {
            v.get(k).and_then(|x| {
                x.as_str()
                    .map(str::to_owned)
                    .or_else(|| x.as_u64().map(|n| n.to_string()))
            })
        };
        let (Some(time), Some(method), Some(path), Some(status)) = (
            field("time_ms"),
            field("method"),
            field("path"),
            field("status"),
        ) else {
            skipped += 1;
            continue;
        };
        let session = field("session")
            .filter(|s| s.len() == 16)
            .and_then(|s| u64::from_str_radix(&s, 16).ok())
            .or_else(|| field("client").map(|c| hasher.fingerprint(4, c.as_bytes())));
        let (Ok(time_ms), Ok(status), Some(session)) =
            (time.parse::<u64>(), status.parse::<u16>(), session)
        else {
            skipped += 1;
            continue;
        };
        let ids = normaliser.normalise(&method, &path, &mut template);
        out.push(Observation {
            session,
            time_ms,
            template: template.clone(),
            status,
            ids,
            // An access log does not say which source keyed the session.
            weak: false,
        });
    }
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_envoy_json_lines() {
        let log = r#"{"time_ms":"1700000000123","method":"POST","path":"/api/orders/7/pay?x=1","status":"402","session":"00000000000000ff"}
not json
{"time_ms":"1700000000200","method":"GET","path":"/api/menu","status":"200","session":"-","client":"10.0.0.1:5555"}
{"method":"GET"}"#;
        let (obs, skipped) = parse(log);
        assert_eq!(skipped, 2);
        assert_eq!(
            obs[0],
            Observation {
                session: 255,
                time_ms: 1_700_000_000_123,
                template: "POST /api/orders/{id}/pay".into(),
                status: 402,
                ids: obs[0].ids,
                weak: false,
            }
        );
        assert!(obs[0].ids.is_some());
        assert_eq!(obs[1].template, "GET /api/menu");
    }
}
