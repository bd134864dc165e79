//! `felt lab bench`: pod-to-pod TCP throughput and UDP packet rate across
//! nodes, in one run on one lab, for each path the lab has: the raw underlay
//! (node to node), the kernel VXLAN (pods on two kernel nodes), the
//! userspace engine (pods on two userspace nodes) and mixed (kernel to
//! userspace). Each is reported with its ratio to the kernel VXLAN figure
//! and the machine's CPU per Gbit/s (TCP) or per million packets/s (UDP).
//!
//! The generators are felt's own: for TCP one sink per target namespace and
//! `streams` connections writing 128 KiB buffers for a fixed time; for UDP
//! one sender of 64-byte datagrams as fast as it can and one counting
//! receiver. Every loop is bounded by the deadline.

use felt_overlay::DataplaneKind;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::netns;

use super::state::{LabState, Mode, NodeState};
use super::{Lab, LabError, topo};
use crate::util::write_atomic;

const PORT: u16 = 7947;
const UDP_PORT: u16 = 7948;
/// UDP payload bytes per datagram in the packet-rate test.
pub const UDP_PAYLOAD: usize = 64;

/// One measured path.
#[derive(Debug, Clone, Serialize)]
pub struct PathResult {
    /// `tcp` (goodput of `streams` connections) or `udp` (packet rate of one
    /// sender of 64-byte datagrams).
    pub test: String,
    /// `underlay`, `kernel`, `userspace` or `mixed`.
    pub path: String,
    /// The pods' address family on this path: `ipv4`, or `ipv6` (a
    /// dual-stack lab measures every pod path over both).
    pub family: &'static str,
    /// From → to, for people.
    pub between: String,
    /// Parallel TCP streams (1 for UDP).
    pub streams: u32,
    /// Goodput (UDP: payload bytes received).
    pub gbit_per_s: f64,
    /// UDP: datagrams received per second.
    pub packets_per_s: Option<f64>,
    /// UDP: share of the datagrams sent that never arrived.
    pub loss: Option<f64>,
    /// This figure / the kernel VXLAN one of the same test, streams and
    /// family (TCP: goodput; UDP: packets per second).
    pub ratio_to_kernel: Option<f64>,
    /// Busy CPU cores (whole machine) per Gbit/s during the run.
    pub cores_per_gbit: f64,
    /// UDP: busy CPU cores per million datagrams per second received.
    pub cores_per_mpps: Option<f64>,
}

/// One endpoint: a namespace and an address in it.
#[derive(Debug, Clone)]
pub struct End {
    /// Namespace name.
    pub netns: String,
    /// Address to reach it at.
    pub ip: IpAddr,
}

/// The unspecified address of `ip`'s family, to bind a socket that talks to it.
fn any_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Busy cores (whole machine) between two `busy_jiffies` readings.
fn busy_cores((busy0, total0): (u64, u64), (busy1, total1): (u64, u64)) -> f64 {
    if total1 <= total0 {
        return 0.0;
    }
    // Jiffies over all CPUs: busy fraction × number of CPUs = busy cores.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (busy1 - busy0) as f64 / (total1 - total0) as f64 * cpus
}

/// What the UDP packet-rate test measured.
#[derive(Debug, Clone, Copy)]
pub struct UdpRate {
    /// Datagrams received per second.
    pub received_per_s: f64,
    /// Share of the datagrams sent that never arrived.
    pub loss: f64,
    /// Busy cores during the run.
    pub cores: f64,
}

/// One sender of [`UDP_PAYLOAD`]-byte datagrams from `src` to `dst`, as fast
/// as it can for `seconds`; one receiver counting them.
pub fn udp_rate(src: &End, dst: &End, seconds: f64) -> std::io::Result<UdpRate> {
    let any = any_of(dst.ip);
    let sink = netns::run_in(&netns::named(&dst.netns), move || UdpSocket::bind((any, UDP_PORT)))??;
    let to = SocketAddr::from((dst.ip, UDP_PORT));
    let source = netns::run_in(&netns::named(&src.netns), move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind((any, 0))?;
        s.connect(to)?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        Ok(s)
    })??;
    let run = Duration::from_secs_f64(seconds);
    sink.set_read_timeout(Some(Duration::from_millis(200)))?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counter = {
        let (received, stop) = (received.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            // Bounded: the main thread sets `stop` after the run and a grace period.
            while !stop.load(Ordering::Relaxed) {
                if sink.recv(&mut buf).is_ok() {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let payload = [0x5au8; UDP_PAYLOAD];
    let before = busy_jiffies();
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < run {
        for _ in 0..64 {
            // A full socket buffer (ENOBUFS) is the sender's limit, not a loss on the path.
            if source.send(&payload).is_ok() {
                sent += 1;
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cores = busy_cores(before, busy_jiffies());
    // Let what is in flight arrive.
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = counter.join();
    let got = received.load(Ordering::Relaxed);
    Ok(UdpRate {
        received_per_s: got as f64 / elapsed,
        loss: if sent > 0 { 1.0 - (got.min(sent) as f64 / sent as f64) } else { 0.0 },
        cores,
    })
}

fn busy_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let total: u64 = cpu.iter().sum();
    let idle = cpu.get(3).copied().unwrap_or(0) + cpu.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Accepts `streams` connections and counts what they carry into
/// `received` until they close or `deadline`.
fn tcp_sink(
    listener: TcpListener,
    streams: u32,
    deadline: Instant,
    received: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut readers = Vec::new();
        for _ in 0..streams {
            let Ok((mut c, _)) = listener.accept() else { break };
            let received = received.clone();
            readers.push(std::thread::spawn(move || {
                let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = vec![0u8; 256 * 1024];
                while Instant::now() < deadline {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            received.fetch_add(n as u64, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        for r in readers {
            let _ = r.join();
        }
    })
}

/// Runs `streams` TCP streams from `src` to `dst` for `seconds`; returns
/// (Gbit/s, busy cores per Gbit/s).
pub fn tcp(src: &End, dst: &End, streams: u32, seconds: f64) -> std::io::Result<(f64, f64)> {
    let any = any_of(dst.ip);
    let listener = netns::run_in(&netns::named(&dst.netns), move || TcpListener::bind((any, PORT)))??;
    listener.set_nonblocking(false)?;
    let received = Arc::new(AtomicU64::new(0));
    let run = Duration::from_secs_f64(seconds);
    let deadline = Instant::now() + run + Duration::from_secs(10);
    let sink = tcp_sink(listener, streams, deadline, received.clone());
    let to = SocketAddr::from((dst.ip, PORT));
    let conns: Vec<TcpStream> = netns::run_in(&netns::named(&src.netns), move || {
        (0..streams)
            .map(|_| TcpStream::connect_timeout(&to, Duration::from_secs(3)))
            .collect::<std::io::Result<Vec<_>>>()
    })??;
    let before = busy_jiffies();
    let start = Instant::now();
    let base = received.load(Ordering::Relaxed);
    let writers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                // A stalled path ends the stream instead of blocking the bench.
                let _ = c.set_write_timeout(Some(Duration::from_secs(5)));
                let buf = vec![0x5au8; 128 * 1024];
                while start.elapsed() < run {
                    if c.write_all(&buf).is_err() {
                        break;
                    }
                }
                let _ = c.shutdown(std::net::Shutdown::Write);
            })
        })
        .collect();
    for w in writers {
        let _ = w.join();
    }
    let bytes = received.load(Ordering::Relaxed) - base;
    let elapsed = start.elapsed().as_secs_f64();
    let cores = busy_cores(before, busy_jiffies());
    let _ = sink.join();
    let gbit = bytes as f64 * 8.0 / elapsed / 1e9;
    Ok((gbit, if gbit > 0.0 { cores / gbit } else { f64::INFINITY }))
}

/// The namespaces a path runs between, for the lab's state directory's sake.
pub fn describe(src: &End, dst: &End) -> String {
    format!("{} ({}) → {} ({})", src.netns, src.ip, dst.netns, dst.ip)
}

/// Where the results of the last bench are kept.
pub fn results_path(lab_dir: &std::path::Path) -> PathBuf {
    lab_dir.join("bench.json")
}

impl Lab {
    /// Measures every path the lab has, in one run (see [`bench`](self)).
    pub fn bench(&self, seconds: f64, progress: &mut dyn FnMut(&str)) -> Result<Vec<PathResult>, LabError> {
        let state = self.loaded()?;
        let paths = paths_of(&state);
        if paths.len() < 2 {
            return Err(LabError::Invalid("nothing to compare: need two nodes with a pod each (a mixed lab of 4 nodes measures every path)".into()));
        }
        // Kernel nodes of a mixed lab send with checksum offload off (see
        // topo::make_node); the paths that do not reach a userspace node are
        // measured with it on, as on a real NIC.
        let offloaded: Vec<&str> = if state.mode == Mode::Mixed {
            nodes_of(&state, DataplaneKind::Kernel).map(|n| n.netns.as_str()).collect()
        } else {
            Vec::new()
        };
        let with_offload = |label: &str, on: bool| -> Result<(), LabError> {
            if label == "underlay" || label == "kernel" {
                for ns in &offloaded {
                    topo::tx_checksum_offload(ns, on)?;
                }
            }
            Ok(())
        };
        let mut results = Vec::new();
        for streams in [1u32, 4] {
            for (label, src, dst) in &paths {
                progress(&format!("tcp, {label}, {streams} stream(s): {}", describe(src, dst)));
                with_offload(label, true)?;
                let measured = tcp(src, dst, streams, seconds);
                with_offload(label, false)?;
                let (gbit, cores) = measured.map_err(|e| LabError::Invalid(format!("bench {label}: {e}")))?;
                results.push(PathResult::tcp(label, dst.ip, describe(src, dst), streams, gbit, cores));
            }
        }
        for (label, src, dst) in &paths {
            progress(&format!("udp, {label}: {}", describe(src, dst)));
            with_offload(label, true)?;
            let measured = udp_rate(src, dst, seconds);
            with_offload(label, false)?;
            let r = measured.map_err(|e| LabError::Invalid(format!("bench udp {label}: {e}")))?;
            results.push(PathResult::udp(label, dst.ip, describe(src, dst), &r));
        }
        set_ratios(&mut results);
        let json = serde_json::to_vec_pretty(&results).expect("results serialise");
        let _ = write_atomic(&results_path(&self.dir), &json);
        Ok(results)
    }
}

fn nodes_of(state: &LabState, kind: DataplaneKind) -> impl Iterator<Item = &NodeState> {
    state.nodes.iter().filter(move |n| state.mode.backend_of(n.index) == kind)
}

/// Every path the lab has: node to node on the underlay, then pod to pod
/// between two kernel nodes, two userspace nodes, and kernel to userspace;
/// in a dual-stack lab the pod paths once more over IPv6.
fn paths_of(state: &LabState) -> Vec<(&'static str, End, End)> {
    // The underlay path comes with IPv4's, pods or not (IPv6-only).
    let mut paths = paths_of_family(state, |p| p.ip.map(IpAddr::V4));
    let v6 = paths_of_family(state, |p| p.ip6.map(IpAddr::V6));
    paths.extend(v6.into_iter().filter(|(label, _, _)| *label != "underlay"));
    paths
}

fn paths_of_family(
    state: &LabState,
    address: impl Fn(&super::state::PodState) -> Option<IpAddr>,
) -> Vec<(&'static str, End, End)> {
    let pod_of = |node: &NodeState| {
        let p = state.pods.iter().find(|p| p.node == node.name)?;
        Some(End { netns: p.netns.clone(), ip: address(p)? })
    };
    let kernel: Vec<&NodeState> = nodes_of(state, DataplaneKind::Kernel).collect();
    let user: Vec<&NodeState> = nodes_of(state, DataplaneKind::Userspace).collect();
    let mut paths = Vec::new();
    if let (Some(a), Some(b)) = (state.nodes.first(), state.nodes.get(1)) {
        // The address VXLAN travels between: IPv6 on an IPv6 underlay.
        let end = |n: &NodeState| End { netns: n.netns.clone(), ip: state.underlay_of(n) };
        paths.push(("underlay", end(a), end(b)));
    }
    let mut pods_between = |label: &'static str, x: Option<&&NodeState>, y: Option<&&NodeState>| {
        if let (Some(x), Some(y)) = (x.and_then(|n| pod_of(n)), y.and_then(|n| pod_of(n))) {
            paths.push((label, x, y));
        }
    };
    pods_between("kernel", kernel.first(), kernel.get(1));
    pods_between("userspace", user.first(), user.get(1));
    pods_between("mixed", kernel.first(), user.first());
    paths
}

/// Each result as a ratio to the kernel VXLAN path of the same test and
/// family (the underlay's, IPv4, to IPv4's).
fn set_ratios(results: &mut [PathResult]) {
    let figure = |r: &PathResult| if r.test == "udp" { r.packets_per_s.unwrap_or(0.0) } else { r.gbit_per_s };
    let kernel: Vec<(String, u32, &str, f64)> = results
        .iter()
        .filter(|k| k.path == "kernel")
        .map(|k| (k.test.clone(), k.streams, k.family, figure(k)))
        .collect();
    for r in results.iter_mut() {
        let base = kernel.iter().find(|(test, streams, family, _)| {
            *test == r.test && *streams == r.streams && *family == r.family
        });
        r.ratio_to_kernel = base.map(|b| b.3).filter(|k| *k > 0.0).map(|k| figure(r) / k);
    }
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv6() { "ipv6" } else { "ipv4" }
}

impl PathResult {
    fn tcp(path: &str, to: IpAddr, between: String, streams: u32, gbit: f64, cores: f64) -> PathResult {
        PathResult {
            test: "tcp".into(),
            path: path.to_owned(),
            family: family_of(to),
            between,
            streams,
            gbit_per_s: gbit,
            packets_per_s: None,
            loss: None,
            ratio_to_kernel: None,
            cores_per_gbit: cores,
            cores_per_mpps: None,
        }
    }

    fn udp(path: &str, to: IpAddr, between: String, r: &UdpRate) -> PathResult {
        let gbit = r.received_per_s * (UDP_PAYLOAD * 8) as f64 / 1e9;
        PathResult {
            test: "udp".into(),
            path: path.to_owned(),
            family: family_of(to),
            between,
            streams: 1,
            gbit_per_s: gbit,
            packets_per_s: Some(r.received_per_s),
            loss: Some(r.loss),
            ratio_to_kernel: None,
            cores_per_gbit: if gbit > 0.0 { r.cores / gbit } else { f64::INFINITY },
            cores_per_mpps: (r.received_per_s > 0.0).then(|| r.cores / (r.received_per_s / 1e6)),
        }
    }
}
