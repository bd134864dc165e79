//! Kernel mode: felt's VXLAN device and per-peer entries, over rtnetlink.
//!
//! This is the thin edge. [`msg`] builds every message, [`observe`] reads
//! every dump; this module only sends and receives. It promises:
//! - [`Kernel::ensure_device`] creates the device when missing, fixes MTU,
//!   MAC, state and the VTEP address in place, and recreates the device only
//!   when its identity (VNI, port, local address, underlay) is wrong;
//! - [`Kernel::apply`] runs every op, goes on past a failure and reports each
//!   one; deleting what is already gone counts as done;
//! - [`change_events`] reports netlink changes on felt's device so a repair
//!   does not wait for the resync timer.

pub mod echo;
pub mod msg;
pub mod observe;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NetlinkPayload};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::neighbour::NeighbourMessage;
use netlink_packet_route::route::{RouteAttribute, RouteMessage};
use rtnetlink::{Handle, LinkUnspec, MulticastGroup};
use tokio::sync::mpsc;

use crate::{Observed, Op, RouteTag};
pub use msg::VxlanSpec;
pub use observe::LinkFacts;

/// One answer to a request, as the connection hands it over.
type Answer = netlink_packet_core::NetlinkMessage<RouteNetlinkMessage>;

/// What went wrong talking to the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The netlink socket could not be opened.
    #[error("opening a netlink socket")]
    Connect(#[source] io::Error),
    /// The kernel refused a request.
    #[error("{what}")]
    Request {
        /// What was asked.
        what: String,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// No interface of that name.
    #[error("no interface named `{0}`")]
    NoSuchLink(String),
    /// No interface holds that address.
    #[error("no interface holds {0}")]
    NoSuchAddress(IpAddr),
    /// The interface has no usable IPv4 address.
    #[error("interface `{0}` has no IPv4 address")]
    NoAddress(String),
    /// No underlay was given and there is no default route to infer it from.
    #[error("no default route to find the underlay from; pass --underlay-iface or --underlay-ip")]
    NoDefaultRoute,
}

fn refused(what: impl Into<String>) -> impl FnOnce(io::Error) -> KernelError {
    let what = what.into();
    move |source| KernelError::Request { what, source }
}

/// The underlay interface felt encapsulates over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underlay {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Its address: the node's public IP (IPv4, or IPv6 on an IPv6 underlay).
    pub ip: IpAddr,
    /// Its MTU.
    pub mtu: u32,
}

/// How the underlay is chosen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum UnderlayChoice {
    /// The interface of the IPv4 default route (as Flannel does), else of
    /// the IPv6 one (an IPv6-only node: an IPv6 underlay).
    #[default]
    DefaultRoute,
    /// This interface, and its first IPv4 address (its first global IPv6
    /// one when it has none).
    Interface(String),
    /// The interface holding this address (an IPv6 one: an IPv6 underlay).
    Address(IpAddr),
}

/// The outcome of [`Kernel::apply`].
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Ops the kernel accepted.
    pub applied: Vec<Op>,
    /// Ops it refused, with why.
    pub failed: Vec<(Op, String)>,
}

/// A netlink connection in the current network namespace.
#[derive(Debug, Clone)]
pub struct Kernel {
    handle: Handle,
    route_tag: RouteTag,
}

impl Kernel {
    /// Opens a connection; must run inside a tokio runtime.
    pub fn connect() -> Result<Self, KernelError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(KernelError::Connect)?;
        tokio::spawn(conn);
        Ok(Kernel { handle, route_tag: RouteTag::FELT })
    }

    /// The same connection, owning the routes `tag` marks (felt's own by default).
    pub fn with_route_tag(mut self, tag: RouteTag) -> Self {
        self.route_tag = tag;
        self
    }

    /// Sends one request and collects its answers.
    async fn send(
        &self,
        req: netlink_packet_core::NetlinkMessage<RouteNetlinkMessage>,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.start(req).await
    }

    /// Queues one request on the connection now (requests reach the kernel,
    /// and run there, in the order they are queued); the future collects
    /// its answers.
    fn start(
        &self,
        req: netlink_packet_core::NetlinkMessage<RouteNetlinkMessage>,
    ) -> impl Future<Output = io::Result<Vec<RouteNetlinkMessage>>> + use<> {
        let queued = self.queue(req);
        async move { Self::collect(&mut queued?, Some).await }
    }

    /// Queues one request; the stream of its answers.
    fn queue(
        &self,
        req: netlink_packet_core::NetlinkMessage<RouteNetlinkMessage>,
    ) -> io::Result<impl futures::Stream<Item = Answer> + Unpin + Send + use<>> {
        self.handle.clone().request(req).map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e.to_string()))
    }

    /// The answers, each kept only as what `keep` makes of it as it
    /// arrives: a dump of thousands of entries is never held whole.
    async fn collect<T>(
        stream: &mut (impl futures::Stream<Item = Answer> + Unpin),
        mut keep: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        let collect = async {
            let mut out = Vec::new();
            while let Some(msg) = stream.next().await {
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => out.extend(keep(m)),
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    _ => {}
                }
            }
            Ok(out)
        };
        // The kernel always answers; a lost answer must not stall the agent's loop.
        tokio::time::timeout(std::time::Duration::from_secs(10), collect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no netlink answer within 10 s"))?
    }

    async fn dump(&self, inner: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.dump_map(inner, Some).await
    }

    /// Every link.
    pub async fn links(&self) -> Result<Vec<LinkMessage>, KernelError> {
        let all = self
            .dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))
            .await
            .map_err(refused("listing links"))?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if any.
    pub async fn link(&self, name: &str) -> Result<Option<LinkFacts>, KernelError> {
        Ok(self.links().await?.iter().map(observe::link_facts).find(|f| f.name == name))
    }

    /// IPv4 addresses: (interface index, address, prefix length).
    pub async fn addresses(&self) -> Result<Vec<(u32, Ipv4Addr, u8)>, KernelError> {
        Ok(self
            .addresses_of(AddressFamily::Inet)
            .await?
            .into_iter()
            .filter_map(|(i, ip, len)| Some((i, msg::ipv4_of(ip)?, len)))
            .collect())
    }

    /// Addresses of one family: (interface index, address, prefix length).
    async fn addresses_of(&self, family: AddressFamily) -> Result<Vec<(u32, IpAddr, u8)>, KernelError> {
        let mut req = AddressMessage::default();
        req.header.family = family;
        let all =
            self.dump(RouteNetlinkMessage::GetAddress(req)).await.map_err(refused("listing addresses"))?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.family == family => {
                    let of = |local: bool| {
                        a.attributes.iter().find_map(|x| match x {
                            AddressAttribute::Local(ip) if local => Some(*ip),
                            AddressAttribute::Address(ip) if !local => Some(*ip),
                            _ => None,
                        })
                    };
                    Some((a.header.index, of(true).or_else(|| of(false))?, a.header.prefix_len))
                }
                _ => None,
            })
            .collect())
    }

    async fn routes(&self, family: AddressFamily) -> Result<Vec<RouteMessage>, KernelError> {
        let mut req = RouteMessage::default();
        req.header.address_family = family;
        let all = self.dump(RouteNetlinkMessage::GetRoute(req)).await.map_err(refused("listing routes"))?;
        Ok(all
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// Finds the underlay interface and its address: IPv4 where there is
    /// one, else (an IPv6-only node, or `Address` of an IPv6 one) IPv6.
    pub async fn underlay(&self, choice: &UnderlayChoice) -> Result<Underlay, KernelError> {
        let links: Vec<LinkFacts> = self.links().await?.iter().map(observe::link_facts).collect();
        let mut addrs: Vec<(u32, IpAddr)> =
            self.addresses().await?.into_iter().map(|(i, ip, _)| (i, IpAddr::V4(ip))).collect();
        addrs.extend(self.addresses_of(AddressFamily::Inet6).await?.into_iter().map(|(i, ip, _)| (i, ip)));
        let usable = |ip: &IpAddr| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_multicast(),
        };
        // IPv4 first: the list holds every IPv4 address before any IPv6 one.
        let first_addr =
            |index: u32| addrs.iter().find(|(i, ip)| *i == index && usable(ip)).map(|(_, ip)| *ip);
        let (link, ip) = match choice {
            UnderlayChoice::Interface(name) => {
                let link = links
                    .iter()
                    .find(|l| &l.name == name)
                    .ok_or_else(|| KernelError::NoSuchLink(name.clone()))?;
                (link, first_addr(link.index).ok_or_else(|| KernelError::NoAddress(name.clone()))?)
            }
            UnderlayChoice::Address(ip) => {
                let index = addrs
                    .iter()
                    .find(|(_, a)| a == ip)
                    .map(|(i, _)| *i)
                    .ok_or(KernelError::NoSuchAddress(*ip))?;
                (links.iter().find(|l| l.index == index).ok_or(KernelError::NoSuchAddress(*ip))?, *ip)
            }
            UnderlayChoice::DefaultRoute => {
                let mut oif = None;
                for family in [AddressFamily::Inet, AddressFamily::Inet6] {
                    let routes = self.routes(family).await?;
                    oif = routes
                        .iter()
                        .filter(|r| r.header.destination_prefix_length == 0 && r.header.table == 254)
                        .find_map(|r| {
                            r.attributes.iter().find_map(|a| match a {
                                RouteAttribute::Oif(o) => Some(*o),
                                _ => None,
                            })
                        });
                    if oif.is_some() {
                        break;
                    }
                }
                let oif = oif.ok_or(KernelError::NoDefaultRoute)?;
                let link = links.iter().find(|l| l.index == oif).ok_or(KernelError::NoDefaultRoute)?;
                (link, first_addr(oif).ok_or_else(|| KernelError::NoAddress(link.name.clone()))?)
            }
        };
        Ok(Underlay { index: link.index, name: link.name.clone(), ip, mtu: link.mtu })
    }

    /// Deletes link `name` if it is a VXLAN device (a node moving from kernel
    /// to userspace mode: the TUN takes the name). Returns whether it did.
    pub async fn remove_vxlan(&self, name: &str) -> Result<bool, KernelError> {
        let Some(facts) = self.link(name).await?.filter(|f| f.vxlan.is_some()) else { return Ok(false) };
        let del = LinkUnspec::new_with_index(facts.index).build();
        self.send(msg::request(RouteNetlinkMessage::DelLink(del), NLM_F_REQUEST | NLM_F_ACK))
            .await
            .map_err(refused(format!("deleting {name}")))?;
        Ok(true)
    }

    /// Renames device `from` to `to`, up as it is: its routes, neighbours
    /// and FDB entries stay (Linux 6.x renames a running device; an older
    /// kernel refuses with EBUSY). Returns whether there was `from` to rename.
    pub async fn rename_link(&self, from: &str, to: &str) -> Result<bool, KernelError> {
        let Some(facts) = self.link(from).await? else { return Ok(false) };
        let set = LinkUnspec::new_with_index(facts.index).name(to).build();
        self.send(msg::request(RouteNetlinkMessage::SetLink(set), NLM_F_REQUEST | NLM_F_ACK))
            .await
            .map_err(refused(format!("renaming {from} to {to}")))?;
        Ok(true)
    }

    /// Makes felt's VXLAN device exist as `spec` says, with `vtep_ip/32` as its
    /// only IPv4 address (none in an IPv6-only cluster) and `vtep_ip6/128`
    /// (dual-stack, IPv6-only) as its only global IPv6 address. Returns its
    /// index and what had to change.
    pub async fn ensure_device(
        &self,
        spec: &VxlanSpec,
        vtep_ip: Option<Ipv4Addr>,
        vtep_ip6: Option<Ipv6Addr>,
    ) -> Result<(u32, Vec<String>), KernelError> {
        let mut changes = Vec::new();
        let mut existing = self.link(&spec.name).await?;
        if let Some(facts) = &existing {
            if let Some(why) = spec.mismatch(facts) {
                tracing::warn!(device = %spec.name, %why, "VXLAN device has the wrong identity; recreating it");
                let del = LinkUnspec::new_with_index(facts.index).build();
                self.send(msg::request(RouteNetlinkMessage::DelLink(del), NLM_F_REQUEST | NLM_F_ACK))
                    .await
                    .map_err(refused(format!("deleting {}", spec.name)))?;
                changes.push(format!("recreated ({why})"));
                existing = None;
            }
        }
        let facts = match existing {
            Some(f) => f,
            None => {
                let add = msg::request(
                    RouteNetlinkMessage::NewLink(msg::vxlan_link(spec)),
                    NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
                );
                self.send(add).await.map_err(refused(format!("creating {}", spec.name)))?;
                changes.push("created".to_owned());
                self.link(&spec.name).await?.ok_or_else(|| KernelError::NoSuchLink(spec.name.clone()))?
            }
        };
        self.configure(&facts, spec.mtu, Some(spec.mac), vtep_ip, &mut changes).await?;
        self.configure6(&facts, vtep_ip6, &mut changes).await?;
        Ok((facts.index, changes))
    }

    /// Makes the TUN device `name` (created by the userspace data plane) up,
    /// with `mtu`, `vtep_ip/32` as its only IPv4 address (none when IPv6-only)
    /// and `vtep_ip6/128` (dual-stack, IPv6-only) as its only global IPv6 one.
    pub async fn ensure_tun(
        &self,
        name: &str,
        mtu: u32,
        vtep_ip: Option<Ipv4Addr>,
        vtep_ip6: Option<Ipv6Addr>,
    ) -> Result<(u32, Vec<String>), KernelError> {
        let facts = self.link(name).await?.ok_or_else(|| KernelError::NoSuchLink(name.to_owned()))?;
        let mut changes = Vec::new();
        self.configure(&facts, mtu, None, vtep_ip, &mut changes).await?;
        self.configure6(&facts, vtep_ip6, &mut changes).await?;
        Ok((facts.index, changes))
    }

    /// MTU, MAC (when given), up, and the VTEP address as the only IPv4
    /// address; with `None` (an IPv6-only cluster), no IPv4 address.
    async fn configure(
        &self,
        facts: &LinkFacts,
        mtu: u32,
        mac: Option<felt_proto::MacAddr>,
        vtep_ip: Option<Ipv4Addr>,
        changes: &mut Vec<String>,
    ) -> Result<(), KernelError> {
        let name = &facts.name;
        let mut set = LinkUnspec::new_with_index(facts.index);
        let mut dirty = false;
        if facts.mtu != mtu {
            set = set.mtu(mtu);
            changes.push(format!("mtu {} → {}", facts.mtu, mtu));
            dirty = true;
        }
        if let Some(mac) = mac.filter(|m| facts.mac != Some(*m)) {
            set = set.address(mac.octets().to_vec());
            changes.push(format!("address → {mac}"));
            dirty = true;
        }
        if !facts.up {
            set = set.up();
            changes.push("up".to_owned());
            dirty = true;
        }
        if dirty {
            self.send(msg::request(RouteNetlinkMessage::SetLink(set.build()), NLM_F_REQUEST | NLM_F_ACK))
                .await
                .map_err(refused(format!("configuring {}", name)))?;
        }
        for (index, ip, len) in self.addresses().await? {
            if index == facts.index && (Some(ip) != vtep_ip || len != 32) {
                let mut del = msg::vtep_address(index, ip);
                del.header.prefix_len = len;
                self.send(msg::request(RouteNetlinkMessage::DelAddress(del), NLM_F_REQUEST | NLM_F_ACK))
                    .await
                    .map_err(refused(format!("removing stale address {ip}/{len} from {}", name)))?;
                changes.push(format!("removed {ip}/{len}"));
            }
        }
        let Some(vtep_ip) = vtep_ip else { return Ok(()) };
        let has_vtep = self
            .addresses()
            .await?
            .iter()
            .any(|(i, ip, len)| *i == facts.index && *ip == vtep_ip && *len == 32);
        if !has_vtep {
            let add = msg::request(
                RouteNetlinkMessage::NewAddress(msg::vtep_address(facts.index, vtep_ip)),
                msg::SET_FLAGS,
            );
            self.send(add).await.map_err(refused(format!("adding {vtep_ip}/32 to {}", name)))?;
            changes.push(format!("address {vtep_ip}/32"));
        }
        Ok(())
    }

    /// The IPv6 VTEP address `vtep_ip6/128` as the device's only global
    /// IPv6 address (its link-local one stays: the kernel's); with `None`,
    /// no global IPv6 address (a cluster that is no longer dual-stack).
    async fn configure6(
        &self,
        facts: &LinkFacts,
        vtep_ip6: Option<Ipv6Addr>,
        changes: &mut Vec<String>,
    ) -> Result<(), KernelError> {
        let name = &facts.name;
        let global = |ip: &IpAddr| matches!(ip, IpAddr::V6(v6) if !v6.is_unicast_link_local());
        let mut has_vtep = false;
        for (index, ip, len) in self.addresses_of(AddressFamily::Inet6).await? {
            if index != facts.index || !global(&ip) {
                continue;
            }
            if vtep_ip6.is_some_and(|v| IpAddr::V6(v) == ip) && len == 128 {
                has_vtep = true;
                continue;
            }
            let IpAddr::V6(v6) = ip else { continue };
            let mut del = msg::vtep_address6(index, v6);
            del.header.prefix_len = len;
            self.send(msg::request(RouteNetlinkMessage::DelAddress(del), NLM_F_REQUEST | NLM_F_ACK))
                .await
                .map_err(refused(format!("removing stale address {ip}/{len} from {name}")))?;
            changes.push(format!("removed {ip}/{len}"));
        }
        if let Some(vtep) = vtep_ip6.filter(|_| !has_vtep) {
            let add = msg::request(
                RouteNetlinkMessage::NewAddress(msg::vtep_address6(facts.index, vtep)),
                msg::SET_FLAGS,
            );
            self.send(add).await.map_err(refused(format!("adding {vtep}/128 to {name}")))?;
            changes.push(format!("address {vtep}/128"));
        }
        Ok(())
    }

    /// A dump of `inner`, each entry kept as what `keep` makes of it.
    async fn dump_map<T>(
        &self,
        inner: RouteNetlinkMessage,
        keep: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        Self::collect(&mut self.queue(msg::request(inner, NLM_F_REQUEST | NLM_F_DUMP))?, keep).await
    }

    /// What the kernel holds on device `ifindex`, IPv4 and IPv6. Each dumped
    /// entry is read as it arrives and only felt's are kept: a full pass, or
    /// a readiness probe, at 10,000 peers no longer holds 30,000 parsed
    /// messages at once.
    pub async fn observe(&self, ifindex: u32) -> Result<Observed, KernelError> {
        let tag = self.route_tag;
        let mut observed = Observed::default();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut req = RouteMessage::default();
            req.header.address_family = family;
            let routes = self.dump_map(RouteNetlinkMessage::GetRoute(req), |m| match m {
                RouteNetlinkMessage::NewRoute(r) => observe::route(&r, ifindex, tag),
                _ => None,
            });
            observed.routes.extend(routes.await.map_err(refused("listing routes"))?);
            let mut req = NeighbourMessage::default();
            req.header.family = family;
            let neighbours = self.dump_map(RouteNetlinkMessage::GetNeighbour(req), |m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => observe::neighbour(&n, ifindex),
                _ => None,
            });
            observed.neighbours.extend(neighbours.await.map_err(refused("listing neighbours"))?);
        }
        let mut req = NeighbourMessage::default();
        req.header.family = AddressFamily::Bridge;
        let fdb = self.dump_map(RouteNetlinkMessage::GetNeighbour(req), |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) => observe::fdb_entry(&n, ifindex),
            _ => None,
        });
        observed.fdb = fdb.await.map_err(refused("listing FDB entries"))?;
        Ok(observed)
    }

    /// Runs `ops` in order on device `ifindex`, past failures. Up to
    /// [`IN_FLIGHT`] requests are queued before their answers are read: the
    /// kernel still runs them in order (one socket), and a cold start's
    /// 15,000 writes do not wait on 15,000 round trips through the connection task.
    pub async fn apply(&self, ifindex: u32, ops: &[Op]) -> ApplyReport {
        let mut report = ApplyReport::default();
        let answers = futures::stream::iter(ops)
            .map(|op| {
                let answer = self.start(msg::op_request(ifindex, op, self.route_tag));
                async move { (op, answer.await) }
            })
            .buffered(IN_FLIGHT);
        let mut answers = std::pin::pin!(answers);
        while let Some((op, answer)) = answers.next().await {
            match answer {
                Ok(_) => report.applied.push(*op),
                // Already gone (no such entry, or route: ESRCH): the goal of a removal is met.
                Err(e) if op.is_removal() && matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                    report.applied.push(*op)
                }
                Err(e) => report.failed.push((*op, e.to_string())),
            }
        }
        report
    }
}

/// Requests [`Kernel::apply`] keeps queued ahead of their answers: well
/// inside what the socket's receive buffer holds of answers (~200 acks of
/// the default 208 KiB), so none is dropped.
const IN_FLIGHT: usize = 64;

/// A stream of "something changed on felt's device" signals, coalesced: at
/// most one is pending at a time. `ifindex` may be updated when the device is
/// recreated. Must run inside a tokio runtime.
///
/// A notification `expected` explains (felt's own write echoing back, see
/// [`echo`]) is not reported.
pub fn change_events(
    ifindex: Arc<AtomicU32>,
    tag: RouteTag,
    expected: Arc<std::sync::Mutex<Option<echo::Expected>>>,
) -> Result<mpsc::Receiver<()>, KernelError> {
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
    ])
    .map_err(KernelError::Connect)?;
    tokio::spawn(conn);
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        while let Some((msg, _)) = messages.next().await {
            let index = ifindex.load(Ordering::Relaxed);
            let relevant = match &msg.payload {
                NetlinkPayload::InnerMessage(m) => match m {
                    RouteNetlinkMessage::NewLink(l) | RouteNetlinkMessage::DelLink(l) => {
                        l.header.index == index
                    }
                    RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n) => {
                        n.header.ifindex == index
                    }
                    RouteNetlinkMessage::NewRoute(r) | RouteNetlinkMessage::DelRoute(r) => {
                        let on_device = r.attributes.contains(&RouteAttribute::Oif(index));
                        on_device || tag.owns(u8::from(r.header.protocol), on_device)
                    }
                    _ => false,
                },
                _ => false,
            };
            let echo = || match &msg.payload {
                NetlinkPayload::InnerMessage(m) => expected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_ref()
                    .is_some_and(|e| e.explains(m, index, tag)),
                _ => false,
            };
            let relevant = relevant && !echo();
            if relevant && tx.try_send(()).is_err() && tx.is_closed() {
                break;
            }
        }
    });
    Ok(rx)
}
