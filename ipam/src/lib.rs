//! Address management for felt.
//!
//! - [`subnets`]: pure CIDR math — carving node subnets out of the cluster
//!   CIDR, choosing a free one, checking a pod CIDR a registry hands us.
//! - [`LeaseDir`]: subnet leases for registries that allocate themselves (the
//!   file registry). One file per subnet, created atomically, so that two
//!   agents allocating at the same moment never get the same subnet.
//! - [`PodAddressStore`]: the per-node pod address store the CNI plugin uses,
//!   crash safe in the same way (one file per address).
//!
//! Both stores claim a name with `link(2)` of a fully written temporary file:
//! the claim either appears complete or fails with `EEXIST`, so a reader
//! never sees a half-written owner and a crash never leaves a torn one.

#![forbid(unsafe_code)]

mod store;
pub mod subnets;

pub use store::{LeaseDir, PodAddress, PodAddressStore, StoreError};
