//! `felt lab`: the whole fabric on one machine, in network namespaces.
//!
//! ```text
//!   <name>-ul            the underlay: bridge br0, one veth per node
//!   <name>-n<i>          node i: eth0 = 198.18.x.(10+i)/24, one felt agent
//!   <name>-n<i>-p<j>     pod j of node i, attached by `felt cni`
//! ```
//! Everything lives in namespaces the lab creates (LAB-NETWORK.md): the
//! root namespace gets no address, route or link, and no namespace has a
//! route out of the lab. A lab's files live in `<state root>/<name>/`:
//! `lab.json` (this module's state), `net.json`, the file registry, and per
//! node its subnet file, CNI store and agent log. `down` removes all of it,
//! agents included, and is safe to repeat; a failed `up` tears down what it
//! built.

pub mod bench;
pub mod control;
mod kube;
pub mod probe;
pub mod rootless;
pub mod soak;
mod topo;
pub use topo::OUTSIDE_IP;
pub mod watch;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use felt_overlay::kernel::Kernel;
use felt_overlay::{DataplaneKind, dataplane, plan};
use felt_proto::debug::ProbeStatus;
use felt_proto::{NetConfig, NodeRecord};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::netns;
use crate::registry::file::{FileRegistry, write_atomic};
pub use topo::{LabError, host_ip, kill_agent, underlay_subnet};

/// Where labs keep their files unless told otherwise.
pub const DEFAULT_STATE_ROOT: &str = "/run/felt/lab";

/// The data plane a lab's agents run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The kernel's VXLAN device, programmed over netlink.
    Kernel,
    /// felt's userspace VXLAN engine on every node.
    Userspace,
    /// Alternating: odd nodes kernel, even nodes userspace.
    Mixed,
}

impl Mode {
    /// The data plane of node `index` in a lab of this mode.
    pub fn backend_of(self, index: u32) -> DataplaneKind {
        match self {
            Mode::Kernel => DataplaneKind::Kernel,
            Mode::Userspace => DataplaneKind::Userspace,
            Mode::Mixed if index % 2 == 1 => DataplaneKind::Kernel,
            Mode::Mixed => DataplaneKind::Userspace,
        }
    }
}

/// Where a lab's agents register.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LabRegistry {
    /// A file registry in the lab's state directory.
    #[default]
    File,
    /// A Kubernetes API server listening inside the lab's underlay namespace.
    Kube {
        /// The kubeconfig the lab uses (and the agents, without `agent_kubeconfig`).
        kubeconfig: PathBuf,
        /// The agents' own (the lab's control plane: the `felt` ServiceAccount's token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent_kubeconfig: Option<PathBuf>,
    },
}

/// How to build a lab.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct UpOptions {
    /// Lab name: prefixes every namespace.
    pub name: String,
    /// Number of nodes.
    pub nodes: u32,
    /// Pods on each node.
    pub pods_per_node: u32,
    /// Data plane.
    pub mode: Mode,
    /// Registry.
    pub registry: LabRegistry,
    /// Attach pods in CNI delegate mode, with `bridge` and `host-local`
    /// from this directory; `None`: native mode.
    pub cni_delegate: Option<PathBuf>,
    /// Start the lab's own control plane (etcd, kube-apiserver) with these
    /// programs, and register the agents there (`registry` is then ignored).
    pub control_plane: Option<control::Binaries>,
}

impl UpOptions {
    /// The defaults: `felt`, 3 nodes, 2 pods each, kernel mode.
    pub fn new(name: impl Into<String>) -> Self {
        UpOptions {
            name: name.into(),
            nodes: 3,
            pods_per_node: 2,
            mode: Mode::Kernel,
            registry: LabRegistry::File,
            cni_delegate: None,
            control_plane: None,
        }
    }
}

/// One lab node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    /// Node name in the registry (`n1`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its index (`i` in `n<i>`).
    pub index: u32,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its agent's pid.
    pub pid: u32,
}

/// One lab pod.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    /// Pod name (`n1-p1`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its node.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// `felt lab status --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabStatus {
    /// Every node, in index order.
    pub nodes: Vec<NodeStatus>,
    /// Every pod.
    pub pods: Vec<PodState>,
}

/// One node as the lab and its agent see it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Node name (`n1`).
    pub name: String,
    /// Its namespace.
    pub netns: String,
    /// Its underlay address.
    pub underlay_ip: Ipv4Addr,
    /// Its pod subnet, once its record has one.
    pub pod_cidr: Option<Ipv4Net>,
    /// Its VTEP MAC, once published.
    pub vtep_mac: Option<felt_proto::MacAddr>,
    /// The agent's process id.
    pub pid: u32,
    /// That process is a felt agent and alive.
    pub agent_running: bool,
    /// The agent's readiness; `None` when its endpoint did not answer.
    pub ready: Option<bool>,
    /// Peers the agent accepted.
    pub peers_desired: usize,
    /// Peers whose entries are all programmed.
    pub peers_programmed: usize,
    /// Peers whose VTEP answers probes.
    pub peers_reachable: usize,
    /// What the agent says is wrong (or why it could not be asked).
    pub problems: Vec<String>,
}

/// What `felt lab check` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    /// Every ordered pod pair.
    pub pairs: Vec<probe::PairResult>,
    /// Every pod to the outside host.
    pub egress: Vec<probe::EgressResult>,
}

impl CheckReport {
    /// Every pair and every egress probe passed, and there was something to probe.
    pub fn ok(&self) -> bool {
        !self.egress.is_empty()
            && self.pairs.iter().all(probe::PairResult::ok)
            && self.egress.iter().all(probe::EgressResult::ok)
    }
}

/// What `lab.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    /// Lab name.
    pub name: String,
    /// The underlay /24.
    pub underlay: Ipv4Net,
    /// Data plane.
    pub mode: Mode,
    /// Registry.
    #[serde(default)]
    pub registry: LabRegistry,
    /// Pods per node, for `add-node`.
    pub pods_per_node: u32,
    /// Pods attach in CNI delegate mode with the plugins in this directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_delegate: Option<PathBuf>,
    /// Nodes, in index order.
    pub nodes: Vec<NodeState>,
    /// Pods.
    pub pods: Vec<PodState>,
}

/// A lab's files and how to reach them.
#[derive(Debug, Clone)]
pub struct Lab {
    name: String,
    dir: PathBuf,
    felt: PathBuf,
}

impl Lab {
    /// A handle on lab `name` under `state_root`; `felt` is the binary agents run.
    pub fn new(name: &str, state_root: &Path, felt: PathBuf) -> Result<Self, LabError> {
        let ok = !name.is_empty()
            && name.len() <= 8
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.starts_with(|c: char| c.is_ascii_lowercase());
        if !ok {
            return Err(LabError::Invalid(format!(
                "lab name `{name}`: want 1 to 8 of [a-z0-9], starting with a letter (it prefixes interface names)"
            )));
        }
        Ok(Lab { name: name.to_owned(), dir: state_root.join(name), felt })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    fn state_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }
    fn registry_dir(&self) -> PathBuf {
        self.dir.join("registry")
    }
    fn net_conf_path(&self) -> PathBuf {
        self.dir.join("net.json")
    }
    fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }
    /// The agent log of `node`.
    pub fn log_path(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }
    fn underlay_ns(&self) -> String {
        format!("{}-ul", self.name)
    }

    /// Reads `lab.json`; `None` when the lab is not up.
    pub fn load(&self) -> Result<Option<LabState>, LabError> {
        match std::fs::read(self.state_path()) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| LabError::Invalid(format!("{}: {e}", self.state_path().display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(LabError::io("reading", &self.state_path(), e)),
        }
    }

    fn loaded(&self) -> Result<LabState, LabError> {
        self.load()?.ok_or_else(|| {
            LabError::Invalid(format!("lab `{}` is not up (felt lab up --name {})", self.name, self.name))
        })
    }

    fn save(&self, state: &LabState) -> Result<(), LabError> {
        let bytes = serde_json::to_vec_pretty(state).expect("lab state serialises");
        write_atomic(&self.state_path(), &bytes).map_err(|e| LabError::io("writing", &self.state_path(), e))
    }

    /// The registry's records, by node name.
    fn records_of(&self, registry: &LabRegistry) -> Result<BTreeMap<String, NodeRecord>, LabError> {
        if let LabRegistry::Kube { kubeconfig, .. } = registry {
            return kube::records(&netns::named(&self.underlay_ns()), kubeconfig);
        }
        let reg = FileRegistry::open(&self.registry_dir())
            .map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?;
        let snap = reg.list().map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?;
        Ok(snap.records.into_iter().map(|r| (r.name.clone(), r)).collect())
    }

    /// Builds the lab and returns once every node has programmed every peer.
    pub fn up(&self, opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<LabState, LabError> {
        if self.load()?.is_some() || !topo::namespaces_with_prefix(&self.name)?.is_empty() {
            return Err(LabError::Invalid(format!(
                "lab `{}` already exists; remove it first with `felt lab down --name {}`",
                self.name, self.name
            )));
        }
        if opts.nodes == 0 || opts.nodes > 200 || opts.pods_per_node > 50 {
            return Err(LabError::Invalid("want 1..=200 nodes and 0..=50 pods per node".into()));
        }
        let started = Instant::now();
        let mut guard = TeardownOnError { lab: self, armed: true };
        std::fs::create_dir_all(&self.dir).map_err(|e| LabError::io("creating", &self.dir, e))?;
        let net = NetConfig::default();
        let net_json = serde_json::to_vec_pretty(&net).expect("net config serialises");
        write_atomic(&self.net_conf_path(), &net_json)
            .map_err(|e| LabError::io("writing", &self.net_conf_path(), e))?;
        let underlay = topo::underlay_subnet(&self.name);
        topo::make_underlay(&self.underlay_ns(), topo::host_ip(underlay), underlay.prefix_len())?;
        let registry = match (&opts.control_plane, &opts.registry) {
            (Some(bins), _) => {
                progress("starting the lab's control plane (etcd, kube-apiserver)");
                let cp = control::start(
                    &self.dir.join("control-plane"),
                    &self.underlay_ns(),
                    topo::host_ip(underlay),
                    bins,
                    progress,
                )?;
                let state_root = self.dir.parent().unwrap_or(Path::new("/"));
                let cp_dir = self.dir.join("control-plane");
                let (proxy, local) = control::start_proxy(
                    &self.felt,
                    &self.name,
                    state_root,
                    &cp_dir,
                    topo::host_ip(underlay),
                )?;
                progress(&format!(
                    "control plane up in {:.1?}; from this host: kubectl --kubeconfig {} (loopback proxy, pid {proxy})",
                    cp.took,
                    local.display()
                ));
                LabRegistry::Kube {
                    kubeconfig: cp.admin_kubeconfig,
                    agent_kubeconfig: Some(cp.agent_kubeconfig),
                }
            }
            (None, LabRegistry::File) => LabRegistry::File,
            (None, LabRegistry::Kube { kubeconfig, agent_kubeconfig }) => {
                let kubeconfig = kube::absolute(kubeconfig)?;
                progress(&format!(
                    "waiting for the API server of {} (it listens inside namespace {})",
                    kubeconfig.display(),
                    self.underlay_ns()
                ));
                kube::wait_api(&netns::named(&self.underlay_ns()), &kubeconfig, Duration::from_secs(60))?;
                LabRegistry::Kube { kubeconfig, agent_kubeconfig: agent_kubeconfig.clone() }
            }
        };
        let mut state = LabState {
            name: self.name.clone(),
            underlay,
            mode: opts.mode,
            registry,
            pods_per_node: opts.pods_per_node,
            cni_delegate: opts.cni_delegate.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
        };
        self.save(&state)?;
        for i in 1..=opts.nodes {
            let node = self.start_node(&state, i)?;
            progress(&format!("node {} ({}) agent pid {}", node.name, node.underlay_ip, node.pid));
            state.nodes.push(node);
            self.save(&state)?;
        }
        self.wait_leases(&state, Duration::from_secs(30))?;
        for node in state.nodes.clone() {
            for j in 1..=opts.pods_per_node {
                let pod = self.add_pod(&node, j, state.cni_delegate.as_deref())?;
                progress(&format!("pod {} on {} at {}", pod.name, pod.node, pod.ip));
                state.pods.push(pod);
                self.save(&state)?;
            }
        }
        self.wait_programmed(&state, Duration::from_secs(60))?;
        progress(&format!("fabric programmed on {} nodes in {:.1?}", state.nodes.len(), started.elapsed()));
        guard.armed = false;
        Ok(state)
    }

    fn start_node(&self, state: &LabState, index: u32) -> Result<NodeState, LabError> {
        let name = format!("n{index}");
        let netns = format!("{}-{name}", self.name);
        let underlay_ip = topo::node_ip(state.underlay, index);
        let backend = state.mode.backend_of(index);
        // Only a kernel VXLAN node that sends to userspace nodes: see make_node.
        let sum_on_send = state.mode == Mode::Mixed && backend == DataplaneKind::Kernel;
        topo::make_node(&self.underlay_ns(), &netns, underlay_ip, state.underlay.prefix_len(), sum_on_send)?;
        let dir = self.node_dir(&name);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
        if let LabRegistry::Kube { kubeconfig, .. } = &state.registry {
            // The controller-manager's job: one /24 per node, by index.
            let cidr = Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, (index - 1) as u8, 0), 24)
                .map_err(|e| LabError::Invalid(e.to_string()))?;
            kube::create_node(&netns::named(&self.underlay_ns()), kubeconfig, &name, cidr)?;
        }
        let pid = self.spawn_agent(&state.registry, backend, &name, &netns)?;
        Ok(NodeState { name, netns, index, underlay_ip, pid })
    }

    fn spawn_agent(
        &self,
        registry: &LabRegistry,
        backend: DataplaneKind,
        node: &str,
        netns: &str,
    ) -> Result<u32, LabError> {
        let dir = self.node_dir(node);
        let mut args: Vec<String> = vec!["daemon".into(), "--node-name".into(), node.into()];
        match registry {
            LabRegistry::File => args.extend([
                "--registry".into(),
                "file".into(),
                "--registry-dir".into(),
                self.registry_dir().display().to_string(),
            ]),
            LabRegistry::Kube { kubeconfig, agent_kubeconfig } => args.extend([
                "--registry".into(),
                "kube".into(),
                "--kubeconfig".into(),
                agent_kubeconfig.as_ref().unwrap_or(kubeconfig).display().to_string(),
                // Marks the process as this lab's, for `down` (see topo::agent_alive).
                "--registry-dir".into(),
                self.registry_dir().display().to_string(),
            ]),
        }
        args.extend([
            "--underlay-iface".into(),
            "eth0".into(),
            "--backend".into(),
            backend.name().into(),
            "--net-conf".into(),
            self.net_conf_path().display().to_string(),
            "--subnet-file".into(),
            dir.join("subnet.env").display().to_string(),
            "--resync-period".into(),
            "5s".into(),
            "--probe-interval".into(),
            "1s".into(),
        ]);
        topo::spawn_in(netns, &self.felt, &args, &self.log_path(node))
    }

    /// Attaches pod `j` of `node` through `felt cni`, in delegate mode with
    /// the plugins in `delegate` when given.
    fn add_pod(&self, node: &NodeState, j: u32, delegate: Option<&Path>) -> Result<PodState, LabError> {
        let name = format!("{}-p{j}", node.name);
        let netns = format!("{}-{name}", self.name);
        topo::ip(&["netns", "add", &netns])?;
        let mut conf = serde_json::json!({
            "cniVersion": felt_proto::cni::CURRENT_VERSION,
            "name": "felt",
            "type": "felt",
            "subnetFile": self.node_dir(&node.name).join("subnet.env"),
            "dataDir": self.node_dir(&node.name).join("cni"),
        });
        if delegate.is_some() {
            conf["delegate"] = serde_json::json!({});
        }
        let cni_path = delegate.unwrap_or_else(|| self.felt.parent().unwrap_or(Path::new("/")));
        let reply = topo::cni(&node.netns, &self.felt, "ADD", &netns, &conf, cni_path)?;
        let result: felt_proto::cni::CniResult = serde_json::from_value(reply.clone()).map_err(|e| {
            LabError::Invalid(format!("CNI ADD for {name} returned no result ({e}): {reply}"))
        })?;
        let ip = result
            .ips
            .iter()
            .find_map(|c| match c.address {
                ipnet::IpNet::V4(a) => Some(a.addr()),
                ipnet::IpNet::V6(_) => None,
            })
            .ok_or_else(|| {
                LabError::Invalid(format!("CNI ADD for {name} returned no IPv4 address: {reply}"))
            })?;
        Ok(PodState { name, netns, node: node.name.clone(), ip })
    }

    /// Waits until every node's agent has written its subnet file. A kube
    /// registry gets twice `timeout`: a freshly started API server on a
    /// loaded machine can take seconds per request.
    fn wait_leases(&self, state: &LabState, timeout: Duration) -> Result<(), LabError> {
        let timeout = if matches!(state.registry, LabRegistry::Kube { .. }) { timeout * 2 } else { timeout };
        let deadline = Instant::now() + timeout;
        loop {
            let missing: Vec<&str> = state
                .nodes
                .iter()
                .filter(|n| !self.node_dir(&n.name).join("subnet.env").exists())
                .map(|n| n.name.as_str())
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            // An agent that exited will not lease: say why now, in its own words
            // (its log goes with the lab on teardown).
            let exited: Vec<&NodeState> = state
                .nodes
                .iter()
                .filter(|n| missing.contains(&n.name.as_str()))
                // Not agent_alive: until it execs, a fresh child still shows our command line.
                .filter(|n| topo::is_zombie_or_gone(n.pid))
                .collect();
            if !exited.is_empty() {
                let why: String = exited.iter().map(|n| self.log_tail(&n.name, "the agent exited")).collect();
                return Err(LabError::Invalid(format!("agents exited before leasing a subnet{why}")));
            }
            if Instant::now() > deadline {
                let why: String = missing.iter().map(|n| self.log_tail(n, "no lease")).collect();
                return Err(LabError::Timeout(format!(
                    "nodes {missing:?} hold no lease after {timeout:?}{why}{}",
                    self.audit_of(&missing)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// With the lab's own control plane: what its audit log says of requests
    /// about `nodes` (did they reach the server, and how did it answer).
    fn audit_of(&self, nodes: &[&str]) -> String {
        let Ok(log) = std::fs::read_to_string(self.dir.join("control-plane").join("audit.log")) else {
            return String::new();
        };
        let mut out = String::new();
        for node in nodes {
            let seen: Vec<String> = log
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|e| {
                    e["objectRef"]["name"] == *node
                        || e["requestURI"].as_str().is_some_and(|u| u.contains(node))
                })
                .map(|e| {
                    format!(
                        "{} {} {} {} {}",
                        e["stageTimestamp"].as_str().unwrap_or("?"),
                        e["stage"].as_str().unwrap_or("?"),
                        e["verb"].as_str().unwrap_or("?"),
                        e["requestURI"].as_str().unwrap_or("?"),
                        e["responseStatus"]["code"]
                    )
                })
                .collect();
            let last = &seen[seen.len().saturating_sub(6)..];
            out.push_str(&format!(
                "\n{node}: the API server's audit log holds {} event(s) about it; the last:\n  {}",
                seen.len(),
                last.join("\n  ")
            ));
        }
        out
    }

    /// The kernel ops still missing on each node for every peer the registry holds.
    pub fn pending_ops(&self, state: &LabState) -> Result<BTreeMap<String, usize>, LabError> {
        let records: Vec<NodeRecord> = self.records_of(&state.registry)?.into_values().collect();
        let net = felt_proto::NetConfig::default();
        let device = dataplane::default_device(net.backend.vni);
        let mut out = BTreeMap::new();
        for node in &state.nodes {
            // The peers this node's agent would accept, by the agent's own rules.
            let Some(me) = records.iter().find(|r| r.name == node.name).and_then(|r| {
                Some(crate::agent::view::Me {
                    name: r.name.clone(),
                    pod_cidr: r.pod_cidr_v4()?,
                    underlay_ip: r.public_ip?,
                    vtep_mac: r.backend_data?.vtep_mac,
                })
            }) else {
                out.insert(node.name.clone(), usize::MAX);
                continue;
            };
            let peers = crate::agent::view::build(&records, &me, &net, &Default::default()).peers;
            let backend = state.mode.backend_of(node.index);
            let want = dataplane::desired(backend, &peers);
            let device = device.clone();
            let observed = netns::block_on_in(&netns::named(&node.netns), || async move {
                let k = Kernel::connect()?;
                match k.link(&device).await? {
                    Some(l) => k.observe(l.index).await.map(Some),
                    None => Ok(None),
                }
            })
            .map_err(|e| LabError::io("entering", &netns::named(&node.netns), e))?
            .map_err(|e: felt_overlay::kernel::KernelError| {
                LabError::Invalid(crate::util::error_chain(&e))
            })?;
            let missing = match observed {
                Some(o) => plan(&want, &dataplane::owned(backend, o)).len(),
                None => usize::MAX,
            };
            out.insert(node.name.clone(), missing);
        }
        Ok(out)
    }

    /// "\n{node}: {status}; last log lines: …", for an error message.
    fn log_tail(&self, node: &str, status: &str) -> String {
        let log = std::fs::read_to_string(self.log_path(node)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(8).collect();
        format!(
            "\n{node}: {status}; last log lines:\n  {}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n  ")
        )
    }

    /// Waits until every node's data plane matches the registry.
    pub fn wait_programmed(&self, state: &LabState, timeout: Duration) -> Result<Duration, LabError> {
        let started = Instant::now();
        loop {
            let pending = self.pending_ops(state)?;
            if pending.values().all(|n| *n == 0) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                // The agents' own words say why; their logs go with the lab on teardown.
                let mut why = String::new();
                for (node, n) in pending.iter().filter(|(_, n)| **n != 0) {
                    let missing = if *n == usize::MAX {
                        "no record of its own or no VXLAN device yet".to_owned()
                    } else {
                        format!("{n} ops pending")
                    };
                    why.push_str(&self.log_tail(node, &missing));
                }
                return Err(LabError::Timeout(format!("data plane not programmed after {timeout:?}{why}")));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Everything `lab status --json` prints.
    pub fn status(&self) -> Result<LabStatus, LabError> {
        let state = self.loaded()?;
        let records = self.records_of(&state.registry)?;
        let nodes = state
            .nodes
            .iter()
            .map(|n| {
                let r = records.get(&n.name);
                let mut status = NodeStatus {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    underlay_ip: n.underlay_ip,
                    pod_cidr: r.and_then(NodeRecord::pod_cidr_v4),
                    vtep_mac: r.and_then(|r| r.backend_data).map(|d| d.vtep_mac),
                    pid: n.pid,
                    agent_running: topo::agent_alive(n.pid, &self.registry_dir()),
                    ready: None,
                    peers_desired: 0,
                    peers_programmed: 0,
                    peers_reachable: 0,
                    problems: Vec::new(),
                };
                add_agent_view(&n.netns, &mut status);
                status
            })
            .collect();
        Ok(LabStatus { nodes, pods: state.pods })
    }

    /// Probes every ordered pod pair (ICMP echo and a TCP round trip, which
    /// must arrive from the source pod's own address) and, from every pod,
    /// the outside host (which must see the pod's node address, never the
    /// pod's).
    pub fn check(&self) -> Result<CheckReport, LabError> {
        let state = self.loaded()?;
        let mut namespaces: Vec<PathBuf> = state.pods.iter().map(|p| netns::named(&p.netns)).collect();
        namespaces.push(netns::named(&self.underlay_ns()));
        let _listeners = probe::EchoListeners::start(&namespaces, Duration::from_secs(120))
            .map_err(|e| LabError::Invalid(format!("starting echo listeners: {e}")))?;
        let workers: Vec<_> = state
            .pods
            .iter()
            .map(|src| {
                let targets: Vec<(String, Ipv4Addr)> = state
                    .pods
                    .iter()
                    .filter(|d| d.name != src.name)
                    .map(|d| (d.name.clone(), d.ip))
                    .collect();
                let node_ip = state
                    .nodes
                    .iter()
                    .find(|n| n.name == src.node)
                    .map_or(Ipv4Addr::UNSPECIFIED, |n| n.underlay_ip);
                let pod = probe::Prober {
                    netns: netns::named(&src.netns),
                    name: src.name.clone(),
                    ip: src.ip,
                    node_ip,
                };
                std::thread::spawn(move || probe::probe_from(pod, &targets, topo::OUTSIDE_IP))
            })
            .collect();
        let mut report = CheckReport::default();
        for w in workers {
            let r = w.join().map_err(|_| LabError::Invalid("a probe thread panicked".into()))?;
            let (pairs, egress) = r.map_err(|e| LabError::Invalid(format!("probing: {e}")))?;
            report.pairs.extend(pairs);
            report.egress.push(egress);
        }
        Ok(report)
    }

    /// Adds the next node with its pods. Returns it and how long after its
    /// record was published the last existing node had its route (timed by
    /// netlink notifications inside each node, see [`watch`]).
    pub fn add_node(&self) -> Result<(NodeState, Duration), LabError> {
        let mut state = self.loaded()?;
        let watches = self.route_watches(&state)?;
        let index = state.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        let node = self.start_node(&state, index)?;
        state.nodes.push(node.clone());
        self.save(&state)?;
        self.wait_leases(&state, Duration::from_secs(30))?;
        let published = self.wait_record(&state.registry, &node.name, Duration::from_secs(30))?;
        let programmed = watch::wait_all(watches, watch::RouteChange::Added, Duration::from_secs(30))
            .ok_or_else(|| LabError::Timeout(format!("a node did not program {}", node.name)))?;
        self.wait_programmed(&state, Duration::from_secs(30))?;
        for j in 1..=state.pods_per_node {
            let pod = self.add_pod(&node, j, state.cni_delegate.as_deref())?;
            state.pods.push(pod);
            self.save(&state)?;
        }
        Ok((node, programmed.duration_since(published).unwrap_or_default()))
    }

    fn route_watches(&self, state: &LabState) -> Result<Vec<watch::RouteWatch>, LabError> {
        state
            .nodes
            .iter()
            .map(|n| {
                watch::RouteWatch::open(&netns::named(&n.netns))
                    .map_err(|e| LabError::io("watching routes in", &netns::named(&n.netns), e))
            })
            .collect()
    }

    /// When `node`'s record became complete: its file's mtime, or, on
    /// Kubernetes, when a poll first saw its annotations (later than the
    /// write by up to one poll).
    fn wait_record(
        &self,
        registry: &LabRegistry,
        node: &str,
        timeout: Duration,
    ) -> Result<std::time::SystemTime, LabError> {
        let path = self.registry_dir().join("nodes").join(format!("{node}.json"));
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.records_of(registry)?.get(node) {
                if r.backend_data.is_some() && r.pod_cidr_v4().is_some() {
                    if matches!(registry, LabRegistry::Kube { .. }) {
                        return Ok(std::time::SystemTime::now());
                    }
                    let meta = std::fs::metadata(&path).map_err(|e| LabError::io("reading", &path, e))?;
                    return meta.modified().map_err(|e| LabError::io("reading", &path, e));
                }
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!("node {node} published no record")));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Removes a node: its agent, its record and lease, its pods, its
    /// namespace. Returns how long after the record went every remaining
    /// node had dropped it.
    pub fn remove_node(&self, node: &str) -> Result<Duration, LabError> {
        let mut state = self.loaded()?;
        let n = state
            .nodes
            .iter()
            .find(|n| n.name == node)
            .cloned()
            .ok_or_else(|| LabError::Invalid(format!("lab `{}` has no node `{node}`", self.name)))?;
        // The agent first, or it would publish its record again.
        kill_agent(n.pid, &self.registry_dir(), false);
        state.pods.retain(|p| p.node != node);
        state.nodes.retain(|x| x.name != node);
        self.save(&state)?;
        let watches = self.route_watches(&state)?;
        let removed_at = std::time::SystemTime::now();
        match &state.registry {
            LabRegistry::File => FileRegistry::open(&self.registry_dir())
                .and_then(|reg| reg.remove(node))
                .map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?,
            LabRegistry::Kube { kubeconfig, .. } => {
                kube::delete_node(&netns::named(&self.underlay_ns()), kubeconfig, node)?
            }
        }
        let dropped = watch::wait_all(watches, watch::RouteChange::Removed, Duration::from_secs(30))
            .ok_or_else(|| LabError::Timeout(format!("a node did not drop {node}")))?;
        self.wait_programmed(&state, Duration::from_secs(30))?;
        let propagation = dropped.duration_since(removed_at).unwrap_or_default();
        let mut namespaces = topo::namespaces_with_prefix(&n.netns)?;
        namespaces.push(n.netns.clone());
        for ns in namespaces {
            topo::kill_processes_in(&ns);
            topo::ip(&["netns", "delete", &ns])?;
        }
        Ok(propagation)
    }

    /// Stops a node's agent (SIGKILL when `kill`, else SIGTERM) and starts it again.
    pub fn restart_agent(&self, node: &str, kill: bool) -> Result<u32, LabError> {
        let mut state = self.loaded()?;
        let (registry, mode) = (state.registry.clone(), state.mode);
        let n = state
            .nodes
            .iter_mut()
            .find(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("lab `{}` has no node `{node}`", self.name)))?;
        kill_agent(n.pid, &self.registry_dir(), kill);
        n.pid = self.spawn_agent(&registry, mode.backend_of(n.index), &n.name, &n.netns)?;
        let pid = n.pid;
        self.save(&state)?;
        Ok(pid)
    }

    /// Changes a node's `public-ip-overwrite` `changes` times (round robin over
    /// the nodes, alternating between two unused underlay addresses) and
    /// times each from the API request to the moment the last other node's
    /// kernel held the new FDB entry. Needs a kube lab. Traffic to the
    /// changed node stops while its overwrite points nowhere; the overwrite
    /// is removed at the end.
    pub fn bench_propagation(
        &self,
        changes: u32,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<Duration>, LabError> {
        let state = self.loaded()?;
        let LabRegistry::Kube { kubeconfig, .. } = &state.registry else {
            return Err(LabError::Invalid(
                "propagation is measured on a kube lab (felt lab up --registry kube)".into(),
            ));
        };
        if state.nodes.len() < 2 {
            return Err(LabError::Invalid("need at least two nodes".into()));
        }
        let ul = netns::named(&self.underlay_ns());
        const KEY: &str = "felt.network/public-ip-overwrite";
        let mut samples = Vec::new();
        for i in 0..changes {
            let target = &state.nodes[i as usize % state.nodes.len()];
            let offset = 200 + (i / state.nodes.len() as u32 % 2) * 20 + target.index;
            let new_ip = Ipv4Addr::from(u32::from(state.underlay.network()) + offset);
            let watches: Vec<watch::RouteWatch> = state
                .nodes
                .iter()
                .filter(|n| n.name != target.name)
                .map(|n| {
                    watch::RouteWatch::open_fdb(&netns::named(&n.netns))
                        .map_err(|e| LabError::io("watching", &ul, e))
                })
                .collect::<Result<_, _>>()?;
            let sent = kube::annotate(&ul, kubeconfig, &target.name, KEY, Some(new_ip.to_string()))?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let waiters: Vec<_> = watches
                .into_iter()
                .map(|w| std::thread::spawn(move || w.wait_fdb(new_ip, deadline)))
                .collect();
            let mut last = sent;
            for w in waiters {
                let at = w.join().ok().flatten().ok_or_else(|| {
                    LabError::Timeout(format!(
                        "change {i}: a node did not program {new_ip} for {}",
                        target.name
                    ))
                })?;
                last = last.max(at);
            }
            samples.push(last.duration_since(sent).unwrap_or_default());
            if (i + 1) % 20 == 0 {
                progress(&format!("{} changes", i + 1));
            }
        }
        for n in &state.nodes {
            kube::annotate(&ul, kubeconfig, &n.name, KEY, None)?;
        }
        self.wait_programmed(&state, Duration::from_secs(30))?;
        Ok(samples)
    }

    /// Measures every path the lab has, in one run (see [`bench`]).
    pub fn bench(
        &self,
        seconds: f64,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Vec<bench::PathResult>, LabError> {
        let state = self.loaded()?;
        let node_of =
            |b: DataplaneKind| state.nodes.iter().filter(move |n| state.mode.backend_of(n.index) == b);
        let pod_of = |node: &NodeState| {
            state
                .pods
                .iter()
                .find(|p| p.node == node.name)
                .map(|p| bench::End { netns: p.netns.clone(), ip: p.ip })
        };
        let kernel: Vec<&NodeState> = node_of(DataplaneKind::Kernel).collect();
        let user: Vec<&NodeState> = node_of(DataplaneKind::Userspace).collect();
        let mut paths: Vec<(&str, bench::End, bench::End)> = Vec::new();
        let (a, b) = (&state.nodes[0], state.nodes.get(1));
        if let Some(b) = b {
            let end = |n: &NodeState| bench::End { netns: n.netns.clone(), ip: n.underlay_ip };
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
                progress(&format!("tcp, {label}, {streams} stream(s): {}", bench::describe(src, dst)));
                with_offload(label, true)?;
                let measured = bench::tcp(src, dst, streams, seconds);
                with_offload(label, false)?;
                let (gbit, cores) = measured.map_err(|e| LabError::Invalid(format!("bench {label}: {e}")))?;
                results.push(bench::PathResult {
                    test: "tcp".into(),
                    path: (*label).to_owned(),
                    between: bench::describe(src, dst),
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
            progress(&format!("udp, {label}: {}", bench::describe(src, dst)));
            with_offload(label, true)?;
            let measured = bench::udp_rate(src, dst, seconds);
            with_offload(label, false)?;
            let r = measured.map_err(|e| LabError::Invalid(format!("bench udp {label}: {e}")))?;
            let gbit = r.received_per_s * (bench::UDP_PAYLOAD * 8) as f64 / 1e9;
            results.push(bench::PathResult {
                test: "udp".into(),
                path: (*label).to_owned(),
                between: bench::describe(src, dst),
                streams: 1,
                gbit_per_s: gbit,
                packets_per_s: Some(r.received_per_s),
                loss: Some(r.loss),
                ratio_to_kernel: None,
                cores_per_gbit: if gbit > 0.0 { r.cores / gbit } else { f64::INFINITY },
                cores_per_mpps: (r.received_per_s > 0.0).then(|| r.cores / (r.received_per_s / 1e6)),
            });
        }
        let kernel_of = |r: &bench::PathResult, rs: &[bench::PathResult]| {
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
        let _ = write_atomic(&bench::results_path(&self.dir), &json);
        Ok(results)
    }

    /// Removes everything of this lab. Returns what it removed.
    pub fn down(&self) -> Result<Vec<String>, LabError> {
        let mut removed = Vec::new();
        if let Some(state) = self.load()? {
            for n in &state.nodes {
                if kill_agent(n.pid, &self.registry_dir(), false) {
                    removed.push(format!("agent {} (pid {})", n.name, n.pid));
                }
            }
        }
        for pid in topo::agents_using(&self.registry_dir()) {
            kill_agent(pid, &self.registry_dir(), false);
            removed.push(format!("agent pid {pid}"));
        }
        if control::stop_proxy(&self.dir.join("control-plane")) {
            removed.push("the API server's loopback proxy".to_owned());
        }
        let mut namespaces = topo::namespaces_with_prefix(&self.name)?;
        // Pods before nodes before the underlay: longest names first.
        namespaces.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let mut errors = Vec::new();
        for ns in namespaces {
            // Whatever the agents left running there (a keeper waiting for a successor).
            let stray = topo::kill_processes_in(&ns);
            if stray > 0 {
                removed.push(format!("{stray} process(es) in {ns}"));
            }
            match topo::ip(&["netns", "delete", &ns]) {
                Ok(()) => removed.push(format!("netns {ns}")),
                Err(e) => errors.push(e.to_string()),
            }
        }
        if self.dir.exists() {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => removed.push(self.dir.display().to_string()),
                Err(e) => errors.push(format!("removing {}: {e}", self.dir.display())),
            }
        }
        if errors.is_empty() { Ok(removed) } else { Err(LabError::Teardown(errors)) }
    }
}

/// The `/debug/state` of the agent in node namespace `netns_name` (its
/// debug endpoint listens on loopback there).
fn agent_state(
    netns_name: &str,
) -> std::io::Result<Result<felt_proto::debug::State, crate::status::FetchError>> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], crate::agent::debug::DEFAULT_PORT));
    netns::run_in(&netns::named(netns_name), move || crate::status::fetch_state(addr))
}

/// Adds what the node's agent says of itself (from its debug endpoint,
/// read inside the node's namespace) to its status.
fn add_agent_view(netns_name: &str, status: &mut NodeStatus) {
    match agent_state(netns_name) {
        Ok(Ok(state)) => {
            status.ready = Some(state.ready);
            status.problems = crate::status::problems(&state);
            status.peers_desired = state.peers.len();
            status.peers_programmed = state.peers.iter().filter(|p| p.in_sync == Some(true)).count();
            status.peers_reachable =
                state.peers.iter().filter(|p| p.probe.state == ProbeStatus::Reachable).count();
        }
        Ok(Err(e)) => status.problems = vec![crate::util::error_chain(&e)],
        Err(e) => status.problems = vec![format!("entering {netns_name}: {e}")],
    }
}

/// Tears a half-built lab down when `up` fails.
struct TeardownOnError<'a> {
    lab: &'a Lab,
    armed: bool,
}

impl Drop for TeardownOnError<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.lab.down() {
                eprintln!("felt lab: cleaning up after a failed `up` also failed: {e}");
            }
        }
    }
}
