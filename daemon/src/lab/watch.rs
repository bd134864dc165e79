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
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::netns;

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
        let sock = netns::run_in(ns, || -> io::Result<Socket> {
            let mut s = Socket::new(NETLINK_ROUTE)?;
            s.bind(&SocketAddr::new(0, 0))?;
            s.add_membership(RTNLGRP_IPV4_ROUTE)?;
            socket2::SockRef::from(&s).set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        })??;
        Ok(RouteWatch { sock })
    }

    /// Blocks until a felt route changes as `want` says, or `deadline`;
    /// returns when the notification arrived.
    pub fn wait(&self, want: RouteChange, deadline: Instant) -> Option<SystemTime> {
        while Instant::now() < deadline {
            let Ok((buf, _)) = self.sock.recv_from_full() else { continue };
            let arrived = SystemTime::now();
            let mut off = 0;
            while off < buf.len() {
                let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[off..]) else { break };
                let len = (msg.header.length as usize).max(16);
                off += (len + 3) & !3;
                let hit = match (&msg.payload, want) {
                    (NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewRoute(r)), RouteChange::Added)
                    | (
                        NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelRoute(r)),
                        RouteChange::Removed,
                    ) => u8::from(r.header.protocol) == ROUTE_PROTOCOL,
                    _ => false,
                };
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
