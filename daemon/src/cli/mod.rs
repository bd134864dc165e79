//! The `felt` command line: its arguments, and one runner per command.
//!
//! - [`node`]: what runs on a cluster node (`daemon`, `cni`, `install-cni`,
//!   `cleanup`, `status`, `keeper`);
//! - [`lab`]: `felt lab …`, the fabric in network namespaces, with
//!   [`rootless`] joining a user's own lab and [`render`] printing reports.
//!
//! Arguments are validated here, once, into the library's typed configs.

pub mod lab;
pub mod node;
mod render;
pub mod rootless;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use felt_overlay::userspace::Offloads;

pub use lab::LabCommand;

/// felt: a VXLAN overlay network for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "felt", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: lease a pod subnet, publish this node, program every peer.
    Daemon(DaemonArgs),
    /// The CNI plugin (also runs when invoked as /opt/cni/bin/felt with CNI_COMMAND set).
    Cni,
    /// Install the CNI plugin on this node: copy this binary to the CNI bin
    /// dir as `felt` and write the conflist, each atomically (the DaemonSet's
    /// init container runs this; it needs no shell).
    InstallCni {
        #[command(flatten)]
        dirs: CniDirs,
        /// A conflist to install [default: felt, then portmap].
        #[arg(long)]
        conflist: Option<PathBuf>,
    },
    /// Take felt off this node once its DaemonSet is gone: the conflist,
    /// felt's nftables table, its overlay devices and bridge, the subnet file,
    /// the pod address store, and the plugin binary last. Refuses while an
    /// agent answers or pods are attached, unless --force.
    Cleanup(CleanupArgs),
    /// Ask a node's agent what it thinks the network is (from its debug endpoint).
    /// Exits non-zero when the node is not ready.
    Status {
        /// The agent's debug endpoint.
        #[arg(long, env = "FELT_DEBUG_ADDR", default_value = "127.0.0.1:9469")]
        addr: std::net::SocketAddr,
        /// Print the endpoint's /debug/state JSON instead of the summary.
        #[arg(long)]
        json: bool,
    },
    /// Holds the userspace data plane's descriptors (received on stdin)
    /// across agent restarts; started by the agent itself.
    #[command(hide = true)]
    Keeper {
        /// The TUN device.
        #[arg(long)]
        device: String,
        /// How long to wait for the next agent once the last one is gone.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// The whole fabric on one machine, in network namespaces.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
}

/// Where a node keeps its CNI plugins and configs (`install-cni`, `cleanup`).
#[derive(Debug, Args)]
pub struct CniDirs {
    /// The CNI bin dir.
    #[arg(long, default_value = "/opt/cni/bin")]
    pub bin_dir: PathBuf,
    /// The CNI config dir.
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub conf_dir: PathBuf,
    /// The conflist's file name in --conf-dir.
    #[arg(long, default_value = "10-felt.conflist")]
    pub conf_name: String,
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// The node bridge (the CNI config's `bridge`).
    #[arg(long, default_value = "felt0")]
    pub bridge: String,
    /// An overlay device to remove (repeatable). Default: every VXLAN or TUN
    /// device whose name starts with `felt.`.
    #[arg(long = "device")]
    pub devices: Vec<String>,
    #[command(flatten)]
    pub dirs: CniDirs,
    /// The subnet file the agent wrote.
    #[arg(long, default_value = "/run/felt/subnet.env")]
    pub subnet_file: PathBuf,
    /// The plugin's address store (the CNI config's `dataDir`).
    #[arg(long, default_value = "/var/lib/cni/felt")]
    pub data_dir: PathBuf,
    /// The agent's debug endpoint, asked whether an agent still runs, or `off`.
    #[arg(long, env = "FELT_DEBUG_ADDR", default_value = "127.0.0.1:9469", value_parser = parse_debug_addr)]
    pub debug_addr: DebugAddr,
    /// Go on while an agent answers, and remove attached pods' veths too.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum RegistryKind {
    /// A directory with one JSON document per node (see --registry-dir).
    File,
    /// The Kubernetes API: Node objects and their felt.network/ annotations.
    Kube,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum BackendKind {
    /// The kernel's VXLAN device, programmed over netlink.
    Kernel,
    /// felt's own VXLAN engine on a TUN device and a UDP socket (same wire format).
    Userspace,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// This node's name in the registry.
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// Where nodes are registered.
    #[arg(long, env = "FELT_REGISTRY", value_enum, default_value = "file")]
    pub registry: RegistryKind,
    /// The file registry's directory, shared by every agent of the cluster.
    #[arg(long, env = "FELT_REGISTRY_DIR", default_value = "/var/lib/felt/registry")]
    pub registry_dir: PathBuf,
    /// With --registry kube: the kubeconfig. Default: the in-cluster service
    /// account, else $KUBECONFIG.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// With --registry kube: where peers come from. `auto`: FeltNode objects
    /// (feltnodes.felt.network, one per node, written by its agent) once every
    /// Node with backend data has a matching one, Node metadata until then and
    /// when the resource is not installed; `nodes`: Node metadata always;
    /// `feltnodes`: FeltNodes always. Node status updates reach an agent
    /// reading FeltNodes not at all (README "At scale").
    #[arg(long, env = "FELT_PEER_SOURCE", value_enum, default_value = "auto")]
    pub peer_source: felt::registry::kube::PeerSource,
    /// The underlay interface; its first IPv4 address is the node's public IP
    /// (its first global IPv6 one when it has no IPv4 address). Default: the
    /// interface of the IPv4 default route, else of the IPv6 one.
    #[arg(long, env = "FELT_UNDERLAY_IFACE", conflicts_with = "underlay_ip")]
    pub underlay_iface: Option<String>,
    /// The underlay address, IPv4 or IPv6 (an IPv6 underlay); the interface
    /// holding it is the underlay.
    #[arg(long, env = "FELT_UNDERLAY_IP")]
    pub underlay_ip: Option<IpAddr>,
    /// The data plane.
    #[arg(long, env = "FELT_BACKEND", value_enum, default_value = "kernel")]
    pub backend: BackendKind,
    /// The network config JSON ({"network":"10.244.0.0/16","subnetLen":24,"backend":{…}};
    /// with --compat flannel, Flannel's net-conf.json).
    /// Default: 10.244.0.0/16, /24 per node, VXLAN VNI 1 on UDP 8472.
    #[arg(long, env = "FELT_NET_CONF")]
    pub net_conf: Option<PathBuf>,
    /// Keep another agent's conventions: `flannel` reads and writes Flannel's
    /// Node annotations, runs flannel.<VNI> with the VTEP MAC the node
    /// published, writes /run/flannel/subnet.env, owns the `proto boot`
    /// routes on that device and reads --net-conf in Flannel's shape
    /// (README: Coming from Flannel).
    #[arg(long, env = "FELT_COMPAT", value_enum, default_value = "none")]
    pub compat: felt::compat::Compat,
    /// Where to write the subnet file the CNI plugin reads
    /// [default: /run/felt/subnet.env; /run/flannel/subnet.env with --compat flannel].
    #[arg(long, env = "FELT_SUBNET_FILE")]
    pub subnet_file: Option<PathBuf>,
    /// Full resync period when nothing changes (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "FELT_RESYNC_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub resync_period: Duration,
    /// The VXLAN device name. Default: felt.<VNI> (flannel.<VNI> with --compat flannel);
    /// with the default, a flannel.<VNI> device of the same VNI left by Flannel or by
    /// --compat flannel is taken over as felt.<VNI> (renamed in place where the kernel can).
    #[arg(long, env = "FELT_DEVICE")]
    pub device: Option<String>,
    /// The debug endpoint (health, readiness, metrics, state), or `off`.
    /// A non-loopback address is served, with a warning: it has no authentication.
    #[arg(long, env = "FELT_DEBUG_ADDR", default_value = "127.0.0.1:9469", value_parser = parse_debug_addr)]
    pub debug_addr: DebugAddr,
    /// A settings file (JSON: logLevel, probeInterval, resyncPeriod), read
    /// at start and again on SIGHUP; its values override the flags'.
    #[arg(long, env = "FELT_SETTINGS")]
    pub settings: Option<PathBuf>,
    /// How often every peer's VTEP is probed over the overlay.
    #[arg(long, env = "FELT_PROBE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub probe_interval: Duration,
    /// With --backend userspace: the offloads to use, `all`, `none` (one
    /// plain TUN read/write per packet), or some of `tso,gso,gro`.
    #[arg(long, env = "FELT_USERSPACE_OFFLOADS", value_enum, value_delimiter = ',', default_value = "all")]
    pub userspace_offloads: Vec<Offload>,
    /// Kernel mode: drop datagrams to the VXLAN port from any address that is
    /// not a node's, in felt's nftables table (the userspace engine always
    /// drops them). VXLAN itself is unauthenticated (RFC 7348 §7).
    #[arg(long, env = "FELT_VXLAN_PORT_LOCK", value_enum, default_value = "on")]
    pub vxlan_port_lock: Switch,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    /// On.
    On,
    /// Off.
    Off,
}

/// One word of `--userspace-offloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Offload {
    /// Every offload.
    All,
    /// No offload: one plain TUN read or write per packet.
    None,
    /// TCP segmentation offload from the TUN.
    Tso,
    /// UDP GSO to the underlay.
    Gso,
    /// Coalesced writes to the TUN.
    Gro,
}

/// The offloads `words` ask for; `all` and `none` stand alone.
pub fn offloads(words: &[Offload]) -> Result<Offloads, String> {
    match words {
        [Offload::All] => return Ok(Offloads::ALL),
        [Offload::None] | [] => return Ok(Offloads::NONE),
        _ => {}
    }
    let mut o = Offloads::NONE;
    for word in words {
        match word {
            Offload::Tso => o.tso = true,
            Offload::Gso => o.gso = true,
            Offload::Gro => o.gro = true,
            Offload::All | Offload::None => return Err("`all` and `none` stand alone".into()),
        }
    }
    Ok(o)
}

#[derive(Debug, Clone, Copy)]
pub struct DebugAddr(pub Option<std::net::SocketAddr>);

pub fn parse_debug_addr(s: &str) -> Result<DebugAddr, String> {
    if s == "off" {
        return Ok(DebugAddr(None));
    }
    s.parse()
        .map(|a| DebugAddr(Some(a)))
        .map_err(|_| format!("`{s}`: want IP:PORT (e.g. 127.0.0.1:9469) or `off`"))
}

pub use felt::util::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn offload_lists() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from(["felt", "daemon", "--node-name", "n1"].iter().chain(args))
                .map_err(|e| e.to_string())?;
            let Command::Daemon(d) = cli.command else { unreachable!() };
            offloads(&d.userspace_offloads)
        };
        assert_eq!(parse(&[]), Ok(Offloads::ALL));
        assert_eq!(parse(&["--userspace-offloads", "none"]), Ok(Offloads::NONE));
        let tso_gro = parse(&["--userspace-offloads", "tso,gro"]).unwrap();
        assert!(tso_gro.tso && tso_gro.gro && !tso_gro.gso, "{tso_gro}");
        assert!(parse(&["--userspace-offloads", "all,tso"]).is_err());
        assert!(parse(&["--userspace-offloads", "tso,lro"]).is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
