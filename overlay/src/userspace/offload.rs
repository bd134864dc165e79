//! Offloads in software, sans-IO: the `virtio_net_hdr` a vnet-header TUN
//! puts in front of every packet, Internet checksums (RFC 1071), TCP
//! segmentation of the TSO super-packets the TUN hands over, and the
//! reverse — coalescing consecutive TCP segments from the wire into one
//! super-packet for a single TUN write.
//!
//! Why: a plain TUN moves one MTU-sized packet per syscall each way. With
//! `IFF_VNET_HDR` + `TUNSETOFFLOAD(CSUM|TSO4|TSO6)` one read returns up to
//! 64 KiB of one TCP flow; cut into segments here, they leave in one UDP GSO
//! send and arrive in one UDP GRO receive, and one write hands them back
//! (IPv6 without extension headers, as the kernel's TSO6 makes them).

use std::net::{Ipv4Addr, Ipv6Addr};

/// Bytes of the plain `virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = 10;
/// `flags`: the checksum from `csum_start` to the end is still to be filled
/// in at `csum_start + csum_offset` (the field holds the pseudo-header sum).
pub const F_NEEDS_CSUM: u8 = 1;
/// `gso_type`: not a super-packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: a TCP/IPv4 super-packet of `gso_size`-byte segments.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: a TCP/IPv6 super-packet of `gso_size`-byte segments.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` bit: the segments carry ECN (CWR on the first only).
pub const GSO_ECN: u8 = 0x80;
/// The largest IPv4 packet.
pub const MAX_IPV4: usize = 65535;

const PROTO_TCP: u8 = 6;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;
const TCP_ECE: u8 = 0x40;
const TCP_CWR: u8 = 0x80;

/// `struct virtio_net_hdr` (legacy layout, host byte order).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `F_*` bits.
    pub flags: u8,
    /// `GSO_*`.
    pub gso_type: u8,
    /// Bytes of headers (IP + TCP) in a super-packet.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where the checksummed region starts.
    pub csum_start: u16,
    /// Where in it the checksum goes.
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Reads a header from the first [`VNET_HDR_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    /// Writes the header into the first [`VNET_HDR_LEN`] bytes of `b`.
    pub fn emit(&self, b: &mut [u8]) {
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }
}

/// The ones'-complement sum of `data` as big-endian 16-bit words (an odd
/// last byte padded with zero), folded to 16 bits, not complemented.
pub fn sum(data: &[u8]) -> u16 {
    // Summing native 64-bit words is the same sum modulo 2^16-1, with the
    // bytes of each 16-bit word swapped on little-endian hosts (RFC 1071 §2).
    let mut acc: u64 = 0;
    let mut carries: u64 = 0;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let (s, c) = acc.overflowing_add(u64::from_ne_bytes(w.try_into().expect("8 bytes")));
        acc = s;
        carries += u64::from(c);
    }
    let rest = words.remainder();
    let mut tail = [0u8; 8];
    tail[..rest.len()].copy_from_slice(rest);
    let (s, c) = acc.overflowing_add(u64::from_ne_bytes(tail));
    acc = s;
    carries += u64::from(c);
    let (s, c) = acc.overflowing_add(carries);
    let mut x = u128::from(s) + u128::from(c);
    while x > 0xffff {
        x = (x & 0xffff) + (x >> 16);
    }
    u16::from_be(x as u16)
}

/// Ones'-complement addition of two folded sums.
pub fn add(a: u16, b: u16) -> u16 {
    let s = u32::from(a) + u32::from(b);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// The TCP/UDP pseudo-header sum for IPv4.
pub fn pseudo_v4(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: u16) -> u16 {
    let (s, d) = (src.octets(), dst.octets());
    let words = [
        u16::from_be_bytes([s[0], s[1]]),
        u16::from_be_bytes([s[2], s[3]]),
        u16::from_be_bytes([d[0], d[1]]),
        u16::from_be_bytes([d[2], d[3]]),
        u16::from(proto),
        len,
    ];
    words.into_iter().fold(0, add)
}

/// The TCP/UDP pseudo-header sum for IPv6 (RFC 8200 §8.1), upper-layer
/// length `len`.
pub fn pseudo_v6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: u32) -> u16 {
    let mut acc = add(sum(&src.octets()), sum(&dst.octets()));
    acc = add(acc, (len >> 16) as u16);
    acc = add(acc, len as u16);
    add(acc, u16::from(proto))
}

/// Why a packet from the TUN could not be completed or segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Fills in a checksum the kernel left to us (`F_NEEDS_CSUM`): the field at
/// `csum_start + csum_offset` already holds the pseudo-header sum.
pub fn complete_checksum(pkt: &mut [u8], csum_start: u16, csum_offset: u16) -> Result<(), Malformed> {
    let (start, at) = (usize::from(csum_start), usize::from(csum_start) + usize::from(csum_offset));
    if at + 2 > pkt.len() || start > pkt.len() {
        return Err(Malformed);
    }
    let c = !sum(&pkt[start..]);
    pkt[at..at + 2].copy_from_slice(&c.to_be_bytes());
    Ok(())
}

/// The IPv4 header checksum, recomputed in place.
fn fix_ipv4_checksum(ip: &mut [u8], ihl: usize) {
    ip[10..12].copy_from_slice(&[0, 0]);
    let c = !sum(&ip[..ihl]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
}

/// A TCP/IPv4 packet's layout, checked.
#[derive(Debug, Clone, Copy)]
struct Tcp4 {
    ihl: usize,
    thl: usize,
    total: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
}

impl Tcp4 {
    fn parse(pkt: &[u8]) -> Option<Tcp4> {
        if pkt.len() < 40 || pkt[0] >> 4 != 4 || pkt[9] != PROTO_TCP {
            return None;
        }
        let ihl = usize::from(pkt[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
        // Fragments are not TCP segments we may touch.
        let frag = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff;
        if ihl < 20 || total > pkt.len() || frag != 0 || pkt.len() < ihl + 20 {
            return None;
        }
        let thl = usize::from(pkt[ihl + 12] >> 4) * 4;
        if thl < 20 || ihl + thl > total {
            return None;
        }
        let src = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
        let dst = Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]);
        Some(Tcp4 { ihl, thl, total, src, dst })
    }

    fn hl(&self) -> usize {
        self.ihl + self.thl
    }

    fn seq(pkt: &[u8], ihl: usize) -> u32 {
        u32::from_be_bytes(pkt[ihl + 4..ihl + 8].try_into().expect("4 bytes"))
    }
}

/// A TCP segment's layout in either family, for coalescing: `ihl` is the
/// IP header's length (40 for IPv6, whose extension headers are not merged).
#[derive(Debug, Clone, Copy)]
struct Flow {
    v6: bool,
    ihl: usize,
    thl: usize,
    total: usize,
    src: [u8; 16],
    dst: [u8; 16],
}

impl Flow {
    fn parse(pkt: &[u8]) -> Option<Flow> {
        if pkt.first()? >> 4 == 4 {
            let t = Tcp4::parse(pkt)?;
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src[..4].copy_from_slice(&t.src.octets());
            dst[..4].copy_from_slice(&t.dst.octets());
            return Some(Flow { v6: false, ihl: t.ihl, thl: t.thl, total: t.total, src, dst });
        }
        if pkt.len() < 60 || pkt[0] >> 4 != 6 || pkt[6] != PROTO_TCP {
            return None;
        }
        let total = 40 + usize::from(u16::from_be_bytes([pkt[4], pkt[5]]));
        let thl = usize::from(pkt[52] >> 4) * 4;
        if total > pkt.len() || thl < 20 || 40 + thl > total {
            return None;
        }
        let at = |i: usize| <[u8; 16]>::try_from(&pkt[i..i + 16]).expect("16 bytes");
        Some(Flow { v6: true, ihl: 40, thl, total, src: at(8), dst: at(24) })
    }

    fn hl(&self) -> usize {
        self.ihl + self.thl
    }

    /// The largest packet of this family: 64 KiB of IPv4, or an IPv6
    /// header and 64 KiB of payload.
    fn max_total(&self) -> usize {
        if self.v6 { 40 + 65535 } else { MAX_IPV4 }
    }

    /// The IP header fields that must match for two segments to merge:
    /// IPv4 TOS, DF, TTL and protocol; IPv6 traffic class, flow label, next
    /// header and hop limit.
    fn same_ip(&self, a: &[u8], b: &[u8]) -> bool {
        if self.v6 {
            a[..4] == b[..4] && a[6..8] == b[6..8]
        } else {
            a[1] == b[1] && a[6] & 0x40 == b[6] & 0x40 && a[8..10] == b[8..10]
        }
    }
}

/// How a super-packet was laid out by [`segment_tcp4`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    /// Number of segments.
    pub count: usize,
    /// Distance between segment starts (headroom + headers + `gso_size`).
    pub stride: usize,
    /// Bytes used in `out`: every segment but the last is `stride` long.
    pub len: usize,
}

/// Cuts a TCP/IPv4 super-packet into segments of `mss` payload bytes, as a
/// NIC's TSO would: each is written to `out` at `i * stride + headroom`
/// (the caller fills the headroom), with its own IP total length, IP ID
/// (incremented), IP checksum, sequence number, flags (FIN and PSH on the
/// last only, CWR on the first only) and complete TCP checksum.
pub fn segment_tcp4(pkt: &[u8], mss: usize, headroom: usize, out: &mut [u8]) -> Result<Segments, Malformed> {
    let t = Tcp4::parse(pkt).ok_or(Malformed)?;
    let pkt = &pkt[..t.total];
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let pseudo_base = pseudo_v4(t.src, t.dst, PROTO_TCP, 0);
    segment_tcp(pkt, (t.ihl, t.hl()), mss, headroom, out, pseudo_base, |seg, i| {
        let total = seg.len() as u16;
        seg[2..4].copy_from_slice(&total.to_be_bytes());
        seg[4..6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        fix_ipv4_checksum(seg, t.ihl);
    })
}

/// Cuts a TCP/IPv6 super-packet (TCP right after the fixed header, as the
/// kernel's TSO6 hands it over; extension headers are refused) into
/// segments of `mss` payload bytes, laid out as [`segment_tcp4`] lays them:
/// each with its own payload length, sequence number, flags (FIN and PSH on
/// the last only, CWR on the first only) and complete TCP checksum.
pub fn segment_tcp6(pkt: &[u8], mss: usize, headroom: usize, out: &mut [u8]) -> Result<Segments, Malformed> {
    let t = Flow::parse(pkt).filter(|t| t.v6).ok_or(Malformed)?;
    let pseudo_base = pseudo_v6(t.src.into(), t.dst.into(), PROTO_TCP, 0);
    segment_tcp(&pkt[..t.total], (t.ihl, t.hl()), mss, headroom, out, pseudo_base, |seg, _| {
        let payload_len = (seg.len() - 40) as u16;
        seg[4..6].copy_from_slice(&payload_len.to_be_bytes());
    })
}

/// What TSO does in either family: lays `pkt`'s payload (after `hl` bytes
/// of headers, TCP at `ihl`: `headers` is both) out in segments of `mss` bytes, each after
/// `headroom` and a copy of the headers; `fix_ip` sets segment `i`'s IP
/// header for its length; then each gets its sequence number, flags and
/// TCP checksum (over `pseudo_base`, the pseudo-header sum without the
/// length, which fits 16 bits: each segment comes from one packet).
fn segment_tcp(
    pkt: &[u8],
    (ihl, hl): (usize, usize),
    mss: usize,
    headroom: usize,
    out: &mut [u8],
    pseudo_base: u16,
    mut fix_ip: impl FnMut(&mut [u8], usize),
) -> Result<Segments, Malformed> {
    let payload = &pkt[hl..];
    if mss == 0 {
        return Err(Malformed);
    }
    let count = payload.len().div_ceil(mss).max(1);
    let stride = headroom + hl + mss;
    let len = (count - 1) * stride + headroom + hl + (payload.len() - (count - 1) * mss);
    if len > out.len() {
        return Err(Malformed);
    }
    let seq0 = Tcp4::seq(pkt, ihl);
    let flags0 = pkt[ihl + 13];
    for (i, chunk) in payload.chunks(mss).chain(payload.is_empty().then_some(&[][..])).enumerate() {
        let last = i + 1 == count;
        let seg = &mut out[i * stride + headroom..i * stride + headroom + hl + chunk.len()];
        seg[..hl].copy_from_slice(&pkt[..hl]);
        seg[hl..].copy_from_slice(chunk);
        fix_ip(seg, i);
        let tcp = &mut seg[ihl..];
        tcp[4..8].copy_from_slice(&seq0.wrapping_add((i * mss) as u32).to_be_bytes());
        let mut flags = flags0;
        if i > 0 {
            flags &= !TCP_CWR;
        }
        if !last {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        tcp[13] = flags;
        tcp[16..18].copy_from_slice(&[0, 0]);
        let c = !add(add(pseudo_base, tcp.len() as u16), sum(tcp));
        tcp[16..18].copy_from_slice(&c.to_be_bytes());
    }
    Ok(Segments { count, stride, len })
}

/// The run of segments being coalesced.
#[derive(Debug, Clone, Copy)]
struct Run {
    t: Flow,
    mss: usize,
    next_seq: u32,
    segments: usize,
    /// A short or PSH segment ended it: nothing more may follow.
    closed: bool,
}

/// Coalesces consecutive in-order TCP segments of one flow (IPv4, or IPv6
/// without extension headers) into one super-packet for a vnet-header TUN
/// (GRO in software); everything else
/// passes through one packet per write. Writes go to the caller's closure
/// as `virtio_net_hdr` + packet.
#[derive(Debug)]
pub struct Coalescer {
    buf: Vec<u8>,
    run: Option<Run>,
    max_segments: usize,
    coalesced: u64,
}

impl Default for Coalescer {
    fn default() -> Self {
        Self::new(64)
    }
}

impl Coalescer {
    /// A coalescer that merges at most `max_segments` segments.
    pub fn new(max_segments: usize) -> Self {
        Coalescer {
            buf: Vec::with_capacity(VNET_HDR_LEN + 40 + 65535),
            run: None,
            max_segments: max_segments.max(1),
            coalesced: 0,
        }
    }

    /// Writes so far that carried more than one segment.
    pub fn coalesced(&self) -> u64 {
        self.coalesced
    }

    /// Whether `pkt` is a segment a run may hold: data, ACK set, and no flag
    /// that must reach the stack on its own.
    fn mergeable(pkt: &[u8]) -> Option<Flow> {
        let t = Flow::parse(pkt)?;
        let flags = pkt[t.ihl + 13];
        let plain = flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_ECE | TCP_CWR) == 0;
        (plain && flags & TCP_ACK != 0 && t.total > t.hl() && t.total == pkt.len()).then_some(t)
    }

    fn fits(&self, run: &Run, pkt: &[u8], t: &Flow) -> bool {
        let cur = &self.buf[VNET_HDR_LEN..];
        let payload = t.total - t.hl();
        !run.closed
            && run.segments < self.max_segments
            && t.v6 == run.t.v6
            && t.src == run.t.src
            && t.dst == run.t.dst
            && t.ihl == run.t.ihl
            && t.thl == run.t.thl
            && payload <= run.mss
            && cur.len() + payload <= t.max_total()
            && Tcp4::seq(pkt, t.ihl) == run.next_seq
            // The IP fields; then ports, ack, window and every option.
            && t.same_ip(pkt, cur)
            && pkt[t.ihl..t.ihl + 4] == cur[t.ihl..t.ihl + 4]
            && pkt[t.ihl + 8..t.ihl + 12] == cur[t.ihl + 8..t.ihl + 12]
            && pkt[t.ihl + 14..t.ihl + 16] == cur[t.ihl + 14..t.ihl + 16]
            && pkt[t.ihl + 20..t.hl()] == cur[t.ihl + 20..t.hl()]
    }

    /// Takes one packet (IPv4 or IPv6, as delivered by decap).
    pub fn push(&mut self, pkt: &[u8], write: &mut impl FnMut(&[u8])) {
        let Some(t) = Self::mergeable(pkt) else {
            self.flush(write);
            self.load(pkt);
            write(&self.buf);
            self.buf.clear();
            return;
        };
        if let Some(run) = self.run {
            if self.fits(&run, pkt, &t) {
                let payload = &pkt[t.hl()..t.total];
                self.buf.extend_from_slice(payload);
                let psh = pkt[t.ihl + 13] & TCP_PSH != 0;
                if psh {
                    self.buf[VNET_HDR_LEN + t.ihl + 13] |= TCP_PSH;
                }
                self.run = Some(Run {
                    next_seq: run.next_seq.wrapping_add(payload.len() as u32),
                    segments: run.segments + 1,
                    closed: psh || payload.len() < run.mss,
                    ..run
                });
                return;
            }
            self.flush(write);
        }
        let mss = t.total - t.hl();
        self.load(pkt);
        self.run = Some(Run {
            t,
            mss,
            next_seq: Tcp4::seq(pkt, t.ihl).wrapping_add(mss as u32),
            segments: 1,
            closed: pkt[t.ihl + 13] & TCP_PSH != 0,
        });
    }

    /// The buffer becomes a zero `virtio_net_hdr` (no GSO, checksum as is) + `pkt`.
    fn load(&mut self, pkt: &[u8]) {
        self.buf.clear();
        self.buf.resize(VNET_HDR_LEN, 0);
        self.buf.extend_from_slice(pkt);
    }

    /// Writes out the run being built, if any.
    pub fn flush(&mut self, write: &mut impl FnMut(&[u8])) {
        let Some(run) = self.run.take() else { return };
        if run.segments > 1 {
            self.coalesced += 1;
            let t = run.t;
            let ip = &mut self.buf[VNET_HDR_LEN..];
            let total = ip.len();
            // The stack finishes the checksum (CHECKSUM_PARTIAL): the field
            // holds the pseudo-header sum, as the kernel's own TSO expects.
            let (pseudo, gso_type) = if t.v6 {
                ip[4..6].copy_from_slice(&((total - 40) as u16).to_be_bytes());
                (pseudo_v6(t.src.into(), t.dst.into(), PROTO_TCP, (total - 40) as u32), GSO_TCPV6)
            } else {
                ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                fix_ipv4_checksum(ip, t.ihl);
                let v4 = |a: [u8; 16]| Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                (pseudo_v4(v4(t.src), v4(t.dst), PROTO_TCP, (total - t.ihl) as u16), GSO_TCPV4)
            };
            ip[t.ihl + 16..t.ihl + 18].copy_from_slice(&pseudo.to_be_bytes());
            VnetHdr {
                flags: F_NEEDS_CSUM,
                gso_type,
                hdr_len: t.hl() as u16,
                gso_size: run.mss as u16,
                csum_start: t.ihl as u16,
                csum_offset: 16,
            }
            .emit(&mut self.buf);
        }
        write(&self.buf);
        self.buf.clear();
    }
}

#[cfg(test)]
mod tests;
