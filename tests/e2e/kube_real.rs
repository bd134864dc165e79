//! The lab on a real control plane: etcd and kube-apiserver built from the
//! pinned Go module `tests/k8s`, started by `felt lab up --registry kube`
//! inside the lab, with the agents running as the `felt` ServiceAccount of
//! `deploy/felt.yaml`.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::harness::{TestLab, control_plane_bin, require_root};

fn real_lab(nodes: u32, pods: u32) -> TestLab {
    real_lab_with(nodes, pods, &[])
}

fn real_lab_with(nodes: u32, pods: u32, extra: &[&str]) -> TestLab {
    let bin = control_plane_bin();
    let bin = bin.to_str().unwrap();
    let alone = crate::harness::exclusive();
    let mut args = vec!["--registry", "kube", "--control-plane", bin];
    args.extend_from_slice(extra);
    let mut lab = TestLab::up_named(&TestLab::unique_name(), nodes, pods, &args);
    lab.hold(alone);
    lab
}

/// An IPv6-only cluster on the real control plane: Nodes whose
/// `spec.podCIDRs` holds one IPv6 CIDR, agents that lease it, publish it and
/// program it, pods that reach each other over IPv6 alone.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn an_ipv6_only_cluster_leases_its_pod_cidrs_from_the_api_server() {
    require_root();
    let lab = real_lab_with(3, 1, &["--ip-family", "ipv6"]);
    let check = lab.felt(&["lab", "check"]);
    assert!(check.contains("by family: ipv4 0/0, ipv6 6/6\n"), "{check}");
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "{check}");
    let (ok, out, err) = kubectl(&lab, &["get", "node", "n1", "-o", "jsonpath={.spec.podCIDRs}"]);
    assert!(ok, "{err}");
    let cidrs: Vec<String> = serde_json::from_str(&out).unwrap();
    assert_eq!(cidrs.len(), 1, "{cidrs:?}");
    let state = lab.debug_state("n1");
    let lease = state.lease.expect("a lease");
    assert_eq!(lease.pod_cidr, None);
    assert_eq!(lease.pod_cidr6.map(|c| c.to_string()), Some(cidrs[0].clone()), "the Node's spec, leased");
    assert_eq!(state.peers.len(), 2);
    assert!(
        state.peers.iter().all(|p| p.pod_cidr6.is_some() && p.in_sync == Some(true)),
        "{:?}",
        state.peers
    );
    lab.finish();
}

/// `kubectl` as the lab's admin, from the host: the lab's loopback proxy
/// carries it into the lab's underlay namespace.
fn kubectl(lab: &TestLab, args: &[&str]) -> (bool, String, String) {
    let kubeconfig = lab.lab_dir().join("control-plane").join("local.kubeconfig");
    let out =
        // The kubectl of the server's release, built with it (the machine's may be too old).
        Command::new(control_plane_bin().join("kubectl")).arg("--kubeconfig").arg(&kubeconfig).args(args).output().expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit log's events of `user`, as JSON.
fn audit_of(lab: &TestLab, user: &str) -> Vec<Value> {
    let log = std::fs::read_to_string(lab.lab_dir().join("control-plane").join("audit.log")).unwrap();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user)
        .collect()
}

const AGENT: &str = "system:serviceaccount:kube-system:felt";

/// The agents' reads of every FeltNode: (lists, watches that streamed a list
/// with `sendInitialEvents=true`, those refused), each counted once.
fn feltnode_reads(lab: &TestLab) -> (usize, usize, usize) {
    let events = audit_of(lab, AGENT);
    let of = |e: &&Value| e["objectRef"]["resource"] == "feltnodes" && e["objectRef"]["name"].is_null();
    let streams = |e: &&Value| {
        e["verb"] == "watch" && e["requestURI"].as_str().is_some_and(|u| u.contains("sendInitialEvents=true"))
    };
    let lists = events.iter().filter(of).filter(|e| e["verb"] == "list").count();
    let streamed =
        events.iter().filter(of).filter(streams).filter(|e| e["stage"] == "ResponseStarted").count();
    let refused = events
        .iter()
        .filter(of)
        .filter(streams)
        .filter(|e| e["stage"] == "ResponseComplete" && e["responseStatus"]["code"].as_u64() >= Some(400))
        .count();
    (lists, streamed, refused)
}

/// The audit log's events of `user`: (verb, resource[/subresource], decision).
fn requests_of(lab: &TestLab, user: &str) -> Vec<(String, String, String)> {
    audit_of(lab, user)
        .into_iter()
        .map(|e| {
            let r = &e["objectRef"];
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or("")),
                None => r["resource"].as_str().unwrap_or("").to_owned(),
            };
            let decision =
                e["annotations"]["authorization.k8s.io/decision"].as_str().unwrap_or("").to_owned();
            (e["verb"].as_str().unwrap_or("").to_owned(), resource, decision)
        })
        .collect()
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_real_control_plane_carries_the_lab_with_deploys_rbac_and_no_more() {
    require_root();
    let lab = real_lab(3, 1);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "{check}");

    // kubectl's view: felt's annotations and the NetworkUnavailable condition.
    let (ok, nodes, err) = kubectl(&lab, &["get", "nodes", "-o", "json"]);
    assert!(ok, "{err}");
    let nodes: Value = serde_json::from_str(&nodes).unwrap();
    let status = lab.status();
    for n in &status.nodes {
        let name = n.name.as_str();
        let node = nodes["items"].as_array().unwrap().iter().find(|x| x["metadata"]["name"] == name).unwrap();
        let ann = &node["metadata"]["annotations"];
        assert_eq!(ann["felt.network/backend-type"], "vxlan", "{name}: {ann}");
        assert_eq!(ann["felt.network/public-ip"], n.underlay_ip.to_string(), "{name}: {ann}");
        let nu = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .unwrap_or_else(|| panic!("{name} has no NetworkUnavailable condition"));
        assert_eq!(
            (nu["status"].as_str(), nu["reason"].as_str()),
            (Some("False"), Some("FeltIsUp")),
            "{name}"
        );
    }
    // Selectors select (felt-test-apiserver returned every node for these).
    let (_, out, err) = kubectl(&lab, &["get", "nodes", "-l", "no=such", "-o", "name"]);
    assert_eq!(out.trim(), "", "{err}");
    let (_, out, _) = kubectl(&lab, &["get", "nodes", "--field-selector", "metadata.name=zzz", "-o", "name"]);
    assert_eq!(out.trim(), "");
    let (_, out, _) = kubectl(&lab, &["get", "nodes", "--field-selector", "metadata.name=n2", "-o", "name"]);
    assert_eq!(out.trim(), "node/n2");

    // Least privilege: every request the agents made was allowed, under the
    // felt ServiceAccount, and the ClusterRole grants nothing they never used.
    let requests = requests_of(&lab, AGENT);
    assert!(requests.len() >= 6, "the agents' requests are in the audit log: {requests:?}");
    let denied: Vec<_> = requests.iter().filter(|(_, _, d)| d != "allow").collect();
    assert!(denied.is_empty(), "denied: {denied:?}");
    let mut used: BTreeSet<(String, String)> =
        requests.iter().map(|(v, r, _)| (v.clone(), r.clone())).collect();
    // A server-side apply that creates is audited as `patch` and needs `create` too.
    assert!(used.contains(&("patch".into(), "feltnodes".into())), "no FeltNode applied: {used:?}");
    used.insert(("create".into(), "feltnodes".into()));
    // The agents stream their FeltNode list (a watch); they list FeltNodes
    // only on a server that refuses that (see the WatchList test below).
    let (lists, streamed, refused) = feltnode_reads(&lab);
    assert_eq!((lists, refused), (0, 0), "{used:?}");
    assert!(streamed >= 3, "{streamed} streamed lists");
    used.insert(("list".into(), "feltnodes".into()));
    let (ok, role, err) = kubectl(&lab, &["get", "clusterrole", "felt", "-o", "json"]);
    assert!(ok, "{err}");
    let role: Value = serde_json::from_str(&role).unwrap();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for r in rule["resources"].as_array().unwrap() {
            for v in rule["verbs"].as_array().unwrap() {
                granted.insert((v.as_str().unwrap().to_owned(), r.as_str().unwrap().to_owned()));
            }
        }
    }
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?} (used: {used:?})");
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(ungranted.is_empty(), "used without a grant: {ungranted:?}");
    let proxy: u32 = std::fs::read_to_string(lab.lab_dir().join("control-plane").join("proxy.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{proxy}")).exists(), "the loopback proxy runs");
    lab.finish();
    let gone = crate::harness::wait_until(std::time::Duration::from_secs(5), || {
        felt::process::is_zombie_or_gone(proxy)
    });
    assert!(gone.is_some(), "lab down left the loopback proxy running");
}

/// The pid of the process named `comm` in the lab's underlay namespace.
fn control_pid(lab: &TestLab, comm: &str) -> u32 {
    use felt::process;
    let ul = felt::netns::named(&format!("{}-ul", lab.name));
    process::pids()
        .find(|pid| process::comm(*pid).as_deref() == Some(comm) && process::in_netns(*pid, &ul))
        .unwrap_or_else(|| panic!("no {comm} in {}-ul", lab.name))
}

fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig).unwrap();
}

fn readyz(lab: &TestLab, node: &str) -> u16 {
    lab.try_debug_get(node, "/readyz").map_or(0, |(c, _)| c)
}

fn writes(lab: &TestLab, nodes: &[&str]) -> f64 {
    nodes
        .iter()
        .flat_map(|n| lab.metric_samples(n, "felt_dataplane_ops_total"))
        .filter_map(|s| crate::harness::sample_value(&s))
        .sum()
}

/// Pings from n2's pod to n1's pod at 50 per second for `seconds`, in the background.
fn pinger(lab: &TestLab, seconds: u16) -> std::thread::JoinHandle<felt::lab::probe::SeriesReport> {
    let target = lab.first_pod_ip("n1");
    let src = felt::netns::named(&format!("{}-n2-p1", lab.name));
    std::thread::spawn(move || {
        felt::netns::run_in(&src, move || {
            felt::lab::probe::ping_series(
                target,
                seconds * 50,
                std::time::Duration::from_millis(20),
                std::time::Duration::from_secs(1),
            )
        })
        .unwrap()
        .unwrap()
    })
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_frozen_api_server_or_etcd_turns_readiness_false_and_traffic_flows() {
    use nix::sys::signal::Signal;
    use std::time::{Duration, Instant};
    require_root();
    let lab = real_lab(2, 1);
    let nodes = ["n1", "n2"];
    let all = |code: u16| nodes.iter().all(|n| readyz(&lab, n) == code);
    assert!(crate::harness::wait_until(Duration::from_secs(10), || all(200)).is_some());
    let before = writes(&lab, &nodes);
    let pings = pinger(&lab, 100);

    // kube-apiserver frozen: readiness false within the documented bound (15 s), then back.
    let api = control_pid(&lab, "kube-apiserver");
    signal(api, Signal::SIGSTOP);
    let frozen = Instant::now();
    let noticed = crate::harness::wait_until(Duration::from_secs(25), || all(503));
    signal(api, Signal::SIGCONT);
    let noticed = noticed.unwrap_or_else(|| panic!("readiness stayed true with a frozen API server"));
    eprintln!("frozen kube-apiserver: both nodes not ready {:?} after SIGSTOP", frozen.elapsed());
    // 10 s between probes + 5 s for the answer, then one reconcile pass.
    assert!(noticed <= Duration::from_secs(20), "noticed after {noticed:?}");
    assert!(
        crate::harness::wait_until(Duration::from_secs(30), || all(200)).is_some(),
        "not ready after thaw"
    );

    // etcd stopped for 60 s: the server answers errors or nothing; readiness false, then back.
    let etcd = control_pid(&lab, "etcd");
    signal(etcd, Signal::SIGSTOP);
    let stopped = Instant::now();
    let noticed = crate::harness::wait_until(Duration::from_secs(25), || all(503));
    std::thread::sleep(Duration::from_secs(60).saturating_sub(stopped.elapsed()));
    signal(etcd, Signal::SIGCONT);
    assert!(noticed.is_some(), "readiness stayed true with etcd stopped");
    let back = crate::harness::wait_until(Duration::from_secs(60), || all(200));
    assert!(back.is_some(), "not ready after etcd came back");
    eprintln!(
        "etcd stopped 60 s: not ready after {:?}, ready again {:?} after SIGCONT",
        noticed.unwrap(),
        back.unwrap()
    );

    let report = pings.join().unwrap();
    assert_eq!(report.received, report.sent, "lost {} pings", report.sent - report.received);
    assert_eq!(writes(&lab, &nodes), before, "the outages caused data-plane writes");
    lab.finish();
}

/// One JSON request to etcd's HTTP gateway (loopback inside the lab's underlay namespace).
fn etcd(lab: &TestLab, path: &str, body: &Value) -> Value {
    let (path, body) = (path.to_owned(), body.to_string().into_bytes());
    let (status, reply) = felt::netns::run_in(&felt::netns::named(&format!("{}-ul", lab.name)), move || {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], 2379));
        let body = Some(("application/json", body));
        felt::http::request(addr, hyper::Method::POST, &path, body, std::time::Duration::from_secs(10))
    })
    .unwrap()
    .unwrap_or_else(|e| panic!("etcd answers: {}", felt::util::error_chain(&e)));
    serde_json::from_slice(&reply).unwrap_or_else(|e| panic!("etcd said {status} {reply:?}: {e}"))
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn after_compaction_a_restarted_api_server_makes_agents_relist_and_write_nothing() {
    use std::time::Duration;
    require_root();
    let lab = real_lab(3, 0);
    let nodes = ["n1", "n2", "n3"];
    let all_ready = || nodes.iter().all(|n| readyz(&lab, n) == 200);
    assert!(crate::harness::wait_until(Duration::from_secs(10), all_ready).is_some());
    let before = writes(&lab, &nodes);
    // Listed, or streamed as a watch's first events.
    let lists = || {
        let (lists, streamed, _) = feltnode_reads(&lab);
        lists + streamed
    };
    let lists_before = lists();

    // History gone: etcd compacted to its newest revision (kube-apiserver
    // asks for this every 5 minutes in a cluster).
    let rev =
        etcd(&lab, "/v3/kv/range", &serde_json::json!({"key": "AA==", "limit": 1}))["header"]["revision"]
            .as_str()
            .unwrap()
            .to_owned();
    let compacted = etcd(&lab, "/v3/kv/compaction", &serde_json::json!({"revision": rev, "physical": true}));
    assert!(compacted.get("header").is_some(), "{compacted}");

    let mut restarted = restart_api_server(&lab, &[]);

    // Every agent lists FeltNodes again (its watch broke), writes nothing, and is ready.
    let relisted =
        crate::harness::wait_until(Duration::from_secs(60), || lists() >= lists_before + 3 && all_ready());
    assert!(
        relisted.is_some(),
        "lists {} → {}, ready {:?}",
        lists_before,
        lists(),
        nodes.map(|n| readyz(&lab, n))
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(writes(&lab, &nodes), before, "the restart caused data-plane writes");
    // Their resumed watches were too old for the new server's cache: 410, then a list.
    let expired =
        nodes.iter().filter(|n| lab.log(n).contains("FeltNode watch expired; listing again")).count();
    eprintln!("{expired} of 3 agents saw 410 Gone on resuming their watch");
    assert!(expired >= 1, "no agent resumed its watch into a 410");
    lab.finish();
    // `lab down` stopped it with the rest of the lab's namespace.
    let _ = restarted.wait();
}

/// Stops the lab's kube-apiserver as the kubelet stops a static pod
/// (SIGTERM; SIGKILL after a grace period: its graceful shutdown waits for
/// watches that never end) and starts it again with the same flags and
/// `extra`. `lab down` stops the new one with the rest of the namespace.
fn restart_api_server(lab: &TestLab, extra: &[&str]) -> std::process::Child {
    use std::time::Duration;
    let pid = control_pid(lab, "kube-apiserver");
    let cmdline = felt::process::cmdline(pid).expect("kube-apiserver runs");
    let gone = || felt::process::is_zombie_or_gone(pid);
    signal(pid, nix::sys::signal::Signal::SIGTERM);
    if crate::harness::wait_until(Duration::from_secs(10), gone).is_none() {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
    assert!(
        crate::harness::wait_until(Duration::from_secs(10), gone).is_some(),
        "kube-apiserver did not stop"
    );
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.lab_dir().join("control-plane").join("kube-apiserver.log"))
        .unwrap();
    Command::new("ip")
        .args(["netns", "exec", &format!("{}-ul", lab.name)])
        .args(&cmdline)
        .args(extra)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("restarting kube-apiserver")
}

/// An API server without WatchList (Kubernetes 1.33 ships it off) refuses
/// a watch that streams its list: agents, running or starting, list
/// FeltNodes instead, keep their peers and write nothing for it.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn without_watchlist_agents_list_feltnodes_instead_and_keep_their_peers() {
    use std::time::Duration;

    use crate::harness::wait_until;
    require_root();
    let lab = real_lab(2, 0);
    let nodes = ["n1", "n2"];
    let on_feltnodes =
        |n: &str| readyz(&lab, n) == 200 && lab.debug_state(n).peer_source.as_deref() == Some("feltnodes");
    assert!(wait_until(Duration::from_secs(20), || nodes.iter().all(|n| on_feltnodes(n))).is_some());
    let (lists, streamed, refused) = feltnode_reads(&lab);
    assert_eq!((lists, refused), (0, 0), "with WatchList on, nothing is listed ({streamed} streamed)");
    let fallback = "cannot stream its list";
    assert!(!lab.log("n2").contains(fallback), "{}", lab.log("n2"));
    let peers = |n: &str| crate::harness::ip_in(&lab.node_ns(n), &["route", "show", "dev", "felt.1"]);
    let n2_before = peers("n2");
    assert_eq!(n2_before.lines().count(), 1, "{n2_before}");
    let n2_writes = writes(&lab, &["n2"]);

    let mut restarted = restart_api_server(&lab, &["--feature-gates=WatchList=false"]);
    // n2's watch broke with the old server and resumes (or, history gone,
    // is refused a streamed list and lists).
    let n2_back = wait_until(Duration::from_secs(60), || on_feltnodes("n2"));
    assert!(n2_back.is_some(), "{}", lab.log("n2"));
    // n1 starts against it.
    let from = lab.kill_and_restart("n1");
    let n1_fell_back = wait_until(Duration::from_secs(30), || {
        lab.log("n1")[from..].contains(fallback) && on_feltnodes("n1")
    });
    assert!(n1_fell_back.is_some(), "{}", &lab.log("n1")[from..]);
    let (lists, _, refused) = feltnode_reads(&lab);
    assert!(refused >= 1, "the server refused {refused} streamed lists");
    assert!(lists >= 1, "{lists} lists");
    assert_eq!(peers("n1").lines().count(), 1, "{}", peers("n1"));
    assert_eq!(peers("n2"), n2_before);
    assert_eq!(writes(&lab, &["n2"]), n2_writes, "the relist caused data-plane writes on n2");
    lab.finish();
    let _ = restarted.wait();
}

fn node_json(lab: &TestLab, name: &str) -> Value {
    let (ok, out, err) = kubectl(lab, &["get", "node", name, "-o", "json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

fn fdb(lab: &TestLab, node: &str) -> String {
    crate::harness::bridge_in(&lab.node_ns(node), &["fdb", "show", "dev", "felt.1"])
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn kubectl_delete_and_add_node_reach_every_peer_within_a_second() {
    use std::time::{Duration, Instant};
    require_root();
    let lab = real_lab(3, 0);
    let n2_mac = lab.status().nodes[1].vtep_mac.expect("n2 published its VTEP").to_string();
    let deleted = Instant::now();
    let (ok, _, err) = kubectl(&lab, &["delete", "node", "n2"]);
    assert!(ok, "{err}");
    for node in ["n1", "n3"] {
        let left = Duration::from_secs(1).saturating_sub(deleted.elapsed());
        let gone = crate::harness::wait_until(left, || !fdb(&lab, node).contains(&n2_mac));
        assert!(
            gone.is_some(),
            "{node} still has n2 {n2_mac} after {:?}:\n{}",
            deleted.elapsed(),
            fdb(&lab, node)
        );
        let routes = crate::harness::ip_in(&lab.node_ns(node), &["route", "show", "dev", "felt.1"]);
        assert_eq!(routes.lines().count(), 1, "{node}: {routes}");
    }
    let out = lab.felt(&["lab", "add-node"]);
    let ms: u64 = out
        .split(" ms")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(ms < 1000, "the new node reached every peer in {ms} ms: {out}");
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn public_ip_overwrite_moves_peers_fdb_and_labels_stay_the_operators() {
    use std::time::Duration;
    require_root();
    let lab = real_lab(2, 0);
    let underlay = felt::lab::underlay_subnet(&lab.name);
    let new_ip = std::net::Ipv4Addr::from(u32::from(underlay.network()) + 99);
    let (ok, _, err) =
        kubectl(&lab, &["annotate", "node", "n2", &format!("felt.network/public-ip-overwrite={new_ip}")]);
    assert!(ok, "{err}");
    let moved = crate::harness::wait_until(Duration::from_secs(3), || {
        fdb(&lab, "n1").contains(&format!("dst {new_ip} "))
    });
    assert!(moved.is_some(), "n1's FDB did not follow the overwrite:\n{}", fdb(&lab, "n1"));
    assert_eq!(
        fdb(&lab, "n1").lines().filter(|l| l.contains(" dst ")).count(),
        1,
        "exactly one remote for n2"
    );
    let republished = crate::harness::wait_until(Duration::from_secs(3), || {
        node_json(&lab, "n2")["metadata"]["annotations"]["felt.network/public-ip"] == new_ip.to_string()
    });
    assert!(republished.is_some(), "n2 did not publish the overwrite as its public-ip");
    // An operator's label survives felt's own patches.
    let (ok, _, err) = kubectl(&lab, &["label", "node", "n1", "felt-test=yes"]);
    assert!(ok, "{err}");
    lab.felt(&["lab", "restart-agent", "n1"]);
    assert!(crate::harness::wait_until(Duration::from_secs(10), || readyz(&lab, "n1") == 200).is_some());
    assert_eq!(node_json(&lab, "n1")["metadata"]["labels"]["felt-test"], "yes");
    lab.finish();
}

/// Runs `job` with an admin client of the lab's API server, inside the lab.
fn with_admin<T: Send + 'static, Fut>(
    lab: &TestLab,
    job: impl FnOnce(kube::Client) -> Fut + Send + 'static,
) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let kubeconfig = lab.lab_dir().join("control-plane").join("admin.kubeconfig");
    felt::netns::block_on_in(&felt::netns::named(&format!("{}-ul", lab.name)), move || async move {
        job(felt::registry::kube::client(Some(&kubeconfig)).await.expect("admin client")).await
    })
    .expect("entering the underlay namespace")
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn node_heartbeats_cause_no_work() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use std::time::{Duration, Instant};
    require_root();
    let lab = real_lab(2, 0);
    let underlay = felt::lab::underlay_subnet(&lab.name);
    // 50 more nodes: published peers without agents, as a busy cluster has.
    with_admin(&lab, move |c| async move {
        let api: Api<Node> = Api::all(c);
        for i in 0..50u32 {
            let ip = std::net::Ipv4Addr::from(u32::from(underlay.network()) + 100 + i);
            let node: Node = serde_json::from_value(serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": format!("hb{i}"), "annotations": {
                    "felt.network/backend-type": "vxlan",
                    "felt.network/backend-data": format!(r#"{{"vni":1,"vtepMAC":"02:fe:00:00:00:{i:02x}"}}"#),
                    "felt.network/public-ip": ip.to_string()}},
                "spec": {"podCIDR": format!("10.244.{}.0/24", 100 + i), "podCIDRs": [format!("10.244.{}.0/24", 100 + i)]}}))
            .unwrap();
            api.create(&PostParams::default(), &node).await.expect("creating a node");
        }
    });
    for node in ["n1", "n2"] {
        let programmed = crate::harness::wait_until(Duration::from_secs(10), || {
            crate::harness::ip_in(&lab.node_ns(node), &["route", "show", "dev", "felt.1"]).lines().count()
                == 51
        });
        assert!(programmed.is_some(), "{node} did not program the 50 extra peers");
    }
    // Settled: both programmed the 50 and a resync pass has run since.
    let counter = |lab: &TestLab, n: &str, family: &str| -> f64 {
        lab.metric_samples(n, family).iter().filter_map(crate::harness::sample_value).sum()
    };
    let ops_by_kind = |lab: &TestLab, n: &str| -> std::collections::BTreeMap<String, f64> {
        let mut by = std::collections::BTreeMap::new();
        for s in lab.metric_samples(n, "felt_dataplane_ops_total") {
            if let (Some(op), Some(v)) = (s.labels.get("op"), crate::harness::sample_value(&s)) {
                *by.entry(op.to_owned()).or_insert(0.0) += v;
            }
        }
        by
    };
    let passes = |lab: &TestLab| ["n1", "n2"].map(|n| counter(lab, n, "felt_reconcile_total"));
    let p0 = passes(&lab);
    let settled = crate::harness::wait_until(Duration::from_secs(12), || {
        passes(&lab).iter().zip(&p0).all(|(now, then)| now > then)
    });
    assert!(settled.is_some(), "no reconcile pass after programming the 50");
    let before = ["n1", "n2"].map(|n| (ops_by_kind(&lab, n), counter(&lab, n, "felt_reconcile_total")));
    // Every 200 ms for 10 s, each of the 50 nodes sends a status heartbeat, as kubelets do.
    let beats = with_admin(&lab, move |c| async move {
        let api: Api<Node> = Api::all(c);
        let start = Instant::now();
        let mut beats = 0;
        while start.elapsed() < Duration::from_secs(10) {
            let round = Instant::now();
            let t = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
            let patch = serde_json::json!({"status": {"conditions": [
                {"type": "Ready", "status": "True", "lastHeartbeatTime": t, "reason": "KubeletReady"}]}});
            let sends = (0..50).map(|i| {
                let (api, patch) = (api.clone(), patch.clone());
                async move {
                    api.patch_status(&format!("hb{i}"), &PatchParams::default(), &Patch::Strategic(&patch))
                        .await
                }
            });
            for r in futures::future::join_all(sends).await {
                r.expect("a heartbeat");
                beats += 1;
            }
            tokio::time::sleep(Duration::from_millis(200).saturating_sub(round.elapsed())).await;
        }
        beats
    });
    assert!(beats >= 1500, "only {beats} heartbeats sent");
    // A marker after the last heartbeat, on the same watch: hb0's VTEP MAC
    // changes. Once both nodes programmed it, every heartbeat before it has
    // been seen too, and the marker's own writes are all there may be.
    with_admin(&lab, |c| async move {
        let api: Api<Node> = Api::all(c);
        let patch = serde_json::json!({"metadata": {"annotations": {
            "felt.network/backend-data": r#"{"vni":1,"vtepMAC":"02:fd:00:00:00:00"}"#}}});
        api.patch("hb0", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("the marker");
    });
    for node in ["n1", "n2"] {
        let seen = crate::harness::wait_until(Duration::from_secs(10), || {
            crate::harness::bridge_in(&lab.node_ns(node), &["fdb", "show", "dev", "felt.1"])
                .contains("02:fd:00:00:00:00")
        });
        assert!(seen.is_some(), "{node} never programmed the marker");
    }
    for (i, (b_ops, b_passes)) in before.iter().enumerate() {
        let n = ["n1", "n2"][i];
        let a_ops = ops_by_kind(&lab, n);
        let delta: std::collections::BTreeMap<&str, f64> = a_ops
            .iter()
            .map(|(k, v)| (k.as_str(), v - b_ops.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d != 0.0)
            .collect();
        let marker =
            std::collections::BTreeMap::from([("del_fdb", 1.0), ("set_fdb", 1.0), ("set_neighbour", 1.0)]);
        assert_eq!(delta, marker, "{n}: the heartbeats caused netlink writes beyond the marker's");
        // Only the resync timer (every 5 s in the lab) and the marker may run a pass.
        let passes = counter(&lab, n, "felt_reconcile_total") - b_passes;
        assert!(passes <= 4.0, "{n}: {passes} reconcile passes during heartbeats");
    }
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_role_missing_a_verb_is_named_once_and_makes_the_agent_unready() {
    use std::time::Duration;
    require_root();
    let lab = real_lab(2, 0);
    assert!(crate::harness::wait_until(Duration::from_secs(10), || readyz(&lab, "n1") == 200).is_some());
    // Take `patch` on nodes away, then make n1 need it: its public-ip annotation goes.
    let (ok, role, err) = kubectl(&lab, &["get", "clusterrole", "felt", "-o", "json"]);
    assert!(ok, "{err}");
    let role: Value = serde_json::from_str(&role).unwrap();
    let rules = role["rules"].as_array().unwrap();
    let nodes_rule = rules.iter().position(|r| r["resources"] == serde_json::json!(["nodes"])).unwrap();
    let verbs: Vec<&str> = rules[nodes_rule]["verbs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|v| *v != "patch")
        .collect();
    let set_verbs = |verbs: &[&str]| {
        let patch = serde_json::json!([{"op": "replace", "path": format!("/rules/{nodes_rule}/verbs"), "value": verbs}]);
        let (ok, _, err) =
            kubectl(&lab, &["patch", "clusterrole", "felt", "--type=json", "-p", &patch.to_string()]);
        assert!(ok, "{err}");
    };
    set_verbs(&verbs);
    let (ok, _, err) = kubectl(&lab, &["annotate", "node", "n1", "felt.network/public-ip-"]);
    assert!(ok, "{err}");
    let body = || lab.try_debug_get("n1", "/readyz").map(|(_, b)| b).unwrap_or_default();
    let unready = crate::harness::wait_until(Duration::from_secs(15), || {
        body().contains("RBAC forbids `patch` on `nodes` (grant it in felt's ClusterRole)")
    });
    assert!(unready.is_some(), "readiness does not name the missing verb: {}", body());
    assert_eq!(readyz(&lab, "n1"), 503);
    // Several resyncs (5 s each in the lab) retry it; the log says it once.
    let retries = || lab.log("n1").matches("publishing node record failed").count();
    let retried = crate::harness::wait_until(Duration::from_secs(20), || retries() >= 3);
    assert!(retried.is_some(), "it did not retry: {}", lab.log("n1"));
    let said = lab.log("n1").matches("the API server forbids `patch` on `nodes` to this agent").count();
    assert_eq!(said, 1, "{}", lab.log("n1"));

    // Granted again: published, ready, and the log says so.
    let mut all: Vec<&str> = verbs.clone();
    all.push("patch");
    set_verbs(&all);
    let back = crate::harness::wait_until(Duration::from_secs(15), || readyz(&lab, "n1") == 200);
    assert!(back.is_some(), "not ready after the grant: {}", body());
    let (_, out, _) = kubectl(
        &lab,
        &["get", "node", "n1", "-o", "jsonpath={.metadata.annotations.felt\\.network/public-ip}"],
    );
    assert_eq!(out.trim(), lab.status().nodes[0].underlay_ip.to_string());
    assert!(lab.log("n1").contains("the API server allows `patch` on `nodes` again"));
    lab.finish();
}

/// A peer's pod CIDRs come from its Node's spec, read once per Node object,
/// while everything else comes from a metadata watch: annotations that come
/// before the controller-manager's CIDR, and a Node deleted and created
/// again under the same name with another CIDR, are programmed from the
/// spec each time, never from a stale read.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn pod_cidrs_follow_the_spec_when_annotations_come_first_or_a_node_is_recreated() {
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
    use std::time::Duration;
    require_root();
    // Node metadata it is (FeltNodes carry the CIDR their agent read from its spec).
    let lab = real_lab_with(2, 0, &["--peer-source", "nodes"]);
    let underlay = felt::lab::underlay_subnet(&lab.name);
    let ip = std::net::Ipv4Addr::from(u32::from(underlay.network()) + 77).to_string();
    let routes =
        |lab: &TestLab| crate::harness::ip_in(&lab.node_ns("n1"), &["route", "show", "dev", "felt.1"]);
    let create = move |mac: &'static str, cidr: Option<&'static str>| {
        let ip = ip.clone();
        move |c: kube::Client| async move {
            let api: Api<Node> = Api::all(c);
            let mut node = serde_json::json!({"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": "lag", "annotations": {
                    "felt.network/backend-type": "vxlan",
                    "felt.network/backend-data": format!(r#"{{"vni":1,"vtepMAC":"{mac}"}}"#),
                    "felt.network/public-ip": ip}}});
            if let Some(cidr) = cidr {
                node["spec"] = serde_json::json!({"podCIDR": cidr, "podCIDRs": [cidr]});
            }
            api.create(&PostParams::default(), &serde_json::from_value(node).unwrap())
                .await
                .expect("creating lag");
        }
    };
    // Annotations first, no pod CIDR yet: no route, no crash.
    with_admin(&lab, create("02:fe:00:00:01:01", None));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(routes(&lab).lines().count(), 1, "only n2's route:\n{}", routes(&lab));
    // The controller-manager's CIDR arrives: programmed from the spec.
    with_admin(&lab, |c| async move {
        let patch =
            serde_json::json!({"spec": {"podCIDR": "10.244.200.0/24", "podCIDRs": ["10.244.200.0/24"]}});
        Api::<Node>::all(c)
            .patch("lag", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .expect("the CIDR");
    });
    let programmed =
        crate::harness::wait_until(Duration::from_secs(15), || routes(&lab).contains("10.244.200.0/24"));
    assert!(
        programmed.is_some(),
        "the CIDR set after the annotations was never programmed:\n{}",
        routes(&lab)
    );
    eprintln!("a CIDR set after the annotations: programmed in {:?}", programmed.unwrap());
    // Deleted and created again under the same name with another CIDR.
    with_admin(&lab, |c| async move {
        Api::<Node>::all(c).delete("lag", &DeleteParams::default()).await.expect("deleting lag");
    });
    with_admin(&lab, create("02:fe:00:00:01:02", Some("10.244.201.0/24")));
    let moved = crate::harness::wait_until(Duration::from_secs(5), || {
        let r = routes(&lab);
        r.contains("10.244.201.0/24") && !r.contains("10.244.200.0/24")
    });
    assert!(moved.is_some(), "the recreated node's CIDR:\n{}", routes(&lab));
    let fdb = fdb(&lab, "n1");
    assert!(fdb.contains("02:fe:00:00:01:02") && !fdb.contains("02:fe:00:00:01:01"), "{fdb}");
    lab.finish();
}

/// The agents of a cluster read FeltNodes: each started on Node metadata
/// (no FeltNode existed yet) and moved to FeltNodes once every node had a
/// matching one; a malformed FeltNode is logged, counted and skipped; a
/// FeltNode deleted by hand is published again by its agent; a deleted
/// Node's FeltNode goes with it (the garbage collector, through its owner
/// reference), and so does its peer; a restarted agent reads FeltNodes at once.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn agents_read_feltnodes_owned_by_their_nodes_and_a_deleted_node_takes_its_own_along() {
    use std::time::Duration;

    use crate::harness::wait_until;
    require_root();
    let lab = real_lab(3, 0);
    let reads = |node: &str| lab.debug_state(node).peer_source;
    for n in ["n1", "n2", "n3"] {
        let switched = wait_until(Duration::from_secs(10), || reads(n).as_deref() == Some("feltnodes"));
        assert!(switched.is_some(), "{n} reads {:?}:\n{}", reads(n), lab.log(n));
        let log = lab.log(n);
        let (before, after) = (
            log.find("not every node has a FeltNode yet").unwrap_or(usize::MAX),
            log.find("now has a matching FeltNode: reading peers from FeltNodes only"),
        );
        assert!(after.is_some_and(|a| before < a), "{n} did not start on Nodes and move:\n{log}");
    }
    // Each FeltNode says what its Node's annotations say, owned by that Node.
    let (ok, out, err) = kubectl(&lab, &["get", "feltnodes", "-o", "json"]);
    assert!(ok, "{err}");
    let feltnodes: Value = serde_json::from_str(&out).unwrap();
    let items = feltnodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{out}");
    for f in items {
        let name = f["metadata"]["name"].as_str().unwrap();
        let node = node_json(&lab, name);
        let ann = &node["metadata"]["annotations"];
        assert_eq!(f["spec"]["publicIP"], ann["felt.network/public-ip"], "{name}");
        let data: Value = serde_json::from_str(ann["felt.network/backend-data"].as_str().unwrap()).unwrap();
        assert_eq!(f["spec"]["backendData"], data, "{name}");
        assert_eq!(f["spec"]["podCIDRs"], node["spec"]["podCIDRs"], "{name}");
        let owner = &f["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].clone()),
            (Some("Node"), node["metadata"]["uid"].clone())
        );
    }
    let routes = |node: &str| crate::harness::ip_in(&lab.node_ns(node), &["route", "show", "dev", "felt.1"]);
    assert_eq!(routes("n1").lines().count(), 2, "{}", routes("n1"));

    // A FeltNode whose VTEP MAC is multicast: said once, counted, skipped.
    let bad = r#"{"apiVersion":"felt.network/v1","kind":"FeltNode","metadata":{"name":"zz"},
        "spec":{"podCIDRs":["10.244.99.0/24"],"publicIP":"198.18.0.99","backendType":"vxlan",
        "backendData":{"vni":1,"vtepMAC":"01:00:5e:00:00:01"}}}"#;
    let path = lab.lab_dir().join("bad-feltnode.json");
    std::fs::write(&path, bad).unwrap();
    let (ok, _, err) = kubectl(&lab, &["create", "-f", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    let counted = wait_until(Duration::from_secs(5), || {
        lab.metric_samples("n1", "felt_bad_records_total")
            .iter()
            .any(|s| s.labels.get("reason") == Some("malformed"))
    });
    assert!(counted.is_some(), "{:?}", lab.metric_samples("n1", "felt_bad_records_total"));
    let st = lab.debug_state("n1");
    assert!(
        st.malformed.iter().any(|m| m.document == "feltnode/zz" && m.error.contains("unicast")),
        "{st:?}"
    );
    assert!(lab.log("n1").contains("record=feltnode/zz"), "{}", lab.log("n1"));
    assert_eq!(routes("n1").lines().count(), 2, "the data plane kept its peers: {}", routes("n1"));

    // n2's FeltNode deleted by hand: n2's agent publishes it again.
    let (ok, _, err) = kubectl(&lab, &["delete", "feltnode", "n2"]);
    assert!(ok, "{err}");
    let back = wait_until(Duration::from_secs(10), || kubectl(&lab, &["get", "feltnode", "n2"]).0);
    assert!(back.is_some(), "n2 did not publish its FeltNode again:\n{}", lab.log("n2"));
    let again = wait_until(Duration::from_secs(10), || routes("n1").lines().count() == 2);
    assert!(again.is_some(), "{}", routes("n1"));

    // Node n3 deleted: the garbage collector deletes its FeltNode, and n1 its peer.
    let cidr3 = node_json(&lab, "n3")["spec"]["podCIDRs"][0].as_str().unwrap().to_owned();
    assert!(routes("n1").contains(&cidr3), "{}", routes("n1"));
    let (ok, _, err) = kubectl(&lab, &["delete", "node", "n3"]);
    assert!(ok, "{err}");
    let collected = wait_until(Duration::from_secs(10), || !kubectl(&lab, &["get", "feltnode", "n3"]).0);
    assert!(collected.is_some(), "n3's FeltNode outlived its Node");
    let gone = wait_until(Duration::from_secs(5), || !routes("n1").contains(&cidr3));
    assert!(gone.is_some(), "n1 still routes n3's {cidr3}:\n{}", routes("n1"));
    eprintln!("n3's FeltNode collected in {collected:?}, its route gone {gone:?} later");

    // Restarted, n1 reads FeltNodes at once: every Node has one.
    kubectl(&lab, &["delete", "feltnode", "zz"]);
    lab.felt(&["lab", "restart-agent", "n1"]);
    let ready = wait_until(Duration::from_secs(10), || readyz(&lab, "n1") == 200);
    assert!(ready.is_some(), "{}", lab.log("n1"));
    let log = lab.log("n1");
    let restarted = log.rfind(": underlay ").expect("the restarted agent logs its underlay");
    assert!(
        log[restarted..].contains("every node has a FeltNode: reading peers from FeltNodes only"),
        "{}",
        &log[restarted..]
    );
    assert_eq!(routes("n1").lines().count(), 1, "n2 only: {}", routes("n1"));
    lab.finish();
}
