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
