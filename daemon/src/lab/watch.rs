//! Timing joins and leaves: a netlink listener per node namespace that
//! notes when felt's routes appear or go, stamped on receipt.
//!
//! It listens on `RTNLGRP_IPV4_ROUTE` from a socket opened inside the node's
//! namespace *before* the change, so nothing is missed, and it costs nothing
//! while waiting (a blocking read with a timeout), unlike polling dumps.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use felt_overlay::ROUTE_PROTOCOL;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use std::net::Ipv4Addr;

use crate::netns;

const RTNLGRP_NEIGH: u32 = 3;
const RTNLGRP_IPV4_ROUTE: u32 = 7;

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
    sock: Socket,
}

impl RouteWatch {
    /// Opens the listener inside the namespace at `ns`.
    pub fn open(ns: &Path) -> io::Result<Self> {
        Self::open_group(ns, RTNLGRP_IPV4_ROUTE)
    }

    /// Opens a listener for neighbour and FDB changes inside `ns`.
    pub fn open_fdb(ns: &Path) -> io::Result<Self> {
        Self::open_group(ns, RTNLGRP_NEIGH)
    }

    fn open_group(ns: &Path, group: u32) -> io::Result<Self> {
        let sock = netns::run_in(ns, move || -> io::Result<Socket> {
            let mut s = Socket::new(NETLINK_ROUTE)?;
            s.bind(&SocketAddr::new(0, 0))?;
            s.add_membership(group)?;
            socket2::SockRef::from(&s).set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        })??;
        Ok(RouteWatch { sock })
    }

    /// Blocks until a felt route changes as `want` says, or `deadline`;
    /// returns when the notification arrived.
    pub fn wait(&self, want: RouteChange, deadline: Instant) -> Option<SystemTime> {
        self.wait_for(deadline, |m| match (m, want) {
            (RouteNetlinkMessage::NewRoute(r), RouteChange::Added)
            | (RouteNetlinkMessage::DelRoute(r), RouteChange::Removed) => {
                u8::from(r.header.protocol) == ROUTE_PROTOCOL
            }
            _ => false,
        })
    }

    /// Blocks until an FDB entry pointing at `dst` appears, or `deadline`.
    pub fn wait_fdb(&self, dst: Ipv4Addr, deadline: Instant) -> Option<SystemTime> {
        self.wait_for(deadline, |m| match m {
            RouteNetlinkMessage::NewNeighbour(n) if n.header.family == AddressFamily::Bridge => {
                n.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Destination(NeighbourAddress::Other(raw)) if raw.as_slice() == dst.octets()))
            }
            _ => false,
        })
    }

    /// Blocks until a message matching `hit` arrives, or `deadline`.
    pub fn wait_for(
        &self,
        deadline: Instant,
        hit: impl Fn(&RouteNetlinkMessage) -> bool,
    ) -> Option<SystemTime> {
        while Instant::now() < deadline {
            let Ok((buf, _)) = self.sock.recv_from_full() else { continue };
            let arrived = SystemTime::now();
            let mut off = 0;
            while off < buf.len() {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]) else { break };
                let len = (msg.header.length as usize).max(16);
                off += (len + 3) & !3;
                let hit = matches!(&msg.payload, NetlinkPayload::InnerMessage(m) if hit(m));
                if hit {
                    return Some(arrived);
                }
            }
        }
        None
    }
}

/// Waits on every watch at once; returns the latest arrival, or `None` if any timed out.
pub fn wait_all(watches: Vec<RouteWatch>, want: RouteChange, timeout: Duration) -> Option<SystemTime> {
    let deadline = Instant::now() + timeout;
    let waiters: Vec<_> =
        watches.into_iter().map(|w| std::thread::spawn(move || w.wait(want, deadline))).collect();
    let mut latest = None;
    for w in waiters {
        let t = w.join().ok()??;
        latest = Some(latest.map_or(t, |l: SystemTime| l.max(t)));
    }
    latest
}
