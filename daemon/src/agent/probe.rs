//! Peer health probes: every interval, one ICMP echo to each peer's VTEP
//! address over the overlay, so a node can say which peers it really
//! reaches and how fast — not just what it programmed.
//!
//! Bounded: one packet per peer per interval, replies awaited at most
//! `min(interval / 2, 1 s)`. A peer is `unreachable` from its first
//! unanswered probe, so a cut shows within two intervals.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::SockAddr;
use tracing::warn;

use super::metrics::{PeerLabel, ResultLabel};
use super::status::{ProbeStatus, Shared, rfc3339};
use crate::icmp::{echo_request, parse_echo_reply, raw_socket};

/// Starts the prober thread. Its interval is the config's at each round
/// (a SIGHUP may change it).
pub fn spawn(shared: Arc<Shared>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("felt-probe".into()).spawn(move || run(&shared))
}

fn run(shared: &Shared) {
    let sock = match raw_socket(Duration::from_millis(10)) {
        Ok(s) => s,
        Err(e) => {
            let message = format!("peer probes are off: cannot open an ICMP socket: {e}");
            warn!("{message}");
            shared.error(message);
            return;
        }
    };
    let id = (std::process::id() as u16) ^ 0x4654;
    let mut seq: u16 = 0;
    let mut buf = [0u8; 1500];
    loop {
        let interval = shared.probe_interval();
        let wait = (interval / 2).min(Duration::from_secs(1));
        let round = Instant::now();
        seq = seq.wrapping_add(1);
        // IPv4 VTEPs only: an IPv6-only cluster's peers are not probed yet.
        let targets: Vec<(String, Ipv4Addr)> =
            shared.state().peers.iter().filter_map(|p| Some((p.name.clone(), p.vtep_ip()?))).collect();
        let mut sent: BTreeMap<Ipv4Addr, Instant> = BTreeMap::new();
        for (_, ip) in &targets {
            if sock.send_to(&echo_request(id, seq), &SockAddr::from(SocketAddrV4::new(*ip, 0))).is_ok() {
                sent.insert(*ip, Instant::now());
            }
        }
        let mut rtts: BTreeMap<Ipv4Addr, Duration> = BTreeMap::new();
        while round.elapsed() < wait && rtts.len() < sent.len() {
            let Ok(n) = (&sock).read(&mut buf) else { continue };
            if n < 20 {
                continue;
            }
            let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
            if let (Some(at), Some(s)) = (sent.get(&from), parse_echo_reply(&buf[..n], from, id)) {
                if s == seq {
                    rtts.entry(from).or_insert_with(|| at.elapsed());
                }
            }
        }
        record(shared, &targets, &rtts, SystemTime::now());
        if let Some(rest) = interval.checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn record(
    shared: &Shared,
    targets: &[(String, Ipv4Addr)],
    rtts: &BTreeMap<Ipv4Addr, Duration>,
    now: SystemTime,
) {
    let m = &shared.metrics;
    let mut probes = shared.probes();
    let live: HashSet<&str> = targets.iter().map(|(n, _)| n.as_str()).collect();
    let gone: Vec<String> = probes.keys().filter(|k| !live.contains(k.as_str())).cloned().collect();
    for name in gone {
        probes.remove(&name);
        let label = PeerLabel { peer: name };
        m.peer_reachable.remove(&label);
        m.peer_rtt.remove(&label);
    }
    let stamp = rfc3339(now);
    for (name, ip) in targets {
        let p = probes.entry(name.clone()).or_default();
        p.last_probe = Some(stamp.clone());
        let label = PeerLabel { peer: name.clone() };
        match rtts.get(ip) {
            Some(rtt) => {
                p.state = ProbeStatus::Reachable;
                p.rtt_ms = Some(rtt.as_secs_f64() * 1e3);
                p.last_success = Some(stamp.clone());
                p.consecutive_failures = 0;
                m.peer_reachable.get_or_create(&label).set(1);
                m.peer_rtt.get_or_create(&label).set(rtt.as_secs_f64());
                m.probes.get_or_create(&ResultLabel { result: "ok" }).inc();
            }
            None => {
                p.state = ProbeStatus::Unreachable;
                p.consecutive_failures += 1;
                m.peer_reachable.get_or_create(&label).set(0);
                m.probes.get_or_create(&ResultLabel { result: "error" }).inc();
            }
        }
    }
}
