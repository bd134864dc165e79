//! Dual-stack and IPv6-only labs: IPv6 pods across nodes over the same
//! VXLAN device and IPv4 underlay, in kernel, userspace and mixed mode.

use std::net::IpAddr;
use std::time::Duration;

use felt::lab::probe;
use felt::netns;

use crate::Monitor;
use crate::harness::{TestLab, assert_all_answered, ip_in, require_root, wait_until};

/// felt's IPv6 routes and permanent IPv6 neighbours on a node's `felt.1`.
fn ipv6_entries(lab: &TestLab, node: &str) -> (Vec<String>, Vec<String>) {
    let ns = lab.node_ns(node);
    let routes = ip_in(&ns, &["-6", "route", "show", "dev", "felt.1", "proto", "76"])
        .lines()
        .map(str::to_owned)
        .collect();
    let neigh = ip_in(&ns, &["-6", "neigh", "show", "dev", "felt.1", "nud", "permanent"])
        .lines()
        .map(str::to_owned)
        .collect();
    (routes, neigh)
}

/// IPv6 drift on n1: with `peers` peers' IPv6 routes and neighbours in
/// place, one of each deleted by hand (seen gone first, so their return is
/// the agent's doing) comes back; returns how long that took.
fn ipv6_drift_is_repaired(lab: &TestLab, peers: usize) -> Duration {
    let (routes, neigh) = ipv6_entries(lab, "n1");
    assert_eq!((routes.len(), neigh.len()), (peers, peers), "{routes:?} {neigh:?}");
    let n1 = lab.node_ns("n1");
    let dst = routes[0].split_whitespace().next().unwrap().to_owned();
    let vtep = neigh[0].split_whitespace().next().unwrap().to_owned();
    // The agent's resync (every 5 s in a lab) may fall between the two
    // deletions and the look that follows: then delete again (three tries).
    let mut tries = 0;
    loop {
        ip_in(&n1, &["-6", "route", "del", &dst, "dev", "felt.1"]);
        ip_in(&n1, &["-6", "neigh", "del", &vtep, "dev", "felt.1"]);
        let (r, n) = ipv6_entries(lab, "n1");
        if !r.contains(&routes[0]) && !n.contains(&neigh[0]) {
            break;
        }
        tries += 1;
        assert!(tries < 3, "not deleted: {r:?} {n:?}");
        wait_until(Duration::from_secs(6), || ipv6_entries(lab, "n1") == (routes.clone(), neigh.clone()))
            .expect("the half-deleted entries come back");
    }
    let back =
        wait_until(Duration::from_secs(6), || ipv6_entries(lab, "n1") == (routes.clone(), neigh.clone()));
    back.unwrap_or_else(|| panic!("IPv6 route/neighbour not restored: {:?}", ipv6_entries(lab, "n1")))
}

/// `felt lab bench --json` (0.5 s a test) on `lab`, after asserting that
/// every pod path — kernel, userspace, mixed — measured TCP and UDP over
/// IPv6 with a figure above zero; the rows, for more checks.
fn bench_over_ipv6(lab: &TestLab) -> Vec<serde_json::Value> {
    let bench: serde_json::Value =
        serde_json::from_str(&lab.felt(&["lab", "bench", "--seconds", "0.5", "--json"])).unwrap();
    let rows = bench.as_array().unwrap().clone();
    for path in ["kernel", "userspace", "mixed"] {
        for test in ["tcp", "udp"] {
            let r = rows
                .iter()
                .find(|r| r["test"] == test && r["path"] == path && r["family"] == "ipv6")
                .unwrap_or_else(|| panic!("{test} {path} over IPv6: {bench}"));
            let figure = if test == "tcp" { &r["gbit_per_s"] } else { &r["packets_per_s"] };
            assert!(figure.as_f64().unwrap() > 0.0, "{r}");
            assert!(r["between"].as_str().unwrap().contains("fd00:f31:244:"), "{r}");
        }
    }
    rows
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_dual_stack_lab_reaches_every_pair_over_both_families_and_repairs_ipv6_drift() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 3, 2, &["--ip-family", "dual"]);
    let check = lab.felt(&["lab", "check"]);
    assert!(check.contains("by family: ipv4 30/30, ipv6 30/30\n"), "{check}");
    assert!(check.contains("egress ipv6: 6/6 pods"), "{check}");
    assert_eq!(check.lines().last(), Some("60/60 pod pairs reachable"), "{check}");

    // Every pod holds an address of each family, its node's IPv6 subnet's.
    let status = lab.status();
    for pod in &status.pods {
        let ip6 = pod.ip6.unwrap_or_else(|| panic!("{} has no IPv6 address", pod.name));
        assert!(felt::lab::IpFamily::Dual.net().ipv6_network.unwrap().contains(&ip6), "{ip6}");
    }
    let subnet = std::fs::read_to_string(lab.node_dir("n1").join("subnet.env")).unwrap();
    assert!(subnet.contains("FELT_IPV6_NETWORK=fd00:f31:244::/56\n"), "{subnet}");
    let state = lab.debug_state("n1");
    let lease = state.lease.expect("a lease");
    let (cidr6, vtep6) = (lease.pod_cidr6.expect("an IPv6 lease"), lease.vtep_ip6.expect("an IPv6 VTEP"));
    assert_eq!(vtep6, cidr6.network(), "the IPv6 VTEP is the IPv6 subnet's network address");
    assert!(subnet.contains(&format!("FELT_IPV6_SUBNET={}1/64\n", cidr6.network())), "{subnet}");
    assert_eq!(state.peers.len(), 2);
    for p in &state.peers {
        assert!(p.pod_cidr6.is_some() && p.desired.route6.is_some(), "{p:?}");
        assert_eq!(p.in_sync, Some(true), "{p:?}");
    }
    let addr = ip_in(&lab.node_ns("n1"), &["-6", "addr", "show", "dev", "felt.1", "scope", "global"]);
    assert!(addr.contains(&format!("inet6 {vtep6}/128")), "{addr}");

    let back = ipv6_drift_is_repaired(&lab, 2);
    eprintln!("dual-stack lab: 30 IPv4 and 30 IPv6 pairs reachable; IPv6 drift repaired in {back:?}");
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn an_agent_restart_loses_no_ipv6_packet_and_rewrites_nothing() {
    require_root();
    let _alone = crate::harness::exclusive();
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 1, &["--ip-family", "dual"]);
    let status = lab.status();
    let target = status.pods.iter().find(|p| p.node == "n1").and_then(|p| p.ip6).expect("n1's pod's IPv6");
    let src = netns::named(&format!("{}-n2-p1", lab.name));
    let n1 = lab.node_ns("n1");
    let monitor = Monitor::start(&n1, "ip", &["route", "neigh"]);
    // The monitor must be seen to see before its silence means anything.
    let poke = || {
        ip_in(&n1, &["-6", "route", "add", "blackhole", "fd00:f31:fffe::/64"]);
        ip_in(&n1, &["-6", "route", "del", "blackhole", "fd00:f31:fffe::/64"]);
    };
    assert!(monitor.proves("fd00:f31:fffe::", poke), "the IPv6 route monitor saw nothing");

    // 15 s at 50 packets per second over IPv6, across a SIGKILL and restart of n1's agent.
    let pinger = std::thread::spawn(move || {
        netns::run_in(&src, move || {
            probe::ping_series(IpAddr::V6(target), 750, Duration::from_millis(20), Duration::from_secs(1))
        })
    });
    std::thread::sleep(Duration::from_secs(4));
    let before = lab.kill_and_restart("n1");
    let report = pinger.join().unwrap().unwrap().unwrap();
    lab.wait_for_a_pass("n1");
    let events = monitor.stop();

    assert_all_answered(&report);
    let on_vxlan: Vec<&str> =
        events.lines().filter(|l| l.contains("felt.1") && !l.contains("proto kernel")).collect();
    assert!(on_vxlan.is_empty(), "the restart rewrote IPv6 routes/neighbours: {on_vxlan:?}");
    let after = &lab.log("n1")[before..];
    assert!(!after.contains("programmed"), "the restarted agent programmed something:\n{after}");
    eprintln!(
        "dual-stack SIGKILL and restart: {}/{} IPv6 pings answered, 0 netlink writes on felt.1",
        report.received, report.sent
    );
    lab.finish();
}

/// Userspace and mixed modes carry IPv6 too: a 4-node mixed lab (two kernel
/// nodes, two userspace ones) reaches every pair over both families, and
/// the bench measures every pod path over both, each family against its
/// own kernel VXLAN figure.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn ipv6_crosses_userspace_and_mixed_paths_and_the_bench_measures_both_families() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 4, 1, &["--mode", "mixed", "--ip-family", "dual"]);
    let check = lab.felt(&["lab", "check"]);
    assert!(check.contains("by family: ipv4 12/12, ipv6 12/12\n"), "{check}");
    assert_eq!(check.lines().last(), Some("24/24 pod pairs reachable"), "{check}");
    // A userspace node's engine holds its peers' IPv6 subnets; its TUN the IPv6 VTEP.
    let st = lab.debug_state("n2");
    assert_eq!(st.config.backend, felt_proto::DataplaneKind::Userspace);
    assert!(st.peers.iter().all(|p| p.pod_cidr6.is_some() && p.in_sync == Some(true)), "{:?}", st.peers);
    let vtep6 = st.lease.and_then(|l| l.vtep_ip6).expect("an IPv6 VTEP");
    let addr = ip_in(&lab.node_ns("n2"), &["-6", "addr", "show", "dev", "felt.1", "scope", "global"]);
    assert!(addr.contains(&format!("inet6 {vtep6}/128")), "{addr}");

    let rows = bench_over_ipv6(&lab);
    assert!(!rows.iter().any(|r| r["path"] == "underlay" && r["family"] == "ipv6"), "the underlay is IPv4");
    assert!(rows.iter().filter(|r| r["path"] == "kernel").all(|r| r["ratio_to_kernel"] == 1.0), "{rows:?}");
    lab.finish();
}

/// An IPv6-only lab (no IPv4 pod network) in mixed mode: every pair over
/// IPv6 on kernel–kernel, userspace–userspace and kernel–userspace paths,
/// no IPv4 anywhere in the overlay, peers probed over ICMPv6, IPv6 drift
/// repaired, and the bench measuring every pod path over IPv6.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn an_ipv6_only_lab_reaches_every_pair_in_every_mode_with_no_ipv4_in_the_overlay() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 4, 1, &["--mode", "mixed", "--ip-family", "ipv6"]);
    let check = lab.felt(&["lab", "check"]);
    assert!(check.contains("by family: ipv4 0/0, ipv6 12/12\n"), "{check}");
    assert!(check.contains("egress ipv6: 4/4 pods reach the outside host fd00:f31:ffff::1"), "{check}");
    assert!(check.contains("egress: not probed over IPv4: no pod has an IPv4 address"), "{check}");
    assert_eq!(check.lines().last(), Some("12/12 pod pairs reachable"), "{check}");

    let network6 = felt::lab::IpFamily::Ipv6.net().ipv6_network.unwrap();
    for pod in &lab.status().pods {
        assert_eq!(pod.ip, None, "{} has an IPv4 address", pod.name);
        assert!(pod.ip6.is_some_and(|ip| network6.contains(&ip)), "{pod:?}");
    }
    let subnet = std::fs::read_to_string(lab.node_dir("n1").join("subnet.env")).unwrap();
    assert!(!subnet.contains("FELT_NETWORK=") && !subnet.contains("FELT_SUBNET="), "{subnet}");
    assert!(subnet.contains("FELT_IPV6_NETWORK=fd00:f31:244::/56\n"), "{subnet}");

    // Kernel (n1) and userspace (n2) nodes: an IPv6 VTEP, no IPv4 address
    // on the device; the same `ip addr` that finds the one finds no other.
    for (node, kind) in [("n1", "kernel"), ("n2", "userspace")] {
        let state = lab.debug_state(node);
        assert_eq!(state.config.backend.to_string(), kind);
        assert_eq!(state.config.network, None);
        let lease = state.lease.expect("a lease");
        assert_eq!((lease.pod_cidr, lease.vtep_ip), (None, None), "{lease:?}");
        let vtep6 = lease.vtep_ip6.expect("an IPv6 VTEP");
        let ns = lab.node_ns(node);
        let v6 = ip_in(&ns, &["-6", "addr", "show", "dev", "felt.1", "scope", "global"]);
        assert!(v6.contains(&format!("inet6 {vtep6}/128")), "{node}: {v6}");
        let v4 = ip_in(&ns, &["-4", "addr", "show", "dev", "felt.1"]);
        assert!(v4.trim().is_empty(), "{node}: an IPv4 address on felt.1: {v4}");
        assert_eq!(state.peers.len(), 3);
        for p in &state.peers {
            assert!(
                p.pod_cidr.is_none() && p.desired.route.is_none() && p.desired.neighbour.is_none(),
                "{p:?}"
            );
            assert!(p.pod_cidr6.is_some() && p.desired.route6.is_some(), "{p:?}");
            assert_eq!(p.in_sync, Some(true), "{p:?}");
        }
    }
    // The agents probe their peers' IPv6 VTEPs.
    let reachable = wait_until(Duration::from_secs(10), || {
        lab.debug_state("n1").peers.iter().all(|p| p.probe.state == felt_proto::debug::ProbeStatus::Reachable)
    });
    assert!(reachable.is_some(), "{:?}", lab.debug_state("n1").peers);

    // The kernel node's entries: IPv6 only, repaired when deleted by hand.
    let n1 = lab.node_ns("n1");
    let routes4 = ip_in(&n1, &["-4", "route", "show", "dev", "felt.1", "proto", "76"]);
    assert!(routes4.trim().is_empty(), "IPv4 routes in an IPv6-only lab: {routes4}");
    let back = ipv6_drift_is_repaired(&lab, 3);

    let rows = bench_over_ipv6(&lab);
    assert!(rows.iter().any(|r| r["path"] == "underlay"), "the underlay is measured: {rows:?}");
    assert!(
        !rows.iter().any(|r| r["path"] != "underlay" && r["family"] == "ipv4"),
        "no IPv4 pod path: {rows:?}"
    );
    eprintln!("IPv6-only lab: 12/12 pairs over IPv6 in mixed mode; IPv6 drift repaired in {back:?}");
    lab.finish();
}

/// VXLAN over an IPv6 underlay, everything IPv6: IPv6-only pods in a mixed
/// lab whose agents encapsulate from their IPv6 addresses. Kernel nodes'
/// devices send from `local6` with IPv6 FDB remotes and MTU underlay − 70;
/// userspace nodes know their peers by IPv6 address; every pod path
/// carries traffic (bench).
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn an_ipv6_underlay_carries_every_mode_and_both_pod_families() {
    require_root();
    let args = ["--mode", "mixed", "--ip-family", "ipv6", "--underlay", "ipv6"];
    let lab = TestLab::up_named(&TestLab::unique_name(), 4, 1, &args);
    let check = lab.felt(&["lab", "check"]);
    assert!(check.contains("by family: ipv4 0/0, ipv6 12/12\n"), "{check}");
    assert_eq!(check.lines().last(), Some("12/12 pod pairs reachable"), "{check}");
    let status = lab.status();
    let underlay6 = |node: &str| {
        let n = status.nodes.iter().find(|n| n.name == node).unwrap();
        IpAddr::V6(felt::lab::underlay6(n.underlay_ip))
    };
    // n1 kernel: the device sends from its IPv6 address, to IPv6 remotes.
    let n1 = lab.node_ns("n1");
    let link = ip_in(&n1, &["-d", "link", "show", "felt.1"]);
    assert!(link.contains(&format!("local {}", underlay6("n1"))) && link.contains("mtu 1430"), "{link}");
    let fdb = String::from_utf8_lossy(
        &std::process::Command::new("bridge")
            .args(["-n", &n1, "fdb", "show", "dev", "felt.1"])
            .output()
            .expect("bridge")
            .stdout,
    )
    .into_owned();
    for peer in ["n2", "n3", "n4"] {
        assert!(fdb.contains(&format!("dst {} self permanent", underlay6(peer))), "{peer}: {fdb}");
    }
    // n2 userspace: its lease and its engine's peers are on IPv6.
    let st = lab.debug_state("n2");
    assert_eq!(st.config.backend, felt_proto::DataplaneKind::Userspace);
    let lease = st.lease.expect("a lease");
    assert_eq!((lease.underlay_ip, lease.mtu), (underlay6("n2"), 1430));
    let engine = st.engine.expect("an engine");
    assert!(engine.peers.iter().all(|p| p.underlay_ip.is_ipv6()), "{:?}", engine.peers);
    assert!(st.peers.iter().all(|p| p.in_sync == Some(true)), "{:?}", st.peers);

    bench_over_ipv6(&lab);
    lab.finish();

    // Dual-stack pods over the same IPv6 underlay: both families cross.
    let args = ["--mode", "mixed", "--ip-family", "dual", "--underlay", "ipv6"];
    let lab = TestLab::up_named(&TestLab::unique_name(), 4, 1, &args);
    let check = lab.felt(&["lab", "check"]);
    assert!(check.contains("by family: ipv4 12/12, ipv6 12/12\n"), "{check}");
    assert!(check.contains("egress: 4/4 pods reach the outside host"), "{check}");
    assert!(check.contains("egress ipv6: 4/4 pods"), "{check}");
    assert_eq!(check.lines().last(), Some("24/24 pod pairs reachable"), "{check}");
    lab.finish();
}
