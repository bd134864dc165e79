//! One data plane, kernel or userspace: the only place that knows what each
//! keeps in the kernel, how its device is set up, and where the VTEP is.
//!
//! - **Kernel**: the VXLAN device with a route, a permanent neighbour and an
//!   FDB entry per peer, all in the kernel.
//! - **Userspace**: a TUN device with one route per peer; the engine holds the
//!   neighbour and FDB entries itself, so the kernel part owns neither.
//!
//! Callers that only know the kind (the lab, the debug endpoint) use the
//! free functions [`desired`] and [`owned`]; the agent holds a [`Dataplane`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

pub use felt_proto::DataplaneKind;
use ipnet::{Ipv4Net, Ipv6Net};
use tracing::{info, warn};

use crate::kernel::{Kernel, KernelError, VxlanSpec};
use crate::userspace::{EngineConfig, Offloads, UserspaceDataplane, keeper};
use crate::{Desired, Observed, Peer};

/// A node's VTEP address: its pod subnet's network address (`.0`), as
/// Flannel assigns it to `flannel.1`.
pub fn vtep_ip(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.network()
}

/// The device name when none is configured: `felt.<vni>`.
pub fn default_device(vni: u32) -> String {
    format!("felt.{vni}")
}

/// What a `kind` data plane keeps in the kernel for `peers`: everything in
/// kernel mode; only the routes (both families) to the TUN in userspace mode.
pub fn desired(kind: DataplaneKind, peers: &[Peer]) -> Desired {
    let mut d = crate::desired(peers);
    if kind == DataplaneKind::Userspace {
        d.neighbours.clear();
        d.fdb.clear();
    }
    d
}

/// The part of `observed` a `kind` data plane owns.
pub fn owned(kind: DataplaneKind, mut observed: Observed) -> Observed {
    if kind == DataplaneKind::Userspace {
        observed.neighbours.clear();
        observed.fdb.clear();
    }
    observed
}

/// Why a data plane could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting the userspace data plane (TUN device {device}, UDP port {port})")]
pub struct StartError {
    /// The TUN device.
    pub device: String,
    /// The VXLAN port.
    pub port: u16,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A running data plane.
#[derive(Debug)]
pub struct Dataplane {
    spec: VxlanSpec,
    engine: Option<Arc<UserspaceDataplane>>,
    /// Kernel mode: a VXLAN device to remove just before ours is created
    /// (Flannel's, holding the same VNI and port).
    replaces: Option<String>,
}

impl Dataplane {
    /// The kernel's VXLAN device as `spec` describes it (created on the
    /// first [`ensure_device`](Self::ensure_device)).
    pub fn kernel(spec: VxlanSpec) -> Dataplane {
        Dataplane { spec, engine: None, replaces: None }
    }

    /// Kernel mode: takes VXLAN device `name` over as this one, which needs
    /// its VNI and port (leaving `--compat flannel`: `flannel.<VNI>` becomes
    /// `felt.<VNI>`). Renamed in place where the kernel renames a running
    /// device, so every entry stays and nothing is lost; else removed right
    /// before this one is created, once the registry has listed: one gap of
    /// tens of milliseconds, not one as long as the agent's start.
    pub fn replacing(mut self, name: Option<String>) -> Dataplane {
        self.replaces = name;
        self
    }

    /// Starts the userspace engine on TUN device `spec.name`: removes a
    /// kernel VXLAN device of that name (left by kernel mode), takes the
    /// descriptors over from the keeper when there is one (and keeps it), or
    /// opens the TUN and binds the VXLAN port. A fresh data plane has no
    /// keeper yet: the caller spawns one ([`UserspaceDataplane::has_keeper`]).
    pub async fn userspace(
        kernel: &Kernel,
        spec: VxlanSpec,
        offloads: Offloads,
    ) -> Result<Dataplane, StartError> {
        let name = spec.name.clone();
        match kernel.remove_vxlan(&name).await {
            Ok(true) => {
                info!(device = %name, "removed the kernel VXLAN device of the same name (was kernel mode)")
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, device = %name, "cannot remove the VXLAN device in the TUN's way"),
        }
        let (adopted, link) = if offloads == Offloads::NONE {
            (None, None)
        } else {
            match keeper::take_over(&name, spec.port) {
                Ok(Some((h, link))) => {
                    info!(device = %name, "took the data plane over from the previous agent's keeper");
                    (Some(h), Some(link))
                }
                Ok(None) => (None, None),
                Err(e) => {
                    warn!(error = %e, "a keeper answered but its descriptors are unusable; starting afresh");
                    (None, None)
                }
            }
        };
        let engine = EngineConfig { vni: spec.vni, mac: spec.mac, port: spec.port };
        // The underlay's family: an IPv6 underlay's datagrams come to `[::]`.
        let any = if spec.local.is_ipv6() {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        let bind = SocketAddr::new(any, spec.port);
        let dp = UserspaceDataplane::start(engine, &name, bind, offloads, adopted)
            .map_err(|source| StartError { device: name, port: spec.port, source })?;
        if let Some(link) = link {
            // The keeper stays, now this agent's.
            dp.attach_keeper(link);
        }
        Ok(Dataplane { spec, engine: Some(Arc::new(dp)), replaces: None })
    }

    /// Kernel or userspace.
    pub fn kind(&self) -> DataplaneKind {
        if self.engine.is_some() { DataplaneKind::Userspace } else { DataplaneKind::Kernel }
    }

    /// The device: its name, VNI, port, MTU and VTEP MAC.
    pub fn spec(&self) -> &VxlanSpec {
        &self.spec
    }

    /// The userspace engine, when this is one.
    pub fn engine(&self) -> Option<&Arc<UserspaceDataplane>> {
        self.engine.as_ref()
    }

    /// What this data plane keeps in the kernel for `peers`.
    pub fn desired(&self, peers: &[Peer]) -> Desired {
        desired(self.kind(), peers)
    }

    /// The part of `observed` this data plane owns.
    pub fn owned(&self, observed: Observed) -> Observed {
        owned(self.kind(), observed)
    }

    /// Hands the engine its peer table (the kernel data plane reads peers
    /// from its FDB and neighbour entries instead).
    pub fn set_peers(&self, peers: &[Peer]) {
        if let Some(engine) = &self.engine {
            engine.set_peers(peers);
        }
    }

    /// Creates or repairs the device, with our IPv4 pod subnet's VTEP address
    /// (when the cluster has IPv4) as its only IPv4 address, and our IPv6 pod
    /// subnet's (when it has IPv6) as its only global IPv6 one; returns its
    /// index and what was changed.
    pub async fn ensure_device(
        &self,
        kernel: &Kernel,
        pod_cidr: Option<Ipv4Net>,
        pod_cidr6: Option<Ipv6Net>,
    ) -> Result<(u32, Vec<String>), KernelError> {
        let (vtep, vtep6) = (pod_cidr.map(vtep_ip), pod_cidr6.map(|c| c.network()));
        match &self.engine {
            Some(engine) => kernel.ensure_tun(engine.name(), self.spec.mtu, vtep, vtep6).await,
            None => {
                if let Some(old) = &self.replaces {
                    if kernel.link(&self.spec.name).await?.is_none() {
                        match kernel.rename_link(old, &self.spec.name).await {
                            Ok(true) => {
                                info!(from = %old, to = %self.spec.name, "renamed the VXLAN device in place")
                            }
                            Ok(false) => {}
                            Err(e) => {
                                warn!(error = %e, from = %old, "cannot rename the VXLAN device in place; replacing it");
                                if kernel.remove_vxlan(old).await? {
                                    info!(removed = %old, device = %self.spec.name, "replaced the VXLAN device");
                                }
                            }
                        }
                    }
                }
                kernel.ensure_device(&self.spec, vtep, vtep6).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Peer {
        Peer {
            name: "n2".into(),
            pod_cidr: Some("10.244.2.0/24".parse().unwrap()),
            pod_cidr6: Some("fd00:10:244:2::/64".parse().unwrap()),
            vtep_mac: "0a:00:00:00:00:02".parse().unwrap(),
            underlay_ip: Ipv4Addr::new(198, 18, 0, 12).into(),
        }
    }

    #[test]
    fn userspace_keeps_only_routes_in_the_kernel() {
        let k = desired(DataplaneKind::Kernel, &[peer()]);
        assert_eq!((k.routes.len(), k.neighbours.len(), k.fdb.len()), (2, 2, 1), "both families, one FDB");
        let u = desired(DataplaneKind::Userspace, &[peer()]);
        assert_eq!((u.routes, u.neighbours.len(), u.fdb.len()), (k.routes.clone(), 0, 0));
        let observed = Observed { routes: vec![], neighbours: k.neighbours.clone(), fdb: k.fdb.clone() };
        assert_eq!(owned(DataplaneKind::Kernel, observed.clone()), observed);
        assert_eq!(owned(DataplaneKind::Userspace, observed), Observed::default());
    }

    #[test]
    fn the_vtep_is_the_subnet_network_address() {
        assert_eq!(vtep_ip("10.244.7.0/24".parse().unwrap()), Ipv4Addr::new(10, 244, 7, 0));
        assert_eq!(peer().vtep_ip(), Some(Ipv4Addr::new(10, 244, 2, 0)));
        assert_eq!(default_device(1), "felt.1");
    }
}
