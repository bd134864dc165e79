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
//! - SIGTERM and SIGINT end the agent and leave the data plane in place;
//! - a change made by hand on felt's device is repaired after a one-second
//!   hold-off ([`REPAIR_DELAY`]) that lets bursts settle, and in any case at
//!   the next resync.

pub mod debug;
pub mod metrics;
pub mod probe;
pub mod status;
pub mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use felt_overlay::dataplane::{self, Dataplane, DataplaneKind, StartError};
use felt_overlay::kernel::{Kernel, KernelError, Underlay, UnderlayChoice, VxlanSpec, change_events};
use felt_overlay::userspace::{Offloads, UserspaceDataplane, keeper};
use felt_overlay::{Op, Peer, plan};
use felt_proto::{BackendData, BackendType, MacAddr, NetConfig, NodeRecord, SubnetFile};
use ipnet::IpNet;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::registry::file::write_atomic;
use crate::registry::{Registry, RegistryConfig, RegistryError};
use crate::util::error_chain;
use metrics::{CauseLabel, Metrics, OpLabels, PeerState, ReasonLabel, ResultLabel, StateLabel};
use status::{ConfigView, LeaseView, Malformed, ReconcileView, Shared, rfc3339};
use view::Me;

/// How long a netlink change on felt's device settles before the repair pass.
pub const REPAIR_DELAY: Duration = Duration::from_secs(1);

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AgentConfig {
    /// This node's name in the registry.
    pub node_name: String,
    /// Which registry.
    pub registry: RegistryConfig,
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
    /// Where the debug endpoint listens; `None` turns it off.
    pub debug_addr: Option<SocketAddr>,
    /// How often every peer's VTEP is probed over the overlay.
    pub probe_interval: Duration,
    /// The data plane.
    pub backend: DataplaneKind,
    /// The userspace data plane's offloads (userspace backend only).
    pub offloads: Offloads,
}

impl AgentConfig {
    /// A config with defaults for everything but the node name and registry.
    pub fn new(node_name: impl Into<String>, registry: RegistryConfig) -> Self {
        AgentConfig {
            node_name: node_name.into(),
            registry,
            underlay: UnderlayChoice::DefaultRoute,
            net: NetConfig::default(),
            subnet_file: PathBuf::from("/run/felt/subnet.env"),
            resync: Duration::from_secs(30),
            device: None,
            debug_addr: Some(SocketAddr::from(([127, 0, 0, 1], debug::DEFAULT_PORT))),
            probe_interval: Duration::from_secs(5),
            backend: DataplaneKind::Kernel,
            offloads: Offloads::ALL,
        }
    }
}

/// Why the agent stopped before it could start working.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The registry could not be opened or watched.
    #[error("registry")]
    Registry(#[from] RegistryError),
    /// Netlink could not be opened.
    #[error("netlink")]
    Kernel(#[from] KernelError),
    /// The userspace data plane could not start.
    #[error(transparent)]
    Userspace(#[from] StartError),
    /// The debug endpoint cannot listen.
    #[error("debug endpoint on {addr}")]
    Debug {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Runs the agent until SIGTERM or SIGINT.
pub async fn run(cfg: AgentConfig) -> Result<(), AgentError> {
    let shutdown = shutdown_signal();
    let kernel = Kernel::connect()?;
    let registry = Registry::open(&cfg.registry, &cfg.node_name).await?;
    let shared =
        Arc::new(Shared::new(cfg.node_name.clone(), config_view(&cfg), Metrics::new(cfg.backend.name())));
    if let Some(addr) = cfg.debug_addr {
        debug::serve(addr, shared.clone(), kernel.clone())
            .await
            .map_err(|source| AgentError::Debug { addr, source })?;
    }

    let Some(underlay) =
        retry("finding the underlay interface", &shared, &shutdown, || kernel.underlay(&cfg.underlay)).await
    else {
        return Ok(());
    };
    info!(iface = %underlay.name, ip = %underlay.ip, mtu = underlay.mtu, "underlay");
    let Some(pod_cidr) =
        retry("leasing a pod subnet", &shared, &shutdown, || registry.lease(&cfg.node_name, &cfg.net)).await
    else {
        return Ok(());
    };
    let vtep_mac = MacAddr::derive(cfg.node_name.as_bytes());
    let spec = VxlanSpec {
        name: cfg.device.clone().unwrap_or_else(|| dataplane::default_device(cfg.net.backend.vni)),
        vni: cfg.net.backend.vni,
        port: cfg.net.backend.port,
        local: underlay.ip,
        underlay_index: underlay.index,
        mtu: cfg.net.overlay_mtu(underlay.mtu),
        mac: vtep_mac,
    };
    info!(node = %cfg.node_name, %pod_cidr, vtep_mac = %vtep_mac, device = %spec.name, mtu = spec.mtu, "lease held");
    shared.state().lease = Some(LeaseView {
        pod_cidr,
        vtep_ip: dataplane::vtep_ip(pod_cidr),
        vtep_mac,
        underlay_iface: underlay.name.clone(),
        underlay_ip: underlay.ip,
        underlay_mtu: underlay.mtu,
        device: spec.name.clone(),
        mtu: spec.mtu,
    });
    let dataplane = match cfg.backend {
        DataplaneKind::Kernel => Dataplane::kernel(spec),
        DataplaneKind::Userspace => Dataplane::userspace(&kernel, spec, cfg.offloads).await?,
    };
    if let Some(engine) = dataplane.engine() {
        shared.set_engine(engine.clone());
    }

    // Watch before the first list, so no change falls between the two.
    let ifindex = Arc::new(AtomicU32::new(0));
    let mut registry_events = registry.watch()?;
    let mut netlink_events = change_events(ifindex.clone())?;
    if let Err(e) = probe::spawn(shared.clone(), cfg.probe_interval) {
        let message = format!("peer probes are off: cannot start their thread: {e}");
        warn!("{message}");
        shared.error(message);
    }

    let me = Me { name: cfg.node_name.clone(), pod_cidr, underlay_ip: underlay.ip, vtep_mac };
    let mut agent = Agent {
        cfg,
        kernel,
        registry,
        dataplane,
        me,
        underlay,
        ifindex,
        shared,
        nft: None,
        state: State::default(),
    };
    agent.publish().await;

    let mut resync = tokio::time::interval(agent.cfg.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shutdown;
    let mut cause = "start";
    // A netlink change is repaired after REPAIR_DELAY: our own writes echo
    // back, and a person at a shell may not be done. The hold-off is a
    // deadline, not a sleep, so registry changes never wait behind it.
    loop {
        agent.shared.metrics.wakeups.get_or_create(&CauseLabel { cause }).inc();
        agent.reconcile().await;
        agent.shared.beat();
        // Every pass is a full one, so no repair is pending after it.
        let mut repair_at: Option<tokio::time::Instant> = None;
        cause = loop {
            let repair = async {
                match repair_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = registry_events.recv() => break "registry",
                _ = netlink_events.recv() => {
                    repair_at.get_or_insert_with(|| tokio::time::Instant::now() + REPAIR_DELAY);
                }
                _ = repair => break "netlink",
                _ = resync.tick() => break "timer",
                _ = shutdown.changed() => {
                    info!("shutting down; the data plane stays as it is");
                    if let Some(dp) = agent.dataplane.engine() {
                        spawn_keeper(dp);
                    }
                    return Ok(());
                }
            }
        };
    }
}

fn config_view(cfg: &AgentConfig) -> ConfigView {
    ConfigView {
        registry: cfg.registry.kind(),
        registry_location: cfg.registry.location(),
        backend: cfg.backend,
        network: cfg.net.network,
        subnet_len: cfg.net.subnet_len,
        vni: cfg.net.backend.vni,
        port: cfg.net.backend.port,
        resync_seconds: cfg.resync.as_secs_f64(),
        probe_interval_seconds: cfg.probe_interval.as_secs_f64(),
        subnet_file: cfg.subnet_file.display().to_string(),
        userspace_offloads: (cfg.backend == DataplaneKind::Userspace).then(|| cfg.offloads.to_string()),
    }
}

#[derive(Debug, Default)]
struct State {
    peers: Vec<Peer>,
    /// The peer table last handed to the userspace engine.
    engine_peers: Option<Vec<Peer>>,
    /// What was last logged per bad document or record, so each is said once.
    complaints: BTreeMap<String, String>,
    /// The last publish failed (a refused status patch, say): retry it.
    publish_failed: bool,
}

struct Agent {
    cfg: AgentConfig,
    kernel: Kernel,
    registry: Registry,
    /// Owns the device and the rule of what the kernel holds.
    dataplane: Dataplane,
    me: Me,
    underlay: Underlay,
    ifindex: Arc<AtomicU32>,
    shared: Arc<Shared>,
    /// felt's nftables table (egress masquerade); opened on first use.
    nft: Option<felt_overlay::nft::Nft>,
    state: State,
}

impl Agent {
    /// The record this node should have in the registry.
    fn wanted_record(&self) -> NodeRecord {
        let mut record = NodeRecord::new(&self.me.name);
        record.pod_cidrs = vec![IpNet::V4(self.me.pod_cidr)];
        record.public_ip = Some(self.registry.public_ip(self.underlay.ip));
        record.backend_type = Some(BackendType::Vxlan);
        record.backend_data =
            Some(BackendData { vni: self.dataplane.spec().vni, vtep_mac: self.me.vtep_mac });
        record
    }

    /// Publishes our record and writes the subnet file, each only when it changed.
    async fn publish(&mut self) {
        let record = self.wanted_record();
        match self.registry.publish(&record).await {
            Ok(true) => info!(node = %record.name, public_ip = ?record.public_ip, "published node record"),
            Ok(false) => debug!("node record already up to date"),
            Err(e) => {
                self.state.publish_failed = true;
                self.fail(format!(
                    "publishing node record failed; will retry on resync: {}",
                    error_chain(&e)
                ));
                return self.write_subnet_file();
            }
        }
        self.state.publish_failed = false;
        self.write_subnet_file();
    }

    /// Writes the subnet file the CNI plugin reads, only when it changed.
    fn write_subnet_file(&self) {
        let subnet = SubnetFile {
            network: self.cfg.net.network,
            subnet: self.me.pod_cidr,
            mtu: self.dataplane.spec().mtu,
            ip_masq: self.cfg.net.ip_masq,
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

    /// Logs a bad document or record once per distinct reason, and counts it.
    fn complain_once(&mut self, key: String, why: &str, label: &'static str, what: &str) {
        if self.state.complaints.get(&key).map(String::as_str) != Some(why) {
            warn!(record = %key, reason = %why, "{what}");
            self.shared.metrics.bad_records.get_or_create(&ReasonLabel { reason: label }).inc();
            self.state.complaints.insert(key, why.to_owned());
        }
    }

    /// Logs an error and keeps it for `/debug/state`.
    fn fail(&self, message: String) {
        warn!("{message}");
        self.shared.error(message);
    }

    /// One full observe → plan → apply pass.
    async fn reconcile(&mut self) {
        let started = Instant::now();
        let ok = self.reconcile_inner(started).await;
        let m = &self.shared.metrics;
        m.reconcile_duration.observe(started.elapsed().as_secs_f64());
        m.reconciles.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
    }

    async fn reconcile_inner(&mut self, started: Instant) -> bool {
        self.shared.metrics.relists.inc();
        let (snap, synced) = match self.registry.snapshot() {
            Ok(s) => s,
            Err(e) => {
                self.shared.metrics.registry_errors.inc();
                self.shared.state().registry_synced = false;
                self.fail(format!(
                    "cannot read the registry; keeping the data plane as it is: {}",
                    error_chain(&e)
                ));
                return false;
            }
        };
        let wanted = self.wanted_record();
        if synced
            && (self.state.publish_failed
                || self.registry.published(&snap, &self.me.name).as_ref() != Some(&wanted))
        {
            // Our record is missing, stale, or was changed under us: publish it.
            self.publish().await;
        }
        let mut live = BTreeSet::new();
        for (file, why) in &snap.malformed {
            live.insert(file.clone());
            self.complain_once(file.clone(), why, "malformed", "ignoring malformed node document");
        }
        let stable: BTreeSet<String> = self.state.peers.iter().map(|p| p.name.clone()).collect();
        let view = view::build(&snap.records, &self.me, &self.cfg.net, &stable);
        for r in &view.rejected {
            live.insert(r.node.clone());
            self.complain_once(r.node.clone(), &r.message, r.reason.label(), "ignoring node record");
        }
        self.state.complaints.retain(|k, _| live.contains(k));
        self.log_peer_changes(&view.peers);
        let m = &self.shared.metrics;
        m.peers.get_or_create(&StateLabel { state: PeerState::desired }).set(view.peers.len() as i64);
        m.peers.get_or_create(&StateLabel { state: PeerState::rejected }).set(view.rejected.len() as i64);
        m.peers.get_or_create(&StateLabel { state: PeerState::pending }).set(view.pending.len() as i64);
        {
            let mut st = self.shared.state();
            st.registry_synced = synced;
            st.forbidden = self.registry.forbidden();
            st.peers = view.peers.clone();
            st.pending = view.pending.clone();
            st.rejected = view.rejected.clone();
            st.malformed = snap
                .malformed
                .iter()
                .map(|(document, error)| Malformed { document: document.clone(), error: error.clone() })
                .collect();
        }

        // The first table too, even empty: the userspace workers wait for it.
        if self.dataplane.engine().is_some() && self.state.engine_peers.as_ref() != Some(&view.peers) {
            self.dataplane.set_peers(&view.peers);
            self.state.engine_peers = Some(view.peers.clone());
        }
        self.shared.refresh_engine_metrics();
        let device = self.dataplane.ensure_device(&self.kernel, self.me.pod_cidr).await;
        let index = match device {
            Ok((index, changes)) => {
                if !changes.is_empty() {
                    info!(device = %self.dataplane.spec().name, changes = ?changes, "VXLAN device set up");
                }
                index
            }
            Err(e) => {
                self.shared.state().programmed = false;
                self.fail(format!("cannot set up the VXLAN device; will retry: {}", error_chain(&e)));
                return false;
            }
        };
        self.ifindex.store(index, Ordering::Relaxed);
        self.shared.state().device_index = index;
        let observed = match self.kernel.observe(index).await {
            Ok(o) => o,
            Err(e) => {
                self.shared.state().programmed = false;
                self.fail(format!("cannot read the data plane; will retry: {}", error_chain(&e)));
                return false;
            }
        };
        let ops = plan(&self.dataplane.desired(&view.peers), &self.dataplane.owned(observed));
        let report = if ops.is_empty() { Default::default() } else { self.kernel.apply(index, &ops).await };
        for op in &report.applied {
            info!(op = op.kind(), entry = %describe(op), "programmed");
            self.shared.metrics.ops.get_or_create(&OpLabels { op: op.kind(), result: "ok" }).inc();
        }
        for (op, why) in &report.failed {
            self.shared.metrics.ops.get_or_create(&OpLabels { op: op.kind(), result: "error" }).inc();
            self.fail(format!("programming {} {} failed; will retry: {why}", op.kind(), describe(op)));
        }
        let egress_ok = self.reconcile_egress(&view.peers);
        let in_sync = report.failed.is_empty() && egress_ok;
        let programmed_peers = if in_sync {
            view.peers.len()
        } else {
            view.peers.iter().filter(|p| !report.failed.iter().any(|(op, _)| concerns(op, p))).count()
        };
        let m = &self.shared.metrics;
        m.peers.get_or_create(&StateLabel { state: PeerState::programmed }).set(programmed_peers as i64);
        if in_sync {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            m.last_sync.set(now.as_secs_f64());
        }
        let elapsed = started.elapsed();
        {
            let mut st = self.shared.state();
            st.programmed = in_sync;
            st.last_reconcile = Some(ReconcileView {
                at: rfc3339(std::time::SystemTime::now()),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                applied: report.applied.len(),
                failed: report.failed.len(),
            });
        }
        if ops.is_empty() {
            debug!(peers = view.peers.len(), ?elapsed, "in sync");
        } else {
            info!(
                peers = view.peers.len(),
                applied = report.applied.len(),
                failed = report.failed.len(),
                ?elapsed,
                "reconciled"
            );
        }
        in_sync && synced
    }

    /// Keeps felt's masquerade table right for the cluster CIDR and every
    /// node's underlay address (see `felt_overlay::nft`); `false` on failure.
    fn reconcile_egress(&mut self, peers: &[Peer]) -> bool {
        use felt_overlay::nft::{self, Masquerade, Nft};
        let want = self.cfg.net.ip_masq.then(|| Masquerade {
            cluster: self.cfg.net.network,
            nodes: peers.iter().map(|p| p.underlay_ip).chain([self.underlay.ip]).collect(),
        });
        let result = (|| {
            let n = match &mut self.nft {
                Some(n) => n,
                None => self.nft.insert(Nft::open()?),
            };
            let p = nft::plan(want.as_ref(), &n.observe()?);
            n.apply(&p, want.as_ref()).map(|()| p)
        })();
        let count = |op, result| self.shared.metrics.ops.get_or_create(&OpLabels { op, result }).inc();
        match result {
            Ok(p) => {
                if let Some(op) = p.kind() {
                    count(op, "ok");
                    info!(op, plan = ?p, table = nft::TABLE, "programmed");
                }
                true
            }
            Err(e) => {
                // Failures count under the write that builds the table.
                count("set_masquerade", "error");
                // A socket that failed may be broken: open a fresh one next time.
                self.nft = None;
                self.fail(format!(
                    "egress masquerade (nftables table ip {}) failed; will retry: {}",
                    nft::TABLE,
                    error_chain(&e)
                ));
                false
            }
        }
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

/// True when `op` sets or removes one of peer `p`'s entries.
fn concerns(op: &Op, p: &Peer) -> bool {
    match op {
        Op::SetRoute(r) => r.dst == p.pod_cidr,
        Op::DelRoute(dst) => *dst == p.pod_cidr,
        Op::SetNeighbour(n) | Op::DelNeighbour(n) => n.ip == p.vtep_ip(),
        Op::SetFdb(f) | Op::DelFdb(f) => f.mac == p.vtep_mac,
    }
}

/// Runs `attempt` until it succeeds, backing off from 1 s to 30 s; `None` on shutdown.
async fn retry<T, E, F, Fut>(
    what: &str,
    shared: &Shared,
    shutdown: &watch::Receiver<bool>,
    mut attempt: F,
) -> Option<T>
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_secs(1);
    let mut shutdown = shutdown.clone();
    loop {
        shared.beat();
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let message = format!("{what} failed; retrying in {delay:?}: {}", error_chain(&e));
                warn!("{message}");
                shared.error(message);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// A receiver that flips to `true` on SIGTERM or SIGINT.
/// How long a keeper waits for the next agent before it lets the
/// descriptors go.
pub const KEEPER_HOLD: Duration = Duration::from_secs(10);

/// Hands the userspace data plane's descriptors to a `felt keeper` child,
/// so packets wait in the kernel until the next agent takes them over (see
/// `felt_overlay::userspace::keeper`). Failing that, the persistent TUN
/// still keeps the routes.
fn spawn_keeper(dp: &UserspaceDataplane) {
    let run = || -> std::io::Result<u32> {
        let handover = dp.handover()?;
        let (mut ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["keeper", "--device", dp.name(), "--hold"])
            .arg(format!("{}ms", KEEPER_HOLD.as_millis()))
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            // Its own process group: a Ctrl-C meant for the agent does not reach it.
            .process_group(0)
            .spawn()?;
        keeper::hand_over(&mut ours, &handover)?;
        Ok(child.id())
    };
    match run() {
        Ok(pid) => {
            info!(pid, hold = ?KEEPER_HOLD, "the data plane's descriptors wait with a keeper for the next agent")
        }
        Err(e) => {
            warn!(error = %e, "no keeper for the next agent: packets arriving before it starts are lost")
        }
    }
}

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
