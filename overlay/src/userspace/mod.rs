//! Userspace mode: felt's own VXLAN engine, for nodes without a VXLAN
//! kernel device or without privilege. It speaks the same frames as the
//! kernel's device (and Flannel's), so userspace and kernel nodes mix.
//!
//! This module is the sans-IO core: [`Engine::encap`] and
//! [`Engine::decap`] take bytes and a caller's buffer and say what to write
//! where, or why a packet is dropped; they never allocate, read a clock or
//! touch a socket. The TUN device and the UDP socket live at the edge.

mod edge;
mod engine;
pub mod keeper;
pub mod offload;
pub(crate) mod sys;
mod udp;
pub mod wire;
mod workers;

pub use edge::{Handover, Offloads, UserspaceDataplane};
pub use engine::{Counters, Decap, DropReason, Encap, EncapMany, Engine, EngineConfig, HEADROOM};

#[cfg(test)]
mod tests;
