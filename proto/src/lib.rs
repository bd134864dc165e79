//! Wire and schema types shared by every part of felt.
//!
//! This crate owns the shapes that cross a boundary: the node record peers
//! publish (one JSON document per node in the file registry, annotations in
//! Kubernetes), the network configuration, the subnet file handed to the CNI
//! plugin, the CNI result, the data plane's entries, the debug API and the
//! MAC address type. It does no I/O: callers read bytes and
//! hand them here; every type is validated once, when it is parsed.

#![forbid(unsafe_code)]

pub mod annotations;
pub mod cni;
pub mod config;
pub mod debug;
pub mod entry;
pub mod mac;
pub mod node;
pub mod subnet;

pub use config::{BackendConfig, NetConfig};
pub use debug::DataplaneKind;
pub use mac::MacAddr;
pub use node::{BackendData, BackendType, NodeRecord};
pub use subnet::SubnetFile;

/// The UDP port Linux's VXLAN driver uses when none is given, and the one
/// Flannel's vxlan backend relies on (not IANA's 4789).
pub const DEFAULT_VXLAN_PORT: u16 = 8472;

/// The VXLAN network identifier Flannel uses by default.
pub const DEFAULT_VNI: u32 = 1;

/// Bytes the VXLAN-over-IPv4 encapsulation adds to an inner frame:
/// outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) = 50 (RFC 7348 §5).
pub const VXLAN_IPV4_OVERHEAD: u32 = 50;

/// The same over an IPv6 underlay: the outer header is 40 bytes, so 70.
pub const VXLAN_IPV6_OVERHEAD: u32 = 70;
