//! Waiting for the fabric: leases held, every peer programmed everywhere,
//! and saying why when it is not.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use felt_overlay::kernel::Kernel;
use felt_overlay::{dataplane, plan};
use felt_proto::{MacAddr, NodeRecord, SubnetFile};

use super::state::{LabRegistry, LabState, NodeAgent, NodeState};
use super::{Lab, LabError, interrupt, topo};
use crate::netns;

impl Lab {
    /// Waits until every node's agent has written its subnet file. A kube
    /// registry gets twice `timeout`: a freshly started API server on a
    /// loaded machine can take seconds per request.
    pub(super) fn wait_leases(&self, state: &LabState, timeout: Duration) -> Result<(), LabError> {
        let timeout = if matches!(state.registry, LabRegistry::Kube { .. }) { timeout * 2 } else { timeout };
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
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
    pub(super) fn audit_of(&self, nodes: &[&str]) -> String {
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
        let net = state.net();
        let dialect = state.dialect();
        let mut out = BTreeMap::new();
        for node in &state.nodes {
            // The peers this node's agent would accept, by the agent's own
            // rules, from what it holds: its lease (the subnet file it wrote),
            // its underlay address and its name's VTEP MAC. Not from its own
            // record, which may be gone (a Node deleted by hand) or lag.
            let subnet = std::fs::read_to_string(self.node_dir(&node.name).join("subnet.env"))
                .ok()
                .and_then(|text| SubnetFile::parse(&text).ok());
            let Some(subnet) = subnet else {
                out.insert(node.name.clone(), usize::MAX);
                continue;
            };
            // The MAC the node publishes: felt derives one from the node name
            // unless it took one over; flanneld picks one at random.
            let published = records.iter().find(|r| r.name == node.name).and_then(|r| r.backend_data);
            let vtep_mac = match (published, node.agent) {
                (Some(d), _) => d.vtep_mac,
                (None, NodeAgent::Felt | NodeAgent::FeltOwn) => MacAddr::derive(node.name.as_bytes()),
                (None, NodeAgent::Flannel) => {
                    out.insert(node.name.clone(), usize::MAX);
                    continue;
                }
            };
            let compat = node.agent.compat(dialect);
            let device = compat.default_device(net.backend.vni);
            let me = crate::agent::view::Me {
                name: node.name.clone(),
                pod_cidr: subnet.subnet(),
                pod_cidr6: subnet.subnet6(),
                underlay_ip: state.underlay_of(node),
                vtep_mac,
            };
            let peers = crate::agent::view::build(&records, &me, &net, |_| false).peers;
            let backend = state.backend_of(node);
            let want = dataplane::desired(backend, &peers);
            let tag = compat.route_tag();
            let observed = netns::block_on_in(&netns::named(&node.netns), move || async move {
                let k = Kernel::connect()?.with_route_tag(tag);
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
    pub(super) fn log_tail(&self, node: &str, status: &str) -> String {
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
            interrupt::check()?;
            let pending = self.pending_ops(state)?;
            if pending.values().all(|n| *n == 0) {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                // The agents' own words say why; their logs go with the lab on teardown.
                let mut why = String::new();
                for (node, n) in pending.iter().filter(|(_, n)| **n != 0) {
                    let missing = if *n == usize::MAX {
                        "no lease (subnet file) or no VXLAN device yet".to_owned()
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
}
