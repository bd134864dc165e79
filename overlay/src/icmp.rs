//! ICMP echo (RFC 792) packets for the agent's peer probes over the overlay
//! and the lab's pod probes. etherparse builds the request (checksum
//! included) and checks the reply's IPv4 and ICMP headers, so a short or
//! lying packet is refused, never read past its end (fuzzed: `overlay/fuzz`,
//! target `icmp`). ICMPv6 echo (RFC 4443) likewise, for IPv6 pods: a raw
//! ICMPv6 socket hands over the ICMPv6 message alone, and the kernel fills
//! its checksum (RFC 3542 §3.1), which covers a pseudo-header only the
//! kernel knows the source of. The sockets are the caller's.

use std::net::Ipv4Addr;

use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, IpNumber, Ipv4Slice,
};

/// The payload of every request, so a capture shows who sent it.
const PAYLOAD: &[u8; 8] = b"felt-lab";

/// Makes a raw ICMP (`ipv6`: ICMPv6) socket receive echo replies only. A
/// raw socket gets a copy of every ICMP message its namespace receives: in
/// a lab of N pods all probing each other at once, N − 1 echo requests
/// beside the N − 1 replies wanted, which can fill its receive buffer
/// before the replies are read. `ICMP_FILTER` (`linux/icmp.h`) and
/// `ICMP6_FILTER` (RFC 3542 §3.2): a set bit blocks that type.
pub fn receive_echo_replies_only(socket: &impl std::os::fd::AsRawFd, ipv6: bool) -> std::io::Result<()> {
    if ipv6 {
        let mut blocked = [u32::MAX; 8];
        blocked[129 / 32] &= !(1 << (129 % 32));
        crate::userspace::sys::setsockopt(socket, libc::IPPROTO_ICMPV6, 1, &blocked)
    } else {
        let blocked: u32 = !1;
        crate::userspace::sys::setsockopt(socket, libc::SOL_RAW, 1, &blocked)
    }
}

/// An ICMP echo request (RFC 792) with `id`, `seq` and a small payload.
pub fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let header = Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq }), PAYLOAD);
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&header.to_bytes());
    p[8..].copy_from_slice(PAYLOAD);
    p
}

/// If `packet` (an IPv4 datagram, as a raw socket returns it) is an echo
/// reply from `from` with `id`, its sequence number.
pub fn parse_echo_reply(packet: &[u8], from: Ipv4Addr, id: u16) -> Option<u16> {
    let ip = Ipv4Slice::from_slice(packet).ok()?;
    if ip.header().protocol() != IpNumber::ICMP || ip.header().source_addr() != from {
        return None;
    }
    match Icmpv4Slice::from_slice(ip.payload().payload).ok()?.icmp_type() {
        Icmpv4Type::EchoReply(echo) if echo.id == id => Some(echo.seq),
        _ => None,
    }
}

/// An ICMPv6 echo request (RFC 4443 §4.1) with `id`, `seq` and the same
/// payload, its checksum left for the kernel.
pub fn echo_request6(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 128;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(PAYLOAD);
    p
}

/// If `message` (an ICMPv6 message, as a raw ICMPv6 socket returns it) is
/// an echo reply with `id`, its sequence number. The sender is the
/// socket's to tell (`recvfrom`).
pub fn parse_echo_reply6(message: &[u8], id: u16) -> Option<u16> {
    match Icmpv6Slice::from_slice(message).ok()?.icmp_type() {
        Icmpv6Type::EchoReply(echo) if echo.id == id => Some(echo.seq),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icmpv6_echo_round_trips_and_refuses_what_is_not_a_reply() {
        let req = echo_request6(7, 9);
        assert_eq!((req[0], &req[4..8]), (128, &[0, 7, 0, 9][..]));
        assert_eq!(parse_echo_reply6(&req, 7), None, "a request is not a reply");
        let mut reply = req;
        reply[0] = 129;
        assert_eq!(parse_echo_reply6(&reply, 7), Some(9));
        assert_eq!(parse_echo_reply6(&reply, 8), None, "other id");
        for len in 0..8 {
            assert_eq!(parse_echo_reply6(&reply[..len], 7), None, "truncated to {len}");
        }
        let mut solicitation = reply;
        solicitation[0] = 135;
        assert_eq!(parse_echo_reply6(&solicitation, 7), None, "neighbour discovery is not a reply");
    }

    fn reply(src: Ipv4Addr, id: u16, seq: u16) -> Vec<u8> {
        let mut pkt = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0];
        pkt.extend_from_slice(&src.octets());
        pkt.extend_from_slice(&[10, 244, 1, 2]);
        let mut icmp = echo_request(id, seq);
        icmp[0] = 0; // echo reply
        pkt.extend_from_slice(&icmp);
        pkt
    }

    #[test]
    fn requests_carry_a_valid_checksum() {
        let req = echo_request(7, 9);
        assert_eq!((req[0], &req[4..8]), (8, &[0, 7, 0, 9][..]));
        // RFC 1071: a packet with its checksum in place sums to 0xffff.
        let sum = req.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum::<u32>();
        let folded = (sum & 0xffff) + (sum >> 16);
        assert_eq!(folded, 0xffff);
    }

    #[test]
    fn parses_echo_reply() {
        let src = Ipv4Addr::new(10, 244, 2, 2);
        let pkt = reply(src, 7, 9);
        assert_eq!(parse_echo_reply(&pkt, src, 7), Some(9));
        assert_eq!(parse_echo_reply(&pkt, src, 8), None, "other id");
        assert_eq!(parse_echo_reply(&pkt, Ipv4Addr::new(1, 2, 3, 4), 7), None, "other source");
        assert_eq!(parse_echo_reply(&pkt[..20], src, 7), None, "truncated");
        let mut request = pkt.clone();
        request[20] = 8;
        assert_eq!(parse_echo_reply(&request, src, 7), None, "a request is not a reply");
    }

    #[test]
    fn a_header_that_claims_more_than_there_is_is_refused() {
        let src = Ipv4Addr::new(10, 244, 2, 2);
        for ihl in 0..16u8 {
            for len in 0..=36 {
                let mut pkt = reply(src, 7, 9);
                pkt[0] = 0x40 | ihl;
                let _ = parse_echo_reply(&pkt[..len], src, 7);
            }
        }
        let mut long = reply(src, 7, 9);
        long[3] = 200; // total length beyond the buffer
        assert_eq!(parse_echo_reply(&long, src, 7), None);
    }
}
