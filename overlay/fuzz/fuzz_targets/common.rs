//! What the fuzz targets share: two dual-stack peers on one VNI.

use std::net::{IpAddr, Ipv4Addr};

use felt_overlay::Peer;
use felt_overlay::userspace::{Engine, EngineConfig};

pub fn peer(name: &str, cidr: &str, cidr6: &str, ip: Ipv4Addr) -> Peer {
    Peer {
        name: name.into(),
        pod_cidr: Some(cidr.parse().unwrap()),
        pod_cidr6: Some(cidr6.parse().unwrap()),
        vtep_mac: felt_proto::MacAddr::derive(name.as_bytes()),
        underlay_ip: ip.into(),
    }
}

/// n1 (10.244.0.0/16 and fd00:f31:1::/48 at 198.18.7.11) and n2
/// (10.245.0.0/16 and fd00:f31:2::/48 at 198.18.7.12), each with an engine
/// that knows the other.
pub fn pair() -> (Engine, Engine) {
    let (n1, n2) = (
        peer("n1", "10.244.0.0/16", "fd00:f31:1::/48", Ipv4Addr::new(198, 18, 7, 11)),
        peer("n2", "10.245.0.0/16", "fd00:f31:2::/48", Ipv4Addr::new(198, 18, 7, 12)),
    );
    let mut a = Engine::new(EngineConfig { vni: 1, mac: n1.vtep_mac, port: 8472 });
    a.set_peers(std::slice::from_ref(&n2));
    let mut b = Engine::new(EngineConfig { vni: 1, mac: n2.vtep_mac, port: 8472 });
    b.set_peers(&[n1]);
    (a, b)
}

/// n1's underlay address.
pub const N1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 7, 11));
