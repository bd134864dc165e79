//! The two workers' loops, plain and offloaded: read, update peers, encap
//! or decap, write, publish counters. Each owns its own [`Engine`].

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::UdpSocket;
use std::sync::mpsc;

use tracing::warn;
use tun_tap::Iface;

use super::edge::Published;
use super::engine::{Decap, DropReason, Encap, EncapMany, Engine, HEADROOM};
use super::offload::{Coalescer, VNET_HDR_LEN, VnetHdr};
use super::udp::{RECV_BATCH, RECV_BUFFER, Received, Sender, recv_batch, source};
use crate::Peer;

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

fn first_peers(engine: &mut Engine, updates: &mpsc::Receiver<Vec<Peer>>, publish: &Published) {
    let step = std::time::Duration::from_millis(20);
    let deadline = std::time::Instant::now() + FIRST_PEERS_WAIT;
    while std::time::Instant::now() < deadline && !publish.stopping() {
        if let Ok(p) = updates.recv_timeout(step) {
            engine.set_peers(&p);
            break;
        }
    }
    apply_updates(engine, updates);
}

fn apply_updates(engine: &mut Engine, updates: &mpsc::Receiver<Vec<Peer>>) {
    while let Ok(p) = updates.try_recv() {
        engine.set_peers(&p);
    }
}

pub(super) fn encap_plain(
    mut engine: Engine,
    tun: &Iface,
    sender: &Sender,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates, publish);
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 65536 + HEADROOM];
    let mut errors = ReadErrors::new("reading the TUN");
    while !publish.stopping() {
        let Some(n) = errors.check(tun.recv(&mut buf))? else { continue };
        apply_updates(&mut engine, updates);
        if let Encap::Send { len, to } = engine.encap(&buf[..n], &mut out)
            && sender.udp.send_to(&out[..len], to).is_err()
        {
            engine.count_drops(DropReason::SendFailed, 1);
        }
        let c = engine.counters();
        publish.store(c.tx_packets, c.tx_bytes, c.tx_super_packets, c);
    }
    Ok(())
}

pub(super) fn encap_vnet(
    mut engine: Engine,
    tun: &File,
    mut sender: Sender,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates, publish);
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536];
    // A 64 KiB super-packet in ~536-byte segments, each with its own headers.
    let mut out = vec![0u8; 4 * 65536];
    let mut tun = tun;
    let mut errors = ReadErrors::new("reading the TUN");
    while !publish.stopping() {
        let Some(n) = errors.check(tun.read(&mut buf))? else { continue };
        apply_updates(&mut engine, updates);
        let Some(hdr) = VnetHdr::parse(&buf[..n]) else { continue };
        if let EncapMany::Send { len, stride, to, .. } =
            engine.encap_offloaded(hdr, &mut buf[VNET_HDR_LEN..n], &mut out)
        {
            let failed = sender.send(&out[..len], stride, to);
            engine.count_drops(DropReason::SendFailed, failed);
        }
        let c = engine.counters();
        publish.store(c.tx_packets, c.tx_bytes, c.tx_super_packets, c);
    }
    Ok(())
}

pub(super) fn decap_plain(
    mut engine: Engine,
    tun: &Iface,
    udp: &UdpSocket,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates, publish);
    let mut buf = vec![0u8; 65536];
    let mut errors = ReadErrors::new("reading the VXLAN socket");
    while !publish.stopping() {
        let Some((n, from)) = errors.check(udp.recv_from(&mut buf))? else { continue };
        apply_updates(&mut engine, updates);
        if let Decap::Deliver(p) = engine.decap(source(from), &buf[..n])
            && tun.send(p).is_err()
        {
            engine.count_drops(DropReason::TunWriteFailed, 1);
        }
        let c = engine.counters();
        publish.store(c.rx_packets, c.rx_bytes, 0, c);
    }
    Ok(())
}

pub(super) fn decap_vnet(
    mut engine: Engine,
    tun: &File,
    udp: &UdpSocket,
    mut coalescer: Coalescer,
    updates: &mpsc::Receiver<Vec<Peer>>,
    publish: &Published,
) -> io::Result<()> {
    first_peers(&mut engine, updates, publish);
    // Up to RECV_BATCH messages per recvmmsg; each may be a whole GRO burst.
    let mut bufs: Vec<Vec<u8>> = (0..RECV_BATCH).map(|_| vec![0u8; RECV_BUFFER]).collect();
    let mut got = [Received::default(); RECV_BATCH];
    let mut errors = ReadErrors::new("reading the VXLAN socket");
    let mut tun = tun;
    // A write error (the TUN's queue is full, the device went down) drops
    // that write only; it is counted after each batch.
    let write_failures = std::cell::Cell::new(0u64);
    let mut write = |b: &[u8]| {
        if tun.write(b).is_err() {
            write_failures.set(write_failures.get() + 1);
        }
    };
    while !publish.stopping() {
        let batch = recv_batch(udp, &mut bufs, &mut got);
        let Some(count) = errors.check(batch)? else { continue };
        apply_updates(&mut engine, updates);
        // Segments of one flow coalesce across the whole batch.
        for (buf, &Received { len: n, from, segment }) in bufs.iter().zip(&got[..count]) {
            if segment == Some(usize::MAX) {
                engine.count_drops(DropReason::UnsplittableBurst, 1);
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
        engine.count_drops(DropReason::TunWriteFailed, write_failures.take());
        let c = engine.counters();
        publish.store(c.rx_packets, c.rx_bytes, coalescer.coalesced(), c);
    }
    Ok(())
}
