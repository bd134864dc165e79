//! The domain: peers and the kernel objects that make them reachable
//! (those are defined in `felt_proto::entry`, as the debug API shows them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use felt_proto::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};
use serde::Serialize;

/// A remote node, as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// The peer's IPv4 pod subnet (none in an IPv6-only cluster).
    pub pod_cidr: Option<Ipv4Net>,
    /// The peer's IPv6 pod subnet, in a dual-stack or IPv6-only cluster.
    pub pod_cidr6: Option<Ipv6Net>,
    /// The peer's VTEP MAC.
    pub vtep_mac: MacAddr,
    /// The peer's underlay address, where VXLAN datagrams go (IPv4, or
    /// IPv6 on an IPv6 underlay).
    pub underlay_ip: IpAddr,
}

impl Peer {
    /// The peer's VTEP address: its pod subnet's network address (`.0`), as
    /// Flannel assigns it to `flannel.1`.
    pub fn vtep_ip(&self) -> Option<Ipv4Addr> {
        self.pod_cidr.map(crate::dataplane::vtep_ip)
    }

    /// Its pod subnets, IPv4 first, comma-separated (for logs).
    pub fn pod_cidrs(&self) -> String {
        let v4 = self.pod_cidr.map(|c| c.to_string());
        v4.into_iter().chain(self.pod_cidr6.map(|c| c.to_string())).collect::<Vec<_>>().join(",")
    }

    /// The peer's IPv6 VTEP address: its IPv6 pod subnet's network address,
    /// as Flannel assigns it to `flannel-v6.1`.
    pub fn vtep_ip6(&self) -> Option<Ipv6Addr> {
        self.pod_cidr6.map(|c| c.network())
    }
}

pub use felt_proto::entry::{FdbEntry, Neighbour, Route};
