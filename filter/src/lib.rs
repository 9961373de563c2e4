//! flowguard-filter: the proxy-wasm glue that runs flowguard's engine inside Envoy.
//!
//! Thin by design: read headers and shared data through `host`, ask the engine, apply
//! its verdict. A panic would kill the VM for good, so the crate denies `unwrap`,
//! `expect`, `panic!` and indexing, and a panic hook logs at critical level.

mod fleet;
mod host;
mod http;
mod metrics;
mod root;
mod telemetry;
mod tick;
mod worker;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| {
        host::log(LogLevel::Critical, &format!("flowguard: panic, VM is now unusable: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(root::Root::default()));
}}
