//! ICMP echo (RFC 792) for the lab's probes and the agent's peer probes.

use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

/// A raw ICMP socket (needs CAP_NET_RAW in its network namespace) with a read timeout.
pub fn raw_socket(read_timeout: Duration) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s)
}

/// ICMP type of an echo request.
pub const ECHO_REQUEST: u8 = 8;
/// ICMP type of an echo reply.
pub const ECHO_REPLY: u8 = 0;

/// RFC 1071 Internet checksum.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in bytes.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request (RFC 792) with `id`, `seq` and a small payload.
pub fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = ECHO_REQUEST;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..16].copy_from_slice(b"felt-lab");
    let c = checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

/// If `packet` (an IPv4 datagram, as a raw socket returns it) is an echo
/// reply from `from` with `id`, its sequence number.
pub fn parse_echo_reply(packet: &[u8], from: std::net::Ipv4Addr, id: u16) -> Option<u16> {
    let ihl = usize::from(packet.first()? & 0x0f) * 4;
    if packet.len() < ihl + 8 || packet.get(9) != Some(&1) || packet[12..16] != from.octets() {
        return None;
    }
    let icmp = &packet[ihl..];
    (icmp[0] == ECHO_REPLY && u16::from_be_bytes([icmp[4], icmp[5]]) == id)
        .then(|| u16::from_be_bytes([icmp[6], icmp[7]]))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 §3: 0001 f203 f4f5 f6f7 → sum 0xddf2, checksum !0xddf2.
        assert_eq!(checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        let req = echo_request(7, 9);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to zero");
    }

    #[test]
    fn parses_echo_reply() {
        let src = Ipv4Addr::new(10, 244, 2, 2);
        let mut pkt = vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0];
        pkt.extend_from_slice(&src.octets());
        pkt.extend_from_slice(&[10, 244, 1, 2]);
        let mut icmp = echo_request(7, 9);
        icmp[0] = ECHO_REPLY;
        pkt.extend_from_slice(&icmp);
        assert_eq!(parse_echo_reply(&pkt, src, 7), Some(9));
        assert_eq!(parse_echo_reply(&pkt, src, 8), None, "other id");
        assert_eq!(parse_echo_reply(&pkt, Ipv4Addr::new(1, 2, 3, 4), 7), None, "other source");
        assert_eq!(parse_echo_reply(&pkt[..20], src, 7), None, "truncated");
    }
}
