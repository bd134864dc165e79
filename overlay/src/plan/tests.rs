use std::net::{IpAddr, Ipv4Addr};

use rstest::rstest;

use super::*;

fn peer(i: u8) -> Peer {
    Peer {
        name: format!("n{i}"),
        pod_cidr: Some(format!("10.244.{i}.0/24").parse().unwrap()),
        pod_cidr6: None,
        vtep_mac: MacAddr([0x02, 0, 0, 0, 0, i]),
        underlay_ip: under(i),
    }
}

fn vtep(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, i, 0))
}

fn cidr(i: u8) -> IpNet {
    format!("10.244.{i}.0/24").parse().unwrap()
}

fn mac(i: u8) -> MacAddr {
    MacAddr([0x02, 0, 0, 0, 0, i])
}

fn under(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 7, 10 + i))
}

/// Exactly what felt programs for peer `i`.
fn programmed(peers: &[u8]) -> Observed {
    let mut o = Observed::default();
    for &i in peers {
        o.routes.push(route_ok(i));
        o.neighbours.push(Neighbour { ip: vtep(i), mac: mac(i) });
        o.fdb.push(FdbEntry { mac: mac(i), dst: under(i) });
    }
    o
}

fn route_ok(i: u8) -> ObservedRoute {
    ObservedRoute { dst: cidr(i), gateway: Some(vtep(i)), on_device: true, onlink: true, ours: true }
}

fn set_all(i: u8) -> Vec<Op> {
    vec![
        Op::SetNeighbour(Neighbour { ip: vtep(i), mac: mac(i) }),
        Op::SetFdb(FdbEntry { mac: mac(i), dst: under(i) }),
        Op::SetRoute(Route { dst: cidr(i), gateway: vtep(i) }),
    ]
}

fn with(mut o: Observed, f: impl FnOnce(&mut Observed)) -> Observed {
    f(&mut o);
    o
}

#[rstest]
#[case::empty(&[], Observed::default(), vec![])]
#[case::fresh_peer(&[1], Observed::default(), set_all(1))]
#[case::already_right(&[1, 2], programmed(&[1, 2]), vec![])]
#[case::peer_left(&[1], programmed(&[1, 2]), vec![
    Op::DelRoute(cidr(2)),
    Op::DelNeighbour(Neighbour { ip: vtep(2), mac: mac(2) }),
    Op::DelFdb(FdbEntry { mac: mac(2), dst: under(2) }),
])]
#[case::fdb_deleted_by_hand(&[1, 2], with(programmed(&[1, 2]), |o| { o.fdb.remove(1); }),
    vec![Op::SetFdb(FdbEntry { mac: mac(2), dst: under(2) })])]
#[case::neighbour_wrong_mac(&[1], with(programmed(&[1]), |o| o.neighbours[0].mac = mac(9)),
    vec![Op::SetNeighbour(Neighbour { ip: vtep(1), mac: mac(1) })])]
#[case::underlay_moved(&[1], with(programmed(&[1]), |o| o.fdb[0].dst = under(9)), vec![
    Op::DelFdb(FdbEntry { mac: mac(1), dst: under(9) }),
    Op::SetFdb(FdbEntry { mac: mac(1), dst: under(1) }),
])]
#[case::extra_fdb_remote(&[1], with(programmed(&[1]), |o| o.fdb.push(FdbEntry { mac: mac(1), dst: under(9) })),
    vec![Op::DelFdb(FdbEntry { mac: mac(1), dst: under(9) })])]
#[case::foreign_route_replaced(&[1], with(programmed(&[1]), |o| o.routes[0].ours = false),
    vec![Op::SetRoute(Route { dst: cidr(1), gateway: vtep(1) })])]
#[case::foreign_route_left_alone(&[1], with(programmed(&[1]), |o| o.routes.push(ObservedRoute { ours: false, ..route_ok(5) })),
    vec![])]
#[case::route_lost_onlink(&[1], with(programmed(&[1]), |o| o.routes[0].onlink = false),
    vec![Op::SetRoute(Route { dst: cidr(1), gateway: vtep(1) })])]
#[case::route_on_other_device(&[1], with(programmed(&[1]), |o| o.routes[0].on_device = false),
    vec![Op::SetRoute(Route { dst: cidr(1), gateway: vtep(1) })])]
#[case::peer_changed_subnet(&[1], with(programmed(&[1]), |o| {
        o.routes[0] = route_ok(7);
        o.neighbours[0].ip = vtep(7);
    }), vec![
    Op::DelRoute(cidr(7)),
    Op::DelNeighbour(Neighbour { ip: vtep(7), mac: mac(1) }),
    Op::SetNeighbour(Neighbour { ip: vtep(1), mac: mac(1) }),
    Op::SetRoute(Route { dst: cidr(1), gateway: vtep(1) }),
])]
fn plan_table(#[case] peers: &[u8], #[case] observed: Observed, #[case] want: Vec<Op>) {
    let peers: Vec<Peer> = peers.iter().map(|&i| peer(i)).collect();
    assert_eq!(plan(&desired(&peers), &observed), want);
}

#[test]
fn plan_is_idempotent_once_applied() {
    let peers: Vec<Peer> = (1..=20).map(peer).collect();
    let all: Vec<u8> = (1..=20).collect();
    assert!(plan(&desired(&peers), &programmed(&all)).is_empty());
}

#[test]
fn removals_come_before_additions() {
    let peers = vec![peer(1)];
    let ops = plan(&desired(&peers), &programmed(&[2]));
    let first_set =
        ops.iter().position(|o| matches!(o, Op::SetNeighbour(_) | Op::SetFdb(_) | Op::SetRoute(_)));
    let last_del =
        ops.iter().rposition(|o| matches!(o, Op::DelRoute(_) | Op::DelNeighbour(_) | Op::DelFdb(_)));
    assert!(last_del < first_set, "{ops:?}");
    assert_eq!(ops.last(), Some(&Op::SetRoute(Route { dst: cidr(1), gateway: vtep(1) })));
}

/// Planning against `apply_to`'s result of a plan finds nothing left to
/// do, and the result is what the kernel would then hold: from any mix of
/// right, stale, foreign and missing entries.
#[test]
fn applying_a_plan_to_what_was_observed_leaves_nothing_to_do() {
    let mut messy = programmed(&[1, 2, 3, 4]);
    messy.fdb[1].dst = under(9); // stale FDB
    messy.neighbours[2].mac = mac(9); // stale neighbour
    messy.routes[3].onlink = false; // a route felt must replace
    messy.routes.push(ObservedRoute { ours: false, ..route_ok(7) }); // someone else's
    let want = crate::desired(&[peer(1), peer(2), peer(3), peer(5), peer(6)]);
    let ops = plan(&want, &messy);
    assert!(!ops.is_empty());
    let mut after = messy.clone();
    apply_to(&mut after, &ops);
    assert_eq!(plan(&want, &after), Vec::<Op>::new(), "{after:?}");
    let mut exact = programmed(&[1, 2, 3, 5, 6]);
    exact.routes.push(ObservedRoute { ours: false, ..route_ok(7) });
    for o in [&mut after, &mut exact] {
        o.routes.sort_by_key(|r| (r.dst, r.ours));
        o.neighbours.sort();
        o.fdb.sort();
    }
    assert_eq!(after, exact);
}

/// A dual-stack peer needs an IPv6 route and neighbour beside its IPv4
/// ones, and shares its one FDB entry; a peer that loses its IPv6 subnet
/// loses only those two.
#[test]
fn a_dual_stack_peer_adds_an_ipv6_route_and_neighbour_on_the_same_fdb_entry() {
    let dual = Peer { pod_cidr6: Some("fd00:f31:244:1::/64".parse().unwrap()), ..peer(1) };
    let vtep6: IpAddr = "fd00:f31:244:1::".parse().unwrap();
    let route6 = Route { dst: "fd00:f31:244:1::/64".parse().unwrap(), gateway: vtep6 };
    let ops = plan(&crate::desired(std::slice::from_ref(&dual)), &Observed::default());
    assert_eq!(
        ops,
        vec![
            Op::SetNeighbour(Neighbour { ip: vtep(1), mac: mac(1) }),
            Op::SetNeighbour(Neighbour { ip: vtep6, mac: mac(1) }),
            Op::SetFdb(FdbEntry { mac: mac(1), dst: under(1) }),
            Op::SetRoute(Route { dst: cidr(1), gateway: vtep(1) }),
            Op::SetRoute(route6),
        ],
        "neighbours before routes, one FDB entry"
    );
    let mut held = Observed::default();
    apply_to(&mut held, &ops);
    assert_eq!(plan(&crate::desired(std::slice::from_ref(&dual)), &held), vec![]);
    assert_eq!(
        plan(&crate::desired(&[peer(1)]), &held),
        vec![Op::DelRoute(route6.dst), Op::DelNeighbour(Neighbour { ip: vtep6, mac: mac(1) })],
        "back to IPv4 only"
    );
}

#[test]
fn an_ipv6_only_peer_has_an_ipv6_route_neighbour_and_its_fdb_entry_alone() {
    let only6 = Peer { pod_cidr: None, pod_cidr6: Some("fd00:f31:244:1::/64".parse().unwrap()), ..peer(1) };
    let vtep6: IpAddr = "fd00:f31:244:1::".parse().unwrap();
    let route6 = Route { dst: "fd00:f31:244:1::/64".parse().unwrap(), gateway: vtep6 };
    let want = crate::desired(std::slice::from_ref(&only6));
    assert_eq!(
        plan(&want, &Observed::default()),
        vec![
            Op::SetNeighbour(Neighbour { ip: vtep6, mac: mac(1) }),
            Op::SetFdb(FdbEntry { mac: mac(1), dst: under(1) }),
            Op::SetRoute(route6),
        ]
    );
    assert_eq!(only6.pod_cidrs(), "fd00:f31:244:1::/64");
    // A peer that was IPv4 loses its IPv4 entries, keeps its FDB entry.
    assert_eq!(
        plan(&want, &programmed(&[1])),
        vec![
            Op::DelRoute(cidr(1)),
            Op::DelNeighbour(Neighbour { ip: vtep(1), mac: mac(1) }),
            Op::SetNeighbour(Neighbour { ip: vtep6, mac: mac(1) }),
            Op::SetRoute(route6),
        ]
    );
}

/// Peer `i` in one of a few shapes (`v` moves its subnet, MAC and
/// underlay address; they stay its own, so peers never clash).
fn shaped(i: u8, v: u8) -> Peer {
    Peer {
        name: format!("n{i}"),
        pod_cidr: Some(format!("10.{}.{i}.0/24", 244 + v).parse().unwrap()),
        pod_cidr6: (v % 2 == 1).then(|| format!("fd00:{v}:{i}::/64").parse().unwrap()),
        vtep_mac: MacAddr([0x02, 0, 0, 0, v, i]),
        underlay_ip: IpAddr::V4(Ipv4Addr::new(198, 18, v, i)),
    }
}

fn programmed_peers(peers: &[Peer]) -> Observed {
    let d = crate::desired(peers);
    Observed {
        routes: d
            .routes
            .iter()
            .map(|r| ObservedRoute {
                dst: r.dst,
                gateway: Some(r.gateway),
                on_device: true,
                onlink: true,
                ours: true,
            })
            .collect(),
        neighbours: d.neighbours,
        fdb: d.fdb,
    }
}

proptest::proptest! {
    /// `Held` keeps what `apply_to` keeps, from any mix of right, stale,
    /// foreign and missing entries.
    #[test]
    fn held_applies_as_apply_to_does(
        before in proptest::collection::btree_map(0u8..12, 0u8..3, 0..10),
        after in proptest::collection::btree_map(0u8..12, 0u8..3, 0..10),
        foreign in proptest::collection::vec(0u8..12, 0..3),
    ) {
        let old: Vec<Peer> = before.iter().map(|(&i, &v)| shaped(i, v)).collect();
        let new: Vec<Peer> = after.iter().map(|(&i, &v)| shaped(i, v)).collect();
        let mut seen = programmed_peers(&old);
        for &i in &foreign {
            seen.routes.push(ObservedRoute { ours: false, on_device: false, ..route_ok(i) });
        }
        let ops = plan(&crate::desired(&new), &seen);
        let mut held = Held::from(seen.clone());
        held.apply(&ops);
        apply_to(&mut seen, &ops);
        proptest::prop_assert_eq!(held.to_observed(), Held::from(seen).to_observed());
    }

    /// Planning only the changed peers, against what the kernel holds at
    /// their keys, leaves the kernel as a plan of every peer does.
    #[test]
    fn a_plan_of_the_changed_peers_does_what_a_plan_of_all_does(
        before in proptest::collection::btree_map(0u8..12, 0u8..3, 0..10),
        changes in proptest::collection::btree_map(0u8..12, proptest::option::of(0u8..3), 0..5),
    ) {
        let old: Vec<Peer> = before.iter().map(|(&i, &v)| shaped(i, v)).collect();
        let mut after = before.clone();
        for (&i, v) in &changes {
            match v {
                Some(v) => after.insert(i, *v),
                None => after.remove(&i),
            };
        }
        let new: Vec<Peer> = after.iter().map(|(&i, &v)| shaped(i, v)).collect();
        let held = Held::from(programmed_peers(&old));

        let mut whole = held.clone();
        whole.apply(&plan(&crate::desired(&new), &whole.to_observed()));

        let was = changes.keys().filter_map(|i| before.get(i).map(|&v| shaped(*i, v)));
        let now: Vec<Peer> = changes.keys().filter_map(|i| after.get(i).map(|&v| shaped(*i, v))).collect();
        let around = held.around(was.chain(now.iter().cloned()).collect::<Vec<_>>().iter());
        let mut part = held.clone();
        part.apply(&plan(&crate::desired(&now), &around));

        proptest::prop_assert_eq!(part.to_observed(), programmed_peers(&new).into_sorted());
        proptest::prop_assert_eq!(whole, part);
    }
}
