//! Labs past the size where the shared kernel's ARP table overflowed: the
//! underlay is pinned, and `lab check` fails a broken fabric in seconds.

use std::time::{Duration, Instant};

use crate::harness::{TestLab, ip_in, require_root};

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_forty_node_lab_passes_check_and_a_broken_one_fails_in_seconds() {
    require_root();
    let _alone = crate::harness::exclusive();
    let lab = TestLab::up(40, 1);
    // 40 × 39 dynamic underlay entries would pass gc_thresh3 (1,024, shared
    // by every namespace): the lab pins them instead.
    let neigh = ip_in(&lab.node_ns("n1"), &["neigh", "show", "dev", "eth0"]);
    assert_eq!(
        neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
        40,
        "39 nodes and the host:\n{neigh}"
    );
    let started = Instant::now();
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("1560/1560 pod pairs reachable"), "{check}");
    eprintln!("40-node lab: check of 1,560 pairs took {:?}", started.elapsed());

    // n1 drops all VXLAN (a table of its own, which the agent never touches):
    // every pair to or from its pod fails, and the check says so quickly.
    let n1 = lab.node_ns("n1");
    let nft = |args: &[&str]| drop(crate::harness::nft_in(&n1, args));
    nft(&["add", "table", "ip", "cut"]);
    nft(&["add", "chain", "ip", "cut", "in", "{ type filter hook input priority -10; }"]);
    nft(&["add", "rule", "ip", "cut", "in", "udp", "dport", "8472", "drop"]);
    let started = Instant::now();
    let out = lab.felt_command(&["lab", "check"]).output().unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a cut node passed the check:\n{text}");
    assert_eq!(text.lines().last(), Some("1482/1560 pod pairs reachable"), "{text}");
    assert!(took < Duration::from_secs(20), "a broken fabric took {took:?} to fail");
    eprintln!("40-node lab with one node cut: check failed 78 pairs in {took:?}");
    nft(&["delete", "table", "ip", "cut"]);
    lab.finish();
}

/// The lab at its stated size: 200 nodes (200 agents on this machine's
/// cores, each probing its 199 peers every 10 s, the lab's interval at this
/// size) pass `lab check`, every one of 39,800 pod pairs.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_two_hundred_node_lab_passes_check() {
    require_root();
    let _exclusive = crate::harness::exclusive();
    let _alone = crate::harness::alone();
    let started = Instant::now();
    let lab = TestLab::up(200, 1);
    eprintln!("200-node lab up in {:?}", started.elapsed());
    let neigh = ip_in(&lab.node_ns("n1"), &["neigh", "show", "dev", "eth0"]);
    assert_eq!(
        neigh.lines().filter(|l| l.contains("PERMANENT")).count(),
        200,
        "199 nodes and the host:\n{neigh}"
    );
    let started = Instant::now();
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("39800/39800 pod pairs reachable"), "{check}");
    eprintln!("200-node lab: check of 39,800 pairs took {:?}", started.elapsed());
    lab.finish();
    // The next test's lab must not meet the kernel still freeing 200 namespaces.
    let started = Instant::now();
    crate::harness::wait_for_the_kernel_to_settle();
    eprintln!("the kernel freed the lab's namespaces {:?} after it was removed", started.elapsed());
}

/// `felt lab bench --control-plane` at a small N, so it cannot rot: every
/// row measured, a change costs the writes it needs and no more, and the
/// run leaves nothing behind. (Its figures go to the README, not here.)
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn the_control_plane_bench_measures_every_n_and_cleans_up() {
    require_root();
    let lab = TestLab::unbuilt(&TestLab::unique_name());
    let out = lab.felt(&[
        "lab",
        "bench",
        "--control-plane",
        "--peers",
        "50,300",
        "--changes",
        "30",
        "--removals",
        "100",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["registry"], "file");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.iter().map(|r| r["peers"].as_u64().unwrap()).collect::<Vec<_>>(), [50, 300]);
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        assert!(f("cold_ms") > 0.0 && f("removal_ms") > 0.0 && f("rss_peak_mib") > 1.0, "{r}");
        // Each N runs past the idle 5 s: the kubelet-like probe was answered.
        assert!(f("readiness_probe_max_ms") > 0.0, "{r}");
        assert!(f("change_p50_ms") <= f("change_p99_ms") && f("change_p99_ms") <= f("change_max_ms"), "{r}");
        assert_eq!(r["changes"], 30);
        assert_eq!(r["removed"].as_u64().unwrap(), r["peers"].as_u64().unwrap().min(100));
        // A peer moving to a new underlay address: its FDB entry out and in,
        // one element of the nodes set (the netlink writes are counted by
        // the agent, each change timed to the kernel's notification).
        let writes = f("netlink_writes_per_change");
        assert!((2.9..=3.5).contains(&writes), "writes per change {writes}: {r}");
        assert!(f("passes_per_change") >= 1.0, "{r}");
        for phase in ["registry", "view", "device", "observe", "apply", "nftables", "report"] {
            assert!(r["phase_ms_per_change"][phase].as_f64().is_some(), "{phase} in {r}");
        }
    }
    assert!(lab.namespaces().is_empty(), "left behind: {:?}", lab.namespaces());
    assert!(!lab.lab_dir().exists(), "{} left behind", lab.lab_dir().display());
    lab.finish();
}

/// The same benchmark through a real API server, at a small N: the agent is
/// programmed from kubelet-shaped Nodes, and while every Node's status is
/// updated it receives fewer bytes than a watch of whole Nodes in the same
/// run, and writes nothing to the kernel.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn the_control_plane_bench_through_a_real_api_server_measures_watch_bytes() {
    require_root();
    let _alone = crate::harness::exclusive();
    let lab = TestLab::unbuilt(&TestLab::unique_name());
    let bin = crate::harness::control_plane_bin();
    // The default (FeltNodes, once every Node has one: the bench's peers do),
    // then the Node metadata watch, each against a whole-Node watch in the same run.
    for (source, reads, at_least) in [("auto", "feltnodes", 10.0), ("nodes", "nodes", 2.5)] {
        let out = lab.felt(&[
            "lab",
            "bench",
            "--control-plane",
            "--registry",
            "kube",
            "--k8s-bin",
            bin.to_str().unwrap(),
            "--peer-source",
            source,
            "--peers",
            "60",
            "--changes",
            "20",
            "--removals",
            "30",
            "--status-seconds",
            "5",
            "--json",
        ]);
        let report: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(report["registry"], "kube");
        let r = &report["rows"][0];
        let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or_else(|| panic!("{k} in {v}"));
        assert_eq!(r["peers"], 60);
        assert!(f(r, "cold_ms") > 0.0 && f(r, "removal_ms") > 0.0, "{r}");
        // Removed through the Nodes' deletion: FeltNodes by the garbage collector.
        assert_eq!(r["removed"], 30);
        let writes = f(r, "netlink_writes_per_change");
        assert!((2.9..=3.5).contains(&writes), "{source}: writes per change {writes}: {r}");
        let api = &r["api"];
        assert_eq!(api["peer_source"], reads, "{source}: {api}");
        assert_eq!(api["status_updates"], 61, "every peer's Node and the agent's own: {api}");
        // Both clients were counted (the proxies see bytes), and the agent got
        // a fraction of what the whole-Node watch got.
        let (agent, full) = (f(api, "agent_bytes_per_minute"), f(api, "full_watch_bytes_per_minute"));
        assert!(agent > 0.0, "the agent's proxy counted nothing: {api}");
        assert!(
            full > at_least * agent,
            "{source}: a whole-Node watch got {full} B/min, the agent {agent}: {api}"
        );
        // The per-update sizes behind it: a metadata event is the metadata.
        assert!(f(api, "node_bytes") > 3.0 * f(api, "metadata_bytes"), "{api}");
        // Status updates cost the kernel nothing.
        assert_eq!(f(api, "netlink_writes"), 0.0, "{api}");
        assert!(lab.namespaces().is_empty(), "left behind: {:?}", lab.namespaces());
        assert!(!lab.lab_dir().exists(), "{} left behind", lab.lab_dir().display());
    }
    lab.finish();
}

/// Ctrl-C during the control-plane bench through a real API server: it
/// stops at its next step and its guard removes what it built. (The bench
/// caught no signal before: the namespace, the agent, etcd, kube-apiserver
/// and kube-controller-manager all stayed.)
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn ctrl_c_during_the_control_plane_bench_removes_what_it_built() {
    require_root();
    let _alone = crate::harness::exclusive();
    let lab = TestLab::unbuilt(&TestLab::unique_name());
    let bin = crate::harness::control_plane_bin();
    let args = ["lab", "bench", "--control-plane", "--registry", "kube", "--k8s-bin", bin.to_str().unwrap()];
    let bench =
        crate::harness::Talking::spawn(lab.felt_command(&args).args(["--peers", "40", "--changes", "5000"]));
    let timing = crate::harness::wait_until(Duration::from_secs(90), || {
        bench.said().contains("changes, one at a time")
    });
    assert!(timing.is_some(), "the bench never reached its changes: {}", bench.said());
    let ns = felt::netns::named(&format!("{}-cp", lab.name));
    let running: Vec<u32> = felt::process::pids().filter(|p| felt::process::in_netns(*p, &ns)).collect();
    let names: Vec<String> = running.iter().filter_map(|p| felt::process::comm(*p)).collect();
    for want in ["etcd", "kube-apiserver", "felt"] {
        assert!(names.iter().any(|n| n == want), "no {want} running in the bench: {names:?}");
    }
    crate::harness::run(std::process::Command::new("kill").args(["-INT", &bench.child.id().to_string()]));
    let (status, said) = bench.wait();
    assert_eq!(status.code(), Some(130), "{said}");
    assert!(said.contains("interrupted; what the bench had built is removed"), "{said}");
    let left: Vec<(u32, Option<String>)> = running
        .into_iter()
        .filter(|p| !felt::process::is_zombie_or_gone(*p))
        .map(|p| (p, felt::process::comm(p)))
        .collect();
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(lab.namespaces().is_empty(), "left behind: {:?}", lab.namespaces());
    assert!(!lab.lab_dir().exists(), "{} left behind", lab.lab_dir().display());
    lab.finish();
}
