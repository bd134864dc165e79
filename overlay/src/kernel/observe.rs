//! Reading kernel dumps into what [`crate::plan`] compares: pure functions
//! over parsed netlink messages.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use felt_proto::MacAddr;
use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAttribute, RouteFlags, RouteHeader, RouteMessage};

use super::msg::{VxlanSpec, neighbour_ip, route_ip};
use crate::{FdbEntry, Neighbour, ObservedRoute, RouteTag};

/// What a link dump says about one device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkFacts {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Administratively up.
    pub up: bool,
    /// MTU.
    pub mtu: u32,
    /// Hardware address, when it is an Ethernet one.
    pub mac: Option<MacAddr>,
    /// The VXLAN settings, when the device is a VXLAN device.
    pub vxlan: Option<VxlanFacts>,
}

/// The identity of a VXLAN device: what cannot change without recreating it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VxlanFacts {
    /// VNI.
    pub vni: Option<u32>,
    /// UDP destination port.
    pub port: Option<u16>,
    /// Underlay source address.
    pub local: Option<IpAddr>,
    /// Underlay device index.
    pub link: Option<u32>,
    /// Source-address learning.
    pub learning: Option<bool>,
}

/// Reads a link message.
pub fn link_facts(msg: &LinkMessage) -> LinkFacts {
    let mut f = LinkFacts {
        index: msg.header.index,
        up: msg.header.flags.contains(LinkFlags::Up),
        ..LinkFacts::default()
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => f.name = n.clone(),
            LinkAttribute::Mtu(m) => f.mtu = *m,
            LinkAttribute::Address(a) => f.mac = MacAddr::try_from(a.as_slice()).ok(),
            LinkAttribute::LinkInfo(infos) => {
                let is_vxlan = infos.contains(&LinkInfo::Kind(InfoKind::Vxlan));
                if is_vxlan {
                    let mut v = VxlanFacts::default();
                    for info in infos {
                        if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                            for d in data {
                                match d {
                                    InfoVxlan::Id(x) => v.vni = Some(*x),
                                    InfoVxlan::Port(x) => v.port = Some(*x),
                                    InfoVxlan::Local(x) => v.local = Some(IpAddr::V4(*x)),
                                    InfoVxlan::Local6(x) => v.local = Some(IpAddr::V6(*x)),
                                    InfoVxlan::Link(x) => v.link = Some(*x),
                                    InfoVxlan::Learning(x) => v.learning = Some(*x),
                                    _ => {}
                                }
                            }
                        }
                    }
                    f.vxlan = Some(v);
                }
            }
            _ => {}
        }
    }
    f
}

impl VxlanSpec {
    /// Why an existing device cannot serve as this one (then it is recreated),
    /// or `None` when its identity matches.
    pub fn mismatch(&self, facts: &LinkFacts) -> Option<String> {
        let Some(v) = &facts.vxlan else {
            return Some(format!("{} exists but is not a VXLAN device", facts.name));
        };
        let diffs: Vec<String> = [
            (v.vni != Some(self.vni)).then(|| format!("vni {:?} ≠ {}", v.vni, self.vni)),
            (v.port != Some(self.port)).then(|| format!("dstport {:?} ≠ {}", v.port, self.port)),
            (v.local != Some(self.local)).then(|| format!("local {:?} ≠ {}", v.local, self.local)),
            (v.link != Some(self.underlay_index))
                .then(|| format!("dev {:?} ≠ {}", v.link, self.underlay_index)),
            (v.learning != Some(false)).then(|| "learning is on".to_owned()),
        ]
        .into_iter()
        .flatten()
        .collect();
        (!diffs.is_empty()).then(|| diffs.join(", "))
    }
}

/// A main-table route (IPv4 or IPv6) that leaves through `ifindex` or that
/// `tag` owns; `None` for any other.
pub fn route(m: &RouteMessage, ifindex: u32, tag: RouteTag) -> Option<ObservedRoute> {
    if !matches!(m.header.address_family, AddressFamily::Inet | AddressFamily::Inet6) {
        return None;
    }
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let mut dst_addr = match m.header.address_family {
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    };
    let (mut gateway, mut oif) = (None, None);
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst_addr = route_ip(d).unwrap_or(dst_addr),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(o) => oif = Some(*o),
            _ => {}
        }
    }
    let on_device = oif == Some(ifindex);
    let ours = tag.owns(u8::from(m.header.protocol), on_device);
    if !ours && !on_device {
        return None;
    }
    let dst = IpNet::new(dst_addr, m.header.destination_prefix_length).ok()?;
    Some(ObservedRoute { dst, gateway, on_device, onlink: m.header.flags.contains(RouteFlags::Onlink), ours })
}

/// Main-table routes (IPv4 and IPv6) that leave through `ifindex` or that
/// `tag` owns.
pub fn routes(msgs: &[RouteMessage], ifindex: u32, tag: RouteTag) -> Vec<ObservedRoute> {
    msgs.iter().filter_map(|m| route(m, ifindex, tag)).collect()
}

fn lladdr(m: &NeighbourMessage) -> Option<MacAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => MacAddr::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn destination(m: &NeighbourMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => neighbour_ip(d),
        _ => None,
    })
}

/// A permanent neighbour (IPv4 or IPv6) on `ifindex`; `None` for any other.
pub fn neighbour(m: &NeighbourMessage, ifindex: u32) -> Option<Neighbour> {
    let ours = matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6)
        && m.header.ifindex == ifindex
        && m.header.state == NeighbourState::Permanent;
    ours.then(|| Some(Neighbour { ip: destination(m)?, mac: lladdr(m)? })).flatten()
}

/// Permanent neighbours (IPv4 and IPv6) on `ifindex`.
pub fn neighbours(msgs: &[NeighbourMessage], ifindex: u32) -> Vec<Neighbour> {
    msgs.iter().filter_map(|m| neighbour(m, ifindex)).collect()
}

/// An FDB entry with a remote (IPv4 or IPv6) on `ifindex`; `None` for any other.
pub fn fdb_entry(m: &NeighbourMessage, ifindex: u32) -> Option<FdbEntry> {
    let ours = m.header.family == AddressFamily::Bridge && m.header.ifindex == ifindex;
    ours.then(|| Some(FdbEntry { mac: lladdr(m)?, dst: destination(m)? })).flatten()
}

/// FDB entries with a remote (IPv4 or IPv6) on `ifindex`.
pub fn fdb(msgs: &[NeighbourMessage], ifindex: u32) -> Vec<FdbEntry> {
    msgs.iter().filter_map(|m| fdb_entry(m, ifindex)).collect()
}

#[cfg(test)]
mod tests {
    use super::super::msg;
    use super::*;
    use crate::Route;

    #[test]
    fn reads_back_what_msg_builds() {
        let r = Route { dst: "10.244.2.0/24".parse().unwrap(), gateway: Ipv4Addr::new(10, 244, 2, 0).into() };
        let got = routes(&[msg::route(5, &r, RouteTag::FELT)], 5, RouteTag::FELT);
        assert_eq!(
            got,
            vec![ObservedRoute {
                dst: r.dst,
                gateway: Some(r.gateway),
                on_device: true,
                onlink: true,
                ours: true
            }]
        );
        assert!(
            routes(&[msg::route(6, &r, RouteTag::FELT)], 5, RouteTag::FELT)[0].ours,
            "ours even on another device"
        );
        // Flannel's tag: proto boot, and only through the device.
        let flannel = |dev| routes(&[msg::route(dev, &r, RouteTag::FLANNEL)], 5, RouteTag::FLANNEL);
        assert!(flannel(5)[0].ours && !flannel(6).first().is_some_and(|o| o.ours), "{:?}", flannel(6));
        assert!(flannel(6).is_empty(), "someone's proto boot route elsewhere is not even seen");
        assert!(!routes(&[msg::route(5, &r, RouteTag::FELT)], 5, RouteTag::FLANNEL)[0].ours);

        let n = Neighbour { ip: r.gateway, mac: "02:00:00:00:00:02".parse().unwrap() };
        assert_eq!(neighbours(&[msg::neighbour(5, &n)], 5), vec![n]);
        assert!(neighbours(&[msg::neighbour(6, &n)], 5).is_empty());

        let f = FdbEntry { mac: n.mac, dst: Ipv4Addr::new(198, 18, 7, 12).into() };
        assert_eq!(fdb(&[msg::fdb(5, &f)], 5), vec![f]);
        // A neighbour message is not an FDB entry and vice versa.
        assert!(fdb(&[msg::neighbour(5, &n)], 5).is_empty());
        assert!(neighbours(&[msg::fdb(5, &f)], 5).is_empty());
    }

    #[test]
    fn foreign_routes_elsewhere_are_ignored() {
        let mut m = msg::route(
            9,
            &Route { dst: "10.0.0.0/8".parse().unwrap(), gateway: Ipv4Addr::new(10, 0, 0, 1).into() },
            RouteTag::FELT,
        );
        m.header.protocol = 4.into();
        assert!(routes(&[m], 5, RouteTag::FELT).is_empty());
    }

    #[test]
    fn spec_mismatch_names_the_difference() {
        let spec = VxlanSpec {
            name: "felt.1".into(),
            vni: 1,
            port: 8472,
            local: Ipv4Addr::new(198, 18, 7, 11).into(),
            underlay_index: 2,
            mtu: 1450,
            mac: "02:00:00:00:00:01".parse().unwrap(),
        };
        let facts = link_facts(&msg::vxlan_link(&spec));
        assert_eq!(spec.mismatch(&facts), None);
        let other = VxlanSpec { vni: 2, ..spec.clone() };
        assert!(other.mismatch(&facts).unwrap().contains("vni"));
        assert!(spec.mismatch(&LinkFacts { name: "felt.1".into(), ..LinkFacts::default() }).is_some());
    }
}
