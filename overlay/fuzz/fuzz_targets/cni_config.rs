//! Any bytes as a CNI network config on the plugin's stdin, and as a result
//! in `prevResult`: parsing must not panic (errors carry a spec code), what
//! parses must survive a round trip, and a result reshaped for every version
//! must stay one.
#![no_main]

use felt_proto::cni::{CniResult, NetConf, SUPPORTED_VERSIONS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    match NetConf::parse(bytes) {
        Ok(conf) => {
            let again = serde_json::to_vec(&conf).unwrap();
            assert_eq!(NetConf::parse(&again).unwrap(), conf);
        }
        Err(e) => assert!(!e.msg.is_empty() && e.code != 0),
    }
    if let Ok(r) = serde_json::from_slice::<CniResult>(bytes) {
        for v in SUPPORTED_VERSIONS {
            let shaped = r.clone().for_version(v);
            let text = serde_json::to_vec(&shaped).unwrap();
            assert_eq!(serde_json::from_slice::<CniResult>(&text).unwrap(), shaped);
        }
    }
});
