//! The kernel objects that make a peer reachable, and the changes to them.
//!
//! These are the data plane's vocabulary (`felt_overlay` plans and applies
//! them) and part of the debug API (`/debug/state` shows desired entries and
//! the diff as these shapes), so they live here, with no I/O.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// `ip route replace <dst> via <gateway> dev <vxlan> onlink proto 76`: both
/// IPv4 or both IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    /// The peer's pod subnet.
    pub dst: IpNet,
    /// The peer's VTEP address.
    pub gateway: IpAddr,
}

/// `ip neigh replace <ip> lladdr <mac> dev <vxlan> nud permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Neighbour {
    /// The peer's VTEP address (IPv4 or IPv6; both map to its one MAC).
    pub ip: IpAddr,
    /// The peer's VTEP MAC.
    pub mac: MacAddr,
}

/// `bridge fdb replace <mac> dev <vxlan> dst <underlay ip> self permanent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FdbEntry {
    /// The peer's VTEP MAC.
    pub mac: MacAddr,
    /// The peer's underlay address (IPv4, or IPv6 on an IPv6 underlay).
    pub dst: IpAddr,
}

/// One change to the data plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", content = "entry", rename_all = "snake_case")]
pub enum Op {
    /// Remove a felt route.
    DelRoute(IpNet),
    /// Remove a permanent neighbour.
    DelNeighbour(Neighbour),
    /// Remove one remote of an FDB entry.
    DelFdb(FdbEntry),
    /// Create or replace a permanent neighbour.
    SetNeighbour(Neighbour),
    /// Create or replace an FDB entry.
    SetFdb(FdbEntry),
    /// Create or replace a route.
    SetRoute(Route),
}

impl Op {
    /// A short name for logs and metrics (the `op` field of its JSON).
    pub fn kind(&self) -> &'static str {
        match self {
            Op::DelRoute(_) => "del_route",
            Op::DelNeighbour(_) => "del_neighbour",
            Op::DelFdb(_) => "del_fdb",
            Op::SetNeighbour(_) => "set_neighbour",
            Op::SetFdb(_) => "set_fdb",
            Op::SetRoute(_) => "set_route",
        }
    }

    /// Removes an entry.
    pub fn is_removal(&self) -> bool {
        matches!(self, Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_keep_their_json_shape() {
        let op = Op::SetFdb(FdbEntry {
            mac: "0a:00:00:00:00:01".parse().unwrap(),
            dst: std::net::Ipv4Addr::new(198, 18, 0, 2).into(),
        });
        let json = serde_json::to_string(&op).unwrap();
        assert_eq!(json, r#"{"op":"set_fdb","entry":{"mac":"0a:00:00:00:00:01","dst":"198.18.0.2"}}"#);
        assert_eq!(serde_json::from_str::<Op>(&json).unwrap(), op);
        let del = Op::DelRoute("10.244.3.0/24".parse().unwrap());
        assert_eq!(serde_json::to_string(&del).unwrap(), r#"{"op":"del_route","entry":"10.244.3.0/24"}"#);
        assert!(del.is_removal() && !op.is_removal());
        assert_eq!(op.kind(), "set_fdb");
    }
}
