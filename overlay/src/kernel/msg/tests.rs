use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags};

use super::*;
use crate::ROUTE_PROTOCOL;

const IFINDEX: u32 = 7;

fn spec() -> VxlanSpec {
    VxlanSpec {
        name: "felt.1".into(),
        vni: 1,
        port: 8472,
        local: Ipv4Addr::new(198, 18, 7, 11).into(),
        underlay_index: 2,
        mtu: 1450,
        mac: "02:aa:bb:cc:dd:ee".parse().unwrap(),
    }
}

fn round_trip(msg: &NetlinkMessage<RouteNetlinkMessage>) -> RouteNetlinkMessage {
    let mut msg = msg.clone();
    msg.finalize();
    let mut buf = vec![0u8; msg.buffer_len()];
    msg.serialize(&mut buf);
    let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
    assert_eq!(parsed.header.flags, msg.header.flags);
    match parsed.payload {
        NetlinkPayload::InnerMessage(m) => m,
        other => panic!("not an inner message: {other:?}"),
    }
}

#[test]
fn vxlan_device_matches_flannel() {
    let link = vxlan_link(&spec());
    assert!(link.header.flags.contains(LinkFlags::Up));
    assert!(link.attributes.contains(&LinkAttribute::IfName("felt.1".into())));
    assert!(link.attributes.contains(&LinkAttribute::Mtu(1450)));
    assert!(link.attributes.contains(&LinkAttribute::Address(vec![0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee])));
    let info = link
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        })
        .unwrap();
    assert!(info.contains(&LinkInfo::Kind(InfoKind::Vxlan)));
    let data = info
        .iter()
        .find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
            _ => None,
        })
        .unwrap();
    for want in [
        InfoVxlan::Id(1),
        InfoVxlan::Port(8472),
        InfoVxlan::Local(Ipv4Addr::new(198, 18, 7, 11)),
        InfoVxlan::Link(2),
        InfoVxlan::Learning(false),
    ] {
        assert!(data.contains(&want), "missing {want:?} in {data:?}");
    }
    // No group/remote: every destination comes from the FDB, as in Flannel.
    assert!(!data.iter().any(|d| matches!(d, InfoVxlan::Group(_))));
}

#[test]
fn neighbour_is_permanent_on_device() {
    let n = Neighbour { ip: Ipv4Addr::new(10, 244, 2, 0).into(), mac: "02:00:00:00:00:02".parse().unwrap() };
    let req = op_request(IFINDEX, &Op::SetNeighbour(n), RouteTag::FELT);
    assert_eq!(req.header.flags, SET_FLAGS);
    let RouteNetlinkMessage::NewNeighbour(m) = round_trip(&req) else { panic!("not a neighbour") };
    assert_eq!(m.header.family, AddressFamily::Inet);
    assert_eq!(m.header.ifindex, IFINDEX);
    assert_eq!(m.header.state, NeighbourState::Permanent);
    assert!(m.header.flags.is_empty(), "no NTF flags, as Flannel");
    assert!(
        m.attributes
            .contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet(Ipv4Addr::new(10, 244, 2, 0))))
    );
    assert!(m.attributes.contains(&NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 2])));
}

#[test]
fn ipv6_neighbour_and_route_are_inet6() {
    let vtep: std::net::Ipv6Addr = "fd00:10:244:2::".parse().unwrap();
    let n = Neighbour { ip: vtep.into(), mac: "02:00:00:00:00:02".parse().unwrap() };
    let RouteNetlinkMessage::NewNeighbour(m) =
        round_trip(&op_request(IFINDEX, &Op::SetNeighbour(n), RouteTag::FELT))
    else {
        panic!("not a neighbour")
    };
    assert_eq!((m.header.family, m.header.state), (AddressFamily::Inet6, NeighbourState::Permanent));
    assert!(m.attributes.contains(&NeighbourAttribute::Destination(NeighbourAddress::Inet6(vtep))));
    let r = Route { dst: "fd00:10:244:2::/64".parse().unwrap(), gateway: vtep.into() };
    let RouteNetlinkMessage::NewRoute(m) = round_trip(&op_request(IFINDEX, &Op::SetRoute(r), RouteTag::FELT))
    else {
        panic!("not a route")
    };
    assert_eq!(m.header.address_family, AddressFamily::Inet6);
    assert_eq!(m.header.destination_prefix_length, 64);
    assert!(m.header.flags.contains(RouteFlags::Onlink));
    assert!(m.attributes.contains(&RouteAttribute::Gateway(RouteAddress::Inet6(vtep))));
    assert!(m.attributes.contains(&RouteAttribute::Oif(IFINDEX)));
    // What observe reads back is what plan asked for.
    let seen = crate::kernel::observe::routes(&[m], IFINDEX, RouteTag::FELT);
    assert_eq!(
        seen.iter().filter_map(crate::ObservedRoute::as_felts).collect::<Vec<_>>(),
        [(r.dst, r.gateway)]
    );
    let RouteNetlinkMessage::DelRoute(m) =
        round_trip(&op_request(IFINDEX, &Op::DelRoute(r.dst), RouteTag::FELT))
    else {
        panic!("not a route")
    };
    assert_eq!(m.header.address_family, AddressFamily::Inet6);
    let a = vtep_address6(IFINDEX, vtep);
    assert_eq!((a.header.family, a.header.prefix_len), (AddressFamily::Inet6, 128));
}

#[test]
fn fdb_entry_is_self_permanent_bridge() {
    let f = FdbEntry { mac: "02:00:00:00:00:02".parse().unwrap(), dst: Ipv4Addr::new(198, 18, 7, 12).into() };
    let req = op_request(IFINDEX, &Op::SetFdb(f), RouteTag::FELT);
    let RouteNetlinkMessage::NewNeighbour(m) = round_trip(&req) else { panic!("not a neighbour") };
    assert_eq!(m.header.family, AddressFamily::Bridge);
    assert_eq!(m.header.state, NeighbourState::Permanent);
    assert_eq!(m.header.flags, NeighbourFlags::Own);
    let dst = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => neighbour_ip(d),
        _ => None,
    });
    assert_eq!(dst, Some(f.dst));
    let del = op_request(IFINDEX, &Op::DelFdb(f), RouteTag::FELT);
    assert_eq!(del.header.flags, DEL_FLAGS);
    assert!(matches!(round_trip(&del), RouteNetlinkMessage::DelNeighbour(_)));
}

#[test]
fn route_is_onlink_via_vtep_tagged_ours() {
    let r = Route { dst: "10.244.2.0/24".parse().unwrap(), gateway: Ipv4Addr::new(10, 244, 2, 0).into() };
    let req = op_request(IFINDEX, &Op::SetRoute(r), RouteTag::FELT);
    assert_eq!(req.header.flags, SET_FLAGS);
    let RouteNetlinkMessage::NewRoute(m) = round_trip(&req) else { panic!("not a route") };
    assert_eq!(m.header.destination_prefix_length, 24);
    assert!(m.header.flags.contains(RouteFlags::Onlink));
    assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL);
    assert_eq!(m.header.table, 254);
    assert_eq!(m.header.scope, RouteScope::Universe);
    assert!(
        m.attributes.contains(&RouteAttribute::Destination(RouteAddress::Inet(Ipv4Addr::new(10, 244, 2, 0))))
    );
    assert!(
        m.attributes.contains(&RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(10, 244, 2, 0))))
    );
    assert!(m.attributes.contains(&RouteAttribute::Oif(IFINDEX)));
}

#[test]
fn route_delete_only_matches_our_protocol() {
    let req = op_request(IFINDEX, &Op::DelRoute("10.244.2.0/24".parse().unwrap()), RouteTag::FELT);
    let RouteNetlinkMessage::DelRoute(m) = round_trip(&req) else { panic!("not a route") };
    assert_eq!(u8::from(m.header.protocol), ROUTE_PROTOCOL);
    assert!(!m.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(_))));
    // Flannel's routes are proto boot, like an operator's: only those on the device.
    let req = op_request(IFINDEX, &Op::DelRoute("10.244.2.0/24".parse().unwrap()), RouteTag::FLANNEL);
    let RouteNetlinkMessage::DelRoute(m) = round_trip(&req) else { panic!("not a route") };
    assert_eq!(u8::from(m.header.protocol), 3);
    assert!(m.attributes.contains(&RouteAttribute::Oif(IFINDEX)));
}

/// An IPv6 underlay: the device's source is `local6`, an FDB entry's
/// remote is 16 bytes, and both read back as the addresses they were.
#[test]
fn an_ipv6_underlay_uses_local6_and_ipv6_fdb_remotes() {
    let local: std::net::Ipv6Addr = "fd00:f31:1::11".parse().unwrap();
    let link = vxlan_link(&VxlanSpec { local: local.into(), ..spec() });
    let data: Vec<&InfoVxlan> = link
        .attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(i) => Some(i),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(data.contains(&&InfoVxlan::Local6(local)), "{data:?}");
    assert!(!data.iter().any(|d| matches!(d, InfoVxlan::Local(_))), "{data:?}");
    let f = FdbEntry { mac: "02:00:00:00:00:02".parse().unwrap(), dst: "fd00:f31:1::12".parse().unwrap() };
    let RouteNetlinkMessage::NewNeighbour(m) =
        round_trip(&op_request(IFINDEX, &Op::SetFdb(f), RouteTag::FELT))
    else {
        panic!("not a neighbour")
    };
    let dst = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(d) => neighbour_ip(d),
        _ => None,
    });
    assert_eq!(dst, Some(f.dst));
    assert_eq!(crate::kernel::observe::fdb(&[m], IFINDEX), [f], "observed as programmed");
}
