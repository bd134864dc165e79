//! The userspace data plane on real labs: alone, mixed with kernel nodes,
//! and under garbage on the VXLAN port.

use std::time::Duration;

use felt_overlay::DataplaneKind;
use serde_json::Value;

use crate::harness::{TestLab, assert_all_answered, ip_in, require_root, sample_value};

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn userspace_and_mixed_labs_reach_every_pair() {
    require_root();
    let name = TestLab::unique_name();
    let lab = TestLab::up_named(&name, 2, 1, &["--mode", "userspace"]);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("2/2 pod pairs reachable"), "{check}");
    let link = ip_in(&lab.node_ns("n1"), &["-d", "link", "show", "felt.1"]);
    assert!(link.contains("tun") && !link.contains("vxlan"), "felt.1 should be a TUN: {link}");
    let st = lab.debug_state("n1");
    assert_eq!(st.config.backend, DataplaneKind::Userspace);
    let engine = st.engine.expect("a userspace agent reports its engine");
    assert!(engine.tx_packets > 0 && engine.rx_packets > 0, "{engine:?}");
    lab.finish();

    let lab = TestLab::up_named(&TestLab::unique_name(), 4, 1, &["--mode", "mixed"]);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("12/12 pod pairs reachable"), "{check}");
    assert_eq!(lab.debug_state("n1").config.backend, DataplaneKind::Kernel);
    assert_eq!(lab.debug_state("n2").config.backend, DataplaneKind::Userspace);
    // The bench runs every path of a mixed lab; its figures are for the README, not asserted.
    let bench: Value =
        serde_json::from_str(&lab.felt(&["lab", "bench", "--seconds", "0.5", "--json"])).unwrap();
    let rows = bench.as_array().unwrap();
    for path in ["underlay", "kernel", "userspace", "mixed"] {
        for streams in [1, 4] {
            let r = rows
                .iter()
                .find(|r| r["test"] == "tcp" && r["path"] == path && r["streams"] == streams)
                .unwrap_or_else(|| panic!("tcp {path}/{streams}"));
            assert!(r["gbit_per_s"].as_f64().unwrap() > 0.0, "{r}");
        }
        let r = rows
            .iter()
            .find(|r| r["test"] == "udp" && r["path"] == path)
            .unwrap_or_else(|| panic!("udp {path}"));
        assert!(r["packets_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!((0.0..=1.0).contains(&r["loss"].as_f64().unwrap()), "{r}");
    }
    assert!(rows.iter().filter(|r| r["path"] == "kernel").all(|r| r["ratio_to_kernel"] == 1.0));
    // The bench gives kernel nodes their checksum offload back when it is done.
    let features = String::from_utf8(
        crate::harness::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &lab.node_ns("n1"),
            "ethtool",
            "-k",
            "eth0",
        ]))
        .stdout,
    )
    .unwrap();
    assert!(features.contains("tx-checksum-ip-generic: off"), "{features}");
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn garbage_on_the_vxlan_port_is_counted_and_harmless() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 1, &["--mode", "userspace"]);
    // The CI burst of the documented 10-million-datagram soak (README, Measured).
    let out = lab.felt(&["lab", "soak", "--datagrams", "300000", "--max-seconds", "120", "--json"]);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["sent"], 300_000, "{r}");
    assert_eq!(r["unaccounted"], 0, "every datagram counted by felt or dropped by the kernel: {r}");
    for reason in [
        "unknown_peer",
        "bad_vni",
        "bad_flags",
        "short_frame",
        "wrong_inner_mac",
        "bad_inner_packet",
        "spoofed_source",
    ] {
        assert!(r["counted_by_felt"][reason].as_u64().unwrap_or(0) > 0, "{reason}: {r}");
    }
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(r["agent_alive"], true, "{r}");
    // The metrics say the same as /debug/state, and the fabric is whole.
    let metric: f64 = lab
        .metric_samples(r["target"].as_str().unwrap(), "felt_engine_drops_total")
        .iter()
        .filter_map(sample_value)
        .sum();
    assert!(metric >= 300_000.0 - r["dropped_by_kernel"].as_f64().unwrap(), "{metric} {r}");
    eprintln!(
        "garbage: {} datagrams sent, {} counted by felt by reason, {} dropped by the kernel, 0 unaccounted",
        r["sent"], metric, r["dropped_by_kernel"]
    );
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("2/2 pod pairs reachable"), "{check}");
    lab.finish();
}

/// Restarts of either node's agent at random intervals from 0 to 600 ms
/// (so many land while the previous agent is still starting), `restarts`
/// of them, while a pod pings across at 100 per second. Returns the ping
/// report and the seed the intervals came from.
fn restart_at_random(lab: &TestLab, kill: bool, restarts: u32) -> (felt::lab::probe::SeriesReport, u64) {
    let target = lab.first_pod_ip("n2");
    let src = felt::netns::named(&format!("{}-n1-p1", lab.name));
    let mut random = crate::harness::Random::from_clock();
    let count = u16::try_from(restarts * 35 + 200).unwrap();
    let pinger = std::thread::spawn(move || {
        felt::netns::run_in(&src, move || {
            felt::lab::probe::ping_series(target, count, Duration::from_millis(10), Duration::from_secs(2))
        })
    });
    std::thread::sleep(Duration::from_secs(1));
    for _ in 0..restarts {
        let node = if random.next_u64() % 2 == 0 { "n1" } else { "n2" };
        let mut args = vec!["lab", "restart-agent", node];
        if kill {
            args.push("--kill");
        }
        lab.felt(&args);
        std::thread::sleep(Duration::from_millis(random.next_u64() % 600));
    }
    (pinger.join().unwrap().unwrap().unwrap(), random.seed)
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn userspace_restarts_lose_nothing() {
    require_root();
    let _alone = crate::harness::exclusive();
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 1, &["--mode", "userspace"]);
    let n2 = lab.node_ns("n2");
    // A keeper runs beside each agent from its start and holds the TUN and
    // the VXLAN socket; every new agent takes them over from it.
    let netns = [felt::netns::named(&lab.node_ns("n1")), felt::netns::named(&n2)];
    let keepers = || {
        let mut pids = crate::harness::processes_where(|c| c.contains(" keeper --device felt.1"));
        pids.retain(|pid| netns.iter().any(|ns| felt::process::in_netns(*pid, ns)));
        pids
    };
    assert_eq!(keepers().len(), 2, "one keeper per node");

    // SIGTERM: the workers finish what they read and stop; what arrives
    // meanwhile waits with the keeper. Nothing is lost.
    let before = lab.log("n2").len();
    let (report, seed) = restart_at_random(&lab, false, 24);
    eprintln!("SIGTERM at random intervals (seed {seed}): {}/{} answered", report.received, report.sent);
    assert_all_answered(&report);
    assert!(
        lab.log("n2")[before..].contains("took the data plane over from the previous agent's keeper"),
        "{}",
        lab.log("n2")
    );

    // SIGKILL: the keeper still holds the descriptors, so only what a
    // worker had read and not yet passed on dies with the process: at this
    // rate at most one packet per kill, usually none.
    let kills = 24;
    let (report, seed) = restart_at_random(&lab, true, kills);
    let lost = report.sent - report.received;
    eprintln!("SIGKILL at random intervals (seed {seed}): {}/{} answered", report.received, report.sent);
    assert!(lost <= kills, "lost {lost} of {} pings over {kills} kills (seed {seed})", report.sent);
    assert!(ip_in(&n2, &["route", "show", "dev", "felt.1"]).contains("10.244."), "routes survived the kills");
    let kept = keepers();
    assert_eq!(kept.len(), 2, "still one keeper per node, however the agents ended");
    // A SIGHUP meant for the agents (a settings reload) leaves keepers be.
    for pid in &kept {
        crate::harness::run(std::process::Command::new("kill").args(["-HUP", &pid.to_string()]));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(keepers(), kept, "a keeper died of SIGHUP");
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("2/2 pod pairs reachable"), "{check}");
    lab.finish();
    let left: Vec<u32> = kept.into_iter().filter(|pid| !felt::process::is_zombie_or_gone(*pid)).collect();
    assert!(left.is_empty(), "the lab took its keepers down, but {left:?} run");
}
