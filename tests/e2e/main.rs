//! End-to-end tests: real namespaces, real netlink, real agents, real traffic.
//! Each test builds its own lab with a unique name and removes it, leaving
//! the root namespace untouched (checked). They need root; see `harness`.

mod churn;
mod cleanup;
mod cni;
mod debug;
mod delegate;
mod dual_stack;
mod egress;
mod flannel;
mod harness;
mod kube;
mod kube_real;
mod podman;
mod portlock;
mod rootless;
mod scale;
mod signals;
mod userspace;

use std::process::{Command, Stdio};
use std::time::Duration;

use felt::lab::probe;
use felt::netns;
use harness::{TestLab, assert_all_answered, bridge_in, ip_in, require_root, run, wait_until};

/// Kernel objects on a node's `felt.1`: (routes, permanent neighbours, FDB remotes).
fn entries(lab: &TestLab, node: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let ns = lab.node_ns(node);
    let routes = ip_in(&ns, &["route", "show", "dev", "felt.1"]).lines().map(str::to_owned).collect();
    let neigh = ip_in(&ns, &["neigh", "show", "dev", "felt.1", "nud", "permanent"])
        .lines()
        .map(str::to_owned)
        .collect();
    let fdb = bridge_in(&ns, &["fdb", "show", "dev", "felt.1"])
        .lines()
        .filter(|l| l.contains(" dst "))
        .map(str::to_owned)
        .collect();
    (routes, neigh, fdb)
}

fn pod_cidr(status: &felt::lab::LabStatus, node: &str) -> String {
    let node = status.nodes.iter().find(|n| n.name == node).unwrap();
    node.pod_cidr.expect("the node's record has a pod CIDR").to_string()
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn three_nodes_reach_every_pod_pair() {
    require_root();
    let lab = TestLab::up(3, 2);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("30/30 pod pairs reachable"), "{check}");

    let status = lab.status();
    assert_eq!(status.nodes.len(), 3);
    assert_eq!(status.pods.len(), 6);
    let n1 = &status.nodes[0];
    assert!(n1.pod_cidr.is_some() && n1.vtep_mac.is_some() && n1.pid != 0, "status node incomplete: {n1:?}");

    for node in &status.nodes {
        let name = node.name.as_str();
        let ns = lab.node_ns(name);
        let link = ip_in(&ns, &["-d", "link", "show", "felt.1"]);
        let underlay = node.underlay_ip.to_string();
        for want in
            ["mtu 1450", "vxlan id 1 ", &format!("local {underlay} dev eth0"), "dstport 8472", "nolearning"]
        {
            assert!(link.contains(want), "{name}: `{want}` missing in\n{link}");
        }
        assert!(
            link.contains(&node.vtep_mac.unwrap().to_string()),
            "{name}: VTEP MAC is not the published one"
        );
        let cidr = node.pod_cidr.unwrap().to_string();
        let vtep = format!("{}/32", cidr.split('/').next().unwrap());
        assert!(ip_in(&ns, &["addr", "show", "felt.1"]).contains(&vtep), "{name}: no {vtep} on felt.1");

        let (routes, neigh, fdb) = entries(&lab, name);
        assert_eq!(routes.len(), 2, "{name} routes: {routes:?}");
        assert!(routes.iter().all(|r| r.contains("proto 76") && r.contains("onlink")), "{routes:?}");
        assert_eq!(neigh.len(), 2, "{name} neighbours: {neigh:?}");
        assert_eq!(fdb.len(), 2, "{name} fdb: {fdb:?}");
        for peer in status.nodes.iter().filter(|p| p.name != name) {
            let pcidr = peer.pod_cidr.unwrap();
            let pvtep = pcidr.network();
            let pmac = peer.vtep_mac.unwrap();
            let pip = peer.underlay_ip;
            assert!(
                routes.iter().any(|r| r.starts_with(&format!("{pcidr} via {pvtep} "))),
                "{name}: no route to {pcidr}"
            );
            assert!(
                neigh.iter().any(|n| n.starts_with(&format!("{pvtep} lladdr {pmac}"))),
                "{name}: no neighbour {pvtep}"
            );
            assert!(
                fdb.iter().any(|f| f.starts_with(&format!("{pmac} dst {pip} "))),
                "{name}: no FDB for {pmac}"
            );
        }
    }
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn joins_and_leaves_reach_every_peer() {
    require_root();
    let lab = TestLab::up(3, 1);
    let out = lab.felt(&["lab", "add-node"]);
    assert!(out.contains("n4 joined"), "{out}");
    let status = lab.status();
    let n4 = pod_cidr(&status, "n4");
    for node in ["n1", "n2", "n3"] {
        let (routes, neigh, fdb) = entries(&lab, node);
        assert!(routes.iter().any(|r| r.starts_with(&n4)), "{node} lacks a route to n4 ({n4}): {routes:?}");
        assert_eq!((routes.len(), neigh.len(), fdb.len()), (3, 3, 3), "{node}");
    }
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("12/12 pod pairs reachable"), "{check}");

    let n2 = pod_cidr(&status, "n2");
    lab.felt(&["lab", "remove-node", "n2"]);
    for node in ["n1", "n3", "n4"] {
        let gone = wait_until(Duration::from_secs(2), || {
            let (routes, neigh, fdb) = entries(&lab, node);
            !routes.iter().any(|r| r.starts_with(&n2)) && neigh.len() == 2 && fdb.len() == 2
        });
        assert!(gone.is_some(), "{node} still has n2's entries: {:?}", entries(&lab, node));
    }
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "{check}");
    lab.finish();
}

/// Starts `cmd` (a netlink monitor) with its stdout captured.
/// `ip monitor …` or `bridge monitor …` in a namespace, its lines collected as they come.
struct Monitor {
    child: std::process::Child,
    lines: std::sync::Arc<std::sync::Mutex<String>>,
    reader: std::thread::JoinHandle<()>,
}

impl Monitor {
    fn start(ns: &str, tool: &str, args: &[&str]) -> Monitor {
        use std::io::BufRead;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns, tool, "monitor"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a monitor");
        let out = child.stdout.take().expect("piped stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        Monitor { child, lines, reader }
    }

    /// Pokes (a change the monitor must report) until the monitor prints a
    /// line containing `what`: proof that it is subscribed and would print
    /// what follows. The first pokes may come before it subscribed.
    fn proves(&self, what: &str, poke: impl Fn()) -> bool {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            poke();
            if wait_until(Duration::from_millis(100), || self.lines.lock().unwrap().contains(what)).is_some()
            {
                return true;
            }
        }
        false
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
        std::sync::Arc::try_unwrap(self.lines).map(|m| m.into_inner().unwrap()).unwrap_or_default()
    }
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn agent_kill_and_restart_loses_no_packet_and_rewrites_nothing() {
    require_root();
    let _alone = crate::harness::exclusive();
    let lab = TestLab::up(2, 1);
    let target = lab.first_pod_ip("n1");
    let src = netns::named(&format!("{}-n2-p1", lab.name));
    let n1 = lab.node_ns("n1");
    let routes = Monitor::start(&n1, "ip", &["route", "neigh"]);
    let fdb = Monitor::start(&n1, "bridge", &["fdb"]);
    // Both monitors must be seen to see before their silence means anything:
    // a route and an FDB entry on devices of the test's own, then gone.
    ip_in(&n1, &["link", "add", "fprobe", "type", "bridge"]);
    let poke_route = || {
        ip_in(&n1, &["route", "add", "blackhole", "192.0.2.99/32"]);
        ip_in(&n1, &["route", "del", "blackhole", "192.0.2.99/32"]);
    };
    let fdb_entry = ["02:00:5e:00:53:01", "dev", "fprobe", "self", "permanent"];
    let poke_fdb = || {
        bridge_in(&n1, &[&["fdb", "add"][..], &fdb_entry].concat());
        bridge_in(&n1, &[&["fdb", "del"][..], &fdb_entry].concat());
    };
    assert!(routes.proves("192.0.2.99", poke_route), "the route monitor saw nothing");
    assert!(fdb.proves("02:00:5e:00:53:01", poke_fdb), "the FDB monitor saw nothing");
    ip_in(&n1, &["link", "del", "fprobe"]);

    // 20 s at 50 packets per second, across a SIGKILL and restart of n1's agent.
    let pinger = std::thread::spawn(move || {
        netns::run_in(&src, move || {
            probe::ping_series(target, 1000, Duration::from_millis(20), Duration::from_secs(1))
        })
    });
    std::thread::sleep(Duration::from_secs(5));
    let before = lab.kill_and_restart("n1");
    let report = pinger.join().unwrap().unwrap().unwrap();
    // The restarted agent has finished a full pass before the monitors stop.
    lab.wait_for_a_pass("n1");
    let route_events = routes.stop();
    let fdb_events = fdb.stop();

    assert_all_answered(&report);
    // The kernel's own IPv6 link-local routes (DAD finishing) are not the agent's doing.
    let on_vxlan = |s: &str| {
        s.lines()
            .filter(|l| l.contains("felt.1") && !l.contains("proto kernel"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(on_vxlan(&route_events).is_empty(), "the restart rewrote routes/neighbours: {route_events}");
    assert!(on_vxlan(&fdb_events).is_empty(), "the restart rewrote FDB entries: {fdb_events}");
    let after = &lab.log("n1")[before..];
    assert!(!after.contains("programmed"), "the restarted agent programmed something:\n{after}");
    eprintln!(
        "kernel-mode SIGKILL and restart: {}/{} pings answered, 0 netlink writes on felt.1",
        report.received, report.sent
    );
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn deleted_entries_come_back_within_one_resync() {
    require_root();
    let lab = TestLab::up(2, 1);
    let n1 = lab.node_ns("n1");
    let (routes, neigh, fdb) = entries(&lab, "n1");
    let fdb_line = fdb[0].clone();
    let mac = fdb_line.split_whitespace().next().unwrap().to_owned();
    let dst = fdb_line.split_whitespace().nth(2).unwrap().to_owned();
    harness::run(
        Command::new("ip")
            .args(["netns", "exec", &n1, "bridge", "fdb", "del", &mac, "dev", "felt.1", "dst", &dst, "self"]),
    );
    let fdb_back = wait_until(Duration::from_secs(6), || entries(&lab, "n1").2 == fdb);
    assert!(
        fdb_back.is_some(),
        "FDB entry not restored within one resync (5 s): {:?}",
        entries(&lab, "n1").2
    );

    let vtep = neigh[0].split_whitespace().next().unwrap().to_owned();
    ip_in(&n1, &["neigh", "del", &vtep, "dev", "felt.1"]);
    let dst_cidr = routes[0].split_whitespace().next().unwrap().to_owned();
    ip_in(&n1, &["route", "del", &dst_cidr]);
    let back = wait_until(Duration::from_secs(6), || {
        let (r, n, _) = entries(&lab, "n1");
        r == routes && n == neigh
    });
    assert!(back.is_some(), "route/neighbour not restored: {:?}", entries(&lab, "n1"));
    eprintln!(
        "drift repaired: FDB entry back in {:?}, route and neighbour in {:?}",
        fdb_back.unwrap(),
        back.unwrap()
    );
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn bad_records_are_logged_and_ignored() {
    require_root();
    let lab = TestLab::up(3, 1);
    let status = lab.status();
    let n1_ip = status.nodes[0].underlay_ip.to_string();
    let n2_cidr = pod_cidr(&status, "n2");
    let nodes = lab.registry_nodes();
    // Written the way a careful writer does (temp file, rename), so the agent
    // sees each whole: a plain write can be read half-done, a second malformed
    // document that the once-only count below would see (a CI run did).
    let write =
        |name: &str, text: &str| felt::util::write_atomic(&nodes.join(name), text.as_bytes()).unwrap();
    write("garbage.json", "{\"name\": ");
    write(
        "thief.json",
        &format!(
            r#"{{"name":"thief","podCIDRs":["10.244.200.0/24"],"publicIP":"{n1_ip}","backendType":"vxlan","backendData":{{"vni":1,"vtepMAC":"02:00:00:00:00:99"}}}}"#
        ),
    );
    write(
        "overlap.json",
        &format!(
            r#"{{"name":"overlap","podCIDRs":["{n2_cidr}"],"publicIP":"198.18.255.250","backendType":"vxlan","backendData":{{"vni":1,"vtepMAC":"02:00:00:00:00:98"}}}}"#
        ),
    );
    let logged = wait_until(Duration::from_secs(5), || {
        let log = lab.log("n1");
        log.contains("ignoring malformed node document")
            && log.contains("claims our underlay IP")
            && log.contains("overlaps peer n2")
    });
    assert!(logged.is_some(), "n1 did not report the bad records:\n{}", lab.log("n1"));
    for node in ["n1", "n2", "n3"] {
        let (routes, neigh, fdb) = entries(&lab, node);
        assert!(!routes.iter().any(|r| r.starts_with("10.244.200.")), "{node} programmed the thief");
        assert_eq!(neigh.len(), fdb.len(), "{node}");
    }
    let (routes, _, _) = entries(&lab, "n3");
    assert_eq!(routes.len(), 2, "n3 must keep exactly n1 and n2: {routes:?}");
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "{check}");
    // Logged once, not on every resync: wait until n1 has resynced on its
    // timer since (every 5 s in the lab), then count.
    let timer_wakeups = || {
        lab.metric_samples("n1", "felt_wakeups_total")
            .iter()
            .filter(|s| s.labels.get("cause") == Some("timer"))
            .filter_map(crate::harness::sample_value)
            .sum::<f64>()
    };
    let seen = timer_wakeups();
    assert!(wait_until(Duration::from_secs(12), || timer_wakeups() > seen).is_some(), "n1 never resynced");
    assert_eq!(lab.log("n1").matches("ignoring malformed node document").count(), 1);
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn down_is_idempotent_and_up_refuses_a_live_lab() {
    require_root();
    let lab = TestLab::up(1, 1);
    let again = lab.felt_command(&["lab", "up"]).output().unwrap();
    assert!(!again.status.success(), "a second `up` of a live lab must fail");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let first = lab.felt(&["lab", "down"]);
    assert!(first.contains("removed"), "{first}");
    let second = lab.felt(&["lab", "down"]);
    assert!(second.contains("nothing to remove"), "{second}");
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_second_agent_on_a_node_refuses_to_start() {
    require_root();
    let lab = TestLab::up(2, 1);
    let pid = lab.status().nodes[0].pid;
    // The same command line as n1's agent, in n1's namespace.
    let args = felt::process::cmdline(pid).expect("n1's agent runs");
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns("n1")])
        .args(&args)
        .stdout(Stdio::null())
        .output()
        .expect("running a second agent");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a second agent started beside the first: {said}");
    assert!(
        said.contains(&format!("another felt agent (pid {pid}) already runs on this node")),
        "the refusal does not say who holds the node: {said}"
    );
    // The first is untouched: still ready, fabric whole.
    assert_eq!(lab.debug_get("n1", "/readyz").0, 200);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("2/2 pod pairs reachable"), "{check}");
    // Another node's agent is another namespace's: the lock is per node, not per machine.
    assert!(felt::process::cmdline(lab.status().nodes[1].pid).is_some());
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn remove_node_with_another_agent_down_removes_what_it_owns_and_says_who_lags() {
    require_root();
    let lab = TestLab::up(3, 1);
    let status = lab.status();
    let n3 = status.nodes[2].pid;
    let n2_cidr = pod_cidr(&status, "n2");
    // n3's agent dies and stays dead (its data plane stays as it was).
    run(Command::new("kill").args(["-KILL", &n3.to_string()]));
    assert!(wait_until(Duration::from_secs(5), || felt::process::is_zombie_or_gone(n3)).is_some());
    let out = lab.felt(&["lab", "remove-node", "n2"]);
    assert!(
        out.contains("n2 removed (its agent, record, pods and namespaces); not caught up yet: n3 (its agent is not running)"),
        "{out}"
    );
    // What n2 owned is gone...
    let left: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&lab.node_ns("n2")))
        .collect();
    assert!(left.is_empty(), "n2's namespaces are left: {left:?}");
    assert!(!lab.status().nodes.iter().any(|n| n.name == "n2"));
    // ...n1 dropped it, and n3 (down) still holds it, as reported.
    let (n1_routes, _, _) = entries(&lab, "n1");
    assert!(!n1_routes.iter().any(|r| r.starts_with(&n2_cidr)), "n1 still routes to n2: {n1_routes:?}");
    let (n3_routes, _, _) = entries(&lab, "n3");
    assert!(n3_routes.iter().any(|r| r.starts_with(&n2_cidr)), "n3 was down and cannot have dropped n2");
    // Back up, n3 catches up on its own.
    lab.felt(&["lab", "restart-agent", "n3"]);
    let caught_up = wait_until(Duration::from_secs(10), || {
        !entries(&lab, "n3").0.iter().any(|r| r.starts_with(&n2_cidr))
    });
    assert!(caught_up.is_some(), "n3 did not drop n2 after its restart");
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn ctrl_c_during_up_removes_what_was_built() {
    require_root();
    let lab = TestLab::unbuilt(&TestLab::unique_name());
    let up = harness::Talking::spawn(&mut lab.felt_command(&[
        "lab",
        "up",
        "--nodes",
        "8",
        "--pods-per-node",
        "2",
    ]));
    // Interrupt once there is something to roll back: agents running, namespaces made.
    let started = wait_until(Duration::from_secs(30), || up.said().contains("node n2 ("));
    assert!(started.is_some(), "up never started a second node: {}", up.said());
    assert!(lab.namespaces().len() >= 3, "nothing built yet: {:?}", lab.namespaces());
    run(Command::new("kill").args(["-INT", &up.child.id().to_string()]));
    let (status, said) = up.wait();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("SIGINT received; stopping and removing what was built"), "{said}");
    assert!(said.contains("interrupted; what `up` had built is removed"), "{said}");
    assert!(!said.contains("fabric programmed"), "up finished before the signal: {said}");
    assert!(lab.namespaces().is_empty(), "left behind: {:?}", lab.namespaces());
    assert!(lab.felt(&["lab", "down"]).contains("nothing to remove"));
    // No agent, no namespace, the root namespace as it was.
    lab.finish();
}

/// `Kernel::apply` keeps dozens of requests queued ahead of their answers:
/// the kernel must still run them in order (a route set, deleted and set
/// again through another gateway ends through that one; a neighbour deleted
/// before it exists counts as gone) and every answer must come back.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn pipelined_netlink_writes_run_in_order_and_every_one_is_answered() {
    use felt_overlay::kernel::{Kernel, VxlanSpec};
    use felt_overlay::{FdbEntry, Neighbour, Op, Route};
    use felt_proto::MacAddr;
    use std::net::{IpAddr, Ipv4Addr};

    require_root();
    let ns = harness::Netns::new("nl");
    let ip = |args: &[&str]| run(Command::new("ip").args(["-n", &ns.0]).args(args));
    ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul1"]);
    ip(&["addr", "add", "198.18.250.1/24", "dev", "ul0"]);
    ip(&["link", "set", "ul0", "up"]);
    const PEERS: u8 = 200;
    let (applied, failed, ops, routes) = netns::run_in(&netns::named(&ns.0), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let k = Kernel::connect().unwrap();
            let ul = k.link("ul0").await.unwrap().unwrap();
            let spec = VxlanSpec {
                name: "felt.1".into(),
                vni: 1,
                port: 8472,
                local: IpAddr::V4(Ipv4Addr::new(198, 18, 250, 1)),
                underlay_index: ul.index,
                mtu: 1450,
                mac: "02:aa:00:00:00:01".parse().unwrap(),
            };
            let (ifindex, _) =
                k.ensure_device(&spec, Some(Ipv4Addr::new(10, 199, 0, 0)), None).await.unwrap();
            let mut ops = Vec::new();
            for i in 1..=PEERS {
                let mac: MacAddr = format!("02:bb:00:00:00:{i:02x}").parse().unwrap();
                let (first, second) =
                    (IpAddr::V4(Ipv4Addr::new(10, 198, i, 0)), IpAddr::V4(Ipv4Addr::new(10, 197, i, 0)));
                let dst = format!("10.196.{i}.0/24").parse().unwrap();
                ops.extend([
                    Op::DelNeighbour(Neighbour { ip: first, mac }),
                    Op::SetNeighbour(Neighbour { ip: first, mac }),
                    Op::SetNeighbour(Neighbour { ip: second, mac }),
                    Op::SetFdb(FdbEntry { mac, dst: IpAddr::V4(Ipv4Addr::new(198, 18, 251, i)) }),
                    Op::SetRoute(Route { dst, gateway: first }),
                    Op::DelRoute(dst),
                    Op::SetRoute(Route { dst, gateway: second }),
                ]);
            }
            let report = k.apply(ifindex, &ops).await;
            let seen = k.observe(ifindex).await.unwrap();
            let routes: Vec<(String, Option<IpAddr>)> =
                seen.routes.iter().filter(|r| r.ours).map(|r| (r.dst.to_string(), r.gateway)).collect();
            (report.applied, report.failed, ops, routes)
        })
    })
    .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(applied, ops, "every op answered, in order");
    assert_eq!(routes.len(), usize::from(PEERS), "{routes:?}");
    for (dst, gw) in &routes {
        let i = dst.split('.').nth(2).unwrap();
        assert_eq!(gw.map(|g| g.to_string()), Some(format!("10.197.{i}.0")), "{dst} kept an earlier gateway");
    }
}
