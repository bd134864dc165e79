//! Any datagram as an nf_tables dump or batch reply: splitting it into
//! messages and reading each (errors, chains, rules, set elements) must not
//! panic, and what comes out must lie inside the input.
#![no_main]

use felt_overlay::nft::msg::{self, Dumped};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|buf: &[u8]| {
    let messages = msg::split(buf);
    assert!(messages.len() <= buf.len() / 16);
    for (kind, _seq, body) in messages {
        assert!(body.len() <= buf.len());
        let _ = msg::error_of(body);
        match msg::parse_dumped(kind, body) {
            // Each element takes at least three 4-byte attribute headers and 4 bytes of address.
            Some(Dumped::Elements(addrs)) => assert!(addrs.len() * 16 <= body.len()),
            Some(Dumped::Chain { table, name, .. }) => assert!(table.len() + name.len() <= body.len() * 3),
            Some(Dumped::Rule { userdata, .. }) => assert!(userdata.len() <= body.len()),
            None => {}
        }
        for (_, value) in msg::parse_attrs(body) {
            assert!(value.len() <= body.len());
        }
    }
});
