//! The userspace data plane's edges: a TUN device and a UDP socket, one
//! worker thread each way, each owning its own [`Engine`].
//!
//! - TUN → encap → UDP: packets the kernel routes to the TUN (the routes to
//!   peer pod CIDRs) leave as VXLAN datagrams to the peer's underlay:port.
//! - UDP → decap → TUN: datagrams on the VXLAN port come in as IP packets.
//!
//! With every [`Offloads`] on (the default) the TUN carries a
//! `virtio_net_hdr` and advertises checksum + TSO4 offload, so one read
//! returns up to 64 KiB of one TCP flow; the engine cuts it into segments
//! that leave in one UDP GSO send (`UDP_SEGMENT`); the receiver gets them in
//! one UDP GRO read (`UDP_GRO`), decapsulates each and coalesces them back
//! into one TUN write. With none, it is one plain read and one write per
//! packet (the `tun-tap` device), which is what the offloads are measured
//! against (README, Measured).
//!
//! Peer tables reach the workers over channels and are applied before the
//! next packet; counters are published to shared atomics after each read.

use std::fmt;
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrIn, recvmmsg, sendmsg, setsockopt,
    sockopt,
};
use tracing::{info, warn};
use tun_tap::{Iface, Mode};

use super::engine::{Counters, Decap, DropReason, Encap, EncapMany, Engine, EngineConfig, HEADROOM};
use super::offload::{Coalescer, VNET_HDR_LEN, VnetHdr};
use super::sys;
use crate::Peer;

/// The most a UDP/IPv4 datagram carries.
const MAX_UDP_PAYLOAD: usize = 65535 - 20 - 8;
/// The kernel's cap on segments in one UDP GSO send (`UDP_MAX_SEGMENTS`).
const MAX_GSO_SEGMENTS: usize = 64;
/// Messages per `recvmmsg` on the decap side.
const RECV_BATCH: usize = 8;
/// Bytes per receive buffer: a whole GRO burst (up to 64 KiB) fits.
const RECV_BUFFER: usize = 65536 + 4096;
/// Socket buffers asked for (the kernel may cap them at `net.core.*mem_max`
/// without CAP_NET_ADMIN).
const SOCKET_BUFFER: usize = 4 << 20;

/// Which offloads the userspace data plane uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offloads {
    /// TUN with `virtio_net_hdr` and TSO4: TCP super-packets in, cut into segments here.
    pub tso: bool,
    /// UDP GSO: a super-packet's segments leave in one send.
    pub gso: bool,
    /// UDP GRO: segments arrive in one receive and go to the TUN coalesced.
    pub gro: bool,
}

impl Offloads {
    /// Every offload (the default).
    pub const ALL: Offloads = Offloads { tso: true, gso: true, gro: true };
    /// None: one plain TUN read or write per packet.
    pub const NONE: Offloads = Offloads { tso: false, gso: false, gro: false };

    /// Whether the TUN needs a `virtio_net_hdr` (TSO in, or coalesced writes out).
    fn vnet(self) -> bool {
        self.tso || self.gro
    }
}

impl fmt::Display for Offloads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on: Vec<&str> = [(self.tso, "tso"), (self.gso, "gso"), (self.gro, "gro")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
        if on.is_empty() { f.write_str("none") } else { f.write_str(&on.join(",")) }
    }
}

/// One worker's counters, published after every read (the worker is the only writer).
#[derive(Debug, Default)]
struct Published {
    packets: AtomicU64,
    bytes: AtomicU64,
    /// Encap: super-packets segmented; decap: coalesced writes.
    batches: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Published {
    fn store(&self, packets: u64, bytes: u64, batches: u64, c: &Counters) {
        self.packets.store(packets, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.batches.store(batches, Ordering::Relaxed);
        for (slot, v) in self.drops.iter().zip(c.drops) {
            slot.store(v, Ordering::Relaxed);
        }
    }
}

/// The TUN device, plain or with a `virtio_net_hdr` on every packet.
#[derive(Debug)]
enum Tun {
    Plain(Iface),
    Vnet(File),
}

/// The data plane's descriptors, as passed from one agent to the next (see
/// [`super::keeper`]): the vnet-header TUN and the bound VXLAN socket.
#[derive(Debug)]
pub struct Handover {
    /// The TUN device (vnet header, persistent).
    pub tun: File,
    /// The UDP socket on the VXLAN port.
    pub udp: UdpSocket,
}

/// A running userspace data plane.
#[derive(Debug)]
pub struct UserspaceDataplane {
    name: String,
    offloads: Offloads,
    tun: Arc<Tun>,
    udp: UdpSocket,
    peers: [mpsc::Sender<Vec<Peer>>; 2],
    /// Encap worker's, then decap worker's.
    published: [Arc<Published>; 2],
}

fn set_buffers(udp: &UdpSocket) {
    let size = SOCKET_BUFFER;
    if setsockopt(udp, sockopt::RcvBufForce, &size).is_err() {
        let _ = setsockopt(udp, sockopt::RcvBuf, &size);
    }
    if setsockopt(udp, sockopt::SndBufForce, &size).is_err() {
        let _ = setsockopt(udp, sockopt::SndBuf, &size);
    }
}

impl UserspaceDataplane {
    /// Creates TUN device `name` and binds the VXLAN port on `bind` — or
    /// takes both over from the previous agent (`adopted`) — and starts both
    /// workers. The caller brings the device up and routes to it.
    pub fn start(
        cfg: EngineConfig,
        name: &str,
        bind: SocketAddrV4,
        offloads: Offloads,
        adopted: Option<Handover>,
    ) -> io::Result<Self> {
        let mut offloads = offloads;
        let (tun, udp) = match adopted {
            // The previous agent's device: vnet header and persistence already set.
            Some(h) => (Tun::Vnet(h.tun), h.udp),
            None => {
                let tun = if offloads.vnet() {
                    let file = sys::open_tun_vnet(name)?;
                    sys::set_vnet_hdr_size(&file, VNET_HDR_LEN as libc::c_int)?;
                    // A restart finds the device, its routes and the packets queued meanwhile.
                    if let Err(e) = sys::set_persist(&file, true) {
                        warn!(error = %e, "cannot make the TUN device persistent; a restart will lose its routes");
                    }
                    Tun::Vnet(file)
                } else {
                    Tun::Plain(Iface::without_packet_info(name, Mode::Tun)?)
                };
                (tun, UdpSocket::bind(bind)?)
            }
        };
        if let Tun::Vnet(file) = &tun {
            // Set either way: an adopted device keeps what the previous agent asked for.
            let flags = if offloads.tso { libc::TUN_F_CSUM | libc::TUN_F_TSO4 } else { 0 };
            if let Err(e) = sys::set_offload(file, flags) {
                warn!(error = %e, "the TUN device refused checksum/TSO offload; going on without TSO");
                offloads.tso = false;
            }
        }
        let tun = Arc::new(tun);
        set_buffers(&udp);
        if offloads.gro {
            if let Err(e) = setsockopt(&udp, sockopt::UdpGroSegment, &true) {
                warn!(error = %e, "UDP GRO is not available; receiving one datagram per read");
            }
        }
        let kept = udp.try_clone()?;
        let udp_rx = udp.try_clone()?;
        let published = [Arc::new(Published::default()), Arc::new(Published::default())];
        let (tx_peers, tx_updates) = mpsc::channel::<Vec<Peer>>();
        let (rx_peers, rx_updates) = mpsc::channel::<Vec<Peer>>();
        info!(device = name, %offloads, "userspace data plane starting");

        let (t, publish) = (tun.clone(), published[0].clone());
        std::thread::Builder::new().name("felt-encap".into()).spawn(move || {
            let engine = Engine::new(cfg);
            let sender = Sender { udp, gso: offloads.gso };
            let result = match &*t {
                Tun::Plain(iface) => encap_plain(engine, iface, &sender, &tx_updates, &publish),
                Tun::Vnet(file) => encap_vnet(engine, file, sender, &tx_updates, &publish),
            };
            if let Err(e) = result {
                warn!(error = %e, "reading the TUN failed; the encap worker stops");
            }
        })?;
        let (t, publish) = (tun.clone(), published[1].clone());
        std::thread::Builder::new().name("felt-decap".into()).spawn(move || {
            let engine = Engine::new(cfg);
            let result = match &*t {
                Tun::Plain(iface) => decap_plain(engine, iface, &udp_rx, &rx_updates, &publish),
                Tun::Vnet(file) => {
                    let coalescer = Coalescer::new(if offloads.gro { 64 } else { 1 });
                    decap_vnet(engine, file, &udp_rx, coalescer, &rx_updates, &publish)
                }
            };
            if let Err(e) = result {
                warn!(error = %e, "reading the VXLAN socket failed; the decap worker stops");
            }
        })?;
        Ok(UserspaceDataplane {
            name: name.to_owned(),
            offloads,
            tun,
            udp: kept,
            peers: [tx_peers, rx_peers],
            published,
        })
    }

    /// Copies of the descriptors for the next agent (vnet-header TUN only;
    /// the plain `tun-tap` device is not persistent).
    pub fn handover(&self) -> io::Result<Handover> {
        match &*self.tun {
            Tun::Vnet(file) => Ok(Handover { tun: file.try_clone()?, udp: self.udp.try_clone()? }),
            Tun::Plain(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "the plain TUN (--userspace-offloads none) is not handed over",
            )),
        }
    }

    /// The TUN device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The offloads in use (those asked for, less any the kernel refused).
    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Hands both workers a new peer table.
    pub fn set_peers(&self, peers: &[Peer]) {
        for p in &self.peers {
            let _ = p.send(peers.to_vec());
        }
    }

    /// Packets, bytes and drops so far, both ways.
    pub fn counters(&self) -> Counters {
        let [tx, rx] = &self.published;
        let mut c = Counters {
            tx_packets: tx.packets.load(Ordering::Relaxed),
            tx_bytes: tx.bytes.load(Ordering::Relaxed),
            rx_packets: rx.packets.load(Ordering::Relaxed),
            rx_bytes: rx.bytes.load(Ordering::Relaxed),
            tx_super_packets: tx.batches.load(Ordering::Relaxed),
            rx_coalesced: rx.batches.load(Ordering::Relaxed),
            ..Counters::default()
        };
        for p in &self.published {
            for (sum, v) in c.drops.iter_mut().zip(&p.drops) {
                *sum += v.load(Ordering::Relaxed);
            }
        }
        c
    }
}

/// A worker's failed reads: most are transient (ENOBUFS, ENOMEM, an ICMP
/// error reported on the socket), so the worker logs them — the 1st, 2nd,
/// 4th, 8th… — and goes on; only a descriptor that is gone stops it.
#[derive(Debug)]
struct ReadErrors {
    what: &'static str,
    seen: u64,
}

impl ReadErrors {
    fn new(what: &'static str) -> Self {
        ReadErrors { what, seen: 0 }
    }

    /// The value of a read that worked; `None` after one that failed and
    /// may be retried; `Err` when the worker must stop.
    fn check<T>(&mut self, read: io::Result<T>) -> io::Result<Option<T>> {
        match read {
            Ok(v) => Ok(Some(v)),
            Err(e) => self.on(e).map(|()| None),
        }
    }

    /// `Err` when the worker must stop.
    fn on(&mut self, e: io::Error) -> io::Result<()> {
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(());
        }
        if matches!(e.raw_os_error(), Some(libc::EBADF | libc::EFAULT | libc::ENOTSOCK)) {
            return Err(e);
        }
        self.seen += 1;
        if self.seen.is_power_of_two() {
            warn!(error = %e, failures = self.seen, "{} failed; going on", self.what);
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
        Ok(())
    }
}

/// How long a worker waits for its first peer table before it starts
/// anyway. Packets queued while no agent ran (see [`super::keeper`]) must
/// meet the peers, not an empty table.
const FIRST_PEERS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

fn first_peers(engine: &mut Engine, updates: &mpsc::Receiver<Vec<Peer>>) {
    if let Ok(p) = updates.recv_timeout(FIRST_PEERS_WAIT) {
        engine.set_peers(&p);
    }
    apply_updates(engine, updates);
}

fn apply_updates(engine: &mut Engine, updates: &mpsc::Receiver<Vec<Peer>>) {
    while let Ok(p) = updates.try_recv() {
        engine.set_peers(&p);
    }
}

fn source_v4(from: SocketAddr) -> Ipv4Addr {
    match from {
        SocketAddr::V4(a) => *a.ip(),
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    }
}

/// The UDP side of the encap worker.
#[derive(Debug)]
struct Sender {
    udp: UdpSocket,
    /// UDP GSO, while the kernel takes it.
    gso: bool,
}

impl Sender {
    /// One datagram per `stride` bytes of `buf`, one send each.
    fn send_each(&self, buf: &[u8], stride: usize, to: SocketAddrV4) {
        for seg in buf.chunks(stride) {
            let _ = self.udp.send_to(seg, to);
        }
    }

    /// Sends `buf` as datagrams of `stride` bytes (the last may be shorter).
    /// A send error (no route on the underlay, buffer full) drops those
    /// datagrams only, as a NIC would.
    fn send(&mut self, buf: &[u8], stride: usize, to: SocketAddrV4) {
        if buf.len() <= stride {
            let _ = self.udp.send_to(buf, to);
            return;
        }
        if self.gso {
            let per_send = (MAX_UDP_PAYLOAD / stride).clamp(1, MAX_GSO_SEGMENTS) * stride;
            let size = stride as u16;
            let addr = SockaddrIn::from(to);
            let mut rest = buf;
            while !rest.is_empty() {
                let (chunk, tail) = rest.split_at(per_send.min(rest.len()));
                rest = tail;
                if chunk.len() <= stride {
                    let _ = self.udp.send_to(chunk, to);
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
                        self.send_each(chunk, stride, to);
                        self.send_each(rest, stride, to);
                        return;
                    }
                    Err(_) => {}
                }
            }
        } else {
            self.send_each(buf, stride, to);
        }
    }
}

fn encap_plain(
    mut engine: Engine,
    tun: &Iface,
    sender: &Sender,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates);
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 65536 + HEADROOM];
    let mut errors = ReadErrors::new("reading the TUN");
    loop {
        let Some(n) = errors.check(tun.recv(&mut buf))? else { continue };
        apply_updates(&mut engine, updates);
        if let Encap::Send { len, to } = engine.encap(&buf[..n], &mut out) {
            let _ = sender.udp.send_to(&out[..len], to);
        }
        let c = engine.counters();
        publish.store(c.tx_packets, c.tx_bytes, c.tx_super_packets, c);
    }
}

fn encap_vnet(
    mut engine: Engine,
    tun: &File,
    mut sender: Sender,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates);
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536];
    // A 64 KiB super-packet in ~536-byte segments, each with its own headers.
    let mut out = vec![0u8; 4 * 65536];
    let mut tun = tun;
    let mut errors = ReadErrors::new("reading the TUN");
    loop {
        let Some(n) = errors.check(tun.read(&mut buf))? else { continue };
        apply_updates(&mut engine, updates);
        let Some(hdr) = VnetHdr::parse(&buf[..n]) else { continue };
        if let EncapMany::Send { len, stride, to, .. } =
            engine.encap_offloaded(hdr, &mut buf[VNET_HDR_LEN..n], &mut out)
        {
            sender.send(&out[..len], stride, to);
        }
        let c = engine.counters();
        publish.store(c.tx_packets, c.tx_bytes, c.tx_super_packets, c);
    }
}

fn decap_plain(
    mut engine: Engine,
    tun: &Iface,
    udp: &UdpSocket,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates);
    let mut buf = vec![0u8; 65536];
    let mut errors = ReadErrors::new("reading the VXLAN socket");
    loop {
        let Some((n, from)) = errors.check(udp.recv_from(&mut buf))? else { continue };
        apply_updates(&mut engine, updates);
        if let Decap::Deliver(p) = engine.decap(source_v4(from), &buf[..n]) {
            let _ = tun.send(p);
        }
        let c = engine.counters();
        publish.store(c.rx_packets, c.rx_bytes, 0, c);
    }
}

fn decap_vnet(
    mut engine: Engine,
    tun: &File,
    udp: &UdpSocket,
    mut coalescer: Coalescer,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates);
    // Up to RECV_BATCH messages per recvmmsg; each may be a whole GRO burst.
    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUFFER]).collect();
    let mut got = [(0usize, Ipv4Addr::UNSPECIFIED, None::<usize>); RECV_BATCH];
    let mut errors = ReadErrors::new("reading the VXLAN socket");
    let mut tun = tun;
    // A write error (the TUN's queue is full, the device went down) drops that packet only.
    let mut write = |b: &[u8]| {
        let _ = tun.write(b);
    };
    loop {
        let batch = {
            // Fresh headers each call: the kernel shrinks each message's
            // control length to what it used, and nix does not reset it.
            let mut headers =
                MultiHeaders::<SockaddrIn>::preallocate(RECV_BATCH, Some(nix::cmsg_space!(libc::c_int)));
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(udp.as_raw_fd(), &mut headers, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(received) => {
                    let mut count = 0;
                    for (slot, msg) in got.iter_mut().zip(received) {
                        let from = msg.address.map_or(Ipv4Addr::UNSPECIFIED, |a| a.ip());
                        // Without its segment size a GRO burst cannot be split: skip it.
                        let segment = match msg.cmsgs() {
                            Ok(cmsgs) => cmsgs
                                .filter_map(|c| match c {
                                    ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                                    _ => None,
                                })
                                .find(|s| *s > 0),
                            Err(_) => Some(usize::MAX),
                        };
                        *slot = (msg.bytes, from, segment);
                        count += 1;
                    }
                    Ok(count)
                }
                Err(e) => Err(io::Error::from(e)),
            }
        };
        let Some(count) = errors.check(batch)? else { continue };
        apply_updates(&mut engine, updates);
        // Segments of one flow coalesce across the whole batch.
        for (buf, &(n, from, segment)) in bufs.iter().zip(&got[..count]) {
            if segment == Some(usize::MAX) {
                let _ = errors.on(io::Error::other("a GRO burst came without its segment size; dropped"));
                continue;
            }
            if n == 0 {
                // Counted (a short frame) like any other bad datagram.
                let _ = engine.decap(from, &[]);
            }
            for datagram in buf[..n].chunks(segment.unwrap_or(n).max(1)) {
                if let Decap::Deliver(p) = engine.decap(from, datagram) {
                    coalescer.push(p, &mut write);
                }
            }
        }
        coalescer.flush(&mut write);
        let c = engine.counters();
        publish.store(c.rx_packets, c.rx_bytes, coalescer.coalesced(), c);
    }
}
