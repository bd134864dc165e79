//! Any bytes as what a raw ICMP or ICMPv6 socket returns: neither
//! echo-reply parser may panic, and a reply either accepts is one
//! `echo_request`/`echo_request6` could have asked for.
#![no_main]

use std::net::Ipv4Addr;

use felt_overlay::icmp::{parse_echo_reply, parse_echo_reply6};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    // The first 6 bytes choose the expected source and id; the rest is the packet.
    let Some((head, packet)) = bytes.split_first_chunk::<6>() else { return };
    let from = Ipv4Addr::new(head[0], head[1], head[2], head[3]);
    let id = u16::from_be_bytes([head[4], head[5]]);
    if parse_echo_reply(packet, from, id).is_some() {
        // An accepted reply came from `from`: its IPv4 source is that address.
        assert!(packet.len() >= 28);
        assert_eq!(&packet[12..16], &from.octets());
    }
    if let Some(seq) = parse_echo_reply6(packet, id) {
        // An accepted ICMPv6 reply is type 129 with that id and sequence.
        assert!(packet.len() >= 8 && packet[0] == 129);
        assert_eq!((&packet[4..6], &packet[6..8]), (&id.to_be_bytes()[..], &seq.to_be_bytes()[..]));
    }
});
