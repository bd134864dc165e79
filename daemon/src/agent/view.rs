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

use std::collections::BTreeMap;

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
    let mut view = View::default();
    let mut candidates = Vec::new();
    for r in records.iter().filter(|r| r.name != me.name) {
        // Only the cluster's families count: (network, the record's CIDR).
        let (v4, v6) = (net.network.zip(r.pod_cidr_v4()), net.ipv6_network.zip(r.pod_cidr_v6()));
        // The first family is required: IPv4, or IPv6 in an IPv6-only cluster.
        let first = if net.network.is_some() { v4.is_some() } else { v6.is_some() };
        let (true, Some(underlay_ip), Some(data)) = (first, r.public_ip, r.backend_data) else {
            view.pending.push(r.name.clone());
            continue;
        };
        use RejectReason as R;
        let why = if r.backend_type != Some(BackendType::Vxlan) {
            Some((R::Backend, format!("backend type {:?} is not vxlan", r.backend_type)))
        } else if data.vni != net.backend.vni {
            Some((R::Vni, format!("VNI {} differs from ours ({})", data.vni, net.backend.vni)))
        } else if let Some(Err(e)) = v4.map(|(network, cidr)| validate_pod_cidr(cidr, network)) {
            Some((R::OutsideNetwork, e.to_string()))
        } else if let Some((c4, ours)) = v4.map(|(_, c)| c).zip(me.pod_cidr).filter(|(c, o)| overlaps(*c, *o))
        {
            Some((R::OverlapsOurs, format!("pod CIDR {c4} overlaps ours ({ours})")))
        } else if let Some(Err(e)) = v6.map(|(network, cidr)| validate_pod_cidr(cidr, network)) {
            Some((R::OutsideNetwork, e.to_string()))
        } else if let Some((c6, ours)) =
            v6.map(|(_, c)| c).zip(me.pod_cidr6).filter(|(c, o)| overlaps(*c, *o))
        {
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
            Some((reason, message)) => {
                view.rejected.push(Rejection { node: r.name.clone(), reason, message })
            }
            None => candidates.push(Peer {
                name: r.name.clone(),
                pod_cidr: v4.map(|(_, c)| c),
                pod_cidr6: v6.map(|(_, c)| c),
                vtep_mac: data.vtep_mac,
                underlay_ip,
            }),
        }
    }
    // Incumbents first, then by name: a newcomer cannot evict a working peer.
    let mut candidates: Vec<(bool, Peer)> = candidates.into_iter().map(|c| (!stable(&c.name), c)).collect();
    candidates.sort_by(|(a_new, a), (b_new, b)| (a_new, &a.name).cmp(&(b_new, &b.name)));
    let mut taken = Taken::default();
    for (_, c) in candidates {
        match taken.clash(&c, &view.peers) {
            Some(message) => {
                view.rejected.push(Rejection { node: c.name, reason: RejectReason::Clash, message })
            }
            None => {
                taken.insert(&c, view.peers.len());
                view.peers.push(c);
            }
        }
    }
    view.peers.sort_by(|a, b| a.name.cmp(&b.name));
    view.rejected.sort();
    view
}

/// What the peers accepted so far hold, indexed (by their place in the
/// peer list), so that checking a candidate costs log N, not N: their pod
/// CIDRs of each family (disjoint, by first address), underlay IPs and
/// VTEP MACs.
#[derive(Debug, Default)]
struct Taken {
    /// First address → (last address, peer).
    cidrs: BTreeMap<u32, (u32, usize)>,
    /// The same for IPv6 pod CIDRs.
    cidrs6: BTreeMap<u128, (u128, usize)>,
    underlay: HashMap<IpAddr, usize>,
    macs: HashMap<MacAddr, usize>,
}

/// The peer whose range in `taken` (disjoint ranges) overlaps
/// `first..=last`: if any does, the one starting last at or before `last`.
fn overlapping<T: Ord + Copy>(taken: &BTreeMap<T, (T, usize)>, first: T, last: T) -> Option<usize> {
    let (_, &(end, i)) = taken.range(..=last).next_back()?;
    (end >= first).then_some(i)
}

impl Taken {
    /// Why `c` cannot join `peers`, the peers taken so far, if it cannot.
    fn clash(&self, c: &Peer, peers: &[Peer]) -> Option<String> {
        if let Some(c4) = c.pod_cidr {
            let (first, last) = (u32::from(c4.network()), u32::from(c4.broadcast()));
            if let Some(i) = overlapping(&self.cidrs, first, last) {
                let p = &peers[i];
                let theirs = p.pod_cidr.map(|c| c.to_string()).unwrap_or_default();
                return Some(format!("pod CIDR {c4} overlaps peer {} ({theirs})", p.name));
            }
        }
        if let Some(c6) = c.pod_cidr6 {
            let (first, last) = (u128::from(c6.network()), u128::from(c6.broadcast()));
            if let Some(i) = overlapping(&self.cidrs6, first, last) {
                let p = &peers[i];
                let theirs = p.pod_cidr6.map(|c| c.to_string()).unwrap_or_default();
                return Some(format!("IPv6 pod CIDR {c6} overlaps peer {} ({theirs})", p.name));
            }
        }
        if let Some(&i) = self.underlay.get(&c.underlay_ip) {
            return Some(format!("underlay IP {} is peer {}'s", c.underlay_ip, peers[i].name));
        }
        if let Some(&i) = self.macs.get(&c.vtep_mac) {
            return Some(format!("VTEP MAC {} is peer {}'s", c.vtep_mac, peers[i].name));
        }
        None
    }

    /// `p` is taken, at place `i` of the peer list.
    fn insert(&mut self, p: &Peer, i: usize) {
        if let Some(c4) = p.pod_cidr {
            self.cidrs.insert(u32::from(c4.network()), (u32::from(c4.broadcast()), i));
        }
        if let Some(c6) = p.pod_cidr6 {
            self.cidrs6.insert(u128::from(c6.network()), (u128::from(c6.broadcast()), i));
        }
        self.underlay.insert(p.underlay_ip, i);
        self.macs.insert(p.vtep_mac, i);
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
                assert_eq!(taken.clash(&c, &accepted).is_some(), scan, "{c:?} against {accepted:?}");
                if !scan {
                    taken.insert(&c, accepted.len());
                    accepted.push(c);
                }
            }
        }
    }
}
