//! `felt cni`: the CNI plugin that attaches a pod to its node's subnet.
//!
//! It speaks the CNI protocol (CNI spec 1.0): the command and the pod come
//! in the environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`,
//! `CNI_IFNAME`), the network config on stdin, the result or error as JSON
//! on stdout. For `ADD` it:
//! 1. reads the subnet file the agent wrote (subnet, MTU);
//! 2. makes the node bridge (`felt0` by default) with the pods' gateway,
//!    the subnet's first address;
//! 3. takes an address from the node's pod address store;
//! 4. creates a veth pair, moves one end into the pod as `CNI_IFNAME`,
//!    gives it the address, the MTU and a default route via the gateway, and
//!    enslaves the other end to the bridge;
//! 5. turns on IPv4 forwarding on the node, as the bridge plugin does for
//!    a gateway.
//!
//! `DEL` frees the address and removes the host end (the pod end goes with
//! it); it succeeds when there is nothing left to remove. A failed `ADD`
//! undoes what it did. Full spec coverage (CHECK, GC, STATUS) is later work.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use felt_ipam::PodAddressStore;
use felt_proto::{MacAddr, SubnetFile};
use futures::TryStreamExt;
use netlink_packet_route::link::{LinkAttribute, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::netns;

/// CNI versions this plugin answers to.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The network configuration on stdin.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// Spec version the runtime speaks.
    pub cni_version: String,
    /// Network name; keys the address store.
    pub name: String,
    /// The agent's subnet file.
    #[serde(default = "default_subnet_file")]
    pub subnet_file: PathBuf,
    /// The node bridge.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Where pod addresses are kept.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
}

fn default_subnet_file() -> PathBuf {
    PathBuf::from("/run/felt/subnet.env")
}
fn default_bridge() -> String {
    "felt0".to_owned()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cni/felt")
}

/// A CNI error: a code from the spec's table and a message.
#[derive(Debug, Serialize)]
pub struct CniError {
    /// CNI error code (spec §"Error").
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer details.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>) -> Self {
        CniError { code, msg: msg.into(), details: String::new() }
    }
    fn internal(msg: impl Into<String>) -> Self {
        Self::new(999, msg)
    }
}

/// Codes from the CNI spec.
const INCOMPATIBLE_VERSION: u32 = 1;
const MISSING_ENV: u32 = 4;
const BAD_CONFIG: u32 = 6;
const TRY_AGAIN: u32 = 11;

/// The pod, from the environment.
#[derive(Debug, Clone)]
struct Pod {
    container_id: String,
    netns: PathBuf,
    ifname: String,
}

fn env(name: &'static str) -> Result<String, CniError> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::new(MISSING_ENV, format!("{name} is not set")))
}

/// Runs one CNI command from the process environment and stdin; returns the
/// JSON to print and whether it is an error.
pub fn main_from_env() -> (serde_json::Value, bool) {
    let result = (|| {
        let command = env("CNI_COMMAND")?;
        if command == "VERSION" {
            return Ok(json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}));
        }
        let mut stdin = String::new();
        std::io::stdin()
            .read_to_string(&mut stdin)
            .map_err(|e| CniError::new(BAD_CONFIG, format!("reading stdin: {e}")))?;
        let conf: NetConf = serde_json::from_str(&stdin)
            .map_err(|e| CniError::new(BAD_CONFIG, format!("network config: {e}")))?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                INCOMPATIBLE_VERSION,
                format!("cniVersion {} is not supported", conf.cni_version),
            ));
        }
        let container_id = env("CNI_CONTAINERID")?;
        let ifname = env("CNI_IFNAME")?;
        match command.as_str() {
            "ADD" => add(&conf, &Pod { container_id, netns: PathBuf::from(env("CNI_NETNS")?), ifname }),
            "DEL" => del(&conf, &container_id, &ifname).map(|()| serde_json::Value::Null),
            "CHECK" => check(&conf, &container_id, &ifname).map(|()| serde_json::Value::Null),
            other => Err(CniError::new(4, format!("unknown CNI_COMMAND {other}"))),
        }
    })();
    match result {
        Ok(v) => (v, false),
        Err(mut e) => {
            if e.details.is_empty() {
                e.details = e.msg.clone();
            }
            (json!({"cniVersion": "1.0.0", "code": e.code, "msg": e.msg, "details": e.details}), true)
        }
    }
}

/// The host end's name: stable per pod interface, so DEL finds it without state.
pub fn host_veth_name(container_id: &str, ifname: &str) -> String {
    let mac = MacAddr::derive(format!("{container_id}/{ifname}").as_bytes()).octets();
    format!("veth{:02x}{:02x}{:02x}{:02x}", mac[2], mac[3], mac[4], mac[5])
}

fn store(conf: &NetConf) -> Result<PodAddressStore, CniError> {
    PodAddressStore::open(conf.data_dir.join(&conf.name))
        .map_err(|e| CniError::internal(crate::util::error_chain(&e)))
}

fn read_subnet(path: &Path) -> Result<SubnetFile, CniError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CniError::new(
            TRY_AGAIN,
            format!("reading {}: {e} (is the felt agent running on this node?)", path.display()),
        )
    })?;
    SubnetFile::parse(&text).map_err(|e| CniError::internal(format!("{}: {e}", path.display())))
}

fn add(conf: &NetConf, pod: &Pod) -> Result<serde_json::Value, CniError> {
    let subnet = read_subnet(&conf.subnet_file)?;
    let store = store(conf)?;
    let gateway = subnet.gateway();
    let ip = store
        .allocate(subnet.subnet, gateway, &pod.container_id, &pod.ifname)
        .map_err(|e| CniError::internal(crate::util::error_chain(&e)))?;
    let host = host_veth_name(&pod.container_id, &pod.ifname);
    let attached = attach(conf, pod, &subnet, ip, &host);
    match attached {
        Ok((bridge_mac, host_mac, pod_mac)) => {
            let prefix = subnet.subnet.prefix_len();
            Ok(json!({
                "cniVersion": conf.cni_version,
                "interfaces": [
                    {"name": conf.bridge, "mac": bridge_mac},
                    {"name": host, "mac": host_mac},
                    {"name": pod.ifname, "mac": pod_mac, "sandbox": pod.netns},
                ],
                "ips": [{"address": format!("{ip}/{prefix}"), "gateway": gateway, "interface": 2}],
                "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
                "dns": {},
            }))
        }
        Err(e) => {
            // Undo: the address goes back, the host end goes away.
            let _ = store.release(&pod.container_id, &pod.ifname);
            let _ = in_runtime(|h| async move { delete_link(&h, &host).await });
            Err(e)
        }
    }
}

fn del(conf: &NetConf, container_id: &str, ifname: &str) -> Result<(), CniError> {
    store(conf)?
        .release(container_id, ifname)
        .map_err(|e| CniError::internal(crate::util::error_chain(&e)))?;
    let host = host_veth_name(container_id, ifname);
    in_runtime(|h| async move { delete_link(&h, &host).await })?
}

fn check(conf: &NetConf, container_id: &str, ifname: &str) -> Result<(), CniError> {
    match store(conf)?
        .find(container_id, ifname)
        .map_err(|e| CniError::internal(crate::util::error_chain(&e)))?
    {
        Some(_) => Ok(()),
        None => Err(CniError::internal(format!("{container_id}/{ifname} holds no address"))),
    }
}

fn nl(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let what = what.to_string();
    move |e| CniError::internal(format!("{what}: {e}"))
}

fn in_runtime<T, F, Fut>(job: F) -> Result<T, CniError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal(format!("tokio: {e}")))?;
    rt.block_on(async move {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| CniError::internal(format!("netlink: {e}")))?;
        tokio::spawn(conn);
        Ok(job(handle).await)
    })
}

async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -19 => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

async fn delete_link(h: &Handle, name: &str) -> Result<(), CniError> {
    if let Some(l) = link_by_name(h, name).await? {
        h.link().del(l.header.index).execute().await.map_err(nl(format!("deleting {name}")))?;
    }
    Ok(())
}

fn mac_of(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(a) => MacAddr::try_from(a.as_slice()).ok(),
            _ => None,
        })
        .map(|m| m.to_string())
        .unwrap_or_default()
}

/// Bridge, veth, pod side. Returns the MACs of bridge, host end and pod end.
fn attach(
    conf: &NetConf,
    pod: &Pod,
    subnet: &SubnetFile,
    ip: Ipv4Addr,
    host: &str,
) -> Result<(String, String, String), CniError> {
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| CniError::internal(format!("enabling IPv4 forwarding: {e}")))?;
    let peer_tmp = format!("p{}", &host[4..]);
    let (bridge_mac, host_mac) = in_runtime(|h| {
        let (bridge, host, peer_tmp, netns) =
            (conf.bridge.clone(), host.to_owned(), peer_tmp.clone(), pod.netns.clone());
        let (gateway, prefix, mtu) = (subnet.gateway(), subnet.subnet.prefix_len(), subnet.mtu);
        async move {
            let br = match link_by_name(&h, &bridge).await? {
                Some(l) => l,
                None => {
                    h.link()
                        .add(LinkBridge::new(&bridge).mtu(mtu).up().build())
                        .execute()
                        .await
                        .map_err(nl(format!("creating {bridge}")))?;
                    link_by_name(&h, &bridge)
                        .await?
                        .ok_or_else(|| CniError::internal(format!("{bridge} vanished")))?
                }
            };
            let br_index = br.header.index;
            let has_gw = h
                .address()
                .get()
                .set_link_index_filter(br_index)
                .execute()
                .try_collect::<Vec<_>>()
                .await
                .map_err(nl("listing bridge addresses"))?
                .iter()
                .any(|a| a.attributes.iter().any(|x| matches!(x, netlink_packet_route::address::AddressAttribute::Local(std::net::IpAddr::V4(v)) if *v == gateway)));
            if !has_gw {
                h.address()
                    .add(br_index, gateway.into(), prefix)
                    .execute()
                    .await
                    .map_err(nl(format!("adding {gateway} to {bridge}")))?;
            }
            h.link()
                .set(LinkUnspec::new_with_index(br_index).up().build())
                .execute()
                .await
                .map_err(nl(format!("bringing {bridge} up")))?;
            // A stale pair from an earlier ADD of the same pod goes first.
            delete_link(&h, &host).await?;
            h.link()
                .add(LinkVeth::new(&host, &peer_tmp).mtu(mtu).build())
                .execute()
                .await
                .map_err(nl("creating the veth pair"))?;
            let host_link = link_by_name(&h, &host)
                .await?
                .ok_or_else(|| CniError::internal(format!("{host} vanished")))?;
            let peer = link_by_name(&h, &peer_tmp)
                .await?
                .ok_or_else(|| CniError::internal(format!("{peer_tmp} vanished")))?;
            let ns = std::fs::File::open(&netns)
                .map_err(|e| CniError::internal(format!("opening {}: {e}", netns.display())))?;
            use std::os::fd::AsRawFd;
            h.link()
                .set(LinkUnspec::new_with_index(peer.header.index).setns_by_fd(ns.as_raw_fd()).build())
                .execute()
                .await
                .map_err(nl("moving the veth into the pod"))?;
            h.link()
                .set(LinkUnspec::new_with_index(host_link.header.index).controller(br_index).up().build())
                .execute()
                .await
                .map_err(nl(format!("attaching {host} to {bridge}")))?;
            Ok::<_, CniError>((mac_of(&br), mac_of(&host_link)))
        }
    })??;

    let (ifname, gateway, prefix) = (pod.ifname.clone(), subnet.gateway(), subnet.subnet.prefix_len());
    let pod_mac = netns::block_on_in(&pod.netns, move || async move {
        let (conn, h, _) =
            rtnetlink::new_connection().map_err(|e| CniError::internal(format!("netlink in pod: {e}")))?;
        tokio::spawn(conn);
        let peer = link_by_name(&h, &peer_tmp)
            .await?
            .ok_or_else(|| CniError::internal("veth end missing in the pod"))?;
        let index = peer.header.index;
        h.link()
            .set(LinkUnspec::new_with_index(index).name(ifname.clone()).up().build())
            .execute()
            .await
            .map_err(nl(format!("naming {ifname} in the pod")))?;
        h.address()
            .add(index, ip.into(), prefix)
            .execute()
            .await
            .map_err(nl(format!("adding {ip}/{prefix} in the pod")))?;
        if let Some(lo) = link_by_name(&h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await
                .map_err(nl("bringing lo up"))?;
        }
        let default = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .gateway(gateway)
            .output_interface(index)
            .build();
        h.route()
            .add(default)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("default route via {gateway}")))?;
        Ok::<_, CniError>(mac_of(&peer))
    })
    .map_err(|e| CniError::internal(format!("entering the pod namespace: {e}")))??;
    Ok((bridge_mac, host_mac, pod_mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_fit_and_are_stable() {
        let a = host_veth_name("abc", "eth0");
        assert_eq!(a, host_veth_name("abc", "eth0"));
        assert_ne!(a, host_veth_name("abd", "eth0"));
        assert!(a.len() <= 15 && a.starts_with("veth"));
    }

    #[test]
    fn config_defaults() {
        let c: NetConf =
            serde_json::from_str(r#"{"cniVersion":"1.0.0","name":"felt","type":"felt"}"#).unwrap();
        assert_eq!(c.bridge, "felt0");
        assert_eq!(c.subnet_file, PathBuf::from("/run/felt/subnet.env"));
    }
}
