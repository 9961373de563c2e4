//! A real Envoy 1.40 running flowguard's native build (`make native`:
//! `target/libflowguard.so`, loaded by `envoy.filters.http.dynamic_modules`) instead of the
//! Wasm filter: the same bootstrap as [`crate::envoy::bootstrap_yaml`], the filter swapped.

use crate::envoy::{bootstrap_yaml, repo_root, Envoy, EnvoyConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Whether the tests run against the native build (`FLOWGUARD_BUILD=native`):
/// [`crate::envoy::Envoy::start`] then loads the module instead of the Wasm filter.
pub fn selected() -> bool {
    std::env::var("FLOWGUARD_BUILD").is_ok_and(|b| b == "native")
}

/// How Envoy names flowguard's stats for the build under test.
pub fn metric_prefix() -> &'static str {
    if selected() {
        "dynamicmodulescustom."
    } else {
        "wasmcustom."
    }
}

/// The module built by `make native`.
pub fn module_path() -> Result<PathBuf, String> {
    let path = repo_root().join("target/libflowguard.so");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "no module at {}: run `make native` first",
            path.display()
        ))
    }
}

/// The test-only build of `make native` whose request hook panics on
/// `x-flowguard-test-crash` (`--features crash-switch`).
pub fn crash_switch_path() -> Result<PathBuf, String> {
    let path = repo_root().join("target/libflowguard-crash-switch.so");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "no module at {}: run `make native` first",
            path.display()
        ))
    }
}

/// The floor probe (`--features floor-probe`, built by `make bench`): the calls any
/// flow-aware module makes, no judging.
pub fn floor_probe_path() -> Result<PathBuf, String> {
    let path = repo_root().join("target/libflowguard-floor.so");
    if path.exists() {
        Ok(path)
    } else {
        Err(format!("no module at {}: run `make bench`", path.display()))
    }
}

/// The dynamic-module filter entry carrying `filter_json` (also the benchmark's).
pub fn native_filter(filter_json: &str, module: &Path) -> String {
    // A JSON string is a valid YAML double-quoted scalar.
    let configuration = serde_json::to_string(filter_json).unwrap_or_default();
    let module = serde_json::to_string(&module.display().to_string()).unwrap_or_default();
    format!(
        r#"          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config:
                module: {{ local: {{ filename: {module} }} }}
              filter_name: flowguard
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: {configuration}
"#
    )
}

/// The bootstrap of [`bootstrap_yaml`] with the Wasm filter replaced by the module.
pub fn native_yaml(cfg: &EnvoyConfig, module: &Path) -> Result<String, String> {
    let wasm = bootstrap_yaml(cfg, Path::new("unused.wasm"));
    let start = wasm
        .find("          - name: envoy.filters.http.wasm")
        .ok_or("no Wasm filter in the bootstrap")?;
    let end = wasm
        .find("          - name: envoy.filters.http.router")
        .ok_or("no router in the bootstrap")?;
    let (head, tail) = (wasm.get(..start), wasm.get(end..));
    match (head, tail) {
        (Some(head), Some(tail)) => Ok(format!(
            "{head}{}{tail}",
            native_filter(&with_address(&cfg.filter_json, cfg.collector), module)
        )),
        _ => Err("bootstrap out of order".into()),
    }
}

/// The filter JSON the module is given: a `collector` section without the native-only
/// `collector.address` (the Wasm filter names Envoy's cluster instead) gains the address
/// of the harness's collector, so the same test configuration serves both builds.
pub fn with_address(filter_json: &str, collector: Option<SocketAddr>) -> String {
    let Some(addr) = collector else {
        return filter_json.to_owned();
    };
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(filter_json) else {
        return filter_json.to_owned();
    };
    match json.get_mut("collector").and_then(|c| c.as_object_mut()) {
        Some(c) if !c.contains_key("address") => {
            c.insert("address".into(), format!("http://{addr}").into());
            json.to_string()
        }
        _ => filter_json.to_owned(),
    }
}

/// Starts Envoy with the native module and waits until it is ready.
pub fn start(cfg: &EnvoyConfig) -> Result<Envoy, String> {
    start_module(cfg, &module_path()?)
}

/// Starts Envoy with the module at `module`.
pub fn start_module(cfg: &EnvoyConfig, module: &Path) -> Result<Envoy, String> {
    let yaml = native_yaml(cfg, module)?;
    Envoy::start_yaml(&yaml, cfg.concurrency, "info")
}

/// Runs Envoy with the native module and `cfg`, expecting it to refuse to start; its log.
pub fn expect_refusal(cfg: &EnvoyConfig) -> Result<String, String> {
    match start(cfg) {
        Ok(envoy) => Err(format!(
            "Envoy started with a bad configuration:\n{}",
            envoy.log()
        )),
        Err(log) => Ok(log),
    }
}

/// A counter the native module defines (`flowguard.…`), whatever prefix Envoy gives
/// dynamic-module stats; 0 if absent.
pub fn counter(envoy: &Envoy, name: &str) -> u64 {
    let body = envoy
        .admin_get(&format!("/stats?filter={}$", name.replace('.', "\\.")))
        .map(|r| r.1)
        .unwrap_or_default();
    body.lines()
        .filter_map(|l| l.rsplit_once(": "))
        .filter(|(k, _)| k.ends_with(name))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}
