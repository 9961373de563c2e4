//! The `flowguard` command line: offline learning from Envoy access logs, and clear
//! errors for bad arguments and bad database paths.

use flowguard_integration::collector::run_flowguard;
use flowguard_integration::envoy::{repo_root, Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::{self, Client, Session};

fn flowguard(args: &[&str]) -> (i32, String, String) {
    run_flowguard(args)
}

#[test]
fn bad_arguments_and_paths_get_clear_errors() {
    let (code, _, err) = flowguard(&["stats", "--db", "/nonexistent/dir/flowguard.db"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("database /nonexistent/dir/flowguard.db: no such file"),
        "{err}"
    );
    let (code, _, err) = flowguard(&[
        "serve",
        "--db",
        "/nonexistent/dir/flowguard.db",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("flowguard: database /nonexistent/dir/flowguard.db:"),
        "{err}"
    );
    let (code, _, err) = flowguard(&["serve", "--listen", "not-an-address"]);
    assert_eq!(code, 2);
    assert!(err.contains("--listen"), "{err}");
    let (code, _, err) = flowguard(&["policy", "show", "--file", "/nonexistent.json"]);
    assert_eq!(code, 1);
    assert!(err.contains("policy /nonexistent.json"), "{err}");
    let (code, _, err) = flowguard(&["learn", "--envoy-log", "/nonexistent.log"]);
    assert_eq!(code, 1);
    assert!(err.contains("log /nonexistent.log"), "{err}");
}

#[test]
fn a_policy_learned_offline_from_envoy_access_logs_blocks_the_attack() {
    let dir = repo_root().join("target/collector-runs");
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join(format!("access-{}.log", std::process::id()));
    let policy = dir.join(format!("offline-{}.json", std::process::id()));
    let shop = ShopServer::start().expect("shop");
    {
        // Record: a proxy in monitor mode that never learns by itself, logging JSON.
        let mut cfg = EnvoyConfig::new(
            r#"{"mode":"monitor","learning":{"min_sessions":1000000}}"#,
            shop.addr,
        );
        cfg.access_log = Some(log.clone());
        let envoy = Envoy::start(&cfg).expect("Envoy starts");
        // 240 of them order: enough for a prerequisite at the default evidence (228).
        traffic::play_normal(&Client::new(&envoy.url), 320);
        std::thread::sleep(std::time::Duration::from_millis(400)); // flush
    }
    let (code, out, err) = flowguard(&[
        "learn",
        "--envoy-log",
        log.to_str().expect("utf-8"),
        "--out",
        policy.to_str().expect("utf-8"),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("POST /api/orders/{id}/confirm") && out.contains("requires"),
        "{out}"
    );

    // Enforce: another proxy loads the offline policy inline.
    let json = std::fs::read_to_string(&policy).expect("policy written");
    let config = format!(r#"{{"mode":"enforce","policy":{json}}}"#);
    let envoy =
        Envoy::start(&EnvoyConfig::new(&config, shop.addr)).expect("Envoy starts with the policy");
    let client = Client::new(&envoy.url);
    let mut attacker = Session::new(&client);
    assert_eq!(traffic::skip_payment(&mut attacker).status, 403);
    let mut customer = Session::new(&client);
    assert_eq!(
        traffic::normal_order(&mut customer).status,
        200,
        "{:?}",
        customer.calls
    );
}
