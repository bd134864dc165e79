//! The cluster view: which records become peers, and why the others do not.
//!
//! Pure: records in, peers and rejections out. The rules protect the fabric
//! from one bad record — it is skipped with a reason, the rest keep working:
//! - a record without a pod CIDR, public IP or backend data is *pending*
//!   (not yet published), not an error;
//! - a record is *rejected* when its backend or VNI differ from ours, its
//!   pod CIDR (either family) is outside the cluster network or overlaps
//!   ours, its underlay IP is of the other family than ours (unreachable),
//!   or it claims our underlay IP or VTEP MAC;
//! - a record's pod CIDRs count for the families the cluster has: in a
//!   dual-stack cluster a record without an IPv6 pod CIDR is a peer over
//!   IPv4 only (a node that has not been given one yet); an IPv4 cluster
//!   ignores IPv6 pod CIDRs, an IPv6-only one IPv4 pod CIDRs (and a record
//!   without an IPv6 one is pending there);
//! - when two records clash (overlapping pod CIDRs, same underlay IP, same
//!   VTEP MAC), the one that was already a peer keeps its place (`stable`),
//!   then the one whose name sorts first; the other is rejected.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;
use std::net::IpAddr;

use felt_ipam::subnets::{overlaps, validate_pod_cidr};
use felt_overlay::Peer;
use felt_proto::{BackendType, MacAddr, NetConfig, NodeRecord};
use ipnet::{Ipv4Net, Ipv6Net};

/// This node, as the view needs it.
#[derive(Debug, Clone)]
pub struct Me {
    /// Node name.
    pub name: String,
    /// Our IPv4 pod subnet; `None` in an IPv6-only cluster.
    pub pod_cidr: Option<Ipv4Net>,
    /// Our IPv6 pod subnet, in a dual-stack or IPv6-only cluster.
    pub pod_cidr6: Option<Ipv6Net>,
    /// Our underlay address.
    pub underlay_ip: IpAddr,
    /// Our VTEP MAC.
    pub vtep_mac: MacAddr,
}

pub use felt_proto::debug::{RejectReason, Rejection};

/// The outcome of [`build`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Peers to program, sorted by name.
    pub peers: Vec<Peer>,
    /// Records not yet complete.
    pub pending: Vec<String>,
    /// Records refused.
    pub rejected: Vec<Rejection>,
}

/// Turns registry records into peers; `stable` says which names were peers
/// already. Costs N log N at most (records come sorted by name, so the
/// sorts below mostly merge runs), allocating little beyond the peers.
pub fn build(records: &[NodeRecord], me: &Me, net: &NetConfig, stable: impl Fn(&str) -> bool) -> View {
    Live::build(records, me, net, stable).view()
}

/// What one record is on its own, before it meets the others.
enum Class {
    Pending,
    Rejected(RejectReason, String),
    Candidate(Peer),
}

/// The rules of the module doc that need no other record.
fn classify(r: &NodeRecord, me: &Me, net: &NetConfig) -> Class {
    // Only the cluster's families count: (network, the record's CIDR).
    let (v4, v6) = (net.network.zip(r.pod_cidr_v4()), net.ipv6_network.zip(r.pod_cidr_v6()));
    // The first family is required: IPv4, or IPv6 in an IPv6-only cluster.
    let first = if net.network.is_some() { v4.is_some() } else { v6.is_some() };
    let (true, Some(underlay_ip), Some(data)) = (first, r.public_ip, r.backend_data) else {
        return Class::Pending;
    };
    use RejectReason as R;
    let why = if r.backend_type != Some(BackendType::Vxlan) {
        Some((R::Backend, format!("backend type {:?} is not vxlan", r.backend_type)))
    } else if data.vni != net.backend.vni {
        Some((R::Vni, format!("VNI {} differs from ours ({})", data.vni, net.backend.vni)))
    } else if let Some(Err(e)) = v4.map(|(network, cidr)| validate_pod_cidr(cidr, network)) {
        Some((R::OutsideNetwork, e.to_string()))
    } else if let Some((c4, ours)) = v4.map(|(_, c)| c).zip(me.pod_cidr).filter(|(c, o)| overlaps(*c, *o)) {
        Some((R::OverlapsOurs, format!("pod CIDR {c4} overlaps ours ({ours})")))
    } else if let Some(Err(e)) = v6.map(|(network, cidr)| validate_pod_cidr(cidr, network)) {
        Some((R::OutsideNetwork, e.to_string()))
    } else if let Some((c6, ours)) = v6.map(|(_, c)| c).zip(me.pod_cidr6).filter(|(c, o)| overlaps(*c, *o)) {
        Some((R::OverlapsOurs, format!("IPv6 pod CIDR {c6} overlaps ours ({ours})")))
    } else if underlay_ip.is_ipv4() != me.underlay_ip.is_ipv4() {
        let ours = if me.underlay_ip.is_ipv4() { "IPv4" } else { "IPv6" };
        Some((
            R::UnderlayFamily,
            format!("underlay IP {underlay_ip} is not {ours}, as ours ({}) is", me.underlay_ip),
        ))
    } else if underlay_ip == me.underlay_ip {
        Some((R::ClaimsOurUnderlay, format!("claims our underlay IP {underlay_ip}")))
    } else if data.vtep_mac == me.vtep_mac {
        Some((R::ClaimsOurMac, format!("claims our VTEP MAC {}", data.vtep_mac)))
    } else {
        None
    };
    match why {
        Some((reason, message)) => Class::Rejected(reason, message),
        None => Class::Candidate(Peer {
            name: r.name.clone(),
            pod_cidr: v4.map(|(_, c)| c),
            pod_cidr6: v6.map(|(_, c)| c),
            vtep_mac: data.vtep_mac,
            underlay_ip,
        }),
    }
}

/// One peer that changed: as it was and as it is (`None`: not a peer).
pub type PeerChange = (Option<Peer>, Option<Peer>);

/// The cluster view, kept: [`Live::build`] makes it from every record,
/// [`Live::update`] moves it by the records that changed at a cost that
/// grows with them, not with the cluster (log N each), and gives the same
/// view a build would (a table test holds the two together).
#[derive(Debug, Default)]
pub struct Live {
    /// Peers by name.
    peers: BTreeMap<String, Peer>,
    /// What the peers hold, indexed.
    taken: Taken,
    /// Records not yet complete.
    pending: BTreeSet<String>,
    /// Records refused, by name.
    rejected: BTreeMap<String, Rejection>,
    /// The refused for a clash with a peer, as the peers they would be.
    clashed: BTreeMap<String, Peer>,
}

impl Live {
    /// The view of `records`; `stable` says which names were peers already.
    pub fn build(records: &[NodeRecord], me: &Me, net: &NetConfig, stable: impl Fn(&str) -> bool) -> Live {
        let mut live = Live::default();
        let mut candidates = Vec::new();
        for r in records.iter().filter(|r| r.name != me.name) {
            match classify(r, me, net) {
                Class::Pending => {
                    live.pending.insert(r.name.clone());
                }
                Class::Rejected(reason, message) => {
                    live.rejected.insert(r.name.clone(), Rejection { node: r.name.clone(), reason, message });
                }
                Class::Candidate(p) => candidates.push(p),
            }
        }
        // Incumbents first, then by name: a newcomer cannot evict a working peer.
        let mut candidates: Vec<(bool, Peer)> =
            candidates.into_iter().map(|c| (!stable(&c.name), c)).collect();
        candidates.sort_by(|(a_new, a), (b_new, b)| (a_new, &a.name).cmp(&(b_new, &b.name)));
        for (_, c) in candidates {
            match live.taken.clash(&c) {
                Some(message) => {
                    let rejection = Rejection { node: c.name.clone(), reason: RejectReason::Clash, message };
                    live.rejected.insert(c.name.clone(), rejection);
                    live.clashed.insert(c.name.clone(), c);
                }
                None => {
                    live.taken.insert(&c);
                    live.peers.insert(c.name.clone(), c);
                }
            }
        }
        live
    }

    /// Moves the view by `changed` (each record that changed, by name:
    /// `None` when it is gone or no longer a record) and says which peers
    /// changed. `None`, the view untouched, when a change meets a clash
    /// (two records claiming one subnet, address or MAC), which only
    /// [`Live::build`] orders right: build again, with today's peers as the
    /// incumbents.
    pub fn update(
        &mut self,
        changed: &[(String, Option<NodeRecord>)],
        me: &Me,
        net: &NetConfig,
    ) -> Option<Vec<PeerChange>> {
        let changed: BTreeMap<&str, Option<&NodeRecord>> = changed
            .iter()
            .filter(|(name, _)| *name != me.name)
            .map(|(name, r)| (name.as_str(), r.as_ref()))
            .collect();
        // Step out the changed peers, and see what each record is now.
        let mut was = Vec::new();
        for name in changed.keys() {
            if let Some(p) = self.peers.get(*name) {
                self.taken.remove(p);
                was.push(p.clone());
            }
        }
        let mut classes = Vec::new();
        for (&name, r) in &changed {
            classes.push((name, r.map(|r| classify(r, me, net))));
        }
        // Every candidate must fit beside the peers, and a newcomer must not
        // claim what a refused record claims (the name order decides that).
        let mut joined = Vec::new();
        let mut fits = true;
        for (name, class) in &classes {
            let Some(Class::Candidate(c)) = class else { continue };
            let newcomer = !self.peers.contains_key(*name);
            let blocks = |(n, p): (&String, &Peer)| !changed.contains_key(n.as_str()) && clash_between(c, p);
            if self.taken.clash(c).is_some() || (newcomer && self.clashed.iter().any(blocks)) {
                fits = false;
                break;
            }
            self.taken.insert(c);
            joined.push(c);
        }
        // The refused must still be: nothing they clashed with left.
        let mut still = Vec::new();
        if fits {
            for (name, c) in self.clashed.iter().filter(|(n, _)| !changed.contains_key(n.as_str())) {
                match self.taken.clash(c) {
                    Some(message) => still.push((name.clone(), message)),
                    None => {
                        fits = false;
                        break;
                    }
                }
            }
        }
        if !fits {
            for c in joined {
                self.taken.remove(c);
            }
            for p in &was {
                self.taken.insert(p);
            }
            return None;
        }
        for (name, message) in still {
            if let Some(r) = self.rejected.get_mut(&name) {
                r.message = message;
            }
        }
        let mut changes = Vec::new();
        for (name, class) in classes {
            let old = self.peers.remove(name);
            self.pending.remove(name);
            self.rejected.remove(name);
            self.clashed.remove(name);
            let new = match class {
                None => None,
                Some(Class::Pending) => {
                    self.pending.insert(name.to_owned());
                    None
                }
                Some(Class::Rejected(reason, message)) => {
                    self.rejected
                        .insert(name.to_owned(), Rejection { node: name.to_owned(), reason, message });
                    None
                }
                Some(Class::Candidate(p)) => {
                    self.peers.insert(name.to_owned(), p.clone());
                    Some(p)
                }
            };
            if old != new {
                changes.push((old, new));
            }
        }
        Some(changes)
    }

    /// The peers, by name.
    pub fn peers(&self) -> impl ExactSizeIterator<Item = &Peer> {
        self.peers.values()
    }

    /// A peer, by name.
    pub fn peer(&self, name: &str) -> Option<&Peer> {
        self.peers.get(name)
    }

    /// Records not yet complete, by name.
    pub fn pending(&self) -> impl ExactSizeIterator<Item = &String> {
        self.pending.iter()
    }

    /// Why `name`'s record is refused, if it is.
    pub fn rejection(&self, name: &str) -> Option<&Rejection> {
        self.rejected.get(name)
    }

    /// Records refused, by name.
    pub fn rejected(&self) -> impl ExactSizeIterator<Item = &Rejection> {
        self.rejected.values()
    }

    /// The view as lists.
    pub fn view(&self) -> View {
        View {
            peers: self.peers.values().cloned().collect(),
            pending: self.pending.iter().cloned().collect(),
            rejected: self.rejected.values().cloned().collect(),
        }
    }

    /// The peers that differ between `self` and `other`, as [`Live::update`] says them.
    pub fn changes_to(&self, other: &Live) -> Vec<PeerChange> {
        let mut changes = Vec::new();
        let (mut old, mut new) = (self.peers.values().peekable(), other.peers.values().peekable());
        loop {
            let order = match (old.peek(), new.peek()) {
                (Some(o), Some(n)) => o.name.cmp(&n.name),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => break,
            };
            match order {
                std::cmp::Ordering::Less => changes.push((old.next().cloned(), None)),
                std::cmp::Ordering::Greater => changes.push((None, new.next().cloned())),
                std::cmp::Ordering::Equal => {
                    let (o, n) = (old.next().expect("peeked"), new.next().expect("peeked"));
                    if o != n {
                        changes.push((Some(o.clone()), Some(n.clone())));
                    }
                }
            }
        }
        changes
    }
}

/// Whether two would-be peers claim a common subnet, address or MAC.
fn clash_between(a: &Peer, b: &Peer) -> bool {
    let v4 = a.pod_cidr.zip(b.pod_cidr).is_some_and(|(x, y)| overlaps(x, y));
    let v6 = a.pod_cidr6.zip(b.pod_cidr6).is_some_and(|(x, y)| overlaps(x, y));
    v4 || v6 || a.underlay_ip == b.underlay_ip || a.vtep_mac == b.vtep_mac
}

/// What the peers accepted so far hold, indexed so that checking a
/// candidate costs log N, not N: their pod CIDRs of each family (disjoint,
/// by first address), underlay IPs and VTEP MACs; each names its peer by
/// MAC (peers' MACs are distinct), and the MACs name the peers.
#[derive(Debug, Default)]
struct Taken {
    /// First address → (last address, prefix length, peer).
    cidrs: BTreeMap<u32, (u32, u8, MacAddr)>,
    /// The same for IPv6 pod CIDRs.
    cidrs6: BTreeMap<u128, (u128, u8, MacAddr)>,
    underlay: HashMap<IpAddr, MacAddr>,
    macs: HashMap<MacAddr, String>,
}

/// The range in `taken` (disjoint ranges) that overlaps `first..=last`: if
/// any does, the one starting last at or before `last`.
fn overlapping<T: Ord + Copy>(
    taken: &BTreeMap<T, (T, u8, MacAddr)>,
    first: T,
    last: T,
) -> Option<(T, u8, MacAddr)> {
    let (&start, &(end, len, mac)) = taken.range(..=last).next_back()?;
    (end >= first).then_some((start, len, mac))
}

impl Taken {
    fn name(&self, mac: MacAddr) -> &str {
        self.macs.get(&mac).map_or("?", String::as_str)
    }

    /// Why `c` cannot join the peers taken so far, if it cannot.
    fn clash(&self, c: &Peer) -> Option<String> {
        if let Some(c4) = c.pod_cidr {
            let (first, last) = (u32::from(c4.network()), u32::from(c4.broadcast()));
            if let Some((start, len, mac)) = overlapping(&self.cidrs, first, last) {
                let theirs = Ipv4Net::new(start.into(), len).map(|c| c.to_string()).unwrap_or_default();
                return Some(format!("pod CIDR {c4} overlaps peer {} ({theirs})", self.name(mac)));
            }
        }
        if let Some(c6) = c.pod_cidr6 {
            let (first, last) = (u128::from(c6.network()), u128::from(c6.broadcast()));
            if let Some((start, len, mac)) = overlapping(&self.cidrs6, first, last) {
                let theirs = Ipv6Net::new(start.into(), len).map(|c| c.to_string()).unwrap_or_default();
                return Some(format!("IPv6 pod CIDR {c6} overlaps peer {} ({theirs})", self.name(mac)));
            }
        }
        if let Some(&mac) = self.underlay.get(&c.underlay_ip) {
            return Some(format!("underlay IP {} is peer {}'s", c.underlay_ip, self.name(mac)));
        }
        if self.macs.contains_key(&c.vtep_mac) {
            return Some(format!("VTEP MAC {} is peer {}'s", c.vtep_mac, self.name(c.vtep_mac)));
        }
        None
    }

    /// `p` is taken.
    fn insert(&mut self, p: &Peer) {
        let mac = p.vtep_mac;
        if let Some(c4) = p.pod_cidr {
            self.cidrs.insert(u32::from(c4.network()), (u32::from(c4.broadcast()), c4.prefix_len(), mac));
        }
        if let Some(c6) = p.pod_cidr6 {
            self.cidrs6.insert(u128::from(c6.network()), (u128::from(c6.broadcast()), c6.prefix_len(), mac));
        }
        self.underlay.insert(p.underlay_ip, mac);
        self.macs.insert(mac, p.name.clone());
    }

    /// `p`, taken, is no longer.
    fn remove(&mut self, p: &Peer) {
        let mac = p.vtep_mac;
        if let Some(c4) = p.pod_cidr {
            let first = u32::from(c4.network());
            if self.cidrs.get(&first).is_some_and(|e| e.2 == mac) {
                self.cidrs.remove(&first);
            }
        }
        if let Some(c6) = p.pod_cidr6 {
            let first = u128::from(c6.network());
            if self.cidrs6.get(&first).is_some_and(|e| e.2 == mac) {
                self.cidrs6.remove(&first);
            }
        }
        if self.underlay.get(&p.underlay_ip) == Some(&mac) {
            self.underlay.remove(&p.underlay_ip);
        }
        self.macs.remove(&mac);
    }
}

#[cfg(test)]
mod tests {
    use felt_proto::BackendData;

    use super::*;
    use std::net::Ipv4Addr;

    fn me() -> Me {
        Me {
            name: "n1".into(),
            pod_cidr: Some("10.244.1.0/24".parse().unwrap()),
            pod_cidr6: None,
            underlay_ip: "198.18.7.11".parse().unwrap(),
            vtep_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        }
    }

    fn rec(name: &str, cidr: &str, ip: &str, mac: u8) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            pod_cidrs: vec![cidr.parse().unwrap()],
            public_ip: Some(ip.parse().unwrap()),
            backend_type: Some(BackendType::Vxlan),
            backend_data: Some(BackendData { vni: 1, vtep_mac: MacAddr([2, 0, 0, 0, 0, mac]) }),
        }
    }

    fn names(v: &View) -> Vec<&str> {
        v.peers.iter().map(|p| p.name.as_str()).collect()
    }

    #[test]
    fn good_records_become_peers_and_self_is_skipped() {
        let recs =
            [rec("n1", "10.244.1.0/24", "198.18.7.11", 1), rec("n2", "10.244.2.0/24", "198.18.7.12", 2)];
        let v = build(&recs, &me(), &NetConfig::default(), |_| false);
        assert_eq!(names(&v), ["n2"]);
        assert!(v.rejected.is_empty());
    }

    #[test]
    fn incomplete_is_pending() {
        let v = build(&[NodeRecord::new("n3")], &me(), &NetConfig::default(), |_| false);
        assert_eq!(v.pending, ["n3"]);
        assert!(v.peers.is_empty());
    }

    #[test]
    fn bad_records_are_rejected_with_reasons() {
        let mut other_vni = rec("a", "10.244.3.0/24", "198.18.7.13", 3);
        other_vni.backend_data.as_mut().unwrap().vni = 7;
        let recs = [
            other_vni,
            rec("b", "10.245.0.0/24", "198.18.7.14", 4),
            rec("c", "10.244.1.0/25", "198.18.7.15", 5),
            rec("d", "10.244.6.0/24", "198.18.7.11", 6),
            rec("e", "10.244.7.0/24", "198.18.7.17", 1),
            rec("f", "10.244.8.0/24", "198.18.7.18", 8),
        ];
        let v = build(&recs, &me(), &NetConfig::default(), |_| false);
        assert_eq!(names(&v), ["f"]);
        let why: Vec<(&str, RejectReason, &str)> =
            v.rejected.iter().map(|r| (r.node.as_str(), r.reason, r.message.as_str())).collect();
        assert_eq!(
            why.iter().map(|w| w.1).collect::<Vec<_>>(),
            [
                RejectReason::Vni,
                RejectReason::OutsideNetwork,
                RejectReason::OverlapsOurs,
                RejectReason::ClaimsOurUnderlay,
                RejectReason::ClaimsOurMac
            ]
        );
        assert!(why[0].2.contains("VNI 7"), "{why:?}");
        assert!(why[1].2.contains("outside the cluster network"), "{why:?}");
        assert!(why[2].2.contains("overlaps ours"), "{why:?}");
        assert!(why[3].2.contains("our underlay IP"), "{why:?}");
        assert!(why[4].2.contains("our VTEP MAC"), "{why:?}");
    }

    #[test]
    fn incumbent_wins_an_overlap() {
        let recs = [rec("a", "10.244.2.0/24", "198.18.7.12", 2), rec("z", "10.244.2.0/23", "198.18.7.13", 3)];
        let fresh = build(&recs, &me(), &NetConfig::default(), |_| false);
        assert_eq!(names(&fresh), ["a"], "by name when nobody is incumbent");
        let stable: std::collections::BTreeSet<String> = ["z".to_owned()].into();
        let v = build(&recs, &me(), &NetConfig::default(), |n| stable.contains(n));
        assert_eq!(names(&v), ["z"]);
        assert_eq!(v.rejected[0].node, "a");
        assert_eq!(v.rejected[0].reason, RejectReason::Clash);
        assert!(v.rejected[0].message.contains("overlaps peer z"));
    }

    /// IPv6 pod CIDRs count only in a dual-stack cluster, are checked like
    /// IPv4 ones, and a peer without one (not assigned yet) stays an IPv4 peer.
    #[test]
    fn ipv6_pod_cidrs_in_a_dual_stack_cluster() {
        let dual = |name: &str, v4: &str, v6: &str, ip: &str, mac: u8| {
            let mut r = rec(name, v4, ip, mac);
            r.pod_cidrs.push(v6.parse().unwrap());
            r
        };
        let recs = [
            dual("a", "10.244.2.0/24", "fd00:10:244:2::/64", "198.18.7.12", 2),
            rec("b", "10.244.3.0/24", "198.18.7.13", 3),
            dual("c", "10.244.4.0/24", "fd00:99::/64", "198.18.7.14", 4),
            dual("d", "10.244.5.0/24", "fd00:10:244:1::/64", "198.18.7.15", 5),
            dual("e", "10.244.6.0/24", "fd00:10:244:2::/63", "198.18.7.16", 6),
        ];
        let single = build(&recs, &me(), &NetConfig::default(), |_| false);
        assert_eq!(names(&single), ["a", "b", "c", "d", "e"], "IPv4-only: IPv6 CIDRs are ignored");
        assert!(single.peers.iter().all(|p| p.pod_cidr6.is_none()));

        let net =
            NetConfig::from_json(br#"{"network":"10.244.0.0/16","ipv6Network":"fd00:10:244::/56"}"#).unwrap();
        let me = Me { pod_cidr6: Some("fd00:10:244:1::/64".parse().unwrap()), ..me() };
        let v = build(&recs, &me, &net, |_| false);
        assert_eq!(names(&v), ["a", "b"]);
        assert_eq!(v.peers[0].pod_cidr6, Some("fd00:10:244:2::/64".parse().unwrap()));
        assert_eq!(v.peers[1].pod_cidr6, None, "no IPv6 CIDR yet: an IPv4 peer");
        let why = |n: &str| v.rejected.iter().find(|r| r.node == n).map(|r| (r.reason, r.message.clone()));
        assert_eq!(why("c").unwrap().0, RejectReason::OutsideNetwork);
        assert_eq!(why("d").unwrap().0, RejectReason::OverlapsOurs);
        let (reason, message) = why("e").unwrap();
        assert_eq!(reason, RejectReason::Clash);
        assert_eq!(message, "IPv6 pod CIDR fd00:10:244:2::/63 overlaps peer a (fd00:10:244:2::/64)");
    }

    /// An IPv6-only cluster reads only IPv6 pod CIDRs: a record with just an
    /// IPv4 one is pending, a dual-stack record is an IPv6 peer, and IPv6
    /// CIDRs are checked as they are in a dual-stack cluster.
    #[test]
    fn ipv6_only_clusters_peer_over_ipv6_alone() {
        let v6 = |name: &str, cidrs: &[&str], ip: &str, mac: u8| {
            let mut r = rec(name, "10.244.9.0/24", ip, mac);
            r.pod_cidrs = cidrs.iter().map(|c| c.parse().unwrap()).collect();
            r
        };
        let recs = [
            v6("a", &["fd00:10:244:2::/64"], "198.18.7.12", 2),
            v6("b", &["10.244.3.0/24"], "198.18.7.13", 3),
            v6("c", &["10.244.4.0/24", "fd00:10:244:4::/64"], "198.18.7.14", 4),
            v6("d", &["fd00:10:244:1::/64"], "198.18.7.15", 5),
            v6("e", &["fd00:10:244:2::/63"], "198.18.7.16", 6),
            v6("f", &["fd00:99::/64"], "198.18.7.17", 7),
        ];
        let net = NetConfig::from_json(br#"{"ipv6Network":"fd00:10:244::/56"}"#).unwrap();
        let me = Me { pod_cidr: None, pod_cidr6: Some("fd00:10:244:1::/64".parse().unwrap()), ..me() };
        let v = build(&recs, &me, &net, |_| false);
        assert_eq!(names(&v), ["a", "c"]);
        assert!(v.peers.iter().all(|p| p.pod_cidr.is_none() && p.pod_cidr6.is_some()), "{:?}", v.peers);
        assert_eq!(v.pending, ["b"], "no IPv6 pod CIDR: not published yet");
        let why = |n: &str| v.rejected.iter().find(|r| r.node == n).map(|r| r.reason);
        assert_eq!(
            (why("d"), why("e"), why("f")),
            (Some(RejectReason::OverlapsOurs), Some(RejectReason::Clash), Some(RejectReason::OutsideNetwork))
        );
    }

    /// A peer whose underlay address is of the other family cannot be
    /// reached (our VXLAN socket is of ours): refused, saying so.
    #[test]
    fn a_peer_on_the_other_underlay_family_is_refused() {
        let recs =
            [rec("a", "10.244.2.0/24", "fd00:f31:1::12", 2), rec("b", "10.244.3.0/24", "198.18.7.13", 3)];
        let v = build(&recs, &me(), &NetConfig::default(), |_| false);
        assert_eq!(names(&v), ["b"]);
        assert_eq!(v.rejected[0].reason, RejectReason::UnderlayFamily);
        assert_eq!(v.rejected[0].message, "underlay IP fd00:f31:1::12 is not IPv4, as ours (198.18.7.11) is");
        let me6 = Me { underlay_ip: "fd00:f31:1::11".parse().unwrap(), ..me() };
        let v = build(&recs, &me6, &NetConfig::default(), |_| false);
        assert_eq!((names(&v), v.rejected[0].node.as_str()), (vec!["a"], "b"), "and the reverse");
    }

    #[test]
    fn duplicate_underlay_or_mac_among_peers() {
        let recs = [
            rec("a", "10.244.2.0/24", "198.18.7.12", 2),
            rec("b", "10.244.3.0/24", "198.18.7.12", 3),
            rec("c", "10.244.4.0/24", "198.18.7.14", 2),
        ];
        let v = build(&recs, &me(), &NetConfig::default(), |_| false);
        assert_eq!(names(&v), ["a"]);
        assert_eq!(v.rejected.len(), 2);
    }

    /// The indexed clash check says what a scan of every accepted peer would:
    /// random CIDRs of mixed sizes (nested, adjacent, overlapping several),
    /// shared addresses and MACs.
    #[test]
    fn indexed_clash_check_agrees_with_a_scan() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(n)) as u32
        };
        for _ in 0..200 {
            let mut taken = Taken::default();
            let mut accepted: Vec<Peer> = Vec::new();
            for i in 0..40 {
                let len = 20 + next(9) as u8;
                let addr = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 244, 0, 0)) + (next(1 << 12) << 4));
                let c = Peer {
                    name: format!("p{i}"),
                    pod_cidr: Some(Ipv4Net::new(addr, len).unwrap().trunc()),
                    pod_cidr6: None,
                    underlay_ip: Ipv4Addr::new(198, 18, 0, next(60) as u8).into(),
                    vtep_mac: MacAddr([2, 0, 0, 0, 0, next(60) as u8]),
                };
                let scan = accepted.iter().any(|p| {
                    overlaps(p.pod_cidr.unwrap(), c.pod_cidr.unwrap())
                        || p.underlay_ip == c.underlay_ip
                        || p.vtep_mac == c.vtep_mac
                });
                assert_eq!(taken.clash(&c).is_some(), scan, "{c:?} against {accepted:?}");
                if !scan {
                    taken.insert(&c);
                    accepted.push(c);
                }
            }
        }
    }

    /// `Live::update` gives what a build from every record gives, with the
    /// peers before the change as incumbents, and says the peers that
    /// changed; when it declines (a clash), a build is what the agent does.
    /// Random batches of changes over a few names, subnets (nested and
    /// overlapping), addresses and MACs, so that clashes, refusals and
    /// pending records come and go.
    #[test]
    fn an_update_gives_what_a_build_gives() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(n)) as u32
        };
        let cidrs = [
            "10.244.2.0/24",
            "10.244.3.0/24",
            "10.244.2.0/23",
            "10.244.4.0/24",
            "10.244.1.0/24",
            "10.245.0.0/24",
        ];
        let net = NetConfig::default();
        let (mut updated, mut declined) = (0, 0);
        for _ in 0..300 {
            let mut records: BTreeMap<String, NodeRecord> = BTreeMap::new();
            let mut live = Live::default();
            for _ in 0..30 {
                let mut batch = Vec::new();
                for _ in 0..=next(3) {
                    let name = format!("n{}", next(8));
                    let r = match next(10) {
                        0 | 1 => None,
                        2 => Some(NodeRecord::new(&name)),
                        _ => Some(rec(
                            &name,
                            cidrs[next(cidrs.len() as u32) as usize],
                            &format!("198.18.7.{}", 11 + next(6)),
                            1 + next(6) as u8,
                        )),
                    };
                    match &r {
                        Some(r) => records.insert(name.clone(), r.clone()),
                        None => records.remove(&name),
                    };
                    batch.push((name, r));
                }
                // Later changes of one name in a batch win, as in a registry.
                batch.reverse();
                let mut seen = BTreeSet::new();
                batch.retain(|(n, _)| seen.insert(n.clone()));
                let all: Vec<NodeRecord> = records.values().cloned().collect();
                let incumbents: BTreeSet<String> = live.peers().map(|p| p.name.clone()).collect();
                let built = Live::build(&all, &me(), &net, |n| incumbents.contains(n));
                let want_changes = live.changes_to(&built);
                match live.update(&batch, &me(), &net) {
                    Some(changes) => {
                        updated += 1;
                        assert_eq!(live.view(), built.view(), "after {batch:?}");
                        let mut changes = changes;
                        changes.sort_by(|a, b| {
                            a.0.as_ref()
                                .or(a.1.as_ref())
                                .map(|p| &p.name)
                                .cmp(&b.0.as_ref().or(b.1.as_ref()).map(|p| &p.name))
                        });
                        assert_eq!(changes, want_changes, "after {batch:?}");
                    }
                    None => {
                        declined += 1;
                        live = built;
                    }
                }
            }
        }
        assert!(
            updated > 5_000 && declined > 100,
            "both ways taken often: {updated} updates, {declined} builds"
        );
    }
}
