//! A whole exchange as both hosts drive it (`engine::exchange`), with what a client and an
//! upstream control: the request's headers, the answer's status and headers (a session
//! cookie, a content type, a length) and its body in chunks (a 2xx failure, a login's
//! token, sensitive fields), with a collector (events, the fleet question and its answer)
//! and hand-over configured, on an in-memory host. Nothing may panic, the slot table stays
//! within its capacity, and every event is complete.
#![no_main]

use flowguard_engine::config::Settings;
use flowguard_engine::exchange::{self, AnswerNeeds, Exchange, ResponseHead, Scope};
use flowguard_engine::fleet_join::{Fleet, Seed};
use flowguard_engine::learn::{LearnStats, Registry};
use flowguard_engine::model::Model;
use flowguard_engine::store::MemoryHost;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static SETTINGS: LazyLock<Option<Settings>> = LazyLock::new(|| {
    Settings::from_json(
        br#"{"mode":"enforce","session":{"capacity":8,"sources":[{"cookie":"session"},
            {"authorization":["Bearer"]},"address"],
            "handover":{"templates":["POST /login"],"json_field":"auth.token"}},
          "endpoints":{"failure":{"json":{"status":["error","fail"]},"auth":["POST /login"]}},
          "collector":{"cluster":"fg","sample_rate":0.5},
          "policy":{"version":1,"endpoints":[
            {"template":"POST /login","entry":true},
            {"template":"POST /api/orders/{id}/pay","entry":true},
            {"template":"POST /api/orders/{id}/confirm","bound_prerequisites":["POST /api/orders/{id}/pay"]},
            {"template":"GET /api/users/{name}","distinct_ids":{"p50":1,"p90":1,"p99":2,"limit":3}}]}}"#,
    )
    .ok()
});

static MODEL: LazyLock<Option<Model>> =
    LazyLock::new(|| Model::compile(SETTINGS.as_ref()?.policy.as_ref()?, SETTINGS.as_ref()?).ok());

fuzz_target!(|data: &[u8]| {
    let (Some(settings), Some(model)) = (SETTINGS.as_ref(), MODEL.as_ref()) else {
        panic!("the fuzz target's own settings and policy are valid");
    };
    let base = exchange::base_normaliser(settings, &Registry::default());
    let scope = Scope {
        settings,
        model: Some(model),
        registry_map: &[],
        base_normaliser: &base,
        started: 1_000,
        relearns: false,
        registry: None,
    };
    let mut host = MemoryHost::default();
    host.address = Some("10.1.2.3:4567".into());
    let mut delta = LearnStats::default();
    // Exchanges separated by \x01, each: method \0 path \0 cookie \0 authorization \0
    // status \0 set-cookie \0 content-type \0 body chunks separated by \x02.
    for (n, one) in data.split(|b| *b == 1).take(12).enumerate() {
        let mut parts = one.splitn(8, |b| *b == 0);
        let mut next = || parts.next().unwrap_or_default();
        let (method, path, cookie, auth) = (next(), next(), next(), next());
        let (status, set_cookie, content_type, body) = (next(), next(), next(), next());
        let request: Vec<(&[u8], &[u8])> = vec![
            (b":method", method),
            (b":path", path),
            (b"cookie", cookie),
            (b"authorization", auth),
            (b"x-flowguard-verdict", b"allow"),
        ];
        let now_ms = 1_000_000 + n as u64 * 700;
        let mut x = Exchange::default();
        x.can_ask = n % 2 == 0;
        let Ok(mut step) = x.request(&scope, &mut host, &request, now_ms, n as u64, &mut delta)
        else {
            panic!("an uncontended in-memory host never fails");
        };
        assert_eq!(
            step.strip.len(),
            1,
            "the client's verdict header is stripped"
        );
        if step.ask.is_some() {
            // Answered by the fleet from the fuzz input, or not at all.
            let fleet = match status.first() {
                Some(b) if b % 3 == 0 => Fleet::Unavailable,
                Some(_) => Fleet::Answered(Seed::from_answer(
                    model,
                    true,
                    std::str::from_utf8(set_cookie).ok(),
                    None,
                )),
                None => Fleet::Unasked,
            };
            step = x
                .resume(&scope, &mut host, fleet, now_ms, n as u64, &mut delta)
                .unwrap_or_default();
        }
        if let Some(e) = &step.event {
            assert!(
                step.reply.is_some() && e.status >= 400,
                "a reply's event is complete"
            );
        }
        if step.reply.is_none() {
            let answer: Vec<(&[u8], &[u8])> = vec![
                (b":status", status),
                (b"set-cookie", set_cookie),
                (b"content-type", content_type),
            ];
            let head = match x.answer_needs(settings) {
                AnswerNeeds::Nothing => None,
                AnswerNeeds::Status => Some(ResponseHead::from_headers(settings, &answer[..1])),
                AnswerNeeds::Headers => Some(ResponseHead::from_headers(settings, &answer)),
            };
            let mut events = Vec::new();
            if let Some(head) = head {
                let chunks: Vec<&[u8]> = body.split(|b| *b == 2).collect();
                let last = chunks.is_empty();
                if let Ok(s) = x.response_head(&scope, &mut host, &head, last, now_ms, &mut delta) {
                    events.extend(s.events);
                }
                for (i, chunk) in chunks.iter().enumerate() {
                    if !x.wants_body() {
                        break;
                    }
                    let end = i + 1 == chunks.len();
                    if let Ok(s) =
                        x.response_body(&scope, &mut host, chunk, end, now_ms, &mut delta)
                    {
                        events.extend(s.events);
                    }
                }
            }
            if let Ok(s) = x.finish(&scope, &mut host, now_ms + 5, &mut delta) {
                events.extend(s.events);
            }
            assert!(events.iter().all(|e| !e.template.is_empty()), "{events:?}");
        }
        assert!(
            host.len() <= 16,
            "slots and address slots stay within capacity"
        );
    }
});
