//! Nodes joining and leaving a running lab, agents restarting, and how fast
//! the other nodes follow.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use felt_proto::annotations::Dialect;

use super::state::{LabRegistry, LabState, NodeAgent, NodeState};
use super::{Lab, LabError, kill_agent, kube, topo, watch};
use crate::netns;
use crate::registry::file::FileRegistry;

impl Lab {
    /// Adds the next node with its pods. Returns it and how long after its
    /// record was published the last existing node had its route (timed by
    /// netlink notifications inside each node, see [`watch`]).
    pub fn add_node(&self, agent: NodeAgent) -> Result<(NodeState, Duration), LabError> {
        let mut state = self.loaded()?;
        if agent == NodeAgent::Flannel && state.flannel.is_none() {
            return Err(LabError::Invalid("a Flannel node needs a lab built with --flannel".into()));
        }
        let watches = self.route_watches(&state)?;
        let index = state.nodes.iter().map(|n| n.index).max().unwrap_or(0) + 1;
        let mut node = self.make_node(&state, index, agent)?;
        self.pin_underlay(&state, std::slice::from_ref(&node))?;
        node.pid = self.start_agent(&state, &node, state.nodes.len() + 1)?;
        state.nodes.push(node.clone());
        self.save(&state)?;
        self.wait_leases(&state, Duration::from_secs(30))?;
        let published = self.wait_record(&state.registry, &node.name, Duration::from_secs(30))?;
        let programmed = watch::wait_all(watches, watch::RouteChange::Added, Duration::from_secs(30))
            .ok_or_else(|| LabError::Timeout(format!("a node did not program {}", node.name)))?;
        self.wait_programmed(&state, Duration::from_secs(30))?;
        for j in 1..=state.pods_per_node {
            let pod = self.add_pod(&state, &node, j)?;
            state.pods.push(pod);
            self.save(&state)?;
        }
        Ok((node, programmed.duration_since(published).unwrap_or_default()))
    }

    pub(super) fn route_watches(&self, state: &LabState) -> Result<Vec<watch::RouteWatch>, LabError> {
        state
            .nodes
            .iter()
            .map(|n| {
                let ns = netns::named(&n.netns);
                let watch = match n.agent.compat(state.dialect()) {
                    crate::compat::Compat::None => watch::RouteWatch::open(&ns),
                    c => watch::RouteWatch::open_tagged(
                        &ns,
                        c.route_tag(),
                        &c.default_device(felt_proto::DEFAULT_VNI),
                    ),
                };
                watch.map_err(|e| LabError::io("watching routes in", &ns, e))
            })
            .collect()
    }

    /// When `node`'s record became complete: its file's mtime, or, on
    /// Kubernetes, when a poll first saw its annotations (later than the
    /// write by up to one poll).
    pub(super) fn wait_record(
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
    /// namespaces — all of that whatever the other nodes do — then waits (at
    /// most 30 s) for the nodes whose agents run to drop it, and says which
    /// nodes have not caught up (an agent that is down cannot).
    pub fn remove_node(&self, node: &str) -> Result<Removal, LabError> {
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
        let (live, down): (Vec<NodeState>, Vec<NodeState>) =
            state.nodes.iter().cloned().partition(|x| topo::agent_alive(x.pid, &self.registry_dir()));
        let live_state = LabState { nodes: live, ..state.clone() };
        let watches = self.route_watches(&live_state)?;
        let removed_at = std::time::SystemTime::now();
        match &state.registry {
            LabRegistry::File => FileRegistry::open(&self.registry_dir())
                .and_then(|reg| reg.remove(node))
                .map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?,
            LabRegistry::Kube { kubeconfig, .. } => {
                kube::delete_node(&netns::named(&self.underlay_ns()), kubeconfig, node)?
            }
        }
        let mut namespaces = topo::namespaces_with_prefix(&n.netns)?;
        namespaces.push(n.netns.clone());
        for ns in namespaces {
            topo::kill_processes_in(&ns);
            topo::ip(&["netns", "delete", &ns])?;
        }
        // Its address is no one's now: no node keeps it pinned.
        for other in &state.nodes {
            topo::unpin_neighbour(&other.netns, "eth0", n.underlay_ip);
        }
        topo::unpin_neighbour(&self.underlay_ns(), "br0", n.underlay_ip);
        let dropped = watch::wait_all(watches, watch::RouteChange::Removed, Duration::from_secs(30));
        let mut behind: Vec<String> =
            down.iter().map(|x| format!("{} (its agent is not running)", x.name)).collect();
        if let Err(LabError::Timeout(_)) = self.wait_programmed(&live_state, Duration::from_secs(30)) {
            for (name, ops) in self.pending_ops(&live_state)?.into_iter().filter(|(_, ops)| *ops != 0) {
                behind.push(format!("{name} ({ops} ops pending)"));
            }
        }
        if dropped.is_none() && behind.is_empty() {
            behind.push("a node whose route watch saw no removal within 30 s".to_owned());
        }
        let dropped_after = dropped.map(|t| t.duration_since(removed_at).unwrap_or_default());
        Ok(Removal { dropped_after: if behind.is_empty() { dropped_after } else { None }, behind })
    }

    /// Stops a node's agent (SIGKILL when `kill`, else SIGTERM) and starts it again.
    pub fn restart_agent(&self, node: &str, kill: bool) -> Result<u32, LabError> {
        let mut state = self.loaded()?;
        let i = state
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("lab `{}` has no node `{node}`", self.name)))?;
        kill_agent(state.nodes[i].pid, &self.registry_dir(), kill);
        let pid = self.start_agent(&state, &state.nodes[i], state.nodes.len())?;
        state.nodes[i].pid = pid;
        self.save(&state)?;
        Ok(pid)
    }

    /// Replaces node `node`'s agent: stops it (SIGTERM, as a DaemonSet
    /// rollout does) and starts `to` in its place, leaving the kernel, the
    /// pods and the Node as they are; the migration step of README "Coming
    /// from Flannel", both ways. Returns the new agent's pid.
    pub fn switch_agent(&self, node: &str, to: NodeAgent) -> Result<u32, LabError> {
        let mut state = self.loaded()?;
        if state.dialect() != Dialect::Flannel {
            return Err(LabError::Invalid(
                "switching agents needs a lab in Flannel's dialect (--flannel-nodes or --compat flannel)"
                    .into(),
            ));
        }
        let i = state
            .nodes
            .iter()
            .position(|n| n.name == node)
            .ok_or_else(|| LabError::Invalid(format!("lab `{}` has no node `{node}`", self.name)))?;
        if state.nodes[i].agent == to {
            return Err(LabError::Invalid(format!("{node} already runs {to:?}")));
        }
        kill_agent(state.nodes[i].pid, &self.registry_dir(), false);
        state.nodes[i].agent = to;
        let pid = self.start_agent(&state, &state.nodes[i], state.nodes.len())?;
        state.nodes[i].pid = pid;
        self.save(&state)?;
        Ok(pid)
    }

    /// Changes a node's `public-ip-overwrite` `changes` times (round robin over
    /// the nodes, alternating between two unused underlay addresses) and
    /// times each from the API request to the moment the last other kernel
    /// node held the new FDB entry. Needs a kube lab. Traffic to the
    /// changed node stops while its overwrite points nowhere; the overwrite
    /// is removed at the end. Only felt's nodes are changed (flanneld reads
    /// its own overwrite only when it starts); flanneld's nodes program the
    /// `public-ip` felt republishes for it.
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
        let felts: Vec<&NodeState> = state.nodes.iter().filter(|n| n.agent != NodeAgent::Flannel).collect();
        if state.nodes.len() < 2 || felts.is_empty() {
            return Err(LabError::Invalid("need at least two nodes, one of them felt's".into()));
        }
        if state.underlay_family != super::UnderlayFamily::Ipv4 {
            return Err(LabError::Invalid(
                "propagation moves nodes to IPv4 addresses: use an IPv4 underlay".into(),
            ));
        }
        let ul = netns::named(&self.underlay_ns());
        let mut samples = Vec::new();
        for i in 0..changes {
            let target = felts[i as usize % felts.len()];
            let offset = 200 + (i / felts.len() as u32 % 2) * 20 + target.index;
            let new_ip = Ipv4Addr::from(u32::from(state.underlay.network()) + offset);
            // The kernel nodes: a userspace engine keeps its peers to itself.
            let watches: Vec<watch::RouteWatch> = state
                .nodes
                .iter()
                .filter(|n| {
                    n.name != target.name && state.backend_of(n) == felt_overlay::DataplaneKind::Kernel
                })
                .map(|n| {
                    watch::RouteWatch::open_fdb(&netns::named(&n.netns))
                        .map_err(|e| LabError::io("watching", &ul, e))
                })
                .collect::<Result<_, _>>()?;
            let key = target.agent.compat(state.dialect()).dialect().keys().public_ip_overwrite;
            let sent = kube::annotate(&ul, kubeconfig, &target.name, key, Some(new_ip.to_string()))?;
            let deadline = Instant::now() + Duration::from_secs(5);
            let waiters: Vec<_> = watches
                .into_iter()
                .map(|mut w| std::thread::spawn(move || w.wait_fdb(new_ip, deadline)))
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
        for n in &felts {
            let key = n.agent.compat(state.dialect()).dialect().keys().public_ip_overwrite;
            kube::annotate(&ul, kubeconfig, &n.name, key, None)?;
        }
        // Each agent published its overwrite as its public-ip; the lab is
        // itself again once every one has published its own address.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let records = self.records_of(&state.registry)?;
            let behind: Vec<&str> = felts
                .iter()
                .filter(|n| records.get(&n.name).and_then(|r| r.public_ip) != Some(state.underlay_of(n)))
                .map(|n| n.name.as_str())
                .collect();
            if behind.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(LabError::Timeout(format!(
                    "{behind:?} still publish their overwrite after 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.wait_programmed(&state, Duration::from_secs(30))?;
        Ok(samples)
    }
}

/// What `remove-node` did beyond removing the node.
#[derive(Debug, Clone)]
pub struct Removal {
    /// How long after its record went every other node had dropped it;
    /// `None` when some have not.
    pub dropped_after: Option<Duration>,
    /// The nodes that still hold the removed node, and why.
    pub behind: Vec<String>,
}
