//! The userspace engine's core, without I/O: encap and decap of one
//! 1400-byte packet per iteration (`cargo bench -p felt-overlay`).
//! Criterion's throughput line reads as packets per second.

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use felt_overlay::Peer;
use felt_overlay::userspace::{Decap, Encap, Engine, EngineConfig};

fn peer(i: u8) -> Peer {
    Peer {
        name: format!("n{i}"),
        pod_cidr: Some(format!("10.244.{i}.0/24").parse().expect("cidr")),
        pod_cidr6: None,
        vtep_mac: felt_proto::MacAddr::derive(format!("n{i}").as_bytes()),
        underlay_ip: Ipv4Addr::new(198, 18, 7, 10 + i).into(),
    }
}

fn packet(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 6, 0, 0];
    p[2..4].copy_from_slice(&1400u16.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.resize(1400, 0xab);
    p
}

fn bench(c: &mut Criterion) {
    // 100 peers, as a mid-size cluster.
    let peers: Vec<Peer> = (1..=100).map(peer).collect();
    let me = peer(0);
    let mut a = Engine::new(EngineConfig { vni: 1, mac: me.vtep_mac, port: 8472 });
    a.set_peers(&peers);
    let ip = packet(Ipv4Addr::new(10, 244, 0, 2), Ipv4Addr::new(10, 244, 57, 2));
    let mut out = vec![0u8; 2048];
    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encap_1400B", |b| {
        b.iter(|| match a.encap(black_box(&ip), &mut out) {
            Encap::Send { len, .. } => black_box(len),
            Encap::Drop(_) => unreachable!(),
        })
    });
    let Encap::Send { len, .. } = a.encap(&ip, &mut out) else { unreachable!() };
    let frame = out[..len].to_vec();
    let mut b57 = Engine::new(EngineConfig { vni: 1, mac: peer(57).vtep_mac, port: 8472 });
    let mut with_me = peers.clone();
    with_me.push(me.clone());
    b57.set_peers(&with_me);
    g.bench_function("decap_1400B", |b| {
        b.iter(|| match b57.decap(black_box(me.underlay_ip), black_box(&frame)) {
            Decap::Deliver(p) => black_box(p.len()),
            Decap::Drop(_) => unreachable!(),
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
