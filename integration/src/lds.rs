//! A bootstrap whose listener Envoy reads from an LDS file it watches, so a test can
//! replace the listener (and with it flowguard's configuration) while Envoy serves.
//! Test setup: failures panic.

use crate::envoy::{repo_root, Envoy};
use crate::patience::eventually;
use serde_json::{json, Value};
use std::path::PathBuf;

/// A bootstrap split: everything but the listener, which goes to the LDS file.
pub struct LdsListener {
    /// What to start Envoy with ([`Envoy::start_yaml`]).
    pub bootstrap: String,
    listener: Value,
    lds: PathBuf,
}

impl LdsListener {
    /// Splits `bootstrap_yaml` (the harness's: its one listener moves to the file, on a
    /// free port it keeps across updates so the test's URL stays valid) for an Envoy
    /// named `node` (LDS needs a node), and publishes the listener.
    pub fn new(bootstrap_yaml: &str, node: &str) -> LdsListener {
        let dir = repo_root()
            .join("target/envoy-runs")
            .join(format!("{node}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("LDS directory");
        let mut boot: Value = serde_norway::from_str(bootstrap_yaml).expect("bootstrap YAML");
        let mut listener = boot["static_resources"]["listeners"][0].take();
        boot["static_resources"]
            .as_object_mut()
            .expect("static_resources")
            .remove("listeners");
        listener["@type"] = json!("type.googleapis.com/envoy.config.listener.v3.Listener");
        listener["address"]["socket_address"]["port_value"] = json!(free_port());
        let lds = dir.join("lds.json");
        boot["node"] = json!({"id": node, "cluster": "flowguard"});
        boot["dynamic_resources"] = json!({
            "lds_config": {"path_config_source": {"path": lds.display().to_string()}}
        });
        let l = LdsListener {
            bootstrap: serde_json::to_string(&boot).expect("JSON"),
            listener,
            lds,
        };
        l.publish();
        l
    }

    /// The HTTP connection manager's configuration (`stat_prefix`, `http_filters`, …).
    pub fn connection_manager(&mut self) -> &mut Value {
        &mut self.listener["filter_chains"][0]["filters"][0]["typed_config"]
    }

    /// The Wasm filter's `config` (flowguard is the first HTTP filter).
    pub fn wasm_config(&mut self) -> &mut Value {
        &mut self.flowguard()["config"]
    }

    /// The native module's filter JSON, a string.
    pub fn module_json(&mut self) -> &mut Value {
        &mut self.flowguard()["filter_config"]["value"]
    }

    fn flowguard(&mut self) -> &mut Value {
        &mut self.connection_manager()["http_filters"][0]["typed_config"]
    }

    /// Writes the listener where Envoy watches, atomically (a rename), as LDS expects.
    pub fn publish(&self) {
        let tmp = self.lds.with_extension("tmp");
        let doc = json!({"resources": [self.listener]});
        std::fs::write(&tmp, doc.to_string()).expect("write LDS");
        std::fs::rename(&tmp, &self.lds).expect("rename LDS");
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Waits until Envoy has applied more than `after` listener updates (its
/// `listener_manager.lds.update_success`, read before publishing).
pub fn wait_for_update(envoy: &Envoy, after: u64) {
    eventually("the listener update", || {
        (envoy.stat("listener_manager.lds.update_success") > after).then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", envoy.log()));
}
