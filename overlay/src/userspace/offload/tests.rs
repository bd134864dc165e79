//! Offloads checked against an independent implementation: etherparse
//! builds the packets and recomputes every checksum we write.

use etherparse::{Ipv4Header, PacketBuilder, TcpHeader};
use proptest::prelude::*;

use super::*;

const SRC: [u8; 4] = [10, 244, 0, 2];
const DST: [u8; 4] = [10, 244, 1, 3];
/// NOP, NOP, timestamps: what Linux sends on every data segment.
const TS_OPTION: [u8; 12] = [1, 1, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0x56, 0x78];

fn tcp_packet(seq: u32, payload: &[u8], psh: bool, options: &[u8]) -> Vec<u8> {
    let mut b = PacketBuilder::ipv4(SRC, DST, 64).tcp(40000, 5201, seq, 501).ack(7777);
    if psh {
        b = b.psh();
    }
    let b = b.options_raw(options).unwrap();
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// Parses a packet and checks both checksums against etherparse's.
fn verified(pkt: &[u8]) -> (Ipv4Header, TcpHeader, Vec<u8>) {
    let (ip, rest) = Ipv4Header::from_slice(pkt).unwrap();
    assert_eq!(usize::from(ip.total_len), pkt.len());
    assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header checksum");
    let (tcp, payload) = TcpHeader::from_slice(rest).unwrap();
    assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(&ip, payload).unwrap(), "TCP checksum");
    (ip, tcp, payload.to_vec())
}

fn naive_sum(data: &[u8]) -> u16 {
    let mut s: u32 = 0;
    for pair in data.chunks(2) {
        s += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn rfc1071_example_sum() {
    // RFC 1071 §3: the bytes 00 01 f2 03 f4 f5 f6 f7 sum to dd f2.
    assert_eq!(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
    assert_eq!(sum(&[]), 0);
    assert_eq!(sum(&[0xab]), 0xab00);
}

proptest! {
    #[test]
    fn sum_matches_the_textbook_one(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let (ours, theirs) = (sum(&data), naive_sum(&data));
        // 0 and 0xffff are both zero in ones' complement.
        prop_assert!(ours == theirs || (ours | theirs) == 0xffff && (ours == 0 || theirs == 0), "{ours:#x} vs {theirs:#x}");
    }
}

#[test]
fn vnet_header_round_trips() {
    let h = VnetHdr {
        flags: 1,
        gso_type: GSO_TCPV4,
        hdr_len: 52,
        gso_size: 1398,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut b = [0u8; VNET_HDR_LEN];
    h.emit(&mut b);
    assert_eq!(VnetHdr::parse(&b), Some(h));
    assert_eq!(VnetHdr::parse(&b[..9]), None);
}

#[test]
fn completing_a_partial_checksum_gives_the_real_one() {
    let mut pkt = tcp_packet(1, &payload(999), true, &TS_OPTION);
    let real = pkt[36..38].to_vec();
    // What the kernel hands over with F_NEEDS_CSUM: the pseudo-header sum in the field.
    let pseudo = pseudo_v4(SRC.into(), DST.into(), 6, (pkt.len() - 20) as u16);
    pkt[36..38].copy_from_slice(&pseudo.to_be_bytes());
    complete_checksum(&mut pkt, 20, 16).unwrap();
    assert_eq!(pkt[36..38], real[..]);
    verified(&pkt);
    assert_eq!(complete_checksum(&mut pkt, 20, 2000), Err(Malformed));
}

#[test]
fn a_super_packet_becomes_valid_segments() {
    let data = payload(60_000);
    let mut sup = tcp_packet(4_000_000_000, &data, true, &TS_OPTION);
    // As the TUN hands it over: checksum partial.
    let pseudo = pseudo_v4(SRC.into(), DST.into(), 6, (sup.len() - 20) as u16);
    sup[36..38].copy_from_slice(&pseudo.to_be_bytes());
    let mut out = vec![0u8; 4 * 65536];
    let segs = segment_tcp4(&sup, 1386, 22, &mut out).unwrap();
    assert_eq!(segs.count, 60_000usize.div_ceil(1386));
    assert_eq!(segs.stride, 22 + 52 + 1386);
    let mut joined = Vec::new();
    for i in 0..segs.count {
        let start = i * segs.stride + 22;
        let end = if i + 1 == segs.count { segs.len } else { start + 52 + 1386 };
        let (ip, tcp, p) = verified(&out[start..end]);
        assert_eq!(ip.identification, u16::from_be_bytes([sup[4], sup[5]]).wrapping_add(i as u16));
        assert_eq!(tcp.sequence_number, 4_000_000_000u32.wrapping_add((i * 1386) as u32), "wraps around");
        assert_eq!(tcp.psh, i + 1 == segs.count, "PSH on the last segment only");
        assert!(tcp.ack);
        assert_eq!(tcp.options.as_slice(), &TS_OPTION[..]);
        joined.extend_from_slice(&p);
    }
    assert_eq!(joined, data);
    // Too small an output buffer, or no mss: refused, not a panic.
    assert_eq!(segment_tcp4(&sup, 1386, 22, &mut out[..1000]), Err(Malformed));
    assert_eq!(segment_tcp4(&sup, 0, 22, &mut out), Err(Malformed));
    assert_eq!(segment_tcp4(&sup[..30], 1386, 22, &mut out), Err(Malformed));
}

/// Runs packets through a coalescer; returns every write, parsed.
fn coalesce(pkts: &[Vec<u8>]) -> Vec<(VnetHdr, Vec<u8>)> {
    let mut c = Coalescer::new(64);
    let mut writes = Vec::new();
    let mut write = |b: &[u8]| writes.push((VnetHdr::parse(b).unwrap(), b[VNET_HDR_LEN..].to_vec()));
    for p in pkts {
        c.push(p, &mut write);
    }
    c.flush(&mut write);
    writes
}

/// What the kernel does with a coalesced write: finish the partial checksum.
fn as_the_kernel_sees_it(h: &VnetHdr, mut pkt: Vec<u8>) -> Vec<u8> {
    if h.flags & F_NEEDS_CSUM != 0 {
        complete_checksum(&mut pkt, h.csum_start, h.csum_offset).unwrap();
    }
    pkt
}

#[test]
fn in_order_segments_become_one_write() {
    let data = payload(10 * 1386 + 100);
    let pkts: Vec<Vec<u8>> = data
        .chunks(1386)
        .enumerate()
        .map(|(i, c)| tcp_packet(1000 + (i * 1386) as u32, c, i == 10, &TS_OPTION))
        .collect();
    let writes = coalesce(&pkts);
    assert_eq!(writes.len(), 1);
    let (h, pkt) = writes[0].clone();
    assert_eq!(
        h,
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 52,
            gso_size: 1386,
            csum_start: 20,
            csum_offset: 16
        }
    );
    let (_, tcp, p) = verified(&as_the_kernel_sees_it(&h, pkt));
    assert_eq!(p, data);
    assert_eq!(tcp.sequence_number, 1000);
    assert!(tcp.psh, "the last segment's PSH is kept");
}

#[test]
fn anything_else_is_written_alone_and_unchanged() {
    let a = tcp_packet(1000, &payload(1386), false, &TS_OPTION);
    let gap = tcp_packet(1000 + 2 * 1386, &payload(1386), false, &TS_OPTION);
    let single = coalesce(std::slice::from_ref(&a));
    assert_eq!(single, vec![(VnetHdr::default(), a.clone())], "one segment: no GSO, bytes as received");

    assert_eq!(coalesce(&[a.clone(), gap.clone()]).len(), 2, "a hole in the sequence");

    let mut other_flow = tcp_packet(1000 + 1386, &payload(1386), false, &TS_OPTION);
    other_flow[22] ^= 1; // another source port
    assert_eq!(coalesce(&[a.clone(), other_flow]).len(), 2);

    let pushed = tcp_packet(1000, &payload(1386), true, &TS_OPTION);
    let next = tcp_packet(1000 + 1386, &payload(1386), false, &TS_OPTION);
    assert_eq!(coalesce(&[pushed, next.clone()]).len(), 2, "PSH ends a run");

    let short = tcp_packet(1000, &payload(500), false, &TS_OPTION);
    let after = tcp_packet(1500, &payload(500), false, &TS_OPTION);
    assert_eq!(coalesce(&[short, after]).len(), 1, "a short segment may follow a short first");

    let bigger = tcp_packet(1000 + 1386, &payload(1400), false, &TS_OPTION);
    assert_eq!(coalesce(&[a.clone(), bigger]).len(), 2, "a segment bigger than the first");

    let mut syn = tcp_packet(1000 + 1386, &[], false, &[]);
    syn[33] |= 0x02;
    let icmp =
        vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 10, 244, 0, 2, 10, 244, 1, 3, 8, 0, 0, 0, 0, 0, 0, 0];
    let writes = coalesce(&[a.clone(), icmp.clone(), syn.clone(), next]);
    assert_eq!(writes.len(), 4);
    assert_eq!(writes[1], (VnetHdr::default(), icmp));
    assert_eq!(writes[2], (VnetHdr::default(), syn));
}

#[test]
fn runs_stop_at_the_segment_cap_and_the_ipv4_limit() {
    let pkts: Vec<Vec<u8>> =
        (0..100).map(|i| tcp_packet(1 + (i * 1000) as u32, &payload(1000), false, &TS_OPTION)).collect();
    let writes = coalesce(&pkts);
    // 64 KiB of IPv4 holds 65 segments of 1000 + headers; the cap of 64 comes first.
    assert_eq!(writes.iter().map(|(h, _)| h.gso_type).collect::<Vec<_>>(), vec![GSO_TCPV4, GSO_TCPV4]);
    let mut joined = Vec::new();
    for (h, p) in writes {
        assert!(p.len() <= MAX_IPV4);
        joined.extend(verified(&as_the_kernel_sees_it(&h, p)).2);
    }
    assert_eq!(joined.len(), 100 * 1000);
}

proptest! {
    #[test]
    fn segmenting_then_coalescing_gives_the_super_packet_back(
        len in 1usize..60_000,
        mss in 200usize..1500,
        seq in any::<u32>(),
        with_ts in any::<bool>(),
    ) {
        let options: &[u8] = if with_ts { &TS_OPTION } else { &[] };
        let data = payload(len);
        let sup = tcp_packet(seq, &data, true, options);
        let mut out = vec![0u8; 4 * 65536];
        let segs = segment_tcp4(&sup, mss, 0, &mut out).unwrap();
        let pkts: Vec<Vec<u8>> = (0..segs.count)
            .map(|i| {
                let start = i * segs.stride;
                let end = if i + 1 == segs.count { segs.len } else { start + segs.stride };
                out[start..end].to_vec()
            })
            .collect();
        for p in &pkts {
            verified(p);
        }
        let writes = coalesce(&pkts);
        // At most 64 segments per write.
        prop_assert_eq!(writes.len(), segs.count.div_ceil(64));
        let mut joined = Vec::new();
        let mut next_seq = seq;
        for (i, (h, back)) in writes.iter().enumerate() {
            let (ip, tcp, p) = verified(&as_the_kernel_sees_it(h, back.clone()));
            prop_assert_eq!(tcp.sequence_number, next_seq);
            prop_assert_eq!(tcp.psh, i + 1 == writes.len());
            prop_assert_eq!(usize::from(ip.total_len), back.len());
            if h.gso_type == GSO_TCPV4 {
                prop_assert_eq!(usize::from(h.gso_size), mss);
            }
            next_seq = next_seq.wrapping_add(p.len() as u32);
            joined.extend(p);
        }
        prop_assert_eq!(joined, data);
    }
}

const SRC6: [u8; 16] = [0xfd, 0, 0x0f, 0x31, 2, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const DST6: [u8; 16] = [0xfd, 0, 0x0f, 0x31, 2, 0x44, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3];

fn tcp6_packet(seq: u32, payload: &[u8], options: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv6(SRC6, DST6, 64).tcp(40000, 5201, seq, 501).ack(7777).psh();
    let b = b.options_raw(options).unwrap();
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// An IPv6 TSO super-packet, checked against etherparse: every segment's
/// payload length, sequence number, flags and TCP checksum (over the IPv6
/// pseudo-header), and the payload back whole.
#[test]
fn an_ipv6_super_packet_becomes_valid_segments() {
    let data = payload(60_000);
    let mut sup = tcp6_packet(4_000_000_000, &data, &TS_OPTION);
    // As the TUN hands it over: checksum partial.
    let pseudo = pseudo_v6(SRC6.into(), DST6.into(), 6, (sup.len() - 40) as u32);
    sup[56..58].copy_from_slice(&pseudo.to_be_bytes());
    let mut out = vec![0u8; 4 * 65536];
    let segs = segment_tcp6(&sup, 1366, 22, &mut out).unwrap();
    assert_eq!(segs.count, 60_000usize.div_ceil(1366));
    assert_eq!(segs.stride, 22 + 72 + 1366);
    let mut joined = Vec::new();
    for i in 0..segs.count {
        let start = i * segs.stride + 22;
        let end = if i + 1 == segs.count { segs.len } else { start + 72 + 1366 };
        let seg = &out[start..end];
        let (ip, rest) = etherparse::Ipv6Header::from_slice(seg).unwrap();
        assert_eq!(usize::from(ip.payload_length), seg.len() - 40);
        let (tcp, p) = TcpHeader::from_slice(rest).unwrap();
        assert_eq!(tcp.checksum, tcp.calc_checksum_ipv6(&ip, p).unwrap(), "TCP checksum, segment {i}");
        assert_eq!(tcp.sequence_number, 4_000_000_000u32.wrapping_add((i * 1366) as u32), "wraps around");
        assert_eq!(tcp.psh, i + 1 == segs.count, "PSH on the last segment only");
        assert_eq!(tcp.options.as_slice(), &TS_OPTION[..]);
        joined.extend_from_slice(p);
    }
    assert_eq!(joined, data);
    assert_eq!(segment_tcp6(&sup, 1366, 22, &mut out[..1000]), Err(Malformed));
    assert_eq!(segment_tcp6(&sup, 0, 22, &mut out), Err(Malformed));
    assert_eq!(segment_tcp6(&sup[..50], 1366, 22, &mut out), Err(Malformed));
    let mut ext = sup.clone();
    ext[6] = 0; // a hop-by-hop header first: refused, not misread
    assert_eq!(segment_tcp6(&ext, 1366, 22, &mut out), Err(Malformed));
    let v4 = tcp_packet(1, &data[..3000], true, &[]);
    assert_eq!(segment_tcp6(&v4, 1366, 22, &mut out), Err(Malformed));
}

proptest! {
    #[test]
    fn ipv6_segments_carry_the_payload_with_valid_checksums(
        len in 0usize..20_000,
        mss in 200usize..1500,
        seq in any::<u32>(),
    ) {
        let data = payload(len);
        let sup = tcp6_packet(seq, &data, &TS_OPTION);
        let mut out = vec![0u8; 4 * 65536];
        let segs = segment_tcp6(&sup, mss, 0, &mut out).unwrap();
        let mut joined = Vec::new();
        for i in 0..segs.count {
            let start = i * segs.stride;
            let end = if i + 1 == segs.count { segs.len } else { start + segs.stride };
            let (ip, rest) = etherparse::Ipv6Header::from_slice(&out[start..end]).unwrap();
            let (tcp, p) = TcpHeader::from_slice(rest).unwrap();
            prop_assert_eq!(tcp.checksum, tcp.calc_checksum_ipv6(&ip, p).unwrap());
            prop_assert!(p.len() <= mss);
            joined.extend_from_slice(p);
        }
        prop_assert_eq!(joined, data);
    }

    #[test]
    fn segment_tcp6_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300), mss in 0usize..200) {
        let mut out = vec![0u8; 4096];
        if let Ok(segs) = segment_tcp6(&bytes, mss, 0, &mut out) {
            prop_assert!(segs.len <= out.len());
        }
    }
}

/// Parses an IPv6 packet and checks its length and TCP checksum.
fn verified6(pkt: &[u8]) -> (etherparse::Ipv6Header, TcpHeader, Vec<u8>) {
    let (ip, rest) = etherparse::Ipv6Header::from_slice(pkt).unwrap();
    assert_eq!(usize::from(ip.payload_length) + 40, pkt.len());
    let (tcp, p) = TcpHeader::from_slice(rest).unwrap();
    assert_eq!(tcp.checksum, tcp.calc_checksum_ipv6(&ip, p).unwrap(), "TCP checksum");
    (ip, tcp, p.to_vec())
}

#[test]
fn in_order_ipv6_segments_become_one_write_and_families_never_mix() {
    let data = payload(10 * 1366 + 100);
    let seg = |i: usize, c: &[u8]| {
        let mut p = tcp6_packet(1000 + (i * 1366) as u32, c, &TS_OPTION);
        if i != 10 {
            p[53] &= !0x08; // PSH on the last only
            let (ip, rest) = etherparse::Ipv6Header::from_slice(&p).unwrap();
            let (mut tcp, body) = TcpHeader::from_slice(rest).unwrap();
            tcp.psh = false;
            tcp.checksum = tcp.calc_checksum_ipv6(&ip, body).unwrap();
            p[56..58].copy_from_slice(&tcp.checksum.to_be_bytes());
        }
        p
    };
    let pkts: Vec<Vec<u8>> = data.chunks(1366).enumerate().map(|(i, c)| seg(i, c)).collect();
    let writes = coalesce(&pkts);
    assert_eq!(writes.len(), 1);
    let (h, pkt) = writes[0].clone();
    assert_eq!(
        h,
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV6,
            hdr_len: 72,
            gso_size: 1366,
            csum_start: 40,
            csum_offset: 16
        }
    );
    let (_, tcp, p) = verified6(&as_the_kernel_sees_it(&h, pkt));
    assert_eq!(p, data);
    assert_eq!(tcp.sequence_number, 1000);
    assert!(tcp.psh);
    // An IPv4 segment between two IPv6 ones of the same sequence breaks the run.
    let v4 = tcp_packet(1000 + 1366, &payload(1366), false, &TS_OPTION);
    assert_eq!(coalesce(&[pkts[0].clone(), v4, pkts[1].clone()]).len(), 3);
    // Another flow label is another flow.
    let mut labelled = pkts[1].clone();
    labelled[3] ^= 1;
    assert_eq!(coalesce(&[pkts[0].clone(), labelled]).len(), 2);
}

proptest! {
    #[test]
    fn ipv6_segmenting_then_coalescing_gives_the_super_packet_back(
        len in 1usize..60_000,
        mss in 200usize..1500,
        seq in any::<u32>(),
    ) {
        let data = payload(len);
        let sup = tcp6_packet(seq, &data, &TS_OPTION);
        let mut out = vec![0u8; 4 * 65536];
        let segs = segment_tcp6(&sup, mss, 0, &mut out).unwrap();
        let pkts: Vec<Vec<u8>> = (0..segs.count)
            .map(|i| {
                let start = i * segs.stride;
                let end = if i + 1 == segs.count { segs.len } else { start + segs.stride };
                out[start..end].to_vec()
            })
            .collect();
        let writes = coalesce(&pkts);
        prop_assert_eq!(writes.len(), segs.count.div_ceil(64));
        let mut joined = Vec::new();
        let mut next_seq = seq;
        for (i, (h, back)) in writes.iter().enumerate() {
            let (_, tcp, p) = verified6(&as_the_kernel_sees_it(h, back.clone()));
            prop_assert_eq!(tcp.sequence_number, next_seq);
            prop_assert_eq!(tcp.psh, i + 1 == writes.len());
            if h.gso_type == GSO_TCPV6 {
                prop_assert_eq!(usize::from(h.gso_size), mss);
            }
            next_seq = next_seq.wrapping_add(p.len() as u32);
            joined.extend(p);
        }
        prop_assert_eq!(joined, data);
    }
}
