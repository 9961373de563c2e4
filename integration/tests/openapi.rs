//! `flowguard openapi` on real, published specs: the ReadMe API (OpenAPI 3.1, JSON) and
//! the Swagger Petstore (OpenAPI 3.0, YAML), as shipped in the npm package
//! `@readme/oas-examples` (MIT; `make test` installs it into `target/npm`). The imported
//! templates are then what a real Envoy's flowguard learns its endpoints as.

use flowguard_engine::config::Settings;
use flowguard_engine::endpoint::Normaliser;
use flowguard_integration::collector::run_flowguard;
use flowguard_integration::envoy::{repo_root, Envoy, EnvoyConfig};
use flowguard_integration::shop_server::ShopServer;
use flowguard_integration::traffic::Client;
use serde_json::Value;
use std::path::PathBuf;

fn examples() -> PathBuf {
    let dir = repo_root().join("target/npm/node_modules/@readme/oas-examples");
    assert!(
        dir.join("package.json").exists(),
        "{} is missing: run `make npm-testdata` (make test does)",
        dir.display()
    );
    dir
}

fn openapi(args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["openapi"];
    all.extend_from_slice(args);
    run_flowguard(&all)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_readme_api_spec_becomes_endpoint_templates() {
    let spec = examples().join("3.1/json/readme.json");
    let (code, out, err) = openapi(&[spec.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    let config: Value = serde_json::from_str(&out).expect("JSON out");
    let templates = strings(&config["endpoints"]["templates"]);
    assert_eq!(templates.len(), 54, "{templates:?}");
    for t in [
        "GET /v2/branches/{branch}/apis/{filename}",
        "POST /v2/projects/{subdomain}/apikeys",
        "DELETE /v2/projects/{subdomain}/apikeys/{api_key_id}",
    ] {
        assert!(
            templates.iter().any(|x| x == t),
            "{t} missing: {templates:?}"
        );
    }
    Settings::from_json(out.as_bytes()).expect("loads as a plugin configuration");
}

#[test]
fn the_petstore_spec_merges_into_a_configuration_and_wins_over_inference() {
    let spec = examples().join("3.0/yaml/petstore.yaml");
    let dir = repo_root().join("target/collector-runs");
    std::fs::create_dir_all(&dir).expect("dir");
    let base = dir.join(format!("petstore-base-{}.json", std::process::id()));
    std::fs::write(
        &base,
        r#"{"mode":"learn","endpoints":{"templates":["GET /health"]}}"#,
    )
    .expect("write");
    let (code, out, err) = openapi(&[
        spec.to_str().expect("utf-8"),
        "--config",
        base.to_str().expect("utf-8"),
        "--base-path",
        "/api",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("20 templates (1 deprecated)"), "{err}");
    let config: Value = serde_json::from_str(&out).expect("JSON out");
    assert_eq!(config["mode"], "learn");
    let templates = strings(&config["endpoints"]["templates"]);
    assert_eq!(templates.first().map(String::as_str), Some("GET /health"));
    assert_eq!(
        strings(&config["endpoints"]["deprecated"]),
        ["GET /api/pet/findByTags"]
    );

    // The filter's own normaliser, as configured: the spec's shape, literal paths first.
    let settings = Settings::from_json(out.as_bytes()).expect("valid configuration");
    let n = Normaliser::new(settings.endpoints.templates.clone(), Default::default());
    let mut t = String::new();
    for (method, path, want) in [
        (
            "GET",
            "/api/pet/findByStatus?status=sold",
            "GET /api/pet/findByStatus",
        ),
        ("GET", "/api/pet/42", "GET /api/pet/{petId}"),
        ("GET", "/api/user/alice", "GET /api/user/{username}"),
        (
            "DELETE",
            "/api/store/order/7",
            "DELETE /api/store/order/{orderId}",
        ),
    ] {
        n.normalise(method, path, &mut t);
        assert_eq!(t, want);
    }

    // And a real Envoy loads the merged configuration and serves under it.
    let shop = ShopServer::start().expect("an upstream");
    let envoy = Envoy::start(&EnvoyConfig::new(&out, shop.addr)).expect("Envoy takes the config");
    let client = Client::new(&envoy.url);
    for name in ["alice", "bob", "carol"] {
        client.send("GET", &format!("/api/user/{name}"), &[], None);
    }
    flowguard_integration::patience::eventually("three counted requests", || {
        (envoy.counter("flowguard.requests") == 3).then_some(())
    })
    .expect("the filter counted them");
    assert!(envoy.log().contains("flowguard") && !envoy.log().contains("invalid plugin"));
}
