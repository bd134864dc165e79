//! The node record: what one node publishes so its peers can reach it.
//!
//! In the file registry it is one JSON document per node, named
//! `<node name>.json`. In Kubernetes the same facts live in the Node object
//! (`spec.podCIDRs`) and its `felt.network/` annotations; both registries
//! normalise into [`NodeRecord`].
//!
//! ```json
//! {"name":"n1","podCIDRs":["10.244.1.0/24"],"publicIP":"198.18.7.11",
//!  "backendType":"vxlan","backendData":{"vni":1,"vtepMAC":"d6:b7:58:fb:c2:19"}}
//! ```
//!
//! A record may be incomplete (no pod CIDR yet, not yet published): such a
//! node is known but is not a peer until it is complete.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// The encapsulation a node speaks. Both of felt's data planes (kernel and
/// userspace) speak VXLAN on the wire, so both publish `vxlan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendType {
    /// VXLAN, RFC 7348, with Flannel's conventions (see the crate docs).
    Vxlan,
}

impl std::fmt::Display for BackendType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendType::Vxlan => f.write_str("vxlan"),
        }
    }
}

/// Backend data for `vxlan`: `{"vni":1,"vtepMAC":"…"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendData {
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// The MAC address of the node's VTEP (its VXLAN device or engine).
    #[serde(rename = "vtepMAC")]
    pub vtep_mac: MacAddr,
}

/// One node as a registry holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    /// The node's name, unique in the cluster.
    pub name: String,
    /// The node's pod CIDRs: at most one IPv4 and one IPv6.
    #[serde(rename = "podCIDRs", default, skip_serializing_if = "Vec::is_empty")]
    pub pod_cidrs: Vec<IpNet>,
    /// The underlay address peers send VXLAN to (IPv4, or IPv6 on an IPv6
    /// underlay).
    #[serde(rename = "publicIP", default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<IpAddr>,
    /// The backend the node speaks, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_type: Option<BackendType>,
    /// The backend's data, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_data: Option<BackendData>,
}

/// Why a record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The document is not valid JSON of the record's shape.
    #[error("malformed node record: {0}")]
    Malformed(String),
    /// The node name is empty or not a DNS-1123 subdomain.
    #[error("invalid node name `{0}`")]
    BadName(String),
    /// More than one IPv4 pod CIDR.
    #[error("more than one IPv4 pod CIDR: {0:?}")]
    SeveralIpv4Cidrs(Vec<IpNet>),
    /// More than one IPv6 pod CIDR.
    #[error("more than one IPv6 pod CIDR: {0:?}")]
    SeveralIpv6Cidrs(Vec<IpNet>),
    /// A pod CIDR whose host bits are set (`10.244.1.5/24`).
    #[error("pod CIDR {0} is not a network address")]
    UnalignedCidr(IpNet),
    /// The VTEP MAC is multicast or all zeros.
    #[error("VTEP MAC {0} is not a unicast address")]
    BadVtepMac(MacAddr),
    /// The VNI does not fit in 24 bits.
    #[error("VNI {0} does not fit in 24 bits")]
    BadVni(u32),
    /// The public IP is unspecified, loopback, multicast, broadcast or
    /// (IPv6) link-local.
    #[error("public IP {0} cannot be an underlay address")]
    BadPublicIp(IpAddr),
}

impl NodeRecord {
    /// A record that names a node and nothing else.
    pub fn new(name: impl Into<String>) -> Self {
        NodeRecord {
            name: name.into(),
            pod_cidrs: Vec::new(),
            public_ip: None,
            backend_type: None,
            backend_data: None,
        }
    }

    /// Parses and validates one JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: NodeRecord =
            serde_json::from_slice(bytes).map_err(|e| RecordError::Malformed(e.to_string()))?;
        record.validate()?;
        Ok(record)
    }

    /// The document as pretty JSON, newline terminated.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("a node record always serialises");
        out.push(b'\n');
        out
    }

    /// Checks what serde's types cannot: name syntax, CIDR alignment, MAC kind, VNI range.
    pub fn validate(&self) -> Result<(), RecordError> {
        if !is_dns_subdomain(&self.name) {
            return Err(RecordError::BadName(self.name.clone()));
        }
        let v4: Vec<IpNet> = self.pod_cidrs.iter().filter(|c| matches!(c, IpNet::V4(_))).copied().collect();
        if v4.len() > 1 {
            return Err(RecordError::SeveralIpv4Cidrs(v4));
        }
        let v6: Vec<IpNet> = self.pod_cidrs.iter().filter(|c| matches!(c, IpNet::V6(_))).copied().collect();
        if v6.len() > 1 {
            return Err(RecordError::SeveralIpv6Cidrs(v6));
        }
        if let Some(c) = self.pod_cidrs.iter().find(|c| c.trunc() != **c) {
            return Err(RecordError::UnalignedCidr(*c));
        }
        if let Some(data) = &self.backend_data {
            if !data.vtep_mac.is_unicast() {
                return Err(RecordError::BadVtepMac(data.vtep_mac));
            }
            if data.vni == 0 || data.vni > 0x00ff_ffff {
                return Err(RecordError::BadVni(data.vni));
            }
        }
        if let Some(ip) = self.public_ip {
            let bad = match ip {
                IpAddr::V4(v4) => v4.is_broadcast(),
                IpAddr::V6(v6) => v6.is_unicast_link_local(),
            };
            if bad || ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
                return Err(RecordError::BadPublicIp(ip));
            }
        }
        Ok(())
    }

    /// The node's IPv4 pod CIDR, if it has one.
    pub fn pod_cidr_v4(&self) -> Option<Ipv4Net> {
        self.pod_cidrs.iter().find_map(|c| match c {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
    }

    /// The node's IPv6 pod CIDR, if it has one.
    pub fn pod_cidr_v6(&self) -> Option<Ipv6Net> {
        self.pod_cidrs.iter().find_map(|c| match c {
            IpNet::V6(v6) => Some(*v6),
            IpNet::V4(_) => None,
        })
    }
}

/// RFC 1123 subdomain, as Kubernetes requires of node names: at most 253
/// characters of `[a-z0-9.-]`, starting and ending with an alphanumeric.
pub fn is_dns_subdomain(name: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !name.is_empty()
        && name.len() <= 253
        && name.chars().all(ok_char)
        && alnum(name.chars().next())
        && alnum(name.chars().last())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FULL: &str = r#"{"name":"n1","podCIDRs":["10.244.1.0/24"],"publicIP":"198.18.7.11",
        "backendType":"vxlan","backendData":{"vni":1,"vtepMAC":"d6:b7:58:fb:c2:19"}}"#;

    #[test]
    fn parses_full_record() {
        let r = NodeRecord::from_json(FULL.as_bytes()).unwrap();
        assert_eq!(r.name, "n1");
        assert_eq!(r.pod_cidr_v4(), Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(r.public_ip, Some(std::net::Ipv4Addr::new(198, 18, 7, 11).into()));
        assert_eq!(r.backend_data.unwrap().vni, 1);
        let again = NodeRecord::from_json(&r.to_json()).unwrap();
        assert_eq!(again, r);
    }

    #[test]
    fn a_dual_stack_record_has_one_cidr_of_each_family() {
        let r = NodeRecord::from_json(br#"{"name":"n1","podCIDRs":["10.244.1.0/24","fd00:10:244:1::/64"]}"#)
            .unwrap();
        assert_eq!(r.pod_cidr_v4(), Some("10.244.1.0/24".parse().unwrap()));
        assert_eq!(r.pod_cidr_v6(), Some("fd00:10:244:1::/64".parse().unwrap()));
    }

    #[test]
    fn incomplete_record_is_valid() {
        let r = NodeRecord::from_json(br#"{"name":"n2"}"#).unwrap();
        assert_eq!(r.pod_cidr_v4(), None);
    }

    #[test]
    fn rejects_bad_records() {
        type IsExpected = fn(&RecordError) -> bool;
        let cases: &[(&str, IsExpected)] = &[
            (r#"{"name":"n1","podCIDRs":["10.244.1.5/24"]}"#, |e| matches!(e, RecordError::UnalignedCidr(_))),
            (r#"{"name":"N_1"}"#, |e| matches!(e, RecordError::BadName(_))),
            (r#"{"name":"n1","podCIDRs":["10.1.0.0/24","10.2.0.0/24"]}"#, |e| {
                matches!(e, RecordError::SeveralIpv4Cidrs(_))
            }),
            (r#"{"name":"n1","podCIDRs":["fd00:1::/64","fd00:2::/64"]}"#, |e| {
                matches!(e, RecordError::SeveralIpv6Cidrs(_))
            }),
            (r#"{"name":"n1","podCIDRs":["fd00:1::1/64"]}"#, |e| matches!(e, RecordError::UnalignedCidr(_))),
            (r#"{"name":"n1","backendData":{"vni":1,"vtepMAC":"01:00:5e:00:00:01"}}"#, |e| {
                matches!(e, RecordError::BadVtepMac(_))
            }),
            (r#"{"name":"n1","backendData":{"vni":16777216,"vtepMAC":"02:00:00:00:00:01"}}"#, |e| {
                matches!(e, RecordError::BadVni(_))
            }),
            (r#"{"name":"n1","publicIP":"127.0.0.1"}"#, |e| matches!(e, RecordError::BadPublicIp(_))),
            (r#"{"name":"n1","publicIP":"not-an-ip"}"#, |e| matches!(e, RecordError::Malformed(_))),
            (r#"{"name":"n1","surprise":1}"#, |e| matches!(e, RecordError::Malformed(_))),
            ("{", |e| matches!(e, RecordError::Malformed(_))),
        ];
        for (doc, is_expected) in cases {
            let err = NodeRecord::from_json(doc.as_bytes()).unwrap_err();
            assert!(is_expected(&err), "{doc}: got {err}");
        }
    }

    proptest! {
        #[test]
        fn from_json_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = NodeRecord::from_json(&bytes);
        }
    }
}
