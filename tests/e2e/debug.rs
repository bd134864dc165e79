//! The debug endpoint on a real lab: readiness, metrics, drift, probes.

use std::process::Command;
use std::time::{Duration, Instant};

use felt_proto::debug::{PeerReply, ProbeStatus};
use felt_proto::entry::Op;

use crate::harness::{TestLab, bridge_in, ip_in, require_root, run, sample_value, wait_until};

fn gauge(samples: &[prometheus_parse::Sample], label: (&str, &str)) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.labels.get(label.0) == Some(label.1))
        .map(|s| sample_value(s).unwrap_or(f64::NAN))
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn endpoints_report_readiness_metrics_state_and_drift() {
    require_root();
    let lab = TestLab::up(2, 1);
    assert_eq!(lab.debug_get("n1", "/healthz").0, 200);
    let ready = wait_until(Duration::from_secs(5), || lab.debug_get("n1", "/readyz").0 == 200);
    assert!(ready.is_some(), "n1 never became ready: {}", lab.debug_get("n1", "/readyz").1);

    let peers = lab.metric_samples("n1", "felt_peers");
    assert_eq!(gauge(&peers, ("state", "desired")), Some(1.0), "{peers:?}");
    assert_eq!(gauge(&peers, ("state", "programmed")), Some(1.0), "{peers:?}");
    assert!(!lab.metric_samples("n1", "felt_build_info").is_empty());
    assert!(!lab.metric_samples("n1", "felt_reconcile_total").is_empty());
    assert!(!lab.metric_samples("n1", "felt_reconcile_duration_seconds_count").is_empty());
    assert!(!lab.metric_samples("n1", "felt_dataplane_ops_total").is_empty());

    let st = lab.debug_state("n1");
    assert_eq!(st.node, "n1");
    assert!(st.ready, "{st:?}");
    assert_eq!(st.peers[0].name, "n2");
    assert_eq!(st.peers[0].in_sync, Some(true), "{st:?}");
    assert_eq!(st.diff.as_ref().map(Vec::len), Some(0), "{st:?}");
    let (code, body) = lab.debug_get("n1", "/debug/peers/n2");
    assert_eq!(code, 200);
    match serde_json::from_str::<PeerReply>(&body) {
        Ok(PeerReply::Peer(p)) => assert_eq!(*p, st.peers[0], "one peer, as /debug/state shows it"),
        other => panic!("/debug/peers/n2 is not a peer: {other:?} {body}"),
    }
    let (code, body) = lab.debug_get("n1", "/debug/peers/nobody");
    assert_eq!(code, 404);
    let error: felt_proto::debug::ErrorReply = serde_json::from_str(&body).unwrap();
    assert_eq!(error.error, "no peer named `nobody`");

    // Drift: delete n2's FDB entry by hand; the state shows it until the repair.
    let n1 = lab.node_ns("n1");
    let fdb = bridge_in(&n1, &["fdb", "show", "dev", "felt.1"]);
    let line = fdb.lines().find(|l| l.contains(" dst ")).unwrap().to_owned();
    let mut words = line.split_whitespace();
    let (mac, dst) = (words.next().unwrap().to_owned(), words.nth(1).unwrap().to_owned());
    run(Command::new("ip")
        .args(["netns", "exec", &n1, "bridge", "fdb", "del", &mac, "dev", "felt.1", "dst", &dst, "self"]));
    let st = lab.debug_state("n1");
    assert_eq!(st.peers[0].programmed.map(|p| p.fdb), Some(false), "drift not shown: {st:?}");
    assert_eq!(st.peers[0].in_sync, Some(false));
    assert!(st.diff.iter().flatten().any(|op| matches!(op, Op::SetFdb(_))), "{st:?}");
    let (code, body) = lab.debug_get("n1", "/readyz");
    assert_eq!(code, 503, "drift must make the node not ready: {body}");
    assert!(body.contains("differs from the desired state"), "{body}");
    let repaired =
        wait_until(Duration::from_secs(6), || lab.debug_state("n1").peers[0].in_sync == Some(true));
    assert!(repaired.is_some(), "not repaired within one resync: {:?}", lab.debug_state("n1"));
    assert_eq!(lab.debug_get("n1", "/readyz").0, 200);

    // A bad document is counted by reason.
    std::fs::write(lab.registry_nodes().join(".bad.tmp"), b"[1, 2").unwrap();
    std::fs::rename(lab.registry_nodes().join(".bad.tmp"), lab.registry_nodes().join("bad.json")).unwrap();
    let counted = wait_until(Duration::from_secs(5), || {
        gauge(&lab.metric_samples("n1", "felt_bad_records_total"), ("reason", "malformed")) == Some(1.0)
    });
    assert!(counted.is_some(), "{:?}", lab.metric_samples("n1", "felt_bad_records_total"));
    assert_eq!(lab.debug_state("n1").malformed[0].document, "bad.json");

    // `felt status` inside the node: the summary, exit 0 when ready.
    let out = run(Command::new("ip").args(["netns", "exec", &n1]).arg(crate::harness::FELT).arg("status"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("node n1: ready") && text.contains("bad.json"), "{text}");
    lab.finish();
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn a_cut_underlay_shows_unreachable_within_two_probe_intervals() {
    require_root();
    let lab = TestLab::up(2, 0);
    let probe = |lab: &TestLab| {
        let (_, body) = lab.debug_get("n1", "/debug/peers/n2");
        match serde_json::from_str::<PeerReply>(&body) {
            Ok(PeerReply::Peer(p)) => p.probe.state,
            other => panic!("/debug/peers/n2 is not a peer: {other:?} {body}"),
        }
    };
    assert!(
        wait_until(Duration::from_secs(5), || probe(&lab) == ProbeStatus::Reachable).is_some(),
        "n2 never reachable"
    );

    // The lab probes every 1 s: cut n2's underlay link on the lab bridge.
    let underlay = format!("{}-ul", lab.name);
    let port = lab.node_ns("n2");
    ip_in(&underlay, &["link", "set", &port, "down"]);
    let cut = Instant::now();
    let seen = wait_until(Duration::from_secs(5), || probe(&lab) == ProbeStatus::Unreachable);
    let took = cut.elapsed();
    assert!(seen.is_some(), "n2 still {:?} after the cut", probe(&lab));
    assert!(
        took <= Duration::from_millis(2100),
        "unreachable shown after {took:?}, more than two probe intervals"
    );
    assert_eq!(gauge(&lab.metric_samples("n1", "felt_peer_reachable"), ("peer", "n2")), Some(0.0));

    ip_in(&underlay, &["link", "set", &port, "up"]);
    assert!(
        wait_until(Duration::from_secs(5), || probe(&lab) == ProbeStatus::Reachable).is_some(),
        "n2 did not come back"
    );
    lab.finish();
}
