//! Any bytes as what a raw ICMP socket returns: the echo-reply parser must
//! not panic, and a reply it accepts is one `echo_request` could have asked for.
#![no_main]

use std::net::Ipv4Addr;

use felt_overlay::icmp::parse_echo_reply;
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
});
