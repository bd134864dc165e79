//! One reconcile pass: registry → peers → data plane → report, plus what
//! the node publishes about itself (its record and the subnet file).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use felt_overlay::kernel::ApplyReport;
use felt_overlay::{Held, Op, Peer, plan};
use felt_proto::{BackendData, BackendType, NodeRecord, SubnetFile};
use ipnet::IpNet;
use tracing::{debug, info, warn};

use super::metrics::{OpLabels, PeerState, PhaseLabel, ReasonLabel, ResultLabel, SourceLabel, StateLabel};
use super::status::{Malformed, ReconcileView, rfc3339};
use super::{Agent, view};
use crate::registry::{Changed, Snapshot};
use crate::util::error_chain;
use crate::util::write_atomic;

/// How much a pass re-reads. A full pass reads and plans the whole fabric;
/// one woken by the registry reads only what changed there, plans only the
/// peers that changed and trusts what it knows of the kernel (anything else
/// that changes the kernel wakes a full pass).
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
        // A pass that ended early may have moved the view without the
        // kernel: the next one starts from nothing it remembers.
        if !std::mem::replace(&mut self.state.complete, false) {
            self.forget();
        }
        // What the last pass left, when only the registry changed since.
        let known = self.state.known.take().filter(|_| pass == Pass::Registry);
        let Some((read, synced)) = self.read_registry(pass).await else { return false };
        phase.done("registry");
        let Some(changes) = self.accept(read, synced) else { return false };
        phase.done("view");
        let Some(index) = self.ensure_device(!changes.is_empty()).await else { return false };
        phase.done("device");
        let (mut held, fresh) = match known.filter(|(i, _)| *i == index) {
            Some((_, held)) => (held, None),
            None => match self.kernel.observe(index).await {
                Ok(o) => (Held::default(), Some(self.dataplane.owned(o))),
                Err(e) => {
                    self.shared.state().programmed = false;
                    self.fail(format!("cannot read the data plane; will retry: {}", error_chain(&e)));
                    return false;
                }
            },
        };
        phase.done("observe");
        let ops = match &fresh {
            // Only the peers that changed, against what the kernel holds at their keys.
            None => {
                let now: Vec<Peer> = changes.iter().filter_map(|(_, now)| now.clone()).collect();
                let around = held.around(changes.iter().flat_map(|(was, now)| was.iter().chain(now)));
                plan(&self.dataplane.desired(&now), &around)
            }
            Some(observed) => plan(&self.dataplane.desired(&self.all_peers()), observed),
        };
        self.expect(fresh.as_ref(), &held, &ops);
        let report = if ops.is_empty() { Default::default() } else { self.kernel.apply(index, &ops).await };
        self.count_applied(&report);
        if report.failed.is_empty() {
            if let Some(observed) = fresh {
                held = Held::from(observed);
            }
            held.apply(&report.applied);
            self.state.known = Some((index, held));
        } else {
            // Unsure what the device holds: every change wakes the repair.
            *self.expected.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
        phase.done("apply");
        let egress_ok = self.reconcile_nft(&changes, pass);
        phase.done("nftables");
        let in_sync = report.failed.is_empty() && egress_ok;
        self.report(&report, in_sync, started.elapsed());
        self.check_limits(self.peer_count());
        phase.done("report");
        self.state.complete = true;
        in_sync && synced
    }

    /// Drops what passes remember of the registry, the kernel and the
    /// tables: the next pass reads all three whole.
    fn forget(&mut self) {
        self.state.live = None;
        self.state.known = None;
        self.state.nft_known = None;
        self.state.nft_known6 = None;
    }

    /// Every peer, by name.
    fn all_peers(&self) -> Vec<Peer> {
        self.state.live.as_ref().map(|l| l.peers().cloned().collect()).unwrap_or_default()
    }

    fn peer_count(&self) -> usize {
        self.state.live.as_ref().map_or(0, |l| l.peers().len())
    }

    /// Tells the change listener what the device will hold once `ops` are
    /// done, before they are sent, so their echoes are recognised: from
    /// what it already knew, or from `fresh`, just dumped.
    fn expect(&self, fresh: Option<&felt_overlay::Observed>, held: &Held, ops: &[felt_overlay::Op]) {
        use felt_overlay::kernel::echo::Expected;
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        match (expected.as_mut(), fresh) {
            (Some(e), None) => e.update(ops),
            (_, fresh) => {
                let mut e = match fresh {
                    Some(observed) => Expected::of(observed),
                    None => Expected::of(&held.to_observed()),
                };
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

    /// What changed in the registry (everything, on a full pass or when it
    /// cannot say), publishing our record again when it is missing, stale
    /// or was changed under us; `None` (the data plane kept as it is) when
    /// the registry cannot be read.
    async fn read_registry(&mut self, pass: Pass) -> Option<(Read, bool)> {
        let full = pass == Pass::Full;
        if full {
            self.shared.metrics.relists.inc();
        }
        let changes = if full || self.state.live.is_none() { Ok(None) } else { self.registry.changes() };
        let read = match changes {
            Ok(Some((changes, synced))) => Ok((Read::Changes(changes), synced)),
            Ok(None) => self.registry.snapshot(full).map(|(snap, synced)| (Read::Whole(snap), synced)),
            Err(e) => Err(e),
        };
        let (read, synced) = match read {
            Ok(r) => r,
            // Starting: the watch has not listed yet, and wakes the loop when it has.
            Err(crate::registry::RegistryError::NotListed) => {
                debug!("waiting for the registry's first list");
                self.shared.state().registry_synced = false;
                return None;
            }
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
        let me = self.me.name.as_str();
        let in_read = match &read {
            Read::Whole(snap) => Some(snap.records.iter().find(|r| r.name == me).cloned()),
            Read::Changes(changes) => {
                changes.iter().find(|c| c.name == me).map(|c| c.now.clone().and_then(Result::ok))
            }
        };
        let wanted = self.wanted_record();
        let stale = self.registry.published(in_read).is_some_and(|p| p.as_ref() != Some(&wanted));
        if synced && (self.state.publish_failed || stale) {
            self.publish().await;
        }
        Some((read, synced))
    }

    /// Moves the view (see [`view::Live`]) by what was read, says once why
    /// each bad document or record is skipped, and shows the result in the
    /// metrics and the state; the peers that changed, or `None` when the
    /// registry cannot be read for a build.
    fn accept(&mut self, read: Read, synced: bool) -> Option<Vec<view::PeerChange>> {
        let (changes, whole) = match read {
            Read::Whole(snap) => (self.rebuild(&snap), true),
            Read::Changes(docs) => {
                let records: Vec<(String, Option<NodeRecord>)> =
                    docs.iter().map(|c| (c.name.clone(), c.now.clone().and_then(Result::ok))).collect();
                let (me, net) = (&self.me, &self.cfg.net);
                let updated = self.state.live.as_mut().and_then(|live| live.update(&records, me, net));
                for doc in docs {
                    match doc.now {
                        Some(Err(why)) => {
                            self.complain_once(doc.document.clone(), &why, "malformed", MALFORMED);
                            self.state.malformed.insert(doc.document, why);
                        }
                        _ => {
                            self.state.complaints.remove(&doc.document);
                            self.state.malformed.remove(&doc.document);
                        }
                    }
                }
                match updated {
                    Some(changes) => {
                        self.complain_of(records.iter().map(|(name, _)| name.as_str()));
                        (changes, false)
                    }
                    // A clash: only a build orders it.
                    None => match self.registry.snapshot(false) {
                        Ok((snap, _)) => (self.rebuild(&snap), true),
                        Err(e) => {
                            self.state.live = None;
                            self.shared.metrics.registry_errors.inc();
                            self.fail(format!("cannot read the registry: {}", error_chain(&e)));
                            return None;
                        }
                    },
                }
            }
        };
        self.log_peer_changes(&changes);
        let live = self.state.live.as_ref().expect("a view was just built or moved");
        let m = &self.shared.metrics;
        m.peers.get_or_create(&StateLabel { state: PeerState::desired }).set(live.peers().len() as i64);
        m.peers.get_or_create(&StateLabel { state: PeerState::rejected }).set(live.rejected().len() as i64);
        m.peers.get_or_create(&StateLabel { state: PeerState::pending }).set(live.pending().len() as i64);
        let source = self.registry.peer_source();
        for s in source.iter().flat_map(|_| ["nodes", "feltnodes", "undecided"]) {
            m.peer_source.get_or_create(&SourceLabel { source: s }).set(i64::from(source == Some(s)));
        }
        let mut st = self.shared.state();
        st.registry_synced = synced;
        st.forbidden = self.registry.forbidden();
        st.peer_source = source;
        if whole {
            st.peers = live.peers().cloned().collect();
        } else {
            patch(&mut st.peers, &changes);
        }
        st.pending = live.pending().cloned().collect();
        st.rejected = live.rejected().cloned().collect();
        st.malformed = self
            .state
            .malformed
            .iter()
            .map(|(document, error)| Malformed { document: document.clone(), error: error.clone() })
            .collect();
        drop(st);
        Some(changes)
    }

    /// Builds the view from every record, with today's peers as the
    /// incumbents (see [`view::build`]), and says every complaint again.
    fn rebuild(&mut self, snap: &Snapshot) -> Vec<view::PeerChange> {
        let old = self.state.live.take();
        let stable = |name: &str| old.as_ref().is_some_and(|l| l.peer(name).is_some());
        let new = view::Live::build(&snap.records, &self.me, &self.cfg.net, stable);
        let changes = match &old {
            Some(old) => old.changes_to(&new),
            None => new.peers().map(|p| (None, Some(p.clone()))).collect(),
        };
        let rejected: Vec<_> = new.rejected().cloned().collect();
        self.state.live = Some(new);
        let mut live = BTreeSet::new();
        for (file, why) in &snap.malformed {
            live.insert(file.clone());
            self.complain_once(file.clone(), why, "malformed", MALFORMED);
        }
        for r in rejected {
            live.insert(r.node.clone());
            self.complain_once(r.node, &r.message, r.reason.label(), REJECTED);
        }
        self.state.complaints.retain(|k, _| live.contains(k));
        self.state.malformed = snap.malformed.iter().cloned().collect();
        changes
    }

    /// Says once why each of `names` is refused, forgets those that are not
    /// any more, and says again why each record refused for a clash is (the
    /// peer it clashes with may have changed).
    fn complain_of<'a>(&mut self, names: impl Iterator<Item = &'a str>) {
        let Some(live) = self.state.live.as_ref() else { return };
        let mut now = Vec::new();
        let mut gone = Vec::new();
        for name in names {
            match live.rejection(name) {
                Some(r) => now.push(r.clone()),
                None => gone.push(name.to_owned()),
            }
        }
        // Said again only when it changed (see `complain_once`).
        let clashes = live.rejected().filter(|r| r.reason == view::RejectReason::Clash);
        now.extend(clashes.cloned());
        for name in gone {
            self.state.complaints.remove(&name);
        }
        for r in now {
            self.complain_once(r.node, &r.message, r.reason.label(), REJECTED);
        }
    }

    /// Hands the engine its peers when they changed (the first table too,
    /// even empty: the userspace workers wait for it) and creates or
    /// repairs the device;
    /// its index, or `None` when it cannot be set up.
    async fn ensure_device(&mut self, peers_changed: bool) -> Option<u32> {
        if self.dataplane.engine().is_some() && (peers_changed || !self.state.engine_fed) {
            self.dataplane.set_peers(&self.all_peers());
            self.state.engine_fed = true;
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

    /// Logs and counts every op the kernel took or refused; past
    /// [`MANY`] ops, one line says how many of each kind (each at debug level).
    fn count_applied(&self, report: &ApplyReport) {
        let many = report.applied.len() > MANY;
        let mut kinds = BTreeMap::new();
        for op in &report.applied {
            if many {
                debug!(op = op.kind(), entry = %describe(op), "programmed");
                *kinds.entry(op.kind()).or_insert(0) += 1;
            } else {
                info!(op = op.kind(), entry = %describe(op), "programmed");
            }
            self.shared.metrics.ops.get_or_create(&OpLabels { op: op.kind(), result: "ok" }).inc();
        }
        if many {
            info!(ops = report.applied.len(), by_kind = ?kinds, "programmed (each entry at debug level)");
        }
        for (op, why) in &report.failed {
            self.shared.metrics.ops.get_or_create(&OpLabels { op: op.kind(), result: "error" }).inc();
            self.fail(format!("programming {} {} failed; will retry: {why}", op.kind(), describe(op)));
        }
    }

    /// The pass's outcome in the metrics, the state and the log.
    fn report(&self, report: &ApplyReport, in_sync: bool, elapsed: Duration) {
        let peers = self.state.live.as_ref().map(|l| l.peers());
        let programmed_peers = match peers {
            None => 0,
            Some(peers) if in_sync => peers.len(),
            Some(peers) => peers.filter(|p| !report.failed.iter().any(|(op, _)| concerns(op, p))).count(),
        };
        let peers = self.peer_count();
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
            debug!(peers, ?elapsed, "in sync");
        } else {
            info!(peers, applied, failed, ?elapsed, "reconciled");
        }
    }

    /// Keeps felt's nftables tables right: the masquerade for the cluster
    /// CIDRs, the VXLAN port lock (kernel mode), and every node's underlay
    /// address in their set (see `felt_overlay::nft`): table `ip felt`, and
    /// `ip6 felt` for the IPv6 masquerade and an IPv6 underlay's lock;
    /// `false` on failure. A registry pass moves the set the last pass left
    /// by the peers that changed; others read the table (and the port
    /// lock's drop counter) from the kernel.
    fn reconcile_nft(&mut self, changes: &[view::PeerChange], pass: Pass) -> bool {
        use felt_overlay::nft::{Family, Table};
        let locked = self.cfg.vxlan_port_lock && self.dataplane.engine().is_none();
        let ipv6 = self.underlay.ip.is_ipv6();
        let masq = self.cfg.net.ip_masq;
        let port = self.dataplane.spec().port;
        let ok = self.reconcile_table(
            Family::Ipv4,
            Table {
                masquerade: self.cfg.net.network.map(IpNet::V4).filter(|_| masq),
                port_lock: (locked && !ipv6).then_some(port),
                nodes: BTreeSet::new(),
            },
            changes,
            pass,
        );
        let shape6 = Table {
            masquerade: self.cfg.net.ipv6_network.map(IpNet::V6).filter(|_| masq),
            port_lock: (locked && ipv6).then_some(port),
            nodes: BTreeSet::new(),
        };
        // An empty ip6 table is checked once (a leftover goes) and then left alone.
        if shape6.is_empty() && self.state.nft6_checked {
            return ok;
        }
        let ok6 = self.reconcile_table(Family::Ipv6, shape6, changes, pass);
        self.state.nft6_checked |= ok6;
        ok && ok6
    }

    /// Every node's underlay address of `family`'s table, ours included.
    fn nodes_of(&self, family: felt_overlay::nft::Family) -> BTreeSet<IpAddr> {
        let v6 = family == felt_overlay::nft::Family::Ipv6;
        let peers = self.state.live.iter().flat_map(|l| l.peers()).map(|p| p.underlay_ip);
        peers.chain([self.underlay.ip]).filter(|ip| ip.is_ipv6() == v6).collect()
    }

    /// One table of [`Self::reconcile_nft`]: `shape` is what it holds but
    /// the node set, which this fills.
    fn reconcile_table(
        &mut self,
        family: felt_overlay::nft::Family,
        shape: felt_overlay::nft::Table,
        changes: &[view::PeerChange],
        pass: Pass,
    ) -> bool {
        use felt_overlay::nft::{self, Family, Nft, Plan, Table};
        let known_slot =
            if family == Family::Ipv6 { &mut self.state.nft_known6 } else { &mut self.state.nft_known };
        let known = known_slot.take().filter(|_| pass == Pass::Registry);
        // A registry pass, the table's shape as it was: the set moves by the
        // peers that changed, and that is the plan.
        let (want, moved) = match known {
            Some(mut k) if k.masquerade == shape.masquerade && k.port_lock == shape.port_lock => {
                let v6 = family == Family::Ipv6;
                let of = |p: &Option<Peer>| p.as_ref().map(|p| p.underlay_ip).filter(|ip| ip.is_ipv6() == v6);
                let went: BTreeSet<IpAddr> = changes.iter().filter_map(|(was, _)| of(was)).collect();
                let came: BTreeSet<IpAddr> = changes.iter().filter_map(|(_, now)| of(now)).collect();
                let add: Vec<IpAddr> = came.iter().filter(|ip| !k.nodes.contains(ip)).copied().collect();
                let del: Vec<IpAddr> = went.difference(&came).copied().collect();
                for ip in &del {
                    k.nodes.remove(ip);
                }
                k.nodes.extend(add.iter().copied());
                let plan = if add.is_empty() && del.is_empty() {
                    Plan::Nothing
                } else {
                    Plan::Elements { add, del }
                };
                (k, Some(plan))
            }
            k => {
                let want = Table { nodes: self.nodes_of(family), ..shape };
                let plan = k.map(|k| nft::plan(Some(&want), &nft::Observed::built(&k)));
                (want, plan)
            }
        };
        let socket = if family == Family::Ipv6 { &mut self.nft6 } else { &mut self.nft };
        let result = (|| {
            let n = match socket {
                Some(n) => n,
                None => socket.insert(Nft::open_for(family)?),
            };
            let (p, locked_out) = match moved {
                Some(p) => (p, None),
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

    /// Says who joined, changed and left; past [`MANY`], how many (each
    /// at debug level).
    fn log_peer_changes(&self, changes: &[view::PeerChange]) {
        if changes.len() > MANY {
            let count = |f: fn(&view::PeerChange) -> bool| changes.iter().filter(|c| f(c)).count();
            let joined = count(|c| c.0.is_none());
            let left = count(|c| c.1.is_none());
            let changed = changes.len() - joined - left;
            info!(joined, changed, left, "peers joined, changed and left (each at debug level)");
            for (was, now) in changes {
                if let Some(p) = now.as_ref().or(was.as_ref()) {
                    debug!(peer = %p.name, was = ?was, now = ?now, "peer");
                }
            }
            return;
        }
        for change in changes {
            match change {
                (None, Some(p)) => {
                    info!(peer = %p.name, pod_cidrs = %p.pod_cidrs(), underlay = %p.underlay_ip, vtep_mac = %p.vtep_mac, "peer joined")
                }
                (Some(_), Some(p)) => {
                    info!(peer = %p.name, pod_cidrs = %p.pod_cidrs(), underlay = %p.underlay_ip, vtep_mac = %p.vtep_mac, "peer changed")
                }
                (Some(p), None) => info!(peer = %p.name, "peer left"),
                (None, None) => {}
            }
        }
    }
}

/// What a pass read of the registry.
enum Read {
    /// Every document: a full pass, or the registry cannot say what changed.
    Whole(Snapshot),
    /// The documents that changed since the last read.
    Changes(Vec<Changed>),
}

/// Past this many, a pass's peer changes and writes are summed up in one
/// line each rather than one line apiece (a cold start at 5,000 peers
/// wrote 20,000 lines: 30-50 ms of a 0.55 s pass).
const MANY: usize = 100;

const MALFORMED: &str = "ignoring malformed node document";
const REJECTED: &str = "ignoring node record";

/// Moves `peers` (sorted by name) by `changes`.
fn patch(peers: &mut Vec<Peer>, changes: &[view::PeerChange]) {
    for (was, now) in changes {
        let Some(name) = was.as_ref().or(now.as_ref()).map(|p| p.name.clone()) else { continue };
        match (peers.binary_search_by(|p| p.name.cmp(&name)), now) {
            (Ok(i), Some(p)) => peers[i] = p.clone(),
            (Ok(i), None) => {
                peers.remove(i);
            }
            (Err(i), Some(p)) => peers.insert(i, p.clone()),
            (Err(_), None) => {}
        }
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
