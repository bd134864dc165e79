//! Reachability probes run from inside pod namespaces: ICMP echo and a TCP
//! round trip, done by felt itself so the lab needs no ping or netcat.
//!
//! Every probe is bounded: a fixed number of tries, each with a deadline.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket};

use crate::icmp::{echo_request, parse_echo_reply};
use crate::netns;

/// The TCP port the check's echo listeners use inside pods.
pub const ECHO_PORT: u16 = 7946;

fn icmp_socket() -> std::io::Result<Socket> {
    crate::icmp::raw_socket(Duration::from_millis(20))
}

fn recv(mut s: &Socket, buf: &mut [u8]) -> Option<usize> {
    s.read(buf).ok()
}

/// Sends one echo request per try (up to `tries`) and waits up to `wait`
/// for each; true when a reply came.
pub fn ping(dst: Ipv4Addr, tries: u16, wait: Duration) -> std::io::Result<bool> {
    let s = icmp_socket()?;
    let id = (std::process::id() as u16) ^ u16::from(dst.octets()[3]).rotate_left(8);
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    let mut buf = [0u8; 1500];
    for seq in 0..tries {
        s.send_to(&echo_request(id, seq), &to)?;
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(n) = recv(&s, &mut buf) {
                if parse_echo_reply(&buf[..n], dst, id).is_some() {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

/// The outcome of [`ping_series`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SeriesReport {
    /// Echo requests sent.
    pub sent: u32,
    /// Distinct replies received.
    pub received: u32,
}

/// Sends `count` echo requests to `dst`, one every `interval`, and counts
/// distinct replies, waiting `linger` after the last one. Bounded by
/// `count × interval + linger`.
pub fn ping_series(
    dst: Ipv4Addr,
    count: u16,
    interval: Duration,
    linger: Duration,
) -> std::io::Result<SeriesReport> {
    let s = icmp_socket()?;
    s.set_read_timeout(Some(Duration::from_millis(2)))?;
    let id = (std::process::id() as u16).wrapping_add(0x5a5a);
    let to = SockAddr::from(SocketAddrV4::new(dst, 0));
    let mut seen = vec![false; usize::from(count)];
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    let mut drain_until = |deadline: Instant, seen: &mut Vec<bool>| {
        while Instant::now() < deadline {
            if let Some(n) = recv(&s, &mut buf) {
                if let Some(seq) = parse_echo_reply(&buf[..n], dst, id) {
                    if let Some(slot) = seen.get_mut(usize::from(seq)) {
                        *slot = true;
                    }
                }
            }
        }
    };
    for seq in 0..count {
        s.send_to(&echo_request(id, seq), &to)?;
        drain_until(start + interval * u32::from(seq + 1), &mut seen);
    }
    drain_until(Instant::now() + linger, &mut seen);
    Ok(SeriesReport { sent: u32::from(count), received: seen.iter().filter(|x| **x).count() as u32 })
}

/// One TCP round trip to `dst`'s echo listener within `timeout`. Returns the
/// source address the listener saw the connection come from: the pod's own
/// address across the overlay, its node's address when it was masqueraded.
pub fn tcp_round_trip(dst: Ipv4Addr, timeout: Duration) -> std::io::Result<Ipv4Addr> {
    let mut c = TcpStream::connect_timeout(&SocketAddr::from((dst, ECHO_PORT)), timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    c.write_all(b"felt?")?;
    let mut got = [0u8; 9];
    c.read_exact(&mut got)?;
    match got.split_first_chunk::<5>() {
        Some((b"felt!", seen)) => Ok(Ipv4Addr::from(<[u8; 4]>::try_from(seen).expect("4 bytes"))),
        _ => Err(std::io::Error::other("echo listener answered garbage")),
    }
}

/// TCP echo listeners inside namespaces, stopped (and joined) on drop. Each
/// answers `felt?` with `felt!` and the four bytes of the IPv4 source
/// address it saw.
#[derive(Debug)]
pub struct EchoListeners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl EchoListeners {
    /// Starts one listener on `0.0.0.0:ECHO_PORT` in each namespace. Each
    /// runs until dropped, and at most `max_life` in any case.
    pub fn start(namespaces: &[PathBuf], max_life: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ns in namespaces {
            let listener = netns::run_in(ns, || {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT))?;
                l.set_nonblocking(true)?;
                Ok::<_, std::io::Error>(l)
            })??;
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || serve_echo(&listener, &stop, Instant::now() + max_life)));
        }
        Ok(EchoListeners { stop, threads })
    }
}

impl Drop for EchoListeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn serve_echo(listener: &TcpListener, stop: &AtomicBool, deadline: Instant) {
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((mut c, from)) => {
                let _ = c.set_nonblocking(false);
                let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                let seen = match from.ip() {
                    std::net::IpAddr::V4(ip) => ip,
                    std::net::IpAddr::V6(ip) => ip.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                let mut got = [0u8; 5];
                if c.read_exact(&mut got).is_ok() && &got == b"felt?" {
                    let mut answer = *b"felt!\0\0\0\0";
                    answer[5..].copy_from_slice(&seen.octets());
                    let _ = c.write_all(&answer);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

/// One probed pair.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PairResult {
    /// Source pod.
    pub from: String,
    /// Source pod's address.
    pub from_ip: Ipv4Addr,
    /// Destination pod.
    pub to: String,
    /// Destination address.
    pub ip: Ipv4Addr,
    /// ICMP echo answered.
    pub icmp: bool,
    /// TCP round trip done, with the source address the destination saw;
    /// the error otherwise.
    pub tcp: Result<Ipv4Addr, String>,
}

impl PairResult {
    /// Both probes passed, and the destination saw the source pod's own
    /// address: pod-to-pod traffic is never NATed.
    pub fn ok(&self) -> bool {
        self.icmp && self.tcp == Ok(self.from_ip)
    }
}

/// One pod's connection to the outside host.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EgressResult {
    /// The pod.
    pub from: String,
    /// Its address.
    pub from_ip: Ipv4Addr,
    /// Its node's underlay address: what the outside host must see.
    pub node_ip: Ipv4Addr,
    /// The source address the outside host saw; the error otherwise.
    pub seen: Result<Ipv4Addr, String>,
}

impl EgressResult {
    /// The outside host saw the node's address, never the pod's.
    pub fn ok(&self) -> bool {
        self.seen == Ok(self.node_ip)
    }
}

/// A pod probing from inside its namespace.
#[derive(Debug, Clone)]
pub struct Prober {
    /// Its namespace.
    pub netns: PathBuf,
    /// Its name.
    pub name: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Its node's underlay address.
    pub node_ip: Ipv4Addr,
}

/// How many TCP round trips one pod has in flight during a check.
const TCP_IN_FLIGHT: usize = 16;

/// Probes every target, then the outside host at `outside`, from inside the
/// pod's namespace: one ICMP sweep of all targets (three rounds of 700 ms
/// at most), then TCP round trips [`TCP_IN_FLIGHT`] at a time (1 s each at
/// most: every pod is on this machine). A fabric that answers nothing fails in seconds, whatever its size.
pub fn probe_from(
    pod: Prober,
    targets: &[(String, Ipv4Addr)],
    outside: Ipv4Addr,
) -> std::io::Result<(Vec<PairResult>, EgressResult)> {
    let targets = targets.to_vec();
    netns::run_in(&pod.netns.clone(), move || {
        let ips: Vec<Ipv4Addr> = targets.iter().map(|(_, ip)| *ip).collect();
        let answered = ping_sweep(&ips, 3, Duration::from_millis(700)).unwrap_or_default();
        // Threads started here share the pod's namespace.
        let mut tcp: Vec<Result<Ipv4Addr, String>> = Vec::with_capacity(ips.len());
        for chunk in ips.chunks(TCP_IN_FLIGHT) {
            std::thread::scope(|scope| {
                let running: Vec<_> = chunk
                    .iter()
                    .map(|ip| {
                        scope.spawn(move || {
                            tcp_round_trip(*ip, Duration::from_secs(1)).map_err(|e| e.to_string())
                        })
                    })
                    .collect();
                tcp.extend(
                    running.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("probe panicked".into()))),
                );
            });
        }
        let pairs = targets
            .iter()
            .zip(tcp)
            .map(|((to, ip), tcp)| PairResult {
                from: pod.name.clone(),
                from_ip: pod.ip,
                to: to.clone(),
                ip: *ip,
                icmp: answered.contains(ip),
                tcp,
            })
            .collect();
        let egress = EgressResult {
            from: pod.name.clone(),
            from_ip: pod.ip,
            node_ip: pod.node_ip,
            seen: tcp_round_trip(outside, Duration::from_secs(2)).map_err(|e| e.to_string()),
        };
        (pairs, egress)
    })
}

/// Pings every address of `targets` at once, `rounds` times at most (each
/// round re-sends to those that have not answered and waits `wait`);
/// returns those that answered.
pub fn ping_sweep(
    targets: &[Ipv4Addr],
    rounds: u16,
    wait: Duration,
) -> std::io::Result<std::collections::BTreeSet<Ipv4Addr>> {
    let s = icmp_socket()?;
    let id = (std::process::id() as u16) ^ 0x5357;
    let mut answered = std::collections::BTreeSet::new();
    let mut buf = [0u8; 1500];
    for seq in 0..rounds {
        let pending: Vec<Ipv4Addr> = targets.iter().copied().filter(|ip| !answered.contains(ip)).collect();
        if pending.is_empty() {
            break;
        }
        for ip in &pending {
            s.send_to(&echo_request(id, seq), &SockAddr::from(SocketAddrV4::new(*ip, 0)))?;
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && answered.len() < targets.len() {
            let Some(n) = recv(&s, &mut buf) else { continue };
            let Some(src) = buf.get(12..16).map(|b| Ipv4Addr::new(b[0], b[1], b[2], b[3])) else { continue };
            if pending.contains(&src) && parse_echo_reply(&buf[..n], src, id).is_some() {
                answered.insert(src);
            }
        }
    }
    Ok(answered)
}
