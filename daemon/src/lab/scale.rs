//! `felt lab bench --control-plane`: what N peers cost one agent.
//!
//! One node namespace, `<lab>-cp`, whose underlay is a veth pair inside it
//! (nothing it sends goes anywhere; every peer's address a pinned neighbour), and one real `felt daemon` in it, started cold,
//! that learns N synthetic peers from the registry and programs every
//! route, neighbour and FDB entry through netlink into the real kernel.
//! Per N it measures, from the kernel's own notifications (a netlink
//! listener opened before the agent starts, stamped on receipt):
//!
//! - **cold**: agent start → the last of the N × 3 entries programmed;
//! - **idle**: the agent's CPU while nothing changes (probes, resync);
//! - **change**: one peer's underlay address rewritten → its FDB entry
//!   pointing there, p50/p99/max over `changes` changes, one at a time, and
//!   the netlink writes and reconcile passes each cost the agent;
//! - **removal**: `removals` peers deleted at once → the last of their
//!   routes gone;
//! - the agent's peak RSS and CPU seconds over the whole run, with its
//!   `/readyz` asked every 5 s throughout, as `deploy/felt.yaml`'s
//!   readinessProbe has the kubelet do (each a dump of the device and a
//!   plan of every peer), and the slowest answer.
//!
//! Peers: pod subnets /24 of [`NETWORK`], underlay addresses in
//! [`PEER_UNDERLAY`], both only ever inside the namespace. Everything is
//! removed after each N, and on failure or Ctrl-C (the guard).
//!
//! The registry is a file registry, or (`--registry kube`) a real API
//! server in the namespace with kubelet-shaped Node objects; then also the
//! bytes the server sends the agent while every Node's status is updated,
//! next to a Flannel-style watch of whole Nodes (see [`kube`]).

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use felt_proto::{BackendData, BackendType, MacAddr, NetConfig, NodeRecord};
use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use serde::Serialize;

use super::{Lab, LabError, control, interrupt, topo};

mod kube;
use crate::netns;
use crate::registry::file::FileRegistry;
use crate::util::write_atomic;
pub use kube::ApiTraffic;

/// The cluster network of the benchmark: room for 16,383 peers' /24s.
pub const NETWORK: &str = "10.192.0.0/10";
/// Where the synthetic peers' underlay addresses come from (the node is .0.1).
pub const PEER_UNDERLAY: &str = "198.19.0.0/16";
/// The most peers one run takes.
pub const MAX_PEERS: u32 = 16_000;
/// The most changes per N: with [`MAX_PEERS`], the addresses stay inside
/// [`PEER_UNDERLAY`].
pub const MAX_CHANGES: u32 = 40_000;
const NODE: &str = "bench";
const DEBUG_PORT: u16 = 9469;

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleOptions {
    /// Each N, in order, each with a cold agent.
    pub peers: Vec<u32>,
    /// Peer changes timed one at a time, per N.
    pub changes: u32,
    /// Peers removed at once, per N (at most N).
    pub removals: u32,
    /// The file registry, or a real API server.
    pub registry: BenchRegistry,
    /// `kube`: every Node's status is updated once over this long.
    pub status_seconds: f64,
}

/// Where the benchmark's peers come from.
#[derive(Debug, Clone)]
pub enum BenchRegistry {
    /// Files in a directory.
    File,
    /// Node objects (and a FeltNode for each peer) of a real kube-apiserver
    /// and etcd started for the run; the agent reads its peers from this source.
    Kube(control::Binaries, crate::registry::kube::PeerSource),
}

/// One N's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleRow {
    /// Peers in the registry.
    pub peers: u32,
    /// Agent start → every peer's route, neighbour and FDB entry programmed.
    pub cold_ms: f64,
    /// The agent's CPU while nothing changed, percent of one core (over 5 s).
    pub idle_cpu_percent: f64,
    /// Changes timed.
    pub changes: u32,
    /// One peer's address changed → its FDB entry rewritten: median.
    pub change_p50_ms: f64,
    /// … 99th percentile.
    pub change_p99_ms: f64,
    /// … slowest.
    pub change_max_ms: f64,
    /// Netlink writes (route, neighbour, FDB) the agent made per change.
    pub netlink_writes_per_change: f64,
    /// Reconcile passes (each a registry read and a dump of the device's
    /// routes, neighbours and FDB) per change.
    pub passes_per_change: f64,
    /// What woke those passes, per change: `registry`, `netlink` (a repair),
    /// `timer` (`felt_wakeups_total{cause}`).
    pub wakeups_per_change: BTreeMap<String, f64>,
    /// Where a change's time goes inside the agent: milliseconds per change
    /// in each reconcile phase (`felt_reconcile_phase_seconds_total`).
    pub phase_ms_per_change: BTreeMap<String, f64>,
    /// Peers removed at once.
    pub removed: u32,
    /// Their removal → the last of their routes gone.
    pub removal_ms: f64,
    /// The agent's peak resident memory (VmHWM), MiB.
    pub rss_peak_mib: f64,
    /// The agent's CPU over the whole run, seconds.
    pub cpu_seconds: f64,
    /// The slowest of the readiness probes answered over the run, ms.
    pub readiness_probe_max_ms: f64,
    /// `kube`: what the API server sent while every Node's status was updated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiTraffic>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    /// `file` or `kube`.
    pub registry: String,
    /// One row per N.
    pub rows: Vec<ScaleRow>,
}

impl Lab {
    /// Runs the control-plane benchmark for every N of `opts`; the lab's
    /// name must not be in use (the run builds and removes its own pieces).
    pub fn bench_control_plane(
        &self,
        opts: &ScaleOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ScaleReport, LabError> {
        if self.load()?.is_some() || self.dir.exists() {
            return Err(LabError::Invalid(format!(
                "lab `{}` exists: the control-plane bench builds its own; give it another --name",
                self.name
            )));
        }
        if let Some(&n) = opts.peers.iter().find(|&&n| n == 0 || n > MAX_PEERS) {
            return Err(LabError::Invalid(format!("--peers {n}: want 1 to {MAX_PEERS}")));
        }
        // Every peer and every change takes an address of PEER_UNDERLAY (a /16).
        if opts.changes > MAX_CHANGES {
            return Err(LabError::Invalid(format!("--changes {}: want at most {MAX_CHANGES}", opts.changes)));
        }
        if !(1.0..=3600.0).contains(&opts.status_seconds) {
            return Err(LabError::Invalid("--status-seconds: want 1 to 3600".into()));
        }
        let mut rows = Vec::new();
        for &n in &opts.peers {
            let guard = Bench::build(self, &opts.registry, progress)?;
            progress(&format!("{n} peers: writing the registry, starting the agent"));
            rows.push(guard.run(n, opts, progress)?);
        }
        let registry = match opts.registry {
            BenchRegistry::File => "file",
            BenchRegistry::Kube(..) => "kube",
        };
        Ok(ScaleReport { registry: registry.into(), rows })
    }
}

/// One N's namespace, registry and agent; removed on drop.
struct Bench<'a> {
    lab: &'a Lab,
    ns: String,
    registry: FileRegistry,
    /// `kube`: the API server and what measures it.
    kube: Option<kube::Side>,
    agent: Option<u32>,
}

impl Drop for Bench<'_> {
    fn drop(&mut self) {
        if let Some(pid) = self.agent.take() {
            topo::kill_agent(pid, &self.lab.registry_dir(), true);
        }
        self.kube = None;
        // The agent (a kube one), etcd, kube-apiserver.
        topo::kill_processes_in(&self.ns);
        let _ = topo::ip(&["netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.lab.dir);
    }
}

impl<'a> Bench<'a> {
    fn build(lab: &'a Lab, source: &BenchRegistry, progress: &mut dyn FnMut(&str)) -> Result<Self, LabError> {
        let ns = format!("{}-cp", lab.name);
        std::fs::create_dir_all(&lab.dir).map_err(|e| LabError::io("creating", &lab.dir, e))?;
        let registry = FileRegistry::open(&lab.registry_dir())
            .map_err(|e| LabError::Invalid(format!("opening the bench registry: {e}")))?;
        let mut bench = Bench { lab, ns, registry, kube: None, agent: None };
        topo::ip(&["netns", "add", &bench.ns])?;
        let ns = bench.ns.as_str();
        topo::ip(&["-n", ns, "link", "set", "lo", "up"])?;
        // The underlay: a veth pair with both ends here. `ul1` has no address,
        // so what the agent sends (probes, encapsulated) is dropped there.
        topo::ip(&["-n", ns, "link", "add", "ul0", "type", "veth", "peer", "name", "ul1"])?;
        topo::ip(&["-n", ns, "addr", "add", &format!("{}/16", node_underlay()), "dev", "ul0"])?;
        topo::ip(&["-n", ns, "link", "set", "ul1", "up"])?;
        topo::ip(&["-n", ns, "link", "set", "ul0", "up"])?;
        let mut net = NetConfig::default();
        net.network = Some(NETWORK.parse().expect("a CIDR"));
        net.subnet_len = 24;
        let net_json = serde_json::to_vec_pretty(&net).expect("a config serialises");
        write_atomic(&lab.net_conf_path(), &net_json)
            .map_err(|e| LabError::io("writing", &lab.net_conf_path(), e))?;
        if let BenchRegistry::Kube(bins, peers) = source {
            let dir = lab.dir.join("control-plane");
            bench.kube = Some(kube::Side::start(&dir, &bench.ns, node_underlay(), bins, *peers, progress)?);
        }
        Ok(bench)
    }

    fn put(&self, record: &NodeRecord) -> Result<(), LabError> {
        self.registry.put(record).map_err(|e| LabError::Invalid(format!("writing {}: {e}", record.name)))?;
        Ok(())
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.lab.registry_dir().join("nodes").join(format!("{name}.json"))
    }

    fn spawn_agent(&mut self) -> Result<u32, LabError> {
        let dir = self.lab.node_dir(NODE);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
        let mut args: Vec<String> = vec!["daemon".into(), "--node-name".into(), NODE.into()];
        match &self.kube {
            None => args.extend([
                "--registry".into(),
                "file".into(),
                "--registry-dir".into(),
                self.lab.registry_dir().display().to_string(),
            ]),
            Some(k) => args.extend([
                "--registry".into(),
                "kube".into(),
                "--kubeconfig".into(),
                k.agent_kubeconfig.display().to_string(),
                "--peer-source".into(),
                k.peers.name().into(),
            ]),
        }
        args.extend([
            "--underlay-iface".into(),
            "ul0".into(),
            "--subnet-file".into(),
            dir.join("subnet.env").display().to_string(),
            "--net-conf".into(),
            self.lab.net_conf_path().display().to_string(),
        ]);
        let pid = topo::spawn_in(&self.ns, &self.lab.felt, &args, &self.lab.log_path(NODE))?;
        self.agent = Some(pid);
        Ok(pid)
    }

    /// Writes every peer's record (kube: creates the agent's Node too).
    fn put_all(&self, peers: &[NodeRecord]) -> Result<(), LabError> {
        match &self.kube {
            None => peers.iter().try_for_each(|p| self.put(p)),
            Some(k) => {
                let net: Ipv4Net = NETWORK.parse().expect("a CIDR");
                let own = Ipv4Net::new(net.network(), 24).expect("a /24");
                k.create(NODE, &own.to_string(), peers)
            }
        }
    }

    /// Rewrites `record`; returns when the write left.
    fn change(&self, record: &NodeRecord) -> Result<Instant, LabError> {
        match &self.kube {
            None => {
                let bytes = serde_json::to_vec(record).expect("a record serialises");
                let at = Instant::now();
                write_atomic(&self.record_path(&record.name), &bytes)
                    .map_err(|e| LabError::io("writing", &self.record_path(&record.name), e))?;
                Ok(at)
            }
            Some(k) => k.change(&record.name, record.public_ip.expect("a peer has an address")),
        }
    }

    /// Removes peers `0..count` at once; returns when the first removal left.
    fn remove(&self, count: u32) -> Result<Instant, LabError> {
        match &self.kube {
            None => {
                let at = Instant::now();
                for i in 0..count {
                    let path = self.record_path(&peer_name(i));
                    std::fs::remove_file(&path).map_err(|e| LabError::io("removing", &path, e))?;
                }
                Ok(at)
            }
            Some(k) => k.remove((0..count).map(peer_name).collect()),
        }
    }

    /// `kube`: every Node's status updated once over `over`; what the
    /// agent and the reference watch received, and what it cost the agent.
    fn status_churn(&self, n: u32, over: Duration) -> Result<Option<ApiTraffic>, LabError> {
        let Some(k) = &self.kube else { return Ok(None) };
        k.wait_full_watch()?;
        let names: Vec<String> = std::iter::once(NODE.to_owned()).chain((0..n).map(peer_name)).collect();
        let before = self.agent_counters()?;
        let (agent, full, took) = k.status_churn(names.clone(), over)?;
        let after = self.agent_counters()?;
        let per_minute = |b: u64| b as f64 * 60.0 / took.as_secs_f64();
        let (node_bytes, metadata_bytes, managed_fields_bytes) = k.sizes(&peer_name(n - 1))?;
        // From the metrics: a /debug/state of N peers would weigh on the
        // agent's peak memory, which this bench measures.
        let sources = by_label(&self.agent_get("/metrics")?, "felt_peer_source", "source");
        let peer_source =
            sources.iter().find(|(_, v)| **v == 1.0).map_or("?", |(s, _)| s.as_str()).to_owned();
        Ok(Some(ApiTraffic {
            peer_source,
            status_updates: names.len() as u32,
            seconds: took.as_secs_f64(),
            agent_bytes_per_minute: per_minute(agent),
            full_watch_bytes_per_minute: per_minute(full),
            ratio: full as f64 / (agent.max(1)) as f64,
            netlink_writes: after.writes - before.writes,
            passes: after.passes - before.passes,
            node_bytes,
            metadata_bytes,
            managed_fields_bytes,
        }))
    }

    fn run(
        mut self,
        n: u32,
        opts: &ScaleOptions,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ScaleRow, LabError> {
        let peers: Vec<NodeRecord> = (0..n).map(|i| peer(i, peer_underlay(i))).collect();
        self.put_all(&peers)?;
        // Every underlay address a peer will have, pinned: unanswered ARP for
        // thousands of them would fill the kernel's neighbour table, which all
        // namespaces share (permanent entries do not count).
        let addresses: Vec<Ipv4Addr> = (0..n + opts.changes).map(peer_underlay).collect();
        topo::pin_neighbours(&self.ns, "ul0", &addresses, false)?;
        let events = Events::open(&netns::named(&self.ns))?;
        let started = Instant::now();
        let pid = self.spawn_agent()?;
        let prober = ReadinessProber::start(&self.ns);
        let mut seen = Seen::default();
        let want = n as usize;
        let timeout = Duration::from_secs(60) + Duration::from_millis(20) * n;
        let done = events.wait(&mut seen, started + timeout, |s| {
            s.routes.len() >= want && s.neighbours.len() >= want && s.fdb.len() >= want
        });
        let Some(done) = done else {
            return Err(seen.missed(format!(
                "{n} peers: after {timeout:?} the kernel holds {} routes, {} neighbours, {} FDB entries{}",
                seen.routes.len(),
                seen.neighbours.len(),
                seen.fdb.len(),
                self.lab.log_tail(NODE, "agent log")
            )));
        };
        let cold = done.duration_since(started);
        progress(&format!("{n} peers: programmed in {:.0} ms; idle for 5 s", cold.as_secs_f64() * 1e3));

        let cpu0 = cpu_seconds(pid)?;
        let idle = Duration::from_secs(5);
        std::thread::sleep(idle);
        interrupt::check()?;
        let idle_cpu = (cpu_seconds(pid)? - cpu0) / idle.as_secs_f64() * 100.0;

        progress(&format!("{n} peers: {} changes, one at a time", opts.changes));
        let before = self.agent_counters()?;
        let mut samples = Vec::with_capacity(opts.changes as usize);
        for c in 0..opts.changes {
            interrupt::check()?;
            let i = c % n;
            // A fresh address each time, never one any peer has had.
            let to = peer_underlay(n + c);
            let at = self.change(&peer(i, to))?;
            let seen_at = events.wait(&mut seen, at + Duration::from_secs(10), |s| s.fdb_to.contains(&to));
            let Some(seen_at) = seen_at else {
                return Err(seen.missed(format!("change {c}: peer {i}'s FDB entry never pointed at {to}")));
            };
            samples.push(seen_at.duration_since(at));
        }
        // Let the agent's repair pass after its own writes (if any) happen, so it is counted.
        std::thread::sleep(super::super::agent::REPAIR_DELAY + Duration::from_millis(200));
        let after = self.agent_counters()?;
        let per_change = |a: f64, b: f64| (a - b) / f64::from(opts.changes.max(1));

        let api = if self.kube.is_some() {
            progress(&format!("{n} peers: every node's status updated once over {} s", opts.status_seconds));
            self.status_churn(n, Duration::from_secs_f64(opts.status_seconds))?
        } else {
            None
        };

        let removals = opts.removals.min(n);
        progress(&format!("{n} peers: removing {removals} at once"));
        seen.routes_removed.clear();
        let at = self.remove(removals)?;
        let want = removals as usize;
        let removed = events.wait(&mut seen, at + timeout, |s| s.routes_removed.len() >= want);
        let Some(removed) = removed else {
            return Err(seen.missed(format!(
                "{removals} peers removed: only {} routes went",
                seen.routes_removed.len()
            )));
        };

        samples.sort();
        let pct = |p: f64| {
            if samples.is_empty() {
                return 0.0;
            }
            let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i].as_secs_f64() * 1e3
        };
        Ok(ScaleRow {
            peers: n,
            cold_ms: ms(cold),
            idle_cpu_percent: idle_cpu,
            changes: opts.changes,
            change_p50_ms: pct(0.5),
            change_p99_ms: pct(0.99),
            change_max_ms: pct(1.0),
            netlink_writes_per_change: per_change(after.writes, before.writes),
            passes_per_change: per_change(after.passes, before.passes),
            wakeups_per_change: after
                .wakeups
                .iter()
                .map(|(cause, n)| {
                    (cause.clone(), per_change(*n, before.wakeups.get(cause).copied().unwrap_or(0.0)))
                })
                .filter(|(_, n)| *n > 0.0)
                .collect(),
            phase_ms_per_change: after
                .phases
                .iter()
                .map(|(phase, s)| {
                    let was = before.phases.get(phase).copied().unwrap_or(0.0);
                    (phase.clone(), per_change(*s, was) * 1e3)
                })
                .collect(),
            removed: removals,
            removal_ms: ms(removed.duration_since(at)),
            rss_peak_mib: peak_rss_kib(pid)? as f64 / 1024.0,
            cpu_seconds: cpu_seconds(pid)?,
            readiness_probe_max_ms: prober.stop().iter().copied().map(ms).fold(0.0, f64::max),
            api,
        })
    }

    /// The agent's answer at `path` of its debug endpoint.
    fn agent_get(&self, path: &'static str) -> Result<String, LabError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, DEBUG_PORT));
        let got = netns::run_in(&netns::named(&self.ns), move || {
            crate::http::get(addr, path, Duration::from_secs(10))
        })
        .map_err(|e| LabError::io("entering", &netns::named(&self.ns), e))?;
        let (status, body) = got.map_err(|e| LabError::Invalid(format!("asking the agent: {e}")))?;
        if status != 200 {
            return Err(LabError::Invalid(format!("the agent's {path} answered {status}")));
        }
        Ok(body)
    }

    /// The agent's write and pass counters, from its metrics.
    fn agent_counters(&self) -> Result<Counters, LabError> {
        let body = self.agent_get("/metrics")?;
        Ok(Counters {
            writes: metric_sum(&body, "felt_dataplane_ops_total"),
            passes: metric_sum(&body, "felt_reconcile_total"),
            phases: by_label(&body, "felt_reconcile_phase_seconds_total", "phase"),
            wakeups: by_label(&body, "felt_wakeups_total", "cause"),
        })
    }
}

/// The kubelet's readiness probe: `/readyz` every [`ReadinessProber::PERIOD`]
/// until stopped (or dropped), each answer's time kept.
struct ReadinessProber {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Vec<Duration>>>,
}

impl ReadinessProber {
    /// `periodSeconds` of deploy/felt.yaml's readinessProbe.
    const PERIOD: Duration = Duration::from_secs(5);

    fn start(ns: &str) -> ReadinessProber {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, stopping) = (netns::named(ns), stop.clone());
        let thread = std::thread::spawn(move || {
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, DEBUG_PORT));
            let mut answered = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                let at = Instant::now();
                let got =
                    netns::run_in(&path, move || crate::http::get(addr, "/readyz", Duration::from_secs(10)));
                // Refused before the endpoint listens: not an answer.
                if matches!(got, Ok(Ok(_))) {
                    answered.push(at.elapsed());
                }
                while at.elapsed() < Self::PERIOD && !stopping.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            answered
        });
        ReadinessProber { stop, thread: Some(thread) }
    }

    /// Stops probing; the time of each answer.
    fn stop(mut self) -> Vec<Duration> {
        self.halt()
    }

    fn halt(&mut self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }
}

impl Drop for ReadinessProber {
    fn drop(&mut self) {
        self.halt();
    }
}

#[derive(Debug, Clone)]
struct Counters {
    writes: f64,
    passes: f64,
    phases: BTreeMap<String, f64>,
    wakeups: BTreeMap<String, f64>,
}

/// Every sample of `name` in Prometheus text by the value of its `label`.
fn by_label(text: &str, name: &str, label: &str) -> BTreeMap<String, f64> {
    let key = format!("{label}=\"");
    text.lines()
        .filter_map(|l| {
            let labels = l.strip_prefix(name)?.strip_prefix('{')?;
            let value = labels.split_once(&key)?.1.split_once('"')?.0.to_owned();
            Some((value, l.rsplit(' ').next()?.parse::<f64>().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` in Prometheus text.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn node_underlay() -> Ipv4Addr {
    let net: Ipv4Net = PEER_UNDERLAY.parse().expect("a CIDR");
    Ipv4Addr::from(u32::from(net.network()) + 1)
}

/// Peer `i`'s underlay address `i` (change `c` of N peers uses `N + c`).
fn peer_underlay(i: u32) -> Ipv4Addr {
    let net: Ipv4Net = PEER_UNDERLAY.parse().expect("a CIDR");
    Ipv4Addr::from(u32::from(net.network()) + 2 + i)
}

fn peer_name(i: u32) -> String {
    format!("peer-{i:05}")
}

/// Synthetic peer `i`: the `i + 1`th /24 of [`NETWORK`] (the agent leases
/// the first free one, the 0th), a VTEP MAC of its own.
fn peer(i: u32, underlay: Ipv4Addr) -> NodeRecord {
    let net: Ipv4Net = NETWORK.parse().expect("a CIDR");
    let subnet = Ipv4Net::new(Ipv4Addr::from(u32::from(net.network()) + ((i + 1) << 8)), 24).expect("a /24");
    let [_, _, hi, lo] = (i + 1).to_be_bytes();
    let mut record = NodeRecord::new(peer_name(i));
    record.pod_cidrs = vec![IpNet::V4(subnet)];
    record.public_ip = Some(underlay.into());
    record.backend_type = Some(BackendType::Vxlan);
    record.backend_data =
        Some(BackendData { vni: 1, vtep_mac: MacAddr([0x02, 0xfe, 0, (i >> 16) as u8, hi, lo]) });
    record
}

/// CPU time `pid` has had, seconds (`/proc/<pid>/schedstat`, nanoseconds).
fn cpu_seconds(pid: u32) -> Result<f64, LabError> {
    let path = PathBuf::from(format!("/proc/{pid}/schedstat"));
    let stat = std::fs::read_to_string(&path).map_err(|e| LabError::io("reading", &path, e))?;
    let ns: u64 = stat
        .split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| LabError::Invalid(format!("unexpected {}: {stat:?}", path.display())))?;
    Ok(ns as f64 / 1e9)
}

/// VmHWM of `pid`, KiB.
fn peak_rss_kib(pid: u32) -> Result<u64, LabError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = std::fs::read_to_string(&path).map_err(|e| LabError::io("reading", &path, e))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| LabError::Invalid(format!("no VmHWM in {}", path.display())))
}

/// What the kernel said so far, by entry.
#[derive(Debug, Default)]
struct Seen {
    /// felt's routes added (destinations).
    routes: HashSet<Ipv4Net>,
    /// Destinations of felt's routes removed since last cleared.
    routes_removed: HashSet<Ipv4Net>,
    /// Permanent neighbour entries for VTEP addresses.
    neighbours: HashSet<Ipv4Addr>,
    /// FDB entries (by MAC).
    fdb: HashSet<[u8; 6]>,
    /// Underlay addresses an FDB entry pointed at.
    fdb_to: HashSet<Ipv4Addr>,
    /// Why the listener stopped, if it did.
    failed: Option<String>,
}

impl Seen {
    /// Why a wait ended without what it waited for: the listener's failure, or `timed_out`.
    fn missed(&self, timed_out: String) -> LabError {
        match &self.failed {
            Some(why) => LabError::Invalid(why.clone()),
            None => LabError::Timeout(timed_out),
        }
    }
}

/// One kernel notification that matters here.
#[derive(Debug)]
enum Event {
    Route {
        dst: Ipv4Net,
        added: bool,
    },
    Neighbour(Ipv4Addr),
    Fdb {
        mac: [u8; 6],
        dst: Ipv4Addr,
    },
    /// The listener stopped (its buffer overflowed: notifications were lost).
    Failed(String),
}

/// A netlink listener inside the bench namespace, on its own thread.
struct Events {
    rx: mpsc::Receiver<(Instant, Event)>,
    stop: Arc<AtomicBool>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Events {
    fn open(ns: &Path) -> Result<Self, LabError> {
        let socket = netns::run_in(ns, open_listener)
            .and_then(|r| r)
            .map_err(|e| LabError::io("listening to netlink in", ns, e))?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("cp-events".into())
            .spawn(move || listen(&socket, &tx, &stopping))
            .map_err(|e| LabError::io("spawning", Path::new("the netlink listener"), e))?;
        Ok(Events { rx, stop })
    }

    /// Folds notifications into `seen` until `done(seen)` holds (returns
    /// when the notification that made it hold arrived) or `deadline`.
    fn wait(&self, seen: &mut Seen, deadline: Instant, done: impl Fn(&Seen) -> bool) -> Option<Instant> {
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let (at, event) = match self.rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok(got) => got,
                Err(mpsc::RecvTimeoutError::Timeout) if interrupt::check().is_ok() => continue,
                Err(_) => return None,
            };
            match event {
                Event::Route { dst, added: true } => {
                    seen.routes.insert(dst);
                }
                Event::Route { dst, added: false } => {
                    seen.routes.remove(&dst);
                    seen.routes_removed.insert(dst);
                }
                Event::Neighbour(a) => {
                    seen.neighbours.insert(a);
                }
                Event::Fdb { mac, dst } => {
                    seen.fdb.insert(mac);
                    seen.fdb_to.insert(dst);
                }
                Event::Failed(why) => {
                    seen.failed = Some(why);
                    return None;
                }
            }
            if done(seen) {
                return Some(at);
            }
        }
    }
}

/// A netlink socket on the route and neighbour groups with a large buffer
/// (a cold start of thousands of peers is tens of thousands of notifications)
/// and a receive timeout, so its thread notices when to stop.
fn open_listener() -> std::io::Result<netlink_sys::Socket> {
    use netlink_sys::{Socket, SocketAddr as NlAddr, protocols::NETLINK_ROUTE};
    const RTMGRP_NEIGH: u32 = 0x4;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    use nix::sys::socket::{setsockopt, sockopt};
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    let size = 64 << 20;
    if setsockopt(&socket, sockopt::RcvBufForce, &size).is_err() {
        socket.set_rx_buf_sz(size)?;
    }
    setsockopt(&socket, sockopt::ReceiveTimeout, &nix::sys::time::TimeVal::new(0, 100_000))?;
    socket.bind(&NlAddr::new(0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE))?;
    Ok(socket)
}

fn listen(socket: &netlink_sys::Socket, tx: &mpsc::Sender<(Instant, Event)>, stop: &AtomicBool) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    while !stop.load(Ordering::Relaxed) {
        buf.clear();
        let got = socket.recv(&mut buf, 0);
        let at = Instant::now();
        if let Err(e) = got {
            if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                continue;
            }
            let _ = tx.send((at, Event::Failed(format!("the netlink listener stopped: {e}"))));
            return;
        }
        let mut rest = buf.as_slice();
        while let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest) {
            let len = (msg.header.length as usize + 3) & !3;
            if let NetlinkPayload::InnerMessage(m) = msg.payload
                && let Some(event) = classify(m)
                && tx.send((at, event)).is_err()
            {
                return;
            }
            if len == 0 || len >= rest.len() {
                break;
            }
            rest = &rest[len..];
        }
    }
}

fn classify(m: RouteNetlinkMessage) -> Option<Event> {
    let felt = felt_overlay::RouteTag::FELT.protocol;
    match m {
        RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r)
            if u8::from(r.header.protocol) != felt =>
        {
            None
        }
        RouteNetlinkMessage::NewRoute(r) => Some(Event::Route {
            dst: route_dst(&r.attributes, r.header.destination_prefix_length)?,
            added: true,
        }),
        RouteNetlinkMessage::DelRoute(r) => Some(Event::Route {
            dst: route_dst(&r.attributes, r.header.destination_prefix_length)?,
            added: false,
        }),
        RouteNetlinkMessage::NewNeighbour(n) => neighbour(&n),
        _ => None,
    }
}

/// A permanent VTEP neighbour entry (its address in [`NETWORK`]) or an FDB entry.
fn neighbour(n: &NeighbourMessage) -> Option<Event> {
    let dst = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
        NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) if raw.len() == 4 => {
            Some(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
        }
        _ => None,
    })?;
    if n.header.family == AddressFamily::Bridge {
        let mac = n.attributes.iter().find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(raw) => <[u8; 6]>::try_from(raw.as_slice()).ok(),
            _ => None,
        })?;
        return Some(Event::Fdb { mac, dst });
    }
    let net: Ipv4Net = NETWORK.parse().expect("a CIDR");
    (n.header.family == AddressFamily::Inet && net.contains(&dst)).then_some(Event::Neighbour(dst))
}

fn route_dst(attrs: &[RouteAttribute], len: u8) -> Option<Ipv4Net> {
    attrs.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Ipv4Net::new(*ip, len).ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every address the bench can hand out stays in its ranges: pod subnets
    /// in [`NETWORK`], underlay addresses in [`PEER_UNDERLAY`] (inside the
    /// benchmarking range, LAB-NETWORK.md).
    #[test]
    fn every_address_stays_in_the_bench_ranges() {
        let network: Ipv4Net = NETWORK.parse().unwrap();
        let underlay: Ipv4Net = PEER_UNDERLAY.parse().unwrap();
        assert!("198.18.0.0/15".parse::<Ipv4Net>().unwrap().contains(&underlay));
        let last = peer(MAX_PEERS - 1, peer_underlay(MAX_PEERS + MAX_CHANGES - 1));
        assert!(network.contains(&last.pod_cidr_v4().unwrap()));
        assert!(ipnet::IpNet::from(underlay).contains(&last.public_ip.unwrap()));
        assert!(underlay.contains(&node_underlay()));
        assert_ne!(
            peer(0, node_underlay()).pod_cidr_v4(),
            Some(Ipv4Net::new(network.network(), 24).unwrap())
        );
    }

    #[test]
    fn metrics_are_summed_and_split_by_label() {
        let text = "felt_dataplane_ops_total{op=\"set_fdb\",result=\"ok\"} 3\n\
                    felt_dataplane_ops_total{op=\"del_fdb\",result=\"ok\"} 2\n\
                    felt_dataplane_ops_totalx 9\n\
                    felt_wakeups_total{cause=\"registry\"} 7\n";
        assert_eq!(metric_sum(text, "felt_dataplane_ops_total"), 5.0);
        assert_eq!(by_label(text, "felt_wakeups_total", "cause"), [("registry".to_owned(), 7.0)].into());
    }
}
