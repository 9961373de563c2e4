//! What a client controls on the request path, through the filter's own request path:
//! method, path, cookies and bearer tokens, through session derivation, normalisation
//! (with declared templates) and `engine::judge` (slot placement, the verdict, the
//! compare-and-swap write, mid-flow joins, address state) on an in-memory host, one
//! session's requests after another.
#![no_main]

use flowguard_engine::config::Settings;
use flowguard_engine::endpoint::{DeclaredTemplate, Normaliser};
use flowguard_engine::judge::Judge;
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use flowguard_engine::session::{self, Source};
use flowguard_engine::store::MemoryHost;
use flowguard_engine::verdict::Request;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static NORMALISER: LazyLock<Normaliser> = LazyLock::new(|| {
    let declared = ["GET /api/users/{name}", "/files/{f}/raw"]
        .iter()
        .filter_map(|t| DeclaredTemplate::parse(t).ok())
        .collect();
    Normaliser::new(declared, ["GET /api/items".to_owned()].into())
});

static SETTINGS: LazyLock<Option<Settings>> = LazyLock::new(|| {
    Settings::from_json(
        br#"{"mode":"enforce","session":{"capacity":8,"sources":[{"cookie":"session"},
            {"authorization":["Bearer","Token"]},"address"]}}"#,
    )
    .ok()
});

static MODEL: LazyLock<Option<Model>> = LazyLock::new(|| {
    let policy = Policy::from_json(
        br#"{"version":1,"endpoints":[
        {"template":"POST /api/orders/{id}/pay","entry":true},
        {"template":"POST /api/orders/{id}/confirm","bound_prerequisites":["POST /api/orders/{id}/pay"]},
        {"template":"GET /api/users/{name}","distinct_ids":{"p50":1,"p90":1,"p99":2,"limit":3}}]}"#,
    )
    .ok()?;
    Model::compile(&policy, SETTINGS.as_ref()?).ok()
});

fuzz_target!(|data: &[u8]| {
    let (Some(settings), Some(model)) = (SETTINGS.as_ref(), MODEL.as_ref()) else {
        panic!("the fuzz target's own settings and policy are valid");
    };
    let judge = Judge {
        settings,
        model: Some(model),
        layout: 1,
        registry_map: &[],
        started: 1_000,
        relearns: false,
    };
    let mut host = MemoryHost::default();
    host.address = Some("10.1.2.3:4567".into());
    let text = String::from_utf8_lossy(data);
    // Requests separated by \x01, each: method \0 path \0 cookie \0 authorization.
    for (n, one) in text.split('\x01').take(16).enumerate() {
        let mut parts = one.splitn(4, '\0');
        let (method, path, cookie, auth) = (
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let header = |name: &str| match name {
            "cookie" => Some(cookie),
            "authorization" => Some(auth),
            _ => None,
        };
        let sources = [
            Source::Cookie("session".into()),
            Source::Bearer,
            Source::Address,
        ];
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

        // The filter's request path on this request.
        let Some(key) = session::derive(&settings.session.sources, header, Some("10.1.2.3:4567"))
        else {
            continue;
        };
        let fingerprint = settings
            .session
            .fingerprinter
            .fingerprint(key.kind, key.value.as_bytes());
        let mut template = String::new();
        let id = model.normaliser.normalise(method, path, &mut template);
        let now = 1_000 + u32::try_from(n).unwrap_or(0);
        let mut request = Request {
            endpoint: model.endpoint(&template),
            id,
            now_ms: u64::from(now) * 1000,
            ..Request::default()
        };
        let judged = judge.request(&mut host, &mut request, fingerprint, None, now);
        assert!(
            judged.is_ok_and(|j| j.is_some()),
            "an uncontended write lands"
        );
        assert!(
            host.len() <= 16,
            "slots and address slots stay within capacity"
        );
    }
});
