//! VXLAN and Ethernet on the wire: checked views over bytes, smoltcp-style.
//!
//! VXLAN header, RFC 7348 §5:
//! ```text
//!  0                   1                   2                   3
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! ```
//! The I flag (0x08) must be set for a valid VNI; reserved bits are sent as
//! zero and ignored on receipt. The inner frame is Ethernet (IEEE 802.3):
//! destination MAC, source MAC, EtherType.

use felt_proto::MacAddr;

/// Bytes of the VXLAN header.
pub const VXLAN_LEN: usize = 8;
/// Bytes of an untagged Ethernet header.
pub const ETHERNET_LEN: usize = 14;
/// The I flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;
/// EtherType of IPv4.
pub const ETHERTYPE_IPV4: u16 = 0x0800;
/// IPv6.
pub const ETHERTYPE_IPV6: u16 = 0x86dd;

/// Why bytes are not a well-formed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Truncated;

/// A checked view of a VXLAN header followed by its payload.
#[derive(Debug, Clone, Copy)]
pub struct VxlanPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanPacket<T> {
    /// Checks there is a whole header.
    pub fn new_checked(buffer: T) -> Result<Self, Truncated> {
        if buffer.as_ref().len() < VXLAN_LEN { Err(Truncated) } else { Ok(VxlanPacket { buffer }) }
    }

    /// The flags octet.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[0]
    }

    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[4], b[5], b[6]])
    }

    /// What follows the header: the inner Ethernet frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VXLAN_LEN..]
    }
}

/// The VXLAN header's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanRepr {
    /// The VNI.
    pub vni: u32,
}

impl VxlanRepr {
    /// Reads a header; `None` without the I flag.
    pub fn parse<T: AsRef<[u8]>>(p: &VxlanPacket<T>) -> Option<Self> {
        (p.flags() & FLAG_I != 0).then(|| VxlanRepr { vni: p.vni() })
    }

    /// Writes the header into the first 8 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        let v = self.vni.to_be_bytes();
        buf[..VXLAN_LEN].copy_from_slice(&[FLAG_I, 0, 0, 0, v[1], v[2], v[3], 0]);
    }
}

/// The Ethernet header's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetRepr {
    /// Destination MAC.
    pub dst: MacAddr,
    /// Source MAC.
    pub src: MacAddr,
    /// EtherType.
    pub ethertype: u16,
}

impl EthernetRepr {
    /// Reads a header.
    pub fn parse(frame: &[u8]) -> Result<Self, Truncated> {
        if frame.len() < ETHERNET_LEN {
            return Err(Truncated);
        }
        let mac = |r: std::ops::Range<usize>| MacAddr(frame[r].try_into().expect("6 bytes"));
        Ok(EthernetRepr {
            dst: mac(0..6),
            src: mac(6..12),
            ethertype: u16::from_be_bytes([frame[12], frame[13]]),
        })
    }

    /// Writes the header into the first 14 bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0..6].copy_from_slice(&self.dst.0);
        buf[6..12].copy_from_slice(&self.src.0);
        buf[12..14].copy_from_slice(&self.ethertype.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc7348_header_layout() {
        let mut buf = [0xffu8; 8];
        VxlanRepr { vni: 0x123456 }.emit(&mut buf);
        assert_eq!(buf, [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0]);
        let p = VxlanPacket::new_checked(&buf[..]).unwrap();
        assert_eq!(VxlanRepr::parse(&p), Some(VxlanRepr { vni: 0x123456 }));
        assert!(VxlanPacket::new_checked(&buf[..7]).is_err());
        let no_i = [0u8, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&no_i[..]).unwrap()), None);
    }
}
