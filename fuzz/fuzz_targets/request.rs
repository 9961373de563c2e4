//! What a client controls on the request path: method, path, cookies and bearer tokens,
//! through session derivation, normalisation (with declared templates) and a verdict.
#![no_main]

use flowguard_engine::config::Settings;
use flowguard_engine::endpoint::{DeclaredTemplate, Normaliser};
use flowguard_engine::session::{self, Source};
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static NORMALISER: LazyLock<Normaliser> = LazyLock::new(|| {
    let declared = ["GET /api/users/{name}", "/files/{f}/raw"]
        .iter()
        .filter_map(|t| DeclaredTemplate::parse(t).ok())
        .collect();
    Normaliser::new(declared, ["GET /api/items".to_owned()].into())
});

fuzz_target!(|data: &[u8]| {
    // method \0 path \0 cookie \0 authorization
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(4, '\0');
    let (method, path, cookie, auth) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let sources = [
        Source::Cookie("session".into()),
        Source::Bearer,
        Source::Address,
    ];
    let header = |name: &str| match name {
        "cookie" => Some(cookie),
        "authorization" => Some(auth),
        _ => None,
    };
    let _ = session::derive(&sources, header, Some(path));
    // The JWT claim source decodes and scans the token's payload.
    let _ = session::derive(&[Source::JwtClaim("sub".into())], header, None);

    let mut out = String::new();
    NORMALISER.normalise(method, path, &mut out);
    assert!(
        out.len() <= 8 * 1024,
        "templates stay bounded: {}",
        out.len()
    );
    let mut again = String::new();
    let (m, p) = out.split_once(' ').unwrap_or(("", &out));
    NORMALISER.normalise(m, p, &mut again);
    let _ = Settings::from_json(b"{}");
});
