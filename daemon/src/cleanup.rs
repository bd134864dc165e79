//! `felt cleanup`: takes felt off a node once its DaemonSet is gone.
//!
//! A stopping agent leaves its data plane in place on purpose (the next agent
//! takes it over without dropping a packet), and `kubectl delete` of the
//! DaemonSet cannot reach into the node. This is the way back to a node
//! without felt: it removes, in this order,
//!
//! 1. the conflist, so the runtime stops attaching new pods through felt;
//! 2. felt's nftables table `ip felt` (egress masquerade), never another table;
//! 3. the pods' host veths (only with `--force`: they carry running pods);
//! 4. felt's VXLAN or TUN devices (`felt.*`), taking their routes, neighbour
//!    and FDB entries with them (and a TUN's keeper, which holds the VXLAN
//!    port for a next agent), and the node bridge;
//! 5. the subnet file and the plugin's address store;
//! 6. the plugin binary, last, which may be the running executable.
//!
//! It refuses while an agent still answers on its debug endpoint (it would
//! put everything back), and while pods are still attached to the bridge
//! (removing it would cut them off), unless forced. Running it twice is safe:
//! the second run finds nothing.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use felt_overlay::nft::{Family, Nft};
use felt_overlay::userspace::keeper;

use crate::cni::link;

/// What to remove, and where it lives.
#[derive(Debug, Clone)]
pub struct Cleanup {
    /// The node bridge (the CNI config's `bridge`).
    pub bridge: String,
    /// The overlay devices to remove; empty: every VXLAN or TUN device whose
    /// name starts with `felt.`.
    pub devices: Vec<String>,
    /// The CNI bin dir.
    pub cni_bin_dir: PathBuf,
    /// The CNI config dir.
    pub cni_conf_dir: PathBuf,
    /// The conflist's file name.
    pub conf_name: String,
    /// The subnet file the agent wrote.
    pub subnet_file: PathBuf,
    /// The plugin's address store (the CNI config's `dataDir`).
    pub data_dir: PathBuf,
    /// The agent's debug endpoint, to tell whether an agent still runs.
    pub debug_addr: Option<SocketAddr>,
    /// Also remove pods' host veths, and go on while an agent answers.
    pub force: bool,
}

/// Why cleanup stopped before removing anything.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// An agent still runs and would rebuild what cleanup removes.
    #[error(
        "a felt agent still answers at {0}: delete the DaemonSet (or stop the agent) first, or pass --force"
    )]
    AgentRunning(SocketAddr),
    /// Pods are still attached; removing the bridge would cut them off.
    #[error(
        "{} pod interface(s) still attached to {bridge} ({}): drain the node first, or pass --force to remove them too",
        ports.len(),
        ports.join(", ")
    )]
    PodsAttached {
        /// The bridge.
        bridge: String,
        /// Its ports.
        ports: Vec<String>,
    },
    /// The kernel refused a netlink request.
    #[error("{0}")]
    Netlink(String),
    /// nf_tables refused.
    #[error("removing the nftables table ip felt: {0}")]
    Nft(String),
    /// A userspace device's keeper answered but could not be released.
    #[error("releasing the keeper of {device}: {source}")]
    Keeper {
        /// The TUN device it keeps.
        device: String,
        /// The cause.
        source: io::Error,
    },
    /// A file could not be removed.
    #[error("removing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn netlink(e: felt_proto::cni::CniError) -> CleanupError {
    CleanupError::Netlink(format!("{e}: {}", e.details))
}

/// Removes a file or a directory tree; whether there was one.
fn remove_path(path: &Path) -> Result<bool, CleanupError> {
    let result = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
    };
    match result {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CleanupError::Io { path: path.to_owned(), source }),
    }
}

impl Cleanup {
    /// Whether link `name` of `kind` is one of felt's overlay devices.
    fn is_device(&self, name: &str, kind: Option<&str>) -> bool {
        if self.devices.is_empty() {
            name.starts_with("felt.") && matches!(kind, Some("vxlan" | "tun"))
        } else {
            self.devices.iter().any(|d| d == name)
        }
    }

    /// Removes felt from this node; returns what it removed, one line each.
    pub fn run(&self) -> Result<Vec<String>, CleanupError> {
        if let Some(addr) = self.debug_addr.filter(|_| !self.force) {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok() {
                return Err(CleanupError::AgentRunning(addr));
            }
        }
        let ports = link::bridge_ports(&self.bridge).map_err(netlink)?;
        if !ports.is_empty() && !self.force {
            return Err(CleanupError::PodsAttached { bridge: self.bridge.clone(), ports });
        }
        let mut removed = Vec::new();
        let conflist = self.cni_conf_dir.join(&self.conf_name);
        if remove_path(&conflist)? {
            removed.push(format!("CNI config {}", conflist.display()));
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            let mut nft = Nft::open_for(family).map_err(|e| CleanupError::Nft(e.to_string()))?;
            if nft.remove().map_err(|e| CleanupError::Nft(e.to_string()))? {
                removed.push(format!("nftables table {} felt", family.name()));
            }
        }
        for port in &ports {
            if link::delete_link(port).map_err(netlink)? {
                removed.push(format!("pod veth {port}"));
            }
        }
        for (name, kind) in link::links().map_err(netlink)? {
            let ours = self.is_device(&name, kind.as_deref())
                || (name == self.bridge && kind.as_deref() == Some("bridge"));
            // A userspace device's keeper holds the VXLAN port for the next
            // agent: there will be none.
            let release = || {
                keeper::release(&name).map_err(|source| CleanupError::Keeper { device: name.clone(), source })
            };
            if ours && kind.as_deref() == Some("tun") && release()? {
                removed.push(format!("keeper of {name} (the VXLAN port it held is free)"));
            }
            if ours && link::delete_link(&name).map_err(netlink)? {
                removed.push(format!("{} device {name}", kind.as_deref().unwrap_or("network")));
            }
        }
        for (what, path) in [("subnet file", &self.subnet_file), ("pod address store", &self.data_dir)] {
            if remove_path(path)? {
                removed.push(format!("{what} {}", path.display()));
            }
        }
        let binary = self.cni_bin_dir.join("felt");
        if remove_path(&binary)? {
            removed.push(format!("CNI plugin {}", binary.display()));
        }
        Ok(removed)
    }
}
