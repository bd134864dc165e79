//! The network configuration every agent of one cluster shares.
//!
//! ```json
//! {"network":"10.244.0.0/16","subnetLen":24,"ipMasq":true,
//!  "backend":{"type":"vxlan","vni":1,"port":8472}}
//! ```
//! Every field but `network` has a default; `backend.mtu` defaults to the
//! underlay MTU − 50 ([`crate::VXLAN_IPV4_OVERHEAD`]).

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::{BackendType, DEFAULT_VNI, DEFAULT_VXLAN_PORT};

/// Cluster-wide network configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct NetConfig {
    /// The cluster CIDR every node's pod subnet is carved from.
    pub network: Ipv4Net,
    /// The prefix length of one node's pod subnet.
    #[serde(default = "default_subnet_len")]
    pub subnet_len: u8,
    /// The encapsulation.
    #[serde(default)]
    pub backend: BackendConfig,
    /// Masquerade pods' traffic that leaves the cluster network (Flannel's
    /// `ipMasq`); pod-to-pod and pod-to-node traffic never is.
    #[serde(default = "default_ip_masq")]
    pub ip_masq: bool,
}

/// The encapsulation's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct BackendConfig {
    /// Always `vxlan` today.
    #[serde(rename = "type", default = "default_backend_type")]
    pub kind: BackendType,
    /// VXLAN network identifier.
    #[serde(default = "default_vni")]
    pub vni: u32,
    /// UDP destination port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// The overlay MTU; `None` means underlay MTU − 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

fn default_ip_masq() -> bool {
    true
}
fn default_subnet_len() -> u8 {
    24
}
fn default_backend_type() -> BackendType {
    BackendType::Vxlan
}
fn default_vni() -> u32 {
    DEFAULT_VNI
}
fn default_port() -> u16 {
    DEFAULT_VXLAN_PORT
}

impl Default for BackendConfig {
    fn default() -> Self {
        BackendConfig { kind: BackendType::Vxlan, vni: DEFAULT_VNI, port: DEFAULT_VXLAN_PORT, mtu: None }
    }
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            network: Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).expect("16 is a valid prefix"),
            subnet_len: default_subnet_len(),
            backend: BackendConfig::default(),
            ip_masq: true,
        }
    }
}

/// Why a network configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid JSON of the config's shape.
    #[error("malformed network config: {0}")]
    Malformed(String),
    /// `network` has host bits set.
    #[error("network {0} is not a network address")]
    UnalignedNetwork(Ipv4Net),
    /// `subnetLen` is not longer than the network's prefix, or leaves fewer than 4 addresses.
    #[error("subnetLen {subnet_len} must be in {min}..=30 for network {network}")]
    BadSubnetLen {
        /// The configured length.
        subnet_len: u8,
        /// The smallest allowed value.
        min: u8,
        /// The network.
        network: Ipv4Net,
    },
    /// VNI zero or wider than 24 bits.
    #[error("VNI {0} must be in 1..=16777215")]
    BadVni(u32),
    /// Port zero.
    #[error("the VXLAN port cannot be 0")]
    BadPort,
    /// MTU below the IPv4 minimum of 576 or above 65535.
    #[error("MTU {0} must be in 576..=65535")]
    BadMtu(u32),
}

impl NetConfig {
    /// Parses and validates a JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let cfg: NetConfig =
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Malformed(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the ranges serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.network.trunc() != self.network {
            return Err(ConfigError::UnalignedNetwork(self.network));
        }
        let min = self.network.prefix_len() + 1;
        if self.subnet_len < min || self.subnet_len > 30 {
            return Err(ConfigError::BadSubnetLen {
                subnet_len: self.subnet_len,
                min,
                network: self.network,
            });
        }
        if self.backend.vni == 0 || self.backend.vni > 0x00ff_ffff {
            return Err(ConfigError::BadVni(self.backend.vni));
        }
        if self.backend.port == 0 {
            return Err(ConfigError::BadPort);
        }
        if let Some(mtu) = self.backend.mtu {
            if !(576..=65535).contains(&mtu) {
                return Err(ConfigError::BadMtu(mtu));
            }
        }
        Ok(())
    }

    /// The overlay MTU for an underlay of `underlay_mtu`.
    pub fn overlay_mtu(&self, underlay_mtu: u32) -> u32 {
        self.backend.mtu.unwrap_or(underlay_mtu.saturating_sub(crate::VXLAN_IPV4_OVERHEAD))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let cfg = NetConfig::from_json(br#"{"network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(cfg, NetConfig::default());
        assert_eq!(cfg.overlay_mtu(1500), 1450);
        assert!(cfg.ip_masq, "egress masquerade is on by default");
        let off = NetConfig::from_json(br#"{"network":"10.244.0.0/16","ipMasq":false}"#).unwrap();
        assert!(!off.ip_masq);
    }

    #[test]
    fn rejects_bad_configs() {
        for doc in [
            r#"{"network":"10.244.1.0/16"}"#,
            r#"{"network":"10.244.0.0/16","subnetLen":16}"#,
            r#"{"network":"10.244.0.0/16","subnetLen":31}"#,
            r#"{"network":"10.244.0.0/16","backend":{"vni":0}}"#,
            r#"{"network":"10.244.0.0/16","backend":{"port":0}}"#,
            r#"{"network":"10.244.0.0/16","backend":{"mtu":100}}"#,
            r#"{"network":"10.244.0.0/16","backend":{"type":"udp"}}"#,
            r#"{"network":"10.244.0.0/16","typo":1}"#,
        ] {
            assert!(NetConfig::from_json(doc.as_bytes()).is_err(), "{doc}");
        }
    }
}
