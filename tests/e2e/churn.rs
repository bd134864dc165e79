//! Churn against a model: a proptest state machine applies random node
//! adds, updates (new underlay IP, new VTEP MAC, new pod CIDR) and deletes
//! to a lab node's file registry, in bursts whose writes are interleaved
//! across nodes, and after each quiet period compares what the kernel
//! holds (routes, permanent neighbours, FDB entries; the userspace
//! engine's peer table) with the model: nothing missing, nothing leaked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use felt_proto::{BackendData, BackendType, MacAddr, NodeRecord};
use proptest::prelude::*;
use proptest::sample::select;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

use crate::harness::{TestLab, require_root, run};

/// Node names the events draw from (at most this many peers at once).
const NAMES: u8 = 24;
/// Pod CIDR slots: `10.244.<slot>.0/24` (slot 0 is the lab node's).
const CIDRS: std::ops::RangeInclusive<u8> = 1..=60;
/// Underlay addresses: `198.19.7.<slot>`, inside the lab's benchmark range;
/// nothing is sent to them but the agent's probes, which stay in the lab.
const IPS: std::ops::RangeInclusive<u8> = 1..=60;
/// VTEP MACs: `02:00:5e:00:00:<slot>`.
const MACS: std::ops::RangeInclusive<u8> = 1..=60;
/// Transitions a run applies, settles included (about one in twelve), so
/// that well over 1,000 are node events.
const TRANSITIONS: usize = 1250;

/// One peer as the model holds it: its slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slots {
    cidr: u8,
    ip: u8,
    mac: u8,
}

impl Slots {
    fn cidr(self) -> String {
        format!("10.244.{}.0/24", self.cidr)
    }
    fn vtep(self) -> String {
        format!("10.244.{}.0", self.cidr)
    }
    fn ip(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 7, self.ip)
    }
    fn mac(self) -> MacAddr {
        format!("02:00:5e:00:00:{:02x}", self.mac).parse().unwrap()
    }
}

/// The model: the peers the registry holds.
#[derive(Debug, Clone, Default)]
pub struct Model {
    peers: BTreeMap<String, Slots>,
}

impl Model {
    fn free(&self, all: std::ops::RangeInclusive<u8>, used: impl Fn(&Slots) -> u8) -> Vec<u8> {
        let taken: BTreeSet<u8> = self.peers.values().map(used).collect();
        all.filter(|s| !taken.contains(s)).collect()
    }
}

/// A registry event, or a quiet period that ends a burst.
#[derive(Debug, Clone)]
pub enum Event {
    Add(String, Slots),
    NewIp(String, u8),
    NewMac(String, u8),
    NewCidr(String, u8),
    Delete(String),
    Settle,
}

pub struct Reference;

impl ReferenceStateMachine for Reference {
    type State = Model;
    type Transition = Event;

    fn init_state() -> BoxedStrategy<Model> {
        Just(Model::default()).boxed()
    }

    fn transitions(m: &Model) -> BoxedStrategy<Event> {
        let names: Vec<String> = (0..NAMES).map(|i| format!("churn-{i:02}")).collect();
        let absent: Vec<String> = names.iter().filter(|n| !m.peers.contains_key(*n)).cloned().collect();
        let present: Vec<String> = m.peers.keys().cloned().collect();
        let (cidrs, ips, macs) = (m.free(CIDRS, |s| s.cidr), m.free(IPS, |s| s.ip), m.free(MACS, |s| s.mac));
        let mut options: Vec<(u32, BoxedStrategy<Event>)> = vec![(1, Just(Event::Settle).boxed())];
        if !absent.is_empty() {
            let slots = (select(cidrs.clone()), select(ips.clone()), select(macs.clone()))
                .prop_map(|(cidr, ip, mac)| Slots { cidr, ip, mac });
            options.push((3, (select(absent), slots).prop_map(|(n, s)| Event::Add(n, s)).boxed()));
        }
        if !present.is_empty() {
            let p = || select(present.clone());
            options.push((2, (p(), select(ips)).prop_map(|(n, ip)| Event::NewIp(n, ip)).boxed()));
            options.push((2, (p(), select(macs)).prop_map(|(n, mac)| Event::NewMac(n, mac)).boxed()));
            options.push((2, (p(), select(cidrs)).prop_map(|(n, c)| Event::NewCidr(n, c)).boxed()));
            options.push((2, p().prop_map(Event::Delete).boxed()));
        }
        prop::strategy::Union::new_weighted(options).boxed()
    }

    /// What a shrunk sequence must still respect: names present or absent,
    /// slots unused.
    fn preconditions(m: &Model, e: &Event) -> bool {
        let unused = |f: &dyn Fn(&Slots) -> bool| !m.peers.values().any(f);
        match e {
            Event::Add(n, s) => {
                !m.peers.contains_key(n) && unused(&|o| o.cidr == s.cidr || o.ip == s.ip || o.mac == s.mac)
            }
            Event::NewIp(n, ip) => m.peers.contains_key(n) && unused(&|o| o.ip == *ip),
            Event::NewMac(n, mac) => m.peers.contains_key(n) && unused(&|o| o.mac == *mac),
            Event::NewCidr(n, c) => m.peers.contains_key(n) && unused(&|o| o.cidr == *c),
            Event::Delete(n) => m.peers.contains_key(n),
            Event::Settle => true,
        }
    }

    fn apply(mut m: Model, e: &Event) -> Model {
        fn slots<'a>(m: &'a mut Model, n: &String) -> &'a mut Slots {
            m.peers.get_mut(n).expect("preconditions")
        }
        match e {
            Event::Add(n, s) => {
                m.peers.insert(n.clone(), *s);
            }
            Event::NewIp(n, ip) => slots(&mut m, n).ip = *ip,
            Event::NewMac(n, mac) => slots(&mut m, n).mac = *mac,
            Event::NewCidr(n, c) => slots(&mut m, n).cidr = *c,
            Event::Delete(n) => {
                m.peers.remove(n);
            }
            Event::Settle => {}
        }
        m
    }
}

/// Which data plane the lab node runs.
pub trait Mode {
    const ARGS: &'static [&'static str];
    const USERSPACE: bool;
}
pub struct Kernel;
impl Mode for Kernel {
    const ARGS: &'static [&'static str] = &["--mode", "kernel"];
    const USERSPACE: bool = false;
}
pub struct Userspace;
impl Mode for Userspace {
    const ARGS: &'static [&'static str] = &["--mode", "userspace"];
    const USERSPACE: bool = true;
}

/// The lab node under churn, the writes of the burst in progress, and
/// what the run measured.
pub struct Node {
    lab: TestLab,
    userspace: bool,
    /// Per node, its record after each event of this burst (`None`: deleted).
    burst: BTreeMap<String, Vec<Option<NodeRecord>>>,
    events: usize,
    settles: Vec<Duration>,
    /// Draws the interleaving of each burst's writes.
    random: crate::harness::Random,
}

/// The kernel's entries (and the engine's peers), in the model's terms.
#[derive(Debug, Default, PartialEq, Eq)]
struct Observed {
    /// (destination, gateway) of the routes on felt.1.
    routes: BTreeSet<(String, String)>,
    /// (address, MAC) of the permanent neighbours on felt.1 (kernel mode).
    neighbours: BTreeSet<(String, String)>,
    /// (MAC, underlay address) of the FDB entries on felt.1 (kernel mode).
    fdb: BTreeSet<(String, String)>,
    /// (pod CIDR, underlay address, MAC) of the engine's peers (userspace mode).
    engine: BTreeSet<(String, String, String)>,
}

impl Node {
    fn up(args: &[&str], userspace: bool) -> Node {
        require_root();
        let lab = TestLab::up_named(&TestLab::unique_name(), 1, 0, args);
        let random = crate::harness::Random::from_clock();
        Node { lab, userspace, burst: BTreeMap::new(), events: 0, settles: Vec::new(), random }
    }

    fn record(name: &str, s: Slots) -> NodeRecord {
        let mut r = NodeRecord::new(name);
        r.pod_cidrs = vec![s.cidr().parse().unwrap()];
        r.public_ip = Some(s.ip().into());
        r.backend_type = Some(BackendType::Vxlan);
        r.backend_data = Some(BackendData { vni: 1, vtep_mac: s.mac() });
        r
    }

    /// Writes the burst, interleaving nodes at random (each node's own
    /// writes in order, so its last one stands, as in the model).
    fn flush(&mut self) {
        let dir = self.lab.registry_nodes();
        let mut queues: Vec<(String, std::collections::VecDeque<Option<NodeRecord>>)> =
            std::mem::take(&mut self.burst).into_iter().map(|(n, q)| (n, q.into())).collect();
        while !queues.is_empty() {
            let i = (self.random.next_u64() % queues.len() as u64) as usize;
            let (name, queue) = &mut queues[i];
            let path = dir.join(format!("{name}.json"));
            match queue.pop_front() {
                Some(Some(r)) => felt::util::write_atomic(&path, &r.to_json()).expect("writing a record"),
                Some(None) => match std::fs::remove_file(&path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("removing {name}: {e}"),
                    _ => {}
                },
                None => {
                    queues.swap_remove(i);
                }
            }
        }
    }

    fn observed(&self) -> Observed {
        let ns = self.lab.node_ns("n1");
        let json = |cmd: &str, args: &[&str]| -> Vec<serde_json::Value> {
            let out = run(std::process::Command::new(cmd).args(["-n", &ns, "-j"]).args(args));
            serde_json::from_slice(&out.stdout).unwrap_or_default()
        };
        let s = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let mut o = Observed {
            routes: json("ip", &["route", "show", "dev", "felt.1"])
                .iter()
                .map(|r| (s(r, "dst"), s(r, "gateway")))
                .collect(),
            ..Observed::default()
        };
        if self.userspace {
            let engine = self.lab.debug_state("n1").engine.expect("a userspace node reports its engine");
            o.engine = engine
                .peers
                .iter()
                .map(|p| (p.pod_cidr.unwrap().to_string(), p.underlay_ip.to_string(), p.vtep_mac.to_string()))
                .collect();
        } else {
            o.neighbours = json("ip", &["neigh", "show", "dev", "felt.1", "nud", "permanent"])
                .iter()
                .map(|n| (s(n, "dst"), s(n, "lladdr")))
                .collect();
            o.fdb = json("bridge", &["fdb", "show", "dev", "felt.1"])
                .iter()
                .filter(|f| f.get("dst").is_some())
                .map(|f| (s(f, "mac"), s(f, "dst")))
                .collect();
        }
        o
    }

    fn expected(&self, m: &Model) -> Observed {
        let peers = m.peers.values();
        let mut o =
            Observed { routes: peers.clone().map(|p| (p.cidr(), p.vtep())).collect(), ..Observed::default() };
        if self.userspace {
            o.engine = peers.map(|p| (p.cidr(), p.ip().to_string(), p.mac().to_string())).collect();
        } else {
            o.neighbours = peers.clone().map(|p| (p.vtep(), p.mac().to_string())).collect();
            o.fdb = peers.map(|p| (p.mac().to_string(), p.ip().to_string())).collect();
        }
        o
    }

    /// Ends the burst and waits (up to 10 s) until what is held is the model.
    fn settle(&mut self, m: &Model) {
        self.flush();
        let (want, started) = (self.expected(m), Instant::now());
        loop {
            let got = self.observed();
            if got == want {
                self.settles.push(started.elapsed());
                return;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let show = |o: &Observed| format!("{o:#?}");
                panic!(
                    "after {} events, not as the model within 10 s\nwant: {}\ngot: {}\nagent log:\n{}",
                    self.events,
                    show(&want),
                    show(&got),
                    self.lab.log("n1")
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }
}

/// The state machine test, on a kernel or a userspace node.
pub struct Churn<M>(std::marker::PhantomData<M>);

impl<M: Mode> StateMachineTest for Churn<M> {
    type SystemUnderTest = Node;
    type Reference = Reference;

    fn init_test(_: &Model) -> Node {
        Node::up(M::ARGS, M::USERSPACE)
    }

    fn apply(mut node: Node, m: &Model, e: Event) -> Node {
        let record = |n: &String| m.peers.get(n).map(|s| Node::record(n, *s));
        match &e {
            Event::Settle => node.settle(m),
            Event::Add(n, _)
            | Event::NewIp(n, _)
            | Event::NewMac(n, _)
            | Event::NewCidr(n, _)
            | Event::Delete(n) => {
                node.burst.entry(n.clone()).or_default().push(record(n));
                node.events += 1;
            }
        }
        node
    }

    fn teardown(mut node: Node, m: Model) {
        node.settle(&m);
        assert!(node.events >= 1000, "only {} node events were generated", node.events);
        let mut t = node.settles.clone();
        t.sort();
        eprintln!(
            "churn ({}): {} events in {} bursts; every quiet period matched the model; settle p50 {:?}, max {:?}; {} peers at the end",
            if node.userspace { "userspace" } else { "kernel" },
            node.events,
            t.len(),
            t[t.len() / 2],
            t[t.len() - 1],
            m.peers.len()
        );
        node.lab.finish();
    }
}

prop_state_machine! {
    #![proptest_config(ProptestConfig {
        cases: 1,
        // Each case is a lab and a thousand events: report the sequence
        // that failed, do not replay shrinking candidates for hours.
        max_shrink_iters: 0,
        failure_persistence: None,
        .. ProptestConfig::default()
    })]

    #[test]
    #[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
    fn churn_against_a_model_kernel(sequential TRANSITIONS..=TRANSITIONS => Churn<Kernel>);

    #[test]
    #[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
    fn churn_against_a_model_userspace(sequential TRANSITIONS..=TRANSITIONS => Churn<Userspace>);
}
