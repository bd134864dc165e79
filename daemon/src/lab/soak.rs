//! `felt lab soak`: garbage on a userspace node's VXLAN port, with an
//! account of every datagram.
//!
//! Two senders flood the target's VXLAN port as fast as their sockets take
//! it: one from a peer node (random bytes, truncated headers, another VNI,
//! no I flag, another inner MAC, a broken inner packet, a spoofed inner
//! source, an inner packet claiming more than the datagram holds — every
//! kind the engine must refuse) and one from the lab host address, which is
//! no peer's (unknown source). Meanwhile a pod on the peer pings a pod on
//! the target every 10 ms. The report says how many datagrams felt counted,
//! by reason, and how many the kernel dropped before felt could read them
//! (the target's `eth0` backlog, a full socket buffer): together they must
//! be every datagram sent. Then: is the agent alive, and does good traffic
//! flow at once.
//!
//! Bounded: a datagram count and a time cap; the pinger stops with the
//! senders.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use felt_overlay::userspace::wire::{ETHERNET_LEN, ETHERTYPE_IPV4, EthernetRepr, VXLAN_LEN, VxlanRepr};
use felt_proto::MacAddr;
use ipnet::Ipv4Net;
use serde::Serialize;
use socket2::SockAddr;

use super::{Lab, LabError, LabState, NodeState, topo};
use crate::netns;

/// The kinds of garbage a peer sends, in rotation.
const KINDS: [&str; 8] = [
    "random",
    "truncated",
    "wrong_vni",
    "bad_flags",
    "wrong_inner_mac",
    "bad_inner",
    "spoofed_inner",
    "oversized",
];

/// The largest datagram the lab's 1500-byte underlay carries unfragmented.
const MAX_UNFRAGMENTED: usize = 1500 - 20 - 8;

/// What a soak did and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// The node whose VXLAN port took the garbage.
    pub target: String,
    /// The peer node that sent most of it.
    pub peer: String,
    /// Datagrams sent, all senders.
    pub sent: u64,
    /// Sent by kind (`unknown_source`: from the lab host address).
    pub sent_by_kind: BTreeMap<String, u64>,
    /// Seconds the senders ran.
    pub seconds: f64,
    /// Datagrams felt counted as dropped, by reason.
    pub counted_by_felt: BTreeMap<String, u64>,
    /// Packets the kernel dropped before felt could read them: on the
    /// sender's and the bridge's veths toward the target, the target's
    /// `eth0`, and its UDP socket buffer. These can include good packets
    /// caught in the flood (pings lost).
    pub dropped_by_kernel: u64,
    /// Datagrams sent that neither felt nor the kernel counted: 0 when every
    /// one is accounted for.
    pub unaccounted: u64,
    /// Pings from a pod on the peer to a pod on the target during the flood.
    pub pings_sent: u64,
    /// Their replies.
    pub pings_answered: u64,
    /// A ping right after the flood was answered within a second.
    pub recovered: bool,
    /// The target's agent is still running.
    pub agent_alive: bool,
}

/// A xorshift generator: garbage needs no quality, only speed and a seed.
#[derive(Debug, Clone, Copy)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_ne_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// What the garbage is built from.
#[derive(Debug, Clone, Copy)]
struct Frame {
    vni: u32,
    target_mac: MacAddr,
    peer_mac: MacAddr,
    peer_cidr: Ipv4Net,
    target_cidr: Ipv4Net,
}

impl Frame {
    /// A well-formed VXLAN frame carrying an IPv4 header of `len` bytes total
    /// from `src` to the target's pod CIDR; returns its length.
    fn valid(&self, buf: &mut [u8], src: Ipv4Addr, ip_len: usize) -> usize {
        VxlanRepr { vni: self.vni }.emit(&mut buf[..VXLAN_LEN]);
        EthernetRepr { dst: self.target_mac, src: self.peer_mac, ethertype: ETHERTYPE_IPV4 }
            .emit(&mut buf[VXLAN_LEN..VXLAN_LEN + ETHERNET_LEN]);
        let ip = &mut buf[VXLAN_LEN + ETHERNET_LEN..VXLAN_LEN + ETHERNET_LEN + ip_len];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&(u32::from(self.target_cidr.network()) + 2).to_be_bytes());
        VXLAN_LEN + ETHERNET_LEN + ip_len
    }

    /// One datagram of `kind` (an index into [`KINDS`]) in `buf`; returns its length.
    fn garbage(&self, kind: usize, rng: &mut Rng, buf: &mut [u8]) -> usize {
        let ours = Ipv4Addr::from(u32::from(self.peer_cidr.network()) + 2);
        let header = VXLAN_LEN + ETHERNET_LEN + 20;
        match KINDS[kind] {
            "random" => {
                let n = rng.below(200) as usize;
                rng.fill(&mut buf[..n]);
                n
            }
            "truncated" => {
                self.valid(buf, ours, 20);
                rng.below(header as u64) as usize
            }
            "wrong_vni" => {
                let n = self.valid(buf, ours, 28);
                let vni = (self.vni + 1 + rng.below(0xff_fff0) as u32) & 0xff_ffff;
                let vni = if vni == self.vni { self.vni ^ 1 } else { vni };
                VxlanRepr { vni }.emit(&mut buf[..VXLAN_LEN]);
                n
            }
            "bad_flags" => {
                let n = self.valid(buf, ours, 28);
                buf[0] = 0;
                n
            }
            "wrong_inner_mac" => {
                let n = self.valid(buf, ours, 28);
                rng.fill(&mut buf[VXLAN_LEN..VXLAN_LEN + 6]);
                buf[VXLAN_LEN] |= 0x02;
                if buf[VXLAN_LEN..VXLAN_LEN + 6] == self.target_mac.0 {
                    buf[VXLAN_LEN + 5] ^= 1;
                }
                n
            }
            "bad_inner" => {
                let n = self.valid(buf, ours, 28);
                buf[VXLAN_LEN + ETHERNET_LEN] = 0x65; // IP version 6 in an IPv4 frame
                n
            }
            "spoofed_inner" => {
                // A source outside the peer's pod CIDR (the target's own, say).
                let spoofed = Ipv4Addr::from(u32::from(self.target_cidr.network()) + 9);
                self.valid(buf, spoofed, 28)
            }
            _ => {
                // "oversized": the biggest datagram, whose inner packet claims 64 KiB.
                let n = self.valid(buf, ours, MAX_UNFRAGMENTED - VXLAN_LEN - ETHERNET_LEN);
                let ip = VXLAN_LEN + ETHERNET_LEN;
                buf[ip + 2..ip + 4].copy_from_slice(&u16::MAX.to_be_bytes());
                n
            }
        }
    }
}

/// One interface's drop counter, read from `/proc/net/dev` inside `ns`.
fn dev_drops(ns: &str, iface: &str, tx: bool) -> std::io::Result<u64> {
    let iface = format!("{iface}:");
    netns::run_in(&netns::named(ns), move || -> std::io::Result<u64> {
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        // "iface: rx_bytes rx_packets rx_errs rx_drop (4 more) tx_bytes tx_packets tx_errs tx_drop …"
        Ok(dev
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(iface.as_str()))
            .and_then(|rest| rest.split_whitespace().nth(if tx { 11 } else { 3 }))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0))
    })?
}

/// UDP receive errors (a full socket buffer) inside `ns`.
fn udp_in_errors(ns: &str) -> std::io::Result<u64> {
    netns::run_in(&netns::named(ns), || -> std::io::Result<u64> {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")?;
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let (names, values) = (udp.next().unwrap_or(""), udp.next().unwrap_or(""));
        Ok(names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "InErrors")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0))
    })?
}

/// Where the kernel may drop a flood on its way to the target: the
/// sender's `eth0` (its veth peer's backlog full), the bridge port toward
/// the target, the target's `eth0`, and the target's UDP socket buffer.
#[derive(Debug, Clone)]
struct DropPoints {
    underlay_ns: String,
    sender_ns: String,
    target_ns: String,
}

impl DropPoints {
    fn read(&self) -> Result<u64, LabError> {
        let io = |ns: &str| {
            let ns = ns.to_owned();
            move |e| LabError::io("reading kernel counters in", &netns::named(&ns), e)
        };
        // The bridge-side end of each node's veth is named after the node namespace.
        Ok(dev_drops(&self.sender_ns, "eth0", true).map_err(io(&self.sender_ns))?
            + dev_drops(&self.underlay_ns, &self.target_ns, true).map_err(io(&self.underlay_ns))?
            + dev_drops(&self.target_ns, "eth0", false).map_err(io(&self.target_ns))?
            + udp_in_errors(&self.target_ns).map_err(io(&self.target_ns))?)
    }
}

/// The target engine's drops by reason, from its debug endpoint.
fn felt_drops(ns: &str) -> Result<BTreeMap<String, u64>, LabError> {
    let state = super::status::agent_state(ns)
        .map_err(|e| LabError::io("entering", &netns::named(ns), e))?
        .map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?;
    let engine = state
        .engine
        .ok_or_else(|| LabError::Invalid(format!("{ns}: the agent reports no userspace engine")))?;
    Ok(engine.drops)
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// One sender of garbage.
#[derive(Debug, Clone)]
struct Flood {
    /// Its namespace.
    ns: String,
    /// The address it sends from.
    from: Ipv4Addr,
    /// Datagrams to send.
    count: u64,
    seed: u64,
    /// True: a peer, every kind in rotation. False: no peer's address, random
    /// kinds, all counted as `unknown_source`.
    peer: bool,
}

impl Flood {
    /// Sends (until `deadline` at most); returns how many of each kind were sent.
    fn start(
        self,
        to: SocketAddrV4,
        deadline: Instant,
        frame: Frame,
    ) -> std::thread::JoinHandle<std::io::Result<BTreeMap<String, u64>>> {
        std::thread::spawn(move || {
            let from = self.from;
            let socket = netns::run_in(&netns::named(&self.ns), move || UdpSocket::bind((from, 0)))??;
            let mut rng = Rng(self.seed);
            let mut buf = vec![0u8; MAX_UNFRAGMENTED];
            let mut sent = [0u64; KINDS.len()];
            for i in 0..self.count {
                if i % 1024 == 0 && Instant::now() > deadline {
                    break;
                }
                let kind =
                    if self.peer { i as usize % KINDS.len() } else { rng.below(KINDS.len() as u64) as usize };
                let n = frame.garbage(kind, &mut rng, &mut buf);
                // A full send buffer blocks: the senders go as fast as the path takes them.
                if socket.send_to(&buf[..n], to).is_ok() {
                    sent[kind] += 1;
                }
            }
            Ok(if self.peer {
                KINDS.iter().zip(sent).map(|(k, n)| ((*k).to_owned(), n)).filter(|(_, n)| *n > 0).collect()
            } else {
                BTreeMap::from([("unknown_source".to_owned(), sent.iter().sum())])
            })
        })
    }
}

/// Pings `dst` from inside `ns` every 10 ms until `stop`; (sent, answered).
fn pinger(ns: &str, dst: Ipv4Addr, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, u64)> {
    let path = netns::named(ns);
    std::thread::spawn(move || {
        let Ok(Ok(s)) = netns::run_in(&path, || crate::icmp::raw_socket(Duration::from_millis(1))) else {
            return (0, 0);
        };
        let to = SockAddr::from(SocketAddrV4::new(dst, 0));
        let id = (std::process::id() as u16) ^ 0x50a4;
        let mut seen = std::collections::HashSet::new();
        let mut buf = [0u8; 1500];
        // One read (1 ms timeout); a new reply is remembered.
        let mut read_reply = || {
            if let Ok(n) = std::io::Read::read(&mut &s, &mut buf) {
                if let Some(got) = crate::icmp::parse_echo_reply(&buf[..n], dst, id) {
                    seen.insert(got);
                }
            }
        };
        let mut seq: u64 = 0;
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                let _ = s.send_to(&crate::icmp::echo_request(id, seq as u16), &to);
                seq += 1;
                next += Duration::from_millis(10);
            }
            read_reply();
        }
        // Replies still in flight.
        let linger = Instant::now() + Duration::from_millis(300);
        while Instant::now() < linger {
            read_reply();
        }
        // Sequence numbers wrap at 65536 pings (11 minutes); the time cap is below that.
        (seq, seen.len() as u64)
    })
}

impl Lab {
    /// Floods a userspace node's VXLAN port with `datagrams` garbage
    /// datagrams (at most `max_seconds`), and accounts for every one.
    pub fn soak(
        &self,
        datagrams: u64,
        max_seconds: f64,
        progress: &mut dyn FnMut(&str),
    ) -> Result<SoakReport, LabError> {
        let state: LabState = self.loaded()?;
        let soak = Soak::new(self, &state)?;
        let (target, peer, to) = (soak.target, soak.peer, soak.to);
        let pod_on = |n: &NodeState| state.pods.iter().find(|p| p.node == n.name);
        let drop_points = DropPoints {
            underlay_ns: self.underlay_ns(),
            sender_ns: peer.netns.clone(),
            target_ns: target.netns.clone(),
        };
        let before = (felt_drops(&target.netns)?, drop_points.read()?);
        let stop = Arc::new(AtomicBool::new(false));
        let pings = match (pod_on(peer), pod_on(target)) {
            (Some(src), Some(dst)) => dst.ip.map(|ip| pinger(&src.netns, ip, stop.clone())),
            _ => None,
        };
        progress(&format!(
            "{datagrams} datagrams at {} ({}:{}), 1 in 16 from the lab host (no peer), the rest from {}",
            target.name,
            to.ip(),
            to.port(),
            peer.name
        ));
        let start = Instant::now();
        let sent_by_kind = soak.flood(datagrams, start + Duration::from_secs_f64(max_seconds))?;
        let seconds = start.elapsed().as_secs_f64();
        let sent: u64 = sent_by_kind.values().sum();
        progress(&format!("sent {sent} in {seconds:.1} s; waiting for the counters to settle"));
        stop.store(true, Ordering::Relaxed);
        let (pings_sent, pings_answered) = match pings {
            Some(p) => p.join().unwrap_or((0, 0)),
            None => (0, 0),
        };
        let (counted_by_felt, dropped_by_kernel) = settle(&drop_points, &target.netns, &before, sent)?;
        let recovered = match (pod_on(peer), pod_on(target)) {
            (Some(src), Some(dst)) => match dst.ip {
                Some(ip) => netns::run_in(&netns::named(&src.netns), move || probe_once(ip)).unwrap_or(false),
                None => false,
            },
            _ => false,
        };
        Ok(SoakReport {
            target: target.name.clone(),
            peer: peer.name.clone(),
            sent,
            sent_by_kind,
            seconds,
            unaccounted: sent.saturating_sub(counted_by_felt.values().sum::<u64>() + dropped_by_kernel),
            counted_by_felt,
            dropped_by_kernel,
            pings_sent,
            pings_answered,
            recovered,
            agent_alive: topo::agent_alive(target.pid, &self.registry_dir()),
        })
    }
}

/// A soak's two ends: the userspace node flooded and the peer most of the
/// garbage comes from, with the frame the senders mutate.
struct Soak<'a> {
    underlay_ns: String,
    host_ip: Ipv4Addr,
    target: &'a NodeState,
    peer: &'a NodeState,
    to: SocketAddrV4,
    frame: Frame,
}

impl<'a> Soak<'a> {
    fn new(lab: &Lab, state: &'a LabState) -> Result<Self, LabError> {
        if !state.ip_family.has_ipv4() {
            return Err(LabError::Invalid("soak pings pods over IPv4: use an ipv4 or dual lab".into()));
        }
        let target: &NodeState = state
            .nodes
            .iter()
            .find(|n| state.mode.backend_of(n.index) == felt_overlay::DataplaneKind::Userspace)
            .ok_or_else(|| {
                LabError::Invalid("soak needs a userspace node (--mode userspace or mixed)".into())
            })?;
        let peer = state
            .nodes
            .iter()
            .find(|n| n.name != target.name)
            .ok_or_else(|| LabError::Invalid("soak needs two nodes".into()))?;
        let records = lab.records_of(&state.registry)?;
        let record = |n: &NodeState| {
            let r =
                records.get(&n.name).ok_or_else(|| LabError::Invalid(format!("{} has no record", n.name)))?;
            match (r.pod_cidr_v4(), r.backend_data) {
                (Some(cidr), Some(data)) => Ok((cidr, data.vtep_mac)),
                _ => Err(LabError::Invalid(format!("{}'s record has no subnet or VTEP yet", n.name))),
            }
        };
        let ((target_cidr, target_mac), (peer_cidr, peer_mac)) = (record(target)?, record(peer)?);
        Ok(Soak {
            underlay_ns: lab.underlay_ns(),
            host_ip: topo::host_ip(state.underlay),
            target,
            peer,
            to: SocketAddrV4::new(target.underlay_ip, felt_proto::NetConfig::default().backend.port),
            frame: Frame { vni: 1, target_mac, peer_mac, peer_cidr, target_cidr },
        })
    }

    /// Sends `datagrams` until `deadline`: 1 in 16 from the lab host (no
    /// peer), the rest from the peer; how many of each kind were sent.
    fn flood(&self, datagrams: u64, deadline: Instant) -> Result<BTreeMap<String, u64>, LabError> {
        let unknown = datagrams / 16;
        let from_peer = Flood {
            ns: self.peer.netns.clone(),
            from: self.peer.underlay_ip,
            count: datagrams - unknown,
            seed: 0x9e37_79b9_7f4a_7c15,
            peer: true,
        }
        .start(self.to, deadline, self.frame);
        let from_host = Flood {
            ns: self.underlay_ns.clone(),
            from: self.host_ip,
            count: unknown,
            seed: 0xd1b5_4a32_d192_ed03,
            peer: false,
        }
        .start(self.to, deadline, self.frame);
        let mut sent_by_kind = BTreeMap::new();
        for sender in [from_peer, from_host] {
            let by_kind = sender
                .join()
                .map_err(|_| LabError::Invalid("a soak sender panicked".into()))?
                .map_err(|e| LabError::io("sending from", &netns::named(&self.peer.netns), e))?;
            for (k, n) in by_kind {
                *sent_by_kind.entry(k).or_insert(0) += n;
            }
        }
        Ok(sent_by_kind)
    }
}

/// Felt's drop counters (by reason, since `before`) and the kernel's drops,
/// once every one of `sent` datagrams is accounted for or nothing moved for 5 s.
fn settle(
    drop_points: &DropPoints,
    target_ns: &str,
    before: &(BTreeMap<String, u64>, u64),
    sent: u64,
) -> Result<(BTreeMap<String, u64>, u64), LabError> {
    let mut last = (BTreeMap::new(), 0u64);
    let mut still = Instant::now();
    loop {
        let now = (delta(&felt_drops(target_ns)?, &before.0), drop_points.read()?.saturating_sub(before.1));
        let total = now.0.values().sum::<u64>() + now.1;
        if now != last {
            still = Instant::now();
        }
        last = now;
        if total >= sent || still.elapsed() > Duration::from_secs(5) {
            return Ok(last);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn probe_once(dst: Ipv4Addr) -> bool {
    super::probe::ping(dst, 4, Duration::from_millis(250)).unwrap_or(false)
}
