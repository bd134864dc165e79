//! One reconcile pass: registry → peers → data plane → report, plus what
//! the node publishes about itself (its record and the subnet file).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use felt_overlay::kernel::ApplyReport;
use felt_overlay::{Op, Peer, plan};
use felt_proto::{BackendData, BackendType, NodeRecord, SubnetFile};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::metrics::{OpLabels, PeerState, PhaseLabel, ReasonLabel, ResultLabel, StateLabel};
use super::status::{Malformed, ReconcileView, rfc3339};
use super::{Agent, view};
use crate::registry::Snapshot;
use crate::util::error_chain;
use crate::util::write_atomic;

/// How much a pass re-reads. Every pass plans the whole fabric; one woken
/// by the registry reads only what changed there and trusts what it knows
/// of the kernel (anything else that changes the kernel wakes a full pass).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// Re-read everything: the start, the resync timer, a netlink change, a reload.
    Full,
    /// The registry changed.
    Registry,
}

impl Agent {
    /// The record this node should have in the registry.
    fn wanted_record(&self) -> NodeRecord {
        let mut record = NodeRecord::new(&self.me.name);
        record.pod_cidrs =
            self.me.pod_cidr.map(IpNet::V4).into_iter().chain(self.me.pod_cidr6.map(IpNet::V6)).collect();
        record.public_ip = Some(self.registry.public_ip(self.underlay.ip));
        record.backend_type = Some(BackendType::Vxlan);
        record.backend_data =
            Some(BackendData { vni: self.dataplane.spec().vni, vtep_mac: self.me.vtep_mac });
        record
    }

    /// Publishes our record and writes the subnet file, each only when it changed.
    pub(super) async fn publish(&mut self) {
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
            ipv4: self.cfg.net.network.zip(self.me.pod_cidr),
            mtu: self.dataplane.spec().mtu,
            ip_masq: self.cfg.net.ip_masq,
            ipv6: self.cfg.net.ipv6_network.zip(self.me.pod_cidr6),
        };
        let text = subnet.render_as(self.cfg.compat.subnet_prefix());
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
    /// One full pass: read the registry, decide the peers, program the data
    /// plane, report. Counted as ok only when everything is as desired.
    pub(super) async fn reconcile(&mut self, pass: Pass) {
        let started = Instant::now();
        let ok = self.reconcile_inner(pass, started).await;
        let m = &self.shared.metrics;
        m.reconcile_duration.observe(started.elapsed().as_secs_f64());
        m.reconciles.get_or_create(&ResultLabel { result: if ok { "ok" } else { "error" } }).inc();
    }

    async fn reconcile_inner(&mut self, pass: Pass, started: Instant) -> bool {
        let shared = self.shared.clone();
        let mut phase = Phases::new(&shared.metrics);
        let Some((snap, synced)) = self.read_registry(pass).await else { return false };
        phase.done("registry");
        let view = self.accept(&snap, synced);
        phase.done("view");
        let Some(index) = self.ensure_device(&view.peers).await else { return false };
        phase.done("device");
        // What the last pass left, when only the registry changed since.
        let known = self.state.known.take().filter(|(i, _)| pass == Pass::Registry && *i == index);
        let cached = known.is_some();
        let owned = match known {
            Some((_, owned)) => owned,
            None => match self.kernel.observe(index).await {
                Ok(o) => self.dataplane.owned(o),
                Err(e) => {
                    self.shared.state().programmed = false;
                    self.fail(format!("cannot read the data plane; will retry: {}", error_chain(&e)));
                    return false;
                }
            },
        };
        phase.done("observe");
        let ops = plan(&self.dataplane.desired(&view.peers), &owned);
        self.expect(&owned, cached, &ops);
        let report = if ops.is_empty() { Default::default() } else { self.kernel.apply(index, &ops).await };
        self.count_applied(&report);
        if report.failed.is_empty() {
            let mut owned = owned;
            felt_overlay::apply_to(&mut owned, &report.applied);
            self.state.known = Some((index, owned));
        } else {
            // Unsure what the device holds: every change wakes the repair.
            *self.expected.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        phase.done("apply");
        let egress_ok = self.reconcile_nft(&view.peers, pass);
        phase.done("nftables");
        let in_sync = report.failed.is_empty() && egress_ok;
        self.report(&view.peers, &report, in_sync, started.elapsed());
        self.check_limits(view.peers.len());
        phase.done("report");
        in_sync && synced
    }

    /// Tells the change listener what the device will hold once `ops` are
    /// done, before they are sent, so their echoes are recognised: from
    /// what it already knew when `cached`, else from `owned`, just dumped.
    fn expect(&self, owned: &felt_overlay::Observed, cached: bool, ops: &[felt_overlay::Op]) {
        use felt_overlay::kernel::echo::Expected;
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        match expected.as_mut() {
            Some(e) if cached => e.update(ops),
            _ => {
                let mut e = Expected::of(owned);
                e.update(ops);
                *expected = Some(e);
            }
        }
    }

    /// Warns (once per change: log, metric, `felt status`) when the node's
    /// neighbour table cannot hold what its peers need (see [`super::limits`]).
    fn check_limits(&mut self, peers: usize) {
        use super::limits;
        let Some(limit) = limits::gc_thresh3(std::path::Path::new(limits::GC_THRESH3)) else { return };
        self.shared.metrics.neighbour_shortfall.set(limits::shortfall(peers, limit) as i64);
        let warning = limits::warning(peers, limit);
        if warning != self.state.neighbour_warning {
            if let Some(w) = &warning {
                warn!("{w}");
            }
            self.shared.state().warnings = warning.iter().cloned().collect();
            self.state.neighbour_warning = warning;
        }
    }

    /// The registry's records, publishing ours again when it is missing,
    /// stale or was changed under us; `None` (the data plane kept as it is)
    /// when the registry cannot be read.
    async fn read_registry(&mut self, pass: Pass) -> Option<(Snapshot, bool)> {
        let full = pass == Pass::Full;
        if full {
            self.shared.metrics.relists.inc();
        }
        let (snap, synced) = match self.registry.snapshot(full) {
            Ok(s) => s,
            Err(e) => {
                self.shared.metrics.registry_errors.inc();
                self.shared.state().registry_synced = false;
                self.fail(format!(
                    "cannot read the registry; keeping the data plane as it is: {}",
                    error_chain(&e)
                ));
                return None;
            }
        };
        let wanted = self.wanted_record();
        if synced
            && (self.state.publish_failed
                || self.registry.published(&snap, &self.me.name).as_ref() != Some(&wanted))
        {
            self.publish().await;
        }
        Some((snap, synced))
    }

    /// Turns records into peers (see [`view::build`]), says once why each bad
    /// one is skipped, and shows the result in the metrics and the state.
    fn accept(&mut self, snap: &Snapshot, synced: bool) -> view::View {
        let mut live = BTreeSet::new();
        for (file, why) in &snap.malformed {
            live.insert(file.clone());
            self.complain_once(file.clone(), why, "malformed", "ignoring malformed node document");
        }
        // The last pass's peers, sorted by name.
        let was = &self.state.peers;
        let stable = |name: &str| was.binary_search_by(|p| p.name.as_str().cmp(name)).is_ok();
        let view = view::build(&snap.records, &self.me, &self.cfg.net, stable);
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
        let mut st = self.shared.state();
        st.registry_synced = synced;
        st.forbidden = self.registry.forbidden();
        st.peer_source = self.registry.peer_source();
        st.peers = view.peers.clone();
        st.pending = view.pending.clone();
        st.rejected = view.rejected.clone();
        st.malformed = snap
            .malformed
            .iter()
            .map(|(document, error)| Malformed { document: document.clone(), error: error.clone() })
            .collect();
        drop(st);
        view
    }

    /// Hands the engine its peers (the first table too, even empty: the
    /// userspace workers wait for it) and creates or repairs the device;
    /// its index, or `None` when it cannot be set up.
    async fn ensure_device(&mut self, peers: &[Peer]) -> Option<u32> {
        if self.dataplane.engine().is_some() && self.state.engine_peers.as_deref() != Some(peers) {
            self.dataplane.set_peers(peers);
            self.state.engine_peers = Some(peers.to_vec());
        }
        self.shared.refresh_engine_metrics();
        match self.dataplane.ensure_device(&self.kernel, self.me.pod_cidr, self.me.pod_cidr6).await {
            Ok((index, changes)) => {
                if !changes.is_empty() {
                    info!(device = %self.dataplane.spec().name, changes = ?changes, "VXLAN device set up");
                }
                self.ifindex.store(index, Ordering::Relaxed);
                self.shared.state().device_index = index;
                Some(index)
            }
            Err(e) => {
                self.shared.state().programmed = false;
                self.fail(format!("cannot set up the VXLAN device; will retry: {}", error_chain(&e)));
                None
            }
        }
    }

    /// Logs and counts every op the kernel took or refused.
    fn count_applied(&self, report: &ApplyReport) {
        for op in &report.applied {
            info!(op = op.kind(), entry = %describe(op), "programmed");
            self.shared.metrics.ops.get_or_create(&OpLabels { op: op.kind(), result: "ok" }).inc();
        }
        for (op, why) in &report.failed {
            self.shared.metrics.ops.get_or_create(&OpLabels { op: op.kind(), result: "error" }).inc();
            self.fail(format!("programming {} {} failed; will retry: {why}", op.kind(), describe(op)));
        }
    }

    /// The pass's outcome in the metrics, the state and the log.
    fn report(&self, peers: &[Peer], report: &ApplyReport, in_sync: bool, elapsed: Duration) {
        let programmed_peers = if in_sync {
            peers.len()
        } else {
            peers.iter().filter(|p| !report.failed.iter().any(|(op, _)| concerns(op, p))).count()
        };
        let m = &self.shared.metrics;
        m.peers.get_or_create(&StateLabel { state: PeerState::programmed }).set(programmed_peers as i64);
        if in_sync {
            let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
            m.last_sync.set(now.as_secs_f64());
        }
        let (applied, failed) = (report.applied.len(), report.failed.len());
        {
            let mut st = self.shared.state();
            st.programmed = in_sync;
            st.last_reconcile = Some(ReconcileView {
                at: rfc3339(SystemTime::now()),
                duration_ms: elapsed.as_secs_f64() * 1e3,
                applied,
                failed,
            });
        }
        if applied + failed == 0 {
            debug!(peers = peers.len(), ?elapsed, "in sync");
        } else {
            info!(peers = peers.len(), applied, failed, ?elapsed, "reconciled");
        }
    }

    /// Keeps felt's nftables tables right: the masquerade for the cluster
    /// CIDRs, the VXLAN port lock (kernel mode), and every node's underlay
    /// address in their set (see `felt_overlay::nft`): table `ip felt`, and
    /// `ip6 felt` for the IPv6 masquerade and an IPv6 underlay's lock;
    /// `false` on failure. A registry pass plans against the table the last
    /// pass left; others read it (and the port lock's drop counter) from the
    /// kernel.
    fn reconcile_nft(&mut self, peers: &[Peer], pass: Pass) -> bool {
        use felt_overlay::nft::{Family, Table};
        let locked = self.cfg.vxlan_port_lock && self.dataplane.engine().is_none();
        let ipv6 = self.underlay.ip.is_ipv6();
        let ours = self.underlay.ip;
        let nodes = |v6: bool| {
            peers.iter().map(|p| p.underlay_ip).chain([ours]).filter(|ip| ip.is_ipv6() == v6).collect()
        };
        let masq = self.cfg.net.ip_masq;
        let want = Table {
            masquerade: self.cfg.net.network.map(IpNet::V4).filter(|_| masq),
            port_lock: (locked && !ipv6).then_some(self.dataplane.spec().port),
            nodes: nodes(false),
        };
        let ok = self.reconcile_table(Family::Ipv4, want, pass);
        let want6 = Table {
            masquerade: self.cfg.net.ipv6_network.map(IpNet::V6).filter(|_| masq),
            port_lock: (locked && ipv6).then_some(self.dataplane.spec().port),
            nodes: nodes(true),
        };
        // An empty ip6 table is checked once (a leftover goes) and then left alone.
        if want6.is_empty() && self.state.nft6_checked {
            return ok;
        }
        let ok6 = self.reconcile_table(Family::Ipv6, want6, pass);
        self.state.nft6_checked |= ok6;
        ok && ok6
    }

    /// One table of [`Self::reconcile_nft`].
    fn reconcile_table(
        &mut self,
        family: felt_overlay::nft::Family,
        want: felt_overlay::nft::Table,
        pass: Pass,
    ) -> bool {
        use felt_overlay::nft::{self, Family, Nft};
        let known_slot =
            if family == Family::Ipv6 { &mut self.state.nft_known6 } else { &mut self.state.nft_known };
        let known = known_slot.take().filter(|_| pass == Pass::Registry);
        let socket = if family == Family::Ipv6 { &mut self.nft6 } else { &mut self.nft };
        let result = (|| {
            let n = match socket {
                Some(n) => n,
                None => socket.insert(Nft::open_for(family)?),
            };
            let (p, locked_out) = match &known {
                Some(k) => (nft::plan(Some(&want), &nft::Observed::built(k)), None),
                None => {
                    let seen = n.observe()?;
                    (nft::plan(Some(&want), &seen), Some(seen.locked_out.unwrap_or(0)))
                }
            };
            n.apply(&p, Some(&want)).map(|()| (p, locked_out))
        })();
        let count = |op, result| self.shared.metrics.ops.get_or_create(&OpLabels { op, result }).inc();
        match result {
            Ok((p, locked_out)) => {
                if let Some(op) = p.kind() {
                    count(op, "ok");
                    info!(op, plan = ?p, table = %format!("{} {}", family.name(), nft::TABLE), "programmed");
                }
                // The lock's counter lives in the table of the underlay's family.
                if let Some(drops) = locked_out.filter(|_| want.port_lock.is_some()) {
                    self.count_outsider_drops(drops);
                }
                *(if family == Family::Ipv6 {
                    &mut self.state.nft_known6
                } else {
                    &mut self.state.nft_known
                }) = Some(want);
                true
            }
            Err(e) => {
                // Failures count under the write that builds the table.
                count("set_masquerade", "error");
                // A socket that failed may be broken: open a fresh one next time.
                *(if family == Family::Ipv6 { &mut self.nft6 } else { &mut self.nft }) = None;
                self.fail(format!(
                    "felt's nftables table ({} {}: masquerade, VXLAN port lock) failed; will retry: {}",
                    family.name(),
                    nft::TABLE,
                    error_chain(&e)
                ));
                false
            }
        }
    }

    /// Moves the port lock's counter into the metric; a table rebuilt (its
    /// counter back at zero) counts from zero again.
    fn count_outsider_drops(&mut self, now: u64) {
        let last = std::mem::replace(&mut self.state.outsider_drops, now);
        let new = if now >= last { now - last } else { now };
        if new > 0 {
            warn!(
                datagrams = new,
                port = self.dataplane.spec().port,
                "dropped VXLAN datagrams from addresses that are no node's"
            );
            self.shared.metrics.outsider_drops.inc_by(new);
        }
    }

    /// Says who joined, changed and left: a merge of the old and new peer
    /// lists, both sorted by name.
    fn log_peer_changes(&mut self, peers: &[Peer]) {
        let joined = |p: &Peer| info!(peer = %p.name, pod_cidrs = %p.pod_cidrs(), underlay = %p.underlay_ip, vtep_mac = %p.vtep_mac, "peer joined");
        let left = |p: &Peer| info!(peer = %p.name, "peer left");
        let (mut old, mut new) = (self.state.peers.iter().peekable(), peers.iter().peekable());
        loop {
            match (old.peek(), new.peek()) {
                (Some(o), Some(n)) => match o.name.cmp(&n.name) {
                    std::cmp::Ordering::Less => left(old.next().expect("peeked")),
                    std::cmp::Ordering::Greater => joined(new.next().expect("peeked")),
                    std::cmp::Ordering::Equal => {
                        let (o, n) = (old.next().expect("peeked"), new.next().expect("peeked"));
                        if o != n {
                            info!(peer = %n.name, pod_cidrs = %n.pod_cidrs(), underlay = %n.underlay_ip, vtep_mac = %n.vtep_mac, "peer changed");
                        }
                    }
                },
                (Some(_), None) => left(old.next().expect("peeked")),
                (None, Some(_)) => joined(new.next().expect("peeked")),
                (None, None) => break,
            }
        }
        self.state.peers = peers.to_vec();
    }
}

/// Adds each phase's time to `felt_reconcile_phase_seconds_total`.
struct Phases<'a> {
    metrics: &'a super::metrics::Metrics,
    since: Instant,
}

impl<'a> Phases<'a> {
    fn new(metrics: &'a super::metrics::Metrics) -> Self {
        Phases { metrics, since: Instant::now() }
    }

    /// `phase` ended now; the next one starts.
    fn done(&mut self, phase: &'static str) {
        let now = Instant::now();
        let took = now.duration_since(std::mem::replace(&mut self.since, now));
        self.metrics.reconcile_phase.get_or_create(&PhaseLabel { phase }).inc_by(took.as_secs_f64());
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

fn is_peers_cidr(dst: IpNet, p: &Peer) -> bool {
    p.pod_cidr.is_some_and(|c| dst == IpNet::V4(c)) || p.pod_cidr6.is_some_and(|c| dst == IpNet::V6(c))
}

/// True when `op` sets or removes one of peer `p`'s entries.
fn concerns(op: &Op, p: &Peer) -> bool {
    match op {
        Op::SetRoute(r) => is_peers_cidr(r.dst, p),
        Op::DelRoute(dst) => is_peers_cidr(*dst, p),
        Op::SetNeighbour(n) | Op::DelNeighbour(n) => {
            p.vtep_ip().is_some_and(|v| n.ip == v) || p.vtep_ip6().is_some_and(|v| n.ip == v)
        }
        Op::SetFdb(f) | Op::DelFdb(f) => f.mac == p.vtep_mac,
    }
}
