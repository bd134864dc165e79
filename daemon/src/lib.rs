//! felt: a VXLAN overlay network agent for Kubernetes.
//!
//! The binary's commands live here as a library so the end-to-end tests can
//! drive the same code: [`agent`] (the node agent), [`registry`], [`cni`]
//! (the CNI plugin), [`cleanup`] (taking felt off a node), [`lab`] (the whole fabric on one machine) and
//! [`netns`] (running code inside a network namespace).

#![forbid(unsafe_code)]

pub mod agent;
pub mod cleanup;
pub mod cni;
pub mod compat;
pub mod http;
pub mod icmp;
pub mod lab;
pub mod logging;
pub mod netns;
pub mod process;
pub mod registry;
pub mod status;
pub mod util;
