//! What a lab is made of (`lab.json`), and reading and writing it.

use crate::registry::kube::PeerSource;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use felt_overlay::DataplaneKind;
use felt_proto::NodeRecord;
use felt_proto::annotations::Dialect;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{Lab, LabError, control, kube};
use crate::netns;
use crate::registry::file::FileRegistry;
use crate::util::write_atomic;

/// The data plane a lab's agents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The kernel's VXLAN device, programmed over netlink.
    Kernel,
    /// felt's userspace VXLAN engine on every node.
    Userspace,
    /// Alternating: odd nodes kernel, even nodes userspace.
    Mixed,
}

impl Mode {
    /// The data plane of node `index` in a lab of this mode.
    pub fn backend_of(self, index: u32) -> DataplaneKind {
        match self {
            Mode::Kernel => DataplaneKind::Kernel,
            Mode::Userspace => DataplaneKind::Userspace,
            Mode::Mixed if index % 2 == 1 => DataplaneKind::Kernel,
            Mode::Mixed => DataplaneKind::Userspace,
        }
    }
}

/// Where a lab's agents register.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LabRegistry {
    /// A file registry in the lab's state directory.
    #[default]
    File,
    /// A Kubernetes API server listening inside the lab's underlay namespace.
    Kube {
        /// The kubeconfig the lab uses (and the agents, without `agent_kubeconfig`).
        kubeconfig: PathBuf,
        /// The agents' own (the lab's control plane: the `felt` ServiceAccount's token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_kubeconfig: Option<PathBuf>,
        /// Whose annotations the agents publish: Flannel's when the lab
        /// runs flanneld nodes or felt in `--compat flannel`.
        #[serde(default, skip_serializing_if = "is_felt")]
        dialect: Dialect,
        /// The agents' `--peer-source`.
        #[serde(default, skip_serializing_if = "is_auto")]
        peer_source: PeerSource,
    },
}

fn is_auto(p: &PeerSource) -> bool {
    *p == PeerSource::Auto
}

fn is_felt(d: &Dialect) -> bool {
    *d == Dialect::Felt
}

/// How to build a lab.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpOptions {
    /// Lab name: prefixes every namespace.
    pub name: String,
    /// Number of nodes.
    pub nodes: u32,
    /// Pods on each node.
    pub pods_per_node: u32,
    /// Data plane.
    pub mode: Mode,
    /// Registry.
    pub registry: LabRegistry,
    /// Attach pods in CNI delegate mode, with `bridge` and `host-local`
    /// from this directory; `None`: native mode.
    pub cni_delegate: Option<PathBuf>,
    /// Start the lab's own control plane (etcd, kube-apiserver) with these
    /// programs, and register the agents there (`registry` is then ignored).
    pub control_plane: Option<control::Binaries>,
    /// Run felt's agents in `--compat flannel` (Kubernetes registry only).
    pub compat_flannel: bool,
    /// The agents' `--peer-source` (Kubernetes registry only).
    pub peer_source: PeerSource,
    /// Run flanneld instead of felt on the first this many nodes (implies
    /// `compat_flannel`; needs `flannel`).
    pub flannel_nodes: u32,
    /// The directory holding `flanneld` and Flannel's CNI plugin `flannel`
    /// (what `tests/flannel/build.sh` prints).
    pub flannel: Option<PathBuf>,
    /// The pods' address families.
    pub ip_family: IpFamily,
    /// The underlay's family.
    pub underlay_family: UnderlayFamily,
}

/// The pods' address families in a lab.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    /// IPv4 only.
    #[default]
    Ipv4,
    /// IPv4 and IPv6 (`ipv6Network` [`LAB_IPV6_NETWORK`]).
    Dual,
    /// IPv6 only: no IPv4 pod network (`ipv6Network` alone).
    Ipv6,
}

/// Whether a lab of these families gives its nodes IPv6 addresses on the
/// underlay (beside their IPv4 ones): on an IPv6 underlay, and for pods'
/// IPv6 egress.
pub fn nodes_have_ipv6(ip_family: IpFamily, underlay: UnderlayFamily) -> bool {
    underlay == UnderlayFamily::Ipv6 || ip_family.has_ipv6()
}

/// The family of the lab's underlay: the addresses VXLAN travels between.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayFamily {
    /// The node's IPv4 address (`198.18.x.y`).
    #[default]
    Ipv4,
    /// An IPv6 address beside it (`fd00:f31::` and the IPv4 address's 32
    /// bits, see `topo::underlay6`): VXLAN over IPv6.
    Ipv6,
}

impl std::str::FromStr for UnderlayFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipv4" => Ok(UnderlayFamily::Ipv4),
            "ipv6" => Ok(UnderlayFamily::Ipv6),
            other => Err(format!("unknown underlay family `{other}` (ipv4 or ipv6)")),
        }
    }
}

/// The lab's IPv6 pod network in a dual-stack or IPv6-only lab (ULA space,
/// as `LAB-NETWORK.md` asks), one /64 per node.
pub const LAB_IPV6_NETWORK: &str = "fd00:f31:244::/56";

impl std::str::FromStr for IpFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ipv4" => Ok(IpFamily::Ipv4),
            "dual" => Ok(IpFamily::Dual),
            "ipv6" => Ok(IpFamily::Ipv6),
            other => Err(format!("unknown IP family `{other}` (ipv4, dual or ipv6)")),
        }
    }
}

impl UpOptions {
    /// The defaults: `felt`, 3 nodes, 2 pods each, kernel mode.
    pub fn new(name: impl Into<String>) -> Self {
        UpOptions {
            name: name.into(),
            nodes: 3,
            pods_per_node: 2,
            mode: Mode::Kernel,
            registry: LabRegistry::File,
            cni_delegate: None,
            control_plane: None,
            compat_flannel: false,
            peer_source: PeerSource::Auto,
            flannel_nodes: 0,
            flannel: None,
            ip_family: IpFamily::Ipv4,
            underlay_family: UnderlayFamily::Ipv4,
        }
    }

    /// Whose annotations the agents publish.
    pub fn dialect(&self) -> Dialect {
        if self.compat_flannel || self.flannel_nodes > 0 { Dialect::Flannel } else { Dialect::Felt }
    }
}

/// One lab node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name in the registry (`n1`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its index (`i` in `n<i>`).
    pub index: u32,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its agent's pid.
    pub pid: u32,
    /// Which agent runs there.
    #[serde(default, skip_serializing_if = "NodeAgent::is_felt")]
    pub agent: NodeAgent,
}

/// The agent a lab node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeAgent {
    /// felt, in the lab's mode and, in a lab with Flannel nodes, with
    /// `--compat flannel`.
    #[default]
    Felt,
    /// felt in its own conventions (`--compat none`) in a lab in Flannel's
    /// dialect: a node that has left compat mode.
    #[serde(rename = "felt-own")]
    FeltOwn,
    /// flanneld (vxlan backend, Kubernetes subnet manager), pods attached by
    /// Flannel's CNI plugin.
    Flannel,
}

impl NodeAgent {
    fn is_felt(&self) -> bool {
        *self == NodeAgent::Felt
    }

    /// `felt`, `felt (own conventions)` or `flanneld`.
    pub fn name(self) -> &'static str {
        match self {
            NodeAgent::Felt => "felt",
            NodeAgent::FeltOwn => "felt (own conventions)",
            NodeAgent::Flannel => "flanneld",
        }
    }

    /// felt's device, route tag and subnet-file keys on this node, in a lab
    /// of `dialect`.
    pub fn compat(self, dialect: Dialect) -> crate::compat::Compat {
        use crate::compat::Compat;
        match (self, dialect) {
            (NodeAgent::FeltOwn, _) | (_, Dialect::Felt) => Compat::None,
            (_, Dialect::Flannel) => Compat::Flannel,
        }
    }
}

/// One lab pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name (`n1-p1`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its node.
    pub node: String,
    /// Its IPv4 address; none in an IPv6-only lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address, in a dual-stack or IPv6-only lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip6: Option<Ipv6Addr>,
}

/// What `lab.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// The underlay /24.
    pub underlay: Ipv4Net,
    /// Data plane.
    pub mode: Mode,
    /// Registry.
    #[serde(default)]
    pub registry: LabRegistry,
    /// Pods per node, for `add-node`.
    pub pods_per_node: u32,
    /// The pods' address families.
    #[serde(default)]
    pub ip_family: IpFamily,
    /// The underlay's family.
    #[serde(default)]
    pub underlay_family: UnderlayFamily,
    /// Pods attach in CNI delegate mode with the plugins in this directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_delegate: Option<PathBuf>,
    /// flanneld and Flannel's CNI plugin, for the nodes that run Flannel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flannel: Option<PathBuf>,
    /// Nodes, in index order.
    pub nodes: Vec<NodeState>,
    /// Pods.
    pub pods: Vec<PodState>,
}

impl LabState {
    /// The data plane node `node` runs.
    pub fn backend_of(&self, node: &NodeState) -> DataplaneKind {
        match node.agent {
            NodeAgent::Felt | NodeAgent::FeltOwn => self.mode.backend_of(node.index),
            NodeAgent::Flannel => DataplaneKind::Kernel,
        }
    }

    /// Whether the nodes have IPv6 addresses on the underlay (beside their
    /// IPv4 ones): on an IPv6 underlay, and for pods' IPv6 egress.
    pub fn nodes_have_ipv6(&self) -> bool {
        nodes_have_ipv6(self.ip_family, self.underlay_family)
    }

    /// The address node `node`'s agent encapsulates from: its IPv4 one, or
    /// on an IPv6 underlay its [`super::topo::underlay6`] twin.
    pub fn underlay_of(&self, node: &NodeState) -> std::net::IpAddr {
        match self.underlay_family {
            UnderlayFamily::Ipv4 => node.underlay_ip.into(),
            UnderlayFamily::Ipv6 => super::topo::underlay6(node.underlay_ip).into(),
        }
    }

    /// Whose annotations the lab's agents publish.
    pub fn dialect(&self) -> Dialect {
        self.registry.dialect()
    }

    /// The network config the lab's agents run with.
    pub fn net(&self) -> felt_proto::NetConfig {
        self.ip_family.net()
    }
}

impl IpFamily {
    /// The lab's network config for these families: the default (IPv4),
    /// with [`LAB_IPV6_NETWORK`] in a dual-stack lab, and that alone in an
    /// IPv6-only one.
    pub fn net(self) -> felt_proto::NetConfig {
        let mut net = felt_proto::NetConfig::default();
        if self != IpFamily::Ipv4 {
            net.ipv6_network = Some(LAB_IPV6_NETWORK.parse().expect("the lab's IPv6 network parses"));
        }
        if self == IpFamily::Ipv6 {
            net.network = None;
        }
        net
    }

    /// Whether the lab's pods have an IPv4 address.
    pub fn has_ipv4(self) -> bool {
        self != IpFamily::Ipv6
    }

    /// Whether the lab's pods have an IPv6 address.
    pub fn has_ipv6(self) -> bool {
        self != IpFamily::Ipv4
    }
}

impl LabRegistry {
    /// Whose annotations the agents publish: felt's on a file registry.
    pub fn dialect(&self) -> Dialect {
        match self {
            LabRegistry::Kube { dialect, .. } => *dialect,
            LabRegistry::File => Dialect::Felt,
        }
    }
}

impl Lab {
    /// Reads `lab.json`; `None` when the lab is not up.
    pub fn load(&self) -> Result<Option<LabState>, LabError> {
        match std::fs::read(self.state_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| LabError::Invalid(format!("{}: {e}", self.state_path().display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LabError::io("reading", &self.state_path(), e)),
        }
    }

    pub(super) fn loaded(&self) -> Result<LabState, LabError> {
        self.load()?.ok_or_else(|| {
            LabError::Invalid(format!("lab `{}` is not up (felt lab up --name {})", self.name, self.name))
        })
    }

    pub(super) fn save(&self, state: &LabState) -> Result<(), LabError> {
        let bytes = serde_json::to_vec_pretty(state).expect("lab state serialises");
        write_atomic(&self.state_path(), &bytes).map_err(|e| LabError::io("writing", &self.state_path(), e))
    }

    /// The registry's records, by node name.
    pub(super) fn records_of(
        &self,
        registry: &LabRegistry,
    ) -> Result<BTreeMap<String, NodeRecord>, LabError> {
        if let LabRegistry::Kube { kubeconfig, dialect, .. } = registry {
            return kube::records(&netns::named(&self.underlay_ns()), kubeconfig, *dialect);
        }
        let reg = FileRegistry::open(&self.registry_dir())
            .map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?;
        let snap = reg.list().map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?;
        Ok(snap.records.into_iter().map(|r| (r.name.clone(), r)).collect())
    }
}
