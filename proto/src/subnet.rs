//! The subnet file: what the agent hands to the CNI plugin on its node.
//!
//! The format is Flannel's `subnet.env`, with felt's prefix, so operators
//! can read it with a shell:
//! ```text
//! FELT_NETWORK=10.244.0.0/16
//! FELT_SUBNET=10.244.1.1/24
//! FELT_MTU=1450
//! FELT_IPMASQ=false
//! ```
//! `FELT_SUBNET` is the pods' gateway address (the subnet's first host) with
//! the subnet's prefix length, as Flannel writes it.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

/// The facts the CNI plugin needs from the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubnetFile {
    /// The cluster CIDR.
    pub network: Ipv4Net,
    /// This node's pod subnet.
    pub subnet: Ipv4Net,
    /// The MTU to give pods.
    pub mtu: u32,
    /// Whether traffic leaving the cluster CIDR is masqueraded (the agent does it, with nftables).
    pub ip_masq: bool,
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
}

impl SubnetFile {
    /// The pods' gateway on the node bridge: the subnet's first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        gateway_of(self.subnet)
    }

    /// The file's text.
    pub fn render(&self) -> String {
        self.render_as("FELT")
    }

    /// The file's text with `prefix` for felt's: `FLANNEL` makes the
    /// `/run/flannel/subnet.env` Flannel's CNI plugin reads.
    pub fn render_as(&self, prefix: &str) -> String {
        format!(
            "{prefix}_NETWORK={}\n{prefix}_SUBNET={}/{}\n{prefix}_MTU={}\n{prefix}_IPMASQ={}\n",
            self.network,
            self.gateway(),
            self.subnet.prefix_len(),
            self.mtu,
            self.ip_masq
        )
    }

    /// Parses the file's text, felt's keys or Flannel's (`FLANNEL_SUBNET`,
    /// …, as flanneld and felt in `--compat flannel` write them); unknown
    /// keys and `#` comments are ignored.
    pub fn parse(text: &str) -> Result<Self, SubnetFileError> {
        let (mut network, mut subnet, mut mtu, mut ip_masq) = (None, None, None, false);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or(SubnetFileError::BadLine(i + 1))?;
            let key = match key.strip_prefix("FLANNEL_") {
                Some(rest) => ["FELT_NETWORK", "FELT_SUBNET", "FELT_MTU", "FELT_IPMASQ"]
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
                _ => {}
            }
        }
        Ok(SubnetFile {
            network: network.ok_or(SubnetFileError::Missing("FELT_NETWORK"))?,
            subnet: subnet.ok_or(SubnetFileError::Missing("FELT_SUBNET"))?,
            mtu: mtu.ok_or(SubnetFileError::Missing("FELT_MTU"))?,
            ip_masq,
        })
    }
}

/// The first host address of `subnet`: the pods' gateway on the node bridge.
pub fn gateway_of(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let f = SubnetFile {
            network: "10.244.0.0/16".parse().unwrap(),
            subnet: "10.244.3.0/24".parse().unwrap(),
            mtu: 1450,
            ip_masq: false,
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
    fn reports_missing_and_bad() {
        assert_eq!(
            SubnetFile::parse("FELT_NETWORK=10.0.0.0/8\n"),
            Err(SubnetFileError::Missing("FELT_SUBNET"))
        );
        assert!(matches!(SubnetFile::parse("FELT_MTU=x"), Err(SubnetFileError::BadValue { .. })));
        assert_eq!(SubnetFile::parse("garbage"), Err(SubnetFileError::BadLine(1)));
    }
}
