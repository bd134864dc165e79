use super::*;

fn want(nodes: &[&str]) -> Masquerade {
    Masquerade {
        cluster: "10.244.0.0/16".parse().unwrap(),
        nodes: nodes.iter().map(|n| n.parse().unwrap()).collect(),
    }
}

fn as_built(w: &Masquerade) -> Observed {
    Observed {
        chains: vec![(CHAIN.into(), Some(msg::POLICY_ACCEPT))],
        rules: vec![(CHAIN.into(), w.userdata())],
        nodes: Some(w.nodes.clone()),
    }
}

#[test]
fn a_right_table_is_left_alone() {
    let w = want(&["198.18.7.11", "198.18.7.12"]);
    assert_eq!(plan(Some(&w), &as_built(&w)), Plan::Nothing);
    assert!(messages(&Plan::Nothing, Some(&w)).is_empty());
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
    let kinds: Vec<u16> = messages(&p, Some(&w)).iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [MsgType::DelSetElem.wire(), MsgType::NewSetElem.wire()]);
}

#[test]
fn anything_changed_by_hand_replaces_the_table() {
    let w = want(&["198.18.7.11"]);
    let missing = Observed::default();
    let mut extra_rule = as_built(&w);
    extra_rule.rules.push((CHAIN.into(), Vec::new()));
    let mut other_cluster = as_built(&w);
    other_cluster.rules[0].1 = want(&[]).userdata().into_iter().chain(*b"x").collect();
    let mut drop_policy = as_built(&w);
    drop_policy.chains[0].1 = Some(0);
    let mut flushed = as_built(&w);
    flushed.rules.clear();
    for seen in [missing, extra_rule, other_cluster, drop_policy, flushed] {
        assert_eq!(plan(Some(&w), &seen), Plan::Replace, "{seen:?}");
    }
    let kinds: Vec<u16> = messages(&Plan::Replace, Some(&w)).iter().map(|m| m.kind).collect();
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
    let kinds: Vec<u16> = messages(&Plan::Remove, None).iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [MsgType::NewTable.wire(), MsgType::DelTable.wire()]);
}
