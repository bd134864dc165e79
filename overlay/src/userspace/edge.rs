//! The userspace data plane's edges: a TUN device and a UDP socket, one
//! worker thread each way, each owning its own [`Engine`]. This module
//! opens them and starts the workers; `udp` holds the socket's batching and
//! `workers` the loops.
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
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use tracing::{info, warn};
use tun_tap::{Iface, Mode};

use super::engine::{Counters, DropReason, Engine, EngineConfig};
use super::keeper::Link;
use super::offload::{Coalescer, VNET_HDR_LEN};
use super::sys;
use super::udp::{Sender, set_buffers};
use super::workers::{decap_plain, decap_vnet, encap_plain, encap_vnet};
use crate::Peer;

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
    pub(super) fn vnet(self) -> bool {
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

/// One worker's counters, published after every read (the worker is the
/// only writer), and the data plane's word to it to stop.
#[derive(Debug, Default)]
pub(super) struct Published {
    /// Set by the data plane: finish what was read, then return.
    stop: AtomicBool,
    packets: AtomicU64,
    bytes: AtomicU64,
    /// Encap: super-packets segmented; decap: coalesced writes.
    batches: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Published {
    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    pub(super) fn store(&self, packets: u64, bytes: u64, batches: u64, c: &Counters) {
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
    workers: Mutex<Vec<JoinHandle<()>>>,
    /// The link to the keeper that holds copies of the descriptors for the
    /// next agent (see [`super::keeper`]).
    keeper: Mutex<Option<Link>>,
    /// The peer table last handed to the workers.
    table: Mutex<Vec<Peer>>,
}

impl UserspaceDataplane {
    /// Creates TUN device `name` and binds the VXLAN port on `bind` — or
    /// takes both over from the previous agent (`adopted`) — and starts both
    /// workers. The caller brings the device up and routes to it.
    pub fn start(
        cfg: EngineConfig,
        name: &str,
        bind: SocketAddr,
        offloads: Offloads,
        adopted: Option<Handover>,
    ) -> io::Result<Self> {
        let mut offloads = offloads;
        sys::install_wake_handler()?;
        let (tun, udp) = open(name, bind, &mut offloads, adopted)?;
        let tun = Arc::new(tun);
        let kept = udp.try_clone()?;
        let udp_rx = udp.try_clone()?;
        let published = [Arc::new(Published::default()), Arc::new(Published::default())];
        let (tx_peers, tx_updates) = mpsc::channel::<Vec<Peer>>();
        let (rx_peers, rx_updates) = mpsc::channel::<Vec<Peer>>();
        info!(device = name, %offloads, "userspace data plane starting");

        let (t, publish) = (tun.clone(), published[0].clone());
        let encap = std::thread::Builder::new().name("felt-encap".into()).spawn(move || {
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
        let decap = std::thread::Builder::new().name("felt-decap".into()).spawn(move || {
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
        let peers = [tx_peers, rx_peers];
        Ok(UserspaceDataplane {
            name: name.to_owned(),
            offloads,
            tun,
            udp: kept,
            peers,
            published,
            workers: Mutex::new(vec![encap, decap]),
            keeper: Mutex::new(None),
            table: Mutex::new(Vec::new()),
        })
    }

    /// Keeps `link` to the keeper for as long as this data plane lives.
    pub fn attach_keeper(&self, link: Link) {
        *self.keeper.lock().unwrap_or_else(|e| e.into_inner()) = Some(link);
    }

    /// Whether a keeper holds the descriptors for the next agent.
    pub fn has_keeper(&self) -> bool {
        self.keeper.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    /// Stops both workers: each finishes the packets it has read and reads
    /// no more, so what arrives from now on waits in the kernel for the next
    /// agent (held by the keeper) instead of dying with this process
    /// half-handled. Returns whether both stopped within `within`.
    pub fn stop(&self, within: Duration) -> bool {
        for p in &self.published {
            p.stop.store(true, Ordering::Relaxed);
        }
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        let deadline = Instant::now() + within;
        // A worker may be between its check and its read when the first
        // wake-up lands: wake it until it is out.
        while workers.iter().any(|w| !w.is_finished()) {
            if Instant::now() > deadline {
                return false;
            }
            workers.iter().filter(|w| !w.is_finished()).for_each(sys::wake);
            std::thread::sleep(Duration::from_millis(2));
        }
        workers.into_iter().for_each(|w| drop(w.join()));
        true
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
        *self.table.lock().unwrap_or_else(|e| e.into_inner()) = peers.to_vec();
    }

    /// The peer table last handed to the workers (each applies it before
    /// its next packet).
    pub fn peers(&self) -> Vec<Peer> {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

/// The TUN device and the VXLAN socket, fresh or adopted, with the offloads
/// set; drops from `offloads` what the kernel refuses.
fn open(
    name: &str,
    bind: SocketAddr,
    offloads: &mut Offloads,
    adopted: Option<Handover>,
) -> io::Result<(Tun, UdpSocket)> {
    // The keeper holds the port: a socket of the other family (the
    // underlay changed family) cannot be bound beside it.
    if let Some(h) = &adopted {
        if h.udp.local_addr().is_ok_and(|a| a.is_ipv4() != bind.is_ipv4()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the keeper's VXLAN socket is of the other address family than the underlay \
                 (the underlay changed family): stop the keeper (`felt cleanup`) and start again",
            ));
        }
    }
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
        let flags = if offloads.tso { libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 } else { 0 };
        if let Err(e) = sys::set_offload(file, flags) {
            warn!(error = %e, "the TUN device refused checksum/TSO offload; going on without TSO");
            offloads.tso = false;
        }
    }
    set_buffers(&udp);
    if offloads.gro {
        if let Err(e) = setsockopt(&udp, sockopt::UdpGroSegment, &true) {
            warn!(error = %e, "UDP GRO is not available; receiving one datagram per read");
        }
    }
    Ok((tun, udp))
}
