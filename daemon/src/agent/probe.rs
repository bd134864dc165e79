//! Peer health probes: every interval, one ICMP echo to each peer's VTEP
//! address over the overlay (its IPv4 one; its IPv6 one, over ICMPv6, in an
//! IPv6-only cluster), so a node can say which peers it really reaches and
//! how fast — not just what it programmed.
//!
//! Bounded: one packet per peer per interval, replies awaited at most
//! `min(interval / 2, 1 s)`. A peer is `unreachable` from its first
//! unanswered probe, so a cut shows within two intervals.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use socket2::SockAddr;
use tracing::warn;

use super::metrics::{PeerLabel, ResultLabel};
use super::status::{ProbeStatus, Shared, rfc3339};
use crate::icmp::{
    echo_request, echo_request6, parse_echo_reply, parse_echo_reply6, raw_socket, raw_socket6,
};

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
    // Opened when a peer first needs it (an IPv6-only cluster's): a raw
    // ICMPv6 socket gets a copy of every ICMPv6 message the node receives.
    // As a std datagram socket: its recv_from names the sender, which an
    // ICMPv6 message does not carry.
    let mut sock6: Option<UdpSocket> = None;
    let mut sock6_failed = false;
    let id = (std::process::id() as u16) ^ 0x4654;
    let mut seq: u16 = 0;
    let mut buf = [0u8; 1500];
    loop {
        let interval = shared.probe_interval();
        let wait = (interval / 2).min(Duration::from_secs(1));
        let round = Instant::now();
        seq = seq.wrapping_add(1);
        let targets: Vec<(String, IpAddr)> = shared
            .state()
            .peers
            .iter()
            .filter_map(|p| {
                let vtep = p.vtep_ip().map(IpAddr::V4).or_else(|| p.vtep_ip6().map(IpAddr::V6))?;
                Some((p.name.clone(), vtep))
            })
            .collect();
        if sock6.is_none() && !sock6_failed && targets.iter().any(|(_, ip)| ip.is_ipv6()) {
            match raw_socket6(Duration::from_millis(10)) {
                Ok(s) => sock6 = Some(s.into()),
                Err(e) => {
                    sock6_failed = true;
                    warn!(error = %e, "IPv6 VTEPs are not probed: cannot open an ICMPv6 socket");
                }
            }
        }
        let mut sent: BTreeMap<IpAddr, Instant> = BTreeMap::new();
        for (_, ip) in &targets {
            let ok = match ip {
                IpAddr::V4(v4) => {
                    sock.send_to(&echo_request(id, seq), &SockAddr::from(SocketAddrV4::new(*v4, 0))).is_ok()
                }
                IpAddr::V6(v6) => sock6.as_ref().is_some_and(|s| {
                    s.send_to(&echo_request6(id, seq), SocketAddrV6::new(*v6, 0, 0, 0)).is_ok()
                }),
            };
            if ok {
                sent.insert(*ip, Instant::now());
            }
        }
        let (want4, want6) = (sent.keys().any(IpAddr::is_ipv4), sent.keys().any(IpAddr::is_ipv6));
        let mut rtts: BTreeMap<IpAddr, Duration> = BTreeMap::new();
        while round.elapsed() < wait && rtts.len() < sent.len() {
            let mut replied = |from: IpAddr| {
                if let Some(at) = sent.get(&from) {
                    rtts.entry(from).or_insert_with(|| at.elapsed());
                }
            };
            if want4 {
                if let Ok(n) = (&sock).read(&mut buf) {
                    if n >= 20 {
                        let from = Ipv4Addr::new(buf[12], buf[13], buf[14], buf[15]);
                        if parse_echo_reply(&buf[..n], from, id) == Some(seq) {
                            replied(IpAddr::V4(from));
                        }
                    }
                }
            }
            if let Some(s6) = sock6.as_ref().filter(|_| want6) {
                if let Ok((n, from)) = s6.recv_from(&mut buf) {
                    if parse_echo_reply6(&buf[..n], id) == Some(seq) {
                        replied(from.ip());
                    }
                }
            }
        }
        record(shared, &targets, &rtts, SystemTime::now());
        if let Some(rest) = interval.checked_sub(round.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn record(shared: &Shared, targets: &[(String, IpAddr)], rtts: &BTreeMap<IpAddr, Duration>, now: SystemTime) {
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
