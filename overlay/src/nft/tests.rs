use super::*;

fn want(nodes: &[&str]) -> Table {
    Table {
        masquerade: Some("10.244.0.0/16".parse().unwrap()),
        port_lock: None,
        nodes: nodes.iter().map(|n| n.parse().unwrap()).collect(),
    }
}

fn as_built(w: &Table) -> Observed {
    Observed::built(w)
}

#[test]
fn a_right_table_is_left_alone() {
    let w = want(&["198.18.7.11", "198.18.7.12"]);
    assert_eq!(plan(Some(&w), &as_built(&w)), Plan::Nothing);
    assert!(messages(&Plan::Nothing, Some(&w), Family::Ipv4).is_empty());
    assert_eq!(plan(None, &Observed::default()), Plan::Nothing);
}

#[test]
fn node_changes_touch_only_the_set() {
    let w = want(&["198.18.7.11", "198.18.7.13"]);
    let seen = as_built(&want(&["198.18.7.11", "198.18.7.12"]));
    let p = plan(Some(&w), &seen);
    assert_eq!(
        p,
        Plan::Elements {
            add: vec!["198.18.7.13".parse().unwrap()],
            del: vec!["198.18.7.12".parse().unwrap()]
        }
    );
    let kinds: Vec<u16> = messages(&p, Some(&w), Family::Ipv4).iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [MsgType::DelSetElem.wire(), MsgType::NewSetElem.wire()]);
}

#[test]
fn anything_changed_by_hand_replaces_the_table() {
    let w = want(&["198.18.7.11"]);
    let missing = Observed::default();
    let mut extra_rule = as_built(&w);
    extra_rule.rules.push((CHAIN.into(), Vec::new()));
    let mut other_cluster = as_built(&w);
    other_cluster.rules[0].1 = Table::masquerade_userdata("10.245.0.0/16".parse().unwrap());
    let mut drop_policy = as_built(&w);
    drop_policy.chains[0].1 = Some(0);
    let mut flushed = as_built(&w);
    flushed.rules.clear();
    for seen in [missing, extra_rule, other_cluster, drop_policy, flushed] {
        assert_eq!(plan(Some(&w), &seen), Plan::Replace, "{seen:?}");
    }
    let kinds: Vec<u16> = messages(&Plan::Replace, Some(&w), Family::Ipv4).iter().map(|m| m.kind).collect();
    use MsgType::*;
    let want_kinds: Vec<u16> = [NewTable, DelTable, NewTable, NewSet, NewSetElem, NewChain, NewRule]
        .iter()
        .map(|k| k.wire())
        .collect();
    assert_eq!(kinds, want_kinds, "one atomic batch: table, set, elements, chain, rule");
}

#[test]
fn off_removes_only_when_something_is_there() {
    assert_eq!(plan(None, &as_built(&want(&[]))), Plan::Remove);
    let kinds: Vec<u16> = messages(&Plan::Remove, None, Family::Ipv4).iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [MsgType::NewTable.wire(), MsgType::DelTable.wire()]);
}

#[test]
fn the_port_lock_shares_the_node_set_and_stands_alone() {
    let mut both = want(&["198.18.7.11", "198.18.7.12"]);
    both.port_lock = Some(8472);
    let only_lock = Table { masquerade: None, ..both.clone() };
    // Built with the masquerade alone: the lock's chain is missing.
    assert_eq!(plan(Some(&both), &as_built(&want(&["198.18.7.11", "198.18.7.12"]))), Plan::Replace);
    assert_eq!(plan(Some(&both), &as_built(&both)), Plan::Nothing);
    assert_eq!(plan(Some(&only_lock), &as_built(&only_lock)), Plan::Nothing);
    // A peer leaving is one set change, which both rules read.
    let p = plan(
        Some(&both),
        &as_built(&{
            let mut w = both.clone();
            w.nodes.insert("198.18.7.13".parse().unwrap());
            w
        }),
    );
    assert_eq!(p, Plan::Elements { add: vec![], del: vec!["198.18.7.13".parse().unwrap()] });
    // Another port, or the lock's chain deleted by hand: replaced.
    let mut moved = both.clone();
    moved.port_lock = Some(4789);
    assert_eq!(plan(Some(&moved), &as_built(&both)), Plan::Replace);
    let mut no_input = as_built(&both);
    no_input.chains.retain(|(c, _)| c != INPUT_CHAIN);
    no_input.rules.retain(|(c, _)| c != INPUT_CHAIN);
    assert_eq!(plan(Some(&both), &no_input), Plan::Replace);
    // Nothing wanted at all: the table goes.
    let nothing = Table { masquerade: None, port_lock: None, nodes: both.nodes.clone() };
    assert_eq!(plan(Some(&nothing), &as_built(&only_lock)), Plan::Remove);
    use MsgType::*;
    let kinds: Vec<u16> =
        messages(&Plan::Replace, Some(&only_lock), Family::Ipv4).iter().map(|m| m.kind).collect();
    let want_kinds: Vec<u16> = [NewTable, DelTable, NewTable, NewSet, NewSetElem, NewChain, NewRule]
        .iter()
        .map(|k| k.wire())
        .collect();
    assert_eq!(kinds, want_kinds);
}

#[test]
fn a_dumped_rule_reports_its_counter() {
    // A rule as the kernel dumps it: table, chain, expressions (the lock's,
    // with the counter at 7 packets), userdata.
    let mut rule = msg::new_rule(
        TABLE,
        INPUT_CHAIN,
        &Table::lock_exprs(8472, Family::Ipv4),
        &Table::lock_userdata(8472),
    );
    let mut bytes = Vec::new();
    rule.flags = 0;
    rule.emit(1, &mut bytes);
    let counter_at = bytes.windows(7).position(|w| w == b"counter").expect("a counter expression");
    // NFTA_COUNTER_PACKETS (length 12, type 2, eight bytes): make it count 7.
    let mut packets_attr = vec![12u8, 0, 2, 0];
    packets_attr.extend([0u8; 8]);
    let at = counter_at
        + bytes[counter_at..]
            .windows(12)
            .position(|w| w == packets_attr.as_slice())
            .expect("the packets attribute");
    bytes[at + 11] = 7;
    let body = &bytes[16..];
    let dumped = msg::parse_dumped(MsgType::NewRule.wire(), body).expect("a rule");
    assert_eq!(
        dumped,
        msg::Dumped::Rule {
            table: TABLE.into(),
            chain: INPUT_CHAIN.into(),
            userdata: Table::lock_userdata(8472),
            packets: Some(7),
        }
    );
}

/// An IPv6 underlay's lock: every message of the `ip6` family, an
/// `ipv6_addr` set of 16-byte keys, and the source read at offset 8, 16
/// bytes, of the IPv6 header.
#[test]
fn an_ipv6_lock_lives_in_an_ip6_table() {
    let lock6 = Table {
        masquerade: None,
        port_lock: Some(8472),
        nodes: ["fd00:f31:1::11", "fd00:f31:1::12"].iter().map(|n| n.parse().unwrap()).collect(),
    };
    let msgs = messages(&Plan::Replace, Some(&lock6), Family::Ipv6);
    assert!(msgs.iter().all(|m| m.family == msg::NFPROTO_IPV6), "{msgs:?}");
    let set = msgs.iter().find(|m| m.kind == MsgType::NewSet.wire()).expect("a set");
    let mut bytes = Vec::new();
    set.emit(1, &mut bytes);
    let be32 = |kind: u16| {
        let v = msg::parse_attrs(&bytes[20..]).find(|(k, _)| *k == kind).unwrap().1;
        u32::from_be_bytes(v.try_into().unwrap())
    };
    // NFTA_SET_KEY_TYPE (4) and NFTA_SET_KEY_LEN (5).
    assert_eq!((be32(4), be32(5)), (8, 16), "ipv6_addr, 16 bytes");
    let source = &Table::lock_exprs(8472, Family::Ipv6)[4];
    assert_eq!(*source, Expr::NetworkHeader { offset: 8, len: 16 });
    assert_eq!(Table::lock_exprs(8472, Family::Ipv4)[4], Expr::NetworkHeader { offset: 12, len: 4 });
    let elems: Vec<_> = msgs.iter().filter(|m| m.kind == MsgType::NewSetElem.wire()).collect();
    let mut out = Vec::new();
    elems[0].emit(2, &mut out);
    let Some(msg::Dumped::Elements(back)) = msg::parse_dumped(MsgType::NewSetElem.wire(), &out[16..]) else {
        panic!("elements did not parse")
    };
    assert_eq!(back.into_iter().collect::<BTreeSet<_>>(), lock6.nodes);
}

/// IPv6 egress: the masquerade rule reads 16-byte addresses at offsets 8
/// (source) and 24 (destination) of the IPv6 header, keeps multicast
/// (`ff00::/8`) and the cluster out, and names its cluster in the userdata.
#[test]
fn an_ipv6_masquerade_reads_ipv6_headers() {
    let cluster: IpNet = "fd00:10:244::/56".parse().unwrap();
    let e = Table::masquerade_exprs(cluster);
    let loads: Vec<&Expr> = e.iter().filter(|x| matches!(x, Expr::NetworkHeader { .. })).collect();
    assert_eq!(
        loads,
        [
            &Expr::NetworkHeader { offset: 8, len: 16 },
            &Expr::NetworkHeader { offset: 24, len: 16 },
            &Expr::NetworkHeader { offset: 24, len: 16 },
            &Expr::NetworkHeader { offset: 24, len: 16 },
        ]
    );
    let multicast: ipnet::Ipv6Net = "ff00::/8".parse().unwrap();
    assert!(e.contains(&Expr::Cmp { negate: true, value: multicast.network().octets().to_vec() }));
    assert_eq!(Table::masquerade_userdata(cluster), b"felt-masq-v1 fd00:10:244::/56");
    let v6 = Table { masquerade: Some(cluster), port_lock: None, nodes: BTreeSet::new() };
    let kinds: Vec<u16> = messages(&Plan::Replace, Some(&v6), Family::Ipv6).iter().map(|m| m.kind).collect();
    assert!(kinds.contains(&MsgType::NewRule.wire()), "{kinds:?}");
}
