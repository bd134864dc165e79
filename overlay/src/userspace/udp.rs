//! The UDP side: socket buffers, GSO sends and batched GRO receives.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmsg,
    setsockopt, sockopt,
};
use tracing::warn;

/// The most a UDP/IPv4 datagram carries.
pub(super) const MAX_UDP_PAYLOAD: usize = 65535 - 20 - 8;
/// The kernel's cap on segments in one UDP GSO send (`UDP_MAX_SEGMENTS`).
pub(super) const MAX_GSO_SEGMENTS: usize = 64;
/// Messages per `recvmmsg` on the decap side.
pub(super) const RECV_BATCH: usize = 8;
/// Bytes per receive buffer: a whole GRO burst (up to 64 KiB) fits.
pub(super) const RECV_BUFFER: usize = 65536 + 4096;
/// Socket buffers asked for (the kernel may cap them at `net.core.*mem_max`
/// without CAP_NET_ADMIN).
pub(super) const SOCKET_BUFFER: usize = 4 << 20;

pub(super) fn set_buffers(udp: &UdpSocket) {
    let size = SOCKET_BUFFER;
    if setsockopt(udp, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(udp, sockopt::RcvBuf, &size);
    }
    if setsockopt(udp, sockopt::SndBufForce, &size).is_err() {
        let _ = setsockopt(udp, sockopt::SndBuf, &size);
    }
}

/// The source address of a datagram, IPv4 or IPv6 (an IPv4-mapped IPv6
/// address as the IPv4 one it maps).
pub(super) fn source(from: SocketAddr) -> IpAddr {
    from.ip().to_canonical()
}

/// The address in a received message's header (`0.0.0.0`, which no peer
/// has, when there is none).
fn source_of(addr: Option<&SockaddrStorage>) -> IpAddr {
    let v4 = addr.and_then(|a| a.as_sockaddr_in()).map(|a| IpAddr::V4(a.ip()));
    let v6 = addr.and_then(|a| a.as_sockaddr_in6()).map(|a| IpAddr::V6(a.ip()).to_canonical());
    v4.or(v6).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// The UDP side of the encap worker.
#[derive(Debug)]
pub(super) struct Sender {
    pub(super) udp: UdpSocket,
    /// UDP GSO, while the kernel takes it.
    pub(super) gso: bool,
}

impl Sender {
    /// One datagram per `stride` bytes of `buf`, one send each; how many failed.
    fn send_each(&self, buf: &[u8], stride: usize, to: SocketAddr) -> u64 {
        buf.chunks(stride).filter(|seg| self.udp.send_to(seg, to).is_err()).count() as u64
    }

    /// Sends `buf` as datagrams of `stride` bytes (the last may be shorter).
    /// A send error (no route on the underlay, buffer full) drops those
    /// datagrams only, as a NIC would; returns how many were dropped.
    pub(super) fn send(&mut self, buf: &[u8], stride: usize, to: SocketAddr) -> u64 {
        if buf.len() <= stride {
            return u64::from(self.udp.send_to(buf, to).is_err());
        }
        let mut failed = 0;
        if self.gso {
            let per_send = (MAX_UDP_PAYLOAD / stride).clamp(1, MAX_GSO_SEGMENTS) * stride;
            let size = stride as u16;
            let addr = SockaddrStorage::from(to);
            let mut rest = buf;
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(per_send.min(rest.len()));
                rest = tail;
                if chunk.len() <= stride {
                    failed += u64::from(self.udp.send_to(chunk, to).is_err());
                    continue;
                }
                let cmsg = [ControlMessage::UdpGsoSegments(&size)];
                match sendmsg(
                    self.udp.as_raw_fd(),
                    &[IoSlice::new(chunk)],
                    &cmsg,
                    MsgFlags::empty(),
                    Some(&addr),
                ) {
                    Ok(_) => {}
                    // The route's device cannot checksum (EIO), or the kernel has no UDP GSO.
                    Err(e @ (Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP)) => {
                        warn!(error = %e, "UDP GSO refused; sending one datagram per segment from now on");
                        self.gso = false;
                        return failed + self.send_each(chunk, stride, to) + self.send_each(rest, stride, to);
                    }
                    Err(_) => failed += chunk.len().div_ceil(stride) as u64,
                }
            }
            failed
        } else {
            self.send_each(buf, stride, to)
        }
    }
}

/// One message of a [`recv_batch`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Received {
    /// Bytes received (a GRO burst may hold many datagrams).
    pub len: usize,
    /// The sender's address.
    pub from: IpAddr,
    /// The GRO segment size; `None` for a single datagram, `Some(usize::MAX)`
    /// when the control message could not be read (the burst cannot be split).
    pub segment: Option<usize>,
}

impl Default for Received {
    fn default() -> Self {
        Received { len: 0, from: IpAddr::V4(Ipv4Addr::UNSPECIFIED), segment: None }
    }
}

/// Up to [`RECV_BATCH`] messages in one `recvmmsg`, waiting for the first;
/// how many arrived.
pub(super) fn recv_batch(udp: &UdpSocket, bufs: &mut [Vec<u8>], got: &mut [Received]) -> io::Result<usize> {
    // Fresh headers each call: the kernel shrinks each message's control
    // length to what it used, and nix does not reset it.
    let mut headers =
        MultiHeaders::<SockaddrStorage>::preallocate(RECV_BATCH, Some(nix::cmsg_space!(libc::c_int)));
    let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
    let received = recvmmsg(udp.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None)?;
    let mut count = 0;
    for (slot, msg) in got.iter_mut().zip(received) {
        let from = source_of(msg.address.as_ref());
        // Without its segment size a GRO burst cannot be split: say so.
        let segment = match msg.cmsgs() {
            Ok(cmsgs) => cmsgs
                .filter_map(|c| match c {
                    ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                    _ => None,
                })
                .find(|s| *s > 0),
            Err(_) => Some(usize::MAX),
        };
        *slot = Received { len: msg.bytes, from, segment };
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_sends_are_counted_not_ignored() {
        // Port 0 is no destination: every send fails, on loopback only.
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let nowhere = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        let mut plain = Sender { udp: udp.try_clone().unwrap(), gso: false };
        assert_eq!(plain.send(&[0u8; 250], 100, nowhere), 3, "three datagrams, three failures");
        assert_eq!(plain.send(&[0u8; 50], 100, nowhere), 1);
        let mut gso = Sender { udp, gso: true };
        assert_eq!(gso.send(&[0u8; 250], 100, nowhere), 3, "the GSO path counts per datagram too");
    }
}
