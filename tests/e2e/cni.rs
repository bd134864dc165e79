//! The CNI plugin as a runtime drives it: every verb of CNI 1.1 on a real
//! node of a lab, the MTU a pod gets, concurrency, and a plugin killed
//! mid-`ADD` whose leftovers `GC` reclaims.

use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{FELT, TestLab, ip_in, require_root, run};

/// One plugin call: the runtime's environment and stdin.
pub struct Call<'a> {
    pub lab: &'a TestLab,
    pub node: &'a str,
    pub command: &'a str,
    pub container: &'a str,
    pub conf: Value,
    /// `CNI_PATH`: where delegates are found.
    pub cni_path: &'a str,
}

impl Call<'_> {
    fn command(&self) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.lab.node_ns(self.node), FELT, "cni"])
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container)
            .env("CNI_NETNS", felt::netns::named(&pod_ns(self.lab, self.container)))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    pub fn spawn(&self) -> std::process::Child {
        self.spawn_with(|_| {})
    }

    /// Starts the plugin with the runtime's command changed by `edit` first.
    pub fn spawn_with(&self, edit: impl FnOnce(&mut Command)) -> std::process::Child {
        let mut cmd = self.command();
        edit(&mut cmd);
        let mut child = cmd.spawn().expect("spawning felt cni");
        let mut stdin = child.stdin.take().expect("stdin");
        // A child killed before reading makes this fail: that is the point of some tests.
        let _ = stdin.write_all(self.conf.to_string().as_bytes());
        child
    }

    /// Exit success and the JSON printed (Null when nothing was).
    pub fn run(&self) -> (bool, Value) {
        self.run_with(|_| {})
    }

    /// As [`Call::run`], with the runtime's command changed by `edit` first.
    pub fn run_with(&self, edit: impl FnOnce(&mut Command)) -> (bool, Value) {
        let out = self.spawn_with(edit).wait_with_output().expect("felt cni");
        let json = if out.stdout.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!("{} printed no JSON ({e}): {}", self.command, String::from_utf8_lossy(&out.stdout))
            })
        };
        (out.status.success(), json)
    }

    pub fn ok(&self) -> Value {
        let (ok, v) = self.run();
        assert!(ok, "CNI {} for {} failed: {v}", self.command, self.container);
        v
    }

    /// Fails with `code`; returns the error.
    pub fn fails(&self, code: u64) -> Value {
        let (ok, v) = self.run();
        assert!(!ok, "CNI {} for {} should have failed: {v}", self.command, self.container);
        assert_eq!(v["code"], code, "{v}");
        assert!(v["msg"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        v
    }
}

pub fn pod_ns(lab: &TestLab, container: &str) -> String {
    format!("{}-{container}", lab.name)
}

pub fn conf(lab: &TestLab, node: &str, version: &str) -> Value {
    let dir = lab.node_dir(node);
    json!({
        "cniVersion": version,
        "name": "felt",
        "type": "felt",
        "subnetFile": dir.join("subnet.env"),
        "dataDir": dir.join("cni-e2e"),
    })
}

pub fn call<'a>(
    lab: &'a TestLab,
    node: &'a str,
    command: &'a str,
    container: &'a str,
    conf: Value,
) -> Call<'a> {
    Call { lab, node, command, container, conf, cni_path: "/nonexistent" }
}

pub fn new_pod(lab: &TestLab, container: &str) {
    run(Command::new("ip").args(["netns", "add", &pod_ns(lab, container)]));
}

/// Addresses held in the test's store on `node` (temporaries included).
pub fn store_files(lab: &TestLab, node: &str) -> Vec<String> {
    std::fs::read_dir(lab.node_dir(node).join("cni-e2e").join("felt"))
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Links in the node namespace that felt's plugin makes: host ends (`veth…`)
/// and pod ends not yet moved (`p…` of 9 characters).
pub fn plugin_links(lab: &TestLab, node: &str) -> Vec<String> {
    ip_in(&lab.node_ns(node), &["-o", "link", "show"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| n.starts_with("veth") || (n.starts_with('p') && n.len() == 9))
        .collect()
}

pub fn mtu_of(ns: &str, dev: &str) -> u32 {
    let line = ip_in(ns, &["-o", "link", "show", dev]);
    line.split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("no MTU in {line}"))
}

pub fn subnet_mtu(lab: &TestLab, node: &str) -> u32 {
    let text = std::fs::read_to_string(lab.node_dir(node).join("subnet.env")).unwrap();
    felt_proto::SubnetFile::parse(&text).unwrap().mtu
}

/// `ping -M do -s SIZE` from a pod namespace: (success, what it said).
pub fn ping_df(ns: &str, dst: std::net::Ipv4Addr, size: u32) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-M", "do", "-c", "3", "-i", "0.2", "-W", "1", "-s"])
        .arg(size.to_string())
        .arg(dst.to_string())
        .output()
        .expect("ping (iputils-ping) is installed");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), said)
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn pods_get_the_overlay_mtu_on_both_veth_ends() {
    require_root();
    let lab = TestLab::up(2, 1);
    let mtu = subnet_mtu(&lab, "n1");
    assert_eq!(mtu, 1450, "the lab's underlay is 1500: overlay 1450");
    let status = lab.status();
    for pod in &status.pods {
        assert_eq!(mtu_of(&pod.netns, "eth0"), mtu, "pod {} eth0", pod.netns);
    }
    let n1_pod = status.pods.iter().find(|p| p.node == "n1").unwrap().netns.clone();
    let n2_ip = lab.first_pod_ip("n2");
    // A packet of exactly the MTU crosses; one byte more fails at the sender, loudly.
    let (ok, said) = ping_df(&n1_pod, n2_ip, mtu - 28);
    assert!(ok, "-s {} across nodes: {said}", mtu - 28);
    let (ok, said) = ping_df(&n1_pod, n2_ip, mtu - 27);
    assert!(!ok, "-s {} should not fit: {said}", mtu - 27);
    assert!(said.contains("message too long"), "a local error, not silent loss: {said}");
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn every_verb_answers_as_the_spec_says() {
    require_root();
    let lab = TestLab::up(1, 0);
    let c11 = conf(&lab, "n1", "1.1.0");

    // VERSION needs no config.
    let v = call(&lab, "n1", "VERSION", "none", json!({"cniVersion": "1.1.0"})).ok();
    assert!(v["supportedVersions"].as_array().unwrap().contains(&json!("1.1.0")), "{v}");

    // STATUS: not ready without the agent's subnet file, ready with it.
    let mut missing = c11.clone();
    missing["subnetFile"] = json!(lab.node_dir("n1").join("no-such-file"));
    let e = call(&lab, "n1", "STATUS", "none", missing).fails(50);
    assert!(e["msg"].as_str().unwrap().contains("has not written"), "{e}");
    assert_eq!(call(&lab, "n1", "STATUS", "none", c11.clone()).ok(), Value::Null);
    call(&lab, "n1", "STATUS", "none", conf(&lab, "n1", "1.0.0")).fails(1);

    // ADD in 1.1.0: interfaces with MTUs, one address with the gateway, a default route.
    new_pod(&lab, "c1");
    let r = call(&lab, "n1", "ADD", "c1", c11.clone()).ok();
    assert_eq!(r["cniVersion"], "1.1.0");
    let mtu = subnet_mtu(&lab, "n1");
    assert_eq!(r["interfaces"][2]["name"], "eth0", "{r}");
    assert_eq!(r["interfaces"][2]["mtu"], mtu, "{r}");
    assert_eq!(r["ips"][0]["interface"], 2, "{r}");
    assert!(r["ips"][0].get("version").is_none(), "{r}");
    assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0", "{r}");
    assert_eq!(mtu_of(&pod_ns(&lab, "c1"), "eth0"), mtu);
    let host = r["interfaces"][1]["name"].as_str().unwrap().to_owned();
    let detail = ip_in(&lab.node_ns("n1"), &["-d", "link", "show", &host]);
    assert!(detail.contains("hairpin on"), "{detail}");
    let fwd = Command::new("ip")
        .args(["netns", "exec", &lab.node_ns("n1"), "cat", "/proc/sys/net/ipv4/ip_forward"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "1");

    // ADD again for the same attachment gives the same address.
    let again = call(&lab, "n1", "ADD", "c1", c11.clone()).ok();
    assert_eq!(again["ips"][0]["address"], r["ips"][0]["address"]);

    // ADD in 0.3.1: IPs carry their version, interfaces no MTU.
    new_pod(&lab, "c2");
    let old = call(&lab, "n1", "ADD", "c2", conf(&lab, "n1", "0.3.1")).ok();
    assert_eq!(old["cniVersion"], "0.3.1");
    assert_eq!(old["ips"][0]["version"], "4", "{old}");
    assert!(old["interfaces"][2].get("mtu").is_none(), "{old}");

    // CHECK passes what ADD made, with and without prevResult, and names what changed.
    assert_eq!(call(&lab, "n1", "CHECK", "c1", c11.clone()).ok(), Value::Null);
    let mut chained = c11.clone();
    chained["prevResult"] = r.clone();
    call(&lab, "n1", "CHECK", "c1", chained.clone()).ok();
    let mut wrong_prev = c11.clone();
    wrong_prev["prevResult"] = json!({"cniVersion": "1.1.0", "ips": [{"address": "10.99.0.9/24"}]});
    call(&lab, "n1", "CHECK", "c1", wrong_prev).fails(100);
    ip_in(&pod_ns(&lab, "c1"), &["link", "set", "eth0", "mtu", "1500"]);
    let e = call(&lab, "n1", "CHECK", "c1", c11.clone()).fails(100);
    assert!(e["details"].as_str().unwrap().contains("MTU 1500 in the pod"), "{e}");
    call(&lab, "n1", "CHECK", "c2", conf(&lab, "n1", "0.3.1")).fails(1);
    call(&lab, "n1", "CHECK", "nobody", c11.clone()).fails(100);

    // Bad input: the spec's codes, as JSON.
    call(&lab, "n1", "ADD", "c1", json!("not a config")).fails(6);
    call(&lab, "n1", "ADD", "c1", json!({"cniVersion": "9.0.0", "name": "felt"})).fails(1);
    call(&lab, "n1", "ADD", "gone", c11.clone()).fails(3);
    let (ok, v) = call(&lab, "n1", "ADD", "c1", c11.clone()).run_with(|c| {
        c.env_remove("CNI_CONTAINERID");
    });
    assert!(!ok && v["code"] == 4, "{v}");
    call(&lab, "n1", "BOGUS", "c1", c11.clone()).fails(4);

    // GC keeps what the runtime lists and reclaims the rest.
    let mut gc = c11.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "c1", "ifname": "eth0"}]);
    assert_eq!(store_files(&lab, "n1").len(), 2);
    call(&lab, "n1", "GC", "none", gc).ok();
    assert_eq!(store_files(&lab, "n1").len(), 1, "c2's address is freed, c1's kept");
    assert_eq!(plugin_links(&lab, "n1"), [host], "only c1's host end is left");
    call(&lab, "n1", "GC", "none", conf(&lab, "n1", "1.0.0")).fails(1);

    // DEL: idempotent, and without the pod's namespace.
    call(&lab, "n1", "DEL", "c1", c11.clone()).ok();
    call(&lab, "n1", "DEL", "c1", c11.clone()).ok();
    run(Command::new("ip").args(["netns", "delete", &pod_ns(&lab, "c2")]));
    call(&lab, "n1", "DEL", "c2", c11.clone()).ok();
    let mut no_subnet = c11.clone();
    no_subnet["subnetFile"] = json!("/nonexistent/subnet.env");
    call(&lab, "n1", "DEL", "c2", no_subnet).ok();
    assert!(store_files(&lab, "n1").is_empty());
    assert!(plugin_links(&lab, "n1").is_empty(), "{:?}", plugin_links(&lab, "n1"));
    lab.finish();
}

/// Runs every `ADD` at once; each must succeed. Returns the addresses given.
pub fn add_all(calls: Vec<Call<'_>>) -> HashSet<String> {
    let children: Vec<_> = calls.iter().map(Call::spawn).collect();
    let mut addresses = HashSet::new();
    for (call, child) in calls.iter().zip(children) {
        let out = child.wait_with_output().unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(out.status.success(), "ADD {}: {v} {}", call.container, String::from_utf8_lossy(&out.stderr));
        addresses.insert(v["ips"][0]["address"].as_str().unwrap().to_owned());
    }
    addresses
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn fifty_concurrent_adds_get_fifty_addresses() {
    require_root();
    let lab = TestLab::up(1, 0);
    let c = conf(&lab, "n1", "1.1.0");
    let names: Vec<String> = (0..50).map(|i| format!("k{i}")).collect();
    for n in &names {
        new_pod(&lab, n);
    }
    let addresses = add_all(names.iter().map(|n| call(&lab, "n1", "ADD", n, c.clone())).collect());
    assert_eq!(addresses.len(), 50, "{addresses:?}");
    let ports = ip_in(&lab.node_ns("n1"), &["-o", "link", "show", "master", "felt0"]).lines().count();
    assert_eq!(ports, 50);
    let children: Vec<_> = names.iter().map(|n| call(&lab, "n1", "DEL", n, c.clone()).spawn()).collect();
    for child in children {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    assert!(store_files(&lab, "n1").is_empty());
    assert!(plugin_links(&lab, "n1").is_empty());
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_plugin_killed_mid_add_leaves_nothing_gc_does_not_reclaim() {
    require_root();
    let lab = TestLab::up(1, 0);
    let c = conf(&lab, "n1", "1.1.0");
    // How long a whole ADD takes here: kills are spread over that span.
    new_pod(&lab, "t0");
    let start = Instant::now();
    call(&lab, "n1", "ADD", "t0", c.clone()).ok();
    let span = start.elapsed().max(Duration::from_millis(5));
    call(&lab, "n1", "DEL", "t0", c.clone()).ok();

    let rounds = 40u32;
    for i in 0..rounds {
        let name = format!("m{i}");
        new_pod(&lab, &name);
        let mut child = call(&lab, "n1", "ADD", &name, c.clone()).spawn();
        std::thread::sleep(span * i / rounds);
        // `ip netns exec` execs felt in its own process: this kills the plugin.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
    }
    // The kills must have cut some ADDs short, or this test proves nothing.
    let left_files = store_files(&lab, "n1");
    let left_links = plugin_links(&lab, "n1");
    assert!(!left_files.is_empty() || !left_links.is_empty(), "no kill landed mid-ADD");
    eprintln!("killed mid-ADD left {} store files and {} links", left_files.len(), left_links.len());

    let mut gc = c.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    call(&lab, "n1", "GC", "none", gc).ok();
    assert!(store_files(&lab, "n1").is_empty(), "{:?}", store_files(&lab, "n1"));
    assert!(plugin_links(&lab, "n1").is_empty(), "{:?}", plugin_links(&lab, "n1"));
    lab.finish();
}
