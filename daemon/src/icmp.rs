//! The raw socket the probes send ICMP echo on; the packets themselves are
//! `felt_overlay::icmp`'s.

use std::time::Duration;

pub use felt_overlay::icmp::{echo_request, echo_request6, parse_echo_reply, parse_echo_reply6};
use socket2::{Domain, Protocol, Socket, Type};

/// A raw ICMP socket (needs CAP_NET_RAW in its network namespace) with a read timeout.
pub fn raw_socket(read_timeout: Duration) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s)
}

/// A raw ICMPv6 socket (CAP_NET_RAW) with a read timeout.
pub fn raw_socket6(read_timeout: Duration) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    s.set_read_timeout(Some(read_timeout))?;
    Ok(s)
}
