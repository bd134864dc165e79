//! What the agent knows about itself, shared with the debug endpoint and
//! the peer prober. The reconcile loop is the only writer of everything but
//! the probe results; readers take short locks and copy.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use felt_overlay::userspace::{Counters, DropReason, UserspaceDataplane};
use felt_overlay::{DataplaneKind, Peer};
pub use felt_proto::debug::{
    Config as ConfigView, ErrorEntry, Lease as LeaseView, Malformed, Probe as ProbeState, ProbeStatus,
    Reconcile as ReconcileView, Rejection,
};

use super::metrics::{DirectionLabel, Metrics, ReasonLabel};

/// How many recent errors `/debug/state` keeps.
const RECENT_ERRORS: usize = 32;

/// Everything the reconcile loop reports.
#[derive(Debug, Clone, Default)]
pub struct AgentState {
    /// The lease, once held.
    pub lease: Option<LeaseView>,
    /// The VXLAN device's index (0 before it exists).
    pub device_index: u32,
    /// Accepted peers.
    pub peers: Vec<Peer>,
    /// Conditions that do not stop the agent but will hurt the fabric.
    pub warnings: Vec<String>,
    /// Incomplete records.
    pub pending: Vec<String>,
    /// Refused records.
    pub rejected: Vec<Rejection>,
    /// Documents that did not parse.
    pub malformed: Vec<Malformed>,
    /// The last registry read succeeded.
    pub registry_synced: bool,
    /// What RBAC forbids the agent (Kubernetes registry), one reason each.
    pub forbidden: Vec<String>,
    /// Kubernetes registry: where peers are read from.
    pub peer_source: Option<&'static str>,
    /// The last reconcile left the data plane as desired.
    pub programmed: bool,
    /// The last reconcile.
    pub last_reconcile: Option<ReconcileView>,
    /// Recent errors, newest last.
    pub recent_errors: VecDeque<ErrorEntry>,
}

/// The agent's shared status.
#[derive(Debug)]
pub struct Shared {
    /// Node name.
    pub node: String,
    /// Config in force (a SIGHUP may change its reloadable part).
    config: Mutex<ConfigView>,
    /// Metrics.
    pub metrics: Metrics,
    /// Reconcile state.
    pub state: Mutex<AgentState>,
    /// Probe results by peer.
    pub probes: Mutex<BTreeMap<String, ProbeState>>,
    /// Unix ms of the loop's last sign of life.
    heartbeat: AtomicU64,
    /// The userspace engine and its counters as last exported to metrics.
    engine: Mutex<Option<(Arc<UserspaceDataplane>, Counters)>>,
}

/// RFC 3339 with milliseconds.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Shared {
    /// A fresh status.
    pub fn new(node: String, config: ConfigView, metrics: Metrics) -> Self {
        Shared {
            node,
            config: Mutex::new(config),
            metrics,
            state: Mutex::new(AgentState::default()),
            probes: Mutex::new(BTreeMap::new()),
            heartbeat: AtomicU64::new(unix_ms(SystemTime::now())),
            engine: Mutex::new(None),
        }
    }

    /// The config in force.
    pub fn config(&self) -> ConfigView {
        self.config.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Changes the config in force (a reload).
    pub fn update_config(&self, change: impl FnOnce(&mut ConfigView)) {
        change(&mut self.config.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// How often peers are probed now.
    pub fn probe_interval(&self) -> Duration {
        Duration::from_secs_f64(self.config.lock().unwrap_or_else(|p| p.into_inner()).probe_interval_seconds)
    }

    /// Attaches the userspace engine, whose counters `/metrics` exports.
    pub fn set_engine(&self, dp: Arc<UserspaceDataplane>) {
        *self.engine.lock().unwrap_or_else(|p| p.into_inner()) = Some((dp, Counters::default()));
    }

    /// The engine's counters now, if there is an engine.
    pub fn engine_counters(&self) -> Option<Counters> {
        self.engine.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|(dp, _)| dp.counters())
    }

    /// The offloads the engine uses (those asked for, less any the kernel refused).
    pub fn engine_offloads(&self) -> Option<String> {
        self.engine
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|(dp, _)| dp.offloads().to_string())
    }

    /// The peer table the engine's workers were last handed.
    pub fn engine_peers(&self) -> Vec<felt_proto::debug::EnginePeer> {
        let guard = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let Some((dp, _)) = guard.as_ref() else { return Vec::new() };
        dp.peers()
            .into_iter()
            .map(|p| felt_proto::debug::EnginePeer {
                name: p.name,
                pod_cidr: p.pod_cidr,
                pod_cidr6: p.pod_cidr6,
                underlay_ip: p.underlay_ip,
                vtep_mac: p.vtep_mac,
            })
            .collect()
    }

    /// Moves the engine's counters into the metrics (by the difference since last time).
    pub fn refresh_engine_metrics(&self) {
        let mut guard = self.engine.lock().unwrap_or_else(|p| p.into_inner());
        let Some((dp, last)) = guard.as_mut() else { return };
        let now = dp.counters();
        let m = &self.metrics;
        let inc = |c: &prometheus_client::metrics::counter::Counter, new: u64, old: u64| {
            c.inc_by(new.saturating_sub(old));
        };
        let per_direction = [
            (&m.engine_packets, "tx", now.tx_packets, last.tx_packets),
            (&m.engine_packets, "rx", now.rx_packets, last.rx_packets),
            (&m.engine_bytes, "tx", now.tx_bytes, last.tx_bytes),
            (&m.engine_bytes, "rx", now.rx_bytes, last.rx_bytes),
            (&m.engine_batches, "tx", now.tx_super_packets, last.tx_super_packets),
            (&m.engine_batches, "rx", now.rx_coalesced, last.rx_coalesced),
        ];
        for (family, direction, new, old) in per_direction {
            inc(&family.get_or_create(&DirectionLabel { direction }), new, old);
        }
        for (i, r) in DropReason::ALL.iter().enumerate() {
            inc(
                &m.engine_drops.get_or_create(&ReasonLabel { reason: r.label() }),
                now.drops[i],
                last.drops[i],
            );
        }
        *last = now;
    }

    /// Locks the reconcile state (a poisoned lock still holds valid data).
    pub fn state(&self) -> std::sync::MutexGuard<'_, AgentState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Locks the probe table.
    pub fn probes(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ProbeState>> {
        self.probes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop is alive.
    pub fn beat(&self) {
        self.heartbeat.store(unix_ms(SystemTime::now()), Ordering::Relaxed);
    }

    /// Time since the loop's last sign of life.
    pub fn since_heartbeat(&self) -> Duration {
        let last = self.heartbeat.load(Ordering::Relaxed);
        Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(last))
    }

    /// Records an error for `/debug/state` (the caller logs it).
    pub fn error(&self, message: String) {
        let mut s = self.state();
        if s.recent_errors.len() == RECENT_ERRORS {
            s.recent_errors.pop_front();
        }
        s.recent_errors.push_back(ErrorEntry { at: rfc3339(SystemTime::now()), message });
    }

    /// The data plane in force.
    pub fn backend(&self) -> DataplaneKind {
        self.config().backend
    }

    /// Why the agent is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        let s = self.state();
        let mut why = Vec::new();
        if s.lease.is_none() {
            why.push("no pod subnet lease yet".to_owned());
        }
        if !s.registry_synced {
            why.push("the registry has not been read successfully".to_owned());
        }
        why.extend(s.forbidden.iter().cloned());
        if !s.programmed {
            why.push("the data plane does not match the desired state yet".to_owned());
        }
        why
    }
}
