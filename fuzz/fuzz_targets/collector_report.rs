//! The collector's gRPC input: a protobuf ReportRequest from the network, decoded and
//! stored in a real (in-memory) SQLite store, then read back as the fleet learner does.
#![no_main]

use flowguard_collector::store::Store;
use flowguard_proto::v1::ReportRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = ReportRequest::decode(data) else {
        return;
    };
    // A fresh store per input keeps each run independent and memory flat.
    let Ok(mut store) = Store::open(Path::new(":memory:")) else {
        return;
    };
    if let Ok(n) = store.insert_batch(&report, 0) {
        assert_eq!(n, report.events.len() as u64);
        assert_eq!(
            store.insert_batch(&report, 0).ok(),
            Some(0),
            "a batch is stored once"
        );
        let _ = store.events(false);
    }
});
