//! Restarts that lose nothing: the data plane's descriptors outlive the agent.
//!
//! The TUN device is persistent, so its routes survive any restart. On a
//! graceful stop (SIGTERM) the agent also hands its TUN and UDP socket
//! descriptors to a *keeper* (`felt keeper`, a child it spawns) over
//! `SCM_RIGHTS`. While no agent runs, packets wait in the kernel — in the
//! TUN's queue and the UDP socket's buffer — instead of meeting a closed
//! port. The next agent connects to the keeper (an abstract unix socket,
//! so one per network namespace and device), receives the descriptors,
//! and its workers drain what queued up. A keeper nobody claims exits after
//! its hold time, and the descriptors close with it.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, recvmsg, sendmsg};

use super::edge::Handover;
use super::sys;

fn address(device: &str) -> io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(format!("felt-keeper/{device}").as_bytes())
}

/// Sends two descriptors (TUN, UDP) over a unix stream.
fn send_fds(stream: &UnixStream, fds: [RawFd; 2]) -> io::Result<()> {
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<UnixAddr>(stream.as_raw_fd(), &[IoSlice::new(b"fd")], &cmsg, MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives two descriptors (TUN, UDP) from a unix stream.
fn recv_fds(stream: &UnixStream) -> io::Result<[RawFd; 2]> {
    let mut byte = [0u8; 2];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg =
        recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            if let [tun, udp] = fds[..] {
                return Ok([tun, udp]);
            }
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "no descriptors in the keeper's message"))
}

/// Hands `h` to a keeper whose stdin is the other end of `to_keeper`, and
/// waits (up to 2 s) until it listens for the next agent.
pub fn hand_over(to_keeper: &mut UnixStream, h: &Handover) -> io::Result<()> {
    send_fds(to_keeper, [h.tun.as_raw_fd(), h.udp.as_raw_fd()])?;
    to_keeper.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut ready = [0u8; 1];
    to_keeper.read_exact(&mut ready)?;
    Ok(())
}

/// The keeper: receives the descriptors on `from_agent`, tells the agent it
/// listens, and hands them to the first agent that connects within `hold`.
/// Returns whether one did. The descriptors stay raw: this process only
/// keeps them open and passes them on.
pub fn keep(device: &str, mut from_agent: UnixStream, hold: Duration) -> io::Result<bool> {
    let fds = recv_fds(&from_agent)?;
    let listener = UnixListener::bind_addr(&address(device)?)?;
    listener.set_nonblocking(true)?;
    from_agent.write_all(b"k")?;
    drop(from_agent);
    let deadline = Instant::now() + hold;
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                send_fds(&stream, fds)?;
                // Until the agent has them: its end closes once received.
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let _ = (&stream).read(&mut [0u8; 1]);
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Takes the descriptors from the keeper of `device`, if one is waiting
/// in this network namespace. `port` is the VXLAN port the socket must be
/// bound to.
pub fn take_over(device: &str, port: u16) -> io::Result<Option<Handover>> {
    let stream = match UnixStream::connect_addr(&address(device)?) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let [tun, udp] = recv_fds(&stream)?;
    let (tun, udp) = sys::adopt(tun, udp);
    if udp.local_addr()?.port() != port {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the keeper's socket is bound to {}, not port {port}", udp.local_addr()?),
        ));
    }
    Ok(Some(Handover { tun, udp }))
}
