//! Timing joins and leaves: a netlink listener per node namespace that
//! notes when felt's routes appear or go, stamped on receipt.
//!
//! It listens on `RTNLGRP_IPV4_ROUTE` (or `RTNLGRP_NEIGH`) from a socket
//! opened inside the node's namespace *before* the change, so nothing is
//! missed, and it costs nothing while waiting, unlike polling dumps. The
//! socket is rtnetlink's, as the agent's own change listener
//! (`felt_overlay::kernel::change_events`), driven by a current-thread
//! runtime of its own so callers stay synchronous.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use felt_overlay::RouteTag;
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use netlink_packet_route::route::RouteAttribute;
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::MulticastGroup;

use crate::netns;

/// Which change to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteChange {
    /// A felt route was added or replaced.
    Added,
    /// A felt route was removed.
    Removed,
}

/// A route listener inside one namespace.
#[derive(Debug)]
pub struct RouteWatch {
    rt: tokio::runtime::Runtime,
    messages: UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, netlink_sys::SocketAddr)>,
    /// Which routes are the agent's, and its device's index there.
    tag: RouteTag,
    device: u32,
}

impl RouteWatch {
    /// Opens the listener inside the namespace at `ns`, for felt's own routes.
    pub fn open(ns: &Path) -> io::Result<Self> {
        Self::open_group(ns, MulticastGroup::Ipv4Route, RouteTag::FELT, None)
    }

    /// Opens the listener inside `ns` for the routes `tag` marks through
    /// `device` (Flannel's `proto boot` on `flannel.1`).
    pub fn open_tagged(ns: &Path, tag: RouteTag, device: &str) -> io::Result<Self> {
        Self::open_group(ns, MulticastGroup::Ipv4Route, tag, Some(device.to_owned()))
    }

    /// Opens a listener for neighbour and FDB changes inside `ns`.
    pub fn open_fdb(ns: &Path) -> io::Result<Self> {
        Self::open_group(ns, MulticastGroup::Neigh, RouteTag::FELT, None)
    }

    fn open_group(
        ns: &Path,
        group: MulticastGroup,
        tag: RouteTag,
        device: Option<String>,
    ) -> io::Result<Self> {
        netns::run_in(ns, move || -> io::Result<Self> {
            let device = match device {
                Some(d) => nix::net::if_::if_nametoindex(d.as_str()).map_err(io::Error::from)?,
                None => 0,
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let (conn, _handle, messages) =
                rt.block_on(async { rtnetlink::new_multicast_connection(&[group]) })?;
            rt.spawn(conn);
            Ok(RouteWatch { rt, messages, tag, device })
        })?
    }

    /// Blocks until a felt route changes as `want` says, or `deadline`;
    /// returns when the notification arrived.
    pub fn wait(&mut self, want: RouteChange, deadline: Instant) -> Option<SystemTime> {
        let (tag, device) = (self.tag, self.device);
        self.wait_for(deadline, |m| match (m, want) {
            (RouteNetlinkMessage::NewRoute(r), RouteChange::Added)
            | (RouteNetlinkMessage::DelRoute(r), RouteChange::Removed) => {
                let on_device = r.attributes.contains(&RouteAttribute::Oif(device));
                tag.owns(u8::from(r.header.protocol), on_device)
            }
            _ => false,
        })
    }

    /// Blocks until an FDB entry pointing at `dst` appears, or `deadline`.
    pub fn wait_fdb(&mut self, dst: Ipv4Addr, deadline: Instant) -> Option<SystemTime> {
        self.wait_for(deadline, |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) if n.header.family == AddressFamily::Bridge => {
                n.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) if raw.as_slice() == dst.octets()))
            }
            _ => false,
        })
    }

    /// Blocks until a message matching `hit` arrives, or `deadline`;
    /// returns when it arrived.
    pub fn wait_for(
        &mut self,
        deadline: Instant,
        hit: impl Fn(&RouteNetlinkMessage) -> bool,
    ) -> Option<SystemTime> {
        let messages = &mut self.messages;
        self.rt.block_on(async {
            let deadline = tokio::time::Instant::from_std(deadline);
            loop {
                let (msg, _) = tokio::time::timeout_at(deadline, messages.next()).await.ok()??;
                let arrived = SystemTime::now();
                if matches!(&msg.payload, NetlinkPayload::InnerMessage(m) if hit(m)) {
                    return Some(arrived);
                }
            }
        })
    }
}

/// Waits on every watch at once; returns the latest arrival, or `None` if any timed out.
pub fn wait_all(watches: Vec<RouteWatch>, want: RouteChange, timeout: Duration) -> Option<SystemTime> {
    let deadline = Instant::now() + timeout;
    let waiters: Vec<_> =
        watches.into_iter().map(|mut w| std::thread::spawn(move || w.wait(want, deadline))).collect();
    let mut latest = None;
    for w in waiters {
        let t = w.join().ok()??;
        latest = Some(latest.map_or(t, |l: SystemTime| l.max(t)));
    }
    latest
}
