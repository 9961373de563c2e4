//! flowguard in front of an API it was not built around (the lending library): it learns
//! from one sample of readers, then judges readers it never saw and the library's attacks.
//! The figures it prints are the README's false-block rate for this API.

use flowguard_integration::envoy::{Envoy, EnvoyConfig};
use flowguard_integration::library_traffic::{self as lib, attacks, Reader, CLIENT_IP};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::Client;

#[test]
fn held_out_readers_pass_and_every_attack_is_caught() {
    let library = ShopServer::library().expect("library starts");
    let mut cfg = EnvoyConfig::new(lib::CONFIG, library.addr);
    cfg.concurrency = 2;
    cfg.client_ip_header = Some(CLIENT_IP);
    let envoy = Envoy::start(&cfg).expect("Envoy starts");
    let client = Client::new(&envoy.url);
    let mut rng = fastrand::Rng::with_seed(11);

    for i in 0..400 {
        lib::normal_visit(&mut Reader::new(&client, &lib::address(i)), &mut rng);
    }
    envoy.wait_for_model().expect("a model is learned");
    let policy = envoy
        .learned_policy()
        .expect("the learned policy is logged");
    let templates: Vec<&str> = policy
        .endpoints
        .iter()
        .map(|e| e.template.as_str())
        .collect();
    for t in [
        "GET /api/v2/users/{id}",
        "PUT /api/v2/users/{id}/email",
        "GET /api/v2/books/{id}",
        "POST /api/v2/loans/{id}/pickup",
    ] {
        assert!(templates.contains(&t), "{t} not inferred: {templates:?}");
    }
    assert!(
        templates.len() < 64,
        "literal templates learned: {templates:?}"
    );
    let pickup = policy
        .endpoint("POST /api/v2/loans/{id}/pickup")
        .expect("pickup");
    // A reader logs in from their address (a weak session) and goes on with the token
    // the answer hands out: the flow continues, so the login is learned as a step
    // before the loan although no token session ever called it.
    envoy
        .counter_at_least("flowguard.sessions.handovers", 380)
        .unwrap();
    let borrow = policy.endpoint("POST /api/v2/loans").expect("borrow");
    assert!(
        borrow
            .prerequisites
            .iter()
            .any(|p| p == "POST /api/v2/users/login"),
        "{borrow:?}"
    );
    // Readers take one to three loans: the deposit is learned as bound to the loan.
    assert!(
        pickup
            .bound_prerequisites
            .iter()
            .any(|p| p == "POST /api/v2/loans/{id}/deposit"),
        "{pickup:?}"
    );

    // Readers it never learned from (other names, other addresses, same habits).
    let held_out = 200;
    let mut blocked = Vec::new();
    for i in 0..held_out {
        let mut r = Reader::new(&client, &lib::address(10_000 + i));
        lib::normal_visit(&mut r, &mut rng);
        if r.was_blocked() {
            blocked.push(r.calls);
        }
    }

    // Their profile answers carry their own e-mail: normal for that endpoint, not flagged.
    let sensitive_flags = envoy.counter("flowguard.rule.response.sensitive_data");
    // Register and login, called only before the token, are in the inventory.
    let shadows = envoy.counter("flowguard.rule.inventory.unknown_endpoint");

    let mut caught = Vec::new();
    let attacker = |n: usize| Reader::new(&client, &lib::address(50_000 + n));
    let any_block =
        |replies: &[flowguard_integration::traffic::Reply]| replies.iter().any(lib::is_block);
    caught.push((
        "pickup without deposit",
        any_block(&attacks::pickup_without_deposit(&mut attacker(1), &mut rng)),
    ));
    caught.push((
        "pickup after a declined deposit",
        any_block(&attacks::pickup_after_declined_deposit(
            &mut attacker(2),
            &mut rng,
        )),
    ));
    caught.push((
        "one deposit, two pickups",
        any_block(&attacks::deposit_once_pickup_many(
            &mut attacker(7),
            &mut rng,
        )),
    ));
    caught.push((
        "walk loan ids 1..150",
        any_block(&attacks::walk_loans(&mut attacker(3), 150)),
    ));
    caught.push((
        "flood the catalogue",
        any_block(&attacks::flood_books(&mut attacker(4), 100)),
    ));
    caught.push((
        "credential stuffing",
        any_block(&attacks::stuffing(&mut attacker(5), 60)),
    ));
    // The library answers every failed login 200 {"status":"fail"}: only the failure match
    // turns them into authentication failures (and a declined card, 200 too, into a
    // deposit that does not unlock pickup).
    caught.push((
        "stuffing counted as auth failures",
        envoy.counter("flowguard.rule.auth.failures") >= 1,
    ));
    let mut shadow = attacker(6);
    shadow.login("reader_c", "secret");
    shadow.call("GET", "/api/v2/admin/users", None);
    shadow.call("GET", "/api/v1/books", None);
    caught.push((
        "shadow endpoint (flag)",
        envoy.counter("flowguard.rule.inventory.unknown_endpoint") >= 1,
    ));
    caught.push((
        "zombie endpoint (flag)",
        envoy.counter("flowguard.rule.inventory.deprecated_endpoint") >= 1,
    ));

    println!(
        "library API: held-out readers blocked {} of {held_out} ({:.1} %)",
        blocked.len(),
        blocked.len() as f64 * 100.0 / held_out as f64
    );
    for (attack, hit) in &caught {
        println!("  {attack:<34} {}", if *hit { "caught" } else { "MISSED" });
    }
    assert!(blocked.is_empty(), "held-out readers blocked: {blocked:#?}");
    assert_eq!(sensitive_flags, 0, "normal answers flagged as leaks");
    assert_eq!(
        shadows, 0,
        "normal readers' calls flagged as shadow endpoints"
    );
    let missed: Vec<_> = caught.iter().filter(|(_, hit)| !hit).collect();
    assert!(missed.is_empty(), "attacks missed: {missed:?}");
}
