//! `felt status`: read a node's debug endpoint and say, at a glance, what
//! it believes and what is wrong. Problems come first.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

/// Why the endpoint could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connecting, sending or receiving failed.
    #[error("talking to the debug endpoint at {addr}")]
    Io {
        /// The endpoint.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not HTTP or not JSON.
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
    let io = |source| FetchError::Io { addr, source };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map_err(io)?;
    s.set_read_timeout(Some(Duration::from_secs(3))).map_err(io)?;
    s.set_write_timeout(Some(Duration::from_secs(3))).map_err(io)?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(io)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| FetchError::Garbled { addr, what: "no HTTP header".into() })?;
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).ok_or_else(|| {
        FetchError::Garbled { addr, what: format!("status line `{}`", head.lines().next().unwrap_or("")) }
    })?;
    Ok((code, body.to_owned()))
}

/// `/debug/state` as JSON.
pub fn fetch_state(addr: SocketAddr) -> Result<Value, FetchError> {
    let (code, body) = get(addr, "/debug/state")?;
    if code != 200 {
        return Err(FetchError::Garbled { addr, what: format!("HTTP {code}") });
    }
    serde_json::from_str(&body).map_err(|e| FetchError::Garbled { addr, what: format!("not JSON: {e}") })
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Everything wrong, most important first.
pub fn problems(state: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for w in state["not_ready"].as_array().into_iter().flatten() {
        out.push(format!("not ready: {}", s(w)));
    }
    if let Some(e) = state["observe_error"].as_str() {
        out.push(format!("cannot read the data plane: {e}"));
    }
    for p in state["peers"].as_array().into_iter().flatten() {
        let name = s(&p["name"]);
        if p["in_sync"] == false {
            let missing: Vec<&str> =
                ["route", "neighbour", "fdb"].into_iter().filter(|k| p["programmed"][k] == false).collect();
            out.push(format!("peer {name}: not programmed: {} missing", missing.join(", ")));
        }
        if p["probe"]["state"] == "unreachable" {
            let failures = p["probe"]["consecutive_failures"].as_u64().unwrap_or(0);
            out.push(format!(
                "peer {name}: VTEP {} unreachable over the overlay ({failures} probe{} failed in a row)",
                s(&p["vtep_ip"]),
                if failures == 1 { "" } else { "s" }
            ));
        }
    }
    let stale: Vec<String> = state["diff"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|op| op["op"].as_str().is_some_and(|o| o.starts_with("del_")))
        .map(|op| format!("{} {}", s(&op["op"]), op["entry"]))
        .collect();
    for d in stale {
        out.push(format!("stale entry awaiting removal: {d}"));
    }
    for r in state["rejected"].as_array().into_iter().flatten() {
        out.push(format!("record {} refused ({}): {}", s(&r["node"]), s(&r["reason"]), s(&r["message"])));
    }
    for m in state["malformed"].as_array().into_iter().flatten() {
        out.push(format!("document {} is malformed: {}", s(&m["document"]), s(&m["error"])));
    }
    for e in state["recent_errors"].as_array().into_iter().flatten().rev().take(5) {
        out.push(format!("error at {}: {}", s(&e["at"]), s(&e["message"])));
    }
    out
}

/// The human summary `felt status` prints.
pub fn render(state: &Value) -> String {
    let mut out = String::new();
    let lease = &state["lease"];
    let ready = if state["ready"] == true { "ready" } else { "NOT READY" };
    out.push_str(&format!(
        "node {}: {ready}, backend {}\n",
        s(&state["node"]),
        s(&state["config"]["backend"])
    ));
    if lease.is_null() {
        out.push_str("lease: none yet\n");
    } else {
        out.push_str(&format!(
            "lease: {} (VTEP {} {} on {}, mtu {}), underlay {} {} (mtu {})\n",
            s(&lease["pod_cidr"]),
            s(&lease["vtep_ip"]),
            s(&lease["vtep_mac"]),
            s(&lease["device"]),
            s(&lease["mtu"]),
            s(&lease["underlay_iface"]),
            s(&lease["underlay_ip"]),
            s(&lease["underlay_mtu"]),
        ));
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
    let peers = state["peers"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "\n{:<12} {:<18} {:<16} {:<18} {:<6} {:<6} {:<6} {:<12} {:>9}\n",
        "PEER", "POD CIDR", "UNDERLAY", "VTEP MAC", "ROUTE", "NEIGH", "FDB", "PROBE", "RTT"
    ));
    let yes = |v: &Value| match v {
        Value::Bool(true) => "ok",
        Value::Bool(false) => "MISSING",
        _ => "?",
    };
    for p in &peers {
        let rtt = p["probe"]["rtt_ms"].as_f64().map_or("-".to_owned(), |r| format!("{r:.2} ms"));
        out.push_str(&format!(
            "{:<12} {:<18} {:<16} {:<18} {:<6} {:<6} {:<6} {:<12} {:>9}\n",
            s(&p["name"]),
            s(&p["pod_cidr"]),
            s(&p["underlay_ip"]),
            s(&p["vtep_mac"]),
            yes(&p["programmed"]["route"]),
            yes(&p["programmed"]["neighbour"]),
            yes(&p["programmed"]["fdb"]),
            s(&p["probe"]["state"]),
            rtt
        ));
    }
    if peers.is_empty() {
        out.push_str("(no peers)\n");
    }
    let engine = &state["engine"];
    if engine.is_object() {
        let drops: u64 =
            engine["drops"].as_object().map_or(0, |d| d.values().filter_map(Value::as_u64).sum());
        out.push_str(&format!(
            "\nengine (offloads {}): tx {} packets in {} super-packets, rx {} packets in {} coalesced writes, {drops} dropped\n",
            s(&engine["offloads"]),
            s(&engine["tx_packets"]),
            s(&engine["tx_super_packets"]),
            s(&engine["rx_packets"]),
            s(&engine["rx_coalesced"]),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn problems_come_first_and_name_the_cause() {
        let state = json!({
            "node": "n1", "ready": false, "not_ready": ["the data plane does not match the desired state yet"],
            "config": {"backend": "kernel"}, "lease": null,
            "peers": [{"name": "n2", "vtep_ip": "10.244.1.0", "in_sync": false,
                       "programmed": {"route": true, "neighbour": true, "fdb": false},
                       "probe": {"state": "unreachable", "consecutive_failures": 2}}],
            "diff": [{"op": "set_fdb", "entry": {}}, {"op": "del_route", "entry": "10.244.9.0/24"}],
            "rejected": [{"node": "x", "reason": "clash", "message": "overlaps peer n2"}],
            "malformed": [{"document": "bad.json", "error": "EOF"}],
            "recent_errors": [],
        });
        let p = problems(&state);
        assert!(p[0].starts_with("not ready"), "{p:?}");
        assert!(!render(&state).contains("engine"), "kernel mode has no engine line");
        let mut userspace = state.clone();
        userspace["engine"] = json!({"offloads": "tso,gso,gro", "tx_packets": 90, "tx_super_packets": 2,
            "rx_packets": 45, "rx_coalesced": 1, "drops": {"bad_vni": 3, "unknown_peer": 4}});
        let text = render(&userspace);
        assert!(
            text.contains("engine (offloads tso,gso,gro): tx 90 packets in 2 super-packets, rx 45 packets in 1 coalesced writes, 7 dropped"),
            "{text}"
        );
        assert!(p.iter().any(|x| x.contains("n2: not programmed: fdb missing")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("unreachable")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("stale entry awaiting removal: del_route")), "{p:?}");
        assert!(p.iter().any(|x| x.contains("record x refused (clash)")), "{p:?}");
        let text = render(&state);
        assert!(text.find("problems:").unwrap() < text.find("PEER").unwrap());
        assert!(text.contains("MISSING"));
    }
}
