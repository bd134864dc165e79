//! The `felt` binary: the node agent, the CNI plugin and the lab.

#![forbid(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use felt::agent::{self, AgentConfig};
use felt::lab::{self, Lab, LabRegistry, Mode, UpOptions};
use felt::registry::RegistryConfig;
use felt_overlay::kernel::UnderlayChoice;
use felt_overlay::userspace::Offloads;
use felt_proto::NetConfig;

/// felt: a VXLAN overlay network for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "felt", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
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
    /// Keeps a stopping agent's userspace data plane (descriptors on stdin)
    /// for the next agent; started by the agent itself.
    #[command(hide = true)]
    Keeper {
        /// The TUN device.
        #[arg(long)]
        device: String,
        /// How long to wait for the next agent.
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
struct CniDirs {
    /// The CNI bin dir.
    #[arg(long, default_value = "/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The CNI config dir.
    #[arg(long, default_value = "/etc/cni/net.d")]
    conf_dir: PathBuf,
    /// The conflist's file name in --conf-dir.
    #[arg(long, default_value = "10-felt.conflist")]
    conf_name: String,
}

#[derive(Debug, Args)]
struct CleanupArgs {
    /// The node bridge (the CNI config's `bridge`).
    #[arg(long, default_value = "felt0")]
    bridge: String,
    /// An overlay device to remove (repeatable). Default: every VXLAN or TUN
    /// device whose name starts with `felt.`.
    #[arg(long = "device")]
    devices: Vec<String>,
    #[command(flatten)]
    dirs: CniDirs,
    /// The subnet file the agent wrote.
    #[arg(long, default_value = "/run/felt/subnet.env")]
    subnet_file: PathBuf,
    /// The plugin's address store (the CNI config's `dataDir`).
    #[arg(long, default_value = "/var/lib/cni/felt")]
    data_dir: PathBuf,
    /// The agent's debug endpoint, asked whether an agent still runs, or `off`.
    #[arg(long, env = "FELT_DEBUG_ADDR", default_value = "127.0.0.1:9469", value_parser = parse_debug_addr)]
    debug_addr: DebugAddr,
    /// Go on while an agent answers, and remove attached pods' veths too.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RegistryKind {
    /// A directory with one JSON document per node (see --registry-dir).
    File,
    /// The Kubernetes API: Node objects and their felt.network/ annotations.
    Kube,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackendKind {
    /// The kernel's VXLAN device, programmed over netlink.
    Kernel,
    /// felt's own VXLAN engine on a TUN device and a UDP socket (same wire format).
    Userspace,
}

#[derive(Debug, Args)]
struct DaemonArgs {
    /// This node's name in the registry.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Where nodes are registered.
    #[arg(long, env = "FELT_REGISTRY", value_enum, default_value = "file")]
    registry: RegistryKind,
    /// The file registry's directory, shared by every agent of the cluster.
    #[arg(long, env = "FELT_REGISTRY_DIR", default_value = "/var/lib/felt/registry")]
    registry_dir: PathBuf,
    /// With --registry kube: the kubeconfig. Default: the in-cluster service
    /// account, else $KUBECONFIG.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The underlay interface; its first IPv4 address is the node's public IP.
    /// Default: the interface of the default route.
    #[arg(long, env = "FELT_UNDERLAY_IFACE", conflicts_with = "underlay_ip")]
    underlay_iface: Option<String>,
    /// The underlay address; the interface holding it is the underlay.
    #[arg(long, env = "FELT_UNDERLAY_IP")]
    underlay_ip: Option<Ipv4Addr>,
    /// The data plane.
    #[arg(long, env = "FELT_BACKEND", value_enum, default_value = "kernel")]
    backend: BackendKind,
    /// The network config JSON ({"network":"10.244.0.0/16","subnetLen":24,"backend":{…}}).
    /// Default: 10.244.0.0/16, /24 per node, VXLAN VNI 1 on UDP 8472.
    #[arg(long, env = "FELT_NET_CONF")]
    net_conf: Option<PathBuf>,
    /// Where to write the subnet file the CNI plugin reads.
    #[arg(long, env = "FELT_SUBNET_FILE", default_value = "/run/felt/subnet.env")]
    subnet_file: PathBuf,
    /// Full resync period when nothing changes (e.g. 30s, 500ms, 2m).
    #[arg(long, env = "FELT_RESYNC_PERIOD", default_value = "30s", value_parser = parse_duration)]
    resync_period: Duration,
    /// The VXLAN device name. Default: felt.<VNI>.
    #[arg(long, env = "FELT_DEVICE")]
    device: Option<String>,
    /// The debug endpoint (health, readiness, metrics, state), or `off`.
    /// A non-loopback address is served, with a warning: it has no authentication.
    #[arg(long, env = "FELT_DEBUG_ADDR", default_value = "127.0.0.1:9469", value_parser = parse_debug_addr)]
    debug_addr: DebugAddr,
    /// How often every peer's VTEP is probed over the overlay.
    #[arg(long, env = "FELT_PROBE_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    probe_interval: Duration,
    /// With --backend userspace: the offloads to use, `all`, `none` (one
    /// plain TUN read/write per packet), or some of `tso,gso,gro`.
    #[arg(long, env = "FELT_USERSPACE_OFFLOADS", default_value = "all", value_parser = Offloads::parse)]
    userspace_offloads: Offloads,
}

#[derive(Debug, Clone, Copy)]
struct DebugAddr(Option<std::net::SocketAddr>);

fn parse_debug_addr(s: &str) -> Result<DebugAddr, String> {
    if s == "off" {
        return Ok(DebugAddr(None));
    }
    s.parse()
        .map(|a| DebugAddr(Some(a)))
        .map_err(|_| format!("`{s}`: want IP:PORT (e.g. 127.0.0.1:9469) or `off`"))
}

#[derive(Debug, Args)]
struct LabName {
    /// Lab name: prefixes every namespace (1-8 of [a-z0-9]).
    #[arg(long, default_value = "felt")]
    name: String,
    /// Where labs keep their state.
    #[arg(long, env = "FELT_LAB_STATE", default_value = lab::DEFAULT_STATE_ROOT, hide = true)]
    state_root: PathBuf,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the lab and wait until the fabric is programmed.
    Up {
        #[command(flatten)]
        lab: LabName,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Pods on each node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: u32,
        /// Data plane of every node [default: kernel, or userspace with --rootless].
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Run the lab as this (unprivileged) user, inside a user namespace
        /// felt creates; later `felt lab` commands of this user find it.
        #[arg(long)]
        rootless: bool,
        /// Where the agents register: a file registry in the lab, or a
        /// Kubernetes API server (the lab's own, or --kubeconfig's).
        #[arg(long, value_enum, default_value = "file")]
        registry: RegistryKind,
        /// With --registry kube: a kubeconfig whose server listens inside the
        /// lab's underlay namespace NAME-ul, on the lab host address (.1 of
        /// the underlay /24, see `felt lab address`). Without it the lab
        /// starts its own etcd and kube-apiserver there (see --control-plane).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// With --registry kube and no --kubeconfig: the directory holding
        /// `kube-apiserver` and `etcd` (what `tests/k8s/build.sh` prints)
        /// [default: $PATH].
        #[arg(long, env = "FELT_K8S_BIN", value_name = "DIR")]
        control_plane: Option<PathBuf>,
        /// Attach pods in CNI delegate mode, through the `bridge` and
        /// `host-local` plugins found in this directory (Debian: /usr/lib/cni).
        #[arg(long, value_name = "CNI_PATH")]
        cni_delegate: Option<PathBuf>,
    },
    /// Show the lab's nodes and pods.
    Status {
        #[command(flatten)]
        lab: LabName,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Probe every pod from every other pod (ICMP and TCP, which must arrive
    /// un-NATed) and the outside host from every pod (which must see the
    /// node's address); exit 0 only if all pass.
    Check {
        #[command(flatten)]
        lab: LabName,
    },
    /// Add one node (with its pods) and report how fast peers programmed it.
    AddNode {
        #[command(flatten)]
        lab: LabName,
    },
    /// Remove a node: its pods, agent, registry record and namespace.
    RemoveNode {
        #[command(flatten)]
        lab: LabName,
        /// The node, e.g. n2.
        node: String,
    },
    /// Stop a node's agent and start it again.
    RestartAgent {
        #[command(flatten)]
        lab: LabName,
        /// The node, e.g. n2.
        node: String,
        /// Use SIGKILL instead of SIGTERM.
        #[arg(long)]
        kill: bool,
    },
    /// Remove everything of the lab, agents included. Safe to repeat.
    Down {
        #[command(flatten)]
        lab: LabName,
    },
    /// Time node changes until every other node programmed them (kube labs):
    /// prints p50, p90, p99 and max over --changes changes.
    Propagation {
        #[command(flatten)]
        lab: LabName,
        /// How many changes.
        #[arg(long, default_value_t = 100)]
        changes: u32,
    },
    /// Pod-to-pod TCP throughput (1 and 4 streams) and UDP packet rate
    /// across nodes, in one run: raw underlay, kernel VXLAN, userspace, mixed
    /// (whichever the lab has), each as a ratio to kernel VXLAN, with CPU cost.
    Bench {
        #[command(flatten)]
        lab: LabName,
        /// Build a lab of this mode for the run (4 nodes, a pod each; removed
        /// after), instead of measuring the existing lab `--name`. `mixed` has
        /// every path.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Floods a userspace node's VXLAN port with malformed datagrams of every
    /// kind (and from an address that is no peer's) while pods ping across
    /// it; accounts for every datagram and checks traffic flows after.
    Soak {
        #[command(flatten)]
        lab: LabName,
        /// Datagrams to send.
        #[arg(long, default_value_t = 10_000_000)]
        datagrams: u64,
        /// Stop sending after this many seconds even if not all were sent.
        #[arg(long, default_value_t = 600.0)]
        max_seconds: f64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Holds a rootless lab's namespaces (started by `up --rootless`).
    #[command(hide = true)]
    Hold {
        #[command(flatten)]
        lab: LabName,
    },
    /// Forwards loopback connections to the lab's API server inside NAME-ul
    /// (started by `up --registry kube`; `down` stops it).
    #[command(hide = true)]
    ApiProxy {
        #[command(flatten)]
        lab: LabName,
        /// The API server's address inside the lab.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// Where to write the loopback address once listening.
        #[arg(long)]
        addr_file: PathBuf,
    },
    /// Print the lab's host address (where a Kubernetes API server for
    /// `up --registry kube` listens, inside namespace NAME-ul).
    Address {
        #[command(flatten)]
        lab: LabName,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = num.parse().map_err(|_| format!("`{s}`: want a number with ms, s, m or h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (ms, s, m, h)")),
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

fn main() -> ExitCode {
    // A container runtime runs the plugin as `/opt/cni/bin/felt` with no arguments.
    if std::env::args_os().len() == 1 && std::env::var_os("CNI_COMMAND").is_some() {
        return run_cni();
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Daemon(args) => run_daemon(args),
        Command::Cni => return run_cni(),
        Command::InstallCni { dirs, conflist } => run_install_cni(dirs, conflist),
        Command::Cleanup(args) => run_cleanup(args),
        Command::Status { addr, json } => run_status(addr, json),
        Command::Keeper { device, hold } => run_keeper(&device, hold),
        Command::Lab { command } => enter_rootless(&command).and_then(|rootless| {
            let down = matches!(command, LabCommand::Down { .. });
            let up = matches!(command, LabCommand::Up { .. });
            let result = run_lab(command);
            if let Some((holder, started)) = rootless {
                // A rootless lab lives as long as its holder: stop it with the lab,
                // or when the `up` that started it failed.
                if down || (up && started && result.is_err()) {
                    holder.stop();
                }
            }
            result
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("felt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl LabCommand {
    fn lab(&self) -> &LabName {
        match self {
            LabCommand::Up { lab, .. }
            | LabCommand::Status { lab, .. }
            | LabCommand::Check { lab }
            | LabCommand::AddNode { lab }
            | LabCommand::RemoveNode { lab, .. }
            | LabCommand::RestartAgent { lab, .. }
            | LabCommand::Down { lab }
            | LabCommand::Propagation { lab, .. }
            | LabCommand::Bench { lab, .. }
            | LabCommand::Soak { lab, .. }
            | LabCommand::Hold { lab }
            | LabCommand::ApiProxy { lab, .. }
            | LabCommand::Address { lab } => lab,
        }
    }
}

/// Joins this user's rootless lab of that name, if there is one (starting
/// it for `up --rootless`). Runs while the process still has one thread.
/// Returns the lab's holder and whether this call started it.
fn enter_rootless(command: &LabCommand) -> anyhow::Result<Option<(lab::rootless::Holder, bool)>> {
    let name = command.lab().name.clone();
    if matches!(command, LabCommand::Hold { .. } | LabCommand::ApiProxy { .. }) {
        return Ok(None);
    }
    if let Some(holder) = lab::rootless::holder(&name) {
        holder.enter()?;
        return Ok(Some((holder, false)));
    }
    let LabCommand::Up { rootless: true, registry, mode, .. } = command else {
        if !nix::unistd::Uid::effective().is_root() {
            if matches!(command, LabCommand::Down { .. }) {
                // `down` is safe to repeat.
                println!("lab `{name}` is not up; nothing to remove");
                std::process::exit(0);
            }
            bail!(
                "`felt lab` needs root, or a rootless lab: `felt lab up --rootless --name {name}` \
                 (no rootless lab named `{name}` belongs to this user)"
            );
        }
        return Ok(None);
    };
    if matches!(registry, RegistryKind::Kube) {
        bail!("rootless labs use the file registry (--registry kube needs an API server inside the lab)");
    }
    Lab::new(&name, &command.lab().state_root, PathBuf::new())?;
    if mode.is_none_or(|m| m != Mode::Kernel) {
        // Say it now rather than through every agent's log.
        if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
            bail!(
                "opening /dev/net/tun: {e}. The userspace data plane needs it readable and writable \
                 by this user (most distributions ship it mode 0666: `sudo chmod 0666 /dev/net/tun`), \
                 or use --mode kernel"
            );
        }
    }
    let felt = std::env::current_exe().context("finding the felt binary")?;
    let holder = lab::rootless::start_holder(&name, &felt)?;
    if let Err(e) = holder.enter() {
        holder.stop();
        return Err(e.into());
    }
    Ok(Some((holder, true)))
}

fn run_install_cni(dirs: CniDirs, conflist: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let binary = std::env::current_exe().context("finding the felt binary")?;
    let CniDirs { bin_dir, conf_dir, conf_name } = dirs;
    let install = felt::cni::install::InstallCni { binary, bin_dir, conf_dir, conf_name, conflist };
    for path in install.run()? {
        println!("installed {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn run_cleanup(args: CleanupArgs) -> anyhow::Result<ExitCode> {
    let cleanup = felt::cleanup::Cleanup {
        bridge: args.bridge,
        devices: args.devices,
        cni_bin_dir: args.dirs.bin_dir,
        cni_conf_dir: args.dirs.conf_dir,
        conf_name: args.dirs.conf_name,
        subnet_file: args.subnet_file,
        data_dir: args.data_dir,
        debug_addr: args.debug_addr.0,
        force: args.force,
    };
    let removed = cleanup.run()?;
    if removed.is_empty() {
        println!("nothing of felt on this node: nothing to remove");
    }
    for what in removed {
        println!("removed {what}");
    }
    Ok(ExitCode::SUCCESS)
}

fn run_cni() -> ExitCode {
    let reply = felt::cni::main_from_env();
    if let Some(out) = reply.stdout {
        println!("{out}");
    }
    if reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn run_daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            // The kube client logs every failed response; the agent says once what it means.
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,kube_client::client::builder=off")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let net = match &args.net_conf {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            NetConfig::from_json(&bytes).with_context(|| format!("{}", path.display()))?
        }
        None => NetConfig::default(),
    };
    if !felt::registry::file::valid_node_name(&args.node_name) {
        bail!("--node-name `{}` is not a valid node name (RFC 1123 subdomain)", args.node_name);
    }
    let registry = match args.registry {
        RegistryKind::File => RegistryConfig::File { dir: args.registry_dir },
        RegistryKind::Kube => RegistryConfig::Kube { kubeconfig: args.kubeconfig },
    };
    let mut cfg = AgentConfig::new(args.node_name, registry);
    cfg.underlay = match (args.underlay_iface, args.underlay_ip) {
        (Some(iface), _) => UnderlayChoice::Interface(iface),
        (None, Some(ip)) => UnderlayChoice::Address(ip),
        (None, None) => UnderlayChoice::DefaultRoute,
    };
    cfg.net = net;
    cfg.subnet_file = args.subnet_file;
    cfg.resync = args.resync_period;
    cfg.device = args.device;
    cfg.debug_addr = args.debug_addr.0;
    cfg.probe_interval = args.probe_interval;
    cfg.offloads = args.userspace_offloads;
    cfg.backend = match args.backend {
        BackendKind::Kernel => felt_overlay::DataplaneKind::Kernel,
        BackendKind::Userspace => felt_overlay::DataplaneKind::Userspace,
    };
    // One thread is plenty for the agent's work and keeps its memory small
    // (every extra thread brings a malloc arena).
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(agent::run(cfg)).map_err(|e| anyhow::anyhow!(felt::util::error_chain(&e)))?;
    Ok(ExitCode::SUCCESS)
}

fn run_keeper(device: &str, hold: Duration) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsFd;
    let from_agent: std::os::unix::net::UnixStream = std::io::stdin().as_fd().try_clone_to_owned()?.into();
    let claimed = felt_overlay::userspace::keeper::keep(device, from_agent, hold)
        .with_context(|| format!("keeping the data plane of {device}"))?;
    if !claimed {
        eprintln!("felt keeper: no agent took over {device} within {hold:?}; letting its descriptors go");
    }
    Ok(ExitCode::SUCCESS)
}

fn run_status(addr: std::net::SocketAddr, json: bool) -> anyhow::Result<ExitCode> {
    let state = felt::status::fetch_state(addr).map_err(|e| anyhow::anyhow!(felt::util::error_chain(&e)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        print!("{}", felt::status::render(&state));
    }
    Ok(if state.ready { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn open_lab(l: &LabName) -> anyhow::Result<Lab> {
    let felt = std::env::current_exe().context("finding the felt binary")?;
    Ok(Lab::new(&l.name, &l.state_root, felt)?)
}

fn run_lab(command: LabCommand) -> anyhow::Result<ExitCode> {
    match command {
        LabCommand::Hold { .. } => match lab::rootless::hold()? {},
        LabCommand::ApiProxy { lab, to, addr_file } => {
            let ns = felt::netns::named(&format!("{}-ul", lab.name));
            lab::control::proxy((std::net::Ipv4Addr::LOCALHOST, 0).into(), &ns, to, &addr_file)?;
        }
        LabCommand::Up {
            lab,
            nodes,
            pods_per_node,
            mode,
            rootless,
            registry,
            kubeconfig,
            control_plane,
            cni_delegate,
        } => {
            let l = open_lab(&lab)?;
            let mut opts = UpOptions::new(&lab.name);
            if let Some(dir) = &cni_delegate {
                for plugin in ["bridge", "host-local"] {
                    if !dir.join(plugin).is_file() {
                        bail!(
                            "--cni-delegate {}: no {plugin} plugin there (Debian: apt-get install containernetworking-plugins, then /usr/lib/cni)",
                            dir.display()
                        );
                    }
                }
            }
            opts.cni_delegate = cni_delegate.map(|d| std::path::absolute(&d)).transpose()?;
            opts.nodes = nodes;
            opts.pods_per_node = pods_per_node;
            opts.mode = mode.unwrap_or(if rootless { Mode::Userspace } else { Mode::Kernel });
            match (registry, kubeconfig) {
                (RegistryKind::File, _) => opts.registry = LabRegistry::File,
                (RegistryKind::Kube, Some(kubeconfig)) => {
                    opts.registry = LabRegistry::Kube { kubeconfig, agent_kubeconfig: None }
                }
                (RegistryKind::Kube, None) => {
                    opts.control_plane = Some(lab::control::Binaries::find(control_plane.as_deref())?)
                }
            }
            let state = l.up(&opts, &mut |line| eprintln!("felt lab: {line}"))?;
            println!(
                "lab `{}` is up: {} nodes, {} pods. Next: felt lab check --name {}",
                state.name,
                state.nodes.len(),
                state.pods.len(),
                state.name
            );
        }
        LabCommand::Propagation { lab, changes } => {
            let mut samples =
                open_lab(&lab)?.bench_propagation(changes, &mut |l| eprintln!("felt lab: {l}"))?;
            samples.sort();
            let pct = |p: f64| {
                let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
                samples[i].as_secs_f64() * 1e3
            };
            println!(
                "{} changes: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                samples.len(),
                pct(0.5),
                pct(0.9),
                pct(0.99),
                pct(1.0)
            );
        }
        LabCommand::Bench { lab, mode, seconds, json } => {
            if !(0.5..=120.0).contains(&seconds) {
                bail!("--seconds must be between 0.5 and 120");
            }
            let l = open_lab(&lab)?;
            let progress = &mut |line: &str| eprintln!("felt lab: {line}");
            let results = match mode {
                None => l.bench(seconds, progress)?,
                Some(mode) => {
                    // A lab of its own, 4 nodes with a pod each: every path of the mode.
                    let mut opts = UpOptions::new(&lab.name);
                    opts.nodes = 4;
                    opts.pods_per_node = 1;
                    opts.mode = mode;
                    l.up(&opts, progress)?;
                    let results = l.bench(seconds, progress);
                    l.down()?;
                    results?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&results)?);
            } else {
                print_bench(&results);
            }
        }
        LabCommand::Soak { lab, datagrams, max_seconds, json } => {
            if !(1.0..=3600.0).contains(&max_seconds) {
                bail!("--max-seconds must be between 1 and 3600");
            }
            let r = open_lab(&lab)?.soak(datagrams, max_seconds, &mut |l| eprintln!("felt lab: {l}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{} datagrams at {} in {:.1} s ({:.0}/s): felt counted {}, the kernel dropped {} before felt \
                     read them, {} unaccounted",
                    r.sent,
                    r.target,
                    r.seconds,
                    r.sent as f64 / r.seconds.max(1e-9),
                    r.counted_by_felt.values().sum::<u64>(),
                    r.dropped_by_kernel,
                    r.unaccounted
                );
                for (reason, n) in &r.counted_by_felt {
                    println!("  {reason:<18} {n}");
                }
                println!(
                    "pings during the flood: {}/{} answered; right after: {}; agent {}",
                    r.pings_answered,
                    r.pings_sent,
                    if r.recovered { "answered" } else { "NO ANSWER" },
                    if r.agent_alive { "running" } else { "NOT RUNNING" }
                );
            }
            if r.unaccounted != 0 || !r.recovered || !r.agent_alive {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::Address { lab } => {
            open_lab(&lab)?;
            println!("{}", lab::host_ip(lab::underlay_subnet(&lab.name)));
        }
        LabCommand::Status { lab, json } => {
            let status = open_lab(&lab)?.status()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
        }
        LabCommand::Check { lab } => {
            let report = open_lab(&lab)?.check()?;
            let show = |r: &Result<std::net::Ipv4Addr, String>| match r {
                Ok(seen) => format!("seen as {seen}"),
                Err(e) => e.clone(),
            };
            for r in report.pairs.iter().filter(|r| !r.ok()) {
                println!(
                    "FAIL {} → {} ({}): icmp {}, tcp {} (want seen as {})",
                    r.from,
                    r.to,
                    r.ip,
                    if r.icmp { "ok" } else { "no reply" },
                    show(&r.tcp),
                    r.from_ip
                );
            }
            for r in report.egress.iter().filter(|r| !r.ok()) {
                println!(
                    "FAIL {} ({}) → outside {}: {} (want seen as its node {})",
                    r.from,
                    r.from_ip,
                    lab::OUTSIDE_IP,
                    show(&r.seen),
                    r.node_ip
                );
            }
            let count = |oks: usize, all: usize| format!("{oks}/{all}");
            println!(
                "egress: {} pods reach the outside host {} as their node's address",
                count(report.egress.iter().filter(|r| r.ok()).count(), report.egress.len()),
                lab::OUTSIDE_IP
            );
            // Kept last, and worded as before: scripts read this line.
            println!(
                "{} pod pairs reachable",
                count(report.pairs.iter().filter(|r| r.ok()).count(), report.pairs.len())
            );
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        LabCommand::AddNode { lab } => {
            let (node, took) = open_lab(&lab)?.add_node()?;
            println!(
                "{} joined at {}; programmed on every node {} ms after it published",
                node.name,
                node.underlay_ip,
                took.as_millis()
            );
        }
        LabCommand::RemoveNode { lab, node } => {
            let took = open_lab(&lab)?.remove_node(&node)?;
            println!(
                "{node} removed; every node had dropped it {} ms after its record went",
                took.as_millis()
            );
        }
        LabCommand::RestartAgent { lab, node, kill } => {
            let pid = open_lab(&lab)?.restart_agent(&node, kill)?;
            println!("{node} agent restarted, pid {pid}");
        }
        LabCommand::Down { lab } => {
            let removed = open_lab(&lab)?.down()?;
            if removed.is_empty() {
                println!("lab `{}` is not up; nothing to remove", lab.name);
            } else {
                println!("lab `{}` removed ({} items)", lab.name, removed.len());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_bench(results: &[lab::bench::PathResult]) {
    let ratio = |r: &lab::bench::PathResult| r.ratio_to_kernel.map_or("-".to_owned(), |x| format!("{x:.2}"));
    println!("TCP, pod to pod (underlay: node to node)");
    println!("{:<10} {:>7} {:>10} {:>10} {:>14}", "PATH", "STREAMS", "GBIT/S", "× KERNEL", "CORES/GBIT/S");
    for r in results.iter().filter(|r| r.test == "tcp") {
        println!(
            "{:<10} {:>7} {:>10.2} {:>10} {:>14.2}",
            r.path,
            r.streams,
            r.gbit_per_s,
            ratio(r),
            r.cores_per_gbit
        );
    }
    println!("\nUDP, {}-byte datagrams, one sender", lab::bench::UDP_PAYLOAD);
    println!("{:<10} {:>10} {:>10} {:>8} {:>12}", "PATH", "KPPS", "× KERNEL", "LOSS", "CORES/MPPS");
    for r in results.iter().filter(|r| r.test == "udp") {
        println!(
            "{:<10} {:>10.0} {:>10} {:>7.1}% {:>12}",
            r.path,
            r.packets_per_s.unwrap_or(0.0) / 1e3,
            ratio(r),
            r.loss.unwrap_or(0.0) * 100.0,
            r.cores_per_mpps.map_or("-".to_owned(), |c| format!("{c:.2}"))
        );
    }
}

fn print_status(status: &felt::lab::LabStatus) {
    let dash = |v: Option<String>| v.unwrap_or_else(|| "null".to_owned());
    println!(
        "{:<6} {:<14} {:<15} {:<15} {:<18} {:>8} {:<9} {:>6} {:>9}",
        "NODE", "NETNS", "UNDERLAY", "POD CIDR", "VTEP MAC", "AGENT", "READY", "PEERS", "REACHABLE"
    );
    let mut problems = Vec::new();
    for n in &status.nodes {
        let agent = if n.agent_running { n.pid.to_string() } else { "stopped".into() };
        let ready = match n.ready {
            Some(true) => "ready",
            Some(false) => "NOT READY",
            None => "unknown",
        };
        println!(
            "{:<6} {:<14} {:<15} {:<15} {:<18} {:>8} {:<9} {:>6} {:>9}",
            n.name,
            n.netns,
            n.underlay_ip.to_string(),
            dash(n.pod_cidr.map(|c| c.to_string())),
            dash(n.vtep_mac.map(|m| m.to_string())),
            agent,
            ready,
            format!("{}/{}", n.peers_programmed, n.peers_desired),
            format!("{}/{}", n.peers_reachable, n.peers_desired),
        );
        problems.extend(n.problems.iter().map(|p| format!("{}: {p}", n.name)));
    }
    if !problems.is_empty() {
        println!("\nproblems:");
        for p in problems {
            println!("  - {p}");
        }
    }
    println!();
    println!("{:<10} {:<6} {:<16}", "POD", "NODE", "IP");
    for p in &status.pods {
        println!("{:<10} {:<6} {:<16}", p.name, p.node, p.ip.to_string());
    }
}

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
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
