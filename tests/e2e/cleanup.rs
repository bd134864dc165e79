//! `felt cleanup` on a lab node: what it refuses, what it removes, what it
//! never touches.

use std::process::{Command, Output};
use std::time::Duration;

use crate::harness::{FELT, TestLab, ip_in, nft_in, require_root, run, wait_until};

fn in_node(lab: &TestLab, node: &str, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &lab.node_ns(node), FELT]).args(args);
    c
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn cleanup_takes_felt_off_a_node_and_nothing_else() {
    require_root();
    let lab = TestLab::up(2, 2);
    let dir = lab.node_dir("n1");
    let (bin, net_d) = (dir.join("bin"), dir.join("net.d"));
    let path = |p: &std::path::Path| p.display().to_string();
    run(&mut in_node(&lab, "n1", &["install-cni", "--bin-dir", &path(&bin), "--conf-dir", &path(&net_d)]));
    let args = [
        "cleanup",
        "--bin-dir",
        &path(&bin),
        "--conf-dir",
        &path(&net_d),
        "--subnet-file",
        &path(&dir.join("subnet.env")),
        "--data-dir",
        &path(&dir.join("cni")),
    ];
    // What is not felt's, and must stay: another table, links named like felt's devices.
    nft_in(&lab.node_ns("n1"), &["add", "table", "ip", "host"]);
    nft_in(
        &lab.node_ns("n1"),
        &["add", "chain", "ip", "host", "post", "{ type nat hook postrouting priority 100; }"],
    );
    ip_in(&lab.node_ns("n1"), &["link", "add", "felt.x", "type", "veth", "peer", "name", "felt.y"]);
    let host_table = nft_in(&lab.node_ns("n1"), &["list", "table", "ip", "host"]);
    let has_felt_table = || nft_in(&lab.node_ns("n1"), &["list", "tables"]).contains("table ip felt");
    assert!(wait_until(Duration::from_secs(10), has_felt_table).is_some(), "n1 built its masquerade table");

    // The agent answers: refused, nothing removed.
    let out = in_node(&lab, "n1", &args).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("a felt agent still answers at 127.0.0.1:9469"), "{}", text(&out));
    assert!(bin.join("felt").exists() && net_d.join("10-felt.conflist").exists());

    // The agent stops (as when its DaemonSet is deleted): it leaves its data plane.
    let pid = lab.status().nodes[0].pid;
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(wait_until(Duration::from_secs(10), gone).is_some(), "n1's agent did not stop");
    let links = ip_in(&lab.node_ns("n1"), &["-o", "link", "show"]);
    for want in ["felt.1:", "felt0:", "felt.x:"] {
        assert!(links.contains(want), "{want} missing before cleanup:\n{links}");
    }
    assert!(has_felt_table());
    let routes = ip_in(&lab.node_ns("n1"), &["route", "show", "dev", "felt.1"]);
    // n2's subnet, whichever /24 it leased first (the two agents start together).
    assert!(
        routes.lines().count() == 1 && routes.starts_with("10.244.") && routes.contains("/24 "),
        "{routes}"
    );

    let ports: Vec<String> = ip_in(&lab.node_ns("n1"), &["-o", "link", "show", "master", "felt0"])
        .lines()
        .filter_map(|l| Some(l.split(": ").nth(1)?.split('@').next()?.to_owned()))
        .collect();
    assert_eq!(ports.len(), 2, "{ports:?}");

    // Pods are attached: refused, with their interfaces named.
    let out = in_node(&lab, "n1", &args).output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 pod interface(s) still attached to felt0"), "{}", text(&out));
    assert!(ports.iter().all(|p| text(&out).contains(p.as_str())), "{}", text(&out));
    assert!(has_felt_table(), "a refused cleanup removed nothing");

    // Forced: everything of felt goes, the rest stays.
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = String::from_utf8_lossy(&run(&mut in_node(&lab, "n1", &forced)).stdout).into_owned();
    for want in [
        "removed CNI config",
        "removed nftables table ip felt",
        "removed pod veth",
        "removed vxlan device felt.1",
        "removed bridge device felt0",
        "removed subnet file",
        "removed pod address store",
        "removed CNI plugin",
    ] {
        assert!(out.contains(want), "`{want}` missing from:\n{out}");
    }
    let links = ip_in(&lab.node_ns("n1"), &["-o", "link", "show"]);
    assert!(!links.contains("felt.1:") && !links.contains("felt0:"), "{links}");
    assert!(links.contains("felt.x@felt.y:"), "a veth is not felt's: {links}");
    for port in &ports {
        assert!(!links.contains(&format!(" {port}@")), "pod veth {port} is left:\n{links}");
    }
    assert!(!ip_in(&lab.node_ns("n1"), &["route"]).contains("10.244."), "routes went with the device");
    assert!(!has_felt_table());
    assert_eq!(nft_in(&lab.node_ns("n1"), &["list", "table", "ip", "host"]), host_table);
    for p in [bin.join("felt"), net_d.join("10-felt.conflist"), dir.join("subnet.env"), dir.join("cni")] {
        assert!(!p.exists(), "{} is left", p.display());
    }

    // Twice is safe.
    let again = String::from_utf8_lossy(&run(&mut in_node(&lab, "n1", &forced)).stdout).into_owned();
    assert_eq!(again.trim(), "nothing of felt on this node: nothing to remove");
    // n2 was never touched.
    assert!(ip_in(&lab.node_ns("n2"), &["-o", "link", "show"]).contains("felt0:"));
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn cleanup_of_a_userspace_node_frees_the_port_its_keeper_held() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 1, &["--mode", "userspace"]);
    let dir = lab.node_dir("n1");
    let path = |p: &std::path::Path| p.display().to_string();
    let vxlan_sockets = || ip_netns_ss(&lab, "n1");
    let pid = lab.status().nodes[0].pid;
    run(Command::new("kill").args(["-TERM", &pid.to_string()]));
    let gone = || !std::path::Path::new(&format!("/proc/{pid}")).exists();
    assert!(wait_until(Duration::from_secs(10), gone).is_some(), "n1's agent did not stop");
    // The agent is gone; its keeper holds the port for the next one.
    assert!(vxlan_sockets().contains(":8472"), "the keeper holds the port: {}", vxlan_sockets());

    let out = run(&mut in_node(
        &lab,
        "n1",
        &[
            "cleanup",
            "--force",
            "--bin-dir",
            &path(&dir.join("bin")),
            "--conf-dir",
            &path(&dir.join("net.d")),
            "--subnet-file",
            &path(&dir.join("subnet.env")),
            "--data-dir",
            &path(&dir.join("cni")),
        ],
    ));
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    for want in ["removed keeper of felt.1", "removed tun device felt.1"] {
        assert!(out.contains(want), "`{want}` missing from:\n{out}");
    }
    let freed = || !vxlan_sockets().contains(":8472");
    assert!(wait_until(Duration::from_secs(2), freed).is_some(), "still bound: {}", vxlan_sockets());
    lab.finish();
}

/// UDP sockets listening in a lab node (`ss -uln`).
fn ip_netns_ss(lab: &TestLab, node: &str) -> String {
    let out = run(Command::new("ip").args(["netns", "exec", &lab.node_ns(node), "ss", "-uln"]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}
