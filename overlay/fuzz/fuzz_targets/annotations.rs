//! Any Node annotations and pod CIDRs: making a record must not panic, and
//! a record it makes is valid and survives the file registry's round trip.
#![no_main]

use std::collections::BTreeMap;

use felt_proto::NodeRecord;
use felt_proto::annotations::{self, Dialect, NodeFields};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The first byte picks the dialect; the rest is fields split on NUL:
    // name, two pod CIDRs, then the four annotations; an empty field is an
    // absent one.
    let Some((&pick, bytes)) = bytes.split_first() else { return };
    let dialect = if pick & 1 == 0 { Dialect::Felt } else { Dialect::Flannel };
    let keys = dialect.keys();
    let text = String::from_utf8_lossy(bytes);
    let mut fields = text.split('\0');
    let mut next = || fields.next().filter(|f| !f.is_empty()).map(str::to_owned);
    let name = next().unwrap_or_default();
    let pod_cidrs: Vec<String> = [next(), next()].into_iter().flatten().collect();
    let mut ann = BTreeMap::new();
    for key in [keys.backend_type, keys.backend_data, keys.public_ip, keys.public_ip_overwrite] {
        if let Some(v) = next() {
            ann.insert(key.to_owned(), v);
        }
    }
    for honour in [true, false] {
        let node = NodeFields { name: &name, pod_cidrs: &pod_cidrs, annotations: &ann };
        if let Ok(r) = annotations::record(node, dialect, honour) {
            r.validate().expect("a record made is valid");
            assert_eq!(NodeRecord::from_json(&r.to_json()).unwrap(), r);
            // What the dialect writes for the record, it reads back.
            let written: BTreeMap<String, String> =
                dialect.annotations(&r).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let again = NodeFields { name: &name, pod_cidrs: &pod_cidrs, annotations: &written };
            assert_eq!(annotations::record(again, dialect, false).unwrap(), r);
        }
    }
});
