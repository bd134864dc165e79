//! Netlink messages for every kernel object felt programs, built without I/O.
//!
//! Each builder names its iproute2 equivalent. The edge in [`super`] only
//! sends what these return, so the tests below pin the exact attributes the
//! kernel receives without needing root.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use felt_proto::MacAddr;
use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{RouteMessage, RouteProtocol, RouteScope, RouteType};
use rtnetlink::{AddressMessageBuilder, LinkVxlan, RouteMessageBuilder};

use crate::{FdbEntry, Neighbour, Op, Route, RouteTag};

/// Everything that defines felt's VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name, `felt.<vni>` by default.
    pub name: String,
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port.
    pub port: u16,
    /// Underlay source address (IPv4, or IPv6 on an IPv6 underlay).
    pub local: IpAddr,
    /// Underlay interface index.
    pub underlay_index: u32,
    /// Device MTU.
    pub mtu: u32,
    /// The VTEP MAC.
    pub mac: MacAddr,
}

/// `ip link add NAME address MAC mtu MTU up type vxlan id VNI dstport PORT
/// local LOCAL dev UNDERLAY nolearning`.
pub fn vxlan_link(spec: &VxlanSpec) -> LinkMessage {
    let link = LinkVxlan::new(&spec.name, spec.vni).port(spec.port);
    let link = match spec.local {
        IpAddr::V4(v4) => link.local(v4),
        IpAddr::V6(v6) => link.local6(v6),
    };
    link.dev(spec.underlay_index)
        .learning(false)
        .mtu(spec.mtu)
        .address(spec.mac.octets().to_vec())
        .up()
        .build()
}

/// `ip neigh replace IP lladdr MAC dev VXLAN nud permanent` (IPv4 or IPv6).
pub fn neighbour(ifindex: u32, n: &Neighbour) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family(n.ip);
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::Destination(match n.ip {
        IpAddr::V4(ip) => NeighbourAddress::Inet(ip),
        IpAddr::V6(ip) => NeighbourAddress::Inet6(ip),
    }));
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(n.mac.octets().to_vec()));
    m
}

/// `bridge fdb replace MAC dev VXLAN dst DST self permanent`.
pub fn fdb(ifindex: u32, f: &FdbEntry) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Permanent;
    m.header.flags = NeighbourFlags::Own;
    m.header.kind = RouteType::Unspec;
    m.attributes.push(NeighbourAttribute::LinkLayerAddress(f.mac.octets().to_vec()));
    let dst = match f.dst {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    };
    m.attributes.push(NeighbourAttribute::Destination(dst));
    m
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A route builder for `dst`'s family, with its destination set.
fn route_to(dst: IpNet) -> RouteMessageBuilder<IpAddr> {
    RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(dst.network(), dst.prefix_len())
        .expect("an IpNet's prefix length is valid for its family")
}

/// `ip route replace DST via GATEWAY dev VXLAN onlink proto 76` (or
/// `tag`'s protocol). Destination and gateway share a family, as
/// [`crate::desired`] builds every route.
pub fn route(ifindex: u32, r: &Route, tag: RouteTag) -> RouteMessage {
    route_to(r.dst)
        .gateway(r.gateway)
        .expect("a route's gateway is of its destination's family")
        .output_interface(ifindex)
        .onlink()
        .scope(RouteScope::Universe)
        .kind(RouteType::Unicast)
        .protocol(RouteProtocol::from(tag.protocol))
        .build()
}

/// `ip route del DST proto 76`: matches felt's routes only (with a
/// device-only tag, `… dev VXLAN` too).
pub fn route_del(ifindex: u32, dst: IpNet, tag: RouteTag) -> RouteMessage {
    let b = route_to(dst).protocol(RouteProtocol::from(tag.protocol)).scope(RouteScope::Universe);
    if tag.device_only { b.output_interface(ifindex).build() } else { b.build() }
}

/// `ip addr add IP/32 dev VXLAN`: the VTEP address.
pub fn vtep_address(ifindex: u32, ip: Ipv4Addr) -> AddressMessage {
    AddressMessageBuilder::<Ipv4Addr>::new().index(ifindex).address(ip, 32).build()
}

/// `ip addr add IP/128 dev VXLAN nodad`: the IPv6 VTEP address, usable at
/// once (duplicate address detection would hold it tentative for a second
/// over a device that carries no multicast).
pub fn vtep_address6(ifindex: u32, ip: Ipv6Addr) -> AddressMessage {
    let mut m = AddressMessageBuilder::<Ipv6Addr>::new().index(ifindex).address(ip, 128).build();
    m.header.flags = AddressHeaderFlags::Nodad;
    m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    m
}

/// Flags for a create-or-replace request.
pub const SET_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
/// Flags for a delete request.
pub const DEL_FLAGS: u16 = NLM_F_REQUEST | NLM_F_ACK;

/// Wraps a message with its header flags.
pub fn request(inner: RouteNetlinkMessage, flags: u16) -> NetlinkMessage<RouteNetlinkMessage> {
    let mut msg = NetlinkMessage::from(inner);
    msg.header.flags = flags;
    msg
}

/// The complete request for one plan op on device `ifindex`.
pub fn op_request(ifindex: u32, op: &Op, tag: RouteTag) -> NetlinkMessage<RouteNetlinkMessage> {
    use RouteNetlinkMessage as M;
    match op {
        Op::SetNeighbour(n) => request(M::NewNeighbour(neighbour(ifindex, n)), SET_FLAGS),
        Op::DelNeighbour(n) => request(M::DelNeighbour(neighbour(ifindex, n)), DEL_FLAGS),
        Op::SetFdb(f) => request(M::NewNeighbour(fdb(ifindex, f)), SET_FLAGS),
        Op::DelFdb(f) => request(M::DelNeighbour(fdb(ifindex, f)), DEL_FLAGS),
        Op::SetRoute(r) => request(M::NewRoute(route(ifindex, r, tag)), SET_FLAGS),
        Op::DelRoute(dst) => request(M::DelRoute(route_del(ifindex, *dst, tag)), DEL_FLAGS),
    }
}

/// The inner message of a request (for tests and logs).
pub fn inner(msg: &NetlinkMessage<RouteNetlinkMessage>) -> Option<&RouteNetlinkMessage> {
    match &msg.payload {
        NetlinkPayload::InnerMessage(m) => Some(m),
        _ => None,
    }
}

/// The IPv4 address inside a neighbour address attribute. In `AF_BRIDGE`
/// (FDB) messages the parser cannot know the family and keeps raw bytes.
pub(crate) fn neighbour_ipv4(addr: &NeighbourAddress) -> Option<Ipv4Addr> {
    match addr {
        NeighbourAddress::Inet(v4) => Some(*v4),
        NeighbourAddress::Other(raw) => <[u8; 4]>::try_from(raw.as_slice()).ok().map(Ipv4Addr::from),
        _ => None,
    }
}

/// The IPv4 or IPv6 address inside an `AF_INET`/`AF_INET6` neighbour message.
pub(crate) fn neighbour_ip(addr: &NeighbourAddress) -> Option<IpAddr> {
    match addr {
        NeighbourAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        // A bridge-family (FDB) message's remote, IPv6 on an IPv6 underlay.
        NeighbourAddress::Other(raw) if raw.len() == 16 => {
            <[u8; 16]>::try_from(raw.as_slice()).ok().map(|b| IpAddr::V6(b.into()))
        }
        other => neighbour_ipv4(other).map(IpAddr::V4),
    }
}

/// The address inside a route attribute.
pub(crate) fn route_ip(addr: &netlink_packet_route::route::RouteAddress) -> Option<IpAddr> {
    use netlink_packet_route::route::RouteAddress;
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// The IPv4 address inside a route or address attribute.
pub(crate) fn ipv4_of(addr: IpAddr) -> Option<Ipv4Addr> {
    match addr {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(_) => None,
    }
}

#[cfg(test)]
mod tests;
