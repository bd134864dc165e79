//! The encap/decap core and its peer table.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use felt_proto::MacAddr;
use ipnet::{Ipv4Net, Ipv6Net};

use super::offload::{self, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4, GSO_TCPV6, VnetHdr};
use super::wire::{
    ETHERNET_LEN, ETHERTYPE_IPV4, ETHERTYPE_IPV6, EthernetRepr, FLAG_I, VXLAN_LEN, VxlanPacket, VxlanRepr,
};
use crate::Peer;

/// Bytes in front of the inner IP packet: VXLAN header and inner Ethernet.
pub const HEADROOM: usize = VXLAN_LEN + ETHERNET_LEN;

/// Why a packet was dropped. Every drop is counted under one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A datagram from an underlay address that is no peer's.
    UnknownPeer,
    /// Another VNI.
    BadVni,
    /// The I flag is not set.
    BadFlags,
    /// Too short for VXLAN + Ethernet + IPv4 headers.
    ShortFrame,
    /// The inner destination MAC is not ours.
    WrongInnerMac,
    /// The inner frame is not a well-formed IPv4 or IPv6 packet.
    BadInnerPacket,
    /// The inner source address is outside the sending peer's pod CIDR of
    /// its family.
    SpoofedSource,
    /// No peer's pod CIDR holds the destination.
    NoRoute,
    /// The encapsulated frame does not fit the output buffer.
    TooBig,
    /// The edge: the underlay refused to send a datagram (no route, buffer full).
    SendFailed,
    /// The edge: a write to the TUN device failed (queue full, device down);
    /// counted per write, which may carry several coalesced segments.
    TunWriteFailed,
    /// The edge: a GRO burst arrived without its segment size, so it could
    /// not be split into datagrams.
    UnsplittableBurst,
}

impl DropReason {
    /// Every reason, in counter order.
    pub const ALL: [DropReason; 12] = [
        DropReason::UnknownPeer,
        DropReason::BadVni,
        DropReason::BadFlags,
        DropReason::ShortFrame,
        DropReason::WrongInnerMac,
        DropReason::BadInnerPacket,
        DropReason::SpoofedSource,
        DropReason::NoRoute,
        DropReason::TooBig,
        DropReason::SendFailed,
        DropReason::TunWriteFailed,
        DropReason::UnsplittableBurst,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::BadVni => "bad_vni",
            DropReason::BadFlags => "bad_flags",
            DropReason::ShortFrame => "short_frame",
            DropReason::WrongInnerMac => "wrong_inner_mac",
            DropReason::BadInnerPacket => "bad_inner_packet",
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::NoRoute => "no_route",
            DropReason::TooBig => "too_big",
            DropReason::SendFailed => "send_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::UnsplittableBurst => "unsplittable_burst",
        }
    }

    fn index(self) -> usize {
        Self::ALL.iter().position(|r| *r == self).expect("every reason is in ALL")
    }
}

/// Packets, bytes and drops, each way.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames encapsulated for the underlay.
    pub tx_packets: u64,
    /// Bytes of those frames (VXLAN payloads).
    pub tx_bytes: u64,
    /// Packets decapsulated for the TUN.
    pub rx_packets: u64,
    /// Bytes of those packets.
    pub rx_bytes: u64,
    /// Drops, indexed like [`DropReason::ALL`].
    pub drops: [u64; DropReason::ALL.len()],
    /// TSO super-packets from the TUN cut into segments (each segment is
    /// also counted in `tx_packets`).
    pub tx_super_packets: u64,
    /// TUN writes that carried several coalesced segments (set by the edge).
    pub rx_coalesced: u64,
}

impl Counters {
    /// Drops for one reason.
    pub fn dropped(&self, r: DropReason) -> u64 {
        self.drops[r.index()]
    }
}

/// The engine's own identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// VNI.
    pub vni: u32,
    /// Our VTEP MAC.
    pub mac: MacAddr,
    /// The peers' UDP port.
    pub port: u16,
}

/// What to do with a packet from the TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Send `out[..len]` as one UDP datagram to `to`.
    Send {
        /// Bytes written to the output buffer.
        len: usize,
        /// The peer's underlay address and port.
        to: SocketAddr,
    },
    /// Drop it.
    Drop(DropReason),
}

/// What to do with a packet from a vnet-header TUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncapMany {
    /// Send `out[..len]` to `to` as `count` UDP datagrams of `stride` bytes
    /// (the last may be shorter): one UDP GSO send, or one send each.
    Send {
        /// Bytes written to the output buffer.
        len: usize,
        /// Bytes per datagram.
        stride: usize,
        /// Datagrams.
        count: usize,
        /// The peer's underlay address and port.
        to: SocketAddr,
    },
    /// Drop it.
    Drop(DropReason),
}

/// What to do with a datagram from the underlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decap<'a> {
    /// Write this inner IPv4 or IPv6 packet to the TUN.
    Deliver(&'a [u8]),
    /// Drop it.
    Drop(DropReason),
}

#[derive(Debug, Clone)]
struct Route {
    peer: usize,
}

/// The VXLAN engine of one node.
#[derive(Debug, Clone)]
pub struct Engine {
    cfg: EngineConfig,
    peers: Vec<Peer>,
    /// Longest-prefix match: one exact-match table per prefix length, longest first.
    by_prefix: Vec<(u8, HashMap<u32, Route>)>,
    /// The same for peers' IPv6 pod CIDRs.
    by_prefix6: Vec<(u8, HashMap<u128, Route>)>,
    by_underlay: HashMap<IpAddr, usize>,
    counters: Counters,
}

/// The destination of an IPv4 packet, if it is well formed enough to route.
fn ipv4_dst(ip: &[u8]) -> Option<Ipv4Addr> {
    valid_ipv4_len(ip).map(|_| Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]))
}

/// The destination of an IPv4 or IPv6 packet and its inner ethertype, if
/// it is well formed enough to route.
fn inner_dst(ip: &[u8]) -> Option<(IpAddr, u16)> {
    match ip.first()? >> 4 {
        4 => ipv4_dst(ip).map(|d| (IpAddr::V4(d), ETHERTYPE_IPV4)),
        6 => valid_ipv6_len(ip).map(|_| (IpAddr::V6(ipv6_at(ip, 24)), ETHERTYPE_IPV6)),
        _ => None,
    }
}

/// The total length of a well-formed IPv6 packet at the start of `ip`
/// (fixed header + payload length; a jumbogram's zero is just that).
fn valid_ipv6_len(ip: &[u8]) -> Option<usize> {
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return None;
    }
    let total = 40 + usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    (total <= ip.len()).then_some(total)
}

/// The IPv6 address at `ip[at..at + 16]` (the caller checked the length).
fn ipv6_at(ip: &[u8], at: usize) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&ip[at..at + 16]).expect("16 bytes"))
}

/// The total length of a well-formed IPv4 packet at the start of `ip`.
fn valid_ipv4_len(ip: &[u8]) -> Option<usize> {
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    (ihl >= 20 && total >= ihl && total <= ip.len()).then_some(total)
}

impl Engine {
    /// An engine with no peers.
    pub fn new(cfg: EngineConfig) -> Self {
        Engine {
            cfg,
            peers: Vec::new(),
            by_prefix: Vec::new(),
            by_prefix6: Vec::new(),
            by_underlay: HashMap::new(),
            counters: Counters::default(),
        }
    }

    /// Replaces the peer table.
    pub fn set_peers(&mut self, peers: &[Peer]) {
        self.peers = peers.to_vec();
        let mut tables: HashMap<u8, HashMap<u32, Route>> = HashMap::new();
        for (i, c) in self.peers.iter().enumerate().filter_map(|(i, p)| Some((i, p.pod_cidr?))) {
            tables.entry(c.prefix_len()).or_default().insert(u32::from(c.network()), Route { peer: i });
        }
        self.by_prefix = tables.into_iter().collect();
        self.by_prefix.sort_by_key(|t| std::cmp::Reverse(t.0));
        let mut tables6: HashMap<u8, HashMap<u128, Route>> = HashMap::new();
        for (i, c) in self.peers.iter().enumerate().filter_map(|(i, p)| Some((i, p.pod_cidr6?))) {
            tables6.entry(c.prefix_len()).or_default().insert(u128::from(c.network()), Route { peer: i });
        }
        self.by_prefix6 = tables6.into_iter().collect();
        self.by_prefix6.sort_by_key(|t| std::cmp::Reverse(t.0));
        self.by_underlay = self.peers.iter().enumerate().map(|(i, p)| (p.underlay_ip, i)).collect();
    }

    /// The peers.
    pub fn peers(&self) -> &[Peer] {
        &self.peers
    }

    /// The counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The peer whose pod CIDR holds `dst` (longest prefix wins).
    pub fn lookup(&self, dst: Ipv4Addr) -> Option<&Peer> {
        let d = u32::from(dst);
        self.by_prefix.iter().find_map(|(len, table)| {
            let net = Ipv4Net::new(dst, *len).map(|n| u32::from(n.network())).unwrap_or(d);
            table.get(&net).map(|r| &self.peers[r.peer])
        })
    }

    /// The peer whose IPv6 pod CIDR holds `dst` (longest prefix wins).
    pub fn lookup6(&self, dst: Ipv6Addr) -> Option<&Peer> {
        self.by_prefix6.iter().find_map(|(len, table)| {
            let net = Ipv6Net::new(dst, *len).map(|n| u128::from(n.network())).unwrap_or(u128::from(dst));
            table.get(&net).map(|r| &self.peers[r.peer])
        })
    }

    fn drop(&mut self, r: DropReason) -> DropReason {
        self.counters.drops[r.index()] += 1;
        r
    }

    /// Counts `n` drops the edge saw (a failed send or write), so every
    /// packet lost in the userspace path has a reason.
    pub fn count_drops(&mut self, r: DropReason, n: u64) {
        self.counters.drops[r.index()] += n;
    }

    /// Encapsulates an IPv4 or IPv6 packet read from the TUN into `out`.
    pub fn encap(&mut self, ip: &[u8], out: &mut [u8]) -> Encap {
        let Some((dst, ethertype)) = inner_dst(ip) else {
            return Encap::Drop(self.drop(DropReason::BadInnerPacket));
        };
        let peer = match dst {
            IpAddr::V4(d) => self.lookup(d),
            IpAddr::V6(d) => self.lookup6(d),
        };
        let Some(peer) = peer else { return Encap::Drop(self.drop(DropReason::NoRoute)) };
        let (peer_mac, to) = (peer.vtep_mac, SocketAddr::new(peer.underlay_ip, self.cfg.port));
        let len = HEADROOM + ip.len();
        if out.len() < len {
            return Encap::Drop(self.drop(DropReason::TooBig));
        }
        VxlanRepr { vni: self.cfg.vni }.emit(&mut out[..VXLAN_LEN]);
        EthernetRepr { dst: peer_mac, src: self.cfg.mac, ethertype }.emit(&mut out[VXLAN_LEN..HEADROOM]);
        out[HEADROOM..len].copy_from_slice(ip);
        self.counters.tx_packets += 1;
        self.counters.tx_bytes += len as u64;
        Encap::Send { len, to }
    }

    /// Encapsulates a packet read from a vnet-header TUN: a TSO super-packet
    /// is cut into MSS-sized segments, each its own VXLAN frame, laid out
    /// back to back in `out`; a checksum the kernel left to us is filled in.
    pub fn encap_offloaded(&mut self, hdr: VnetHdr, ip: &mut [u8], out: &mut [u8]) -> EncapMany {
        match hdr.gso_type & !GSO_ECN {
            GSO_NONE => {
                if hdr.flags & F_NEEDS_CSUM != 0
                    && offload::complete_checksum(ip, hdr.csum_start, hdr.csum_offset).is_err()
                {
                    return EncapMany::Drop(self.drop(DropReason::BadInnerPacket));
                }
                match self.encap(ip, out) {
                    Encap::Send { len, to } => EncapMany::Send { len, stride: len, count: 1, to },
                    Encap::Drop(r) => EncapMany::Drop(r),
                }
            }
            gso @ (GSO_TCPV4 | GSO_TCPV6) => {
                let peer = match (inner_dst(ip), gso) {
                    (Some((IpAddr::V4(d), _)), GSO_TCPV4) => self.lookup(d),
                    (Some((IpAddr::V6(d), _)), GSO_TCPV6) => self.lookup6(d),
                    _ => return EncapMany::Drop(self.drop(DropReason::BadInnerPacket)),
                };
                let Some(peer) = peer else {
                    return EncapMany::Drop(self.drop(DropReason::NoRoute));
                };
                let (peer_mac, to) = (peer.vtep_mac, SocketAddr::new(peer.underlay_ip, self.cfg.port));
                let (segmented, ethertype) = if gso == GSO_TCPV4 {
                    (offload::segment_tcp4(ip, usize::from(hdr.gso_size), HEADROOM, out), ETHERTYPE_IPV4)
                } else {
                    (offload::segment_tcp6(ip, usize::from(hdr.gso_size), HEADROOM, out), ETHERTYPE_IPV6)
                };
                let Ok(segs) = segmented else {
                    return EncapMany::Drop(self.drop(DropReason::BadInnerPacket));
                };
                let vxlan = VxlanRepr { vni: self.cfg.vni };
                let eth = EthernetRepr { dst: peer_mac, src: self.cfg.mac, ethertype };
                for i in 0..segs.count {
                    let at = i * segs.stride;
                    vxlan.emit(&mut out[at..at + VXLAN_LEN]);
                    eth.emit(&mut out[at + VXLAN_LEN..at + HEADROOM]);
                }
                self.counters.tx_super_packets += 1;
                self.counters.tx_packets += segs.count as u64;
                self.counters.tx_bytes += segs.len as u64;
                EncapMany::Send { len: segs.len, stride: segs.stride, count: segs.count, to }
            }
            // Never asked for (TUNSETOFFLOAD sets CSUM, TSO4 and TSO6 only).
            _ => EncapMany::Drop(self.drop(DropReason::BadInnerPacket)),
        }
    }

    /// Checks a datagram from `from` (its underlay source) and returns the
    /// inner packet to deliver, or why not.
    pub fn decap<'a>(&mut self, from: IpAddr, datagram: &'a [u8]) -> Decap<'a> {
        let Some(&peer) = self.by_underlay.get(&from) else {
            return Decap::Drop(self.drop(DropReason::UnknownPeer));
        };
        if datagram.len() < HEADROOM + 20 {
            return Decap::Drop(self.drop(DropReason::ShortFrame));
        }
        let vxlan = VxlanPacket::new_checked(datagram).expect("length checked above");
        if vxlan.flags() & FLAG_I == 0 {
            return Decap::Drop(self.drop(DropReason::BadFlags));
        }
        if vxlan.vni() != self.cfg.vni {
            return Decap::Drop(self.drop(DropReason::BadVni));
        }
        let eth = EthernetRepr::parse(vxlan.payload()).expect("length checked above");
        if eth.dst != self.cfg.mac {
            return Decap::Drop(self.drop(DropReason::WrongInnerMac));
        }
        let ip = &datagram[HEADROOM..];
        let p = &self.peers[peer];
        let (total, from_peer) = match eth.ethertype {
            ETHERTYPE_IPV4 => match valid_ipv4_len(ip) {
                Some(total) => (
                    total,
                    p.pod_cidr.is_some_and(|c| c.contains(&Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]))),
                ),
                None => return Decap::Drop(self.drop(DropReason::BadInnerPacket)),
            },
            ETHERTYPE_IPV6 => match valid_ipv6_len(ip) {
                Some(total) => (total, p.pod_cidr6.is_some_and(|c| c.contains(&ipv6_at(ip, 8)))),
                None => return Decap::Drop(self.drop(DropReason::BadInnerPacket)),
            },
            _ => return Decap::Drop(self.drop(DropReason::BadInnerPacket)),
        };
        if !from_peer {
            return Decap::Drop(self.drop(DropReason::SpoofedSource));
        }
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += total as u64;
        Decap::Deliver(&ip[..total])
    }
}
