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
pub use plan::{Desired, Observed, ObservedRoute, Op, desired, plan};

/// The route protocol number felt tags its routes with (`ip route … proto 76`),
/// so a resync removes only routes felt added. Unused by the kernel and by
/// iproute2's `rt_protos`; Flannel leaves its routes at `proto boot` (3).
pub const ROUTE_PROTOCOL: u8 = 76;
