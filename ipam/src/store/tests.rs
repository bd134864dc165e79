use std::collections::HashSet;
use std::sync::{Arc, Barrier};

use super::*;

use std::net::IpAddr;

fn ip_net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn lease_allocate_is_sticky_and_exclusive() {
    let tmp = tempfile::tempdir().unwrap();
    let leases = LeaseDir::open(tmp.path()).unwrap();
    let n = ip_net("10.244.0.0/16");
    let a = leases.allocate(n, 24, "a", &[]).unwrap();
    let b = leases.allocate(n, 24, "b", &[]).unwrap();
    assert_ne!(a, b);
    assert_eq!(leases.allocate(n, 24, "a", &[]).unwrap(), a, "an owner keeps its lease");
    assert!(matches!(leases.claim(a, "b"), Err(StoreError::Taken { .. })));
    leases.release(a, "b").unwrap();
    assert_eq!(leases.leases().unwrap().len(), 2, "release by a non-owner is a no-op");
    leases.release(a, "a").unwrap();
    assert_eq!(leases.leases().unwrap(), vec![(b, "b".to_owned())]);
}

#[test]
fn lease_allocate_respects_foreign_cidrs() {
    let tmp = tempfile::tempdir().unwrap();
    let leases = LeaseDir::open(tmp.path()).unwrap();
    let got = leases.allocate(ip_net("10.244.0.0/16"), 24, "a", &[ip_net("10.244.0.0/23")]).unwrap();
    assert_eq!(got, ip_net("10.244.2.0/24"));
}

#[test]
fn lease_exhaustion_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let leases = LeaseDir::open(tmp.path()).unwrap();
    let n = ip_net("10.0.0.0/23");
    leases.allocate(n, 24, "a", &[]).unwrap();
    leases.allocate(n, 24, "b", &[]).unwrap();
    assert!(matches!(leases.allocate(n, 24, "c", &[]), Err(StoreError::Exhausted { .. })));
}

#[test]
fn concurrent_allocators_never_share_a_subnet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let n = 32;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (dir, barrier) = (dir.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Each thread opens its own handle, as separate agents would.
                let leases = LeaseDir::open(dir).unwrap();
                barrier.wait();
                leases.allocate(ip_net("10.244.0.0/16"), 24, &format!("node-{i}"), &[]).unwrap()
            })
        })
        .collect();
    let got: Vec<IpNet> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let unique: HashSet<_> = got.iter().collect();
    assert_eq!(unique.len(), n, "{got:?}");
    let on_disk = LeaseDir::open(&dir).unwrap().leases().unwrap();
    assert_eq!(on_disk.len(), n);
}

#[test]
fn ipv6_leases_live_beside_ipv4_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let leases = LeaseDir::open(tmp.path()).unwrap();
    let v4 = leases.allocate(ip_net("10.244.0.0/16"), 24, "a", &[]).unwrap();
    let v6 = leases.allocate(ip_net("fd00:10:244::/56"), 64, "a", &[]).unwrap();
    assert_eq!(v6, ip_net("fd00:10:244::/64"));
    assert_eq!(leases.allocate(ip_net("fd00:10:244::/56"), 64, "a", &[]).unwrap(), v6, "sticky per family");
    assert_eq!(
        leases.allocate(ip_net("fd00:10:244::/56"), 64, "b", &[]).unwrap(),
        ip_net("fd00:10:244:1::/64")
    );
    let mut all = leases.leases().unwrap();
    all.sort();
    assert_eq!(all.len(), 3);
    assert!(all.contains(&(v4, "a".to_owned())) && all.contains(&(v6, "a".to_owned())));
    assert!(tmp.path().join("fd00:10:244::-64").exists(), "one file per lease, named by the subnet");
}

#[test]
fn pod_addresses_skip_gateway_and_are_idempotent() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PodAddressStore::open(tmp.path()).unwrap();
    let subnet = ip_net("10.244.3.0/24");
    let gw: IpAddr = "10.244.3.1".parse().unwrap();
    let a = store.allocate(subnet, gw, "c1", "eth0").unwrap();
    assert_eq!(a, "10.244.3.2".parse::<IpAddr>().unwrap());
    assert_eq!(store.allocate(subnet, gw, "c1", "eth0").unwrap(), a, "ADD twice gives the same address");
    let b = store.allocate(subnet, gw, "c2", "eth0").unwrap();
    assert_ne!(a, b);
    assert_eq!(store.release("c1", "eth0").unwrap(), vec![a]);
    assert!(store.release("c1", "eth0").unwrap().is_empty(), "DEL twice is fine");
    assert_eq!(store.allocate(subnet, gw, "c3", "eth0").unwrap(), a, "freed addresses are reused");
}

#[test]
fn a_dual_stack_pod_holds_one_address_per_family() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PodAddressStore::open(tmp.path()).unwrap();
    let (v4, v6) = (ip_net("10.244.3.0/24"), ip_net("fd00:f31:244:3::/64"));
    let (gw4, gw6): (IpAddr, IpAddr) = ("10.244.3.1".parse().unwrap(), "fd00:f31:244:3::1".parse().unwrap());
    let a4 = store.allocate(v4, gw4, "c1", "eth0").unwrap();
    let a6 = store.allocate(v6, gw6, "c1", "eth0").unwrap();
    assert_eq!(a6, "fd00:f31:244:3::2".parse::<IpAddr>().unwrap(), "neither :: (the VTEP) nor the gateway");
    assert_eq!(store.allocate(v6, gw6, "c1", "eth0").unwrap(), a6, "ADD twice gives the same address");
    assert_eq!(store.allocate(v4, gw4, "c1", "eth0").unwrap(), a4);
    assert_eq!(store.find("c1", "eth0").unwrap(), vec![a4, a6]);
    assert_eq!(
        store.allocate(v6, gw6, "c2", "eth0").unwrap(),
        "fd00:f31:244:3::3".parse::<IpAddr>().unwrap()
    );
    let mut freed = store.release("c1", "eth0").unwrap();
    freed.sort();
    assert_eq!(freed, vec![a4, a6], "DEL frees both");
    assert!(store.find("c1", "eth0").unwrap().is_empty());
}

#[test]
fn pod_addresses_exhaust() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PodAddressStore::open(tmp.path()).unwrap();
    let subnet = ip_net("10.0.0.0/30");
    let gw: IpAddr = "10.0.0.1".parse().unwrap();
    store.allocate(subnet, gw, "c1", "eth0").unwrap();
    assert!(matches!(store.allocate(subnet, gw, "c2", "eth0"), Err(StoreError::Exhausted { .. })));
}

#[test]
fn pod_addresses_list_holders_and_sweep_dead_writers() {
    let tmp = tempfile::tempdir().unwrap();
    let store = PodAddressStore::open(tmp.path()).unwrap();
    let subnet = ip_net("10.244.3.0/24");
    let gw: IpAddr = "10.244.3.1".parse().unwrap();
    let a = store.allocate(subnet, gw, "c1", "eth0").unwrap();
    let b = store.allocate(subnet, gw, "c2", "net1").unwrap();
    let mut got = store.entries().unwrap();
    got.sort_by_key(|e| e.ip);
    assert_eq!(
        got,
        vec![
            PodAddress { ip: a, container_id: "c1".into(), ifname: "eth0".into() },
            PodAddress { ip: b, container_id: "c2".into(), ifname: "net1".into() },
        ]
    );
    // What a writer killed between write and link leaves: one dead, one alive.
    std::fs::write(tmp.path().join(".tmp-4000000-0"), "c9\neth0\n").unwrap();
    std::fs::write(tmp.path().join(".tmp-77-3"), "c8\neth0\n").unwrap();
    assert_eq!(store.sweep_temporaries(|pid| pid == 77).unwrap(), 1);
    assert!(!tmp.path().join(".tmp-4000000-0").exists());
    assert!(tmp.path().join(".tmp-77-3").exists());
    assert_eq!(store.entries().unwrap().len(), 2, "temporaries are never entries");
}
