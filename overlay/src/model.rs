//! The domain: peers and the kernel objects that make them reachable.

use std::net::Ipv4Addr;

use felt_proto::MacAddr;
use ipnet::Ipv4Net;
use serde::Serialize;

/// A remote node, as the data plane needs it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Peer {
    /// Node name.
    pub name: String,
    /// The peer's pod subnet.
    pub pod_cidr: Ipv4Net,
    /// The peer's VTEP MAC.
    pub vtep_mac: MacAddr,
    /// The peer's underlay address, where VXLAN datagrams go.
    pub underlay_ip: Ipv4Addr,
}

impl Peer {
    /// The peer's VTEP address: its pod subnet's network address (`.0`), as
    /// Flannel assigns it to `flannel.1`.
    pub fn vtep_ip(&self) -> Ipv4Addr {
        self.pod_cidr.network()
    }
}

/// `ip route replace <dst> via <gateway> dev <vxlan> onlink proto 76`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Route {
    /// The peer's pod subnet.
    pub dst: Ipv4Net,
    /// The peer's VTEP address.
    pub gateway: Ipv4Addr,
}

/// `ip neigh replace <ip> lladdr <mac> dev <vxlan> nud permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Neighbour {
    /// The peer's VTEP address.
    pub ip: Ipv4Addr,
    /// The peer's VTEP MAC.
    pub mac: MacAddr,
}

/// `bridge fdb replace <mac> dev <vxlan> dst <underlay ip> self permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct FdbEntry {
    /// The peer's VTEP MAC.
    pub mac: MacAddr,
    /// The peer's underlay address.
    pub dst: Ipv4Addr,
}
