//! The commands that run on a cluster node.

use felt::compat::Compat;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use felt::agent::{self, AgentConfig};
use felt::registry::RegistryConfig;
use felt_overlay::kernel::UnderlayChoice;
use felt_proto::NetConfig;

use super::{BackendKind, CleanupArgs, CniDirs, DaemonArgs, RegistryKind};

pub fn install_cni(dirs: CniDirs, conflist: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let binary = std::env::current_exe().context("finding the felt binary")?;
    let CniDirs { bin_dir, conf_dir, conf_name } = dirs;
    let install = felt::cni::install::InstallCni { binary, bin_dir, conf_dir, conf_name, conflist };
    for path in install.run()? {
        println!("installed {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cleanup(args: CleanupArgs) -> anyhow::Result<ExitCode> {
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

pub fn cni() -> ExitCode {
    let reply = felt::cni::main_from_env();
    if let Some(out) = reply.stdout {
        println!("{out}");
    }
    if reply.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

pub fn daemon(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    felt::logging::init();
    let net = match &args.net_conf {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            match args.compat {
                Compat::None => {
                    NetConfig::from_json(&bytes).with_context(|| format!("{}", path.display()))?
                }
                Compat::Flannel => {
                    let (net, notes) = NetConfig::from_flannel_json(&bytes)
                        .with_context(|| format!("{} (read as Flannel's net-conf.json)", path.display()))?;
                    for note in notes {
                        tracing::warn!(path = %path.display(), "{note}");
                    }
                    net
                }
            }
        }
        None => NetConfig::default(),
    };
    if !felt::registry::file::valid_node_name(&args.node_name) {
        bail!("--node-name `{}` is not a valid node name (RFC 1123 subdomain)", args.node_name);
    }
    let registry = match args.registry {
        RegistryKind::File => RegistryConfig::File { dir: args.registry_dir },
        RegistryKind::Kube => RegistryConfig::Kube {
            kubeconfig: args.kubeconfig,
            dialect: args.compat.dialect(),
            peers: args.peer_source,
        },
    };
    let mut cfg = AgentConfig::new(args.node_name, registry);
    cfg.underlay = match (args.underlay_iface, args.underlay_ip) {
        (Some(iface), _) => UnderlayChoice::Interface(iface),
        (None, Some(ip)) => UnderlayChoice::Address(ip),
        (None, None) => UnderlayChoice::DefaultRoute,
    };
    cfg.net = net;
    cfg.net_conf_file = args.net_conf.clone();
    cfg.settings = args.settings;
    cfg.subnet_file =
        args.subnet_file.unwrap_or_else(|| std::path::PathBuf::from(args.compat.default_subnet_file()));
    cfg.compat = args.compat;
    cfg.resync = args.resync_period;
    cfg.device = args.device;
    cfg.debug_addr = args.debug_addr.0;
    cfg.probe_interval = args.probe_interval;
    cfg.offloads = super::offloads(&args.userspace_offloads)
        .map_err(|e| anyhow::anyhow!("--userspace-offloads: {e}"))?;
    cfg.vxlan_port_lock = args.vxlan_port_lock == super::Switch::On;
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

pub fn keeper(device: &str, hold: Duration) -> anyhow::Result<ExitCode> {
    use std::os::fd::AsFd;
    let from_agent: std::os::unix::net::UnixStream = std::io::stdin().as_fd().try_clone_to_owned()?.into();
    use felt_overlay::userspace::keeper::{Ending, keep};
    match keep(device, from_agent, hold).with_context(|| format!("keeping the data plane of {device}"))? {
        Ending::Unclaimed => {
            eprintln!("felt keeper: no agent took over {device} within {hold:?}; letting its descriptors go")
        }
        Ending::Released => eprintln!("felt keeper: an agent released {device}'s descriptors"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status(addr: std::net::SocketAddr, json: bool) -> anyhow::Result<ExitCode> {
    let state = felt::status::fetch_state(addr).map_err(|e| anyhow::anyhow!(felt::util::error_chain(&e)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&state)?);
    } else {
        print!("{}", felt::status::render(&state));
    }
    Ok(if state.ready { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
