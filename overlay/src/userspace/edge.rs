//! The userspace data plane's edges: a TUN device and a UDP socket, one
//! worker thread each way, each owning its own [`Engine`].
//!
//! - TUN → encap → UDP: packets the kernel routes to the TUN (the routes to
//!   peer pod CIDRs) leave as VXLAN datagrams to the peer's underlay:port.
//! - UDP → decap → TUN: datagrams on the VXLAN port come in as IP packets.
//!
//! Peer tables reach the workers over channels and are applied before the
//! next packet; counters are published to shared atomics after each packet.
//! This first edge does one read and one write per packet (no batching,
//! no offloads): correct and interoperable, not yet fast.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use tracing::warn;
use tun_tap::{Iface, Mode};

use super::engine::{Counters, Decap, DropReason, Encap, Engine, EngineConfig, HEADROOM};
use crate::Peer;

/// One worker's counters, published after every packet (the worker is the only writer).
#[derive(Debug, Default)]
struct Published {
    packets: AtomicU64,
    bytes: AtomicU64,
    drops: [AtomicU64; DropReason::ALL.len()],
}

impl Published {
    fn store(&self, packets: u64, bytes: u64, c: &Counters) {
        self.packets.store(packets, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        for (slot, v) in self.drops.iter().zip(c.drops) {
            slot.store(v, Ordering::Relaxed);
        }
    }
}

/// A running userspace data plane.
#[derive(Debug)]
pub struct UserspaceDataplane {
    name: String,
    peers: [mpsc::Sender<Vec<Peer>>; 2],
    /// Encap worker's, then decap worker's.
    published: [Arc<Published>; 2],
}

impl UserspaceDataplane {
    /// Creates TUN device `name` and binds the VXLAN port on `bind`; starts
    /// both workers. The caller brings the device up and routes to it.
    pub fn start(cfg: EngineConfig, name: &str, bind: SocketAddrV4) -> io::Result<Self> {
        let tun = Arc::new(Iface::without_packet_info(name, Mode::Tun)?);
        let udp = UdpSocket::bind(bind)?;
        let udp_rx = udp.try_clone()?;
        let published = [Arc::new(Published::default()), Arc::new(Published::default())];
        let (tx_peers, tx_updates) = mpsc::channel::<Vec<Peer>>();
        let (rx_peers, rx_updates) = mpsc::channel::<Vec<Peer>>();

        let (t, publish) = (tun.clone(), published[0].clone());
        std::thread::Builder::new().name("felt-encap".into()).spawn(move || {
            let mut engine = Engine::new(cfg);
            let mut buf = vec![0u8; 65536];
            let mut out = vec![0u8; 65536 + HEADROOM];
            loop {
                let n = match t.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        warn!(error = %e, "reading the TUN failed; the encap worker stops");
                        return;
                    }
                };
                while let Ok(p) = tx_updates.try_recv() {
                    engine.set_peers(&p);
                }
                if let Encap::Send { len, to } = engine.encap(&buf[..n], &mut out) {
                    // A send error (no route on the underlay, buffer full) drops this packet only.
                    let _ = udp.send_to(&out[..len], to);
                }
                let c = engine.counters();
                publish.store(c.tx_packets, c.tx_bytes, c);
            }
        })?;
        let (t, publish) = (tun, published[1].clone());
        std::thread::Builder::new().name("felt-decap".into()).spawn(move || {
            let mut engine = Engine::new(cfg);
            let mut buf = vec![0u8; 65536];
            loop {
                let (n, from) = match udp_rx.recv_from(&mut buf) {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(error = %e, "reading the VXLAN socket failed; the decap worker stops");
                        return;
                    }
                };
                while let Ok(p) = rx_updates.try_recv() {
                    engine.set_peers(&p);
                }
                let from = match from {
                    SocketAddr::V4(a) => *a.ip(),
                    SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                };
                if let Decap::Deliver(p) = engine.decap(from, &buf[..n]) {
                    let _ = t.send(p);
                }
                let c = engine.counters();
                publish.store(c.rx_packets, c.rx_bytes, c);
            }
        })?;
        Ok(UserspaceDataplane { name: name.to_owned(), peers: [tx_peers, rx_peers], published })
    }

    /// The TUN device's name.
    pub fn name(&self) -> &str {
        &self.name
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
