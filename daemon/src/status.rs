//! `felt status`: read a node's debug endpoint and say, at a glance, what
//! it believes and what is wrong. Problems come first.

use std::net::SocketAddr;
use std::time::Duration;

use felt_proto::debug::{PeerState, ProbeStatus, State};

use crate::http::{self, HttpError};

/// Why the endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer.
    #[error("talking to the debug endpoint")]
    Http(#[from] HttpError),
    /// The answer was not what the debug API says.
    #[error("the debug endpoint at {addr} answered something unexpected: {what}")]
    Garbled {
        /// The endpoint.
        addr: SocketAddr,
        /// What was wrong.
        what: String,
    },
}

/// One `GET path` with a 3 s budget; returns the status code and body.
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), FetchError> {
    Ok(http::get(addr, path, Duration::from_secs(3))?)
}

/// `/debug/state`, typed.
pub fn fetch_state(addr: SocketAddr) -> Result<State, FetchError> {
    let (code, body) = get(addr, "/debug/state")?;
    if code != 200 {
        return Err(FetchError::Garbled { addr, what: format!("HTTP {code}") });
    }
    serde_json::from_str(&body)
        .map_err(|e| FetchError::Garbled { addr, what: format!("not the debug API's state: {e}") })
}

fn or_dash<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// Everything wrong, most important first.
pub fn problems(state: &State) -> Vec<String> {
    let mut out: Vec<String> = state.not_ready.iter().map(|w| format!("not ready: {w}")).collect();
    if let Some(e) = &state.observe_error {
        out.push(format!("cannot read the data plane: {e}"));
    }
    for p in &state.peers {
        if let (Some(false), Some(programmed)) = (p.in_sync, p.programmed) {
            out.push(format!("peer {}: not programmed: {} missing", p.name, programmed.missing().join(", ")));
        }
        if p.probe.state == ProbeStatus::Unreachable {
            let failures = p.probe.consecutive_failures;
            out.push(format!(
                "peer {}: VTEP {} unreachable over the overlay ({failures} probe{} failed in a row)",
                p.name,
                or_dash(p.vtep_ip.map(std::net::IpAddr::V4).or(p.vtep_ip6.map(std::net::IpAddr::V6))),
                if failures == 1 { "" } else { "s" }
            ));
        }
    }
    for op in state.diff.iter().flatten().filter(|op| op.is_removal()) {
        let entry = serde_json::to_value(op).map(|v| v["entry"].to_string()).unwrap_or_default();
        out.push(format!("stale entry awaiting removal: {} {entry}", op.kind()));
    }
    for r in &state.rejected {
        out.push(format!("record {} refused ({}): {}", r.node, r.reason.label(), r.message));
    }
    for m in &state.malformed {
        out.push(format!("document {} is malformed: {}", m.document, m.error));
    }
    for w in &state.warnings {
        out.push(format!("warning: {w}"));
    }
    for e in state.recent_errors.iter().rev().take(5) {
        out.push(format!("error at {}: {}", e.at, e.message));
    }
    out
}

/// The human summary `felt status` prints.
pub fn render(state: &State) -> String {
    let mut out = String::new();
    let ready = if state.ready { "ready" } else { "NOT READY" };
    let compat = match state.config.compat.as_str() {
        "none" => String::new(),
        other => format!(", --compat {other}"),
    };
    out.push_str(&format!("node {}: {ready}, backend {}{compat}\n", state.node, state.config.backend));
    match &state.lease {
        None => out.push_str("lease: none yet\n"),
        Some(l) => out.push_str(&format!(
            "lease: {} (VTEP {} {} on {}, mtu {}), underlay {} {} (mtu {})\n",
            // An IPv6-only cluster's lease is its IPv6 one.
            or_dash(l.pod_cidr.map(|c| c.to_string()).or(l.pod_cidr6.map(|c| c.to_string()))),
            or_dash(l.vtep_ip.map(|v| v.to_string()).or(l.vtep_ip6.map(|v| v.to_string()))),
            l.vtep_mac,
            l.device,
            l.mtu,
            l.underlay_iface,
            l.underlay_ip,
            l.underlay_mtu,
        )),
    }
    if let Some(l) = &state.lease {
        if let (Some(_), Some(cidr), Some(vtep)) = (l.pod_cidr, l.pod_cidr6, l.vtep_ip6) {
            out.push_str(&format!("lease ipv6: {cidr} (VTEP {vtep} on {})\n", l.device));
        }
    }
    let problems = problems(state);
    if problems.is_empty() {
        out.push_str("problems: none\n");
    } else {
        out.push_str("problems:\n");
        for p in &problems {
            out.push_str(&format!("  - {p}\n"));
        }
    }
    out.push_str(&peer_table(&state.peers));
    if state.peers.is_empty() {
        out.push_str("(no peers)\n");
    }
    if let Some(engine) = &state.engine {
        out.push_str(&format!(
            "\nengine (offloads {}): tx {} packets in {} super-packets, rx {} packets in {} coalesced writes, {} dropped\n",
            or_dash(engine.offloads.as_deref()),
            engine.tx_packets,
            engine.tx_super_packets,
            engine.rx_packets,
            engine.rx_coalesced,
            engine.dropped(),
        ));
    }
    out
}

/// One row per peer: its entries and how it answers probes.
fn peer_table(peers: &[PeerState]) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n{:<12} {:<19} {:<16} {:<18} {:<6} {:<6} {:<6} {:<12} {:>9}\n",
        "PEER", "POD CIDR", "UNDERLAY", "VTEP MAC", "ROUTE", "NEIGH", "FDB", "PROBE", "RTT"
    ));
    let yes = |v: Option<bool>| match v {
        Some(true) => "ok",
        Some(false) => "MISSING",
        None => "?",
    };
    for p in peers {
        let rtt = p.probe.rtt_ms.map_or("-".to_owned(), |r| format!("{r:.2} ms"));
        let probe = serde_json::to_value(p.probe.state).map(|v| v.as_str().unwrap_or("?").to_owned());
        out.push_str(&format!(
            "{:<12} {:<19} {:<16} {:<18} {:<6} {:<6} {:<6} {:<12} {:>9}\n",
            p.name,
            // An IPv6-only peer's IPv6 subnet in the column.
            or_dash(p.pod_cidr.map(|c| c.to_string()).or(p.pod_cidr6.map(|c| c.to_string()))),
            p.underlay_ip.to_string(),
            p.vtep_mac.to_string(),
            yes(p.programmed.map(|x| x.route)),
            yes(p.programmed.map(|x| x.neighbour)),
            yes(p.programmed.map(|x| x.fdb)),
            probe.unwrap_or_default(),
            rtt
        ));
        // A dual-stack peer's IPv6 subnet, under its IPv4 one.
        if let (Some(_), Some(cidr6)) = (p.pod_cidr, p.pod_cidr6) {
            out.push_str(&format!("{:<12} {}\n", "", cidr6));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn problems_come_first_and_name_the_cause() {
        let state: State = serde_json::from_value(json!({
            "node": "n1", "ready": false, "not_ready": ["the data plane does not match the desired state yet"],
            "config": {"registry": "file", "registry_location": "/r", "backend": "kernel",
                       "network": "10.244.0.0/16", "subnet_len": 24, "vni": 1, "port": 8472,
                       "resync_seconds": 30.0, "probe_interval_seconds": 5.0, "subnet_file": "/s",
                       "userspace_offloads": null},
            "lease": null,
            "peers": [{"name": "n2", "pod_cidr": "10.244.1.0/24", "underlay_ip": "198.18.0.12",
                       "vtep_ip": "10.244.1.0", "vtep_mac": "0a:00:00:00:00:02",
                       "desired": {"route": {"dst": "10.244.1.0/24", "gateway": "10.244.1.0"},
                                   "neighbour": {"ip": "10.244.1.0", "mac": "0a:00:00:00:00:02"},
                                   "fdb": {"mac": "0a:00:00:00:00:02", "dst": "198.18.0.12"}},
                       "in_sync": false,
                       "programmed": {"route": true, "neighbour": true, "fdb": false},
                       "probe": {"state": "unreachable", "rtt_ms": null, "last_probe": null,
                                 "last_success": null, "consecutive_failures": 2}}],
            "diff": [{"op": "set_fdb", "entry": {"mac": "0a:00:00:00:00:02", "dst": "198.18.0.12"}},
                     {"op": "del_route", "entry": "10.244.9.0/24"}],
            "observe_error": null, "pending": [], "registry_synced": true, "last_reconcile": null,
            "rejected": [{"node": "x", "reason": "clash", "message": "overlaps peer n2"}],
            "malformed": [{"document": "bad.json", "error": "EOF"}],
            "recent_errors": [], "engine": null,
        }))
        .expect("the debug API's shape");
        let p = problems(&state);
        assert!(p[0].starts_with("not ready"), "{p:?}");
        assert!(!render(&state).contains("engine"), "kernel mode has no engine line");
        let mut userspace = state.clone();
        userspace.engine = Some(
            serde_json::from_value(json!({"offloads": "tso,gso,gro", "tx_packets": 90,
            "tx_bytes": 0, "rx_bytes": 0, "tx_super_packets": 2, "rx_packets": 45, "rx_coalesced": 1,
            "drops": {"bad_vni": 3, "unknown_peer": 4}}))
            .unwrap(),
        );
        let text = render(&userspace);
        assert!(
            text.contains("engine (offloads tso,gso,gro): tx 90 packets in 2 super-packets, rx 45 packets in 1 coalesced writes, 7 dropped"),
            "{text}"
        );
        assert!(p.iter().any(|x| x.contains("n2: not programmed: fdb missing")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("unreachable")), "{p:?}");
        assert!(p.iter().any(|x| x == "stale entry awaiting removal: del_route \"10.244.9.0/24\""), "{p:?}");
        assert!(p.iter().any(|x| x.contains("record x refused (clash)")), "{p:?}");
        let text = render(&state);
        assert!(text.find("problems:").unwrap() < text.find("PEER").unwrap());
        assert!(text.contains("MISSING") && text.contains("unreachable"), "{text}");
        assert!(!text.contains("fd00"), "no IPv6 lines outside a dual-stack cluster");
        let mut dual = state.clone();
        dual.peers[0].pod_cidr6 = Some("fd00:f31:244:1::/64".parse().unwrap());
        dual.lease = Some(
            serde_json::from_value(json!({"pod_cidr": "10.244.0.0/24", "vtep_ip": "10.244.0.0",
            "pod_cidr6": "fd00:f31:244::/64", "vtep_ip6": "fd00:f31:244::", "vtep_mac": "0a:00:00:00:00:01",
            "underlay_iface": "eth0", "underlay_ip": "198.18.0.11", "underlay_mtu": 1500, "device": "felt.1",
            "mtu": 1450}))
            .unwrap(),
        );
        let text = render(&dual);
        assert!(text.contains("lease ipv6: fd00:f31:244::/64 (VTEP fd00:f31:244:: on felt.1)\n"), "{text}");
        assert!(text.contains("\n             fd00:f31:244:1::/64\n"), "{text}");
    }
}
