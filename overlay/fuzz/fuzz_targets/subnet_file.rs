//! Any text as the subnet file the CNI plugin reads: parse must not panic,
//! and what it accepts must render to a file that parses to the same thing.
#![no_main]

use felt_proto::SubnetFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    if let Ok(s) = SubnetFile::parse(text) {
        assert_eq!(SubnetFile::parse(&s.render()).unwrap(), s);
    }
});
