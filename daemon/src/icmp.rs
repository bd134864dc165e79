//! The raw socket the probes send ICMP echo on; the packets themselves are
//! `felt_overlay::icmp`'s.

use std::time::Duration;

pub use felt_overlay::icmp::{echo_request, echo_request6, parse_echo_reply, parse_echo_reply6};
use socket2::{Domain, Protocol, Socket, Type};

/// A raw ICMP socket (needs CAP_NET_RAW in its network namespace) with a
/// read timeout, that receives echo replies only (see [`prepare`]).
pub fn raw_socket(read_timeout: Duration) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    prepare(&s, read_timeout, false)?;
    Ok(s)
}

/// A raw ICMPv6 socket (CAP_NET_RAW) with a read timeout, that receives
/// echo replies only.
pub fn raw_socket6(read_timeout: Duration) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    prepare(&s, read_timeout, true)?;
    Ok(s)
}

/// The read timeout; echo replies alone
/// ([`felt_overlay::icmp::receive_echo_replies_only`]), and room for a burst
/// of them: thousands of peers probed at once would overflow the default
/// buffer (about 200 KB: a few hundred replies). Past `net.core.rmem_max`
/// only with CAP_NET_ADMIN; without it, up to that limit.
fn prepare(s: &Socket, read_timeout: Duration, ipv6: bool) -> std::io::Result<()> {
    const BUFFER: usize = 4 << 20;
    s.set_read_timeout(Some(read_timeout))?;
    felt_overlay::icmp::receive_echo_replies_only(s, ipv6)?;
    if nix::sys::socket::setsockopt(s, nix::sys::socket::sockopt::RcvBufForce, &BUFFER).is_err() {
        s.set_recv_buffer_size(BUFFER)?;
    }
    Ok(())
}
