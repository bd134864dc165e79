//! Reachability probes run from inside pod namespaces: ICMP echo and a TCP
//! round trip, done by felt itself so the lab needs no ping or netcat.
//!
//! Every probe is bounded: a fixed number of tries, each with a deadline.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{SockAddr, Socket};

use crate::icmp::{echo_request, echo_request6, parse_echo_reply, parse_echo_reply6};
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

/// Sends `count` echo requests to `dst` (IPv4 or IPv6), one every
/// `interval`, and counts distinct replies, waiting `linger` after the last
/// one. Bounded by `count × interval + linger`.
pub fn ping_series(
    dst: impl Into<IpAddr>,
    count: u16,
    interval: Duration,
    linger: Duration,
) -> std::io::Result<SeriesReport> {
    let dst = dst.into();
    let id = (std::process::id() as u16).wrapping_add(0x5a5a);
    let mut seen = vec![false; usize::from(count)];
    let mut buf = [0u8; 1500];
    let start = Instant::now();
    // Each family's socket, as a std datagram socket: its recv_from names
    // the sender, which an ICMPv6 message does not carry.
    let s: std::net::UdpSocket = match dst {
        IpAddr::V4(_) => icmp_socket()?.into(),
        IpAddr::V6(_) => crate::icmp::raw_socket6(Duration::from_millis(2))?.into(),
    };
    s.set_read_timeout(Some(Duration::from_millis(2)))?;
    let mut drain_until = |deadline: Instant, seen: &mut Vec<bool>| {
        while Instant::now() < deadline {
            let Ok((n, from)) = s.recv_from(&mut buf) else { continue };
            let seq = match dst {
                IpAddr::V4(v4) => parse_echo_reply(&buf[..n], v4, id),
                IpAddr::V6(_) => parse_echo_reply6(&buf[..n], id).filter(|_| from.ip() == dst),
            };
            if let Some(slot) = seq.and_then(|seq| seen.get_mut(usize::from(seq))) {
                *slot = true;
            }
        }
    };
    for seq in 0..count {
        let request = match dst {
            IpAddr::V4(_) => echo_request(id, seq),
            IpAddr::V6(_) => echo_request6(id, seq),
        };
        s.send_to(&request, SocketAddr::new(dst, 0))?;
        drain_until(start + interval * u32::from(seq + 1), &mut seen);
    }
    drain_until(Instant::now() + linger, &mut seen);
    Ok(SeriesReport { sent: u32::from(count), received: seen.iter().filter(|x| **x).count() as u32 })
}

/// One TCP round trip to `dst`'s echo listener within `timeout`. Returns the
/// source address the listener saw the connection come from: the pod's own
/// address across the overlay, its node's address when it was masqueraded.
pub fn tcp_round_trip(dst: IpAddr, timeout: Duration) -> std::io::Result<IpAddr> {
    let mut c = TcpStream::connect_timeout(&SocketAddr::from((dst, ECHO_PORT)), timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    c.write_all(b"felt?")?;
    let mut got = [0u8; 21];
    c.read_exact(&mut got)?;
    match got.split_first_chunk::<5>() {
        Some((b"felt!", seen)) => {
            let seen = Ipv6Addr::from(<[u8; 16]>::try_from(seen).expect("16 bytes"));
            Ok(seen.to_ipv4_mapped().map_or(IpAddr::V6(seen), IpAddr::V4))
        }
        _ => Err(std::io::Error::other("echo listener answered garbage")),
    }
}

/// TCP echo listeners inside namespaces, stopped (and joined) on drop. Each
/// answers `felt?` with `felt!` and the sixteen bytes of the source address
/// it saw (an IPv4 one mapped, `::ffff:a.b.c.d`).
#[derive(Debug)]
pub struct EchoListeners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

/// A listener on `ECHO_PORT` for both families (`[::]`, not IPv6-only); on
/// a kernel without IPv6, IPv4 alone.
fn echo_listener() -> std::io::Result<TcpListener> {
    let dual = || -> std::io::Result<TcpListener> {
        let s = Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SockAddr::from(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, ECHO_PORT, 0, 0)))?;
        s.listen(128)?;
        Ok(s.into())
    };
    let l = dual().or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

impl EchoListeners {
    /// Starts one listener on `ECHO_PORT` (both families) in each namespace.
    /// Each runs until dropped, and at most `max_life` in any case.
    pub fn start(namespaces: &[PathBuf], max_life: Duration) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for ns in namespaces {
            let listener = netns::run_in(ns, echo_listener)??;
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
                    IpAddr::V4(ip) => ip.to_ipv6_mapped(),
                    IpAddr::V6(ip) => ip,
                };
                let mut got = [0u8; 5];
                if c.read_exact(&mut got).is_ok() && &got == b"felt?" {
                    let mut answer = [0u8; 21];
                    answer[..5].copy_from_slice(b"felt!");
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
    /// Source pod's address (of the destination's family).
    pub from_ip: IpAddr,
    /// Destination pod.
    pub to: String,
    /// Destination address: IPv4, or in a dual-stack lab IPv6 too (one
    /// pair each).
    pub ip: IpAddr,
    /// ICMP echo answered.
    pub icmp: bool,
    /// TCP round trip done, with the source address the destination saw;
    /// the error otherwise.
    pub tcp: Result<IpAddr, String>,
}

impl PairResult {
    /// Both probes passed, and the destination saw the source pod's own
    /// address: pod-to-pod traffic is never NATed.
    pub fn ok(&self) -> bool {
        self.icmp && self.tcp == Ok(self.from_ip)
    }
}

/// One pod's connection to the outside host, over one family.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EgressResult {
    /// The pod.
    pub from: String,
    /// Its address.
    pub from_ip: IpAddr,
    /// Its node's underlay address of that family: what the outside host must see.
    pub node_ip: IpAddr,
    /// The source address the outside host saw; the error otherwise.
    pub seen: Result<IpAddr, String>,
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
    /// Its IPv4 address; none in an IPv6-only lab.
    pub ip: Option<Ipv4Addr>,
    /// Its IPv6 address, in a dual-stack or IPv6-only lab.
    pub ip6: Option<Ipv6Addr>,
    /// Its node's underlay address.
    pub node_ip: Ipv4Addr,
    /// Its node's IPv6 address on the underlay, in a lab whose nodes have one.
    pub node_ip6: Option<Ipv6Addr>,
}

/// How many TCP round trips one pod has in flight during a check.
const TCP_IN_FLIGHT: usize = 16;

/// Probes every target, then the outside host at `outside`, from inside the
/// pod's namespace: one ICMP sweep of all targets (three rounds of 700 ms
/// at most), then TCP round trips [`TCP_IN_FLIGHT`] at a time (1 s each at
/// most: every pod is on this machine). A fabric that answers nothing fails in seconds, whatever its size.
pub fn probe_from(
    pod: Prober,
    targets: &[(String, IpAddr)],
    outside: Ipv4Addr,
    outside6: Ipv6Addr,
) -> std::io::Result<(Vec<PairResult>, Vec<EgressResult>)> {
    let targets = targets.to_vec();
    netns::run_in(&pod.netns.clone(), move || {
        let ips: Vec<IpAddr> = targets.iter().map(|(_, ip)| *ip).collect();
        let answered = ping_sweep(&ips, 3, Duration::from_millis(700)).unwrap_or_default();
        // Threads started here share the pod's namespace.
        let mut tcp: Vec<Result<IpAddr, String>> = Vec::with_capacity(ips.len());
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
                from_ip: match ip {
                    IpAddr::V6(_) => pod.ip6.map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), IpAddr::V6),
                    IpAddr::V4(_) => pod.ip.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V4),
                },
                to: to.clone(),
                ip: *ip,
                icmp: answered.contains(ip),
                tcp,
            })
            .collect();
        // Each family the pod and its node have: the outside host's address
        // of that family must see the node's.
        let v4 = pod.ip.map(|ip| (IpAddr::V4(ip), IpAddr::V4(pod.node_ip), IpAddr::V4(outside)));
        let v6 = pod.ip6.zip(pod.node_ip6).map(|(ip, node)| (ip.into(), node.into(), outside6.into()));
        let egress = v4
            .into_iter()
            .chain(v6)
            .map(|(from_ip, node_ip, to)| EgressResult {
                from: pod.name.clone(),
                from_ip,
                node_ip,
                seen: tcp_round_trip(to, Duration::from_secs(2)).map_err(|e| e.to_string()),
            })
            .collect();
        (pairs, egress)
    })
}

/// Pings every address of `targets` at once, `rounds` times at most (each
/// round re-sends to those that have not answered and waits `wait`);
/// returns those that answered. IPv4 and IPv6 targets each go over their
/// own raw socket; with no IPv6 target none is opened.
pub fn ping_sweep(
    targets: &[IpAddr],
    rounds: u16,
    wait: Duration,
) -> std::io::Result<std::collections::BTreeSet<IpAddr>> {
    let s = icmp_socket()?;
    // As a std datagram socket: its recv_from reports the sender, which a
    // raw ICMPv6 socket gives only there (there is no IPv6 header to read).
    let s6: Option<std::net::UdpSocket> = if targets.iter().any(IpAddr::is_ipv6) {
        Some(crate::icmp::raw_socket6(Duration::from_millis(20))?.into())
    } else {
        None
    };
    let id = (std::process::id() as u16) ^ 0x5357;
    let mut answered = std::collections::BTreeSet::new();
    let mut buf = [0u8; 1500];
    for seq in 0..rounds {
        let pending: Vec<IpAddr> = targets.iter().copied().filter(|ip| !answered.contains(ip)).collect();
        if pending.is_empty() {
            break;
        }
        for ip in &pending {
            match (ip, &s6) {
                (IpAddr::V4(v4), _) => {
                    s.send_to(&echo_request(id, seq), &SockAddr::from(SocketAddrV4::new(*v4, 0)))?;
                }
                (IpAddr::V6(v6), Some(s6)) => {
                    s6.send_to(&echo_request6(id, seq), SocketAddrV6::new(*v6, 0, 0, 0))?;
                }
                (IpAddr::V6(_), None) => unreachable!("an IPv6 target opened the IPv6 socket"),
            }
        }
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && answered.len() < targets.len() {
            if let Some(n) = recv(&s, &mut buf) {
                let src = buf.get(12..16).map(|b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])));
                if let Some(src @ IpAddr::V4(v4)) = src {
                    if pending.contains(&src) && parse_echo_reply(&buf[..n], v4, id).is_some() {
                        answered.insert(src);
                    }
                }
            }
            if let Some((n, src)) = s6.as_ref().and_then(|s6| s6.recv_from(&mut buf).ok()) {
                let src = src.ip();
                if pending.contains(&src) && parse_echo_reply6(&buf[..n], id).is_some() {
                    answered.insert(src);
                }
            }
        }
    }
    Ok(answered)
}
