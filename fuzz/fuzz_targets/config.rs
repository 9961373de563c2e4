//! The plugin configuration: any bytes are a configuration or a named error, never a
//! panic; an accepted one stays within its bounds.
#![no_main]

use flowguard_engine::config::Settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Settings::from_json(data) {
        assert!(s.session.capacity >= 1 && s.session.capacity <= 1 << 20);
        assert!(
            usize::from(s.learning.max_endpoints) <= flowguard_engine::endpoint_set::MAX_ENDPOINTS
        );
    }
});
