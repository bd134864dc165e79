//! Bringing the agent up, and letting it go: signals and the keeper that
//! holds the userspace data plane across a restart.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use felt_overlay::dataplane::{self, Dataplane, DataplaneKind};
use felt_overlay::kernel::{Kernel, Underlay, VxlanSpec, change_events};
use felt_overlay::userspace::{UserspaceDataplane, keeper};
use felt_proto::MacAddr;
use tokio::sync::watch;
use tracing::{info, warn};

use super::metrics::Metrics;
use super::status::{ConfigView, LeaseView, Shared};
use super::view::Me;
use super::{Agent, AgentConfig, AgentError, State, Wakeups, debug, lock, probe, reload};
use crate::compat::Compat;
use crate::registry::{Lease, Registry};
use crate::util::error_chain;

/// Brings the agent up: the one-agent-per-node lock, netlink, the registry, the debug endpoint, the
/// underlay and the lease (each retried until it works, or `None` on
/// shutdown), the data plane, and the watches, opened before the first list
/// so no change falls between the two.
pub(super) async fn start(
    cfg: AgentConfig,
    shutdown: &watch::Receiver<bool>,
) -> Result<Option<(Agent, Wakeups)>, AgentError> {
    let lock = lock::take()?;
    let in_force = reload::at_start(&cfg)?;
    let kernel = Kernel::connect()?.with_route_tag(cfg.compat.route_tag());
    let registry = Registry::open(&cfg.registry, &cfg.node_name).await?;
    // Watch before the first list, so no change falls between the two; and
    // from the start, so the list (the most of a cold start through the
    // API server at scale) runs while the underlay and lease are found.
    let registry_events = registry.watch()?;
    let mut view = config_view(&cfg);
    reload::show(&mut view, &in_force);
    let shared = Arc::new(Shared::new(cfg.node_name.clone(), view, Metrics::new(cfg.backend.name())));
    if let Some(addr) = cfg.debug_addr {
        debug::serve(addr, shared.clone(), kernel.clone())
            .await
            .map_err(|source| AgentError::Debug { addr, source })?;
    }

    let Some(underlay) =
        retry("finding the underlay interface", &shared, shutdown, || kernel.underlay(&cfg.underlay)).await
    else {
        return Ok(None);
    };
    info!(iface = %underlay.name, ip = %underlay.ip, mtu = underlay.mtu, "underlay");
    let Some(lease) =
        retry("leasing a pod subnet", &shared, shutdown, || registry.lease(&cfg.node_name, &cfg.net)).await
    else {
        return Ok(None);
    };
    let mut spec = device_spec(&cfg, &underlay);
    let flannels = flannel_device_left(&cfg, &kernel).await;
    if let Some(mac) = kept_mac(&registry, &kernel, &cfg, &spec.name, flannels.as_deref()).await {
        spec.mac = mac;
    }
    let (pod_cidr, pod_cidr6) =
        (lease.pod_cidr.map(|c| c.to_string()), lease.pod_cidr6.map(|c| c.to_string()));
    info!(node = %cfg.node_name, pod_cidr, pod_cidr6, vtep_mac = %spec.mac, device = %spec.name, mtu = spec.mtu, "lease held");
    shared.state().lease = Some(lease_view(lease, &underlay, &spec));
    let vtep_mac = spec.mac;
    let dataplane = match cfg.backend {
        DataplaneKind::Kernel => Dataplane::kernel(spec).replacing(flannels),
        DataplaneKind::Userspace => {
            if let Some(old) = &flannels {
                match kernel.remove_vxlan(old).await {
                    Ok(_) => info!(removed = %old, "removed Flannel's VXLAN device: it holds the VXLAN port"),
                    Err(e) => {
                        warn!(error = %error_chain(&e), device = %old, "cannot remove Flannel's VXLAN device")
                    }
                }
            }
            Dataplane::userspace(&kernel, spec, cfg.offloads).await?
        }
    };
    if let Some(engine) = dataplane.engine() {
        if !engine.has_keeper() {
            spawn_keeper(engine);
        }
        shared.set_engine(engine.clone());
    }

    let ifindex = Arc::new(AtomicU32::new(0));
    let expected = Arc::default();
    let netlink_events = change_events(ifindex.clone(), cfg.compat.route_tag(), Arc::clone(&expected))?;
    if let Err(e) = probe::spawn(shared.clone()) {
        let message = format!("peer probes are off: cannot start their thread: {e}");
        warn!("{message}");
        shared.error(message);
    }

    let me = Me {
        name: cfg.node_name.clone(),
        pod_cidr: lease.pod_cidr,
        pod_cidr6: lease.pod_cidr6,
        underlay_ip: underlay.ip,
        vtep_mac,
    };
    let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            let message = format!("SIGHUP will not reload the settings: cannot listen for it: {e}");
            warn!("{message}");
            shared.error(message);
            None
        }
    };
    let mut resync = tokio::time::interval(in_force.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wakeups =
        Wakeups { registry: registry_events, netlink: netlink_events, resync, hangup, repair_at: None };
    let (nft, state) = (None, State::default());
    let agent = Agent {
        _lock: lock,
        cfg,
        kernel,
        registry,
        dataplane,
        me,
        underlay,
        ifindex,
        expected,
        shared,
        nft,
        nft6: None,
        state,
        in_force,
    };
    Ok(Some((agent, wakeups)))
}

/// The device this node's data plane runs: `felt.<vni>` unless named, the
/// overlay MTU of the underlay's, and a VTEP MAC derived from the node name
/// (the same across restarts, so peers never reprogram it).
fn device_spec(cfg: &AgentConfig, underlay: &Underlay) -> VxlanSpec {
    VxlanSpec {
        name: cfg.device.clone().unwrap_or_else(|| cfg.compat.default_device(cfg.net.backend.vni)),
        vni: cfg.net.backend.vni,
        port: cfg.net.backend.port,
        local: underlay.ip,
        underlay_index: underlay.index,
        mtu: cfg.net.overlay_mtu(underlay.mtu, underlay.ip.is_ipv6()),
        mac: MacAddr::derive(cfg.node_name.as_bytes()),
    }
}

/// In felt's own conventions, with no `--device`: Flannel's VXLAN device
/// of our VNI (`flannel.<VNI>`), left by flanneld or by felt in
/// `--compat flannel`. It holds the VXLAN port, so ours replaces it.
async fn flannel_device_left(cfg: &AgentConfig, kernel: &Kernel) -> Option<String> {
    if cfg.compat != Compat::None || cfg.device.is_some() {
        return None;
    }
    let name = Compat::Flannel.default_device(cfg.net.backend.vni);
    let facts = kernel.link(&name).await.ok().flatten()?;
    (facts.vxlan.as_ref()?.vni == Some(cfg.net.backend.vni)).then(|| {
        info!(device = %name, "found Flannel's VXLAN device: leaving Flannel's conventions, felt's replaces it and keeps its MAC");
        name
    })
}

/// The VTEP MAC this node already has, so no peer reprograms it: the one its
/// record publishes (as flanneld, too, reads its own back after a restart),
/// else, taking over from Flannel, its device's. `None`: derive one.
async fn kept_mac(
    registry: &Registry,
    kernel: &Kernel,
    cfg: &AgentConfig,
    device: &str,
    flannels: Option<&str>,
) -> Option<MacAddr> {
    if let Some(mac) = registry.published_vtep_mac(&cfg.node_name).await {
        if mac != MacAddr::derive(cfg.node_name.as_bytes()) {
            info!(%mac, "keeping the VTEP MAC this node published");
        }
        return Some(mac);
    }
    let device = match (cfg.compat, flannels) {
        (Compat::Flannel, _) => device,
        (Compat::None, Some(old)) => old,
        (Compat::None, None) => return None,
    };
    let mac = kernel.link(device).await.ok().flatten()?.mac?;
    info!(%mac, %device, "keeping the VTEP MAC of the device in place");
    Some(mac)
}

/// The lease as `/debug/state` shows it.
fn lease_view(lease: Lease, underlay: &Underlay, spec: &VxlanSpec) -> LeaseView {
    LeaseView {
        pod_cidr: lease.pod_cidr,
        vtep_ip: lease.pod_cidr.map(dataplane::vtep_ip),
        pod_cidr6: lease.pod_cidr6,
        vtep_ip6: lease.pod_cidr6.map(|c| c.network()),
        vtep_mac: spec.mac,
        underlay_iface: underlay.name.clone(),
        underlay_ip: underlay.ip,
        underlay_mtu: underlay.mtu,
        device: spec.name.clone(),
        mtu: spec.mtu,
    }
}

fn config_view(cfg: &AgentConfig) -> ConfigView {
    ConfigView {
        registry: cfg.registry.kind(),
        registry_location: cfg.registry.location(),
        backend: cfg.backend,
        network: cfg.net.network,
        subnet_len: cfg.net.subnet_len,
        ipv6_network: cfg.net.ipv6_network,
        ipv6_subnet_len: cfg.net.ipv6_network.map(|_| cfg.net.ipv6_subnet_len),
        vni: cfg.net.backend.vni,
        port: cfg.net.backend.port,
        resync_seconds: cfg.resync.as_secs_f64(),
        probe_interval_seconds: cfg.probe_interval.as_secs_f64(),
        subnet_file: cfg.subnet_file.display().to_string(),
        userspace_offloads: (cfg.backend == DataplaneKind::Userspace).then(|| cfg.offloads.to_string()),
        settings_file: cfg.settings.as_ref().map(|p| p.display().to_string()),
        log_level: None,
        compat: cfg.compat.name().to_owned(),
    }
}

/// Runs `attempt` until it succeeds, backing off from 1 s to 30 s; `None` on shutdown.
async fn retry<T, E, F, Fut>(
    what: &str,
    shared: &Shared,
    shutdown: &watch::Receiver<bool>,
    mut attempt: F,
) -> Option<T>
where
    E: std::error::Error,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_secs(1);
    let mut shutdown = shutdown.clone();
    loop {
        shared.beat();
        match attempt().await {
            Ok(v) => return Some(v),
            Err(e) => {
                let message = format!("{what} failed; retrying in {delay:?}: {}", error_chain(&e));
                warn!("{message}");
                shared.error(message);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(30));
    }
}

/// How long a keeper whose agent is gone waits for the next before it lets
/// the descriptors go.
pub const KEEPER_HOLD: Duration = Duration::from_secs(10);

/// Spawns the `felt keeper` child that holds copies of the userspace data
/// plane's descriptors for as long as this agent runs and, when it ends
/// (however it ends), until the next agent takes them (see
/// `felt_overlay::userspace::keeper`). Without one, a restart still keeps
/// the routes (the TUN is persistent) but loses what arrives meanwhile.
fn spawn_keeper(dp: &UserspaceDataplane) {
    let run = || -> std::io::Result<u32> {
        let handover = dp.handover()?;
        let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
        use std::os::unix::process::CommandExt;
        let child = std::process::Command::new(std::env::current_exe()?)
            .args(["keeper", "--device", dp.name(), "--hold"])
            .arg(format!("{}ms", KEEPER_HOLD.as_millis()))
            .stdin(std::process::Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stdout(std::process::Stdio::null())
            // Its own process group: a Ctrl-C meant for the agent does not reach it.
            .process_group(0)
            .spawn()?;
        dp.attach_keeper(keeper::hand_over(ours, &handover)?);
        Ok(child.id())
    };
    match run() {
        Ok(pid) => {
            info!(pid, hold = ?KEEPER_HOLD, "a keeper holds the data plane's descriptors across restarts")
        }
        Err(e) => {
            warn!(error = %e, "no keeper: packets arriving while no agent runs (a restart) are lost")
        }
    }
}

/// How long the workers get to finish what they read when the agent stops.
const STOP_WORKERS: Duration = Duration::from_secs(1);

/// Stops the userspace workers before the agent exits, so no packet dies
/// half-handled with the process; what arrives next waits with the keeper.
pub(super) fn stop_workers(dp: &UserspaceDataplane) {
    if dp.stop(STOP_WORKERS) {
        info!(keeper = dp.has_keeper(), "userspace workers stopped; queued packets wait for the next agent");
    } else {
        warn!(within = ?STOP_WORKERS, "the userspace workers did not stop in time; exiting anyway");
    }
}

/// A receiver that flips to `true` on SIGTERM or SIGINT.
pub(super) fn shutdown_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        let _ = tx.send(true);
    });
    rx
}
