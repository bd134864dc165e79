//! One agent per node: an abstract unix socket, `felt-agent`, bound for as
//! long as the agent runs. Abstract sockets belong to a network namespace,
//! which is what a node is to felt (the host's in a DaemonSet with
//! `hostNetwork`, each node's own in a lab), and the kernel releases the
//! name when the process ends however it ends, so a crash never leaves a
//! stale lock. A second agent finds the name taken, asks the holder's pid
//! (`SO_PEERCRED`) and refuses to start, instead of two agents fighting
//! over one data plane.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};

/// The abstract name (shown by `ss -xlp` as `@felt-agent`).
pub const NAME: &str = "felt-agent";

/// Held while the agent runs; dropping it lets the next agent start.
#[derive(Debug)]
pub struct InstanceLock {
    _listener: UnixListener,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another agent holds it.
    #[error(
        "another felt agent (pid {}) already runs on this node (network namespace); stop it first, two agents would fight over one data plane",
        pid.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
    )]
    Held {
        /// The holder's pid, when the kernel says.
        pid: Option<i32>,
    },
    /// The socket could not be made.
    #[error("taking the one-agent-per-node lock (abstract socket @{NAME})")]
    Io(#[source] io::Error),
}

/// Takes the node's agent lock.
pub fn take() -> Result<InstanceLock, LockError> {
    let addr = SocketAddr::from_abstract_name(NAME.as_bytes()).map_err(LockError::Io)?;
    match UnixListener::bind_addr(&addr) {
        Ok(listener) => Ok(InstanceLock { _listener: listener }),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(LockError::Held { pid: holder(&addr) }),
        Err(e) => Err(LockError::Io(e)),
    }
}

/// The pid of the process listening on `addr`.
fn holder(addr: &SocketAddr) -> Option<i32> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let stream = UnixStream::connect_addr(addr).ok()?;
    getsockopt(&stream, PeerCredentials).ok().map(|c| c.pid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_refused_and_told_who_holds_it() {
        // Abstract names are per network namespace: this test shares the
        // test runner's, so it only runs where no agent does (no root here
        // either way: abstract sockets need no privilege).
        let first = match take() {
            Ok(l) => l,
            Err(LockError::Held { pid }) => panic!("an agent (pid {pid:?}) runs in the test's namespace"),
            Err(e) => panic!("{e}"),
        };
        match take() {
            Err(LockError::Held { pid }) => assert_eq!(pid, Some(std::process::id() as i32)),
            other => panic!("a second lock was not refused: {other:?}"),
        }
        let msg = take().unwrap_err().to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())) && msg.contains("already runs"),
            "{msg}"
        );
        drop(first);
        take().expect("free again once the holder lets go");
    }
}
