//! The debug API: what `/debug/state` and `/debug/peers/{name}` answer.
//!
//! One definition for the agent that serves it, `felt status`, `felt lab
//! status` and the tests that read it. Field names are a contract scripts
//! rely on (`jq .peers[].in_sync`): add fields, never rename them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::MacAddr;
use crate::entry::{FdbEntry, Neighbour, Op, Route};

/// The data plane an agent runs: a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataplaneKind {
    /// The kernel's VXLAN device, programmed over netlink.
    #[default]
    Kernel,
    /// felt's own VXLAN engine on a TUN device and a UDP socket.
    Userspace,
}

impl DataplaneKind {
    /// `kernel` or `userspace`, as the CLI and the JSON spell it.
    pub fn name(self) -> &'static str {
        match self {
            DataplaneKind::Kernel => "kernel",
            DataplaneKind::Userspace => "userspace",
        }
    }
}

impl std::fmt::Display for DataplaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the agent reads peers from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// A directory of node records.
    File,
    /// Node objects in Kubernetes.
    Kube,
}

/// `GET /debug/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// This node's name.
    pub node: String,
    /// `not_ready` is empty.
    pub ready: bool,
    /// Why the agent is not ready, one reason each.
    pub not_ready: Vec<String>,
    /// The lease, once held.
    pub lease: Option<Lease>,
    /// The configuration in force.
    pub config: Config,
    /// Accepted peers, sorted by name.
    pub peers: Vec<PeerState>,
    /// What would change the kernel into the desired state; `None` when the
    /// kernel could not be read (see `observe_error`).
    pub diff: Option<Vec<Op>>,
    /// Why the kernel could not be read.
    pub observe_error: Option<String>,
    /// Records not yet complete (node names).
    pub pending: Vec<String>,
    /// Records refused.
    pub rejected: Vec<Rejection>,
    /// Documents that did not parse.
    pub malformed: Vec<Malformed>,
    /// The last registry read succeeded.
    pub registry_synced: bool,
    /// Kubernetes registry: where peers are read from, `nodes` (Node
    /// metadata) or `feltnodes` (FeltNode objects); `undecided` until the
    /// first list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_source: Option<String>,
    /// The last reconcile pass.
    pub last_reconcile: Option<Reconcile>,
    /// Recent errors, newest last.
    pub recent_errors: Vec<ErrorEntry>,
    /// Conditions that do not stop the agent but will hurt the fabric (a
    /// neighbour table too small for the peers).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The userspace engine's counters; absent in kernel mode.
    pub engine: Option<Engine>,
}

/// The lease and the VTEP built on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// This node's IPv4 pod subnet; absent in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    /// The VTEP address (`.0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<Ipv4Addr>,
    /// This node's IPv6 pod subnet, in a dual-stack or IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// The IPv6 VTEP address (the IPv6 subnet's network address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip6: Option<Ipv6Addr>,
    /// The VTEP MAC.
    pub vtep_mac: MacAddr,
    /// The underlay interface.
    pub underlay_iface: String,
    /// The underlay (public) address.
    pub underlay_ip: IpAddr,
    /// The underlay MTU.
    pub underlay_mtu: u32,
    /// The VXLAN (or TUN) device.
    pub device: String,
    /// The overlay MTU.
    pub mtu: u32,
}

/// The configuration in force.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Registry kind.
    pub registry: RegistryKind,
    /// Where the registry is.
    pub registry_location: String,
    /// Data plane.
    pub backend: DataplaneKind,
    /// The IPv4 cluster network; absent in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<Ipv4Net>,
    /// Node subnet length.
    pub subnet_len: u8,
    /// The IPv6 cluster network, when dual-stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_network: Option<Ipv6Net>,
    /// IPv6 node subnet length, when dual-stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet_len: Option<u8>,
    /// VNI.
    pub vni: u32,
    /// VXLAN UDP port.
    pub port: u16,
    /// Resync period, seconds.
    pub resync_seconds: f64,
    /// Peer probe interval, seconds.
    pub probe_interval_seconds: f64,
    /// The subnet file.
    pub subnet_file: String,
    /// The userspace data plane's offloads asked for (`tso,gso,gro`, or
    /// `none`); absent in kernel mode.
    pub userspace_offloads: Option<String>,
    /// The settings file (`--settings`), re-read on SIGHUP; absent without one.
    #[serde(default)]
    pub settings_file: Option<String>,
    /// The log filter in force.
    #[serde(default)]
    pub log_level: Option<String>,
    /// Whose conventions the agent keeps (`--compat`): `none` or `flannel`.
    #[serde(default = "no_compat")]
    pub compat: String,
}

fn no_compat() -> String {
    "none".to_owned()
}

/// One accepted peer: what it needs, what the kernel holds, how it answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeerState {
    /// Node name.
    pub name: String,
    /// The peer's IPv4 pod subnet; absent in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    /// The peer's underlay address.
    pub underlay_ip: IpAddr,
    /// The peer's VTEP address; absent in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<Ipv4Addr>,
    /// The peer's IPv6 pod subnet, in a dual-stack cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// The peer's IPv6 VTEP address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip6: Option<Ipv6Addr>,
    /// The peer's VTEP MAC.
    pub vtep_mac: MacAddr,
    /// The entries the peer needs (in kernel mode; the userspace engine
    /// holds the neighbour and FDB entry itself).
    pub desired: Entries,
    /// Which of this data plane's entries the kernel holds; `None` when it
    /// could not be read.
    pub programmed: Option<Programmed>,
    /// Every entry is programmed; `None` when the kernel could not be read.
    pub in_sync: Option<bool>,
    /// The prober's view.
    pub probe: Probe,
}

/// A peer's entries: per family a route and a permanent neighbour, and one
/// FDB entry for both (IPv4's are absent in an IPv6-only cluster).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entries {
    /// Its IPv4 route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Route>,
    /// Its IPv4 permanent neighbour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbour: Option<Neighbour>,
    /// Its FDB entry (both families').
    pub fdb: FdbEntry,
    /// Its IPv6 route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route6: Option<Route>,
    /// Its IPv6 permanent neighbour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub neighbour6: Option<Neighbour>,
}

/// Which of a peer's entries are as desired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Programmed {
    /// The route (both, in a dual-stack cluster).
    pub route: bool,
    /// The neighbour (both, in a dual-stack cluster).
    pub neighbour: bool,
    /// The FDB entry (and no stale remote for its MAC).
    pub fdb: bool,
}

impl Programmed {
    /// All three.
    pub fn all(&self) -> bool {
        self.route && self.neighbour && self.fdb
    }

    /// The names of the entries that are not as desired.
    pub fn missing(&self) -> Vec<&'static str> {
        [("route", self.route), ("neighbour", self.neighbour), ("fdb", self.fdb)]
            .into_iter()
            .filter_map(|(name, ok)| (!ok).then_some(name))
            .collect()
    }
}

/// What the prober last saw of a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeStatus {
    /// The last probe was answered.
    Reachable,
    /// The last probe went unanswered.
    Unreachable,
    /// Not probed yet.
    #[default]
    Unknown,
}

/// A peer's probe state.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Probe {
    /// The last outcome.
    pub state: ProbeStatus,
    /// Round trip of the last successful probe.
    pub rtt_ms: Option<f64>,
    /// When the last probe was sent (RFC 3339).
    pub last_probe: Option<String>,
    /// When a probe last succeeded (RFC 3339).
    pub last_success: Option<String>,
    /// Probes failed in a row.
    pub consecutive_failures: u32,
}

/// Why a record is refused; the label of `felt_bad_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// Not a vxlan backend.
    Backend,
    /// Another VNI.
    Vni,
    /// Pod CIDR outside the cluster network, or too small.
    OutsideNetwork,
    /// Pod CIDR overlapping ours.
    OverlapsOurs,
    /// Our underlay IP.
    ClaimsOurUnderlay,
    /// Our VTEP MAC.
    ClaimsOurMac,
    /// Clashes with an accepted peer (CIDR, underlay IP or MAC).
    Clash,
    /// Its underlay address is of the other family than ours (an IPv6
    /// public IP on an IPv4 underlay, or the reverse): unreachable.
    UnderlayFamily,
}

impl RejectReason {
    /// The metric label (the JSON spelling).
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::Backend => "backend",
            RejectReason::Vni => "vni",
            RejectReason::OutsideNetwork => "outside_network",
            RejectReason::OverlapsOurs => "overlaps_ours",
            RejectReason::ClaimsOurUnderlay => "claims_our_underlay",
            RejectReason::ClaimsOurMac => "claims_our_mac",
            RejectReason::Clash => "clash",
            RejectReason::UnderlayFamily => "underlay_family",
        }
    }
}

/// One refused record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Rejection {
    /// The node the record names.
    pub node: String,
    /// Why, as a label.
    pub reason: RejectReason,
    /// Why, for people.
    pub message: String,
}

/// A registry document that did not parse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Malformed {
    /// Which document (file name or Node name).
    pub document: String,
    /// The parser's complaint.
    pub error: String,
}

/// The last reconcile pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reconcile {
    /// When it ended (RFC 3339).
    pub at: String,
    /// How long it took.
    pub duration_ms: f64,
    /// Ops applied.
    pub applied: usize,
    /// Ops refused by the kernel.
    pub failed: usize,
}

/// One past error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEntry {
    /// When (RFC 3339).
    pub at: String,
    /// What.
    pub message: String,
}

/// The userspace engine's counters and peer table.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Engine {
    /// Packets sent to peers.
    pub tx_packets: u64,
    /// Bytes sent to peers.
    pub tx_bytes: u64,
    /// Packets received from peers.
    pub rx_packets: u64,
    /// Bytes received from peers.
    pub rx_bytes: u64,
    /// Segmentation-offload super-packets read from the TUN.
    pub tx_super_packets: u64,
    /// Packets coalesced before being written to the TUN.
    pub rx_coalesced: u64,
    /// The offloads in use (those asked for, less any the kernel refused).
    pub offloads: Option<String>,
    /// Drops by reason (`felt_engine_drops_total`).
    pub drops: BTreeMap<String, u64>,
    /// The peer table last handed to the engine's workers.
    #[serde(default)]
    pub peers: Vec<EnginePeer>,
}

/// One peer in the userspace engine's table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnginePeer {
    /// Node name.
    pub name: String,
    /// Its IPv4 pod subnet: packets to it are encapsulated for the peer;
    /// absent in an IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<Ipv4Net>,
    /// Its IPv6 pod subnet, in a dual-stack or IPv6-only cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<Ipv6Net>,
    /// Where the datagrams go; the only source accepted for its frames.
    pub underlay_ip: IpAddr,
    /// Its VTEP MAC, the inner frames' destination.
    pub vtep_mac: MacAddr,
}

impl Engine {
    /// Every drop, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// `GET /debug/peers/{name}`: the peer, or why its record was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PeerReply {
    /// An accepted peer.
    Peer(Box<PeerState>),
    /// A refused record.
    Rejected {
        /// The node name asked for.
        name: String,
        /// Why it is not a peer.
        rejected: Rejection,
    },
}

/// Any error the debug endpoint answers with JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// What went wrong.
    pub error: String,
}
