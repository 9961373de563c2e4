//! A policy from the collector (or an operator): parsed, validated, compiled into a model.
#![no_main]

use flowguard_engine::config::Settings;
use flowguard_engine::model::Model;
use flowguard_engine::policy::Policy;
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static SETTINGS: LazyLock<Option<Settings>> = LazyLock::new(|| Settings::from_json(b"{}").ok());

fuzz_target!(|data: &[u8]| {
    if let (Ok(p), Some(s)) = (Policy::from_json(data), SETTINGS.as_ref()) {
        let _ = Model::compile(&p, s);
    }
});
