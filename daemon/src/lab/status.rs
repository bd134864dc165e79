//! `felt lab status` and `felt lab check`: what the agents say, and what
//! the pods find when they try.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use felt_proto::NodeRecord;
use felt_proto::debug::ProbeStatus;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::state::{NodeAgent, PodState};
use super::{Lab, LabError, probe, topo};
use crate::netns;

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
    /// Its IPv4 pod subnet, once its record has one.
    pub pod_cidr: Option<Ipv4Net>,
    /// Its IPv6 pod subnet, in a dual-stack or IPv6-only lab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr6: Option<ipnet::Ipv6Net>,
    /// Its VTEP MAC, once published.
    pub vtep_mac: Option<felt_proto::MacAddr>,
    /// The agent's process id.
    pub pid: u32,
    /// Which agent the node runs (`felt`, `felt-own`, `flannel`).
    #[serde(default)]
    pub agent: NodeAgent,
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
    /// Every pod to the outside host, over each family the pod and its node
    /// have (IPv6: in a lab whose nodes have IPv6 addresses).
    pub egress: Vec<probe::EgressResult>,
    /// How many pods probed.
    pub pods: usize,
}

impl CheckReport {
    /// Every pair and every egress probe passed, and there was something to probe.
    pub fn ok(&self) -> bool {
        self.pods > 0
            && self.pairs.iter().all(probe::PairResult::ok)
            && self.egress.iter().all(probe::EgressResult::ok)
    }
}

impl Lab {
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
                    pod_cidr6: r.and_then(NodeRecord::pod_cidr_v6),
                    vtep_mac: r.and_then(|r| r.backend_data).map(|d| d.vtep_mac),
                    pid: n.pid,
                    agent: n.agent,
                    agent_running: topo::agent_alive(n.pid, &self.registry_dir()),
                    ready: None,
                    peers_desired: 0,
                    peers_programmed: 0,
                    peers_reachable: 0,
                    problems: Vec::new(),
                };
                // flanneld has no debug endpoint: the lab knows only that it runs.
                if n.agent != NodeAgent::Flannel {
                    add_agent_view(&n.netns, &mut status);
                }
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
                // Every pair over each family both pods have.
                let targets: Vec<(String, IpAddr)> = state
                    .pods
                    .iter()
                    .filter(|d| d.name != src.name)
                    .flat_map(|d| {
                        let v4 = d.ip.filter(|_| src.ip.is_some()).map(|ip| (d.name.clone(), IpAddr::V4(ip)));
                        let v6 =
                            d.ip6.filter(|_| src.ip6.is_some()).map(|ip| (d.name.clone(), IpAddr::V6(ip)));
                        v4.into_iter().chain(v6)
                    })
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
                    ip6: src.ip6,
                    node_ip,
                    node_ip6: state.nodes_have_ipv6().then(|| topo::underlay6(node_ip)),
                };
                let (outside, outside6) = (topo::OUTSIDE_IP, topo::OUTSIDE_IP6);
                std::thread::spawn(move || probe::probe_from(pod, &targets, outside, outside6))
            })
            .collect();
        let mut report = CheckReport::default();
        for w in workers {
            let r = w.join().map_err(|_| LabError::Invalid("a probe thread panicked".into()))?;
            let (pairs, egress) = r.map_err(|e| LabError::Invalid(format!("probing: {e}")))?;
            report.pairs.extend(pairs);
            report.egress.extend(egress);
            report.pods += 1;
        }
        Ok(report)
    }
}

/// The `/debug/state` of the agent in node namespace `netns_name` (its
/// debug endpoint listens on loopback there).
pub(super) fn agent_state(
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
