//! Kubernetes Node annotations and pod CIDRs → the node record felt uses:
//! felt's annotation keys, and every way a Node can fail to make a record.
//! Pure (the caller takes the fields out of the Node object), so the parser
//! of this untrusted input is fuzzed (`overlay/fuzz`, target `annotations`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::IpNet;

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

/// Why a Node does not make a record.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A pod CIDR that does not parse.
    #[error("spec.podCIDRs: `{0}` is not a CIDR")]
    PodCidr(String),
    /// A backend felt does not speak.
    #[error("{BACKEND_TYPE}: unknown backend `{0}`")]
    Backend(String),
    /// Backend data that does not parse.
    #[error("{BACKEND_DATA}: `{value}` is not backend data")]
    BackendData {
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

/// Reduces a Node's fields to the record felt uses, or says why it cannot.
/// With `honour_overwrite`, an operator's `public-ip-overwrite` takes the
/// place of `public-ip`.
pub fn record(node: NodeFields<'_>, honour_overwrite: bool) -> Result<NodeRecord, NodeError> {
    let mut record = NodeRecord::new(node.name);
    for c in node.pod_cidrs {
        record.pod_cidrs.push(c.parse::<IpNet>().map_err(|_| NodeError::PodCidr(c.clone()))?);
    }
    let ann = node.annotations;
    if let Some(t) = ann.get(BACKEND_TYPE) {
        record.backend_type = Some(match t.as_str() {
            "vxlan" => BackendType::Vxlan,
            other => return Err(NodeError::Backend(other.to_owned())),
        });
    }
    if let Some(d) = ann.get(BACKEND_DATA) {
        record.backend_data = Some(
            serde_json::from_str::<BackendData>(d)
                .map_err(|source| NodeError::BackendData { value: d.clone(), source })?,
        );
    }
    let ip = |key: &'static str| -> Result<Option<Ipv4Addr>, NodeError> {
        ann.get(key)
            .map(|v| v.parse::<Ipv4Addr>().map_err(|_| NodeError::Address { key, value: v.clone() }))
            .transpose()
    };
    let overwrite = if honour_overwrite { ip(PUBLIC_IP_OVERWRITE)? } else { None };
    record.public_ip = overwrite.or(ip(PUBLIC_IP)?);
    record.validate()?;
    Ok(record)
}
