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

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

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

/// Receives two descriptors (TUN, UDP) from a unix stream. Every
/// descriptor that arrives is owned at once, so a message with more or
/// fewer than two closes what it brought instead of leaking it.
fn recv_fds(stream: &UnixStream) -> io::Result<[OwnedFd; 2]> {
    <[OwnedFd; 2]>::try_from(sys::recv_descriptors(stream)?).map_err(|fds| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the keeper's message carried {} descriptors, not 2", fds.len()),
        )
    })
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
/// Returns whether one did. This process only keeps them open and passes
/// them on; they close when it returns.
pub fn keep(device: &str, mut from_agent: UnixStream, hold: Duration) -> io::Result<bool> {
    let owned = recv_fds(&from_agent)?;
    let fds = [owned[0].as_raw_fd(), owned[1].as_raw_fd()];
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
    let (tun, udp) = (std::fs::File::from(tun), std::net::UdpSocket::from(udp));
    if udp.local_addr()?.port() != port {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the keeper's socket is bound to {}, not port {port}", udp.local_addr()?),
        ));
    }
    Ok(Some(Handover { tun, udp }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Descriptors of this process open on /dev/null (other tests running
    /// alongside open sockets, not this).
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| std::fs::read_link(e.path()).is_ok_and(|l| l == Path::new("/dev/null")))
            })
            .count()
    }

    fn send(fds: &[RawFd]) -> io::Result<[OwnedFd; 2]> {
        let (a, b) = UnixStream::pair().unwrap();
        let cmsg = [ControlMessage::ScmRights(fds)];
        sendmsg::<UnixAddr>(a.as_raw_fd(), &[IoSlice::new(b"fd")], &cmsg, MsgFlags::empty(), None).unwrap();
        recv_fds(&b)
    }

    #[test]
    fn descriptors_that_are_not_two_are_closed_not_leaked() {
        let files: Vec<std::fs::File> = (0..3).map(|_| std::fs::File::open("/dev/null").unwrap()).collect();
        let raw: Vec<RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
        let before = open_fds();
        for n in [1, 3] {
            let err = send(&raw[..n]).unwrap_err();
            assert!(err.to_string().contains(&format!("carried {n} descriptors")), "{err}");
        }
        let got = send(&raw[..2]).expect("two are taken");
        assert_eq!(open_fds(), before + 2, "only the two taken stay open");
        drop(got);
        assert_eq!(open_fds(), before, "and close with their owner");
    }
}
