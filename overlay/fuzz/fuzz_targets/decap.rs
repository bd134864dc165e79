//! Any datagram, from a known peer or not, on an IPv4 or IPv6 underlay:
//! decap must not panic, and must either deliver a slice of the input or
//! count exactly one drop.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use felt_overlay::Peer;
use felt_overlay::userspace::{Decap, Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, bool, &[u8])| {
    let (known, ipv6, datagram) = input;
    let (peer, stranger): (IpAddr, IpAddr) = if ipv6 {
        (
            Ipv6Addr::new(0xfd00, 0xf31, 1, 0, 0, 0, 0, 0x11).into(),
            Ipv6Addr::new(0xfd00, 0xf31, 1, 0, 0, 0, 0, 0x99).into(),
        )
    } else {
        (Ipv4Addr::new(198, 18, 7, 11).into(), Ipv4Addr::new(198, 18, 7, 99).into())
    };
    let me = felt_proto::MacAddr::derive(b"n2");
    let mut e = Engine::new(EngineConfig { vni: 1, mac: me, port: 8472 });
    e.set_peers(&[Peer {
        name: "n1".into(),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        pod_cidr6: Some("fd00:f31:244::/64".parse().unwrap()),
        vtep_mac: felt_proto::MacAddr::derive(b"n1"),
        underlay_ip: peer,
    }]);
    let from = if known { peer } else { stranger };
    match e.decap(from, datagram) {
        Decap::Deliver(p) => {
            assert!(p.len() <= datagram.len());
            assert_eq!(e.counters().rx_packets, 1);
        }
        Decap::Drop(r) => assert_eq!(e.counters().dropped(r), 1),
    }
});
