//! `felt cni`: the CNI plugin that attaches a pod to its node's subnet.
//!
//! It speaks CNI 0.3.0 through 1.1.0 (types in [`felt_proto::cni`]): the
//! command and the pod come in the environment, the network config on
//! stdin, the result or error as JSON on stdout.
//!
//! - `ADD` reads the subnet file the agent wrote (subnet, MTU), takes an
//!   address from the node's pod address store, makes the node bridge
//!   (`felt0`) with the pods' gateway (the subnet's first address), a veth
//!   pair with *both* ends at the overlay MTU, the host end a hairpin port of
//!   the bridge, the pod end named `CNI_IFNAME` with the address and a
//!   default route via the gateway; it turns IPv4 forwarding on. A
//!   `prevResult` (felt chained after another plugin) is kept and extended.
//!   A failed `ADD` undoes what it did.
//! - `DEL` removes the host end (the pod end goes with it), then frees the
//!   address, so a veth of felt's exists only while its address is held;
//!   it succeeds when there is nothing left, needs neither the pod's
//!   namespace nor the subnet file, and tolerates any half-made state.
//! - `CHECK` compares the attachment with what `ADD` made: address held,
//!   host end on the bridge, up, hairpin, both MTUs, the pod's address and
//!   default route, and `prevResult` if given.
//! - `STATUS` fails with code 50 until the agent has written the subnet file.
//! - `GC` frees the address and host end of every attachment the runtime
//!   does not list in `cni.dev/valid-attachments`, bridge ports that belong
//!   to none, and temporaries of plugins killed mid-claim.

pub mod delegate;
mod delegated;
pub mod install;
pub(crate) mod link;

use std::collections::HashSet;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use felt_ipam::{PodAddressStore, StoreError};
pub use felt_proto::cni::NetConf;
use felt_proto::cni::{CniError, CniResult, Command, ErrorCode, Interface, IpConfig, Route, VersionReply};
use felt_proto::{MacAddr, SubnetFile};
use ipnet::IpNet;

pub use link::{Attach, Attach4, Attach6, AttachSpec, HostSide, Observed, PodSide};

/// What the plugin prints and how it exits.
#[derive(Debug)]
pub struct Reply {
    /// JSON for stdout; `None` prints nothing (DEL, CHECK, STATUS and GC on success).
    pub stdout: Option<String>,
    /// Whether the command succeeded (exit status 0).
    pub ok: bool,
}

/// The attachment a command names (`CNI_CONTAINERID`, `CNI_IFNAME`, `CNI_NETNS`).
#[derive(Debug, Clone)]
struct Pod {
    container_id: String,
    ifname: String,
    netns: Option<PathBuf>,
}

fn env(name: &'static str) -> Result<String, CniError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, format!("{name} is not set")))
}

impl Pod {
    fn from_env(command: Command) -> Result<Pod, CniError> {
        let container_id = env("CNI_CONTAINERID")?;
        let ifname = env("CNI_IFNAME")?;
        if ifname.len() > 15 || ifname.contains(['/', ' ']) {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("CNI_IFNAME {ifname:?} is not an interface name"),
            ));
        }
        // DEL must work without the namespace (the runtime may have removed it).
        let netns = match command {
            Command::Del => std::env::var("CNI_NETNS").ok().filter(|v| !v.is_empty()).map(PathBuf::from),
            _ => Some(PathBuf::from(env("CNI_NETNS")?)),
        };
        Ok(Pod { container_id, ifname, netns })
    }
}

/// Runs one CNI command from the process environment and stdin.
pub fn main_from_env() -> Reply {
    let mut version = felt_proto::cni::CURRENT_VERSION.to_owned();
    match run(&mut version) {
        Ok(stdout) => Reply { stdout, ok: true },
        Err(mut e) => {
            e.cni_version = version;
            if e.details.is_empty() {
                e.details = e.msg.clone();
            }
            Reply { stdout: Some(to_json(&e)), ok: false }
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|e| format!(r#"{{"code":999,"msg":"encoding the reply: {e}"}}"#))
}

fn run(version: &mut String) -> Result<Option<String>, CniError> {
    let name = env("CNI_COMMAND")?;
    let command = Command::parse(&name)
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, format!("unknown CNI_COMMAND {name}")))?;
    if command == Command::Version {
        // VERSION's stdin holds only a cniVersion, not a network config.
        return Ok(Some(version_reply()));
    }
    let mut stdin = Vec::new();
    std::io::stdin().read_to_end(&mut stdin).map_err(|e| {
        CniError::new(ErrorCode::IoFailure, "reading the network config from stdin").details(e)
    })?;
    let conf = NetConf::parse(&stdin)?;
    version.clone_from(&conf.cni_version);
    if !conf.allows(command) {
        return Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!(
                "{name} needs cniVersion {} or later; the config says {}",
                command.since(),
                conf.cni_version
            ),
        ));
    }
    if let Some(user) = &conf.delegate {
        return delegated::run(&conf, user, command);
    }
    match command {
        Command::Add => {
            add(&conf, &Pod::from_env(command)?).map(|r| Some(to_json(&r.for_version(&conf.cni_version))))
        }
        Command::Del => {
            let pod = Pod::from_env(command)?;
            del(&conf, &pod.container_id, &pod.ifname).map(|()| None)
        }
        Command::Check => check(&conf, &Pod::from_env(command)?).map(|()| None),
        Command::Status => status(&conf).map(|_| None),
        Command::Gc => gc(&conf).map(|_| None),
        Command::Version => Ok(Some(version_reply())),
    }
}

fn version_reply() -> String {
    to_json(&VersionReply::default())
}

/// The host end's name: stable per pod interface, so DEL and GC find it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mac = MacAddr::derive(format!("{container_id}/{ifname}").as_bytes()).octets();
    format!("veth{:02x}{:02x}{:02x}{:02x}", mac[2], mac[3], mac[4], mac[5])
}

fn store(conf: &NetConf) -> Result<PodAddressStore, CniError> {
    PodAddressStore::open(conf.data_dir.join(&conf.name)).map_err(store_error)
}

fn store_error(e: StoreError) -> CniError {
    match e {
        StoreError::Exhausted { .. } => CniError::new(ErrorCode::AddressesExhausted, e.to_string()),
        other => CniError::internal("the pod address store", crate::util::error_chain(&other)),
    }
}

fn read_subnet(path: &Path) -> Result<SubnetFile, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CniError::new(
            ErrorCode::TryAgainLater,
            format!("the felt agent has not written {} yet (is it running on this node?)", path.display()),
        )
        .details(e)
    })?;
    SubnetFile::parse(&text).map_err(|e| {
        CniError::new(ErrorCode::InvalidConfig, format!("{} does not parse", path.display())).details(e)
    })
}

fn attach_spec(
    conf: &NetConf,
    pod: &Pod,
    netns: &Path,
    subnet: &SubnetFile,
    ip: Option<Ipv4Addr>,
    ip6: Option<Ipv6Addr>,
) -> AttachSpec {
    let v4 = subnet.subnet().zip(subnet.gateway()).zip(ip).map(|((subnet, gateway), ip)| Attach4 {
        ip,
        prefix: subnet.prefix_len(),
        gateway,
    });
    let v6 = subnet.subnet6().zip(subnet.gateway6()).zip(ip6).map(|((subnet6, gateway), ip)| Attach6 {
        ip,
        prefix: subnet6.prefix_len(),
        gateway,
    });
    AttachSpec {
        bridge: conf.bridge.clone(),
        host: host_veth_name(&pod.container_id, &pod.ifname),
        netns: netns.to_owned(),
        ifname: pod.ifname.clone(),
        mtu: subnet.mtu,
        v4,
        v6,
    }
}

/// The pod's addresses in the store: one per family the cluster has.
fn held(
    store: &PodAddressStore,
    pod: &Pod,
    subnet: &SubnetFile,
) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), CniError> {
    let held = store.find(&pod.container_id, &pod.ifname).map_err(store_error)?;
    let v4 = held.iter().find_map(|ip| match ip {
        IpAddr::V4(v4) if subnet.subnet().is_some_and(|s| s.contains(v4)) => Some(*v4),
        _ => None,
    });
    let v6 = held.iter().find_map(|ip| match ip {
        IpAddr::V6(v6) if subnet.subnet6().is_some_and(|s| s.contains(v6)) => Some(*v6),
        _ => None,
    });
    Ok((v4, v6))
}

fn add(conf: &NetConf, pod: &Pod) -> Result<CniResult, CniError> {
    let netns = pod
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set"))?;
    let subnet = read_subnet(&conf.subnet_file)?;
    let store = store(conf)?;
    let allocate = |subnet: IpNet, gateway: IpAddr| {
        store.allocate(subnet, gateway, &pod.container_id, &pod.ifname).map_err(store_error)
    };
    let allocated = (|| {
        let ip = match subnet.subnet().zip(subnet.gateway()) {
            Some((subnet, gateway)) => Some(allocate(subnet.into(), gateway.into())?),
            None => None,
        };
        let ip6 = match subnet.subnet6().zip(subnet.gateway6()) {
            Some((subnet6, gateway6)) => Some(allocate(subnet6.into(), gateway6.into())?),
            None => None,
        };
        Ok((ip, ip6))
    })();
    let family = "the store hands out addresses of the subnet's family";
    let (ip, ip6) = match allocated {
        Ok((ip, ip6)) => (
            ip.map(|ip| match ip {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(_) => unreachable!("{family}"),
            }),
            ip6.map(|ip| match ip {
                IpAddr::V6(ip) => ip,
                IpAddr::V4(_) => unreachable!("{family}"),
            }),
        ),
        Err(e) => {
            // Nothing half-held: the address of the family that worked goes back.
            let _ = store.release(&pod.container_id, &pod.ifname);
            return Err(e);
        }
    };
    let spec = attach_spec(conf, pod, netns, &subnet, ip, ip6);
    match link::attach(&spec) {
        Ok(made) => Ok(add_result(conf, &spec, &made)),
        Err(e) => {
            // Undo in DEL's order; the error that matters is the first one.
            let _ = link::delete_link(&spec.host);
            let _ = store.release(&pod.container_id, &pod.ifname);
            Err(e)
        }
    }
}

/// ADD's result: the previous plugin's (if chained) with felt's interfaces,
/// address and default route appended.
fn add_result(conf: &NetConf, spec: &AttachSpec, made: &link::Attached) -> CniResult {
    let mut r = CniResult::start(&conf.cni_version, conf.prev_result.as_ref());
    let first = r.interfaces.len();
    r.interfaces.extend([
        Interface {
            name: spec.bridge.clone(),
            mac: made.bridge_mac.clone(),
            mtu: Some(spec.mtu),
            sandbox: None,
        },
        Interface { name: spec.host.clone(), mac: made.host_mac.clone(), mtu: Some(spec.mtu), sandbox: None },
        Interface {
            name: spec.ifname.clone(),
            mac: made.pod_mac.clone(),
            mtu: Some(spec.mtu),
            sandbox: Some(spec.netns.display().to_string()),
        },
    ]);
    for (address, (gateway, _)) in spec.addresses().zip(spec.gateways()) {
        r.ips.push(IpConfig { version: None, address, gateway: Some(gateway), interface: Some(first + 2) });
        let default = if gateway.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        r.routes.push(Route { dst: default.parse().expect("a valid CIDR"), gw: Some(gateway) });
    }
    r
}

fn del(conf: &NetConf, container_id: &str, ifname: &str) -> Result<(), CniError> {
    link::delete_link(&host_veth_name(container_id, ifname))?;
    store(conf)?.release(container_id, ifname).map_err(store_error)?;
    Ok(())
}

fn check(conf: &NetConf, pod: &Pod) -> Result<(), CniError> {
    let netns = pod
        .netns
        .as_deref()
        .ok_or_else(|| CniError::new(ErrorCode::InvalidEnvironment, "CNI_NETNS is not set"))?;
    let subnet = read_subnet(&conf.subnet_file)?;
    let (ip, ip6) = held(&store(conf)?, pod, &subnet)?;
    for (family, want, held) in
        [("IPv4", subnet.ipv4.is_some(), ip.is_some()), ("IPv6", subnet.ipv6.is_some(), ip6.is_some())]
    {
        if want && !held {
            return Err(CniError::new(
                ErrorCode::AttachmentChanged,
                format!("{}/{} holds no {family} address on this node", pod.container_id, pod.ifname),
            ));
        }
    }
    let spec = attach_spec(conf, pod, netns, &subnet, ip, ip6);
    let mut problems = problems(&spec, &link::inspect(&spec)?);
    if let Some(prev) = &conf.prev_result {
        for want in spec.addresses() {
            if !prev.ips.iter().any(|c| c.address == want) {
                problems.push(format!("prevResult does not list {want}"));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::AttachmentChanged,
            format!("{}/{} is not as ADD left it", pod.container_id, pod.ifname),
        )
        .details(problems.join("; ")))
    }
}

/// What differs between the attachment ADD would make and what exists.
pub fn problems(spec: &AttachSpec, seen: &Observed) -> Vec<String> {
    let mut out = Vec::new();
    match &seen.host {
        None => out.push(format!("host end {} is missing", spec.host)),
        Some(h) => {
            if !h.on_bridge {
                out.push(format!("{} is not a port of {}", spec.host, spec.bridge));
            }
            if !h.up {
                out.push(format!("{} is down", spec.host));
            }
            if !h.hairpin {
                out.push(format!("{} has hairpin off", spec.host));
            }
            if h.mtu != spec.mtu {
                out.push(format!("{} has MTU {}, want {}", spec.host, h.mtu, spec.mtu));
            }
        }
    }
    match &seen.pod {
        None => out.push(format!("{} is missing in the pod", spec.ifname)),
        Some(p) => {
            if p.mtu != spec.mtu {
                out.push(format!("{} has MTU {} in the pod, want {}", spec.ifname, p.mtu, spec.mtu));
            }
            if let Some(v4) = spec.v4 {
                family_problems(&mut out, &spec.ifname, "", v4, &p.addresses, p.default_gateway);
            }
            if let Some(v6) = spec.v6 {
                family_problems(&mut out, &spec.ifname, "IPv6 ", v6, &p.addresses6, p.default_gateway6);
            }
        }
    }
    out
}

/// What differs for one family: the pod's address and its default route.
fn family_problems<A: PartialEq + Copy + std::fmt::Display + std::fmt::Debug>(
    out: &mut Vec<String>,
    ifname: &str,
    family: &str,
    want: link::Attach<A>,
    addresses: &[(A, u8)],
    default_gateway: Option<A>,
) {
    if !addresses.contains(&(want.ip, want.prefix)) {
        out.push(format!("{ifname} lacks {}/{} (has {addresses:?})", want.ip, want.prefix));
    }
    if default_gateway != Some(want.gateway) {
        out.push(format!(
            "the pod's {family}default route is via {default_gateway:?}, want {}",
            want.gateway
        ));
    }
}

/// Ready when the agent has written a subnet file that parses.
fn status(conf: &NetConf) -> Result<SubnetFile, CniError> {
    read_subnet(&conf.subnet_file).map_err(|e| {
        CniError::new(ErrorCode::NotAvailable, format!("not ready: {}", e.msg))
            .details(if e.details.is_empty() { e.msg } else { e.details })
    })
}

/// What one `GC` released.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Addresses freed.
    pub addresses: usize,
    /// Host veths deleted.
    pub links: usize,
    /// Temporaries of killed plugins removed.
    pub temporaries: usize,
}

fn gc(conf: &NetConf) -> Result<Collected, CniError> {
    let valid: HashSet<(String, String)> =
        conf.valid_attachments.iter().flatten().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
    let store = store(conf)?;
    let mut done = Collected {
        temporaries: store
            .sweep_temporaries(|pid| !crate::process::is_zombie_or_gone(pid))
            .map_err(store_error)?,
        ..Collected::default()
    };
    for e in store.entries().map_err(store_error)? {
        if valid.contains(&(e.container_id.clone(), e.ifname.clone())) {
            continue;
        }
        done.links += usize::from(link::delete_link(&host_veth_name(&e.container_id, &e.ifname))?);
        done.addresses += store.release(&e.container_id, &e.ifname).map_err(store_error)?.len();
    }
    // Ports of felt's bridge that belong to no valid attachment (their
    // address was freed by hand, or DEL was cut short).
    let keep: HashSet<String> = valid.iter().map(|(c, i)| host_veth_name(c, i)).collect();
    for port in link::bridge_ports(&conf.bridge)? {
        if !keep.contains(&port) {
            done.links += usize::from(link::delete_link(&port)?);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests;
