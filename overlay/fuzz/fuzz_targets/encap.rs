//! Any bytes from the TUN, any output size: encap must not panic, and a
//! frame it sends must fit the buffer and decap back to the input packet.
#![no_main]

mod common;

use felt_overlay::userspace::{Decap, Encap};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, &[u8])| {
    let (out_len, packet) = input;
    let (mut a, mut b) = common::pair();
    let mut out = vec![0u8; usize::from(out_len) % 4096];
    if let Encap::Send { len, .. } = a.encap(packet, &mut out) {
        assert!(len <= out.len());
        // Delivered unless the inner source is outside n1's pod CIDR (anti-spoofing).
        if let Decap::Deliver(p) = b.decap(common::N1, &out[..len]) {
            assert_eq!(p, &packet[..p.len()]);
        }
    }
});
