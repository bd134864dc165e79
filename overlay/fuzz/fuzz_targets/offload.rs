//! Any virtio_net_hdr and bytes from a vnet-header TUN: encap_offloaded must
//! not panic and must lay segments out as it says; the peer decaps them and
//! a coalescer takes what it delivers (and any raw bytes): no panic, and
//! every write it makes is a well-formed vnet header + an IPv4 or IPv6
//! packet whose length field says its length, with a GSO size whenever it
//! claims to be a super-packet.
#![no_main]

mod common;

use felt_overlay::userspace::offload::{Coalescer, VNET_HDR_LEN, VnetHdr};
use felt_overlay::userspace::{Decap, EncapMany, HEADROOM};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u8, u8, u16, u16, u16, &[u8])| {
    let (flags, gso_type, gso_size, csum_start, csum_offset, packet) = input;
    let hdr = VnetHdr { flags, gso_type, hdr_len: 0, gso_size, csum_start, csum_offset };
    let (mut a, mut b) = common::pair();
    let mut ip = packet.to_vec();
    let mut out = vec![0u8; 4 * 65536];
    let mut coalescer = Coalescer::new(64);
    let mut write = |w: &[u8]| {
        let h = VnetHdr::parse(w).expect("a vnet header");
        let ip = &w[VNET_HDR_LEN..];
        assert!(ip.len() <= 40 + 65535);
        if h.gso_type != 0 {
            assert!(h.gso_size > 0 && usize::from(h.hdr_len) < ip.len());
            match ip[0] >> 4 {
                4 => assert_eq!(usize::from(u16::from_be_bytes([ip[2], ip[3]])), ip.len()),
                6 => assert_eq!(40 + usize::from(u16::from_be_bytes([ip[4], ip[5]])), ip.len()),
                v => panic!("a super-packet of IP version {v}"),
            }
        }
    };
    if let EncapMany::Send { len, stride, count, .. } = a.encap_offloaded(hdr, &mut ip, &mut out) {
        assert!(len <= out.len() && count >= 1 && stride > HEADROOM);
        assert!((count - 1) * stride < len && len <= count * stride);
        for seg in out[..len].chunks(stride) {
            if let Decap::Deliver(p) = b.decap(common::N1, seg) {
                coalescer.push(p, &mut write);
            }
        }
    }
    // And raw bytes straight into the coalescer.
    coalescer.push(packet, &mut write);
    coalescer.flush(&mut write);
});
