//! The userspace data plane on real labs: alone, mixed with kernel nodes,
//! and under garbage on the VXLAN port.

use std::net::UdpSocket;
use std::time::Duration;

use felt::netns;
use serde_json::Value;

use crate::harness::{TestLab, ip_in, require_root, wait_until};

#[test]
fn userspace_and_mixed_labs_reach_every_pair() {
    if !require_root("userspace_and_mixed_labs_reach_every_pair") {
        return;
    }
    let name = TestLab::unique_name();
    let lab = TestLab::up_named(&name, 2, 1, &["--mode", "userspace"]);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("2/2 pod pairs reachable"), "{check}");
    let link = ip_in(&lab.node_ns("n1"), &["-d", "link", "show", "felt.1"]);
    assert!(link.contains("tun") && !link.contains("vxlan"), "felt.1 should be a TUN: {link}");
    let st = lab.debug_state("n1");
    assert_eq!(st["config"]["backend"], "userspace");
    assert!(st["engine"]["tx_packets"].as_u64().unwrap() > 0, "{}", st["engine"]);
    assert!(st["engine"]["rx_packets"].as_u64().unwrap() > 0, "{}", st["engine"]);
    lab.finish();

    let lab = TestLab::up_named(&TestLab::unique_name(), 4, 1, &["--mode", "mixed"]);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("12/12 pod pairs reachable"), "{check}");
    assert_eq!(lab.debug_state("n1")["config"]["backend"], "kernel");
    assert_eq!(lab.debug_state("n2")["config"]["backend"], "userspace");
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
fn garbage_on_the_vxlan_port_is_counted_and_harmless() {
    if !require_root("garbage_on_the_vxlan_port_is_counted_and_harmless") {
        return;
    }
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 1, &["--mode", "userspace"]);
    let target: std::net::Ipv4Addr =
        lab.status()["nodes"][1]["underlay_ip"].as_str().unwrap().parse().unwrap();
    // From n1, a known peer: 2000 datagrams of every malformed kind, paced so
    // the receive buffer never overflows (those would be the kernel's drops, not ours).
    let sent = netns::run_in(&netns::named(&lab.node_ns("n1")), move || {
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        let mut seed: u32 = 0x9e37_79b9;
        let mut sent = 0u64;
        for i in 0..2000u32 {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = (seed % 120) as usize;
            let mut d: Vec<u8> = (0..len).map(|k| (seed >> (k % 24)) as u8).collect();
            if i % 3 == 0 && d.len() > 8 {
                d[0] = 0x08; // a VXLAN flag byte, other VNI or garbage behind it
            }
            s.send_to(&d, (target, 8472)).unwrap();
            sent += 1;
            if i % 50 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sent
    })
    .unwrap();
    let counted = wait_until(Duration::from_secs(5), || {
        let drops = &lab.debug_state("n2")["engine"]["drops"];
        drops.as_object().map(|o| o.values().filter_map(Value::as_u64).sum::<u64>()).unwrap_or(0) >= sent
    });
    assert!(counted.is_some(), "not every garbage datagram was counted: {}", lab.debug_state("n2")["engine"]);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("2/2 pod pairs reachable"), "{check}");
    lab.finish();
}
