//! The native module across listener reloads (LDS from a file), with traffic running: a
//! new filter configuration with the same JSON adopts the live one's state (the learned
//! model, every session's progress), as the Wasm filter's shared data does; a different
//! JSON starts fresh.

use flowguard_integration::collector::{scratch_db, Collector};
use flowguard_integration::envoy::Envoy;
use flowguard_integration::lds::{wait_for_update, LdsListener};
use flowguard_integration::native_envoy::{self, counter};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session, StopOnDrop, GOOD_CARD};
use flowguard_integration::world::quick_learning;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The module's telemetry threads in Envoy's process (`flowguard-telemetry`, as Linux
/// truncates a thread's name).
fn telemetry_threads(envoy: &Envoy) -> usize {
    std::fs::read_dir(format!("/proc/{}/task", envoy.pid()))
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

fn occurrences(envoy: &Envoy, line: &str) -> usize {
    envoy.log().matches(line).count()
}

const ADOPTED: &str = "flowguard: the same configuration as a live one";
const CONFIGURED: &str = "flowguard: configured (native module)";
const LEARNED: &str = "flowguard: learned policy version 1 ";

#[test]
fn a_native_reload_with_the_same_json_keeps_model_and_sessions_and_another_starts_fresh() {
    let shop = ShopServer::start().expect("shop");
    // One test host is one client address: address-wide stuffing detection only flags.
    // With a collector: the telemetry thread (and its buffer) carries on too.
    const RULES: &str = r#""rules":{"auth.failures":"flag"},
        "collector":{"cluster":"flowguard_collector","node":"edge-native","sample_rate":1.0,"flush_interval_ms":100,"policy_interval_ms":0}"#;
    let collector = Collector::start(
        &scratch_db("native-reload").expect("scratch database"),
        &["--learn-interval-s", "0"],
    )
    .expect("collector");
    let json = quick_learning("enforce", RULES);
    let cfg = collector.envoy_config(&json, shop.addr);
    let module = native_envoy::module_path().expect("make native");
    let yaml = native_envoy::native_yaml(&cfg, &module).expect("native bootstrap");
    let mut dynamic = LdsListener::new(&yaml, "native-reload-test");
    let envoy = Envoy::start_yaml(&dynamic.bootstrap, 2, "info").expect("Envoy with LDS");
    let client = Client::fresh_connections(&envoy.url);
    traffic::play_normal(&client, 80);
    eventually("the model learned", || {
        (counter(&envoy, "flowguard.policy.version") > 0).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    let mut attacker = Session::new(&client);
    assert_eq!(traffic::skip_payment(&mut attacker).status, 403);

    // A customer gets as far as paying before the reload.
    let mut customer = Session::new(&client);
    traffic::normal_order(&mut customer);
    let order = customer.create_order();
    assert_eq!(customer.pay(order, GOOD_CARD).status, 200);

    let stop = AtomicBool::new(false);
    let (served, failed, blocked) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        s.spawn(|| {
            let client = Client::fresh_connections(&envoy.url);
            while !stop.load(Ordering::Relaxed) {
                let mut s = Session::new(&client);
                traffic::normal_order(&mut s);
                for status in s.statuses() {
                    let counter = match status {
                        0 | 500.. => &failed,
                        403 | 429 => &blocked,
                        _ => &served,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        });

        // The traffic stops however this ends.
        let _stop = StopOnDrop(&stop);

        // 1. The listener changes, the filter JSON does not: a new filter configuration
        //    with the live one's state.
        let updates = envoy.stat("listener_manager.lds.update_success");
        dynamic.connection_manager()["stat_prefix"] = json!("ingress-reloaded");
        dynamic.publish();
        wait_for_update(&envoy, updates);
        eventually("the new filter configuration", || {
            (occurrences(&envoy, CONFIGURED) == 2).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
        let mut attacker = Session::new(&client);
        assert_eq!(
            traffic::skip_payment(&mut attacker).status,
            403,
            "the model is enforced at once, without learning again"
        );
        assert_eq!(
            customer.confirm(order).status,
            200,
            "the payment made before the reload still counts"
        );
        assert_eq!(occurrences(&envoy, ADOPTED), 1, "{}", envoy.log());
        assert_eq!(
            telemetry_threads(&envoy),
            1,
            "the adopted filter's thread reports for both configurations"
        );
        let stored = collector.stats().expect("stats").0;
        eventually("events after the reload stored", || {
            (collector.stats().ok()?.0 > stored).then_some(())
        })
        .expect("reporting goes on");
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
    let (served, failed, blocked) = (
        served.into_inner(),
        failed.into_inner(),
        blocked.into_inner(),
    );
    assert!(served > 20, "traffic ran throughout: {served} served");
    assert_eq!(failed, 0, "{failed} of {} requests failed", served + failed);
    assert_eq!(
        blocked, 0,
        "customers mid-order across the reload kept their progress ({blocked} blocked)"
    );
    assert_eq!(occurrences(&envoy, LEARNED), 1, "learned once");

    // 2. Another JSON (a larger slot table): fresh state, learning from the start.
    let updates = envoy.stat("listener_manager.lds.update_success");
    let current = dynamic
        .module_json()
        .as_str()
        .expect("filter JSON")
        .to_owned();
    *dynamic.module_json() = json!(current.replace(r#""capacity":4096"#, r#""capacity":8192"#));
    dynamic.publish();
    wait_for_update(&envoy, updates);
    eventually("the new configuration loaded", || {
        (occurrences(&envoy, CONFIGURED) == 3).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
    assert_eq!(occurrences(&envoy, ADOPTED), 1, "not adopted");
    let mut early = Session::new(&client);
    assert_eq!(
        traffic::skip_payment(&mut early).status,
        200,
        "a new JSON learns again: no model yet"
    );
    assert_eq!(counter(&envoy, "flowguard.policy.version"), 0);
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected"),
        0,
        "{}",
        envoy.log()
    );
}
