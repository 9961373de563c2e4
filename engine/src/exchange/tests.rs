//! The exchange on an in-memory host: what the filter does with a request and its answer.

use super::*;
use crate::fleet_join::Seed;
use crate::store::MemoryHost;

const POLICY: &str = r#"{"version":1,"window_s":60,"endpoints":[
    {"template":"POST /pay","entry":true},
    {"template":"POST /confirm","prerequisites":["POST /pay"]},
    {"template":"GET /items","entry":true,
     "rate":{"p50":1,"p90":2,"p99":3,"limit":3}}],
  "transitions":[{"from":"^","to":"POST /pay","count":9},
    {"from":"POST /pay","to":"POST /confirm","count":9},
    {"from":"^","to":"GET /items","count":9}]}"#;

fn settings(mode: &str) -> Settings {
    settings_with(mode, "")
}

fn settings_with(mode: &str, extra: &str) -> Settings {
    let json = format!(
        r#"{{"mode":"{mode}","session":{{"sources":[{{"cookie":"session"}}]}},"policy":{POLICY}{extra}}}"#
    );
    Settings::from_json(json.as_bytes()).unwrap()
}

fn status(status: u16) -> ResponseHead {
    ResponseHead {
        status,
        ..ResponseHead::default()
    }
}

/// What the tests judge with: a model (or none: learning), nothing learned yet.
fn scope<'a>(settings: &'a Settings, model: Option<&'a Model>, base: &'a Normaliser) -> Scope<'a> {
    Scope {
        settings,
        model,
        registry_map: &[],
        base_normaliser: base,
        started: 1,
        relearns: false,
        registry: None,
    }
}

struct World {
    settings: Settings,
    model: Model,
    base: Normaliser,
    host: MemoryHost,
    delta: LearnStats,
}

impl World {
    fn new(mode: &str) -> World {
        World::with(settings(mode))
    }

    fn with(settings: Settings) -> World {
        let policy = settings.policy.clone().unwrap();
        let model = Model::compile(&policy, &settings).unwrap();
        let base = base_normaliser(&settings, &Registry::default());
        World {
            settings,
            model,
            base,
            host: MemoryHost::default(),
            delta: LearnStats::default(),
        }
    }

    /// One exchange: the request's step, and (unless it was answered locally) the
    /// upstream's `status`.
    fn call(
        &mut self,
        method: &str,
        path: &str,
        session: &str,
        code: u16,
        now: u64,
    ) -> RequestStep {
        self.exchange(method, path, session, &status(code), &[], now)
            .0
    }

    /// One exchange whose answer has `head` and then `body` (one chunk per element).
    fn exchange(
        &mut self,
        method: &str,
        path: &str,
        session: &str,
        head: &ResponseHead,
        body: &[&[u8]],
        now: u64,
    ) -> (RequestStep, ResponseStep) {
        let scope = scope(&self.settings, Some(&self.model), &self.base);
        let cookie = format!("session={session}");
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", method.as_bytes()),
            (b":path", path.as_bytes()),
            (b"cookie", cookie.as_bytes()),
            (b"x-request-id", b"req-1"),
            (b"X-Flowguard-Verdict", b"allow"),
        ];
        let mut exchange = Exchange::default();
        let now_ms = now * 1000;
        let step = exchange
            .request(&scope, &mut self.host, &headers, now_ms, 1, &mut self.delta)
            .unwrap();
        let mut answer = ResponseStep::default();
        if step.reply.is_none() {
            answer = exchange
                .response_head(
                    &scope,
                    &mut self.host,
                    head,
                    body.is_empty(),
                    now_ms,
                    &mut self.delta,
                )
                .unwrap();
            for (i, chunk) in body.iter().enumerate() {
                let last = i + 1 == body.len();
                let more = exchange
                    .response_body(&scope, &mut self.host, chunk, last, now_ms, &mut self.delta)
                    .unwrap();
                answer.completed |= more.completed;
                answer.handed_over |= more.handed_over;
                answer.sensitive |= more.sensitive;
            }
            let end = exchange
                .finish(&scope, &mut self.host, now_ms, &mut self.delta)
                .unwrap();
            answer.completed |= end.completed;
        }
        (step, answer)
    }
}

fn header<'a>(step: &'a RequestStep, name: &str) -> Option<&'a str> {
    step.set.get(name)
}

#[test]
fn a_skipped_step_is_refused_in_enforce() {
    let mut w = World::new("enforce");
    let step = w.call("POST", "/confirm", "a", 200, 1_000);
    let reply = step.reply.expect("a local reply");
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.body,
        r#"{"error":"request blocked","request_id":"req-1"}"#
    );
    assert_eq!(
        reply.headers,
        vec![("content-type", "application/json".to_owned())]
    );
    assert_eq!(step.counts.outcome, Some(Outcome::Block { status: 403 }));
    assert_eq!(
        step.strip,
        vec![b"X-Flowguard-Verdict".to_vec()],
        "client header stripped"
    );
}

#[test]
fn the_answer_completes_the_step_so_the_next_passes() {
    let mut w = World::new("enforce");
    let pay = w.call("POST", "/pay", "b", 200, 1_000);
    assert!(pay.reply.is_none());
    assert_eq!(header(&pay, VERDICT_HEADER), Some("allow"));
    let session = header(&pay, SESSION_HEADER).expect("session header");
    assert_eq!(session.len(), 16);
    let confirm = w.call("POST", "/confirm", "b", 200, 1_001);
    assert!(confirm.reply.is_none(), "{confirm:?}");
    assert_eq!(header(&confirm, VERDICT_HEADER), Some("allow"));
    assert_eq!(header(&confirm, SESSION_HEADER), Some(session));
}

#[test]
fn a_failed_step_completes_nothing() {
    let mut w = World::new("enforce");
    w.call("POST", "/pay", "c", 402, 1_000);
    let confirm = w.call("POST", "/confirm", "c", 200, 1_001);
    assert_eq!(confirm.reply.map(|r| r.status), Some(403));
}

#[test]
fn a_flood_gets_429_with_retry_after() {
    let mut w = World::new("enforce");
    let replies: Vec<_> = (0..10)
        .filter_map(|_| w.call("GET", "/items", "d", 200, 1_000).reply)
        .collect();
    assert!(!replies.is_empty(), "the flood was refused");
    assert!(replies.len() <= 7, "the burst passed: {}", replies.len());
    let reply = &replies[0];
    assert_eq!(reply.status, 429);
    let retry = reply
        .headers
        .iter()
        .find(|(n, _)| *n == "retry-after")
        .map(|(_, v)| v.parse::<u32>().unwrap());
    assert!(retry.is_some_and(|s| s >= 1), "{reply:?}");
    // Another session is not affected.
    assert!(w.call("GET", "/items", "e", 200, 1_000).reply.is_none());
}

#[test]
fn monitor_annotates_instead_of_blocking() {
    let mut w = World::new("monitor");
    let step = w.call("POST", "/confirm", "f", 200, 1_000);
    assert!(step.reply.is_none());
    let verdict = header(&step, VERDICT_HEADER).unwrap_or_default();
    assert!(
        verdict.starts_with("block; rules=order.missing_prerequisite"),
        "{verdict}"
    );
    assert!(header(&step, SESSION_HEADER).is_some());
}

#[test]
fn learn_passes_untouched_and_counts() {
    let settings =
        Settings::from_json(br#"{"mode":"learn","session":{"sources":[{"cookie":"session"}]}}"#)
            .unwrap();
    let base = base_normaliser(&settings, &Registry::default());
    let scope = scope(&settings, None, &base);
    let mut host = MemoryHost::default();
    let mut delta = LearnStats::default();
    for (i, path) in ["/pay", "/confirm"].iter().enumerate() {
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", path.as_bytes()),
            (b"cookie", b"session=g"),
        ];
        let mut x = Exchange::default();
        let now_ms = 1_000_000 + i as u64;
        let step = x
            .request(&scope, &mut host, &headers, now_ms, 1, &mut delta)
            .unwrap();
        assert_eq!(step.decision, Some(Decision::Pass));
        assert!(step.set.is_empty() && step.reply.is_none());
        let done = x
            .response_head(&scope, &mut host, &status(200), true, now_ms, &mut delta)
            .unwrap();
        assert!(done.completed);
    }
    assert_eq!(delta.requests, 2);
    let (reg, _) = host.get(REGISTRY_KEY).unwrap();
    assert_eq!(
        Registry::decode(&reg.unwrap()).len(),
        2,
        "templates registered"
    );
}

#[test]
fn no_session_no_judgement() {
    let mut w = World::new("enforce");
    let scope = scope(&w.settings, Some(&w.model), &w.base);
    let headers: Vec<(&[u8], &[u8])> = vec![(b":method", b"POST"), (b":path", b"/confirm")];
    let step = Exchange::default()
        .request(&scope, &mut w.host, &headers, 1_000_000, 1, &mut w.delta)
        .unwrap();
    assert!(step.counts.sessionless && step.reply.is_none() && step.set.is_empty());
}

#[test]
fn the_fallback_request_id_is_unique_and_plain() {
    let r = local_reply(429, 0, None, 0xab, 7);
    assert_eq!(
        r.body,
        r#"{"error":"request blocked","request_id":"fg-00000000000000ab-7"}"#
    );
    assert!(r.headers.contains(&("retry-after", "1".to_owned())));
    assert!(!is_safe_id("a\"b") && !is_safe_id("") && is_safe_id("x-1_Y"));
}

#[test]
fn a_2xx_failure_by_body_completes_nothing() {
    let extra = r#","endpoints":{"failure":{"json":{"status":["fail"]}}}"#;
    let mut w = World::with(settings_with("enforce", extra));
    let json = ResponseHead {
        status: 200,
        json: true,
        ..ResponseHead::default()
    };
    // A payment answered 200 {"status":"fail"}: not completed.
    let (_, paid) = w.exchange(
        "POST",
        "/pay",
        "h",
        &json,
        &[b"{\"status\":", b"\"fail\"}"],
        1_000,
    );
    assert!(!paid.completed);
    assert_eq!(
        w.call("POST", "/confirm", "h", 200, 1_001)
            .reply
            .map(|r| r.status),
        Some(403)
    );
    // Answered 200 {"status":"ok"}: completed, so the confirm passes.
    let (_, paid) = w.exchange("POST", "/pay", "i", &json, &[b"{\"status\":\"ok\"}"], 1_000);
    assert!(paid.completed);
    assert!(w.call("POST", "/confirm", "i", 200, 1_001).reply.is_none());
    // A body cut short (the stream ended before it did): the status stands.
    let scope = scope(&w.settings, Some(&w.model), &w.base);
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":path", b"/pay"),
        (b"cookie", b"session=j"),
    ];
    let mut x = Exchange::default();
    x.request(&scope, &mut w.host, &headers, 1_000_000, 1, &mut w.delta)
        .unwrap();
    let head = x
        .response_head(&scope, &mut w.host, &json, false, 1_000_000, &mut w.delta)
        .unwrap();
    assert!(
        !head.completed && x.wants_body(),
        "the outcome waits for the body"
    );
    let end = x
        .finish(&scope, &mut w.host, 1_000_000, &mut w.delta)
        .unwrap();
    assert!(end.completed && !x.wants_body());
}

#[test]
fn a_new_session_cookie_takes_the_flow_with_it() {
    let mut w = World::new("enforce");
    let settings = w.settings.clone();
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"200"),
        (b"set-cookie", b"session=after-login; Path=/; HttpOnly"),
    ];
    let head = ResponseHead::from_headers(&settings, &pairs);
    assert_eq!(head.status, 200);
    assert!(head.cookie_session.is_some());
    let (_, paid) = w.exchange("POST", "/pay", "before", &head, &[], 1_000);
    assert!(paid.completed && paid.handed_over, "{paid:?}");
    // The new identity has paid: its confirm passes; another identity's does not.
    assert!(w
        .call("POST", "/confirm", "after-login", 200, 1_001)
        .reply
        .is_none());
    assert!(w
        .call("POST", "/confirm", "stranger", 200, 1_001)
        .reply
        .is_some());
}

#[test]
fn the_response_head_is_read_from_its_headers() {
    let s = settings("enforce");
    let pairs: Vec<(&[u8], &[u8])> = vec![
        (b":status", b"201"),
        (b"Content-Type", b"application/problem+json"),
        (b"content-length", b" 42"),
    ];
    let head = ResponseHead::from_headers(&s, &pairs);
    assert_eq!(
        head,
        ResponseHead {
            status: 201,
            json: true,
            content_length: Some(42),
            cookie_session: None
        }
    );
}

const COLLECTOR: &str = r#","collector":{"cluster":"fg","sample_rate":1.0}"#;

/// A request from session `session` through a fresh exchange that may ask the fleet.
fn ask(w: &mut World, x: &mut Exchange, path: &str, session: &str, now: u64) -> RequestStep {
    let scope = scope(&w.settings, Some(&w.model), &w.base);
    let cookie = format!("session={session}");
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":path", path.as_bytes()),
        (b"cookie", cookie.as_bytes()),
        (b"x-request-id", b"req-7"),
    ];
    x.can_ask = true;
    x.request(&scope, &mut w.host, &headers, now * 1000, 1, &mut w.delta)
        .unwrap()
}

fn resume(w: &mut World, x: &mut Exchange, fleet: Fleet, now: u64) -> RequestStep {
    let scope = scope(&w.settings, Some(&w.model), &w.base);
    x.resume(&scope, &mut w.host, fleet, now * 1000, 2, &mut w.delta)
        .unwrap()
}

#[test]
fn events_are_complete_with_the_answer_or_at_once_for_a_reply() {
    let mut w = World::with(settings_with("enforce", COLLECTOR));
    let (step, answer) = w.exchange("POST", "/pay", "e", &status(200), &[], 1_000);
    assert!(step.event.is_none(), "held for the answer's status");
    let [event] = answer.events.as_slice() else {
        panic!("one event: {:?}", answer.events);
    };
    assert_eq!(
        (event.template.as_str(), event.status, event.prompt),
        ("POST /pay", 200, true)
    );
    assert_eq!(event.outcome, Some(Outcome::Allow));
    assert_eq!(
        event.request_id, None,
        "only a rule's event carries the request id"
    );
    // Skipping the payment with no fleet to ask: refused, the event goes at once.
    let step = w.call("POST", "/confirm", "f", 200, 1_000);
    let event = step.event.expect("a local reply's event");
    assert_eq!(Some(event.status), step.reply.as_ref().map(|r| r.status));
    assert!(event.rules.contains(Rule::MissingPrerequisite));
    assert_eq!(
        event.request_id.as_deref(),
        Some("req-1"),
        "a rule's event names it"
    );
    assert_eq!(step.counts.fleet, Some(FleetCount::Unavailable));
    // Without a collector nothing is reported.
    let mut quiet = World::new("enforce");
    let (step, answer) = quiet.exchange("POST", "/pay", "e", &status(200), &[], 1_000);
    assert!(step.event.is_none() && answer.events.is_empty());
}

#[test]
fn an_answer_that_never_came_is_reported_not_lost() {
    let mut w = World::with(settings_with("enforce", COLLECTOR));
    let mut x = Exchange::default();
    let step = ask(&mut w, &mut x, "/pay", "g", 1_000);
    assert!(step.reply.is_none() && step.event.is_none());
    let scope = scope(&w.settings, Some(&w.model), &w.base);
    let end = x
        .finish(&scope, &mut w.host, 1_000_250, &mut w.delta)
        .unwrap();
    let [event] = end.events.as_slice() else {
        panic!("the held event: {:?}", end.events);
    };
    assert_eq!((event.status, event.latency_us), (0, 250_000));
}

#[test]
fn a_skipping_new_session_waits_for_the_fleet_and_its_answer_decides() {
    let mut w = World::with(settings_with("enforce", COLLECTOR));
    // The fleet saw the payment: the session joins and its confirm passes.
    let mut x = Exchange::default();
    let step = ask(&mut w, &mut x, "/confirm", "h", 1_000);
    let question = step.ask.expect("the fleet is asked");
    assert!(step.decision.is_none() && step.reply.is_none());
    assert_eq!(question.templates, vec!["POST /pay".to_owned()]);
    assert_eq!(question.horizon_s, FLEET_HORIZON_S);
    let seed = Seed::from_answer(&w.model, true, ["POST /pay"], []);
    let step = resume(&mut w, &mut x, Fleet::Answered(seed), 1_000);
    assert!(step.reply.is_none(), "{step:?}");
    assert_eq!(step.counts.fleet, Some(FleetCount::Joined));
    assert!(step.counts.new_session);
    // The fleet never saw it pay: refused, with the request id it came with.
    let mut x = Exchange::default();
    assert!(ask(&mut w, &mut x, "/confirm", "k", 1_000).ask.is_some());
    let refused = Seed::from_answer(&w.model, true, [], []);
    let step = resume(&mut w, &mut x, Fleet::Answered(refused), 1_000);
    let reply = step.reply.expect("refused");
    assert!(reply.body.contains("req-7"), "{}", reply.body);
    assert_eq!(step.counts.fleet, Some(FleetCount::Refused));
    // No answer in time: the mid-flow budget decides (closed here: refused).
    let mut x = Exchange::default();
    assert!(ask(&mut w, &mut x, "/confirm", "m", 1_000).ask.is_some());
    let step = resume(&mut w, &mut x, Fleet::Unasked, 1_000);
    assert!(step.reply.is_some());
    assert_eq!(step.counts.fleet, Some(FleetCount::Unavailable));
    // Resumed twice (a late second answer): nothing more happens.
    assert_eq!(
        resume(&mut w, &mut x, Fleet::Unavailable, 1_000),
        RequestStep::default()
    );
}

#[test]
fn the_answer_is_read_only_as_far_as_it_matters() {
    let json = format!(
        r#"{{"mode":"enforce","session":{{"sources":[{{"header":"x-user"}}]}},
            "rules":{{"response.sensitive_data":"off"}},"policy":{POLICY}}}"#
    );
    let quiet = Settings::from_json(json.as_bytes()).unwrap();
    let mut x = Exchange::default();
    assert_eq!(x.answer_needs(&quiet), AnswerNeeds::Nothing);
    x.address_watch = Some(None);
    assert_eq!(x.answer_needs(&quiet), AnswerNeeds::Status);
    let pending = Pending {
        index: 0,
        fingerprint: 1,
        endpoint: 0,
        layout: 1,
        completed: true,
        object: None,
        learn: false,
        retry: false,
        endpoint_facts: false,
        auth_step: false,
        handover_step: false,
    };
    x.pending = Some(pending);
    assert_eq!(x.answer_needs(&quiet), AnswerNeeds::Status);
    // A login that may hand out the next identity: its whole head (and body) matter.
    x.pending = Some(Pending {
        handover_step: true,
        ..pending
    });
    assert_eq!(x.answer_needs(&quiet), AnswerNeeds::Headers);
    // So does a step's answer where a cookie names the session (a new one hands over).
    let cookies = settings_with("enforce", r#","rules":{"response.sensitive_data":"off"}"#);
    x.pending = Some(pending);
    assert_eq!(x.answer_needs(&cookies), AnswerNeeds::Headers);
    // So does every answer that may be scanned for sensitive data (on by default).
    let scanning = settings("enforce");
    assert_eq!(
        Exchange::default().answer_needs(&scanning),
        AnswerNeeds::Headers
    );
    // ...unless no body follows (nothing to scan): then its status is enough.
    let json = format!(
        r#"{{"mode":"enforce","session":{{"sources":[{{"header":"x-user"}}]}},"policy":{POLICY}}}"#
    );
    let scanning = Settings::from_json(json.as_bytes()).unwrap();
    let normaliser = crate::endpoint::Normaliser::default();
    let scope = Scope {
        settings: &scanning,
        model: None,
        registry_map: &[],
        base_normaliser: &normaliser,
        started: 0,
        relearns: false,
        registry: None,
    };
    assert_eq!(x.answer_needs_in(&scope, false), AnswerNeeds::Headers);
    assert_eq!(x.answer_needs_in(&scope, true), AnswerNeeds::Status);
    let scope = Scope {
        settings: &quiet,
        ..scope
    };
    assert_eq!(x.answer_needs_in(&scope, false), AnswerNeeds::Status);
}

#[test]
fn header_numbers_read_as_str_parse_reads_them() {
    let slow = |v: &[u8]| -> Option<u64> { std::str::from_utf8(v).ok()?.trim().parse().ok() };
    for v in [
        &b"200"[..],
        b"0",
        b"0042",
        b"9999",
        b"10000",
        b" 200",
        b"200 ",
        b"+200",
        b"-1",
        b"",
        b"2a0",
        b"\xff",
        b"18446744073709551615",
        b"18446744073709551616",
        b"\t7\t",
    ] {
        assert_eq!(super::number::<u64>(v), slow(v), "{v:?}");
        let slow16 = std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok());
        assert_eq!(super::number::<u16>(v), slow16, "{v:?}");
    }
}

#[test]
fn known_names_differ_in_length() {
    for (i, name) in super::KNOWN.iter().enumerate() {
        assert_eq!(super::known_index(name.as_bytes()), Some(i), "{name}");
        assert_eq!(
            super::known_index(name.to_uppercase().as_bytes()),
            Some(i),
            "{name}"
        );
    }
    for other in [
        &b":scheme"[..],
        b"x-forwarded-proto",
        b"host",
        b":authority",
        b"cookies",
    ] {
        assert_eq!(super::known_index(other), None);
    }
}
