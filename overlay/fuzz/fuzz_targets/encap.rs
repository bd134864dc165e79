//! Any bytes from the TUN, any output size: encap must not panic, and a
//! frame it sends must fit the buffer and decap back to the input packet.
#![no_main]

use std::net::Ipv4Addr;

use felt_overlay::Peer;
use felt_overlay::userspace::{Decap, Encap, Engine, EngineConfig};
use libfuzzer_sys::fuzz_target;

fn peer(name: &str, cidr: &str, ip: Ipv4Addr) -> Peer {
    Peer {
        name: name.into(),
        pod_cidr: cidr.parse().unwrap(),
        vtep_mac: felt_proto::MacAddr::derive(name.as_bytes()),
        underlay_ip: ip,
    }
}

fuzz_target!(|input: (u16, &[u8])| {
    let (out_len, packet) = input;
    let (n1, n2) = (
        peer("n1", "10.244.0.0/16", Ipv4Addr::new(198, 18, 7, 11)),
        peer("n2", "10.245.0.0/16", Ipv4Addr::new(198, 18, 7, 12)),
    );
    let mut a = Engine::new(EngineConfig { vni: 1, mac: n1.vtep_mac, port: 8472 });
    a.set_peers(std::slice::from_ref(&n2));
    let mut out = vec![0u8; usize::from(out_len) % 4096];
    if let Encap::Send { len, .. } = a.encap(packet, &mut out) {
        assert!(len <= out.len());
        let mut b = Engine::new(EngineConfig { vni: 1, mac: n2.vtep_mac, port: 8472 });
        b.set_peers(&[n1]);
        // Delivered unless the inner source is outside n1's pod CIDR (anti-spoofing).
        if let Decap::Deliver(p) = b.decap(Ipv4Addr::new(198, 18, 7, 11), &out[..len]) {
            assert_eq!(p, &packet[..p.len()]);
        }
    }
});
