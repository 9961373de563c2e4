//! The native host without Envoy: configuration, the exchange over the table, learning.

use super::*;

fn quiet(_: Level, _: &str) {}

const POLICY: &str = r#"{"version":1,"window_s":60,"endpoints":[
    {"template":"POST /pay","entry":true},
    {"template":"POST /confirm","prerequisites":["POST /pay"]}],
  "transitions":[{"from":"^","to":"POST /pay","count":9},
    {"from":"POST /pay","to":"POST /confirm","count":9}]}"#;

fn call(filter: &Arc<Filter>, method: &str, path: &str, session: &str, status: u16) -> RequestStep {
    let cookie = format!("session={session}");
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":path", path.as_bytes()),
        (b"cookie", cookie.as_bytes()),
    ];
    let mut stream = filter.stream();
    let step = stream.request(&headers, || None).unwrap();
    if step.reply.is_none() {
        let code = status.to_string();
        let answer: Vec<(&[u8], &[u8])> = vec![(b":status", code.as_bytes())];
        stream.response_head(&answer, true, || None).unwrap();
        stream.finish(|| None).unwrap();
    }
    step
}

#[test]
fn a_bad_configuration_names_its_key() {
    let err = Filter::new(br#"{"mode":"enforce","sesion":{}}"#, quiet)
        .err()
        .unwrap();
    assert!(err.contains("sesion"), "{err}");
    let err = Filter::new(br#"{"session":{"capacity":"x"}}"#, quiet)
        .err()
        .unwrap();
    assert!(err.starts_with("session.capacity"), "{err}");
}

#[test]
fn a_configured_policy_enforces_from_the_first_request() {
    let json = format!(
        r#"{{"mode":"enforce","session":{{"sources":[{{"cookie":"session"}}]}},"policy":{POLICY}}}"#
    );
    let filter = Arc::new(Filter::new(json.as_bytes(), quiet).unwrap());
    let skip = call(&filter, "POST", "/confirm", "a", 200);
    assert_eq!(skip.reply.map(|r| r.status), Some(403));
    assert!(call(&filter, "POST", "/pay", "b", 200).reply.is_none());
    let step = call(&filter, "POST", "/confirm", "b", 200);
    assert!(step.reply.is_none());
    assert!(counted(&step).any(|c| c == Counter::Allow));
}

#[test]
fn learns_in_process_then_enforces() {
    let json = br#"{"mode":"enforce","session":{"sources":[{"cookie":"session"}]},
        "learning":{"min_sessions":50,"min_requests":150,"min_routes":1,"confidence":0.9,"prerequisite_ratio":0.9}}"#;
    let filter = Arc::new(Filter::new(json, quiet).unwrap());
    for i in 0..60 {
        let s = format!("s{i}");
        call(&filter, "GET", "/items", &s, 200);
        call(&filter, "POST", "/pay", &s, 200);
        call(&filter, "POST", "/confirm", &s, 200);
    }
    // The requests alone tick at most every `learning.tick_ms`: tick once now.
    assert!(
        filter.installed().model.is_none(),
        "learned on a tick, not on a request"
    );
    filter.tick();
    let installed = filter.installed();
    let model = installed.model.as_ref().expect("a model was learned");
    assert!(model.len() >= 3, "{}", model.len());
    let step = call(&filter, "POST", "/confirm", "attacker", 200);
    assert_eq!(
        step.reply.map(|r| r.status),
        Some(403),
        "{:?}",
        step.verdict
    );
}

#[test]
fn a_panic_is_caught_and_fails_open() {
    static LOGGED: AtomicU32 = AtomicU32::new(0);
    fn count(_: Level, _: &str) {
        LOGGED.fetch_add(1, Ordering::Relaxed);
    }
    #[allow(clippy::panic)]
    let v = guarded(7, count, || panic!("boom"));
    assert_eq!(v, 7);
    assert_eq!(LOGGED.load(Ordering::Relaxed), 1);
    assert_eq!(guarded(7, count, || 8), 8);
}

#[test]
fn a_login_seen_failing_is_checked_against_its_address_from_then_on() {
    // The policy saw no failed login: only the answers teach that the login is one.
    let json = br#"{"mode":"enforce","session":{"sources":[{"cookie":"session"}]},
        "policy":{"version":1,"address_auth_failures":{"p50":0,"p90":0,"p99":0,"limit":3},"endpoints":[{"template":"POST /login","entry":true}],
          "transitions":[{"from":"^","to":"POST /login","count":9}]}}"#;
    let filter = Arc::new(Filter::new(json, quiet).unwrap());
    let login = |session: &str, status: u16| {
        let cookie = format!("session={session}");
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":path", b"/login"),
            (b"cookie", cookie.as_bytes()),
        ];
        let mut stream = filter.stream();
        let address = || Some(b"192.0.2.7:4000".to_vec());
        let step = stream.request(&headers, address).unwrap();
        if step.reply.is_none() {
            let code = status.to_string();
            let answer: Vec<(&[u8], &[u8])> = vec![(b":status", code.as_bytes())];
            stream.response_head(&answer, true, address).unwrap();
        }
        step
    };
    let statuses: Vec<u16> = (0..8)
        .map(|i| login(&format!("v{i}"), 401).reply.map_or(401, |r| r.status))
        .collect();
    assert!(
        statuses.contains(&429),
        "credential stuffing refused: {statuses:?}"
    );
}

#[test]
fn learning_goes_on_after_the_model_and_relearns() {
    let json = br#"{"mode":"enforce","session":{"sources":[{"cookie":"session"}]},
        "learning":{"min_sessions":50,"min_requests":150,"min_routes":1,"confidence":0.9,"prerequisite_ratio":0.9}}"#;
    let filter = Arc::new(Filter::new(json, quiet).unwrap());
    let mut played = 0;
    let mut play = |n: usize| {
        for _ in 0..n {
            let s = format!("r{played}");
            played += 1;
            call(&filter, "GET", "/items", &s, 200);
            call(&filter, "POST", "/pay", &s, 200);
            call(&filter, "POST", "/confirm", &s, 200);
            filter.tick(); // after every session, as if each took a `tick_ms`
        }
    };
    play(60);
    let first = filter.installed();
    let model = first.model.as_ref().expect("learned");
    assert_eq!(model.version, 1);
    // A quarter more sessions, at least `min_sessions`: learned again, same endpoint ids.
    play(120);
    let again = filter.installed();
    let relearned = again.model.as_ref().expect("still a model");
    // 50 sessions, then due at 100 and again at 150 (a quarter more, at least 50).
    assert_eq!(relearned.version, 3, "relearned");
    assert_eq!(relearned.layout, model.layout, "same endpoint ids");
    assert_eq!(
        call(&filter, "POST", "/confirm", "skipper", 200)
            .reply
            .map(|r| r.status),
        Some(403)
    );
}

#[test]
fn an_endpoint_unused_for_retire_after_s_is_retired() {
    let json = br#"{"mode":"monitor","session":{"sources":[{"cookie":"session"}]},
        "endpoints":{"retire_after_s":1},"learning":{"tick_ms":100},
        "policy":{"version":1,"endpoints":[{"template":"GET /a","entry":true},{"template":"GET /b","entry":true}],
          "transitions":[{"from":"^","to":"GET /a","count":9},{"from":"^","to":"GET /b","count":9},
                         {"from":"GET /a","to":"GET /b","count":9},{"from":"GET /b","to":"GET /a","count":9},
                         {"from":"GET /a","to":"GET /a","count":9}]}}"#;
    let filter = Arc::new(Filter::new(json, quiet).unwrap());
    let verdict = |step: &RequestStep| {
        step.set
            .get(flowguard_engine::exchange::VERDICT_HEADER)
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(verdict(&call(&filter, "GET", "/b", "u", 200)), "allow");
    for i in 0..12 {
        std::thread::sleep(std::time::Duration::from_millis(200));
        call(&filter, "GET", "/a", &format!("k{i}"), 200); // /a stays in use
    }
    let step = call(&filter, "GET", "/b", "v", 200);
    assert_eq!(verdict(&step), "flag; rules=inventory.deprecated_endpoint");
    assert_eq!(verdict(&call(&filter, "GET", "/a", "w", 200)), "allow");
}

/// The threads of this process named `flowguard-telemet` (Linux truncates to 15 bytes).
fn telemetry_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "flowguard-telem")
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_collector_needs_an_address_natively() {
    let err = Filter::new(br#"{"collector":{"cluster":"flowguard_collector"}}"#, quiet)
        .err()
        .unwrap();
    assert!(err.starts_with("collector.address"), "{err}");
}

#[test]
fn the_telemetry_thread_stops_when_its_filter_is_dropped() {
    // A collector that accepts connections and never answers: calls stay in flight.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let json = format!(
        r#"{{"mode":"monitor","session":{{"sources":[{{"cookie":"session"}}]}},
            "collector":{{"address":"http://{}","sample_rate":1.0,"flush_interval_ms":50,
                          "timeout_ms":60000,"policy_interval_ms":50}}}}"#,
        silent.local_addr().unwrap()
    );
    let before = telemetry_threads();
    let filter = Arc::new(Filter::new(json.as_bytes(), quiet).unwrap());
    assert!(filter.reporting());
    // The thread names itself once it runs.
    let named = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        telemetry_threads() == before + 1
    });
    assert!(named, "one telemetry thread: {}", telemetry_threads());
    for i in 0..20 {
        call(&filter, "GET", "/items", &format!("s{i}"), 200);
    }
    std::thread::sleep(std::time::Duration::from_millis(300)); // batches and a poll in flight
    let started = std::time::Instant::now();
    drop(filter);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "in-flight calls are abandoned, not awaited: {:?}",
        started.elapsed()
    );
    assert_eq!(telemetry_threads(), before, "the thread is gone");
}

#[test]
fn a_reload_with_the_same_json_keeps_the_model_and_the_sessions() {
    let registry = registry::Registry::default();
    let json = br#"{"mode":"enforce","session":{"sources":[{"cookie":"session"}]},
        "learning":{"min_sessions":50,"min_requests":150,"min_routes":1,"confidence":0.9,"prerequisite_ratio":0.9}}"#;
    let (first, origin) = registry.filter(json, quiet).unwrap();
    assert_eq!(origin, registry::Origin::New);
    for i in 0..60 {
        let s = format!("s{i}");
        call(&first, "GET", "/items", &s, 200);
        call(&first, "POST", "/pay", &s, 200);
        call(&first, "POST", "/confirm", &s, 200);
    }
    first.tick();
    assert!(first.installed().model.is_some(), "learned");
    // A customer pays before the reload.
    call(&first, "GET", "/items", "mid", 200);
    call(&first, "POST", "/pay", "mid", 200);

    // Envoy builds the new configuration before it destroys the old one.
    let (second, origin) = registry.filter(json, quiet).unwrap();
    drop(first);
    assert_eq!(origin, registry::Origin::Adopted);
    assert!(second.installed().model.is_some(), "no relearning");
    let step = call(&second, "POST", "/confirm", "mid", 200);
    assert!(
        step.reply.is_none(),
        "the payment made before the reload counts"
    );
    let skip = call(&second, "POST", "/confirm", "attacker", 200);
    assert_eq!(skip.reply.map(|r| r.status), Some(403));

    // Another JSON starts fresh; so does the same JSON once no configuration holds it.
    let other = br#"{"mode":"monitor","session":{"sources":[{"cookie":"session"}]}}"#;
    let (third, origin) = registry.filter(other, quiet).unwrap();
    assert_eq!(origin, registry::Origin::New);
    assert!(third.installed().model.is_none());
    assert_eq!(registry.live(), 2);
    drop(second);
    let (again, origin) = registry.filter(json, quiet).unwrap();
    assert_eq!(origin, registry::Origin::New);
    assert!(again.installed().model.is_none());
    drop((third, again));
    assert_eq!(registry.live(), 0);
}

/// A new session's first request that skips a step, from its own client.
fn skip(filter: &Arc<Filter>, session: &str) -> (Stream, RequestStep) {
    let cookie = format!("session={session}");
    let headers: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"POST"),
        (b":path", b"/confirm"),
        (b"cookie", cookie.as_bytes()),
    ];
    let mut stream = filter.stream();
    let step = stream.request(&headers, || None).unwrap();
    (stream, step)
}

#[test]
fn questions_to_the_fleet_are_bounded_per_filter_and_answered_on_resume() {
    // Nothing listens: questions fail at once, but each stays outstanding while its
    // paused request holds its answer.
    let json = format!(
        r#"{{"mode":"enforce","session":{{"sources":[{{"cookie":"session"}}],"midflow":{{"always":true}}}},
            "policy":{POLICY},
            "collector":{{"address":"http://127.0.0.1:9","sample_rate":0.0,"policy_interval_ms":0}}}}"#
    );
    let filter = Arc::new(Filter::new(json.as_bytes(), quiet).unwrap());
    assert!(filter.can_ask());
    let woken = Arc::new(AtomicU32::new(0));
    let mut held = Vec::new();
    for i in 0..telemetry::MAX_WAITING {
        let (stream, step) = skip(&filter, &format!("paused-{i}"));
        let question = step.ask.expect("a new session's skip asks the fleet");
        assert!(
            step.reply.is_none() && step.verdict.is_none(),
            "paused, not judged"
        );
        let count = woken.clone();
        let answer = filter
            .ask(
                &question,
                Box::new(move || {
                    count.fetch_add(1, Ordering::Relaxed);
                }),
            )
            .expect("within the bound");
        held.push((stream, answer));
    }
    assert_eq!(filter.questions_outstanding(), telemetry::MAX_WAITING);
    assert!(!filter.can_ask());
    // Beyond the bound the budget decides at once: no question, a verdict now.
    let (_, step) = skip(&filter, "beyond");
    assert!(step.ask.is_none());
    assert_eq!(step.counts.fleet, Some(FleetCount::Unavailable));
    assert!(step.verdict.is_some());
    let (_, step) = skip(&filter, "beyond-2");
    assert!(
        filter
            .ask(
                &flowguard_engine::exchange::Question {
                    session: 1,
                    templates: vec!["POST /pay".into()],
                    object: 0,
                    horizon_s: 60,
                },
                Box::new(|| {})
            )
            .is_none(),
        "the filter refuses a question beyond the bound"
    );
    drop(step);

    // Every question is answered (here: none, the collector is down) and its request
    // woken; resumed, each is judged by the budget.
    let all = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        woken.load(Ordering::Relaxed) == telemetry::MAX_WAITING
    });
    assert!(all, "woken: {}", woken.load(Ordering::Relaxed));
    let (mut stream, answer) = held.pop().unwrap();
    assert_eq!(answer.take(), Some(None), "no answer from a dead collector");
    drop(answer);
    let step = stream.resume(None, || None).unwrap();
    assert_eq!(step.counts.fleet, Some(FleetCount::Unavailable));
    assert!(step.verdict.is_some());
    // The fleet saw the step: the session joins on its evidence.
    let (mut stream, _) = held.pop().unwrap();
    let seen = v1::CompletedResponse {
        known: true,
        completed: vec!["POST /pay".into()],
        on_object: vec![],
    };
    let step = stream.resume(Some(seen), || None).unwrap();
    assert_eq!(step.counts.fleet, Some(FleetCount::Joined));
    assert!(step.reply.is_none());
    assert!(!step
        .verdict
        .unwrap()
        .fired
        .contains(Rule::MissingPrerequisite));

    // Requests gone (a reset while paused): their places are given back.
    held.clear();
    drop(stream);
    let freed = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        filter.questions_outstanding() == 0
    });
    assert!(freed, "outstanding: {}", filter.questions_outstanding());
    assert!(filter.can_ask());
    assert!(skip(&filter, "after").1.ask.is_some());
}

#[test]
fn counters_are_listed_in_declaration_order() {
    // The module finds a counter's Envoy id at `Counter as usize`.
    for (i, (counter, _)) in COUNTERS.iter().enumerate() {
        assert_eq!(*counter as usize, i, "{counter:?}");
    }
}
