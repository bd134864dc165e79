//! Restarts that lose nothing: the data plane's descriptors outlive the agent.
//!
//! The TUN device is persistent, so its routes survive any restart. Beside
//! every userspace agent runs a *keeper* (`felt keeper`, a child the agent
//! spawns in its own process group) that holds copies of the TUN and UDP
//! socket descriptors, passed over `SCM_RIGHTS`. When the agent ends —
//! SIGTERM or SIGKILL alike — the keeper's copies keep the TUN attached and
//! the VXLAN port bound, so packets wait in the kernel (the TUN's queue, the
//! socket's buffer) instead of being dropped at a detached TUN or meeting a
//! closed port. The next agent connects to the keeper (an abstract unix
//! socket, one per network namespace and device), receives the descriptors,
//! answers that it attaches, and its workers drain what queued up; the keeper
//! stays, now the new agent's. A keeper whose agent is gone and that no agent
//! claims within its hold time exits, and the descriptors close with it.
//!
//! The keeper learns that its agent is gone from the stream between them:
//! it reaches end-of-file when the agent's process ends, however it ends.
//!
//! The protocol, one byte at a time after the descriptors: the keeper says
//! `k` once it listens (to the agent that spawned it); an agent that took
//! the descriptors says `a` (attach: keep them for my successor) or `q`
//! (release: they are of no use to me, exit).

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};

use super::edge::Handover;
use super::sys;

const LISTENING: u8 = b'k';
const ATTACH: u8 = b'a';
const RELEASE: u8 = b'q';

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

/// An agent's end of its link to the keeper. Held for the agent's life:
/// when it closes, the keeper knows the agent is gone and waits for the next.
#[derive(Debug)]
pub struct Link {
    _stream: UnixStream,
}

/// Hands `h` to a freshly spawned keeper whose stdin is the other end of
/// `to_keeper`, and waits (up to 2 s) until it listens for the next agent.
pub fn hand_over(to_keeper: UnixStream, h: &Handover) -> io::Result<Link> {
    send_fds(&to_keeper, [h.tun.as_raw_fd(), h.udp.as_raw_fd()])?;
    to_keeper.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut said = [0u8; 1];
    (&to_keeper).read_exact(&mut said)?;
    if said[0] != LISTENING {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "the keeper answered nonsense"));
    }
    Ok(Link { _stream: to_keeper })
}

/// How a keeper ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// An agent said the descriptors are of no use to it.
    Released,
    /// Its agent was gone and none came within the hold time.
    Unclaimed,
}

/// The keeper: receives the descriptors on `first` (from the agent that
/// spawned it), tells it that it listens, and from then on hands them to
/// every agent that connects, keeping them in between. Returns when an
/// agent releases them or none is attached for `hold`; they close then.
/// The keeper ignores SIGHUP (a `pkill -HUP` meant for agents).
pub fn keep(device: &str, first: UnixStream, hold: Duration) -> io::Result<Ending> {
    sys::ignore_hangup()?;
    let owned = recv_fds(&first)?;
    let fds = [owned[0].as_raw_fd(), owned[1].as_raw_fd()];
    let listener = UnixListener::bind_addr(&address(device)?)?;
    (&first).write_all(&[LISTENING])?;
    let mut agent = Some(first);
    let mut alone_since = Instant::now();
    loop {
        let timeout = match agent {
            Some(_) => PollTimeout::NONE,
            None => {
                let left = hold.saturating_sub(alone_since.elapsed());
                if left.is_zero() {
                    return Ok(Ending::Unclaimed);
                }
                PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX)
            }
        };
        let (listener_ready, agent_ready) = {
            let mut watched = vec![PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
            if let Some(a) = &agent {
                watched.push(PollFd::new(a.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut watched, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |p: &PollFd| p.revents().is_some_and(|r| !r.is_empty());
            (ready(&watched[0]), watched.get(1).is_some_and(ready))
        };
        if agent_ready {
            match said(agent.as_ref().expect("polled")) {
                Some(RELEASE) => return Ok(Ending::Released),
                // Its process ended (or it spoke out of turn): wait for the next.
                _ => {
                    agent = None;
                    alone_since = Instant::now();
                }
            }
        }
        if listener_ready {
            let (next, _) = listener.accept()?;
            send_fds(&next, fds)?;
            next.set_read_timeout(Some(Duration::from_secs(2)))?;
            match said(&next) {
                Some(ATTACH) => agent = Some(next),
                Some(RELEASE) => return Ok(Ending::Released),
                // It died before it answered: keep waiting.
                _ => {}
            }
        }
    }
}

/// One byte from `stream`; `None` at end-of-file or on an error.
fn said(stream: &UnixStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match (&*stream).read(&mut b) {
        Ok(1) => Some(b[0]),
        _ => None,
    }
}

/// Connects to the keeper of `device`, if one runs in this network
/// namespace, and receives its descriptors.
fn connect(device: &str) -> io::Result<Option<(UnixStream, [OwnedFd; 2])>> {
    let stream = match UnixStream::connect_addr(&address(device)?) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let fds = recv_fds(&stream)?;
    Ok(Some((stream, fds)))
}

/// Takes the descriptors from the keeper of `device`, if one is running
/// in this network namespace, and attaches to it. `port` is the VXLAN port
/// the socket must be bound to; a keeper holding another is released.
pub fn take_over(device: &str, port: u16) -> io::Result<Option<(Handover, Link)>> {
    let Some((stream, [tun, udp])) = connect(device)? else { return Ok(None) };
    let (tun, udp) = (std::fs::File::from(tun), std::net::UdpSocket::from(udp));
    let bound = udp.local_addr()?;
    if bound.port() != port {
        (&stream).write_all(&[RELEASE])?;
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the keeper's socket is bound to {bound}, not port {port}; it was released"),
        ));
    }
    (&stream).write_all(&[ATTACH])?;
    Ok(Some((Handover { tun, udp }, Link { _stream: stream })))
}

/// Tells the keeper of `device`, if one runs in this network namespace, to
/// let the descriptors go and exit (`felt cleanup`: the VXLAN port is
/// freed now, not after the hold). Returns whether there was one.
pub fn release(device: &str) -> io::Result<bool> {
    let Some((stream, _fds)) = connect(device)? else { return Ok(false) };
    (&stream).write_all(&[RELEASE])?;
    Ok(true)
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

    fn unique_device(what: &str) -> String {
        format!("test-{what}-{}", std::process::id())
    }

    fn handover_of(udp: &std::net::UdpSocket) -> Handover {
        // Not /dev/null: the descriptor count of the test below watches those.
        Handover { tun: std::fs::File::open("/dev/zero").unwrap(), udp: udp.try_clone().unwrap() }
    }

    fn spawn_keeper(
        device: &str,
        udp: &std::net::UdpSocket,
        hold: Duration,
    ) -> (std::thread::JoinHandle<io::Result<Ending>>, Link) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let d = device.to_owned();
        let keeper = std::thread::spawn(move || keep(&d, theirs, hold));
        (keeper, hand_over(ours, &handover_of(udp)).unwrap())
    }

    #[test]
    fn the_keeper_outlives_each_agent_and_goes_when_none_comes() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let device = unique_device("outlives");
        let (keeper, first) = spawn_keeper(&device, &udp, Duration::from_millis(300));
        // Three agents in turn, each gone (its link dropped) before the next.
        drop(first);
        for _ in 0..3 {
            let (h, link) = take_over(&device, port).unwrap().expect("the keeper answers");
            assert_eq!(h.udp.local_addr().unwrap().port(), port, "the same socket, passed on");
            std::thread::sleep(Duration::from_millis(400));
            assert!(!keeper.is_finished(), "an attached agent keeps the keeper, past its hold");
            drop(link);
        }
        let started = Instant::now();
        assert_eq!(keeper.join().unwrap().unwrap(), Ending::Unclaimed);
        assert!(started.elapsed() >= Duration::from_millis(250), "it held them for the hold time first");
        assert!(take_over(&device, port).unwrap().is_none(), "and no longer listens");
    }

    #[test]
    fn an_agent_on_another_port_releases_the_keeper() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let device = unique_device("release");
        let (keeper, first) = spawn_keeper(&device, &udp, Duration::from_secs(30));
        drop(first);
        let err = take_over(&device, port.wrapping_add(1)).unwrap_err();
        assert!(err.to_string().contains("it was released"), "{err}");
        assert_eq!(keeper.join().unwrap().unwrap(), Ending::Released, "well before its hold");

        let (keeper, _attached) = spawn_keeper(&device, &udp, Duration::from_secs(30));
        assert!(release(&device).unwrap(), "cleanup finds the keeper, even while an agent is attached");
        assert_eq!(keeper.join().unwrap().unwrap(), Ending::Released);
        assert!(!release(&device).unwrap(), "and then there is none");
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
