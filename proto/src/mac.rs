//! Ethernet MAC addresses as the agent publishes and programs them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit IEEE 802 MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a MAC address (want six hex pairs separated by `:`)")]
pub struct ParseMacError(String);

impl MacAddr {
    /// A stable, locally administered unicast address derived from `seed`
    /// (the node name): the same node gets the same VTEP MAC across restarts
    /// and reboots, so peers never need to reprogram it.
    pub fn derive(seed: &[u8]) -> Self {
        // FNV-1a, 64 bit: small, stable across releases and platforms.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // MurmurHash3's fmix64 finaliser: names that differ in one character
        // get addresses that differ everywhere, not in one octet.
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^= hash >> 33;
        let b = hash.to_be_bytes();
        // Bit 1 of the first octet: locally administered; bit 0 clear: unicast.
        MacAddr([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
    }

    /// The six octets.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// True for a unicast address that is not all zeros: the only kind a VTEP may have.
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 0x01 == 0 && self.0 != [0; 6]
    }
}

impl TryFrom<&[u8]> for MacAddr {
    type Error = ParseMacError;

    fn try_from(bytes: &[u8]) -> Result<Self, Self::Error> {
        <[u8; 6]>::try_from(bytes).map(MacAddr).map_err(|_| ParseMacError(format!("{bytes:02x?}")))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for slot in &mut out {
            let part = parts.next().ok_or_else(|| ParseMacError(s.to_owned()))?;
            if part.len() != 2 {
                return Err(ParseMacError(s.to_owned()));
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| ParseMacError(s.to_owned()))?;
        }
        if parts.next().is_some() {
            return Err(ParseMacError(s.to_owned()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints() {
        let mac: MacAddr = "d6:b7:58:fb:c2:19".parse().unwrap();
        assert_eq!(mac.0, [0xd6, 0xb7, 0x58, 0xfb, 0xc2, 0x19]);
        assert_eq!(mac.to_string(), "d6:b7:58:fb:c2:19");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "d6:b7:58:fb:c2", "d6:b7:58:fb:c2:19:00", "d6:b7:58:fb:c2:1", "zz:b7:58:fb:c2:19"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_is_stable_local_unicast() {
        let a = MacAddr::derive(b"node-1");
        assert_eq!(a, MacAddr::derive(b"node-1"));
        assert_ne!(a, MacAddr::derive(b"node-2"));
        assert!(a.is_unicast());
        assert_eq!(a.0[0] & 0x02, 0x02);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(bytes in any::<[u8; 6]>()) {
            let mac = MacAddr(bytes);
            prop_assert_eq!(mac.to_string().parse::<MacAddr>().unwrap(), mac);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<MacAddr>();
        }
    }
}
