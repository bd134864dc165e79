//! felt's data planes.
//!
//! The shape is observe → pure diff → apply:
//! - [`Peer`] is what the agent wants to reach; [`desired`] turns peers into
//!   the three kernel objects each needs (route, neighbour, FDB entry);
//! - [`plan`] compares desired with what the kernel holds ([`Observed`]) and
//!   returns the [`Op`]s that close the gap, touching nothing that is right;
//! - [`kernel`] is the thin netlink edge: it observes, applies ops, keeps the
//!   VXLAN device itself in shape and reports netlink change events;
//! - [`dataplane`] says what each data plane (kernel or userspace) keeps in
//!   the kernel and sets its device up; callers never apply those rules.
//!
//! Nothing here decides *who* the peers are: the daemon's cluster view does.

#![deny(unsafe_code)]

pub mod dataplane;
pub mod icmp;
pub mod kernel;
mod model;
pub mod nft;
mod plan;
pub mod userspace;

pub use dataplane::{Dataplane, DataplaneKind};
pub use model::{FdbEntry, Neighbour, Peer, Route};
pub use plan::{Desired, Held, Observed, ObservedRoute, Op, apply_to, desired, plan};

/// The route protocol number felt tags its routes with (`ip route … proto 76`),
/// so a resync removes only routes felt added. Unused by the kernel and by
/// iproute2's `rt_protos`; Flannel leaves its routes at `proto boot` (3).
pub const ROUTE_PROTOCOL: u8 = 76;

/// How felt knows the routes it owns: by their protocol, and, for a
/// protocol others use too, only on felt's device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteTag {
    /// The protocol felt writes and recognises.
    pub protocol: u8,
    /// Own only the routes through felt's device.
    pub device_only: bool,
}

impl RouteTag {
    /// felt's own: [`ROUTE_PROTOCOL`], wherever the route points.
    pub const FELT: RouteTag = RouteTag { protocol: ROUTE_PROTOCOL, device_only: false };
    /// Flannel's (`--compat flannel`): `proto boot`, as flanneld leaves its
    /// routes, so felt takes them over without rewriting one; only those
    /// through the VXLAN device, since an operator's `ip route add` is
    /// `proto boot` too.
    pub const FLANNEL: RouteTag = RouteTag { protocol: 3, device_only: true };

    /// Whether a route of `protocol`, through felt's device or not, is felt's.
    pub fn owns(self, protocol: u8, on_device: bool) -> bool {
        protocol == self.protocol && (on_device || !self.device_only)
    }
}

impl Default for RouteTag {
    fn default() -> Self {
        RouteTag::FELT
    }
}
