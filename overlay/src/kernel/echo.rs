//! Telling felt's own writes from everyone else's.
//!
//! Every route, neighbour and FDB entry felt writes comes back to its change
//! listener as a notification, as a change made by hand does. Repairing after
//! each of its own writes would cost a full pass (a dump of every entry) per
//! burst of changes, which at thousands of peers dominates. [`Expected`] is
//! what felt believes its device holds, indexed; a notification it explains
//! (the entry as felt wrote it, or the removal of one felt does not want) is
//! an echo. Anything else — a changed or deleted entry, a link event — wakes
//! the repair. When felt does not know (before its first pass, after a
//! failed write) nothing is explained.

use foldhash::{HashMap, HashSet};
use std::net::IpAddr;

use felt_proto::MacAddr;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAttribute, RouteMessage};

use crate::{FdbEntry, Observed, Op, RouteTag};

/// What felt believes its device holds (the part it owns), indexed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    routes: HashMap<IpNet, IpAddr>,
    neighbours: HashMap<IpAddr, MacAddr>,
    fdb: HashSet<FdbEntry>,
}

impl Expected {
    /// From the entries a pass found (only felt's own routes count).
    pub fn of(observed: &Observed) -> Self {
        Expected {
            routes: observed.routes.iter().filter_map(crate::ObservedRoute::as_felts).collect(),
            neighbours: observed.neighbours.iter().map(|n| (n.ip, n.mac)).collect(),
            fdb: observed.fdb.iter().copied().collect(),
        }
    }

    /// As it will be once `ops` are done.
    pub fn update(&mut self, ops: &[Op]) {
        for op in ops {
            match op {
                Op::SetRoute(r) => {
                    self.routes.insert(r.dst, r.gateway);
                }
                Op::DelRoute(dst) => {
                    self.routes.remove(dst);
                }
                Op::SetNeighbour(n) => {
                    self.neighbours.insert(n.ip, n.mac);
                }
                Op::DelNeighbour(n) => {
                    self.neighbours.remove(&n.ip);
                }
                Op::SetFdb(f) => {
                    self.fdb.insert(*f);
                }
                Op::DelFdb(f) => {
                    self.fdb.remove(f);
                }
            }
        }
    }

    /// True when `m`, a notification about device `index`, is what felt's
    /// own writes leave: nothing to repair.
    pub fn explains(&self, m: &RouteNetlinkMessage, index: u32, tag: RouteTag) -> bool {
        match m {
            RouteNetlinkMessage::NewRoute(r) => route_of(r, index, tag)
                .is_some_and(|(dst, gw)| gw.is_some() && self.routes.get(&dst) == gw.as_ref()),
            RouteNetlinkMessage::DelRoute(r) => {
                route_of(r, index, tag).is_some_and(|(dst, _)| !self.routes.contains_key(&dst))
            }
            RouteNetlinkMessage::NewNeighbour(n) => match entry_of(n) {
                Some(Entry::Neighbour(ip, Some(mac))) => self.neighbours.get(&ip) == Some(&mac),
                Some(Entry::Fdb(f)) => self.fdb.contains(&f),
                _ => false,
            },
            RouteNetlinkMessage::DelNeighbour(n) => match entry_of(n) {
                Some(Entry::Neighbour(ip, _)) => !self.neighbours.contains_key(&ip),
                Some(Entry::Fdb(f)) => !self.fdb.contains(&f),
                None => false,
            },
            _ => false,
        }
    }
}

/// A route of felt's through `index`: its destination and gateway.
fn route_of(r: &RouteMessage, index: u32, tag: RouteTag) -> Option<(IpNet, Option<IpAddr>)> {
    let on_device = r.attributes.contains(&RouteAttribute::Oif(index));
    if !on_device || !tag.owns(u8::from(r.header.protocol), on_device) {
        return None;
    }
    let (mut dst, mut gateway) = (None, None);
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(a) => dst = super::msg::route_ip(a),
            RouteAttribute::Gateway(a) => gateway = super::msg::route_ip(a),
            _ => {}
        }
    }
    Some((IpNet::new(dst?, r.header.destination_prefix_length).ok()?, gateway))
}

enum Entry {
    Neighbour(IpAddr, Option<MacAddr>),
    Fdb(FdbEntry),
}

fn entry_of(n: &NeighbourMessage) -> Option<Entry> {
    let mut ip = None;
    let mut mac = None;
    for a in &n.attributes {
        match a {
            NeighbourAttribute::Destination(a) => ip = super::msg::neighbour_ip(a),
            NeighbourAttribute::LinkLayerAddress(raw) => mac = MacAddr::try_from(raw.as_slice()).ok(),
            _ => {}
        }
    }
    match (n.header.family, ip?) {
        (AddressFamily::Inet | AddressFamily::Inet6, ip) => Some(Entry::Neighbour(ip, mac)),
        (AddressFamily::Bridge, dst) => Some(Entry::Fdb(FdbEntry { mac: mac?, dst })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv4Net;
    use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourHeader};
    use netlink_packet_route::route::{RouteAddress, RouteHeader, RouteProtocol};

    use super::*;
    use crate::{Neighbour, Route};

    const DEV: u32 = 7;

    fn route(dst: &str, gw: &str, proto: u8) -> RouteMessage {
        let dst: Ipv4Net = dst.parse().unwrap();
        let mut m = RouteMessage::default();
        m.header = RouteHeader { destination_prefix_length: dst.prefix_len(), ..Default::default() };
        m.header.protocol = RouteProtocol::from(proto);
        m.attributes = vec![
            RouteAttribute::Destination(RouteAddress::Inet(dst.network())),
            RouteAttribute::Gateway(RouteAddress::Inet(gw.parse().unwrap())),
            RouteAttribute::Oif(DEV),
        ];
        m
    }

    fn neigh(family: AddressFamily, ip: &str, mac: u8) -> NeighbourMessage {
        let mut m = NeighbourMessage::default();
        m.header = NeighbourHeader { family, ifindex: DEV, ..Default::default() };
        m.attributes = vec![
            NeighbourAttribute::Destination(NeighbourAddress::Inet(ip.parse().unwrap())),
            NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, mac]),
        ];
        m
    }

    /// felt's own writes are explained; the same entries changed or removed
    /// by someone else are not, nor is anything felt has no belief about.
    #[test]
    fn own_writes_are_echoes_and_foreign_changes_are_not() {
        let tag = RouteTag::FELT;
        let mut e = Expected::default();
        let mac = MacAddr([2, 0, 0, 0, 0, 2]);
        e.update(&[
            Op::SetRoute(Route {
                dst: "10.244.2.0/24".parse().unwrap(),
                gateway: "10.244.2.0".parse().unwrap(),
            }),
            Op::SetNeighbour(Neighbour { ip: "10.244.2.0".parse().unwrap(), mac }),
            Op::SetFdb(FdbEntry { mac, dst: "198.18.7.12".parse().unwrap() }),
        ]);
        let felt = tag.protocol;
        use RouteNetlinkMessage as M;
        let explained = |e: &Expected, m: M| e.explains(&m, DEV, tag);
        assert!(explained(&e, M::NewRoute(route("10.244.2.0/24", "10.244.2.0", felt))));
        assert!(!explained(&e, M::NewRoute(route("10.244.2.0/24", "10.244.9.0", felt))), "another gateway");
        assert!(!explained(&e, M::DelRoute(route("10.244.2.0/24", "10.244.2.0", felt))), "our route deleted");
        assert!(explained(&e, M::DelRoute(route("10.244.3.0/24", "10.244.3.0", felt))), "one we removed");
        assert!(!explained(&e, M::NewRoute(route("10.244.2.0/24", "10.244.2.0", 4))), "someone else's route");
        assert!(explained(&e, M::NewNeighbour(neigh(AddressFamily::Inet, "10.244.2.0", 2))));
        assert!(!explained(&e, M::NewNeighbour(neigh(AddressFamily::Inet, "10.244.2.0", 9))), "another MAC");
        assert!(!explained(&e, M::DelNeighbour(neigh(AddressFamily::Inet, "10.244.2.0", 2))));
        assert!(explained(&e, M::NewNeighbour(neigh(AddressFamily::Bridge, "198.18.7.12", 2))));
        assert!(
            !explained(&e, M::NewNeighbour(neigh(AddressFamily::Bridge, "198.18.7.99", 2))),
            "another dst"
        );
        assert!(!explained(&e, M::DelNeighbour(neigh(AddressFamily::Bridge, "198.18.7.12", 2))));
        assert!(!explained(&e, M::NewLink(Default::default())), "link events always repair");
        e.update(&[Op::DelFdb(FdbEntry { mac, dst: "198.18.7.12".parse().unwrap() })]);
        assert!(
            explained(&e, M::DelNeighbour(neigh(AddressFamily::Bridge, "198.18.7.12", 2))),
            "one we removed"
        );
        let of = Expected::of(&Observed {
            routes: vec![crate::ObservedRoute {
                dst: "10.244.2.0/24".parse().unwrap(),
                gateway: Some("10.244.2.0".parse().unwrap()),
                on_device: true,
                onlink: true,
                ours: true,
            }],
            neighbours: vec![Neighbour { ip: "10.244.2.0".parse().unwrap(), mac }],
            fdb: vec![],
        });
        assert_eq!(of.routes, e.routes);
        assert_eq!(of.neighbours, e.neighbours);
    }
}
