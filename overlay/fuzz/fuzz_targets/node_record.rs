//! Any bytes as a node document: parse must not panic, and what it accepts
//! must survive a round trip.
#![no_main]

use felt_proto::NodeRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(r) = NodeRecord::from_json(bytes) {
        assert_eq!(NodeRecord::from_json(&r.to_json()).unwrap(), r);
    }
});
