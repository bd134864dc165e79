use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use felt_proto::MacAddr;
use proptest::prelude::*;
use rstest::rstest;

use super::*;
use crate::Peer;

/// Captured from the kernel's VXLAN device in a felt lab (n1 → n2): the UDP
/// payload of an ICMP echo request from VTEP 10.244.0.0 to VTEP 10.244.1.0.
const KERNEL_N1_TO_N2: &str = "080000000000010006971310a213f6c08557ac1e08004500002465da40004001be170af400000af40100080050a145b4000266656c742d6c6162";
/// The reply, n2 → n1.
const KERNEL_N2_TO_N1: &str = "0800000000000100f6c08557ac1e06971310a213080045000024e1380000400182b90af401000af40000000058a145b4000266656c742d6c6162";

const N1_UNDERLAY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 173, 11));
const N2_UNDERLAY: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 18, 173, 12));

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn n1() -> Peer {
    Peer {
        name: "n1".into(),
        pod_cidr: Some("10.244.0.0/24".parse().unwrap()),
        pod_cidr6: None,
        vtep_mac: "f6:c0:85:57:ac:1e".parse().unwrap(),
        underlay_ip: N1_UNDERLAY,
    }
}

fn n2() -> Peer {
    Peer {
        name: "n2".into(),
        pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
        pod_cidr6: None,
        vtep_mac: "06:97:13:10:a2:13".parse().unwrap(),
        underlay_ip: N2_UNDERLAY,
    }
}

fn engine_as(me: &Peer, peers: &[Peer]) -> Engine {
    let mut e = Engine::new(EngineConfig { vni: 1, mac: me.vtep_mac, port: 8472 });
    e.set_peers(peers);
    e
}

#[test]
fn encap_matches_the_kernel_byte_for_byte() {
    for (me, peer, frame) in [(n1(), n2(), KERNEL_N1_TO_N2), (n2(), n1(), KERNEL_N2_TO_N1)] {
        let frame = hex(frame);
        let mut e = engine_as(&me, std::slice::from_ref(&peer));
        let mut out = [0u8; 2048];
        let got = e.encap(&frame[22..], &mut out);
        assert_eq!(got, Encap::Send { len: frame.len(), to: SocketAddr::new(peer.underlay_ip, 8472) });
        assert_eq!(&out[..frame.len()], &frame[..], "{} → {}", me.name, peer.name);
        assert_eq!(e.counters().tx_packets, 1);
    }
}

#[test]
fn decap_accepts_kernel_frames() {
    let frame = hex(KERNEL_N1_TO_N2);
    let mut e = engine_as(&n2(), &[n1()]);
    assert_eq!(e.decap(N1_UNDERLAY, &frame), Decap::Deliver(&frame[22..]));
    assert_eq!(e.counters().rx_packets, 1);
    assert_eq!(e.counters().rx_bytes, 36);
}

fn corrupt(f: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = hex(KERNEL_N1_TO_N2);
    f(&mut frame);
    frame
}

#[rstest]
#[case::unknown_peer(
    IpAddr::V4(Ipv4Addr::new(198, 18, 173, 99)),
    hex(KERNEL_N1_TO_N2),
    DropReason::UnknownPeer
)]
#[case::short(N1_UNDERLAY, corrupt(|f| f.truncate(30)), DropReason::ShortFrame)]
#[case::empty(N1_UNDERLAY, Vec::new(), DropReason::ShortFrame)]
#[case::no_i_flag(N1_UNDERLAY, corrupt(|f| f[0] = 0), DropReason::BadFlags)]
#[case::other_vni(N1_UNDERLAY, corrupt(|f| f[6] = 2), DropReason::BadVni)]
#[case::wrong_mac(N1_UNDERLAY, corrupt(|f| f[8] ^= 1), DropReason::WrongInnerMac)]
#[case::arp(N1_UNDERLAY, corrupt(|f| f[21] = 0x06), DropReason::BadInnerPacket)]
#[case::ipv6_version(N1_UNDERLAY, corrupt(|f| f[22] = 0x65), DropReason::BadInnerPacket)]
#[case::length_beyond_frame(N1_UNDERLAY, corrupt(|f| f[25] = 0xff), DropReason::BadInnerPacket)]
#[case::spoofed_source(N1_UNDERLAY, corrupt(|f| f[36] = 9), DropReason::SpoofedSource)]
fn decap_drops_with_a_reason(#[case] from: IpAddr, #[case] frame: Vec<u8>, #[case] why: DropReason) {
    let mut e = engine_as(&n2(), &[n1()]);
    assert_eq!(e.decap(from, &frame), Decap::Drop(why));
    assert_eq!(e.counters().dropped(why), 1);
    assert_eq!(e.counters().drops.iter().sum::<u64>(), 1, "counted once, under one reason");
}

#[test]
fn encap_drops_with_a_reason() {
    let frame = hex(KERNEL_N1_TO_N2);
    let mut e = engine_as(&n1(), &[]);
    let mut out = [0u8; 2048];
    assert_eq!(e.encap(&frame[22..], &mut out), Encap::Drop(DropReason::NoRoute));
    e.set_peers(&[n2()]);
    assert_eq!(e.encap(&frame[22..], &mut out[..40]), Encap::Drop(DropReason::TooBig));
    assert_eq!(e.encap(&frame[22..30], &mut out), Encap::Drop(DropReason::BadInnerPacket));
    assert_eq!(e.counters().drops.iter().sum::<u64>(), 3);
}

#[test]
fn longest_prefix_wins() {
    let wide = Peer { name: "wide".into(), pod_cidr: Some("10.244.0.0/16".parse().unwrap()), ..n1() };
    let narrow = Peer { underlay_ip: Ipv4Addr::new(198, 18, 173, 50).into(), ..n2() };
    let e = engine_as(&n1(), &[wide, narrow]);
    assert_eq!(e.lookup(Ipv4Addr::new(10, 244, 1, 7)).map(|p| p.name.as_str()), Some("n2"));
    assert_eq!(e.lookup(Ipv4Addr::new(10, 244, 9, 7)).map(|p| p.name.as_str()), Some("wide"));
    assert_eq!(e.lookup(Ipv4Addr::new(10, 9, 9, 9)), None);
}

/// An IPv4 packet from `src` to `dst` with `payload`.
fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let total = (20 + payload.len()) as u16;
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

/// An IPv6 packet from `src` to `dst` with `payload` (UDP, hop limit 64).
fn ipv6(src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x60, 0, 0, 0];
    p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[17, 64]);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(payload);
    p
}

fn dual(p: Peer, cidr6: &str) -> Peer {
    Peer { pod_cidr6: Some(cidr6.parse().unwrap()), ..p }
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}

/// IPv6 inner packets: encapsulated with the IPv6 ethertype to the peer
/// whose IPv6 subnet holds the destination, delivered only from the peer
/// whose IPv6 subnet holds the source.
#[test]
fn ipv6_inner_packets_cross_and_are_checked_like_ipv4_ones() {
    let (d1, d2) = (dual(n1(), "fd00:f31:244::/64"), dual(n2(), "fd00:f31:244:1::/64"));
    let mut a = engine_as(&d1, std::slice::from_ref(&d2));
    let mut b = engine_as(&d2, std::slice::from_ref(&d1));
    let packet = ipv6(v6("fd00:f31:244::2"), v6("fd00:f31:244:1::2"), b"felt-lab");
    let mut out = [0u8; 2048];
    let Encap::Send { len, to } = a.encap(&packet, &mut out) else { panic!("not sent") };
    assert_eq!(to, SocketAddr::new(N2_UNDERLAY, 8472));
    let eth = wire::EthernetRepr::parse(&out[8..len]).unwrap();
    assert_eq!((eth.dst, eth.src, eth.ethertype), (d2.vtep_mac, d1.vtep_mac, 0x86dd));
    assert_eq!(b.decap(N1_UNDERLAY, &out[..len]), Decap::Deliver(&packet[..]));

    // A source outside the sender's IPv6 subnet, or an IPv4-only sender: spoofed.
    let spoofed = ipv6(v6("fd00:f31:244:9::2"), v6("fd00:f31:244:1::2"), b"x");
    let Encap::Send { len, .. } = a.encap(&spoofed, &mut out) else { panic!("not sent") };
    assert_eq!(b.decap(N1_UNDERLAY, &out[..len]), Decap::Drop(DropReason::SpoofedSource));
    let mut v4_only = engine_as(&d2, &[n1()]);
    let Encap::Send { len, .. } = a.encap(&packet, &mut out) else { panic!("not sent") };
    assert_eq!(v4_only.decap(N1_UNDERLAY, &out[..len]), Decap::Drop(DropReason::SpoofedSource));
    // No peer's IPv6 subnet holds it; a payload length beyond the frame.
    let lost = ipv6(v6("fd00:f31:244::2"), v6("fd00:f31:244:7::2"), b"x");
    assert_eq!(a.encap(&lost, &mut out), Encap::Drop(DropReason::NoRoute));
    let mut long = packet.clone();
    long[4] = 0xff;
    assert_eq!(a.encap(&long, &mut out), Encap::Drop(DropReason::BadInnerPacket));
    assert_eq!(a.encap(&packet[..39], &mut out), Encap::Drop(DropReason::BadInnerPacket));
}

/// IPv6-only peers: IPv6 crosses; an IPv4 packet has no route out, and one
/// that arrives from such a peer is spoofed (it holds no IPv4 subnet).
#[test]
fn ipv6_only_peers_carry_ipv6_alone() {
    let only6 = |p: Peer, cidr6: &str| Peer { pod_cidr: None, ..dual(p, cidr6) };
    let (o1, o2) = (only6(n1(), "fd00:f31:244::/64"), only6(n2(), "fd00:f31:244:1::/64"));
    let mut a = engine_as(&o1, std::slice::from_ref(&o2));
    let mut b = engine_as(&o2, std::slice::from_ref(&o1));
    let packet = ipv6(v6("fd00:f31:244::2"), v6("fd00:f31:244:1::2"), b"felt-lab");
    let mut out = [0u8; 2048];
    let Encap::Send { len, to } = a.encap(&packet, &mut out) else { panic!("not sent") };
    assert_eq!(to, SocketAddr::new(N2_UNDERLAY, 8472));
    assert_eq!(b.decap(N1_UNDERLAY, &out[..len]), Decap::Deliver(&packet[..]));
    let v4 = ipv4(Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 1, 2), b"x");
    assert_eq!(a.encap(&v4, &mut out), Encap::Drop(DropReason::NoRoute));
    // An IPv4 frame from the IPv6-only peer, built by a dual-stack engine.
    let mut dual_a = engine_as(&dual(n1(), "fd00:f31:244::/64"), &[dual(n2(), "fd00:f31:244:1::/64")]);
    let Encap::Send { len, .. } = dual_a.encap(&v4, &mut out) else { panic!("not sent") };
    assert_eq!(b.decap(N1_UNDERLAY, &out[..len]), Decap::Drop(DropReason::SpoofedSource));
}

/// Peers on an IPv6 underlay: datagrams go to `[underlay]:port`, and only
/// the peer's IPv6 address is its source; an IPv4-mapped source is the IPv4
/// peer it maps.
#[test]
fn peers_on_an_ipv6_underlay_are_sent_to_and_known_by_their_ipv6_address() {
    let (u1, u2): (IpAddr, IpAddr) = ("fd00:f31:1::11".parse().unwrap(), "fd00:f31:1::12".parse().unwrap());
    let (p1, p2) = (Peer { underlay_ip: u1, ..n1() }, Peer { underlay_ip: u2, ..n2() });
    let mut a = engine_as(&p1, std::slice::from_ref(&p2));
    let mut b = engine_as(&p2, std::slice::from_ref(&p1));
    let packet = ipv4(Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 1, 2), b"felt-lab");
    let mut out = [0u8; 2048];
    let Encap::Send { len, to } = a.encap(&packet, &mut out) else { panic!("not sent") };
    assert_eq!(to, SocketAddr::new(u2, 8472));
    assert_eq!(b.decap(u1, &out[..len]), Decap::Deliver(&packet[..]));
    assert_eq!(b.decap(N1_UNDERLAY, &out[..len]), Decap::Drop(DropReason::UnknownPeer));
    let mapped: std::net::SocketAddr = "[::ffff:198.18.173.11]:8472".parse().unwrap();
    assert_eq!(super::udp::source(mapped), N1_UNDERLAY);
}

proptest! {
    #[test]
    fn decap_of_encap_is_identity_for_ipv6(
        src_host in 1u16.., dst_host in 1u16.., payload in proptest::collection::vec(any::<u8>(), 0..1400)
    ) {
        let (d1, d2) = (dual(n1(), "fd00:f31:244::/64"), dual(n2(), "fd00:f31:244:1::/64"));
        let src = Ipv6Addr::from(u128::from(v6("fd00:f31:244::")) + u128::from(src_host));
        let dst = Ipv6Addr::from(u128::from(v6("fd00:f31:244:1::")) + u128::from(dst_host));
        let packet = ipv6(src, dst, &payload);
        let mut a = engine_as(&d1, std::slice::from_ref(&d2));
        let mut b = engine_as(&d2, std::slice::from_ref(&d1));
        let mut out = [0u8; 2048];
        let Encap::Send { len, to } = a.encap(&packet, &mut out) else { panic!("not sent") };
        prop_assert_eq!(to, SocketAddr::new(N2_UNDERLAY, 8472));
        prop_assert_eq!(b.decap(N1_UNDERLAY, &out[..len]), Decap::Deliver(&packet[..]));
    }

    #[test]
    fn decap_of_encap_is_identity(
        src_host in 1u8..255, dst_host in 1u8..255, payload in proptest::collection::vec(any::<u8>(), 0..1400)
    ) {
        let packet = ipv4(Ipv4Addr::new(10, 244, 0, src_host), Ipv4Addr::new(10, 244, 1, dst_host), &payload);
        let mut a = engine_as(&n1(), &[n2()]);
        let mut b = engine_as(&n2(), &[n1()]);
        let mut out = [0u8; 2048];
        let Encap::Send { len, to } = a.encap(&packet, &mut out) else { panic!("not sent") };
        prop_assert_eq!(to, SocketAddr::new(N2_UNDERLAY, 8472));
        prop_assert_eq!(b.decap(N1_UNDERLAY, &out[..len]), Decap::Deliver(&packet[..]));
    }

    #[test]
    fn decap_never_panics_and_always_counts(bytes in proptest::collection::vec(any::<u8>(), 0..200), known in any::<bool>()) {
        let mut e = engine_as(&n2(), &[n1()]);
        let from = if known { N1_UNDERLAY } else { Ipv4Addr::new(1, 2, 3, 4).into() };
        match e.decap(from, &bytes) {
            Decap::Deliver(_) => prop_assert_eq!(e.counters().rx_packets, 1),
            Decap::Drop(r) => prop_assert_eq!(e.counters().dropped(r), 1),
        }
    }

    #[test]
    fn encap_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200), out_len in 0usize..300) {
        let mut e = engine_as(&n1(), &[n2()]);
        let mut out = vec![0u8; out_len];
        if let Encap::Send { len, .. } = e.encap(&bytes, &mut out) {
            prop_assert!(len <= out_len);
        }
    }
}

#[test]
fn mac_of_fixture_is_what_the_lab_published() {
    let frame = hex(KERNEL_N1_TO_N2);
    let eth = wire::EthernetRepr::parse(&frame[8..]).unwrap();
    assert_eq!(eth.dst, "06:97:13:10:a2:13".parse::<MacAddr>().unwrap());
    assert_eq!(eth.src, MacAddr::derive(b"n1"));
}

#[test]
fn edge_drops_have_reasons_of_their_own() {
    let mut e = Engine::new(EngineConfig { vni: 1, mac: "0a:00:00:00:00:01".parse().unwrap(), port: 8472 });
    e.count_drops(DropReason::SendFailed, 3);
    e.count_drops(DropReason::TunWriteFailed, 1);
    assert_eq!(e.counters().dropped(DropReason::SendFailed), 3);
    assert_eq!(e.counters().dropped(DropReason::TunWriteFailed), 1);
    assert_eq!(e.counters().dropped(DropReason::UnsplittableBurst), 0);
    let labels: std::collections::BTreeSet<&str> = DropReason::ALL.iter().map(|r| r.label()).collect();
    assert_eq!(labels.len(), DropReason::ALL.len(), "labels are distinct");
    assert!(
        labels.contains("send_failed")
            && labels.contains("tun_write_failed")
            && labels.contains("unsplittable_burst")
    );
}
