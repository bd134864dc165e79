//! Kubernetes Node annotations and pod CIDRs → the node record felt uses:
//! the annotation keys of each dialect felt speaks, and every way a Node
//! can fail to make a record. Pure (the caller takes the fields out of the
//! Node object), so the parser of this untrusted input is fuzzed
//! (`overlay/fuzz`, target `annotations`).
//!
//! Two dialects: felt's own (`felt.network/`, backend data
//! `{"vni":1,"vtepMAC":"…"}`) and Flannel's (`flannel.alpha.coreos.com/`,
//! backend data `{"VNI":1,"VtepMAC":"…"}`, plus `kube-subnet-manager:
//! "true"`), which felt speaks in `--compat flannel` so that felt and
//! flanneld nodes are one fabric.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::MacAddr;
use crate::node::{BackendData, BackendType, NodeRecord, RecordError};

/// The annotation prefix felt owns.
pub const PREFIX: &str = "felt.network/";
/// `felt.network/backend-type`.
pub const BACKEND_TYPE: &str = "felt.network/backend-type";
/// `felt.network/backend-data`: `{"vni":1,"vtepMAC":"…"}`.
pub const BACKEND_DATA: &str = "felt.network/backend-data";
/// `felt.network/public-ip`.
pub const PUBLIC_IP: &str = "felt.network/public-ip";
/// `felt.network/public-ip-overwrite`, set by an operator.
pub const PUBLIC_IP_OVERWRITE: &str = "felt.network/public-ip-overwrite";

/// Flannel's annotation prefix (its `--kube-annotation-prefix` default).
pub const FLANNEL_PREFIX: &str = "flannel.alpha.coreos.com/";
/// `flannel.alpha.coreos.com/kube-subnet-manager`: `"true"` on every node
/// whose lease Flannel's Kubernetes subnet manager counts.
pub const FLANNEL_KUBE_SUBNET_MANAGER: &str = "flannel.alpha.coreos.com/kube-subnet-manager";

/// Whose annotations a node carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// felt's own: `felt.network/`.
    #[default]
    Felt,
    /// Flannel's: `flannel.alpha.coreos.com/` (`--compat flannel`).
    Flannel,
}

/// The annotation keys of one dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keys {
    /// `…/backend-type`.
    pub backend_type: &'static str,
    /// `…/backend-data`.
    pub backend_data: &'static str,
    /// `…/public-ip`.
    pub public_ip: &'static str,
    /// `…/public-ip-overwrite`.
    pub public_ip_overwrite: &'static str,
    /// `…/kube-subnet-manager`, which the dialect sets to `"true"`.
    pub kube_subnet_manager: Option<&'static str>,
}

/// Flannel's vxlan backend data, as flanneld v0.2x writes it (v0.13 wrote
/// no `VNI`; such a peer's VNI is taken to be Flannel's default, 1).
#[derive(Serialize, Deserialize)]
struct FlannelBackendData {
    #[serde(rename = "VNI", default = "flannel_default_vni")]
    vni: u32,
    #[serde(rename = "VtepMAC")]
    vtep_mac: MacAddr,
}

fn flannel_default_vni() -> u32 {
    crate::DEFAULT_VNI
}

impl Dialect {
    /// Its annotation keys.
    pub const fn keys(self) -> Keys {
        match self {
            Dialect::Felt => Keys {
                backend_type: BACKEND_TYPE,
                backend_data: BACKEND_DATA,
                public_ip: PUBLIC_IP,
                public_ip_overwrite: PUBLIC_IP_OVERWRITE,
                kube_subnet_manager: None,
            },
            Dialect::Flannel => Keys {
                backend_type: "flannel.alpha.coreos.com/backend-type",
                backend_data: "flannel.alpha.coreos.com/backend-data",
                public_ip: "flannel.alpha.coreos.com/public-ip",
                public_ip_overwrite: "flannel.alpha.coreos.com/public-ip-overwrite",
                kube_subnet_manager: Some(FLANNEL_KUBE_SUBNET_MANAGER),
            },
        }
    }

    /// Backend data as this dialect writes it: felt's
    /// `{"vni":1,"vtepMAC":"…"}` or Flannel's `{"VNI":1,"VtepMAC":"…"}`
    /// (flanneld reads its own VTEP MAC back out of exactly that shape).
    pub fn backend_data_json(self, d: &BackendData) -> String {
        let json = match self {
            Dialect::Felt => serde_json::to_string(d),
            Dialect::Flannel => {
                serde_json::to_string(&FlannelBackendData { vni: d.vni, vtep_mac: d.vtep_mac })
            }
        };
        json.expect("backend data serialises")
    }

    fn parse_backend_data(self, s: &str) -> Result<BackendData, serde_json::Error> {
        match self {
            Dialect::Felt => serde_json::from_str(s),
            Dialect::Flannel => serde_json::from_str::<FlannelBackendData>(s)
                .map(|f| BackendData { vni: f.vni, vtep_mac: f.vtep_mac }),
        }
    }

    /// The annotations that publish `record` in this dialect.
    pub fn annotations(self, record: &NodeRecord) -> BTreeMap<&'static str, String> {
        let keys = self.keys();
        let mut want = BTreeMap::new();
        if let Some(t) = record.backend_type {
            want.insert(keys.backend_type, t.to_string());
        }
        if let Some(d) = &record.backend_data {
            want.insert(keys.backend_data, self.backend_data_json(d));
        }
        if let Some(ip) = record.public_ip {
            want.insert(keys.public_ip, ip.to_string());
        }
        if let Some(k) = keys.kube_subnet_manager {
            want.insert(k, "true".to_owned());
        }
        want
    }
}

/// Why a Node does not make a record.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A pod CIDR that does not parse.
    #[error("spec.podCIDRs: `{0}` is not a CIDR")]
    PodCidr(String),
    /// A backend felt does not speak.
    #[error("{key}: unknown backend `{value}`")]
    Backend {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// Backend data that does not parse.
    #[error("{key}: `{value}` is not backend data")]
    BackendData {
        /// The annotation.
        key: &'static str,
        /// The annotation's value.
        value: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// An address annotation that is not an IPv4 address.
    #[error("{key}: `{value}` is not an IPv4 address")]
    Address {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// The record the Node makes is invalid.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// What felt reads of a Node.
#[derive(Debug, Clone, Copy)]
pub struct NodeFields<'a> {
    /// `metadata.name`.
    pub name: &'a str,
    /// `spec.podCIDRs`, or `spec.podCIDR` when that is empty.
    pub pod_cidrs: &'a [String],
    /// `metadata.annotations`.
    pub annotations: &'a BTreeMap<String, String>,
}

/// Reduces a Node's fields, read in `dialect`, to the record felt uses, or
/// says why it cannot. With `honour_overwrite`, an operator's
/// `public-ip-overwrite` takes the place of `public-ip`. felt's own dialect
/// reads a Node that carries none of felt's annotations but Flannel's
/// backend data in Flannel's: a node still on flanneld, or on felt in
/// `--compat flannel`, is a peer of a node that has left compat mode.
pub fn record(
    node: NodeFields<'_>,
    dialect: Dialect,
    honour_overwrite: bool,
) -> Result<NodeRecord, NodeError> {
    let ann = node.annotations;
    let felt = Dialect::Felt.keys();
    let dialect = match dialect {
        Dialect::Felt
            if ![felt.backend_type, felt.backend_data, felt.public_ip]
                .iter()
                .any(|k| ann.contains_key(*k))
                && ann.contains_key(Dialect::Flannel.keys().backend_data) =>
        {
            Dialect::Flannel
        }
        d => d,
    };
    let keys = dialect.keys();
    let mut record = NodeRecord::new(node.name);
    for c in node.pod_cidrs {
        record.pod_cidrs.push(c.parse::<IpNet>().map_err(|_| NodeError::PodCidr(c.clone()))?);
    }
    if let Some(t) = ann.get(keys.backend_type) {
        record.backend_type = Some(match t.as_str() {
            "vxlan" => BackendType::Vxlan,
            other => return Err(NodeError::Backend { key: keys.backend_type, value: other.to_owned() }),
        });
    }
    if let Some(d) = ann.get(keys.backend_data) {
        record.backend_data =
            Some(dialect.parse_backend_data(d).map_err(|source| NodeError::BackendData {
                key: keys.backend_data,
                value: d.clone(),
                source,
            })?);
    }
    let ip = |key: &'static str| -> Result<Option<IpAddr>, NodeError> {
        ann.get(key)
            .map(|v| v.parse::<IpAddr>().map_err(|_| NodeError::Address { key, value: v.clone() }))
            .transpose()
    };
    let overwrite = if honour_overwrite { ip(keys.public_ip_overwrite)? } else { None };
    record.public_ip = overwrite.or(ip(keys.public_ip)?);
    record.validate()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(ann: &'a BTreeMap<String, String>, cidrs: &'a [String]) -> NodeFields<'a> {
        NodeFields { name: "n2", pod_cidrs: cidrs, annotations: ann }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn flannel_dialect_reads_what_flanneld_writes() {
        let cidrs = ["10.244.2.0/24".to_owned()];
        // flanneld v0.28.10 on a lab node, and v0.13 (no VNI).
        for data in [r#"{"VNI":1,"VtepMAC":"2a:ab:65:a4:e3:2a"}"#, r#"{"VtepMAC":"2a:ab:65:a4:e3:2a"}"#] {
            let ann = map(&[
                ("flannel.alpha.coreos.com/backend-data", data),
                ("flannel.alpha.coreos.com/backend-type", "vxlan"),
                ("flannel.alpha.coreos.com/kube-subnet-manager", "true"),
                ("flannel.alpha.coreos.com/public-ip", "198.18.238.13"),
            ]);
            let r = record(fields(&ann, &cidrs), Dialect::Flannel, true).unwrap();
            let d = r.backend_data.unwrap();
            assert_eq!((d.vni, d.vtep_mac.to_string()), (1, "2a:ab:65:a4:e3:2a".to_owned()));
            assert_eq!(r.public_ip, Some(std::net::Ipv4Addr::new(198, 18, 238, 13).into()));
            // Read as felt's, a Node with only Flannel's annotations is read in
            // Flannel's: a peer of a node that left compat mode.
            assert_eq!(record(fields(&ann, &cidrs), Dialect::Felt, true).unwrap(), r);
            // felt's own annotations, once there, are the ones felt reads.
            let mut both = ann.clone();
            both.insert(PUBLIC_IP.to_owned(), "198.18.238.99".to_owned());
            let felt = record(fields(&both, &cidrs), Dialect::Felt, true).unwrap();
            assert_eq!(
                (felt.backend_data, felt.public_ip),
                (None, Some(std::net::Ipv4Addr::new(198, 18, 238, 99).into()))
            );
        }
    }

    #[test]
    fn each_dialect_reads_back_what_it_writes() {
        let mut r = NodeRecord::new("n2");
        r.pod_cidrs.push("10.244.2.0/24".parse().unwrap());
        r.public_ip = Some(std::net::Ipv4Addr::new(198, 18, 0, 12).into());
        r.backend_type = Some(BackendType::Vxlan);
        r.backend_data = Some(BackendData { vni: 7, vtep_mac: "02:f1:00:00:00:02".parse().unwrap() });
        for dialect in [Dialect::Felt, Dialect::Flannel] {
            let ann: BTreeMap<String, String> =
                dialect.annotations(&r).into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            let cidrs = ["10.244.2.0/24".to_owned()];
            assert_eq!(record(fields(&ann, &cidrs), dialect, true).unwrap(), r, "{dialect:?}");
        }
        let flannel = Dialect::Flannel.annotations(&r);
        // Byte for byte what flanneld writes, which it parses its MAC back out of.
        assert_eq!(
            flannel[Dialect::Flannel.keys().backend_data],
            r#"{"VNI":7,"VtepMAC":"02:f1:00:00:00:02"}"#
        );
        assert_eq!(flannel[FLANNEL_KUBE_SUBNET_MANAGER], "true");
        assert!(Dialect::Felt.annotations(&r).keys().all(|k| k.starts_with(PREFIX)));
        assert!(flannel.keys().all(|k| k.starts_with(FLANNEL_PREFIX)));
    }

    #[test]
    fn flannel_errors_name_flannels_keys() {
        let cidrs = ["10.244.2.0/24".to_owned()];
        let ann = map(&[("flannel.alpha.coreos.com/backend-data", r#"{"VNI":1}"#)]);
        let err = record(fields(&ann, &cidrs), Dialect::Flannel, true).unwrap_err();
        assert!(err.to_string().starts_with("flannel.alpha.coreos.com/backend-data: "), "{err}");
        let ann = map(&[("flannel.alpha.coreos.com/backend-type", "host-gw")]);
        let err = record(fields(&ann, &cidrs), Dialect::Flannel, true).unwrap_err();
        assert_eq!(err.to_string(), "flannel.alpha.coreos.com/backend-type: unknown backend `host-gw`");
    }
}
