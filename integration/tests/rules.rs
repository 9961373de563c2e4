//! Rate, enumeration, credential-stuffing, shadow/zombie and data-leak rules in a real
//! Envoy, learned from normal traffic like the call order.

use flowguard_integration::traffic::{self, Client, Session};
use flowguard_integration::world::{quick_learning, World};
use std::time::Instant;

const EXTRA: &str =
    r#""endpoints":{"deprecated":["/api/v1/"]},"rules":{"auth.failures":{"window_s":30}}"#;

fn learned_limit(world: &World, template: &str, ids: bool) -> u32 {
    std::thread::sleep(std::time::Duration::from_millis(300)); // Envoy flushes its log
    let policy = world
        .envoy
        .learned_policy()
        .expect("learned policy in the log");
    let e = policy
        .endpoints
        .iter()
        .find(|e| e.template == template)
        .expect("endpoint learned");
    let limit = if ids { e.distinct_ids } else { e.rate };
    limit.expect("limit learned").limit
}

fn first_429(statuses: &[u16]) -> Option<usize> {
    statuses.iter().position(|s| *s == 429)
}

#[test]
fn every_attack_is_caught_and_normal_traffic_replays_with_zero_false_blocks() {
    let world = World::learned(&quick_learning("enforce", EXTRA), 1, 80);
    let client = &world.client;
    let menu_limit = learned_limit(&world, "GET /api/menu", false) as usize;
    let ids_limit = learned_limit(&world, "GET /api/orders/{id}", true) as usize;

    // rate.session: one session hammering the menu.
    let mut flooder = Session::new(client);
    let started = Instant::now();
    let statuses = traffic::flood(&mut flooder, 100);
    let secs = started.elapsed().as_secs_f64();
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    // GCRA: a burst of `limit`, then `limit` per 10 s window.
    let budget = menu_limit + (menu_limit as f64 * secs / 10.0).ceil() as usize;
    assert!(
        first_429(&statuses).is_some(),
        "flood was limited: {statuses:?}"
    );
    assert!(
        allowed <= budget,
        "allowed {allowed}, budget {budget} (limit {menu_limit} per 10 s, {secs:.2} s)"
    );
    let blocked = flooder
        .calls
        .iter()
        .find(|c| c.reply.status == 429)
        .expect("a 429");
    let retry: u32 = blocked
        .reply
        .retry_after
        .as_deref()
        .and_then(|r| r.parse().ok())
        .expect("retry-after");
    assert!((1..=10).contains(&retry), "retry-after {retry}");
    assert!(blocked.reply.body.contains("request blocked") && !blocked.reply.body.contains("rate"));

    // rate.enumeration: one authenticated session walking order ids.
    let mut scraper = Session::new(client);
    let statuses = traffic::enumerate_orders(&mut scraper, 200);
    let caught = first_429(&statuses).expect("enumeration caught");
    assert!(
        caught <= ids_limit + 10,
        "caught after {caught} ids (limit {ids_limit})"
    );
    world
        .envoy
        .counter_at_least("flowguard.rule.rate.enumeration", 1)
        .unwrap();

    // inventory: a shadow endpoint and a retired API version are flagged, not blocked.
    let mut explorer = Session::new(client);
    explorer.login();
    let shadow = explorer.call("GET", "/api/internal/export", None);
    assert_eq!(shadow.status, 200);
    assert!(
        shadow
            .upstream_verdict()
            .is_some_and(|v| v.contains("inventory.unknown_endpoint")),
        "{}",
        shadow.upstream
    );
    let zombie = explorer.call("GET", "/api/v1/menu", None);
    assert_eq!(zombie.status, 200);
    assert!(
        zombie
            .upstream_verdict()
            .is_some_and(|v| v.contains("inventory.deprecated_endpoint")),
        "{}",
        zombie.upstream
    );

    // response.sensitive_data: a listing leaking e-mails and cards is flagged and counted.
    let before = world
        .envoy
        .counter("flowguard.rule.response.sensitive_data");
    explorer.menu();
    assert_eq!(
        world
            .envoy
            .counter("flowguard.rule.response.sensitive_data"),
        before,
        "the menu is clean"
    );
    assert_eq!(explorer.call("GET", "/api/users", None).status, 200);
    assert_eq!(
        world
            .envoy
            .counter("flowguard.rule.response.sensitive_data"),
        before + 1
    );
    // A profile answer carries its user's e-mail: learned as normal for that endpoint,
    // so not flagged (and nothing is logged per answer).
    let profile = world
        .envoy
        .learned_policy()
        .and_then(|p| p.endpoint("GET /api/users/{id}")?.sensitive);
    assert_eq!(profile.map(|b| b.emails), Some(1), "{profile:?}");
    assert_eq!(explorer.call("GET", "/api/users/7", None).status, 200);
    // A 5 MB answer with an e-mail at its end is past max_bytes: not read, not flagged.
    assert_eq!(explorer.call("GET", "/api/reports/big", None).status, 200);
    assert_eq!(
        world
            .envoy
            .counter("flowguard.rule.response.sensitive_data"),
        before + 1,
        "a normal profile and an unread body are not flagged"
    );
    assert!(!world.envoy.log().contains("response.sensitive_data on"));

    // The learned normal traffic, played again: not one request blocked.
    let blocks_before = world.envoy.counter("flowguard.local_replies");
    for i in 0..40 {
        let mut s = Session::new(client);
        if i % 4 == 3 {
            traffic::browsing(&mut s);
        } else {
            traffic::normal_order(&mut s);
        }
        assert!(
            s.statuses().iter().all(|st| *st != 403 && *st != 429),
            "false block: {:?}",
            s.calls
        );
    }
    assert_eq!(
        world.envoy.counter("flowguard.local_replies"),
        blocks_before
    );
}

#[test]
fn credential_stuffing_rotating_cookies_is_caught_by_address() {
    let world = World::learned(&quick_learning("enforce", EXTRA), 1, 80);
    let statuses = traffic::credential_stuffing(&world.client, 80);
    let caught = first_429(&statuses).unwrap_or_else(|| panic!("stuffing caught: {statuses:?}"));

    assert!(statuses[..caught].iter().all(|s| *s == 401));
    assert!((5..=40).contains(&caught), "caught after {caught} attempts");
    assert!(
        statuses[caught..].iter().all(|s| *s == 429),
        "stays blocked: {statuses:?}"
    );
    world
        .envoy
        .counter_at_least("flowguard.rule.auth.failures", 1)
        .unwrap();
}

/// A learning sample with no failed login at all: the address's failures are counted
/// from the first one and the login is checked from then on, so stuffing is still
/// refused at the configured floor (30 by default).
#[test]
fn stuffing_a_login_never_seen_failing_is_caught() {
    let world = World::start(&quick_learning("enforce", EXTRA), 1);
    for _ in 0..120 {
        traffic::browsing(&mut Session::new(&world.client));
    }
    world.envoy.wait_for_model().unwrap();
    let learned = world
        .envoy
        .learned_policy()
        .expect("learned policy in the log");
    let login = learned.endpoint("POST /api/login").expect("login learned");
    assert_eq!(login.auth_failures, 0, "no failed login to learn from");

    let statuses = traffic::credential_stuffing(&world.client, 60);
    let caught = first_429(&statuses).unwrap_or_else(|| panic!("stuffing caught: {statuses:?}"));
    assert!(statuses[..caught].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        (25..=35).contains(&caught),
        "caught after {caught} attempts"
    );
    assert!(statuses[caught..].iter().all(|s| *s == 429), "{statuses:?}");
}

/// With the session in a cookie only, a stuffing bot that sends no cookie has no session:
/// the per-address rule still counts and refuses it, and customers are not touched.
#[test]
fn cookieless_stuffing_is_caught_with_a_cookie_only_configuration() {
    let config = r#"{"mode":"enforce","learning":{"min_sessions":60,"min_requests":300,"min_support":5,
        "prerequisite_ratio":0.9,"confidence":0.9,"tick_ms":100},
        "session":{"capacity":4096,"sources":[{"cookie":"session"}]},
        "rules":{"auth.failures":{"window_s":60}}}"#;
    let world = World::learned(config, 1, 80);
    let statuses: Vec<u16> = (0..60)
        .map(|i| {
            let body = serde_json::json!({"user": format!("victim{i}"), "password": "wrong"});
            world
                .client
                .send("POST", "/api/login", &[], Some(&body))
                .status
        })
        .collect();
    let caught = first_429(&statuses).unwrap_or_else(|| panic!("stuffing caught: {statuses:?}"));
    assert!(statuses[..caught].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[caught..].iter().all(|s| *s == 429), "{statuses:?}");
    world
        .envoy
        .counter_at_least("flowguard.rule.auth.failures", 1)
        .unwrap();
    assert_eq!(
        world.envoy.counter("flowguard.requests_without_session"),
        60
    );
}

#[test]
fn monitor_forwards_rate_and_enumeration_attacks_with_their_verdicts() {
    let world = World::learned(&quick_learning("monitor", EXTRA), 1, 80);
    let mut flooder = Session::new(&world.client);
    traffic::flood(&mut flooder, 60);
    assert!(
        flooder.statuses().iter().all(|s| *s == 200),
        "monitor never blocks"
    );
    let verdicts: Vec<&str> = flooder
        .calls
        .iter()
        .filter_map(|c| c.reply.upstream_verdict())
        .collect();
    assert!(
        verdicts
            .iter()
            .any(|v| v.starts_with("block; rules=") && v.contains("rate.session")),
        "{verdicts:?}"
    );

    let mut scraper = Session::new(&world.client);
    traffic::enumerate_orders(&mut scraper, 60);
    assert!(scraper.calls.iter().any(|c| c
        .reply
        .upstream_verdict()
        .is_some_and(|v| v.contains("rate.enumeration"))));

    let statuses = traffic::credential_stuffing(&world.client, 50);
    assert!(statuses.iter().all(|s| *s == 401));
    assert_eq!(world.envoy.counter("flowguard.local_replies"), 0);
    world
        .envoy
        .counter_at_least("flowguard.rule.auth.failures", 1)
        .unwrap();
}

#[test]
fn a_flood_over_50_connections_and_2_workers_stays_within_the_limit() {
    let world = World::learned(&quick_learning("enforce", EXTRA), 2, 80);
    let limit = learned_limit(&world, "GET /api/menu", false) as usize;
    let url = world.envoy.url.clone();
    Session::with_id(&world.client, "flood").login();
    let started = Instant::now();
    let allowed: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                let client = Client::new(&url);
                s.spawn(move || {
                    let mut n = 0;
                    for _ in 0..40 {
                        let r =
                            client.send("GET", "/api/menu", &[("cookie", "session=flood")], None);
                        n += usize::from(r.status == 200);
                    }
                    n
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).sum()
    });
    let secs = started.elapsed().as_secs_f64();
    let budget = limit + (limit as f64 * secs / 10.0).ceil() as usize;
    let conflicts = world.envoy.counter("flowguard.slots.conflicts");
    eprintln!("2000 requests in {secs:.2} s: {allowed} allowed, budget {budget}, slot conflicts {conflicts}");
    // Slack: a request whose slot write lost every compare-and-swap is decided but not
    // counted; at most one per conflict.
    assert!(
        allowed <= budget + conflicts as usize + 2,
        "allowed {allowed} > budget {budget} + {conflicts}"
    );
    assert!(
        allowed >= limit / 2,
        "the limit still lets the session through: {allowed}"
    );
}

#[test]
fn a_learned_endpoint_unused_for_retire_after_becomes_a_zombie() {
    let extra = r#""endpoints":{"retire_after_s":2}"#;
    let world = World::learned(&quick_learning("monitor", extra), 1, 80);
    // Keep the shop's main flow in use while profiles go unused for longer than 2 s.
    let started = Instant::now();
    while started.elapsed().as_secs_f64() < 3.5 {
        let mut s = Session::new(&world.client);
        traffic::normal_order(&mut s);
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let mut s = Session::new(&world.client);
    s.login();
    let menu = s.menu();
    assert!(
        menu.upstream_verdict()
            .is_some_and(|v| !v.contains("deprecated")),
        "{}",
        menu.upstream
    );
    let profile = s.profile(7);
    assert!(
        profile
            .upstream_verdict()
            .is_some_and(|v| v.contains("inventory.deprecated_endpoint")),
        "an endpoint nobody called for 3 s is retired: {}",
        profile.upstream
    );
}
