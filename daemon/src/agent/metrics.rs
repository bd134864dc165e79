//! The agent's Prometheus metrics (served at `/metrics`, OpenMetrics text).
//!
//! Every name is documented in the README's metrics table; keep the two in
//! step. Counters get the `_total` suffix from the encoder.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// `state` label of `felt_peers`.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PeerState {
    /// Accepted from the registry: the data plane should reach it.
    desired,
    /// All three entries present in the kernel.
    programmed,
    /// Refused (see `felt_bad_records_total`).
    rejected,
    /// Not yet published completely.
    pending,
}

/// Labels `{state}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// Which peers.
    pub state: PeerState,
}

/// Labels `{result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels `{op, result}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// `set_route`, `del_fdb`, …
    pub op: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Labels `{cause}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CauseLabel {
    /// `registry`, `netlink`, `timer`, `start`.
    pub cause: &'static str,
}

/// Labels `{phase}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabel {
    /// `registry`, `view`, `device`, `observe`, `apply`, `nftables`, `report`.
    pub phase: &'static str,
}

/// Labels `{reason}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a record or document was refused.
    pub reason: &'static str,
}

/// Labels `{direction}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabel {
    /// `tx` (TUN → underlay) or `rx` (underlay → TUN).
    pub direction: &'static str,
}

/// Labels `{peer}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// Peer node name.
    pub peer: String,
}

/// Labels of `felt_build_info`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
    /// Data plane.
    pub backend: &'static str,
}

/// All of the agent's metrics, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `felt_peers{state}`.
    pub peers: Family<StateLabel, Gauge>,
    /// `felt_reconcile_total{result}`.
    pub reconciles: Family<ResultLabel, Counter>,
    /// `felt_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `felt_reconcile_phase_seconds_total{phase}`: where the passes' time goes.
    pub reconcile_phase: Family<PhaseLabel, Counter<f64, AtomicU64>>,
    /// `felt_dataplane_ops_total{op,result}`.
    pub ops: Family<OpLabels, Counter>,
    /// `felt_wakeups_total{cause}`.
    pub wakeups: Family<CauseLabel, Counter>,
    /// `felt_registry_relists_total`.
    pub relists: Counter,
    /// `felt_registry_errors_total`.
    pub registry_errors: Counter,
    /// `felt_last_sync_timestamp_seconds`.
    pub last_sync: Gauge<f64, AtomicU64>,
    /// `felt_bad_records_total{reason}`.
    pub bad_records: Family<ReasonLabel, Counter>,
    /// `felt_peer_reachable{peer}`.
    pub peer_reachable: Family<PeerLabel, Gauge>,
    /// `felt_peer_rtt_seconds{peer}`.
    pub peer_rtt: Family<PeerLabel, Gauge<f64, AtomicU64>>,
    /// `felt_peer_probes_total{result}`.
    pub probes: Family<ResultLabel, Counter>,
    /// `felt_engine_packets_total{direction}` (userspace mode).
    pub engine_packets: Family<DirectionLabel, Counter>,
    /// `felt_engine_bytes_total{direction}` (userspace mode).
    pub engine_bytes: Family<DirectionLabel, Counter>,
    /// `felt_engine_drops_total{reason}` (userspace mode).
    pub engine_drops: Family<ReasonLabel, Counter>,
    /// `felt_engine_batches_total{direction}` (userspace mode): TSO
    /// super-packets segmented (tx), coalesced TUN writes (rx).
    pub engine_batches: Family<DirectionLabel, Counter>,
    /// `felt_vxlan_outsider_drops_total` (kernel mode): datagrams to the
    /// VXLAN port from an address that is no node's, dropped by the port lock.
    pub outsider_drops: Counter,
    /// `felt_reloads_total{result}`: SIGHUPs, by whether the settings were taken.
    pub reloads: Family<ResultLabel, Counter>,
    /// `felt_neighbour_table_shortfall`: entries the peers need that the
    /// neighbour table cannot hold (0: enough).
    pub neighbour_shortfall: Gauge,
    /// `felt_peer_source{source}` (Kubernetes registry): 1 for where peers
    /// are read from now (`nodes`, `feltnodes`, `undecided`), 0 for the others.
    pub peer_source: Family<SourceLabel, Gauge>,
}

/// Labels `{source}`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    /// Where peers are read from.
    pub source: &'static str,
}

impl Metrics {
    /// Registers every metric. Long on purpose: one registration per
    /// metric, the catalogue `/metrics` serves, read top to bottom.
    pub fn new(backend: &'static str) -> Self {
        let mut registry = Registry::with_prefix("felt");
        let m = Metrics {
            peers: Family::default(),
            reconciles: Family::default(),
            reconcile_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            reconcile_phase: Family::default(),
            ops: Family::default(),
            wakeups: Family::default(),
            relists: Counter::default(),
            registry_errors: Counter::default(),
            last_sync: Gauge::default(),
            bad_records: Family::default(),
            peer_reachable: Family::default(),
            peer_rtt: Family::default(),
            probes: Family::default(),
            engine_packets: Family::default(),
            engine_bytes: Family::default(),
            engine_drops: Family::default(),
            engine_batches: Family::default(),
            outsider_drops: Counter::default(),
            reloads: Family::default(),
            neighbour_shortfall: Gauge::default(),
            peer_source: Family::default(),
            registry: Registry::default(),
        };
        registry.register("peers", "Peers by state: desired, programmed, rejected, pending", m.peers.clone());
        registry.register("reconcile", "Reconcile passes by result", m.reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time of one observe-plan-apply pass",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "reconcile_phase_seconds",
            "Time spent in each phase of the reconcile passes: registry, view, device, observe, apply, nftables, report",
            m.reconcile_phase.clone(),
        );
        registry.register("dataplane_ops", "Data-plane operations by kind and result", m.ops.clone());
        registry.register(
            "wakeups",
            "Reconcile wake-ups by cause: registry, netlink, timer, start",
            m.wakeups.clone(),
        );
        registry.register("registry_relists", "Full reads of the registry", m.relists.clone());
        registry.register("registry_errors", "Registry reads that failed", m.registry_errors.clone());
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last reconcile that left the data plane as desired",
            m.last_sync.clone(),
        );
        registry.register(
            "bad_records",
            "Registry documents or records refused, by reason (counted when first seen)",
            m.bad_records.clone(),
        );
        registry.register(
            "peer_reachable",
            "1 when the peer's VTEP answered the last probe over the overlay",
            m.peer_reachable.clone(),
        );
        registry.register(
            "peer_rtt_seconds",
            "Round-trip time of the last successful probe",
            m.peer_rtt.clone(),
        );
        registry.register("peer_probes", "Peer probes by result", m.probes.clone());
        registry.register(
            "engine_packets",
            "Userspace engine: packets encapsulated (tx) and decapsulated (rx)",
            m.engine_packets.clone(),
        );
        registry.register(
            "engine_bytes",
            "Userspace engine: bytes encapsulated (tx) and decapsulated (rx)",
            m.engine_bytes.clone(),
        );
        registry.register(
            "engine_drops",
            "Userspace engine: packets dropped, by reason",
            m.engine_drops.clone(),
        );
        registry.register(
            "engine_batches",
            "Userspace engine: TSO super-packets cut into segments (tx), coalesced TUN writes (rx)",
            m.engine_batches.clone(),
        );
        registry.register(
            "vxlan_outsider_drops",
            "Kernel mode: datagrams to the VXLAN port from an address that is no node's, dropped by the port lock",
            m.outsider_drops.clone(),
        );
        registry.register(
            "reloads",
            "SIGHUPs: settings re-read and applied (ok) or refused, leaving those in force (error)",
            m.reloads.clone(),
        );
        registry.register(
            "neighbour_table_shortfall",
            "Neighbour (ARP) entries the peers need beyond net.ipv4.neigh.default.gc_thresh3 (0: enough)",
            m.neighbour_shortfall.clone(),
        );
        registry.register(
            "peer_source",
            "Kubernetes registry: 1 for where peers are read from now (nodes, feltnodes, undecided)",
            m.peer_source.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION"), backend }).set(1);
        registry.register("build_info", "felt's version and data plane", build);
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}
