//! Deployment artefacts as users load them: Istio manifests valid against the WasmPlugin
//! CRD (and their pluginConfig against the filter's own validation), the OCI image in the
//! layout Istio pulls, and an Envoy example for each mode.

use flowguard_engine::config::Settings;
use flowguard_integration::envoy::repo_root;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::Read;

fn yaml_docs(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            let v: serde_norway::Value = serde::Deserialize::deserialize(doc).expect("YAML");
            serde_json::to_value(v).expect("YAML as JSON")
        })
        .collect()
}

fn wasmplugin_schema() -> Value {
    let crd = repo_root().join("integration/testdata/istio/wasmplugin-crd.yaml");
    let doc = yaml_docs(&crd).into_iter().next().expect("the CRD");
    doc["spec"]["versions"]
        .as_array()
        .and_then(|vs| vs.iter().find(|v| v["name"] == "v1alpha1"))
        .map(|v| v["schema"]["openAPIV3Schema"].clone())
        .expect("v1alpha1 schema")
}

/// Kubernetes prunes (and `kubectl --validate=strict` rejects) fields a structural schema
/// does not declare; JSON Schema alone would accept them, so walk the object too.
fn undeclared(value: &Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let sub = schema["properties"]
                    .get(k)
                    .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()));
                match sub {
                    Some(s) => undeclared(v, s, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .for_each(|(i, v)| undeclared(v, &schema["items"], &format!("{path}[{i}]"), out)),
        _ => {}
    }
}

fn validate(plugin: &Value, schema: &Value) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema).map_err(|e| e.to_string())?;
    let errors: Vec<String> = validator
        .iter_errors(plugin)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    let mut extra = Vec::new();
    undeclared(
        &plugin["spec"],
        &schema["properties"]["spec"],
        "spec",
        &mut extra,
    );
    if errors.is_empty() && extra.is_empty() {
        Ok(())
    } else {
        Err(format!("schema: {errors:?}; undeclared fields: {extra:?}"))
    }
}

#[test]
fn istio_manifests_validate_against_the_wasmplugin_crd() {
    let schema = wasmplugin_schema();
    let mut plugins = 0;
    for entry in std::fs::read_dir(repo_root().join("envoy/istio")).expect("envoy/istio") {
        let path = entry.expect("entry").path();
        for doc in yaml_docs(&path) {
            assert!(
                doc["apiVersion"].is_string()
                    && doc["kind"].is_string()
                    && doc["metadata"]["name"].is_string(),
                "{}",
                path.display()
            );
            if doc["kind"] != "WasmPlugin" {
                continue;
            }
            validate(&doc, &schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let config = serde_json::to_vec(&doc["spec"]["pluginConfig"]).expect("JSON");
            Settings::from_json(&config)
                .unwrap_or_else(|e| panic!("{}: pluginConfig: {e}", path.display()));
            plugins += 1;

            // The validation has teeth: a wrong enum, a bad digest and an unknown field fail.
            for (field, bad) in [
                ("phase", Value::from("EARLY")),
                ("sha256", Value::from("xyz")),
                ("vmConfg", Value::from(1)),
            ] {
                let mut broken = doc.clone();
                broken["spec"][field] = bad;
                assert!(
                    validate(&broken, &schema).is_err(),
                    "spec.{field} should be refused"
                );
            }
            let mut broken = doc.clone();
            broken["spec"]["pluginConfig"]["mode"] = Value::from("bogus");
            let err = Settings::from_json(
                &serde_json::to_vec(&broken["spec"]["pluginConfig"]).expect("JSON"),
            )
            .unwrap_err();
            assert_eq!(err.key, "mode");
        }
    }
    assert!(plugins >= 1, "a WasmPlugin manifest is shipped");
}

fn blob(dir: &std::path::Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    let bytes = std::fs::read(dir.join("blobs/sha256").join(hex)).expect("blob");
    let actual: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(actual, hex, "blob content matches its digest");
    bytes
}

#[test]
fn the_oci_image_holds_plugin_wasm_at_its_root() {
    let wasm =
        std::fs::read(repo_root().join("target/flowguard.wasm")).expect("run `make build` first");
    let dir = repo_root().join(format!("target/oci-test-{}", std::process::id()));
    let digest = flowguard_integration::oci::build(&wasm, &dir, "0.1.0").expect("image built");
    let index: Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index"))
            .expect("JSON");
    assert_eq!(index["manifests"][0]["digest"], digest);
    let manifest: Value = serde_json::from_slice(&blob(&dir, &digest)).expect("manifest");
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), 1, "a single layer");
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    blob(&dir, manifest["config"]["digest"].as_str().expect("config"));
    let layer = blob(&dir, layers[0]["digest"].as_str().expect("layer digest"));
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(layer.as_slice()));
    let files: Vec<(String, Vec<u8>)> = archive
        .entries()
        .expect("tar")
        .map(|e| {
            let mut e = e.expect("entry");
            let mut bytes = Vec::new();
            e.read_to_end(&mut bytes).expect("read");
            (e.path().expect("path").display().to_string(), bytes)
        })
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].0, "plugin.wasm", "plugin.wasm at the image root");
    assert!(
        files[0].1 == wasm,
        "the layer holds the filter byte for byte"
    );
    let again = flowguard_integration::oci::build(&wasm, &dir, "0.1.0").expect("rebuilt");
    assert_eq!(again, digest, "reproducible: same filter, same digest");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn there_is_an_envoy_example_for_each_mode() {
    for mode in ["learn", "monitor", "enforce"] {
        let found = std::fs::read_dir(repo_root().join("envoy"))
            .expect("envoy/")
            .any(|e| {
                let path = e.expect("entry").path();
                path.extension().is_some_and(|x| x == "yaml")
                    && std::fs::read_to_string(&path)
                        .is_ok_and(|t| t.contains(&format!("\"mode\": \"{mode}\"")))
            });
        assert!(found, "an Envoy YAML example in `{mode}` (each is loaded by every_shipped_envoy_yaml_is_loaded_by_envoy)");
    }
}

/// A stand-in for one flowguard proxy behind the edge: an Envoy answering its own name.
fn named_backend(name: &str) -> flowguard_integration::envoy::Envoy {
    let yaml = flowguard_integration::envoy::answering_yaml(name);
    flowguard_integration::envoy::Envoy::start_yaml(&yaml, 1, "warning").expect("backend")
}

#[test]
fn the_fleet_edge_keeps_each_session_on_one_proxy() {
    use flowguard_integration::traffic::Client;
    let path = repo_root().join("envoy/fleet/edge.yaml");
    flowguard_integration::envoy::validate(&path)
        .unwrap_or_else(|log| panic!("{} does not validate:\n{log}", path.display()));

    // The shipped edge, pointed at three stand-ins on free ports.
    let backends: Vec<_> = ["a", "b", "c"].iter().map(|n| named_backend(n)).collect();
    let mut yaml = std::fs::read_to_string(&path).expect("edge.yaml");
    for (fixed, b) in ["9902", "8000"].iter().zip(["0", "0"]) {
        yaml = yaml.replace(&format!("port_value: {fixed}"), &format!("port_value: {b}"));
    }
    for (i, b) in backends.iter().enumerate() {
        let port = b.url.rsplit(':').next().expect("port");
        yaml = yaml.replace(
            &format!("port_value: 808{}", i + 1),
            &format!("port_value: {port}"),
        );
    }
    let edge = flowguard_integration::envoy::Envoy::start_yaml(&yaml, 1, "warning").expect("edge");
    let client = Client::new(&edge.url);
    let served = |cookie: Option<&str>| {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("cookie", c)).into_iter().collect();
        client.send("GET", "/api/menu", &headers, None).body
    };
    let mut seen = std::collections::BTreeSet::new();
    for s in 0..30 {
        let cookie = format!("session=s{s}");
        let first = served(Some(&cookie));
        for _ in 0..5 {
            assert_eq!(
                served(Some(&cookie)),
                first,
                "{cookie} moved between proxies"
            );
        }
        seen.insert(first);
    }
    assert!(
        seen.len() >= 2,
        "sessions spread over the proxies: {seen:?}"
    );
    let anonymous = served(None);
    assert!(
        (0..10).all(|_| served(None) == anonymous),
        "a cookieless client stays put"
    );

    // One proxy goes: its sessions move (retried on another), the others stay.
    let placement: Vec<String> = (0..30)
        .map(|s| served(Some(&format!("session=s{s}"))))
        .collect();
    let gone = placement[0].clone();
    let mut backends = backends;
    let index = ["a", "b", "c"]
        .iter()
        .position(|n| *n == gone)
        .expect("a name");
    drop(backends.remove(index));
    for (s, before) in placement.iter().enumerate() {
        let now = served(Some(&format!("session=s{s}")));
        assert!(
            now == "a" || now == "b" || now == "c",
            "session s{s}: {now}"
        );
        if *before != gone {
            assert_eq!(&now, before, "session s{s} moved although its proxy is up");
        }
    }
}

/// Istio's DestinationRule schema (the CRD's, as `@kubernetes-models/istio` publishes it
/// in its validator module; `make test` installs it into `target/npm`), for `spec` only:
/// the rest refers to Kubernetes' own schemas.
fn destinationrule_schema() -> Value {
    let module = repo_root().join(
        "target/npm/node_modules/@kubernetes-models/istio/networking.istio.io/v1beta1/DestinationRule.js",
    );
    let text = std::fs::read_to_string(&module)
        .unwrap_or_else(|e| panic!("{}: {e} (run `make npm-testdata`)", module.display()));
    let start =
        text.find("const schema = ").expect("the module's schema") + "const schema = ".len();
    let end = start + text[start..].find("\n};").expect("the schema's end") + 2;
    let schema: Value = serde_json::from_str(&text[start..end]).expect("the schema is JSON");
    serde_json::json!({"type": "object", "properties": {"spec": schema["properties"]["spec"]}})
}

#[test]
fn the_istio_session_affinity_validates_against_the_destinationrule_schema() {
    let schema = destinationrule_schema();
    let path = repo_root().join("envoy/istio/destinationrule.yaml");
    let doc = yaml_docs(&path)
        .into_iter()
        .find(|d| d["kind"] == "DestinationRule")
        .expect("a DestinationRule");
    assert_eq!(doc["apiVersion"], "networking.istio.io/v1beta1");
    validate(&doc, &schema).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let hash = &doc["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"];
    assert_eq!(
        hash["httpCookie"]["name"], "session",
        "hashes the cookie the filter keys sessions on"
    );
    assert!(
        hash["httpCookie"].get("ttl").is_none(),
        "a ttl would make the mesh generate a cookie of the same name"
    );

    // The validation has teeth: a wrong type, a misspelt or misplaced field fail.
    let mut misplaced = doc.clone();
    misplaced["spec"]["trafficPolicy"]["loadBalancer"]["httpCookie"] =
        serde_json::json!({"name": "session"});
    let mut wrong_type = doc.clone();
    wrong_type["spec"]["trafficPolicy"]["outlierDetection"]["consecutive5xxErrors"] =
        Value::from("five");
    let mut unknown = doc.clone();
    unknown["spec"]["trafficPolicy"]["loadBalancer"]["consistentHash"]["httpCookei"] =
        Value::from(1);
    for (what, broken) in [
        ("a hash key outside consistentHash", misplaced),
        ("a string count", wrong_type),
        ("a misspelt field", unknown),
    ] {
        assert!(
            validate(&broken, &schema).is_err(),
            "{what} should be refused"
        );
    }
}
