//! Any bytes as the network config, in felt's shape (`--net-conf`) and in
//! Flannel's (`net-conf.json`, with `--compat flannel`): parse must not
//! panic; what it accepts is valid, survives a round trip through felt's
//! shape, and gives an overlay MTU for any underlay MTU (either family) without overflow.
#![no_main]

use felt_proto::NetConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let flannel = NetConfig::from_flannel_json(bytes).ok().map(|(cfg, _notes)| cfg);
    for cfg in NetConfig::from_json(bytes).ok().into_iter().chain(flannel) {
        assert!(cfg.validate().is_ok());
        let again = serde_json::to_vec(&cfg).unwrap();
        assert_eq!(NetConfig::from_json(&again).unwrap(), cfg);
        for underlay in [0, 68, 1500, 9000, u32::MAX] {
            let _ = (cfg.overlay_mtu(underlay, false), cfg.overlay_mtu(underlay, true));
        }
    }
});
