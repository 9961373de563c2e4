//! Configuration changes with traffic running: the listener (and with it flowguard's
//! plugin configuration) is replaced through LDS from a file, once with the same Wasm VM
//! and once with a new one. Envoy keeps serving, and the learned model and each session's
//! progress survive, because they live in Envoy's shared data rather than in a VM.

use flowguard_integration::envoy::{bootstrap_yaml, wasm_path, Envoy, EnvoyConfig};
use flowguard_integration::lds::{wait_for_update, LdsListener};
use flowguard_integration::patience::eventually;
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session, StopOnDrop, GOOD_CARD};
use flowguard_integration::world::quick_learning;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[test]
fn listener_updates_under_traffic_keep_serving_and_keep_model_and_sessions() {
    let shop = ShopServer::start().expect("shop");
    // One test host is one client address: its customers' mistyped passwords add up, so
    // address-wide stuffing detection only flags here, and any block is the flow rules'.
    const RULES: &str = r#""rules":{"auth.failures":"flag"}"#;
    let cfg = EnvoyConfig::new(&quick_learning("monitor", RULES), shop.addr);
    let yaml = bootstrap_yaml(&cfg, &wasm_path().expect("filter built"));
    let mut dynamic = LdsListener::new(&yaml, "reload-test");
    let envoy = Envoy::start_yaml(&dynamic.bootstrap, 2, "info").expect("Envoy with LDS");
    let client = Client::fresh_connections(&envoy.url);
    traffic::play_normal(&client, 80);
    envoy
        .wait_for_model()
        .expect("model learned in monitor mode");

    // A customer gets as far as paying before the first update.
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

        // 1. The plugin configuration changes (monitor -> enforce): same VM.
        let updates = envoy.stat("listener_manager.lds.update_success");
        dynamic.wasm_config()["configuration"]["value"] = json!(quick_learning("enforce", RULES));
        dynamic.publish();
        wait_for_update(&envoy, updates);
        eventually("the new configuration to enforce", || {
            let mut attacker = Session::new(&client);
            (traffic::skip_payment(&mut attacker).status == 403).then_some(())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
        assert_eq!(
            customer.confirm(order).status,
            200,
            "the payment made before the update still counts"
        );

        // 2. The VM itself changes (its configuration is part of the VM's identity).
        let updates = envoy.stat("listener_manager.lds.update_success");
        let vms = envoy.stat("wasm.envoy.wasm.runtime.v8.created");
        dynamic.wasm_config()["vm_config"]["configuration"] = json!({
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": "second VM"
        });
        dynamic.publish();
        wait_for_update(&envoy, updates);
        assert!(
            envoy.stat("wasm.envoy.wasm.runtime.v8.created") > vms,
            "a new VM"
        );
        let mut second = Session::new(&client);
        traffic::normal_order(&mut second);
        let order = second.create_order();
        assert_eq!(second.pay(order, GOOD_CARD).status, 200);
        std::thread::sleep(std::time::Duration::from_secs(1));
        let mut attacker = Session::new(&client);
        assert_eq!(
            traffic::skip_payment(&mut attacker).status,
            403,
            "the new VM enforces the model at once, without learning again"
        );
        assert_eq!(second.confirm(order).status, 200);
    });
    let (served, failed, blocked) = (
        served.into_inner(),
        failed.into_inner(),
        blocked.into_inner(),
    );
    assert!(served > 100, "traffic ran throughout: {served} served");
    assert_eq!(failed, 0, "{failed} of {} requests failed", served + failed);
    assert_eq!(
        blocked, 0,
        "customers mid-order across the updates kept their progress ({blocked} blocked)"
    );
    assert_eq!(
        envoy.stat("listener_manager.lds.update_rejected"),
        0,
        "{}",
        envoy.log()
    );
    eprintln!("reloads under traffic: {served} requests served, none failed");
}
