//! Registries: where the agent leases its subnet, publishes itself and
//! learns its peers. A closed set, so an enum: the file registry (the
//! embedded default, and the lab's) and Kubernetes.

pub mod file;
pub mod kube;

use std::net::IpAddr;
use std::path::PathBuf;

use felt_proto::{NetConfig, NodeRecord};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;

use self::file::{FileRegistry, FileRegistryError};
use self::kube::{KubeError, KubeRegistry, PeerSource};
use felt_proto::annotations::Dialect;

/// One snapshot of the cluster as a registry holds it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Records that parsed and validated.
    pub records: Vec<NodeRecord>,
    /// Documents that did not: (document name, why).
    pub malformed: Vec<(String, String)>,
}

/// One registry document that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    /// The node it is about.
    pub name: String,
    /// The document, as a complaint names it (as in [`Snapshot::malformed`]).
    pub document: String,
    /// Its record now, or why it is not one; `None`: gone.
    pub now: Option<Result<NodeRecord, String>>,
}

/// This node's pod subnets: one per family the cluster has (at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// The IPv4 one; `None` in an IPv6-only cluster.
    pub pod_cidr: Option<Ipv4Net>,
    /// The IPv6 one, in a dual-stack or IPv6-only cluster.
    pub pod_cidr6: Option<Ipv6Net>,
}

impl Lease {
    /// Both, as a record's `podCIDRs` lists them (IPv4 first).
    pub fn cidrs(&self) -> Vec<IpNet> {
        self.pod_cidr.map(IpNet::V4).into_iter().chain(self.pod_cidr6.map(IpNet::V6)).collect()
    }
}

/// Which registry, and where.
#[derive(Debug, Clone)]
pub enum RegistryConfig {
    /// A directory shared by every agent.
    File {
        /// The directory.
        dir: PathBuf,
    },
    /// The Kubernetes API.
    Kube {
        /// A kubeconfig; in-cluster config or `KUBECONFIG` when `None`.
        kubeconfig: Option<PathBuf>,
        /// Whose annotations to read and write (Flannel's with `--compat flannel`).
        dialect: Dialect,
        /// Where peers come from: FeltNodes, Node metadata, or the first once
        /// it matches the second.
        peers: PeerSource,
    },
}

impl RegistryConfig {
    /// `file` or `kube`.
    pub fn kind(&self) -> felt_proto::debug::RegistryKind {
        use felt_proto::debug::RegistryKind;
        match self {
            RegistryConfig::File { .. } => RegistryKind::File,
            RegistryConfig::Kube { .. } => RegistryKind::Kube,
        }
    }

    /// Where, for people.
    pub fn location(&self) -> String {
        match self {
            RegistryConfig::File { dir } => dir.display().to_string(),
            RegistryConfig::Kube { kubeconfig: Some(k), .. } => k.display().to_string(),
            RegistryConfig::Kube { kubeconfig: None, .. } => "in-cluster or KUBECONFIG".to_owned(),
        }
    }
}

/// What went wrong with a registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The file registry.
    #[error("file registry")]
    File(#[from] FileRegistryError),
    /// The Kubernetes registry.
    #[error("kubernetes registry")]
    Kube(#[from] KubeError),
    /// The node's pod CIDR is not usable in the cluster network.
    #[error("node `{node}`'s pod subnet")]
    BadPodCidr {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: felt_ipam::subnets::CidrError,
    },
    /// The lease store refused the claim or has no free subnet.
    #[error("leasing a pod subnet for node `{node}`")]
    Lease {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: felt_ipam::StoreError,
    },
    /// The node list has not been read yet.
    #[error("the node list has not been read yet")]
    NotListed,
}

/// A connected registry.
#[derive(Debug, Clone)]
pub enum Registry {
    /// The file registry.
    File(FileRegistry),
    /// The Kubernetes registry.
    Kube(Box<KubeRegistry>),
}

impl Registry {
    /// Opens or connects.
    pub async fn open(cfg: &RegistryConfig, node: &str) -> Result<Self, RegistryError> {
        Ok(match cfg {
            RegistryConfig::File { dir } => Registry::File(FileRegistry::open(dir)?),
            RegistryConfig::Kube { kubeconfig, dialect, peers } => Registry::Kube(Box::new(
                KubeRegistry::connect(kubeconfig.as_deref(), node, *dialect, *peers).await?,
            )),
        })
    }

    /// Signals (coalesced) when something felt uses may have changed. Call once.
    pub fn watch(&self) -> Result<mpsc::Receiver<()>, RegistryError> {
        Ok(match self {
            Registry::File(f) => f.watch()?,
            Registry::Kube(k) => k.watch(),
        })
    }

    /// What the registry's access control forbids this agent now (RBAC),
    /// one reason each.
    pub fn forbidden(&self) -> Vec<String> {
        match self {
            Registry::File(_) => Vec::new(),
            Registry::Kube(k) => k.forbidden(),
        }
    }

    /// Every record, and whether the registry is in sync (a Kubernetes watch
    /// that is down still yields the last known nodes, not in sync). The
    /// file registry re-reads only what its watch saw change unless `full`.
    pub fn snapshot(&self, full: bool) -> Result<(Snapshot, bool), RegistryError> {
        match self {
            Registry::File(f) => Ok((f.read(full)?, true)),
            Registry::Kube(k) => k.snapshot().map(|s| (s, k.synced())).ok_or(RegistryError::NotListed),
        }
    }

    /// The documents that changed since the last [`Registry::snapshot`] or
    /// call of this, and whether the registry is in sync; `None` when the
    /// registry cannot say which (then read a snapshot).
    pub fn changes(&self) -> Result<Option<(Vec<Changed>, bool)>, RegistryError> {
        Ok(match self {
            Registry::File(f) => f.changes()?.map(|c| (c, true)),
            Registry::Kube(k) => k.changes().map(|c| (c, k.synced())),
        })
    }

    /// Kubernetes registry: where peers are read from now (`nodes`,
    /// `feltnodes`, or `undecided`).
    pub fn peer_source(&self) -> Option<&'static str> {
        match self {
            Registry::File(_) => None,
            Registry::Kube(k) => Some(k.reading()),
        }
    }

    /// This node's pod subnets: IPv4, and IPv6 when the cluster is dual-stack.
    pub async fn lease(&self, node: &str, net: &NetConfig) -> Result<Lease, RegistryError> {
        match self {
            Registry::File(f) => file_lease(f, node, net),
            Registry::Kube(k) => Ok(k.lease(net).await?),
        }
    }

    /// The public IP to publish: an operator's overwrite (of the underlay's
    /// family: the VXLAN device sends from that family), else the underlay
    /// address.
    pub fn public_ip(&self, underlay: IpAddr) -> IpAddr {
        match self {
            Registry::File(_) => underlay,
            Registry::Kube(k) => {
                k.public_ip_overwrite().filter(|o| o.is_ipv4() == underlay.is_ipv4()).unwrap_or(underlay)
            }
        }
    }

    /// The VTEP MAC this node's record publishes now, asked of the registry
    /// itself (not the watch, which may not have listed yet).
    pub async fn published_vtep_mac(&self, node: &str) -> Option<felt_proto::MacAddr> {
        let record = match self {
            Registry::File(f) => f.get(node).ok().flatten(),
            Registry::Kube(k) => k.published_now().await,
        };
        Some(record?.backend_data?.vtep_mac)
    }

    /// This node's record as it was last published (`Some(None)`: not at
    /// all), when it may have changed: `in_read` is what a read of the
    /// registry found of it, `None` when the read did not name it.
    pub fn published(&self, in_read: Option<Option<NodeRecord>>) -> Option<Option<NodeRecord>> {
        match self {
            Registry::File(_) => in_read,
            Registry::Kube(k) => Some(k.published()),
        }
    }

    /// Publishes this node's record; returns whether it wrote.
    pub async fn publish(&self, record: &NodeRecord) -> Result<bool, RegistryError> {
        match self {
            Registry::File(f) => {
                let mut merged = f.get(&record.name)?.unwrap_or_else(|| NodeRecord::new(&record.name));
                merged.pod_cidrs = record.pod_cidrs.clone();
                merged.public_ip = record.public_ip;
                merged.backend_type = record.backend_type;
                merged.backend_data = record.backend_data;
                Ok(f.put(&merged)?)
            }
            Registry::Kube(k) => Ok(k.publish(record).await?),
        }
    }
}

/// The file registry's lease: per family, the pod CIDR the node's record
/// already carries, or a free subnet allocated atomically.
fn file_lease(registry: &FileRegistry, node: &str, net: &NetConfig) -> Result<Lease, RegistryError> {
    let record = registry.get(node)?;
    let v4 = net
        .network
        .map(|n| file_lease_of(registry, node, n.into(), net.subnet_len, record.as_ref()))
        .transpose()?;
    let v6 = net
        .ipv6_network
        .map(|n| file_lease_of(registry, node, n.into(), net.ipv6_subnet_len, record.as_ref()))
        .transpose()?;
    let family = "a lease is of its network's family: checked inside it, or carved out of it";
    Ok(Lease {
        pod_cidr: v4.map(|c| match c {
            IpNet::V4(c) => c,
            IpNet::V6(_) => unreachable!("{family}"),
        }),
        pod_cidr6: v6.map(|c| match c {
            IpNet::V6(c) => c,
            IpNet::V4(_) => unreachable!("{family}"),
        }),
    })
}

/// One family's lease in `network`.
fn file_lease_of(
    registry: &FileRegistry,
    node: &str,
    network: IpNet,
    len: u8,
    record: Option<&NodeRecord>,
) -> Result<IpNet, RegistryError> {
    let lease_err = |source| RegistryError::Lease { node: node.to_owned(), source };
    let same_family = |c: &IpNet| c.addr().is_ipv4() == network.addr().is_ipv4();
    if let Some(cidr) = record.and_then(|r| r.pod_cidrs.iter().copied().find(same_family)) {
        felt_ipam::subnets::validate_pod_cidr(cidr, network)
            .map_err(|source| RegistryError::BadPodCidr { node: node.to_owned(), source })?;
        registry.leases().claim(cidr, node).map_err(lease_err)?;
        return Ok(cidr);
    }
    let others: Vec<IpNet> = registry
        .list()?
        .records
        .iter()
        .filter(|r| r.name != node)
        .flat_map(|r| r.pod_cidrs.iter().copied().filter(same_family))
        .collect();
    registry.leases().allocate(network, len, node, &others).map_err(lease_err)
}
