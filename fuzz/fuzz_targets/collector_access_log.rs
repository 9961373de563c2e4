//! `flowguard learn --envoy-log`: Envoy JSON access-log lines, whatever wrote them.
#![no_main]

use flowguard_collector::access_log;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (observations, skipped) = access_log::parse(&String::from_utf8_lossy(data));
    assert!(observations.len() + skipped <= data.len() + 1);
});
