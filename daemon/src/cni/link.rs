//! The plugin's netlink edge: the node bridge, the veth pair, the pod side.
//!
//! Everything here runs in the node's network namespace (the plugin's own),
//! except the pod side, which runs on a thread inside the pod's namespace
//! ([`crate::netns::block_on_in`]). Each request is one netlink call; the
//! iproute2 equivalent is named beside it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use felt_proto::MacAddr;
use felt_proto::cni::{CniError, ErrorCode};
use futures::TryStreamExt;
use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{InfoBridgePort, InfoPortData, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute};
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::netns;

/// What one attachment needs: where, which names, which address, which MTU.
#[derive(Debug, Clone)]
pub struct AttachSpec {
    /// The node bridge.
    pub bridge: String,
    /// The host end of the veth pair.
    pub host: String,
    /// The pod's network namespace.
    pub netns: PathBuf,
    /// The interface name inside the pod.
    pub ifname: String,
    /// The overlay MTU, for the bridge and both veth ends.
    pub mtu: u32,
    /// The pod's IPv4 side; `None` in an IPv6-only cluster.
    pub v4: Option<Attach4>,
    /// The pod's IPv6 side, in a dual-stack or IPv6-only cluster.
    pub v6: Option<Attach6>,
}

/// A pod's address of one family, its subnet's prefix length and the
/// gateway (the bridge's address of that family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attach<A> {
    /// The pod's address.
    pub ip: A,
    /// The subnet's prefix length.
    pub prefix: u8,
    /// The gateway: the bridge's address.
    pub gateway: A,
}

/// A pod's IPv4 side.
pub type Attach4 = Attach<Ipv4Addr>;
/// A pod's IPv6 side.
pub type Attach6 = Attach<Ipv6Addr>;

impl<A: Into<IpAddr> + Copy> Attach<A> {
    /// The address with the subnet's prefix length, as results list it.
    pub fn address(&self) -> IpNet {
        IpNet::new(self.ip.into(), self.prefix).expect("the prefix came from a valid subnet")
    }
}

impl AttachSpec {
    /// The pod's addresses with their prefix lengths, IPv4 first.
    pub fn addresses(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4.map(|v| v.address()).into_iter().chain(self.v6.map(|v| v.address()))
    }

    /// The gateways with their subnets' prefix lengths, IPv4 first.
    pub fn gateways(&self) -> impl Iterator<Item = (IpAddr, u8)> + '_ {
        let v4 = self.v4.map(|v| (IpAddr::V4(v.gateway), v.prefix));
        v4.into_iter().chain(self.v6.map(|v| (IpAddr::V6(v.gateway), v.prefix)))
    }
}

/// MACs of what `attach` made.
#[derive(Debug, Clone)]
pub struct Attached {
    /// The bridge's MAC.
    pub bridge_mac: String,
    /// The host end's MAC.
    pub host_mac: String,
    /// The pod end's MAC.
    pub pod_mac: String,
}

/// What `inspect` finds of an attachment, for `CHECK`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The host end: its MTU, whether it is a port of the bridge and up, hairpin on.
    pub host: Option<HostSide>,
    /// The pod end, seen from inside the pod.
    pub pod: Option<PodSide>,
}

/// The host end of the veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSide {
    /// Its MTU.
    pub mtu: u32,
    /// Enslaved to the node bridge.
    pub on_bridge: bool,
    /// Administratively up.
    pub up: bool,
    /// Hairpin mode on its bridge port.
    pub hairpin: bool,
}

/// The pod end, inside the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSide {
    /// Its MTU.
    pub mtu: u32,
    /// Its IPv4 addresses with prefix lengths.
    pub addresses: Vec<(Ipv4Addr, u8)>,
    /// The gateway of the IPv4 default route, if any.
    pub default_gateway: Option<Ipv4Addr>,
    /// Its global IPv6 addresses with prefix lengths.
    pub addresses6: Vec<(Ipv6Addr, u8)>,
    /// The gateway of the IPv6 default route, if any.
    pub default_gateway6: Option<Ipv6Addr>,
}

fn nl(what: impl std::fmt::Display) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let what = what.to_string();
    move |e| CniError::internal(what, e)
}

/// Runs a netlink job on a current-thread runtime in the caller's namespace.
fn in_runtime<T, F, Fut>(job: F) -> Result<T, CniError>
where
    F: FnOnce(Handle) -> Fut,
    Fut: std::future::Future<Output = Result<T, CniError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CniError::internal("starting a runtime", e))?;
    rt.block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| CniError::internal("netlink", e))?;
        tokio::spawn(conn);
        job(handle).await
    })
}

fn no_netns(path: &Path) -> CniError {
    CniError::new(
        ErrorCode::UnknownContainer,
        format!("the pod's network namespace {} does not exist", path.display()),
    )
}

/// Runs a netlink job inside the namespace at `path`; a namespace that is
/// gone is [`ErrorCode::UnknownContainer`].
fn in_netns<T, F, Fut>(path: &Path, job: F) -> Result<T, CniError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, CniError>>,
{
    if !path.exists() {
        return Err(no_netns(path));
    }
    netns::block_on_in(path, move || async move {
        let (conn, h, _) =
            rtnetlink::new_connection().map_err(|e| CniError::internal("netlink in the pod", e))?;
        tokio::spawn(conn);
        job(h).await
    })
    .map_err(|e| CniError::internal("entering the pod's network namespace", e))?
}

/// `ip link show NAME`; `None` when there is no such link.
async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>, CniError> {
    let mut links = h.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(nl(format!("looking up {name}"))(e)),
    }
}

async fn must_find(h: &Handle, name: &str) -> Result<LinkMessage, CniError> {
    link_by_name(h, name)
        .await?
        .ok_or_else(|| CniError::new(ErrorCode::Internal, format!("{name} vanished while being set up")))
}

fn is_exists(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -libc::EEXIST)
}

/// `ip link del NAME`, if it exists.
async fn delete_link_with(h: &Handle, name: &str) -> Result<bool, CniError> {
    let Some(l) = link_by_name(h, name).await? else { return Ok(false) };
    match h.link().del(l.header.index).execute().await {
        Ok(()) => Ok(true),
        // Gone in between (its pod namespace went away): what DEL wanted.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
        Err(e) => Err(nl(format!("deleting {name}"))(e)),
    }
}

/// Deletes link `name` in the plugin's namespace; `Ok(false)` when there was none.
pub fn delete_link(name: &str) -> Result<bool, CniError> {
    let name = name.to_owned();
    in_runtime(|h| async move { delete_link_with(&h, &name).await })
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

fn mtu_of(l: &LinkMessage) -> u32 {
    l.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(m) = a { Some(*m) } else { None }).unwrap_or(0)
}

fn controller_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| if let LinkAttribute::Controller(c) = a { Some(*c) } else { None })
}

fn hairpin_of(l: &LinkMessage) -> bool {
    l.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| match i {
            LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                ps.iter().any(|p| matches!(p, InfoBridgePort::HairpinMode(true)))
            }
            _ => false,
        }),
        _ => false,
    })
}

fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(netlink_packet_route::link::LinkFlags::Up)
}

/// `ip addr show dev INDEX`: addresses with their prefix lengths (an IPv6
/// address has no `IFA_LOCAL`, only `IFA_ADDRESS`).
async fn addresses(h: &Handle, index: u32, whose: &str) -> Result<Vec<(IpAddr, u8)>, CniError> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("listing {whose}'s addresses")))?;
    Ok(msgs
        .iter()
        .flat_map(|a| {
            a.attributes.iter().filter_map(move |x| match x {
                AddressAttribute::Local(ip @ IpAddr::V4(_))
                | AddressAttribute::Address(ip @ IpAddr::V6(_)) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        })
        .collect())
}

/// `ip -4 addr show dev INDEX`.
async fn ipv4_addresses(h: &Handle, index: u32, whose: &str) -> Result<Vec<(Ipv4Addr, u8)>, CniError> {
    Ok(addresses(h, index, whose)
        .await?
        .into_iter()
        .filter_map(|(ip, len)| if let IpAddr::V4(v4) = ip { Some((v4, len)) } else { None })
        .collect())
}

/// `ip -6 addr show dev INDEX scope global`.
async fn ipv6_addresses(h: &Handle, index: u32, whose: &str) -> Result<Vec<(Ipv6Addr, u8)>, CniError> {
    Ok(addresses(h, index, whose)
        .await?
        .into_iter()
        .filter_map(|(ip, len)| match ip {
            IpAddr::V6(v6) if !v6.is_unicast_link_local() => Some((v6, len)),
            _ => None,
        })
        .collect())
}

/// `ip addr add IP/PREFIX dev INDEX` (IPv6: `nodad`, usable at once); an
/// address already there is fine.
async fn add_address(h: &Handle, index: u32, ip: IpAddr, prefix: u8, what: &str) -> Result<(), CniError> {
    let mut req = h.address().add(index, ip, prefix);
    if ip.is_ipv6() {
        let m = req.message_mut();
        m.header.flags = AddressHeaderFlags::Nodad;
        m.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    match req.execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_exists(&e) => Ok(()),
        Err(e) => Err(nl(format!("adding {ip}/{prefix} to {what}"))(e)),
    }
}

/// The bridge with the gateway address, up; made when missing. Concurrent
/// plugins may race to make it: whoever loses finds the winner's.
async fn ensure_bridge(h: &Handle, spec: &AttachSpec) -> Result<LinkMessage, CniError> {
    let br = match link_by_name(h, &spec.bridge).await? {
        Some(l) => l,
        None => {
            // ip link add NAME mtu MTU type bridge
            match h.link().add(LinkBridge::new(&spec.bridge).mtu(spec.mtu).up().build()).execute().await {
                Ok(()) => {}
                Err(e) if is_exists(&e) => {}
                Err(e) => return Err(nl(format!("creating bridge {}", spec.bridge))(e)),
            }
            must_find(h, &spec.bridge).await?
        }
    };
    let index = br.header.index;
    let held = addresses(h, index, "the bridge").await?;
    for (gateway, prefix) in spec.gateways() {
        if !held.iter().any(|(a, _)| *a == gateway) {
            // ip addr add GATEWAY/PREFIX dev BRIDGE
            add_address(h, index, gateway, prefix, &spec.bridge).await?;
        }
    }
    // ip link set BRIDGE up
    h.link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("bringing {} up", spec.bridge)))?;
    Ok(br)
}

/// Bridge, veth pair (both ends at the MTU), host end on the bridge with
/// hairpin on, pod end renamed, addressed and routed inside the pod.
pub fn attach(spec: &AttachSpec) -> Result<Attached, CniError> {
    if !spec.netns.exists() {
        return Err(no_netns(&spec.netns));
    }
    if spec.v4.is_some() {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
            .map_err(|e| CniError::internal("enabling IPv4 forwarding", e))?;
    }
    if spec.v6.is_some() {
        std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1")
            .map_err(|e| CniError::internal("enabling IPv6 forwarding", e))?;
    }
    let peer_tmp = format!("p{}", spec.host.trim_start_matches("veth"));
    let (bridge_mac, host_mac) = in_runtime(|h| {
        let (spec, peer_tmp) = (spec.clone(), peer_tmp.clone());
        async move {
            let br = ensure_bridge(&h, &spec).await?;
            // A stale pair from an earlier ADD of the same pod goes first.
            delete_link_with(&h, &spec.host).await?;
            delete_link_with(&h, &peer_tmp).await?;
            // ip link add HOST mtu MTU type veth peer name TMP mtu MTU
            h.link()
                .add(LinkVeth::new(&spec.host, &peer_tmp).mtu(spec.mtu).build())
                .execute()
                .await
                .map_err(nl("creating the veth pair"))?;
            let host = must_find(&h, &spec.host).await?;
            let peer = must_find(&h, &peer_tmp).await?;
            let ns = std::fs::File::open(&spec.netns)
                .map_err(|e| CniError::internal(format!("opening {}", spec.netns.display()), e))?;
            // ip link set TMP mtu MTU netns POD
            h.link()
                .set(
                    LinkUnspec::new_with_index(peer.header.index)
                        .mtu(spec.mtu)
                        .setns_by_fd(ns.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(nl("moving the veth into the pod"))?;
            // ip link set HOST master BRIDGE up
            h.link()
                .set(LinkUnspec::new_with_index(host.header.index).controller(br.header.index).up().build())
                .execute()
                .await
                .map_err(nl(format!("attaching {} to {}", spec.host, spec.bridge)))?;
            // ip link set HOST type bridge_slave hairpin on
            h.link()
                .set_port(LinkBridgePort::new(host.header.index).hairpin(true).build())
                .execute()
                .await
                .map_err(nl(format!("turning hairpin on for {}", spec.host)))?;
            Ok((mac_of(&br), mac_of(&host)))
        }
    })?;
    let pod_mac = configure_pod(spec.clone(), peer_tmp)?;
    Ok(Attached { bridge_mac, host_mac, pod_mac })
}

/// Inside the pod: rename, MTU, address, lo up, default route via the gateway.
fn configure_pod(spec: AttachSpec, peer_tmp: String) -> Result<String, CniError> {
    in_netns(&spec.netns.clone(), move |h| async move {
        let peer = link_by_name(&h, &peer_tmp)
            .await?
            .ok_or_else(|| CniError::internal("the veth's pod end is missing in the pod", &peer_tmp))?;
        let index = peer.header.index;
        // ip link set TMP name IFNAME mtu MTU up
        h.link()
            .set(LinkUnspec::new_with_index(index).name(spec.ifname.clone()).mtu(spec.mtu).up().build())
            .execute()
            .await
            .map_err(nl(format!("naming {} in the pod", spec.ifname)))?;
        if let Some(v4) = spec.v4 {
            // ip addr add IP/PREFIX dev IFNAME
            h.address()
                .add(index, v4.ip.into(), v4.prefix)
                .execute()
                .await
                .map_err(nl(format!("adding {}/{} in the pod", v4.ip, v4.prefix)))?;
        }
        if let Some(v6) = spec.v6 {
            // ip addr add IP6/PREFIX dev IFNAME nodad
            add_address(&h, index, v6.ip.into(), v6.prefix, "the pod").await?;
        }
        if let Some(lo) = link_by_name(&h, "lo").await? {
            h.link()
                .set(LinkUnspec::new_with_index(lo.header.index).up().build())
                .execute()
                .await
                .map_err(nl("bringing lo up"))?;
        }
        // ip route replace default via GATEWAY dev IFNAME (and -6 for GATEWAY6)
        for (gateway, _) in spec.gateways() {
            default_route(&h, index, gateway).await?;
        }
        Ok(mac_of(&peer))
    })
}

/// `ip route replace default via GATEWAY dev INDEX`, in the gateway's family.
async fn default_route(h: &Handle, index: u32, gateway: IpAddr) -> Result<(), CniError> {
    let unspecified = match gateway {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let invalid = |e| CniError::internal(format!("default route via {gateway}"), e);
    let default = RouteMessageBuilder::<IpAddr>::new()
        .destination_prefix(unspecified, 0)
        .map_err(invalid)?
        .gateway(gateway)
        .map_err(invalid)?
        .output_interface(index)
        .build();
    h.route().add(default).replace().execute().await.map_err(nl(format!("default route via {gateway}")))
}

/// What exists of an attachment now, for `CHECK`.
pub fn inspect(spec: &AttachSpec) -> Result<Observed, CniError> {
    let (bridge, host_name) = (spec.bridge.clone(), spec.host.clone());
    let host = in_runtime(|h| async move {
        let Some(host) = link_by_name(&h, &host_name).await? else { return Ok(None) };
        let br = link_by_name(&h, &bridge).await?;
        let on_bridge = br.is_some_and(|b| controller_of(&host) == Some(b.header.index));
        Ok(Some(HostSide { mtu: mtu_of(&host), on_bridge, up: is_up(&host), hairpin: hairpin_of(&host) }))
    })?;
    let ifname = spec.ifname.clone();
    let pod = in_netns(&spec.netns, move |h| async move {
        let Some(link) = link_by_name(&h, &ifname).await? else { return Ok(None) };
        let addresses = ipv4_addresses(&h, link.header.index, "the pod").await?;
        let addresses6 = ipv6_addresses(&h, link.header.index, "the pod").await?;
        let mut routes: Vec<_> = h
            .route()
            .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing the pod's routes"))?;
        let routes6: Vec<_> = h
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(nl("listing the pod's IPv6 routes"))?;
        routes.extend(routes6);
        let defaults = || routes.iter().filter(|r| r.header.destination_prefix_length == 0);
        let gateways = || defaults().flat_map(|r| r.attributes.iter());
        let default_gateway = gateways().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
            _ => None,
        });
        let default_gateway6 = gateways().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(*g),
            _ => None,
        });
        Ok(Some(PodSide { mtu: mtu_of(&link), addresses, default_gateway, addresses6, default_gateway6 }))
    })?;
    Ok(Observed { host, pod })
}

/// Every link in the plugin's namespace: its name and its kind (`vxlan`,
/// `tun`, `bridge`, `veth`…), `None` for a link without one (`lo`, a NIC).
pub fn links() -> Result<Vec<(String, Option<String>)>, CniError> {
    in_runtime(|h| async move {
        let links: Vec<LinkMessage> =
            h.link().get().execute().try_collect().await.map_err(nl("listing links"))?;
        Ok(links
            .iter()
            .filter_map(|l| {
                let mut name = None;
                let mut kind = None;
                for a in &l.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::LinkInfo(infos) => {
                            kind = infos.iter().find_map(|i| match i {
                                LinkInfo::Kind(k) => Some(k.to_string()),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
                Some((name?, kind))
            })
            .collect())
    })
}

/// The names of the bridge's ports; none when there is no bridge.
pub fn bridge_ports(bridge: &str) -> Result<Vec<String>, CniError> {
    let bridge = bridge.to_owned();
    in_runtime(|h| async move {
        let Some(br) = link_by_name(&h, &bridge).await? else { return Ok(Vec::new()) };
        let links: Vec<LinkMessage> =
            h.link().get().execute().try_collect().await.map_err(nl("listing links"))?;
        Ok(links
            .iter()
            .filter(|l| controller_of(l) == Some(br.header.index))
            .filter_map(|l| {
                l.attributes
                    .iter()
                    .find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
            })
            .collect())
    })
}
