//! felt beside real Flannel: flanneld v0.28.10 and Flannel's CNI plugin,
//! built from `tests/flannel`, on the lab's real control plane. Mixed
//! fabrics, and the switch from flanneld to felt (`--compat flannel`) and
//! back, node by node, with pings running and `ip monitor` / `bridge
//! monitor` watching every kernel object the switch could touch.

use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{TestLab, control_plane_bin, flannel_bin, require_root, wait_until};

fn flannel_lab(nodes: u32, pods: u32, flannel_nodes: u32, mode: &str) -> TestLab {
    let (cp, fl) = (control_plane_bin(), flannel_bin());
    let alone = crate::harness::exclusive();
    let flannel_nodes = flannel_nodes.to_string();
    let mut lab = TestLab::up_named(
        &TestLab::unique_name(),
        nodes,
        pods,
        &[
            "--registry",
            "kube",
            "--control-plane",
            cp.to_str().unwrap(),
            "--flannel",
            fl.to_str().unwrap(),
            "--flannel-nodes",
            &flannel_nodes,
            "--mode",
            mode,
        ],
    );
    lab.hold(alone);
    lab
}

fn nodes_json(lab: &TestLab) -> Value {
    let kubeconfig = lab.lab_dir().join("control-plane").join("local.kubeconfig");
    let out = Command::new(control_plane_bin().join("kubectl"))
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["get", "nodes", "-o", "json"])
        .output()
        .expect("kubectl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn flanneld_and_felt_kernel_and_userspace_nodes_make_one_fabric() {
    require_root();
    // n1, n2 flanneld; n3, n5 felt kernel; n4 felt userspace.
    let lab = flannel_lab(5, 2, 2, "mixed");
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("90/90 pod pairs reachable"), "{check}");
    assert!(check.contains("egress: 10/10 pods"), "{check}");

    // Every node speaks Flannel's annotations, felt's nodes included, and
    // flanneld's parse felt's backend data: its routes to felt's nodes are there.
    let nodes = nodes_json(&lab);
    for node in nodes["items"].as_array().unwrap() {
        let name = node["metadata"]["name"].as_str().unwrap();
        let ann = node["metadata"]["annotations"].as_object().unwrap();
        assert_eq!(ann["flannel.alpha.coreos.com/kube-subnet-manager"], "true", "{name}: {ann:?}");
        assert_eq!(ann["flannel.alpha.coreos.com/backend-type"], "vxlan", "{name}: {ann:?}");
        let data: Value =
            serde_json::from_str(ann["flannel.alpha.coreos.com/backend-data"].as_str().unwrap()).unwrap();
        assert_eq!(data["VNI"], 1, "{name}: {data}");
        assert!(
            !ann.keys().any(|k| k.starts_with("felt.network/")),
            "{name} has felt's own annotations: {ann:?}"
        );
    }
    for n in ["n1", "n2"] {
        let routes = crate::harness::ip_in(&lab.node_ns(n), &["route", "show", "dev", "flannel.1"]);
        assert_eq!(routes.lines().count(), 4, "{n} (flanneld) routes:\n{routes}");
    }
    for n in ["n3", "n5"] {
        let routes = crate::harness::ip_in(&lab.node_ns(n), &["-d", "route", "show", "dev", "flannel.1"]);
        assert_eq!(routes.matches("proto boot").count(), 4, "{n} (felt) routes:\n{routes}");
        let state = lab.debug_state(n);
        assert!(state.ready, "{n}: {state:?}");
    }

    // Nodes join and leave on either side; the others program and drop them
    // (add-node and remove-node time it by netlink notifications in every node).
    for agent in ["felt", "flannel"] {
        let out = lab.felt(&["lab", "add-node", "--agent", agent]);
        assert!(out.contains("programmed on every node"), "{agent}: {out}");
        eprintln!("mixed lab, a {agent} node joins: {}", out.trim());
    }
    for node in ["n1", "n3"] {
        let out = lab.felt(&["lab", "remove-node", node]);
        assert!(out.contains("every node had dropped it"), "{node}: {out}");
        eprintln!("mixed lab, {node} leaves: {}", out.trim());
    }
    // A felt node's new address (public-ip-overwrite, republished as its
    // public-ip) reaches every node, flanneld's included.
    let out = lab.felt(&["lab", "propagation", "--changes", "20"]);
    eprintln!("mixed lab, address changes: {}", out.trim());
    assert!(out.contains("20 changes: p50"), "{out}");
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("90/90 pod pairs reachable"), "after joins and leaves: {check}");
    lab.finish();
}

/// `ip -ts monitor` and `bridge -ts monitor fdb` inside a node, until dropped.
struct Monitor {
    children: Vec<Child>,
    files: Vec<std::path::PathBuf>,
}

impl Monitor {
    fn start(lab: &TestLab, node: &str, tag: &str) -> Monitor {
        let ns = lab.node_ns(node);
        let mut children = Vec::new();
        let mut files = Vec::new();
        for (tool, args) in [
            ("ip", &["-ts", "monitor", "route", "neigh", "link", "address"][..]),
            ("bridge", &["-ts", "monitor", "fdb"][..]),
        ] {
            let file = lab.node_dir(node).join(format!("monitor-{tag}-{tool}.txt"));
            let out = std::fs::File::create(&file).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &ns, tool])
                .args(args)
                .stdout(out)
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            children.push(child);
            files.push(file);
        }
        // Let both subscribe before anything happens.
        std::thread::sleep(Duration::from_millis(300));
        Monitor { children, files }
    }

    /// Every event about the VXLAN device (Flannel's or felt's) or through it, but the kernel's
    /// own IPv6 link-local address (its duplicate address detection ends
    /// seconds after flanneld brought the device up, whoever runs then).
    fn stop(mut self) -> Vec<String> {
        std::thread::sleep(Duration::from_millis(300));
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.files
            .iter()
            .flat_map(|f| std::fs::read_to_string(f).unwrap().lines().map(str::to_owned).collect::<Vec<_>>())
            .filter(|l| (l.contains("flannel.1") || l.contains("felt.1")) && !l.contains(" fe80::"))
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Pings at 100 per second, for `count`, from every pod to every pod on
/// `node` and from `node`'s pods to every other pod. Returns (sent, lost).
fn pings_around(lab: &TestLab, node: &str, count: u16) -> std::thread::JoinHandle<(u32, u32)> {
    let status = lab.status();
    let pods: Vec<(String, String, Ipv4Addr)> =
        status.pods.iter().map(|p| (p.netns.clone(), p.node.clone(), p.ip.unwrap())).collect();
    let node = node.to_owned();
    std::thread::spawn(move || {
        let mut flows = Vec::new();
        for (src_ns, src_node, _) in &pods {
            for (_, dst_node, dst) in &pods {
                if src_node != dst_node && (*src_node == node || *dst_node == node) {
                    let (ns, dst) = (felt::netns::named(src_ns), *dst);
                    flows.push(std::thread::spawn(move || {
                        felt::netns::run_in(&ns, move || {
                            felt::lab::probe::ping_series(
                                dst,
                                count,
                                Duration::from_millis(10),
                                Duration::from_secs(1),
                            )
                        })
                        .unwrap()
                        .unwrap()
                    }));
                }
            }
        }
        flows
            .into_iter()
            .map(|f| f.join().unwrap())
            .fold((0, 0), |(s, l), r| (s + r.sent, l + r.sent - r.received))
    })
}

fn switch(lab: &TestLab, node: &str, to: &str) -> (u32, u32, Vec<String>) {
    let monitor = Monitor::start(lab, node, to);
    let pings = pings_around(lab, node, 500);
    std::thread::sleep(Duration::from_secs(1));
    let said = lab.felt(&["lab", "switch-agent", node, "--to", to]);
    assert!(said.contains(&format!("{node} now runs")), "{said}");
    if to.starts_with("felt") {
        let ready = wait_until(Duration::from_secs(20), || {
            lab.try_debug_get(node, "/readyz").is_some_and(|(c, _)| c == 200)
        });
        assert!(ready.is_some(), "{node}: felt not ready\n{}", lab.log(node));
    }
    let (sent, lost) = pings.join().unwrap();
    (sent, lost, monitor.stop())
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn every_flanneld_node_switches_to_felt_and_back_without_losing_a_packet() {
    require_root();
    let lab = flannel_lab(3, 1, 3, "kernel");
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "flanneld alone: {check}");

    // The monitors see a write when there is one: felt repairs a neighbour
    // deleted by hand on a node it runs, and both tools report it.
    for node in ["n1", "n2", "n3"] {
        let (sent, lost, events) = switch(&lab, node, "felt");
        eprintln!(
            "{node} flanneld → felt: {lost} of {sent} pings lost; {} netlink events on flannel.1",
            events.len()
        );
        assert_eq!(lost, 0, "{node}: pings lost switching to felt");
        assert!(events.is_empty(), "{node}: the switch rewrote kernel objects:\n{}", events.join("\n"));
        if node == "n1" {
            let monitor = Monitor::start(&lab, node, "proof");
            let neigh = crate::harness::ip_in(
                &lab.node_ns(node),
                &["neigh", "show", "dev", "flannel.1", "nud", "permanent"],
            );
            let ip = neigh.split_whitespace().next().expect("a permanent neighbour on flannel.1").to_owned();
            crate::harness::ip_in(&lab.node_ns(node), &["neigh", "del", &ip, "dev", "flannel.1"]);
            let repaired = wait_until(Duration::from_secs(10), || {
                crate::harness::ip_in(&lab.node_ns(node), &["neigh", "show", &ip, "dev", "flannel.1"])
                    .contains("PERMANENT")
            });
            let events = monitor.stop();
            assert!(repaired.is_some(), "felt did not repair the neighbour");
            assert!(
                events.iter().filter(|e| e.contains(&ip)).count() >= 2,
                "the monitor missed a delete and an add: {events:?}"
            );
        }
    }
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "felt alone: {check}");

    // The way back, for a node whose switch went wrong: flanneld adopts the
    // device and entries felt kept, as it does its own after a restart.
    let (sent, lost, events) = switch(&lab, "n2", "flannel");
    eprintln!(
        "n2 felt → flanneld: {lost} of {sent} pings lost; {} netlink events on flannel.1",
        events.len()
    );
    assert_eq!(lost, 0, "n2: pings lost switching back to flanneld");
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "after the way back: {check}");
    let (_, lost, _) = switch(&lab, "n2", "felt");
    assert_eq!(lost, 0, "n2: pings lost switching to felt again");

    // The way out of compat mode, node by node: flannel.1 becomes felt.1,
    // renamed in place with its MAC, so no peer reprograms; its routes are
    // retagged proto 76 by replacement; Flannel's annotations stay true for
    // the nodes still in compat mode.
    let mut lost_total = 0;
    for node in ["n1", "n2", "n3"] {
        let (sent, lost, events) = switch(&lab, node, "felt-own");
        eprintln!(
            "{node} compat → felt's own conventions: {lost} of {sent} pings lost; {} netlink events:\n  {}",
            events.len(),
            events.join("\n  ")
        );
        // Renamed in place (Linux 6.x): nothing removed, the routes retagged in place.
        assert_eq!(lost, 0, "{node}: pings lost leaving compat mode");
        assert!(!events.iter().any(|e| e.contains("Deleted")), "{node}: {events:?}");
        lost_total += lost;
        let links = crate::harness::ip_in(&lab.node_ns(node), &["-o", "link", "show"]);
        assert!(links.contains(" felt.1:") && !links.contains(" flannel.1:"), "{node}: {links}");
        let check = lab.felt(&["lab", "check"]);
        assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "{node} out of compat: {check}");
    }
    eprintln!("leaving compat mode: {lost_total} pings lost over three nodes");
    let nodes = nodes_json(&lab);
    for node in nodes["items"].as_array().unwrap() {
        let ann = node["metadata"]["annotations"].as_object().unwrap();
        let felt: Value = serde_json::from_str(ann["felt.network/backend-data"].as_str().unwrap()).unwrap();
        let flannel: Value =
            serde_json::from_str(ann["flannel.alpha.coreos.com/backend-data"].as_str().unwrap()).unwrap();
        assert_eq!(felt["vtepMAC"], flannel["VtepMAC"], "the MAC was kept: {ann:?}");
    }
    lab.finish();
}
