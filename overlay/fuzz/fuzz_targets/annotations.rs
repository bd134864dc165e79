//! Any Node annotations and pod CIDRs: making a record must not panic, and
//! a record it makes is valid and survives the file registry's round trip.
#![no_main]

use std::collections::BTreeMap;

use felt_proto::NodeRecord;
use felt_proto::annotations::{self, BACKEND_DATA, BACKEND_TYPE, NodeFields, PUBLIC_IP, PUBLIC_IP_OVERWRITE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // Fields split on NUL: name, two pod CIDRs, then the four annotations;
    // an empty field is an absent one.
    let text = String::from_utf8_lossy(bytes);
    let mut fields = text.split('\0');
    let mut next = || fields.next().filter(|f| !f.is_empty()).map(str::to_owned);
    let name = next().unwrap_or_default();
    let pod_cidrs: Vec<String> = [next(), next()].into_iter().flatten().collect();
    let mut ann = BTreeMap::new();
    for key in [BACKEND_TYPE, BACKEND_DATA, PUBLIC_IP, PUBLIC_IP_OVERWRITE] {
        if let Some(v) = next() {
            ann.insert(key.to_owned(), v);
        }
    }
    for honour in [true, false] {
        let node = NodeFields { name: &name, pod_cidrs: &pod_cidrs, annotations: &ann };
        if let Ok(r) = annotations::record(node, honour) {
            r.validate().expect("a record made is valid");
            assert_eq!(NodeRecord::from_json(&r.to_json()).unwrap(), r);
        }
    }
});
