//! Delegate mode, tested like native mode: Debian's `bridge` and
//! `host-local` plugins do the interface work with the node's subnet and MTU
//! that felt hands them.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cni::{Call, add_all, call, conf, mtu_of, new_pod, ping_df, plugin_links, pod_ns, subnet_mtu};
use crate::harness::{TestLab, ip_in, require_root, run};

/// Where Debian's containernetworking-plugins puts `bridge` and `host-local`.
const DEBIAN_PLUGINS: &str = "/usr/lib/cni";

fn dconf(lab: &TestLab, node: &str, version: &str) -> Value {
    let mut c = conf(lab, node, version);
    c["delegate"] = json!({});
    c
}

fn dcall<'a>(lab: &'a TestLab, node: &'a str, command: &'a str, container: &'a str, conf: Value) -> Call<'a> {
    assert!(
        std::path::Path::new(DEBIAN_PLUGINS).join("bridge").exists(),
        "Debian's containernetworking-plugins is not installed (.ci/run installs it)"
    );
    Call { cni_path: DEBIAN_PLUGINS, ..call(lab, node, command, container, conf) }
}

/// Addresses host-local holds on `node`.
fn held(lab: &TestLab, node: &str) -> Vec<Ipv4Addr> {
    std::fs::read_dir(lab.node_dir(node).join("cni-e2e").join("host-local").join("felt"))
        .map(|d| d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// Attachments felt keeps delegate configs for on `node`.
fn kept(lab: &TestLab, node: &str) -> usize {
    std::fs::read_dir(lab.node_dir(node).join("cni-e2e").join("delegate").join("felt"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn subnet_of(lab: &TestLab, node: &str) -> ipnet::Ipv4Net {
    let text = std::fs::read_to_string(lab.node_dir(node).join("subnet.env")).unwrap();
    felt_proto::SubnetFile::parse(&text).unwrap().subnet().expect("an IPv4 subnet").trunc()
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn delegate_mode_attaches_like_native_mode() {
    require_root();
    let lab = TestLab::up(2, 0);
    let c11 = dconf(&lab, "n1", "1.1.0");

    // STATUS: ready with the agent's subnet file and the delegate on CNI_PATH.
    assert_eq!(dcall(&lab, "n1", "STATUS", "none", c11.clone()).ok(), Value::Null);
    let e = call(&lab, "n1", "STATUS", "none", c11.clone()).fails(50);
    assert!(e["msg"].as_str().unwrap().contains("delegate plugin bridge is not in CNI_PATH"), "{e}");

    // ADD through bridge + host-local: the node's subnet, its gateway, its MTU.
    new_pod(&lab, "c1");
    let r = dcall(&lab, "n1", "ADD", "c1", c11.clone()).ok();
    assert_eq!(r["cniVersion"], "1.1.0", "reshaped for the runtime's version: {r}");
    let subnet = subnet_of(&lab, "n1");
    let addr: ipnet::Ipv4Net = r["ips"][0]["address"].as_str().unwrap().parse().unwrap();
    assert!(subnet.contains(&addr.addr()) && addr.prefix_len() == subnet.prefix_len(), "{addr} in {subnet}");
    let gateway = subnet.hosts().next().unwrap().to_string();
    assert_eq!(r["ips"][0]["gateway"], gateway, "{r}");
    assert_eq!(r["routes"][0], json!({"dst": "0.0.0.0/0", "gw": gateway}), "{r}");
    let mtu = subnet_mtu(&lab, "n1");
    assert_eq!(mtu_of(&pod_ns(&lab, "c1"), "eth0"), mtu);
    let host = r["interfaces"][1]["name"].as_str().unwrap().to_owned();
    assert_eq!(mtu_of(&lab.node_ns("n1"), &host), mtu);
    let detail = ip_in(&lab.node_ns("n1"), &["-d", "link", "show", &host]);
    assert!(detail.contains("hairpin on") && detail.contains("master felt0"), "{detail}");
    assert_eq!(held(&lab, "n1"), [addr.addr()]);

    // Across nodes, with the MTU exact: one byte more fails at the sender.
    new_pod(&lab, "p2");
    let r2 = dcall(&lab, "n2", "ADD", "p2", dconf(&lab, "n2", "1.1.0")).ok();
    let p2: ipnet::Ipv4Net = r2["ips"][0]["address"].as_str().unwrap().parse().unwrap();
    let (ok, said) = ping_df(&pod_ns(&lab, "c1"), p2.addr(), mtu - 28);
    assert!(ok, "-s {} across nodes: {said}", mtu - 28);
    let (ok, said) = ping_df(&pod_ns(&lab, "c1"), p2.addr(), mtu - 27);
    assert!(!ok && said.contains("message too long"), "{said}");

    // An older runtime gets its own shape.
    new_pod(&lab, "c3");
    let old = dcall(&lab, "n1", "ADD", "c3", dconf(&lab, "n1", "0.3.1")).ok();
    assert_eq!(old["cniVersion"], "0.3.1");
    assert_eq!(old["ips"][0]["version"], "4", "{old}");

    // CHECK: the delegate checks what it made, against the runtime's prevResult.
    let mut chained = c11.clone();
    chained["prevResult"] = r.clone();
    assert_eq!(dcall(&lab, "n1", "CHECK", "c1", chained.clone()).ok(), Value::Null);
    dcall(&lab, "n1", "CHECK", "nobody", chained.clone()).fails(100);
    ip_in(&pod_ns(&lab, "c1"), &["addr", "flush", "dev", "eth0"]);
    let (ok, e) = dcall(&lab, "n1", "CHECK", "c1", chained.clone()).run();
    assert!(!ok && e["msg"].as_str().unwrap().starts_with("bridge CHECK:"), "{e}");

    // GC: c3 is not listed, so its address and interfaces go; c1 stays.
    let mut gc = c11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    assert_eq!(held(&lab, "n1").len(), 2);
    dcall(&lab, "n1", "GC", "none", gc).ok();
    assert_eq!(held(&lab, "n1"), [addr.addr()]);
    assert_eq!(kept(&lab, "n1"), 1);
    assert_eq!(plugin_links(&lab, "n1"), [host], "only c1's host end is left");

    // DEL: idempotent, and without the pod's namespace.
    dcall(&lab, "n1", "DEL", "c1", c11.clone()).ok();
    dcall(&lab, "n1", "DEL", "c1", c11.clone()).ok();
    run(Command::new("ip").args(["netns", "delete", &pod_ns(&lab, "p2")]));
    dcall(&lab, "n2", "DEL", "p2", dconf(&lab, "n2", "1.1.0")).ok();
    for node in ["n1", "n2"] {
        assert!(held(&lab, node).is_empty(), "{node}: {:?}", held(&lab, node));
        assert_eq!(kept(&lab, node), 0);
        assert!(plugin_links(&lab, node).is_empty(), "{node}: {:?}", plugin_links(&lab, node));
    }
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn delegate_mode_survives_concurrency_and_killed_adds() {
    require_root();
    let lab = TestLab::up(1, 0);
    let c = dconf(&lab, "n1", "1.1.0");
    let names: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for n in &names {
        new_pod(&lab, n);
    }
    let addresses = add_all(names.iter().map(|n| dcall(&lab, "n1", "ADD", n, c.clone())).collect());
    assert_eq!(addresses.len(), 20, "{addresses:?}");
    assert_eq!(held(&lab, "n1").len(), 20);

    // felt killed at points across an ADD's span; the runtime then lists none of them.
    let start = Instant::now();
    new_pod(&lab, "t0");
    dcall(&lab, "n1", "ADD", "t0", c.clone()).ok();
    let span = start.elapsed().max(Duration::from_millis(5));
    for i in 0..20u32 {
        let name = format!("m{i}");
        new_pod(&lab, &name);
        let mut child = dcall(&lab, "n1", "ADD", &name, c.clone()).spawn();
        std::thread::sleep(span * i / 20);
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
    }
    // A killed felt leaves its delegate running to the end: let them finish.
    std::thread::sleep(Duration::from_millis(500));
    assert!(held(&lab, "n1").len() > 21, "no killed ADD got as far as an address: this proves nothing");
    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    dcall(&lab, "n1", "GC", "none", gc).ok();
    assert!(held(&lab, "n1").is_empty(), "{:?}", held(&lab, "n1"));
    assert_eq!(kept(&lab, "n1"), 0);
    assert!(plugin_links(&lab, "n1").is_empty(), "{:?}", plugin_links(&lab, "n1"));
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_lab_in_delegate_mode_passes_its_check() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 2, &["--cni-delegate", DEBIAN_PLUGINS]);
    let check = lab.felt(&["lab", "check"]);
    assert!(check.contains("egress: 4/4 pods reach the outside host"), "{check}");
    assert_eq!(check.lines().last(), Some("12/12 pod pairs reachable"), "{check}");
    let status = lab.status();
    for pod in &status.pods {
        assert_eq!(mtu_of(&pod.netns, "eth0"), subnet_mtu(&lab, "n1"), "{pod:?}");
    }
    // The pods' addresses came from host-local, through felt's delegate.
    let lab_store = lab.node_dir("n1").join("cni").join("host-local").join("felt");
    let held: HashSet<String> = std::fs::read_dir(&lab_store)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Ipv4Addr>().ok().map(|a| a.to_string()))
        .collect();
    let on_n1: HashSet<String> =
        status.pods.iter().filter(|p| p.node == "n1").map(|p| p.ip.unwrap().to_string()).collect();
    assert_eq!(held, on_n1);
    lab.finish();
}
