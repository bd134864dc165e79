//! The VXLAN port lock: in kernel mode only nodes may send to the VXLAN
//! port; crafted frames from anyone else never reach a pod, and are counted.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use etherparse::PacketBuilder;
use felt_proto::MacAddr;

use crate::harness::{TestLab, ip_in, require_root, wait_until};

const POD_PORT: u16 = 7777;

/// A VXLAN datagram (VNI 1) carrying UDP `payload` from `src` to `dst` inside.
fn frame(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![0x08, 0, 0, 0, 0, 0, 1, 0];
    PacketBuilder::ethernet2(src_mac.octets(), dst_mac.octets())
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, POD_PORT)
        .write(&mut out, payload)
        .expect("building a frame");
    out
}

/// Sends `datagram` to `to` from namespace `ns`, from `from` when given.
fn send_from(ns: &str, from: Option<IpAddr>, to: SocketAddr, datagram: Vec<u8>) {
    felt::netns::run_in(&felt::netns::named(ns), move || {
        let any: IpAddr =
            if to.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
        let s = UdpSocket::bind((from.unwrap_or(any), 0))?;
        s.send_to(&datagram, to).map(|_| ())
    })
    .expect("entering the namespace")
    .expect("sending");
}

/// A UDP socket on [`POD_PORT`] in n1's first pod.
fn pod_listener(lab: &TestLab) -> UdpSocket {
    let pod_ns = format!("{}-n1-p1", lab.name);
    let listener =
        felt::netns::run_in(&felt::netns::named(&pod_ns), || UdpSocket::bind(("0.0.0.0", POD_PORT)))
            .unwrap()
            .unwrap();
    listener.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    listener
}

/// Whether `want` reaches `listener` within `tries` sends of `send` (200 ms each).
fn received_by(listener: &UdpSocket, want: &[u8], tries: u32, send: &dyn Fn()) -> bool {
    let mut buf = [0u8; 64];
    for _ in 0..tries {
        send();
        while let Ok(n) = listener.recv(&mut buf) {
            if &buf[..n] == want {
                return true;
            }
        }
    }
    false
}

/// Waits (12 s at most: the metric is read at each resync) for n1's
/// `felt_vxlan_outsider_drops_total` to reach `at_least`.
fn outsider_drops_are_counted(lab: &TestLab, at_least: f64) {
    let metric = wait_until(Duration::from_secs(12), || {
        lab.metric_samples("n1", "felt_vxlan_outsider_drops_total")
            .iter()
            .filter_map(crate::harness::sample_value)
            .sum::<f64>()
            >= at_least
    });
    assert!(metric.is_some(), "felt_vxlan_outsider_drops_total did not count them");
}

/// The packets the lock's rule on `node` has dropped.
fn locked_out(lab: &TestLab, node: &str) -> u64 {
    locked_out_in(lab, node, "ip")
}

/// The same in felt's table of `family` (`ip6` on an IPv6 underlay).
fn locked_out_in(lab: &TestLab, node: &str, family: &str) -> u64 {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.node_ns(node), "nft", "list", "chain", family, "felt", "input"])
        .output()
        .expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split("counter packets ").nth(1).and_then(|r| r.split(' ').next()?.parse().ok()).unwrap_or(0)
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn only_nodes_reach_the_vxlan_port_and_a_node_that_leaves_is_locked_out() {
    require_root();
    let lab = TestLab::up(3, 1);
    let status = lab.status();
    let node = |n: &str| status.nodes.iter().find(|x| x.name == n).unwrap().clone();
    let (n1, n2, n3) = (node("n1"), node("n2"), node("n3"));
    let target = lab.first_pod_ip("n1");
    let to = SocketAddr::from((n1.underlay_ip, felt_proto::DEFAULT_VXLAN_PORT));
    let n1_mac = n1.vtep_mac.unwrap();
    let listener = pod_listener(&lab);
    let received = |want: &[u8], tries: u32, send: &dyn Fn()| received_by(&listener, want, tries, send);
    let inner = |from: &felt::lab::NodeStatus, what: &[u8]| {
        let src = Ipv4Addr::from(u32::from(from.pod_cidr.unwrap().network()) + 200);
        frame(from.vtep_mac.unwrap(), n1_mac, src, target, what)
    };

    // A peer's frame reaches the pod: the frame is right and the path open.
    let from_n2 = || send_from(&n2.netns, None, to, inner(&n2, b"peer n2"));
    assert!(received(b"peer n2", 10, &from_n2), "a peer's VXLAN frame never reached the pod");
    let from_n3 = || send_from(&n3.netns, None, to, inner(&n3, b"peer n3"));
    assert!(received(b"peer n3", 10, &from_n3), "n3's frame never reached the pod");

    // The same frame from the lab host (on the underlay, no node): dropped, counted.
    let ul = format!("{}-ul", lab.name);
    let before = locked_out(&lab, "n1");
    let first = before;
    let from_outsider = || send_from(&ul, None, to, inner(&n2, b"outsider"));
    assert!(!received(b"outsider", 5, &from_outsider), "an outsider's frame reached the pod");
    let counted = wait_until(Duration::from_secs(5), || locked_out(&lab, "n1") >= before + 5);
    assert!(counted.is_some(), "the lock did not count the outsider: {}", locked_out(&lab, "n1"));
    outsider_drops_are_counted(&lab, 5.0);

    // n3 leaves; its address, reused by someone else on the underlay, is locked out.
    lab.felt(&["lab", "remove-node", "n3"]);
    ip_in(&ul, &["addr", "add", &format!("{}/24", n3.underlay_ip), "dev", "br0"]);
    let before = locked_out(&lab, "n1");
    let from_old_n3 = || send_from(&ul, Some(n3.underlay_ip.into()), to, inner(&n3, b"former n3"));
    assert!(!received(b"former n3", 5, &from_old_n3), "a node that left still reaches the pod");
    assert!(wait_until(Duration::from_secs(5), || locked_out(&lab, "n1") >= before + 5).is_some());
    ip_in(&ul, &["addr", "del", &format!("{}/24", n3.underlay_ip), "dev", "br0"]);
    eprintln!("port lock: {} outsider datagrams dropped, 0 reached a pod", locked_out(&lab, "n1") - first);

    // Deleted by hand: back within a resync (5 s in the lab), peers still in.
    let n1_ns = lab.node_ns("n1");
    crate::harness::nft_in(&n1_ns, &["flush", "chain", "ip", "felt", "input"]);
    crate::harness::nft_in(&n1_ns, &["delete", "chain", "ip", "felt", "input"]);
    let back = wait_until(Duration::from_secs(12), || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &n1_ns, "nft", "list", "chain", "ip", "felt", "input"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("dport 8472"))
    });
    assert!(back.is_some(), "the port lock was not repaired");
    assert!(received(b"peer n2", 10, &from_n2), "the repaired lock shuts a peer out");
    lab.finish();
}

/// On an IPv6 underlay the lock lives in `ip6 felt`: a peer's frame from its
/// IPv6 address reaches the pod, the lab host's (an IPv6 address on the
/// underlay, no node's) is dropped and counted.
#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn on_an_ipv6_underlay_only_nodes_reach_the_vxlan_port() {
    require_root();
    let lab = TestLab::up_named(&TestLab::unique_name(), 2, 1, &["--underlay", "ipv6"]);
    let status = lab.status();
    let node = |n: &str| status.nodes.iter().find(|x| x.name == n).unwrap().clone();
    let (n1, n2) = (node("n1"), node("n2"));
    let underlay6 = |n: &felt::lab::NodeStatus| IpAddr::V6(felt::lab::underlay6(n.underlay_ip));
    assert_eq!(lab.debug_state("n1").lease.unwrap().underlay_ip, underlay6(&n1), "the agent is on IPv6");
    let target = lab.first_pod_ip("n1");
    let to = SocketAddr::new(underlay6(&n1), felt_proto::DEFAULT_VXLAN_PORT);
    let listener = pod_listener(&lab);
    let received = |want: &[u8], tries: u32, send: &dyn Fn()| received_by(&listener, want, tries, send);
    let src = Ipv4Addr::from(u32::from(n2.pod_cidr.unwrap().network()) + 200);
    let inner = |what: &[u8]| frame(n2.vtep_mac.unwrap(), n1.vtep_mac.unwrap(), src, target, what);
    let from_n2 = || send_from(&n2.netns, Some(underlay6(&n2)), to, inner(b"peer n2"));
    assert!(received(b"peer n2", 10, &from_n2), "a peer's VXLAN frame over IPv6 never reached the pod");
    let ul = format!("{}-ul", lab.name);
    let before = locked_out_in(&lab, "n1", "ip6");
    let from_outsider = || send_from(&ul, None, to, inner(b"outsider"));
    assert!(!received(b"outsider", 5, &from_outsider), "an outsider's frame reached the pod");
    let counted = wait_until(Duration::from_secs(5), || locked_out_in(&lab, "n1", "ip6") >= before + 5);
    assert!(
        counted.is_some(),
        "the ip6 lock did not count the outsider: {}",
        locked_out_in(&lab, "n1", "ip6")
    );
    outsider_drops_are_counted(&lab, 5.0);
    lab.finish();
}
