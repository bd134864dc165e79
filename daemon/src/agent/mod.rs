//! The node agent: lease, publish, watch, program — and keep it programmed.
//!
//! One task owns the reconcile. It wakes on a registry change, a netlink
//! change on felt's device, or the resync timer: observe → plan → apply. A
//! pass woken by the registry reads only the records that changed, moves
//! the view it keeps by them and plans only the peers that changed, against
//! the kernel entries the last pass left (see `reconcile::Pass`): its cost
//! does not grow with the cluster. Every other wake-up re-reads the
//! registry, dumps the device and plans the whole fabric, a full resync.
//! [`start`] brings the agent up (underlay, lease, data plane, watches);
//! [`reconcile`] is one pass; this module holds the config and the loop. What it
//! promises:
//! - a restart rewrites nothing that is already right, and never flushes;
//! - a bad record is logged once with its reason and skipped; the rest of
//!   the fabric keeps working;
//! - when the registry cannot be read the data plane keeps its last state;
//! - SIGTERM and SIGINT end the agent and leave the data plane in place;
//! - SIGHUP re-reads the settings file and applies what can change without
//!   a restart (log level, probe interval, resync period; see [`settings`]),
//!   saying what changed and what it ignored;
//! - a change made by hand on felt's device is repaired after a one-second
//!   hold-off ([`REPAIR_DELAY`]) that lets bursts settle, and in any case at
//!   the next resync.

pub mod debug;
pub mod limits;
pub mod lock;
pub mod metrics;
pub mod probe;
mod reconcile;
mod reload;
pub mod settings;
mod start;
pub mod status;
pub mod view;

use crate::compat::Compat;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use felt_overlay::dataplane::{Dataplane, DataplaneKind, StartError};
use felt_overlay::kernel::{Kernel, KernelError, Underlay, UnderlayChoice};
use felt_overlay::userspace::Offloads;
use felt_proto::NetConfig;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::registry::{Registry, RegistryConfig, RegistryError};
use metrics::CauseLabel;
use reconcile::Pass;
use status::Shared;
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
    /// Kernel mode: drop VXLAN datagrams from anyone but the nodes (the
    /// userspace engine drops unknown sources itself).
    pub vxlan_port_lock: bool,
    /// The settings file, read at start and on SIGHUP (see [`settings`]).
    pub settings: Option<PathBuf>,
    /// The file `net` was read from, if any: a SIGHUP says when it changed.
    pub net_conf_file: Option<PathBuf>,
    /// Whose conventions to keep (`--compat`).
    pub compat: Compat,
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
            vxlan_port_lock: true,
            settings: None,
            net_conf_file: None,
            compat: Compat::None,
        }
    }
}

/// Why the agent stopped before it could start working.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Another agent runs on this node.
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    /// The registry could not be opened or watched.
    #[error("registry")]
    Registry(#[from] RegistryError),
    /// Netlink could not be opened.
    #[error("netlink")]
    Kernel(#[from] KernelError),
    /// The userspace data plane could not start.
    #[error(transparent)]
    Userspace(#[from] StartError),
    /// The settings file is refused.
    #[error("settings")]
    Settings(#[from] settings::SettingsError),
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
    let mut shutdown = start::shutdown_signal();
    let Some((mut agent, mut wakeups)) = start::start(cfg, &shutdown).await? else {
        return Ok(());
    };
    agent.publish().await;
    let mut cause = "start";
    loop {
        agent.shared.metrics.wakeups.get_or_create(&CauseLabel { cause }).inc();
        let pass = if cause == "registry" { Pass::Registry } else { Pass::Full };
        agent.reconcile(pass).await;
        if pass == Pass::Full {
            wakeups.full_pass_done();
        }
        agent.shared.beat();
        match wakeups.next(&mut shutdown).await {
            Some("reload") => {
                agent.reload(&mut wakeups);
                cause = "reload";
            }
            Some(why) => cause = why,
            None => {
                info!("shutting down; the data plane stays as it is");
                if let Some(dp) = agent.dataplane.engine() {
                    start::stop_workers(dp);
                }
                return Ok(());
            }
        }
    }
}

/// What wakes the reconcile loop.
struct Wakeups {
    registry: mpsc::Receiver<()>,
    netlink: mpsc::Receiver<()>,
    resync: tokio::time::Interval,
    /// SIGHUP; `None` when it cannot be listened for (said at start).
    hangup: Option<tokio::signal::unix::Signal>,
    /// When the repair of a netlink change is due. Only a full pass (see
    /// [`Pass`]) settles it: a registry pass trusts what it knows of the kernel.
    repair_at: Option<tokio::time::Instant>,
}

impl Wakeups {
    /// Waits for the next reason to reconcile; `None` on shutdown. A netlink
    /// change is repaired after [`REPAIR_DELAY`]: our own writes echo back,
    /// and a person at a shell may not be done. The hold-off is a deadline,
    /// not a sleep, so registry changes never wait behind it.
    async fn next(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<&'static str> {
        loop {
            let repair_at = self.repair_at;
            let repair = async {
                match repair_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = self.registry.recv() => return Some("registry"),
                _ = self.netlink.recv() => {
                    self.repair_at.get_or_insert_with(|| tokio::time::Instant::now() + REPAIR_DELAY);
                }
                _ = repair => return Some("netlink"),
                _ = self.resync.tick() => return Some("timer"),
                Some(()) = async {
                    match &mut self.hangup {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => return Some("reload"),
                _ = shutdown.changed() => return None,
            }
        }
    }

    /// A full pass ran: it saw every netlink change made before it.
    fn full_pass_done(&mut self) {
        self.repair_at = None;
    }
}

#[derive(Debug, Default)]
struct State {
    /// The cluster view as the last pass left it.
    live: Option<view::Live>,
    /// The last pass ran to its end: what it remembers (the view, the
    /// kernel's entries, the tables) matches what it programmed.
    complete: bool,
    /// The documents refused, by name, and why.
    malformed: BTreeMap<String, String>,
    /// The device's entries as the last pass left them (its index, and the
    /// part felt owns); `None` after a failed write, so the next pass dumps.
    known: Option<(u32, felt_overlay::Held)>,
    /// felt's nftables table as the last pass left it; `None` after a failure.
    nft_known: Option<felt_overlay::nft::Table>,
    /// The same for its `ip6` table (the IPv6 masquerade, an IPv6
    /// underlay's port lock).
    nft_known6: Option<felt_overlay::nft::Table>,
    /// The `ip6` table was seen right once: when nothing is wanted in it
    /// (an IPv4 cluster on an IPv4 underlay) it is then left alone.
    nft6_checked: bool,
    /// The userspace engine was handed its first peer table.
    engine_fed: bool,
    /// What was last logged per bad document or record, so each is said once.
    complaints: BTreeMap<String, String>,
    /// The last publish failed (a refused status patch, say): retry it.
    publish_failed: bool,
    /// The port lock's counter as last exported to metrics.
    outsider_drops: u64,
    /// The neighbour-table warning last logged, so each is said once.
    neighbour_warning: Option<String>,
}

/// A resync timer that first fires one `period` from now (a reload's: the
/// start's fires at once).
fn resync_timer(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

struct Agent {
    /// This node's one-agent lock, held while the agent runs.
    _lock: lock::InstanceLock,
    cfg: AgentConfig,
    kernel: Kernel,
    registry: Registry,
    /// Owns the device and the rule of what the kernel holds.
    dataplane: Dataplane,
    me: Me,
    underlay: Underlay,
    ifindex: Arc<AtomicU32>,
    /// What the device holds once this pass's writes are done, for the
    /// change listener to tell their echoes from changes made by others.
    expected: Arc<std::sync::Mutex<Option<felt_overlay::kernel::echo::Expected>>>,
    shared: Arc<Shared>,
    /// felt's nftables table (egress masquerade, the port lock of an IPv4
    /// underlay); opened on first use.
    nft: Option<felt_overlay::nft::Nft>,
    /// Its `ip6` twin (the IPv6 masquerade, the port lock of an IPv6 underlay).
    nft6: Option<felt_overlay::nft::Nft>,
    state: State,
    /// The reloadable settings in force.
    in_force: settings::InForce,
}
