//! felt's masquerade table against the real kernel's nf_tables.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use felt_overlay::nft::{self, Nft, Plan, Table};

use crate::harness::{Netns, TestLab, require_root, run, wait_until};

impl Netns {
    fn nft(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").args(["netns", "exec", &self.0, "nft"]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Runs `f` with an nf_tables socket inside the namespace.
    fn with_nft<T: Send + 'static>(&self, f: impl FnOnce(&mut Nft) -> T + Send + 'static) -> T {
        felt::netns::run_in(&felt::netns::named(&self.0), move || {
            f(&mut Nft::open().expect("nf_tables socket"))
        })
        .expect("entering the namespace")
    }
}

fn want(nodes: &[&str]) -> Table {
    Table {
        masquerade: Some("10.244.0.0/16".parse().unwrap()),
        port_lock: None,
        nodes: nodes.iter().map(|n| n.parse().unwrap()).collect(),
    }
}

/// Observe, plan, apply; returns the plan that was applied.
fn reconcile(ns: &Netns, w: Option<Table>) -> Plan {
    ns.with_nft(move |n| {
        let seen = n.observe().unwrap();
        let p = nft::plan(w.as_ref(), &seen);
        n.apply(&p, w.as_ref()).unwrap();
        p
    })
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn masquerade_table_is_built_kept_repaired_and_removed() {
    require_root();
    let ns = Netns::new("nft");
    // Someone else's table, which felt must never touch.
    ns.nft(&["add", "table", "ip", "host"]);
    ns.nft(&["add", "chain", "ip", "host", "post", "{ type nat hook postrouting priority 100; }"]);
    ns.nft(&["add", "rule", "ip", "host", "post", "ip", "saddr", "192.0.2.0/24", "masquerade"]);
    let host_before = ns.nft(&["list", "table", "ip", "host"]);

    assert_eq!(reconcile(&ns, Some(want(&["198.18.7.11", "198.18.7.12"]))), Plan::Replace);
    let listed = ns.nft(&["list", "table", "ip", "felt"]);
    for want in [
        "type ipv4_addr",
        "198.18.7.11",
        "type nat hook postrouting priority srcnat; policy accept;",
        "ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 ip daddr != @nodes masquerade fully-random",
    ] {
        assert!(listed.contains(want), "`{want}` missing from:\n{listed}");
    }
    // Right already: nothing is written.
    assert_eq!(reconcile(&ns, Some(want(&["198.18.7.11", "198.18.7.12"]))), Plan::Nothing);
    // A node leaves and one joins: only the set changes.
    let p = reconcile(&ns, Some(want(&["198.18.7.11", "198.18.7.13"])));
    assert!(matches!(p, Plan::Elements { .. }), "{p:?}");
    let set = ns.nft(&["list", "set", "ip", "felt", "nodes"]);
    assert!(set.contains("198.18.7.13") && !set.contains("198.18.7.12"), "{set}");
    // Flushed by hand: rebuilt whole.
    ns.nft(&["flush", "chain", "ip", "felt", "postrouting"]);
    assert_eq!(reconcile(&ns, Some(want(&["198.18.7.11", "198.18.7.13"]))), Plan::Replace);
    assert!(ns.nft(&["list", "table", "ip", "felt"]).contains("masquerade fully-random"));
    // All nodes gone: an empty set is still a right table.
    assert!(matches!(reconcile(&ns, Some(want(&[]))), Plan::Elements { .. }));
    assert_eq!(reconcile(&ns, Some(want(&[]))), Plan::Nothing);
    // The VXLAN port lock joins: the kernel takes the chain and rule as felt builds them.
    let locked = Table { port_lock: Some(8472), ..want(&["198.18.7.11"]) };
    assert_eq!(reconcile(&ns, Some(locked.clone())), Plan::Replace);
    let listed = ns.nft(&["list", "table", "ip", "felt"]);
    for want in [
        "type filter hook input priority filter; policy accept;",
        "udp dport 8472 ip saddr != @nodes counter packets 0 bytes 0 drop",
        "masquerade fully-random",
    ] {
        assert!(listed.contains(want), "`{want}` missing from:\n{listed}");
    }
    assert_eq!(reconcile(&ns, Some(locked.clone())), Plan::Nothing);
    assert_eq!(ns.with_nft(|n| n.observe().unwrap().locked_out), Some(0));
    // Masquerade off, lock on: the table stays, with the lock alone.
    assert_eq!(reconcile(&ns, Some(Table { masquerade: None, ..locked })), Plan::Replace);
    let listed = ns.nft(&["list", "table", "ip", "felt"]);
    assert!(listed.contains("dport 8472") && !listed.contains("masquerade"), "{listed}");
    // Off: felt's table goes, the other stays as it was.
    assert_eq!(reconcile(&ns, None), Plan::Remove);
    let tables = ns.nft(&["list", "tables"]);
    assert!(!tables.contains("felt"), "{tables}");
    assert_eq!(ns.nft(&["list", "table", "ip", "host"]), host_before);
    assert!(ns.with_nft(|n| !n.remove().unwrap()), "removing twice finds nothing and fails not");
    let seen: BTreeSet<String> = tables.lines().map(str::to_owned).collect();
    assert_eq!(seen, BTreeSet::from(["table ip host".to_owned()]));
}

/// Accepts one TCP connection on `addr` inside namespace `ns` within 10 s;
/// returns the source address it came from. Listening before this returns.
/// A cluster of 20,000 nodes: the node set's elements go in chunks (one
/// list of them would overflow its 16-bit attribute length, and the kernel
/// refused the whole table past ~4,000 nodes) and the batch, one
/// transaction, fits the socket's send buffer. Built, changed, and read
/// back whole.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_table_of_twenty_thousand_nodes_is_built_and_changed_whole() {
    require_root();
    let ns = Netns::new("nft");
    let nodes = |from: u32, to: u32| -> BTreeSet<std::net::IpAddr> {
        (from..to)
            .map(|i| std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + i).into())
            .collect()
    };
    let big = Table { port_lock: Some(8472), nodes: nodes(0, 20_000), ..want(&[]) };
    assert_eq!(reconcile(&ns, Some(big.clone())), Plan::Replace);
    let seen = ns.with_nft(|n| n.observe().unwrap());
    assert_eq!(seen.nodes.as_ref(), Some(&big.nodes));
    assert_eq!(nft::plan(Some(&big), &seen), Plan::Nothing);
    // 5,000 leave and 5,000 join in one pass.
    let moved = Table { nodes: nodes(5_000, 25_000), ..big };
    assert!(matches!(reconcile(&ns, Some(moved.clone())), Plan::Elements { .. }));
    let seen = ns.with_nft(|n| n.observe().unwrap());
    assert_eq!(seen.nodes.as_ref(), Some(&moved.nodes));
    assert_eq!(reconcile(&ns, None), Plan::Remove);
}

fn listen_once(ns: &str, addr: SocketAddr) -> std::thread::JoinHandle<IpAddr> {
    let path = felt::netns::named(ns);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        felt::netns::run_in(&path, move || {
            let l = TcpListener::bind(addr).expect("binding the listener");
            l.set_nonblocking(true).unwrap();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match l.accept() {
                    Ok((_, from)) => return from.ip(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("no connection to {addr}: {e}"),
                }
            }
        })
        .expect("entering the namespace")
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("listener ready");
    handle
}

/// Connects from namespace `ns` to `addr`; returns the source address the listener saw.
fn seen_from(from_ns: &str, listen_ns: &str, addr: SocketAddr) -> IpAddr {
    let seen = listen_once(listen_ns, addr);
    felt::netns::run_in(&felt::netns::named(from_ns), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connecting")
    })
    .expect("entering the pod namespace");
    seen.join().expect("listener")
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn pods_reach_the_outside_masqueraded_and_each_other_as_themselves() {
    require_root();
    let lab = TestLab::up(2, 1);
    let status = lab.status();
    let node = |n: &str| status.nodes.iter().find(|x| x.name == n).unwrap().clone();
    let pod = |n: &str| status.pods.iter().find(|p| p.node == n).unwrap().clone();
    let (n1, n2, p1, p2) = (node("n1"), node("n2"), pod("n1"), pod("n2"));
    let p1_ns = p1.netns.as_str();
    // Wait until n1's agent has built its table (it does so in its first reconcile).
    let has_table = || {
        Command::new("ip")
            .args(["netns", "exec", &lab.node_ns("n1"), "nft", "list", "table", "ip", "felt"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("masquerade"))
    };
    assert!(wait_until(Duration::from_secs(10), has_table).is_some(), "n1 has no masquerade table");

    // To the outside: the node's address, never the pod's.
    let outside = SocketAddr::new(felt::lab::OUTSIDE_IP.into(), 7001);
    let ul = format!("{}-ul", lab.name);
    assert_eq!(seen_from(p1_ns, &ul, outside), IpAddr::from(n1.underlay_ip), "egress leaves as the node");
    // To a pod on another node: the pod's own address.
    let to_pod = SocketAddr::new(IpAddr::from(p2.ip.unwrap()), 7002);
    assert_eq!(seen_from(p1_ns, &p2.netns, to_pod), IpAddr::from(p1.ip.unwrap()), "pod-to-pod is not NATed");
    // To another node's underlay address: the pod's own address too.
    let to_node = SocketAddr::new(IpAddr::from(n2.underlay_ip), 7003);
    assert_eq!(
        seen_from(p1_ns, &lab.node_ns("n2"), to_node),
        IpAddr::from(p1.ip.unwrap()),
        "pod-to-node is not NATed"
    );

    // `felt lab check` proves the same for every pod.
    let check = lab.felt(&["lab", "check"]);
    assert!(
        check.contains("egress: 2/2 pods reach the outside host 203.0.113.1 as their node's address"),
        "{check}"
    );

    // Deleted by hand while n1's agent is stopped, the check sees n1's pod
    // leave as itself; resumed, the agent puts the table back within a
    // resync (the lab's is 5 s).
    let n1_pid = n1.pid.to_string();
    run(Command::new("kill").args(["-STOP", &n1_pid]));
    run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.node_ns("n1"),
        "nft",
        "delete",
        "table",
        "ip",
        "felt",
    ]));
    assert!(!has_table(), "the table was deleted");
    let out = lab.felt_command(&["lab", "check"]).output().unwrap();
    run(Command::new("kill").args(["-CONT", &n1_pid]));
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the check passed without n1's masquerade:\n{check}");
    // The outside host has no route to pod addresses: an un-NATed
    // connection times out (a network that had one would see the pod).
    let want = format!(
        "FAIL {} ({}) → outside 203.0.113.1: connection timed out (want seen as its node {})",
        p1.name,
        IpAddr::from(p1.ip.unwrap()),
        IpAddr::from(n1.underlay_ip)
    );
    assert!(check.contains(&want), "want `{want}` in:\n{check}");
    assert!(check.contains("egress: 1/2 pods"), "{check}");
    assert!(
        wait_until(Duration::from_secs(12), has_table).is_some(),
        "the masquerade table was not repaired"
    );
    assert_eq!(
        seen_from(p1_ns, &ul, SocketAddr::new(felt::lab::OUTSIDE_IP.into(), 7004)),
        IpAddr::from(n1.underlay_ip)
    );
    assert!(lab.felt(&["lab", "check"]).contains("egress: 2/2 pods"));
    lab.finish();
}

/// IPv6 egress (a dual-stack lab): every pod reaches the outside host's
/// IPv6 address as its node's IPv6 address, through felt's `ip6 felt`
/// masquerade; with that table deleted (agent stopped) n1's pod fails the
/// check, and the resumed agent puts it back.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn ipv6_egress_is_masqueraded_by_felts_ip6_table() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 1, &["--ip-family", "dual"]);
    let check = lab.felt(&["lab", "check"]);
    assert!(
        check.contains(
            "egress ipv6: 2/2 pods reach the outside host fd00:f31:ffff::1 as their node's address"
        ),
        "{check}"
    );
    let n1 = lab.status().nodes.into_iter().find(|n| n.name == "n1").unwrap();
    let has_table = || {
        Command::new("ip")
            .args(["netns", "exec", &lab.node_ns("n1"), "nft", "list", "table", "ip6", "felt"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("masquerade"))
    };
    assert!(has_table(), "n1 has no ip6 masquerade table");
    let n1_pid = n1.pid.to_string();
    run(Command::new("kill").args(["-STOP", &n1_pid]));
    run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.node_ns("n1"),
        "nft",
        "delete",
        "table",
        "ip6",
        "felt",
    ]));
    assert!(!has_table(), "the table was deleted");
    let out = lab.felt_command(&["lab", "check"]).output().unwrap();
    run(Command::new("kill").args(["-CONT", &n1_pid]));
    let check = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "the check passed without n1's IPv6 masquerade:\n{check}");
    assert!(check.contains("egress ipv6: 1/2 pods"), "{check}");
    assert!(check.contains("→ outside fd00:f31:ffff::1"), "{check}");
    assert!(wait_until(Duration::from_secs(12), has_table).is_some(), "the ip6 table was not repaired");
    assert!(lab.felt(&["lab", "check"]).contains("egress ipv6: 2/2 pods"));
    lab.finish();
}
