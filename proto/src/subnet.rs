//! The subnet file: what the agent hands to the CNI plugin on its node.
//!
//! The format is Flannel's `subnet.env`, with felt's prefix, so operators
//! can read it with a shell:
//! ```text
//! FELT_NETWORK=10.244.0.0/16
//! FELT_SUBNET=10.244.1.1/24
//! FELT_MTU=1450
//! FELT_IPMASQ=false
//! FELT_IPV6_NETWORK=fd00:10:244::/56
//! FELT_IPV6_SUBNET=fd00:10:244:1::1/64
//! ```
//! `FELT_SUBNET` is the pods' gateway address (the subnet's first host) with
//! the subnet's prefix length, as Flannel writes it; the `IPV6` keys, in a
//! cluster with IPv6 only, likewise for IPv6 (Flannel's names too). An
//! IPv6-only cluster's file has no `FELT_NETWORK` and `FELT_SUBNET`.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};

/// The facts the CNI plugin needs from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetFile {
    /// The IPv4 cluster CIDR and this node's IPv4 pod subnet; `None` in an
    /// IPv6-only cluster.
    pub ipv4: Option<(Ipv4Net, Ipv4Net)>,
    /// The MTU to give pods.
    pub mtu: u32,
    /// Whether traffic leaving the cluster CIDR is masqueraded (the agent does it, with nftables).
    pub ip_masq: bool,
    /// The IPv6 cluster CIDR and this node's IPv6 pod subnet, in a
    /// dual-stack or IPv6-only cluster.
    pub ipv6: Option<(Ipv6Net, Ipv6Net)>,
}

/// Why a subnet file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetFileError {
    /// A line is not `KEY=VALUE`.
    #[error("line {0}: expected KEY=VALUE")]
    BadLine(usize),
    /// A value does not parse.
    #[error("{key}: bad value `{value}`")]
    BadValue {
        /// The key.
        key: &'static str,
        /// The value found.
        value: String,
    },
    /// A required key is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// Neither family's keys.
    #[error("no pod subnet: neither FELT_SUBNET nor FELT_IPV6_SUBNET")]
    NoSubnet,
}

impl SubnetFile {
    /// This node's IPv4 pod subnet, when the cluster has IPv4.
    pub fn subnet(&self) -> Option<Ipv4Net> {
        self.ipv4.map(|(_, subnet)| subnet)
    }

    /// This node's IPv6 pod subnet, when the cluster has IPv6.
    pub fn subnet6(&self) -> Option<Ipv6Net> {
        self.ipv6.map(|(_, subnet)| subnet)
    }

    /// The pods' IPv4 gateway on the node bridge: the subnet's first host
    /// address, when the cluster has IPv4.
    pub fn gateway(&self) -> Option<Ipv4Addr> {
        self.subnet().map(gateway_of)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        self.render_as("FELT")
    }

    /// The pods' IPv6 gateway on the node bridge (`::1` of the subnet), when
    /// the cluster has IPv6.
    pub fn gateway6(&self) -> Option<Ipv6Addr> {
        self.ipv6.map(|(_, subnet)| gateway6_of(subnet))
    }

    /// The file's text with `prefix` for felt's: `FLANNEL` makes the
    /// `/run/flannel/subnet.env` Flannel's CNI plugin reads.
    pub fn render_as(&self, prefix: &str) -> String {
        let mut text = String::new();
        if let Some((network, subnet)) = self.ipv4 {
            text += &format!(
                "{prefix}_NETWORK={network}\n{prefix}_SUBNET={}/{}\n",
                gateway_of(subnet),
                subnet.prefix_len()
            );
        }
        text += &format!("{prefix}_MTU={}\n{prefix}_IPMASQ={}\n", self.mtu, self.ip_masq);
        if let Some((network, subnet)) = self.ipv6 {
            text += &format!(
                "{prefix}_IPV6_NETWORK={network}\n{prefix}_IPV6_SUBNET={}/{}\n",
                gateway6_of(subnet),
                subnet.prefix_len()
            );
        }
        text
    }

    /// Parses the file's text, felt's keys or Flannel's (`FLANNEL_SUBNET`,
    /// …, as flanneld and felt in `--compat flannel` write them); unknown
    /// keys and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<Self, SubnetFileError> {
        let (mut network, mut subnet, mut mtu, mut ip_masq) = (None, None, None, false);
        let (mut network6, mut subnet6) = (None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or(SubnetFileError::BadLine(i + 1))?;
            let key = match key.strip_prefix("FLANNEL_") {
                Some(rest) => [
                    "FELT_NETWORK",
                    "FELT_SUBNET",
                    "FELT_MTU",
                    "FELT_IPMASQ",
                    "FELT_IPV6_NETWORK",
                    "FELT_IPV6_SUBNET",
                ]
                .into_iter()
                .find(|k| k.strip_prefix("FELT_") == Some(rest))
                .unwrap_or(key),
                None => key,
            };
            let bad = |key: &'static str| SubnetFileError::BadValue { key, value: value.to_owned() };
            match key {
                "FELT_NETWORK" => network = Some(value.parse::<Ipv4Net>().map_err(|_| bad("FELT_NETWORK"))?),
                "FELT_SUBNET" => {
                    subnet = Some(value.parse::<Ipv4Net>().map_err(|_| bad("FELT_SUBNET"))?.trunc())
                }
                "FELT_MTU" => mtu = Some(value.parse::<u32>().map_err(|_| bad("FELT_MTU"))?),
                "FELT_IPMASQ" => ip_masq = value.parse::<bool>().map_err(|_| bad("FELT_IPMASQ"))?,
                "FELT_IPV6_NETWORK" => {
                    network6 = Some(value.parse::<Ipv6Net>().map_err(|_| bad("FELT_IPV6_NETWORK"))?)
                }
                "FELT_IPV6_SUBNET" => {
                    subnet6 = Some(value.parse::<Ipv6Net>().map_err(|_| bad("FELT_IPV6_SUBNET"))?.trunc())
                }
                _ => {}
            }
        }
        let ipv4 = pair(network, subnet, "FELT_NETWORK", "FELT_SUBNET")?;
        let ipv6 = pair(network6, subnet6, "FELT_IPV6_NETWORK", "FELT_IPV6_SUBNET")?;
        if ipv4.is_none() && ipv6.is_none() {
            return Err(SubnetFileError::NoSubnet);
        }
        Ok(SubnetFile { ipv4, mtu: mtu.ok_or(SubnetFileError::Missing("FELT_MTU"))?, ip_masq, ipv6 })
    }
}

/// A family's network and subnet: both or neither.
fn pair<T>(
    network: Option<T>,
    subnet: Option<T>,
    network_key: &'static str,
    subnet_key: &'static str,
) -> Result<Option<(T, T)>, SubnetFileError> {
    match (network, subnet) {
        (Some(n), Some(s)) => Ok(Some((n, s))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(SubnetFileError::Missing(subnet_key)),
        (None, Some(_)) => Err(SubnetFileError::Missing(network_key)),
    }
}

/// The first host address of `subnet`: the pods' gateway on the node bridge.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// The pods' IPv6 gateway on the node bridge: `::1` of `subnet`.
pub fn gateway6_of(subnet: Ipv6Net) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(subnet.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dual_stack_adds_the_ipv6_keys() {
        let f = SubnetFile {
            ipv4: Some(("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap())),
            mtu: 1450,
            ip_masq: true,
            ipv6: Some(("fd00:10:244::/56".parse().unwrap(), "fd00:10:244:3::/64".parse().unwrap())),
        };
        let text = f.render();
        assert!(
            text.ends_with("FELT_IPV6_NETWORK=fd00:10:244::/56\nFELT_IPV6_SUBNET=fd00:10:244:3::1/64\n"),
            "{text}"
        );
        assert_eq!(f.gateway6(), Some("fd00:10:244:3::1".parse().unwrap()));
        assert_eq!(SubnetFile::parse(&text).unwrap(), f);
        assert_eq!(SubnetFile::parse(&f.render_as("FLANNEL")).unwrap(), f, "Flannel's names too");
        let half = text.replace("FELT_IPV6_NETWORK=fd00:10:244::/56\n", "");
        assert_eq!(SubnetFile::parse(&half), Err(SubnetFileError::Missing("FELT_IPV6_NETWORK")));
    }

    #[test]
    fn round_trips() {
        let f = SubnetFile {
            ipv4: Some(("10.244.0.0/16".parse().unwrap(), "10.244.3.0/24".parse().unwrap())),
            mtu: 1450,
            ip_masq: false,
            ipv6: None,
        };
        let text = f.render();
        assert!(text.contains("FELT_SUBNET=10.244.3.1/24\n"), "{text}");
        assert_eq!(SubnetFile::parse(&text).unwrap(), f);
        assert_eq!(
            f.render_as("FLANNEL"),
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n",
            "what flanneld writes"
        );
        assert_eq!(SubnetFile::parse(&f.render_as("FLANNEL")).unwrap(), f, "read back");
    }

    #[test]
    fn ipv6_only_has_no_ipv4_keys() {
        let f = SubnetFile {
            ipv4: None,
            mtu: 1450,
            ip_masq: false,
            ipv6: Some(("fd00:10:244::/56".parse().unwrap(), "fd00:10:244:3::/64".parse().unwrap())),
        };
        let text = f.render_as("FLANNEL");
        assert_eq!(
            text,
            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\nFLANNEL_IPV6_NETWORK=fd00:10:244::/56\n\
             FLANNEL_IPV6_SUBNET=fd00:10:244:3::1/64\n",
            "no IPv4 keys"
        );
        assert_eq!(SubnetFile::parse(&text).unwrap(), f);
        assert_eq!((f.gateway(), f.subnet()), (None, None));
        assert_eq!(SubnetFile::parse("FELT_MTU=1450\n"), Err(SubnetFileError::NoSubnet));
    }

    #[test]
    fn reports_missing_and_bad() {
        assert_eq!(
            SubnetFile::parse("FELT_NETWORK=10.0.0.0/8\n"),
            Err(SubnetFileError::Missing("FELT_SUBNET"))
        );
        assert!(matches!(SubnetFile::parse("FELT_MTU=x"), Err(SubnetFileError::BadValue { .. })));
        assert_eq!(SubnetFile::parse("garbage"), Err(SubnetFileError::BadLine(1)));
    }
}
