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
//!
//! | module | its one job |
//! |---|---|
//! | [`state`] | what a lab is (`lab.json`), loading and saving it |
//! | `topo` | namespaces, veths, the underlay bridge and the outside host |
//! | [`control`], `kube` | the lab's own etcd + kube-apiserver, and Node objects |
//! | `up` | bring-up: nodes, agents, pods (`teardown` undoes a failed one) |
//! | `converge` | waiting for leases and programming, saying why not |
//! | `status` | `lab status` (asks every agent) and `lab check` (probes every pod pair) |
//! | [`probe`] | the probes `check` runs |
//! | `membership` | add/remove nodes, restart agents, propagation timing |
//! | [`watch`] | netlink route watches that time propagation |
//! | [`bench`](mod@bench), [`soak`] | throughput/packet-rate ratios and the garbage flood |
//! | [`scale`] | the control-plane benchmark: what N peers cost one agent |
//! | [`rootless`] | a lab inside a user namespace, for unprivileged users |

pub mod bench;
pub mod control;
mod converge;
pub mod interrupt;
mod kube;
mod membership;
pub mod probe;
pub mod rootless;
pub mod scale;
pub mod soak;
pub mod state;
mod status;
mod teardown;
mod topo;
mod up;
pub mod watch;

use std::path::{Path, PathBuf};

pub use membership::Removal;
pub use state::{
    IpFamily, LabRegistry, LabState, Mode, NodeAgent, NodeState, PodState, UnderlayFamily, UpOptions,
};
pub use status::{CheckReport, LabStatus, NodeStatus};
pub use topo::{LabError, OUTSIDE_IP, OUTSIDE_IP6, host_ip, kill_agent, underlay_subnet, underlay6};

/// Where labs keep their files unless told otherwise.
pub const DEFAULT_STATE_ROOT: &str = "/run/felt/lab";

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

    pub(super) fn state_path(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    pub(super) fn registry_dir(&self) -> PathBuf {
        self.dir.join("registry")
    }

    pub(super) fn net_conf_path(&self) -> PathBuf {
        self.dir.join("net.json")
    }

    pub(super) fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join(node)
    }

    /// The agent log of `node`.
    pub fn log_path(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("agent.log")
    }

    pub(super) fn underlay_ns(&self) -> String {
        format!("{}-ul", self.name)
    }
}
