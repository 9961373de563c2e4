//! Records read back from Envoy shared data, which another worker (or an older build)
//! wrote: session slots, address slots, learning counters, the registry, header maps.
#![no_main]

use flowguard_engine::address::AddressSlot;
use flowguard_engine::header_map::decode_pairs;
use flowguard_engine::learn::{LearnStats, Registry};
use flowguard_engine::slot::Slot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(slot) = Slot::decode(data) {
        assert_eq!(Slot::decode(&slot.encode()), Ok(slot), "slots round-trip");
    }
    let a = AddressSlot::decode(data);
    assert_eq!(AddressSlot::decode(&a.encode()), a);
    if let Ok(stats) = LearnStats::decode(data) {
        let mut merged = stats.clone();
        merged.merge(&stats);
    }
    let reg = Registry::decode(data);
    assert!(reg.len() <= flowguard_engine::endpoint_set::MAX_ENDPOINTS);
    let _ = decode_pairs(data);
});
