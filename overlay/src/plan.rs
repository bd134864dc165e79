//! The pure diff between what the agent wants and what the kernel holds.
//!
//! `plan` is a plain function: it never touches the kernel, so every case of
//! the reconcile is a row in a table test (`plan/tests.rs`). Its promises:
//! - an entry that is already right yields no op (restarts rewrite nothing);
//! - only entries felt owns are removed: permanent neighbours and FDB
//!   entries on felt's own VXLAN device, and routes tagged with
//!   [`crate::ROUTE_PROTOCOL`];
//! - ops come in a safe order: removals first (route, neighbour, FDB), then
//!   additions in the order Flannel uses (neighbour, FDB, route), so a route
//!   never points at a VTEP the kernel cannot resolve yet.

use std::collections::BTreeSet;

use foldhash::{HashMap, HashSet};
use std::net::IpAddr;

use felt_proto::MacAddr;
use ipnet::IpNet;
use serde::Serialize;

pub use felt_proto::entry::Op;

use crate::{FdbEntry, Neighbour, Peer, Route};

/// The data-plane entries a set of peers needs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Desired {
    /// One route per peer and family.
    pub routes: Vec<Route>,
    /// One neighbour per peer and family.
    pub neighbours: Vec<Neighbour>,
    /// One FDB entry per peer.
    pub fdb: Vec<FdbEntry>,
}

/// The entries each peer needs, in peer order: per family a route via the
/// peer's VTEP address and a neighbour entry that resolves it to the VTEP
/// MAC; one FDB entry, shared by both families, that sends the MAC to the
/// peer's underlay address.
pub fn desired(peers: &[Peer]) -> Desired {
    let mut d = Desired::default();
    for p in peers {
        if let (Some(cidr), Some(vtep)) = (p.pod_cidr, p.vtep_ip()) {
            d.routes.push(Route { dst: cidr.into(), gateway: vtep.into() });
            d.neighbours.push(Neighbour { ip: vtep.into(), mac: p.vtep_mac });
        }
        if let (Some(cidr), Some(vtep)) = (p.pod_cidr6, p.vtep_ip6()) {
            d.routes.push(Route { dst: cidr.into(), gateway: vtep.into() });
            d.neighbours.push(Neighbour { ip: vtep.into(), mac: p.vtep_mac });
        }
        d.fdb.push(FdbEntry { mac: p.vtep_mac, dst: p.underlay_ip });
    }
    d
}

/// A route as the kernel reported it, reduced to what `plan` checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ObservedRoute {
    /// Destination prefix.
    pub dst: IpNet,
    /// Gateway, if any.
    pub gateway: Option<IpAddr>,
    /// Leaves through felt's VXLAN device.
    pub on_device: bool,
    /// Carries `RTNH_F_ONLINK`.
    pub onlink: bool,
    /// Tagged with felt's route protocol.
    pub ours: bool,
}

impl ObservedRoute {
    /// Destination and gateway, when this is a route as felt programs it
    /// (its own, through its device, onlink).
    pub fn as_felts(&self) -> Option<(IpNet, IpAddr)> {
        (self.ours && self.on_device && self.onlink).then_some((self.dst, self.gateway?))
    }
}

/// What the kernel holds that `plan` cares about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Main-table routes (IPv4 and IPv6) via felt's device or tagged as felt's.
    pub routes: Vec<ObservedRoute>,
    /// Permanent neighbours (IPv4 and IPv6) on felt's device.
    pub neighbours: Vec<Neighbour>,
    /// FDB entries with a remote on felt's device.
    pub fdb: Vec<FdbEntry>,
}

impl Observed {
    /// Sorted, so that two hold the same entries exactly when equal.
    pub fn into_sorted(mut self) -> Self {
        self.routes.sort_by_key(|r| (r.dst, r.gateway, r.on_device, r.onlink, r.ours));
        self.neighbours.sort();
        self.fdb.sort();
        self
    }
}

/// The ops that turn `observed` into `desired`, in the order they must run.
pub fn plan(desired: &Desired, observed: &Observed) -> Vec<Op> {
    // Hash lookups throughout: a plan of N peers costs N, not N log N or N².
    let mut dels = Vec::new();
    let mut sets = Vec::new();

    let want_routes: HashMap<IpNet, IpAddr> = desired.routes.iter().map(|r| (r.dst, r.gateway)).collect();
    for o in observed.routes.iter().filter(|o| o.ours && !want_routes.contains_key(&o.dst)) {
        dels.push(Op::DelRoute(o.dst));
    }
    let good: HashSet<(IpNet, IpAddr)> = observed.routes.iter().filter_map(ObservedRoute::as_felts).collect();
    let route_sets: Vec<Op> = desired
        .routes
        .iter()
        .filter(|r| !good.contains(&(r.dst, r.gateway)))
        .map(|r| Op::SetRoute(*r))
        .collect();

    let want_neigh: HashMap<IpAddr, MacAddr> = desired.neighbours.iter().map(|n| (n.ip, n.mac)).collect();
    let have_neigh: HashMap<IpAddr, MacAddr> = observed.neighbours.iter().map(|n| (n.ip, n.mac)).collect();
    for n in &observed.neighbours {
        if !want_neigh.contains_key(&n.ip) {
            dels.push(Op::DelNeighbour(*n));
        }
    }
    for n in &desired.neighbours {
        if have_neigh.get(&n.ip) != Some(&n.mac) {
            sets.push(Op::SetNeighbour(*n));
        }
    }

    let want_fdb: HashMap<MacAddr, IpAddr> = desired.fdb.iter().map(|f| (f.mac, f.dst)).collect();
    let have_fdb: HashSet<FdbEntry> = observed.fdb.iter().copied().collect();
    // In entry order, once each (as a set of them would give).
    let mut fdb_dels: Vec<FdbEntry> =
        observed.fdb.iter().filter(|f| want_fdb.get(&f.mac) != Some(&f.dst)).copied().collect();
    fdb_dels.sort();
    fdb_dels.dedup();
    dels.extend(fdb_dels.into_iter().map(Op::DelFdb));
    for f in &desired.fdb {
        if !have_fdb.contains(f) {
            sets.push(Op::SetFdb(*f));
        }
    }

    dels.sort_by_key(|op| match op {
        Op::DelRoute(_) => 0,
        Op::DelNeighbour(_) => 1,
        _ => 2,
    });
    dels.extend(sets);
    dels.extend(route_sets);
    dels
}

/// What the kernel holds once it took `applied` (ops of a [`plan`]) on top
/// of `observed`: lets a pass plan against what the last one left instead
/// of dumping every entry again. One walk per table, whatever the count of
/// ops.
pub fn apply_to(observed: &mut Observed, applied: &[Op]) {
    let (mut routes, mut neighbours, mut fdb) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut set_routes = Vec::new();
    for op in applied {
        match op {
            // A replace takes the destination's place, whoever held it.
            Op::SetRoute(r) => {
                routes.insert((r.dst, false));
                set_routes.push(ObservedRoute {
                    dst: r.dst,
                    gateway: Some(r.gateway),
                    on_device: true,
                    onlink: true,
                    ours: true,
                });
            }
            Op::DelRoute(dst) => {
                routes.insert((*dst, true));
            }
            Op::SetNeighbour(n) | Op::DelNeighbour(n) => {
                neighbours.insert(n.ip);
            }
            Op::SetFdb(f) | Op::DelFdb(f) => {
                fdb.insert(*f);
            }
        }
    }
    // A removal takes felt's own route only; a replace, any at that destination.
    let gone =
        |o: &ObservedRoute| routes.contains(&(o.dst, false)) || (o.ours && routes.contains(&(o.dst, true)));
    observed.routes.retain(|o| !gone(o));
    observed.routes.extend(set_routes);
    observed.neighbours.retain(|n| !neighbours.contains(&n.ip));
    observed.fdb.retain(|f| !fdb.contains(f));
    for op in applied {
        match op {
            Op::SetNeighbour(n) => observed.neighbours.push(*n),
            Op::SetFdb(f) => observed.fdb.push(*f),
            _ => {}
        }
    }
}

/// What the kernel holds, indexed by the keys a peer's entries have: the
/// state a pass keeps between passes, so that one peer's change costs
/// lookups, not a walk of every entry. [`Held::apply`] follows the same
/// rules as [`apply_to`]; [`Held::around`] cuts out what a [`plan`] of a few
/// peers must see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    routes: HashMap<IpNet, Vec<ObservedRoute>>,
    neighbours: HashMap<IpAddr, MacAddr>,
    fdb: HashMap<MacAddr, Vec<IpAddr>>,
}

impl From<Observed> for Held {
    fn from(o: Observed) -> Self {
        let mut held = Held::default();
        for r in o.routes {
            held.routes.entry(r.dst).or_default().push(r);
        }
        held.neighbours = o.neighbours.into_iter().map(|n| (n.ip, n.mac)).collect();
        for f in o.fdb {
            let dsts = held.fdb.entry(f.mac).or_default();
            if !dsts.contains(&f.dst) {
                dsts.push(f.dst);
            }
        }
        held
    }
}

impl Held {
    /// As it is once the kernel took `applied` (in order).
    pub fn apply(&mut self, applied: &[Op]) {
        for op in applied {
            match op {
                // A replace takes the destination's place, whoever held it.
                Op::SetRoute(r) => {
                    let route = ObservedRoute {
                        dst: r.dst,
                        gateway: Some(r.gateway),
                        on_device: true,
                        onlink: true,
                        ours: true,
                    };
                    self.routes.insert(r.dst, vec![route]);
                }
                // A removal takes felt's own route only.
                Op::DelRoute(dst) => {
                    if let Some(rs) = self.routes.get_mut(dst) {
                        rs.retain(|o| !o.ours);
                        if rs.is_empty() {
                            self.routes.remove(dst);
                        }
                    }
                }
                Op::SetNeighbour(n) => {
                    self.neighbours.insert(n.ip, n.mac);
                }
                Op::DelNeighbour(n) => {
                    self.neighbours.remove(&n.ip);
                }
                Op::SetFdb(f) => {
                    let dsts = self.fdb.entry(f.mac).or_default();
                    if !dsts.contains(&f.dst) {
                        dsts.push(f.dst);
                    }
                }
                Op::DelFdb(f) => {
                    if let Some(dsts) = self.fdb.get_mut(&f.mac) {
                        dsts.retain(|d| *d != f.dst);
                        if dsts.is_empty() {
                            self.fdb.remove(&f.mac);
                        }
                    }
                }
            }
        }
    }

    /// What the kernel holds at the keys of `peers`' entries (their routes'
    /// destinations, their VTEP addresses, their MACs): all a [`plan`] from
    /// those peers' old entries to their new ones needs to see.
    pub fn around<'a>(&self, peers: impl IntoIterator<Item = &'a Peer>) -> Observed {
        let (mut dsts, mut ips, mut macs) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
        for p in peers {
            dsts.extend(p.pod_cidr.map(IpNet::V4).into_iter().chain(p.pod_cidr6.map(IpNet::V6)));
            ips.extend(p.vtep_ip().map(IpAddr::V4).into_iter().chain(p.vtep_ip6().map(IpAddr::V6)));
            macs.insert(p.vtep_mac);
        }
        Observed {
            routes: dsts.iter().filter_map(|d| self.routes.get(d)).flatten().copied().collect(),
            neighbours: ips
                .iter()
                .filter_map(|ip| self.neighbours.get(ip).map(|&mac| Neighbour { ip: *ip, mac }))
                .collect(),
            fdb: macs
                .iter()
                .filter_map(|mac| self.fdb.get(mac).map(|dsts| (mac, dsts)))
                .flat_map(|(&mac, dsts)| dsts.iter().map(move |&dst| FdbEntry { mac, dst }))
                .collect(),
        }
    }

    /// Everything, sorted (a plan of it is then the same from run to run).
    pub fn to_observed(&self) -> Observed {
        Observed {
            routes: self.routes.values().flatten().copied().collect(),
            neighbours: self.neighbours.iter().map(|(&ip, &mac)| Neighbour { ip, mac }).collect(),
            fdb: self
                .fdb
                .iter()
                .flat_map(|(&mac, dsts)| dsts.iter().map(move |&dst| FdbEntry { mac, dst }))
                .collect(),
        }
        .into_sorted()
    }
}

#[cfg(test)]
mod tests;
