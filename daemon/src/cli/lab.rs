//! `felt lab …`: one runner per subcommand over [`felt::lab::Lab`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use felt::lab::{self, Lab, LabError, LabRegistry, Mode, UpOptions};

use super::RegistryKind;
use super::render;

#[derive(Debug, Args)]
pub struct LabName {
    /// Lab name: prefixes every namespace (1-8 of [a-z0-9]).
    #[arg(long, default_value = "felt")]
    pub name: String,
    /// Where labs keep their state.
    #[arg(long, env = "FELT_LAB_STATE", default_value = lab::DEFAULT_STATE_ROOT, hide = true)]
    pub state_root: PathBuf,
}

/// The agents a lab node can run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AgentChoice {
    /// felt (with --compat flannel in a lab with Flannel nodes).
    Felt,
    /// felt in its own conventions (--compat none): leaving compat mode.
    FeltOwn,
    /// flanneld.
    Flannel,
}

impl From<AgentChoice> for lab::NodeAgent {
    fn from(a: AgentChoice) -> Self {
        match a {
            AgentChoice::Felt => lab::NodeAgent::Felt,
            AgentChoice::FeltOwn => lab::NodeAgent::FeltOwn,
            AgentChoice::Flannel => lab::NodeAgent::Flannel,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
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
        /// With --registry kube: the agents' --peer-source (`auto`: FeltNodes
        /// once every Node has one; `nodes`: Node metadata; `feltnodes`).
        #[arg(long, value_enum, default_value = "auto")]
        peer_source: felt::registry::kube::PeerSource,
        /// Run felt's agents with `--compat flannel` (needs --registry kube).
        #[arg(long, value_enum, default_value = "none")]
        compat: felt::compat::Compat,
        /// Run flanneld (vxlan, --kube-subnet-mgr) instead of felt on the
        /// first N nodes, their pods attached by Flannel's CNI plugin; felt's
        /// agents then run with --compat flannel (needs --registry kube).
        #[arg(long, default_value_t = 0, value_name = "N")]
        flannel_nodes: u32,
        /// With --flannel-nodes: the directory holding `flanneld` and
        /// Flannel's CNI plugin `flannel` (what `tests/flannel/build.sh` prints).
        #[arg(long, env = "FELT_FLANNEL_BIN", value_name = "DIR")]
        flannel: Option<PathBuf>,
        /// The pods' address families: `ipv4`; `dual` (IPv4 and IPv6:
        /// every pod also gets an address of the lab's IPv6 network
        /// fd00:f31:244::/56, carried by the same VXLAN device); or `ipv6`
        /// (IPv6 only: no IPv4 pod network). The underlay is --underlay's.
        /// Any --mode.
        #[arg(long, default_value = "ipv4", value_name = "FAMILY")]
        ip_family: lab::IpFamily,
        /// The underlay VXLAN travels over: `ipv4` (the nodes' 198.18.x.y
        /// addresses), or `ipv6` (an address of fd00:f31::/96 beside each,
        /// the agents choose it with --underlay-ip; MTU underlay − 70). Any
        /// --ip-family and --mode; felt's own conventions only.
        #[arg(long, default_value = "ipv4", value_name = "FAMILY")]
        underlay: lab::UnderlayFamily,
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
        /// The agent the node runs (`flannel` needs a lab with --flannel).
        #[arg(long, value_enum, default_value = "felt")]
        agent: AgentChoice,
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
    /// Replace a node's agent, flanneld by felt (--compat flannel) or back:
    /// SIGTERM to the one, then the other starts on the kernel objects, pods
    /// and Node the first left (a lab with --flannel-nodes or --compat flannel).
    SwitchAgent {
        #[command(flatten)]
        lab: LabName,
        /// The node, e.g. n2.
        node: String,
        /// The agent to run there.
        #[arg(long, value_enum)]
        to: AgentChoice,
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
        /// Instead: the control-plane benchmark. One node namespace whose agent
        /// learns N synthetic peers and programs them into the kernel: cold
        /// start, one change (p50/p99), removals, memory and CPU, per N. Builds
        /// and removes its own namespace (the lab --name must not exist).
        #[arg(long, conflicts_with_all = ["mode", "seconds"])]
        control_plane: bool,
        /// --control-plane: the peer counts, each with a cold agent.
        #[arg(long, value_delimiter = ',', default_value = "100,1000,5000", requires = "control_plane")]
        peers: Vec<u32>,
        /// --control-plane: peer changes timed one at a time, per N.
        #[arg(long, default_value_t = 200, requires = "control_plane")]
        changes: u32,
        /// --control-plane: peers removed at once, per N (at most N).
        #[arg(long, default_value_t = 1000, requires = "control_plane")]
        removals: u32,
        /// --control-plane: where the peers come from: files, or Node objects
        /// of a real kube-apiserver and etcd started for the run (also measures
        /// the bytes the API server sends the agent while Nodes' status changes).
        #[arg(long, value_enum, default_value_t = RegistryKind::File, requires = "control_plane")]
        registry: RegistryKind,
        /// --registry kube: every Node's status is updated once over this many seconds.
        #[arg(long, default_value_t = 60.0, requires = "control_plane")]
        status_seconds: f64,
        /// --registry kube: where kube-apiserver and etcd are (else on PATH).
        #[arg(long, env = "FELT_K8S_BIN", value_name = "DIR", requires = "control_plane")]
        k8s_bin: Option<PathBuf>,
        /// --registry kube: the agent's --peer-source (every synthetic peer has
        /// a FeltNode; `nodes` measures the Node metadata watch).
        #[arg(long, value_enum, default_value = "auto", requires = "control_plane")]
        peer_source: felt::registry::kube::PeerSource,
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

impl LabCommand {
    /// The lab the command is about.
    pub fn lab(&self) -> &LabName {
        match self {
            LabCommand::Up { lab, .. }
            | LabCommand::Status { lab, .. }
            | LabCommand::Check { lab }
            | LabCommand::AddNode { lab, .. }
            | LabCommand::RemoveNode { lab, .. }
            | LabCommand::RestartAgent { lab, .. }
            | LabCommand::SwitchAgent { lab, .. }
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

fn open_lab(l: &LabName) -> anyhow::Result<Lab> {
    let felt = std::env::current_exe().context("finding the felt binary")?;
    Ok(Lab::new(&l.name, &l.state_root, felt)?)
}

fn progress(line: &str) {
    eprintln!("felt lab: {line}");
}

/// Runs one lab command.
pub fn run(command: LabCommand) -> anyhow::Result<ExitCode> {
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
            compat,
            flannel_nodes,
            flannel,
            ip_family,
            underlay,
            peer_source,
        } => {
            let mut opts = UpOptions::new(&lab.name);
            opts.ip_family = ip_family;
            opts.underlay_family = underlay;
            opts.nodes = nodes;
            opts.pods_per_node = pods_per_node;
            opts.compat_flannel = compat == felt::compat::Compat::Flannel;
            opts.peer_source = peer_source;
            opts.flannel_nodes = flannel_nodes;
            opts.flannel = flannel.map(|d| std::path::absolute(&d)).transpose()?;
            opts.mode = mode.unwrap_or(if rootless { Mode::Userspace } else { Mode::Kernel });
            return up(&lab, opts, registry, kubeconfig, control_plane, cni_delegate);
        }
        LabCommand::Propagation { lab, changes } => propagation(&lab, changes)?,
        LabCommand::Bench {
            lab,
            control_plane: true,
            peers,
            changes,
            removals,
            registry,
            status_seconds,
            k8s_bin,
            peer_source,
            json,
            ..
        } => {
            let registry = match registry {
                RegistryKind::File => lab::scale::BenchRegistry::File,
                RegistryKind::Kube => {
                    let bins = lab::control::Binaries::find(k8s_bin.as_deref())?;
                    lab::scale::BenchRegistry::Kube(bins, peer_source)
                }
            };
            let opts = lab::scale::ScaleOptions { peers, changes, removals, registry, status_seconds };
            return bench_control_plane(&lab, opts, json);
        }
        LabCommand::Bench { lab, mode, seconds, json, .. } => bench(&lab, mode, seconds, json)?,
        LabCommand::Soak { lab, datagrams, max_seconds, json } => {
            return soak(&lab, datagrams, max_seconds, json);
        }
        LabCommand::Address { lab } => {
            open_lab(&lab)?;
            println!("{}", lab::host_ip(lab::underlay_subnet(&lab.name)));
        }
        LabCommand::Status { lab, json } => status(&lab, json)?,
        LabCommand::SwitchAgent { lab, node, to } => {
            let to = lab::NodeAgent::from(to);
            let pid = open_lab(&lab)?.switch_agent(&node, to)?;
            println!("{node} now runs {} (pid {pid})", to.name());
        }
        LabCommand::Check { lab } => return check(&lab),
        LabCommand::AddNode { lab, agent } => {
            let (node, took) = open_lab(&lab)?.add_node(agent.into())?;
            let ms = took.as_millis();
            println!(
                "{} joined at {}; programmed on every node {ms} ms after it published",
                node.name, node.underlay_ip
            );
        }
        LabCommand::RemoveNode { lab, node } => remove_node(&lab, &node)?,
        LabCommand::RestartAgent { lab, node, kill } => {
            let pid = open_lab(&lab)?.restart_agent(&node, kill)?;
            println!("{node} agent restarted, pid {pid}");
        }
        LabCommand::Down { lab } => {
            let removed = open_lab(&lab)?.down()?;
            match removed.len() {
                0 => println!("lab `{}` is not up; nothing to remove", lab.name),
                n => println!("lab `{}` removed ({n} items)", lab.name),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `felt lab remove-node`: removed, and how fast the others followed, or
/// which have not.
fn remove_node(lab: &LabName, node: &str) -> anyhow::Result<()> {
    let removal = open_lab(lab)?.remove_node(node)?;
    match removal.dropped_after {
        Some(took) => println!(
            "{node} removed; every node had dropped it {} ms after its record went",
            took.as_millis()
        ),
        None => println!(
            "{node} removed (its agent, record, pods and namespaces); not caught up yet: {}",
            removal.behind.join(", ")
        ),
    }
    Ok(())
}

/// `felt lab status`.
fn status(lab: &LabName, json: bool) -> anyhow::Result<()> {
    let status = open_lab(lab)?.status()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        render::status(&status);
    }
    Ok(())
}

/// `felt lab check`: exit 1 unless every probe passed.
fn check(lab: &LabName) -> anyhow::Result<ExitCode> {
    let report = open_lab(lab)?.check()?;
    render::check(&report);
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `felt lab up`: the options the flags left to check, then the lab. A
/// signal during bring-up removes what was built and exits 130.
fn up(
    lab: &LabName,
    mut opts: UpOptions,
    registry: RegistryKind,
    kubeconfig: Option<PathBuf>,
    control_plane: Option<PathBuf>,
    cni_delegate: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let l = open_lab(lab)?;
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
    match (registry, kubeconfig) {
        (RegistryKind::File, _) => opts.registry = LabRegistry::File,
        (RegistryKind::Kube, Some(kubeconfig)) => {
            opts.registry = LabRegistry::Kube {
                kubeconfig,
                agent_kubeconfig: None,
                dialect: opts.dialect(),
                peer_source: opts.peer_source,
            }
        }
        (RegistryKind::Kube, None) => {
            opts.control_plane = Some(lab::control::Binaries::find(control_plane.as_deref())?)
        }
    }
    lab::interrupt::catch()?;
    let state = match l.up(&opts, &mut progress) {
        Err(LabError::Interrupted) => {
            eprintln!("felt lab: interrupted; what `up` had built is removed (`felt lab status` to see)");
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    println!(
        "lab `{}` is up: {} nodes, {} pods. Next: felt lab check --name {}",
        state.name,
        state.nodes.len(),
        state.pods.len(),
        state.name
    );
    Ok(ExitCode::SUCCESS)
}

/// `felt lab propagation`: percentiles of node-change propagation.
fn propagation(lab: &LabName, changes: u32) -> anyhow::Result<()> {
    let mut samples = open_lab(lab)?.bench_propagation(changes, &mut progress)?;
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
    Ok(())
}

/// `felt lab bench`: on the lab, or on a lab of its own for `--mode`.
fn bench(lab: &LabName, mode: Option<Mode>, seconds: f64, json: bool) -> anyhow::Result<()> {
    if !(0.5..=120.0).contains(&seconds) {
        bail!("--seconds must be between 0.5 and 120");
    }
    let l = open_lab(lab)?;
    let results = match mode {
        None => l.bench(seconds, &mut progress)?,
        Some(mode) => {
            // A lab of its own, 4 nodes with a pod each: every path of the mode.
            let mut opts = UpOptions::new(&lab.name);
            opts.nodes = 4;
            opts.pods_per_node = 1;
            opts.mode = mode;
            l.up(&opts, &mut progress)?;
            let results = l.bench(seconds, &mut progress);
            l.down()?;
            results?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        render::bench(&results);
    }
    Ok(())
}

/// `felt lab bench --control-plane`. Ctrl-C (SIGTERM, SIGHUP) stops it at
/// the next step, and its guard removes what it built (the namespace, the
/// agent, etcd and kube-apiserver); without the handler the signal killed
/// it with all of them left running.
fn bench_control_plane(
    lab: &LabName,
    opts: lab::scale::ScaleOptions,
    json: bool,
) -> anyhow::Result<ExitCode> {
    lab::interrupt::catch()?;
    let report = match open_lab(lab)?.bench_control_plane(&opts, &mut progress) {
        Err(LabError::Interrupted) => {
            eprintln!("felt lab: interrupted; what the bench had built is removed");
            return Ok(ExitCode::from(130));
        }
        other => other?,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        render::scale(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// `felt lab soak`: fails unless every datagram is accounted for and the
/// fabric recovered.
fn soak(lab: &LabName, datagrams: u64, max_seconds: f64, json: bool) -> anyhow::Result<ExitCode> {
    if !(1.0..=3600.0).contains(&max_seconds) {
        bail!("--max-seconds must be between 1 and 3600");
    }
    let r = open_lab(lab)?.soak(datagrams, max_seconds, &mut progress)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        render::soak(&r);
    }
    let ok = r.unaccounted == 0 && r.recovered && r.agent_alive;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
