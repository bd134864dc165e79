//! The network configuration every agent of one cluster shares.
//!
//! ```json
//! {"network":"10.244.0.0/16","subnetLen":24,"ipMasq":true,
//!  "ipv6Network":"fd00:10:244::/56","ipv6SubnetLen":64,
//!  "backend":{"type":"vxlan","vni":1,"port":8472}}
//! ```
//! Every field but the networks has a default; `backend.mtu` defaults to the
//! underlay MTU − 50 ([`crate::VXLAN_IPV4_OVERHEAD`]). `network` (IPv4) and
//! `ipv6Network` choose the families, at least one: `network` alone is an
//! IPv4 cluster, both make it dual-stack, `ipv6Network` alone IPv6-only.
//! Every node leases a subnet of each family (`subnetLen`, default 24;
//! `ipv6SubnetLen`, default 64), and IPv6 pod traffic crosses the same VXLAN
//! device and IPv4 underlay as IPv4's.

use std::collections::BTreeMap;

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::{BackendType, DEFAULT_VNI, DEFAULT_VXLAN_PORT};

/// Cluster-wide network configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct NetConfig {
    /// The IPv4 cluster CIDR every node's IPv4 pod subnet is carved from;
    /// `None` in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Ipv4Net>,
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
    /// The cluster's IPv6 pod network, when it is dual-stack or IPv6-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<Ipv6Net>,
    /// The prefix length of one node's IPv6 pod subnet.
    #[serde(default = "default_ipv6_subnet_len")]
    pub ipv6_subnet_len: u8,
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
    /// The overlay MTU; `None` means underlay MTU − 50 (− 70 over an IPv6 underlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

fn default_ip_masq() -> bool {
    true
}
fn default_subnet_len() -> u8 {
    24
}
fn default_ipv6_subnet_len() -> u8 {
    64
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
            network: Some(
                Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, 0, 0), 16).expect("16 is a valid prefix"),
            ),
            subnet_len: default_subnet_len(),
            backend: BackendConfig::default(),
            ip_masq: true,
            ipv6_network: None,
            ipv6_subnet_len: default_ipv6_subnet_len(),
        }
    }
}

/// Why a network configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not valid JSON of the config's shape.
    #[error("malformed network config: {0}")]
    Malformed(String),
    /// Neither `network` nor `ipv6Network`.
    #[error("no pod network: set network (IPv4), ipv6Network, or both")]
    NoNetwork,
    /// An MTU IPv6 cannot run over (below 1280) in a cluster with IPv6.
    #[error("MTU {0} is below IPv6's minimum of 1280, and the cluster has ipv6Network")]
    MtuTooSmallForIpv6(u32),
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
    /// `ipv6Network` has host bits set.
    #[error("ipv6Network {0} is not a network address")]
    UnalignedIpv6Network(Ipv6Net),
    /// `ipv6SubnetLen` is not longer than the IPv6 network's prefix, or
    /// leaves fewer than 256 addresses.
    #[error("ipv6SubnetLen {subnet_len} must be in {min}..=120 for ipv6Network {network}")]
    BadIpv6SubnetLen {
        /// The configured length.
        subnet_len: u8,
        /// The smallest allowed value.
        min: u8,
        /// The network.
        network: Ipv6Net,
    },
    /// MTU below the IPv4 minimum of 576 or above 65535.
    #[error("MTU {0} must be in 576..=65535")]
    BadMtu(u32),
    /// A Flannel setting felt does not implement.
    #[error("Flannel's {0}")]
    Unsupported(String),
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
        if self.network.is_none() && self.ipv6_network.is_none() {
            return Err(ConfigError::NoNetwork);
        }
        if let Some(network) = self.network {
            if network.trunc() != network {
                return Err(ConfigError::UnalignedNetwork(network));
            }
            let min = network.prefix_len() + 1;
            if self.subnet_len < min || self.subnet_len > 30 {
                return Err(ConfigError::BadSubnetLen { subnet_len: self.subnet_len, min, network });
            }
        }
        if let Some(network) = self.ipv6_network {
            if network.trunc() != network {
                return Err(ConfigError::UnalignedIpv6Network(network));
            }
            let min = network.prefix_len() + 1;
            if self.ipv6_subnet_len < min || self.ipv6_subnet_len > 120 {
                return Err(ConfigError::BadIpv6SubnetLen { subnet_len: self.ipv6_subnet_len, min, network });
            }
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
            if mtu < 1280 && self.ipv6_network.is_some() {
                return Err(ConfigError::MtuTooSmallForIpv6(mtu));
            }
        }
        Ok(())
    }

    /// Parses Flannel's `net-conf.json` (the `kube-flannel-cfg` ConfigMap's
    /// key), for `--compat flannel`: `{"Network":"10.244.0.0/16",
    /// "Backend":{"Type":"vxlan"}}`. Keys match case-insensitively, as Go's
    /// JSON decoder matches them for flanneld. Settings felt leaves to
    /// others are accepted and named in the returned notes (`SubnetMin`,
    /// `SubnetMax`: Kubernetes assigns the pod CIDRs; `EnableNFTables`:
    /// felt always uses nftables); a setting felt cannot honour is an error
    /// (a backend other than vxlan, GBP, learning, DirectRouting, IPv6).
    /// `ipMasq` is on, as `kube-flannel.yml` runs flanneld with `--ip-masq`.
    pub fn from_flannel_json(bytes: &[u8]) -> Result<(Self, Vec<String>), ConfigError> {
        use serde_json::Value;
        let malformed = |e: String| ConfigError::Malformed(e);
        let lower = |v: Value, what: &str| -> Result<BTreeMap<String, Value>, ConfigError> {
            match v {
                Value::Object(m) => Ok(m.into_iter().map(|(k, v)| (k.to_ascii_lowercase(), v)).collect()),
                _ => Err(malformed(format!("{what} must be a JSON object"))),
            }
        };
        let top =
            lower(serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?, "the document")?;
        let mut notes = Vec::new();
        let mut cfg = NetConfig::default();
        let truthy = |v: Option<&Value>| v.is_some_and(|v| v.as_bool() == Some(true));
        let unsupported = |what: &str| ConfigError::Unsupported(what.to_owned());
        if top.get("enableipv4").is_some_and(|v| v.as_bool() == Some(false)) {
            return Err(unsupported("EnableIPv4 false (IPv6-only networks)"));
        }
        if truthy(top.get("enableipv6")) {
            // Flannel's dual-stack runs a second VXLAN device (`flannel-v6.1`)
            // with its own MAC and annotations; felt's carries IPv6 on its one
            // device, so the two cannot exchange IPv6 traffic yet.
            return Err(unsupported(
                "EnableIPv6 beside Flannel nodes (felt's dual-stack uses one device, Flannel's a second \
                 one, flannel-v6.1; run dual-stack with felt's own conventions, without --compat flannel)",
            ));
        }
        cfg.network = match top.get("network") {
            Some(Value::String(s)) => {
                Some(s.parse().map_err(|_| malformed(format!("Network `{s}` is not an IPv4 CIDR")))?)
            }
            Some(other) => return Err(malformed(format!("Network {other} is not a string"))),
            None => return Err(malformed("Network is missing".to_owned())),
        };
        if let Some(v) = top.get("subnetlen") {
            cfg.subnet_len = v
                .as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| malformed(format!("SubnetLen {v} is not a prefix length")))?;
        }
        for (key, why) in [
            ("subnetmin", "SubnetMin is ignored: Kubernetes assigns each node's pod CIDR"),
            ("subnetmax", "SubnetMax is ignored: Kubernetes assigns each node's pod CIDR"),
            ("enablenftables", "EnableNFTables is ignored: felt always uses nftables"),
        ] {
            if top.contains_key(key) {
                notes.push(why.to_owned());
            }
        }
        let known = [
            "enableipv4",
            "enableipv6",
            "network",
            "subnetlen",
            "subnetmin",
            "subnetmax",
            "enablenftables",
            "backend",
        ];
        for k in top.keys().filter(|k| !known.contains(&k.as_str())) {
            notes.push(format!("{k} is not a setting felt knows; ignored"));
        }
        if let Some(b) = top.get("backend") {
            let b = lower(b.clone(), "Backend")?;
            match b.get("type").and_then(Value::as_str) {
                Some(t) if t.eq_ignore_ascii_case("vxlan") => {}
                Some(t) => return Err(unsupported(&format!("backend `{t}` (felt speaks vxlan)"))),
                None => return Err(malformed("Backend.Type is missing".to_owned())),
            }
            let number = |key: &str, name: &str| -> Result<Option<u64>, ConfigError> {
                b.get(key)
                    .map(|v| {
                        v.as_u64().ok_or_else(|| malformed(format!("Backend.{name} {v} is not a number")))
                    })
                    .transpose()
            };
            if let Some(vni) = number("vni", "VNI")? {
                cfg.backend.vni = u32::try_from(vni).map_err(|_| ConfigError::BadVni(u32::MAX))?;
            }
            // Flannel passes port 0 to the kernel, which then uses 8472.
            if let Some(port) = number("port", "Port")?.filter(|p| *p != 0) {
                cfg.backend.port = u16::try_from(port).map_err(|_| ConfigError::BadPort)?;
            }
            if let Some(mtu) = number("mtu", "MTU")?.filter(|m| *m != 0) {
                cfg.backend.mtu = Some(u32::try_from(mtu).map_err(|_| ConfigError::BadMtu(u32::MAX))?);
            }
            for (key, name) in [("gbp", "GBP"), ("learning", "Learning"), ("directrouting", "DirectRouting")]
            {
                if truthy(b.get(key)) {
                    return Err(unsupported(&format!("vxlan {name}")));
                }
            }
        } else {
            return Err(malformed("Backend is missing".to_owned()));
        }
        cfg.validate()?;
        Ok((cfg, notes))
    }

    /// Whether the cluster is dual-stack.
    pub fn dual_stack(&self) -> bool {
        self.network.is_some() && self.ipv6_network.is_some()
    }

    /// The overlay MTU for an underlay of `underlay_mtu`, IPv6 (`ipv6`:
    /// − 70) or IPv4 (− 50).
    pub fn overlay_mtu(&self, underlay_mtu: u32, ipv6: bool) -> u32 {
        let overhead = if ipv6 { crate::VXLAN_IPV6_OVERHEAD } else { crate::VXLAN_IPV4_OVERHEAD };
        self.backend.mtu.unwrap_or(underlay_mtu.saturating_sub(overhead))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_in() {
        let cfg = NetConfig::from_json(br#"{"network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(cfg, NetConfig::default());
        assert_eq!(cfg.overlay_mtu(1500, false), 1450);
        assert_eq!(cfg.overlay_mtu(1500, true), 1430, "an IPv6 underlay's header is 20 bytes longer");
        assert!(cfg.ip_masq, "egress masquerade is on by default");
        let off = NetConfig::from_json(br#"{"network":"10.244.0.0/16","ipMasq":false}"#).unwrap();
        assert!(!off.ip_masq);
    }

    #[test]
    fn an_ipv6_network_makes_it_dual_stack() {
        let cfg =
            NetConfig::from_json(br#"{"network":"10.244.0.0/16","ipv6Network":"fd00:10:244::/56"}"#).unwrap();
        assert!(cfg.dual_stack() && !NetConfig::default().dual_stack());
        assert_eq!(cfg.ipv6_network, Some("fd00:10:244::/56".parse().unwrap()));
        assert_eq!(cfg.ipv6_subnet_len, 64);
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(json.contains(r#""ipv6Network":"fd00:10:244::/56","ipv6SubnetLen":64"#), "{json}");
        assert_eq!(NetConfig::from_json(json.as_bytes()).unwrap(), cfg);
        let err = NetConfig::from_json(
            br#"{"network":"10.244.0.0/16","ipv6Network":"fd00:10:244::/56","ipv6SubnetLen":48}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "ipv6SubnetLen 48 must be in 57..=120 for ipv6Network fd00:10:244::/56");
    }

    #[test]
    fn an_ipv6_network_alone_makes_it_ipv6_only() {
        let cfg = NetConfig::from_json(br#"{"ipv6Network":"fd00:10:244::/56"}"#).unwrap();
        assert_eq!((cfg.network, cfg.ipv6_network), (None, Some("fd00:10:244::/56".parse().unwrap())));
        assert!(!cfg.dual_stack());
        let json = serde_json::to_string(&cfg).unwrap();
        assert!(!json.contains(r#""network""#), "no IPv4 network is written: {json}");
        assert_eq!(NetConfig::from_json(json.as_bytes()).unwrap(), cfg);
        for (doc, want) in [
            (r#"{}"#, "no pod network: set network (IPv4), ipv6Network, or both"),
            (r#"{"subnetLen":24}"#, "no pod network"),
            (
                r#"{"ipv6Network":"fd00:10:244::/56","backend":{"mtu":1200}}"#,
                "MTU 1200 is below IPv6's minimum of 1280, and the cluster has ipv6Network",
            ),
        ] {
            let err = NetConfig::from_json(doc.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{doc}: {err}");
        }
        let v4 = NetConfig::from_json(br#"{"network":"10.244.0.0/16","backend":{"mtu":1200}}"#).unwrap();
        assert_eq!(v4.backend.mtu, Some(1200), "IPv4-only clusters keep IPv4's minimum of 576");
    }

    #[test]
    fn reads_flannels_net_conf() {
        // kube-flannel.yml's, byte for byte.
        let doc = br#"{
      "Network": "10.244.0.0/16",
      "EnableNFTables": false,
      "Backend": {
        "Type": "vxlan"
      }
    }"#;
        let (cfg, notes) = NetConfig::from_flannel_json(doc).unwrap();
        assert_eq!(cfg, NetConfig::default());
        assert_eq!(notes, ["EnableNFTables is ignored: felt always uses nftables"]);
        let doc = br#"{"network":"10.8.0.0/14","SubnetLen":23,"Backend":{"type":"VXLAN","VNI":4,"Port":4789,"MTU":1400}}"#;
        let (cfg, notes) = NetConfig::from_flannel_json(doc).unwrap();
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!((cfg.network.unwrap().to_string(), cfg.subnet_len), ("10.8.0.0/14".to_owned(), 23));
        assert_eq!((cfg.backend.vni, cfg.backend.port, cfg.backend.mtu), (4, 4789, Some(1400)));
        for (doc, want) in [
            (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"host-gw"}}"#, "backend `host-gw`"),
            (
                r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true}}"#,
                "DirectRouting",
            ),
            (r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"Backend":{"Type":"vxlan"}}"#, "flannel-v6.1"),
            (r#"{"Network":"10.244.0.0/16"}"#, "Backend is missing"),
            (r#"{"Backend":{"Type":"vxlan"}}"#, "Network is missing"),
            (r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","VNI":0}}"#, "VNI 0"),
            (r#"{"network":"10.244.0.0/16","subnetLen":24,"backend":{"type":"vxlan"}}"#, ""),
        ] {
            match NetConfig::from_flannel_json(doc.as_bytes()) {
                Err(e) => assert!(!want.is_empty() && e.to_string().contains(want), "{doc}: {e}"),
                Ok(_) => assert!(want.is_empty(), "{doc} was accepted"),
            }
        }
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
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd00:10:244::1/56"}"#,
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd00:10:244::/56","ipv6SubnetLen":56}"#,
            r#"{"network":"10.244.0.0/16","ipv6Network":"fd00:10:244::/56","ipv6SubnetLen":121}"#,
            r#"{"network":"10.244.0.0/16","ipv6Network":"10.245.0.0/16"}"#,
        ] {
            assert!(NetConfig::from_json(doc.as_bytes()).is_err(), "{doc}");
        }
    }
}
