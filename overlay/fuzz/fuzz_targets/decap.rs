//! Any datagram, from a known peer or not: decap must not panic, and must
//! either deliver a slice of the input or count exactly one drop.
#![no_main]

use std::net::Ipv4Addr;

use felt_overlay::Peer;
use felt_overlay::userspace::{Decap, Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, &[u8])| {
    let (known, datagram) = input;
    let me = felt_proto::MacAddr::derive(b"n2");
    let mut e = Engine::new(EngineConfig { vni: 1, mac: me, port: 8472 });
    e.set_peers(&[Peer {
        name: "n1".into(),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        pod_cidr6: Some("fd00:f31:244::/64".parse().unwrap()),
        vtep_mac: felt_proto::MacAddr::derive(b"n1"),
        underlay_ip: Ipv4Addr::new(198, 18, 7, 11),
    }]);
    let from = if known { Ipv4Addr::new(198, 18, 7, 11) } else { Ipv4Addr::new(198, 18, 7, 99) };
    match e.decap(from, datagram) {
        Decap::Deliver(p) => {
            assert!(p.len() <= datagram.len());
            assert_eq!(e.counters().rx_packets, 1);
        }
        Decap::Drop(r) => assert_eq!(e.counters().dropped(r), 1),
    }
});
