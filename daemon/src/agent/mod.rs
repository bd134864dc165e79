//! The node agent: lease, publish, watch, program — and keep it programmed.
//!
//! One task owns the reconcile. It wakes on a registry change, a netlink
//! change on felt's device, or the resync timer, and each time runs the whole
//! observe → plan → apply cycle, so any wake-up is a full resync. What it
//! promises:
//! - a restart rewrites nothing that is already right, and never flushes;
//! - a bad record is logged once with its reason and skipped; the rest of
//!   the fabric keeps working;
//! - when the registry cannot be read the data plane keeps its last state;
//! - SIGTERM and SIGINT end the agent and leave the data plane in place.

pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use felt_overlay::kernel::{Kernel, KernelError, Underlay, UnderlayChoice, VxlanSpec, change_events};
use felt_overlay::{Op, Peer, desired, plan};
use felt_proto::{BackendData, BackendType, MacAddr, NetConfig, NodeRecord, SubnetFile};
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::registry::file::{FileRegistry, FileRegistryError, write_atomic};
use crate::util::error_chain;
use view::Me;

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// This node's name in the registry.
    pub node_name: String,
    /// The file registry's directory.
    pub registry_dir: PathBuf,
    /// How to find the underlay.
    pub underlay: UnderlayChoice,
    /// The cluster's network configuration.
    pub net: NetConfig,
    /// Where to write the subnet file for the CNI plugin.
    pub subnet_file: PathBuf,
    /// How often to resync when nothing happens.
    pub resync: Duration,
    /// VXLAN device name; `felt.<vni>` when `None`.
    pub device: Option<String>,
}

impl AgentConfig {
    /// A config with defaults for everything but the node name and registry.
    pub fn new(node_name: impl Into<String>, registry_dir: impl Into<PathBuf>) -> Self {
        AgentConfig {
            node_name: node_name.into(),
            registry_dir: registry_dir.into(),
            underlay: UnderlayChoice::DefaultRoute,
            net: NetConfig::default(),
            subnet_file: PathBuf::from("/run/felt/subnet.env"),
            resync: Duration::from_secs(30),
            device: None,
        }
    }
}

/// Why the agent stopped before it could start working.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The registry could not be opened or watched.
    #[error("file registry")]
    Registry(#[from] FileRegistryError),
    /// Netlink could not be opened.
    #[error("netlink")]
    Kernel(#[from] KernelError),
    /// The node's lease cannot be had.
    #[error("leasing a pod subnet for node `{node}`: {why}")]
    Lease {
        /// The node.
        node: String,
        /// Why.
        why: String,
    },
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let shutdown = shutdown_signal();
    let kernel = Kernel::connect()?;
    let registry = FileRegistry::open(&cfg.registry_dir)?;

    let Some(underlay) =
        retry("finding the underlay interface", &shutdown, || kernel.underlay(&cfg.underlay)).await
    else {
        return Ok(());
    };
    info!(iface = %underlay.name, ip = %underlay.ip, mtu = underlay.mtu, "underlay");
    let Some(pod_cidr) = retry("leasing a pod subnet", &shutdown, || async { lease(&registry, &cfg) }).await
    else {
        return Ok(());
    };
    let vtep_mac = MacAddr::derive(cfg.node_name.as_bytes());
    let spec = VxlanSpec {
        name: cfg.device.clone().unwrap_or_else(|| format!("felt.{}", cfg.net.backend.vni)),
        vni: cfg.net.backend.vni,
        port: cfg.net.backend.port,
        local: underlay.ip,
        underlay_index: underlay.index,
        mtu: cfg.net.overlay_mtu(underlay.mtu),
        mac: vtep_mac,
    };
    info!(node = %cfg.node_name, %pod_cidr, vtep_mac = %vtep_mac, device = %spec.name, mtu = spec.mtu, "lease held");

    // Watch before the first list, so no change falls between the two.
    let ifindex = Arc::new(AtomicU32::new(0));
    let mut registry_events = registry.watch()?;
    let mut netlink_events = change_events(ifindex.clone())?;

    let me = Me { name: cfg.node_name.clone(), pod_cidr, underlay_ip: underlay.ip, vtep_mac };
    let mut agent = Agent { cfg, kernel, registry, spec, me, underlay, ifindex, state: State::default() };
    agent.publish();

    let mut resync = tokio::time::interval(agent.cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shutdown;
    loop {
        agent.reconcile().await;
        tokio::select! {
            _ = registry_events.recv() => {}
            _ = netlink_events.recv() => {
                // Our own writes echo back; let a burst settle into one pass.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while netlink_events.try_recv().is_ok() {}
            }
            _ = resync.tick() => {}
            _ = shutdown.changed() => break,
        }
    }
    info!("shutting down; the data plane stays as it is");
    Ok(())
}

/// Takes this node's lease from the file registry: the pod CIDR its record
/// already carries, or a free subnet allocated atomically.
fn lease(registry: &FileRegistry, cfg: &AgentConfig) -> Result<Ipv4Net, AgentError> {
    let lease_err = |why: String| AgentError::Lease { node: cfg.node_name.clone(), why };
    let net = &cfg.net;
    if let Some(cidr) = registry.get(&cfg.node_name)?.and_then(|r| r.pod_cidr_v4()) {
        felt_ipam::subnets::validate_pod_cidr(cidr, net.network).map_err(|e| lease_err(e.to_string()))?;
        registry.leases().claim(cidr, &cfg.node_name).map_err(|e| lease_err(e.to_string()))?;
        return Ok(cidr);
    }
    let others: Vec<Ipv4Net> = registry
        .list()?
        .records
        .iter()
        .filter(|r| r.name != cfg.node_name)
        .filter_map(NodeRecord::pod_cidr_v4)
        .collect();
    registry
        .leases()
        .allocate(net.network, net.subnet_len, &cfg.node_name, &others)
        .map_err(|e| lease_err(e.to_string()))
}

#[derive(Debug, Default)]
struct State {
    peers: Vec<Peer>,
    /// What was last logged per bad document or record, so each is said once.
    complaints: BTreeMap<String, String>,
}

struct Agent {
    cfg: AgentConfig,
    kernel: Kernel,
    registry: FileRegistry,
    spec: VxlanSpec,
    me: Me,
    underlay: Underlay,
    ifindex: Arc<AtomicU32>,
    state: State,
}

impl Agent {
    /// Publishes our record and writes the subnet file, each only when it changed.
    fn publish(&mut self) {
        let mut record =
            self.registry.get(&self.me.name).ok().flatten().unwrap_or_else(|| NodeRecord::new(&self.me.name));
        record.pod_cidrs.retain(|c| matches!(c, IpNet::V6(_)));
        record.pod_cidrs.insert(0, IpNet::V4(self.me.pod_cidr));
        record.public_ip = Some(self.underlay.ip);
        record.backend_type = Some(BackendType::Vxlan);
        record.backend_data = Some(BackendData { vni: self.spec.vni, vtep_mac: self.me.vtep_mac });
        match self.registry.put(&record) {
            Ok(true) => info!(node = %record.name, "published node record"),
            Ok(false) => debug!("node record already up to date"),
            Err(e) => warn!(error = %error_chain(&e), "publishing node record failed; will retry on resync"),
        }
        let subnet = SubnetFile {
            network: self.cfg.net.network,
            subnet: self.me.pod_cidr,
            mtu: self.spec.mtu,
            ip_masq: false,
        };
        let text = subnet.render();
        if std::fs::read_to_string(&self.cfg.subnet_file).ok().as_deref() != Some(text.as_str()) {
            let written = self
                .cfg
                .subnet_file
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| write_atomic(&self.cfg.subnet_file, text.as_bytes()));
            match written {
                Ok(()) => info!(path = %self.cfg.subnet_file.display(), "wrote subnet file"),
                Err(e) => {
                    warn!(path = %self.cfg.subnet_file.display(), error = %e, "writing subnet file failed")
                }
            }
        }
    }

    fn complain_once(&mut self, key: String, why: &str, what: &str) {
        if self.state.complaints.get(&key).map(String::as_str) != Some(why) {
            warn!(record = %key, reason = %why, "{what}");
            self.state.complaints.insert(key, why.to_owned());
        }
    }

    /// One full observe → plan → apply pass.
    async fn reconcile(&mut self) {
        let started = Instant::now();
        let snap = match self.registry.list() {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot read the registry; keeping the data plane as it is");
                return;
            }
        };
        if !snap.records.iter().any(|r| r.name == self.me.name && r.pod_cidr_v4() == Some(self.me.pod_cidr)) {
            // Our record vanished or was changed under us: put it back.
            self.publish();
        }
        let mut live = BTreeSet::new();
        for (file, why) in &snap.malformed {
            live.insert(file.clone());
            self.complain_once(file.clone(), why, "ignoring malformed node document");
        }
        let stable: BTreeSet<String> = self.state.peers.iter().map(|p| p.name.clone()).collect();
        let view = view::build(&snap.records, &self.me, &self.cfg.net, &stable);
        for (node, why) in &view.rejected {
            live.insert(node.clone());
            self.complain_once(node.clone(), why, "ignoring node record");
        }
        self.state.complaints.retain(|k, _| live.contains(k));
        self.log_peer_changes(&view.peers);

        let index = match self.kernel.ensure_device(&self.spec, self.me.pod_cidr.network()).await {
            Ok((index, changes)) => {
                if !changes.is_empty() {
                    info!(device = %self.spec.name, changes = ?changes, "VXLAN device set up");
                }
                index
            }
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot set up the VXLAN device; will retry");
                return;
            }
        };
        self.ifindex.store(index, Ordering::Relaxed);
        let observed = match self.kernel.observe(index).await {
            Ok(o) => o,
            Err(e) => {
                warn!(error = %error_chain(&e), "cannot read the data plane; will retry");
                return;
            }
        };
        let ops = plan(&desired(&view.peers), &observed);
        if ops.is_empty() {
            debug!(peers = view.peers.len(), elapsed = ?started.elapsed(), "in sync");
            return;
        }
        let report = self.kernel.apply(index, &ops).await;
        for op in &report.applied {
            info!(op = op.kind(), entry = %describe(op), "programmed");
        }
        for (op, why) in &report.failed {
            warn!(op = op.kind(), entry = %describe(op), error = %why, "programming failed; will retry");
        }
        info!(
            peers = view.peers.len(),
            applied = report.applied.len(),
            failed = report.failed.len(),
            elapsed = ?started.elapsed(),
            "reconciled"
        );
    }

    fn log_peer_changes(&mut self, peers: &[Peer]) {
        let old: BTreeMap<&str, &Peer> = self.state.peers.iter().map(|p| (p.name.as_str(), p)).collect();
        let new: BTreeMap<&str, &Peer> = peers.iter().map(|p| (p.name.as_str(), p)).collect();
        for (name, p) in &new {
            match old.get(name) {
                None => {
                    info!(peer = %name, pod_cidr = %p.pod_cidr, underlay = %p.underlay_ip, vtep_mac = %p.vtep_mac, "peer joined")
                }
                Some(o) if o != p => {
                    info!(peer = %name, pod_cidr = %p.pod_cidr, underlay = %p.underlay_ip, vtep_mac = %p.vtep_mac, "peer changed")
                }
                _ => {}
            }
        }
        for name in old.keys().filter(|n| !new.contains_key(*n)) {
            info!(peer = %name, "peer left");
        }
        self.state.peers = peers.to_vec();
    }
}

fn describe(op: &Op) -> String {
    match op {
        Op::DelRoute(dst) => dst.to_string(),
        Op::SetRoute(r) => format!("{} via {}", r.dst, r.gateway),
        Op::SetNeighbour(n) | Op::DelNeighbour(n) => format!("{} lladdr {}", n.ip, n.mac),
        Op::SetFdb(f) | Op::DelFdb(f) => format!("{} dst {}", f.mac, f.dst),
    }
}

/// Runs `attempt` until it succeeds, backing off from 1 s to 30 s; `None` on shutdown.
async fn retry<T, E, F, Fut>(what: &str, shutdown: &watch::Receiver<bool>, mut attempt: F) -> Option<T>
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_secs(1);
    let mut shutdown = shutdown.clone();
    loop {
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => warn!(error = %error_chain(&e), "{what} failed; retrying in {delay:?}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A receiver that flips to `true` on SIGTERM or SIGINT.
fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    rx
}

/// The VTEP address for a pod subnet.
pub fn vtep_ip(pod_cidr: Ipv4Net) -> Ipv4Addr {
    pod_cidr.network()
}
