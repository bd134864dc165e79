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
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::netns;

use super::state::{Mode, NodeState};
use super::{Lab, LabError, topo};
use crate::registry::file::write_atomic;

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
    /// This figure / the kernel VXLAN one of the same test and streams
    /// (TCP: goodput; UDP: packets per second).
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
    pub ip: Ipv4Addr,
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
    let sink =
        netns::run_in(&netns::named(&dst.netns), || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, UDP_PORT)))??;
    let to = SocketAddr::from((dst.ip, UDP_PORT));
    let source = netns::run_in(&netns::named(&src.netns), move || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
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

/// Runs `streams` TCP streams from `src` to `dst` for `seconds`; returns
/// (Gbit/s, busy cores per Gbit/s).
pub fn tcp(src: &End, dst: &End, streams: u32, seconds: f64) -> std::io::Result<(f64, f64)> {
    let listener =
        netns::run_in(&netns::named(&dst.netns), || TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))??;
    listener.set_nonblocking(false)?;
    let received = Arc::new(AtomicU64::new(0));
    let run = Duration::from_secs_f64(seconds);
    let deadline = Instant::now() + run + Duration::from_secs(10);
    let sink = {
        let received = received.clone();
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
    };
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
    /// Measures every path the lab has, in one run (see [`bench`]).
    pub fn bench(&self, seconds: f64, progress: &mut dyn FnMut(&str)) -> Result<Vec<PathResult>, LabError> {
        let state = self.loaded()?;
        let node_of =
            |b: DataplaneKind| state.nodes.iter().filter(move |n| state.mode.backend_of(n.index) == b);
        let pod_of = |node: &NodeState| {
            state.pods.iter().find(|p| p.node == node.name).map(|p| End { netns: p.netns.clone(), ip: p.ip })
        };
        let kernel: Vec<&NodeState> = node_of(DataplaneKind::Kernel).collect();
        let user: Vec<&NodeState> = node_of(DataplaneKind::Userspace).collect();
        let mut paths: Vec<(&str, End, End)> = Vec::new();
        let (a, b) = (&state.nodes[0], state.nodes.get(1));
        if let Some(b) = b {
            let end = |n: &NodeState| End { netns: n.netns.clone(), ip: n.underlay_ip };
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
        if paths.len() < 2 {
            return Err(LabError::Invalid("nothing to compare: need two nodes with a pod each (a mixed lab of 4 nodes measures every path)".into()));
        }
        // Kernel nodes of a mixed lab send with checksum offload off (see
        // topo::make_node); the paths that do not reach a userspace node are
        // measured with it on, as on a real NIC.
        let offloaded: Vec<&str> = if state.mode == Mode::Mixed {
            kernel.iter().map(|n| n.netns.as_str()).collect()
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
                results.push(PathResult {
                    test: "tcp".into(),
                    path: (*label).to_owned(),
                    between: describe(src, dst),
                    streams,
                    gbit_per_s: gbit,
                    packets_per_s: None,
                    loss: None,
                    ratio_to_kernel: None,
                    cores_per_gbit: cores,
                    cores_per_mpps: None,
                });
            }
        }
        for (label, src, dst) in &paths {
            progress(&format!("udp, {label}: {}", describe(src, dst)));
            with_offload(label, true)?;
            let measured = udp_rate(src, dst, seconds);
            with_offload(label, false)?;
            let r = measured.map_err(|e| LabError::Invalid(format!("bench udp {label}: {e}")))?;
            let gbit = r.received_per_s * (UDP_PAYLOAD * 8) as f64 / 1e9;
            results.push(PathResult {
                test: "udp".into(),
                path: (*label).to_owned(),
                between: describe(src, dst),
                streams: 1,
                gbit_per_s: gbit,
                packets_per_s: Some(r.received_per_s),
                loss: Some(r.loss),
                ratio_to_kernel: None,
                cores_per_gbit: if gbit > 0.0 { r.cores / gbit } else { f64::INFINITY },
                cores_per_mpps: (r.received_per_s > 0.0).then(|| r.cores / (r.received_per_s / 1e6)),
            });
        }
        let kernel_of = |r: &PathResult, rs: &[PathResult]| {
            rs.iter()
                .find(|k| k.path == "kernel" && k.test == r.test && k.streams == r.streams)
                .map(|k| if k.test == "udp" { k.packets_per_s.unwrap_or(0.0) } else { k.gbit_per_s })
        };
        let snapshot = results.clone();
        for r in &mut results {
            let mine = if r.test == "udp" { r.packets_per_s.unwrap_or(0.0) } else { r.gbit_per_s };
            r.ratio_to_kernel = kernel_of(r, &snapshot).filter(|k| *k > 0.0).map(|k| mine / k);
        }
        let json = serde_json::to_vec_pretty(&results).expect("results serialise");
        let _ = write_atomic(&results_path(&self.dir), &json);
        Ok(results)
    }
}
