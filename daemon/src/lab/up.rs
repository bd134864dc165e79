//! `felt lab up`: namespaces, agents and pods, then wait for the fabric.

use std::path::Path;
use std::time::{Duration, Instant};

use felt_overlay::DataplaneKind;
use felt_proto::annotations::Dialect;

use crate::compat::Compat;
use ipnet::Ipv4Net;

use super::state::{
    IpFamily, LabRegistry, LabState, Mode, NodeAgent, NodeState, PodState, UnderlayFamily, UpOptions,
};
use super::teardown::TeardownOnError;
use super::{Lab, LabError, control, interrupt, kube, topo};
use crate::netns;
use crate::util::write_atomic;

impl Lab {
    /// Builds the lab and returns once every node has programmed every peer.
    pub fn up(&self, opts: &UpOptions, progress: &mut dyn FnMut(&str)) -> Result<LabState, LabError> {
        if self.load()?.is_some() || !topo::namespaces_with_prefix(&self.name)?.is_empty() {
            return Err(LabError::Invalid(format!(
                "lab `{}` already exists; remove it first with `felt lab down --name {}`",
                self.name, self.name
            )));
        }
        if opts.nodes == 0 || opts.nodes > 200 || opts.pods_per_node > 50 {
            return Err(LabError::Invalid("want 1..=200 nodes and 0..=50 pods per node".into()));
        }
        check_flannel(opts)?;
        let started = Instant::now();
        let mut guard = TeardownOnError { lab: self, armed: true };
        std::fs::create_dir_all(&self.dir).map_err(|e| LabError::io("creating", &self.dir, e))?;
        let net = opts.ip_family.net();
        let net_json = match opts.dialect() {
            Dialect::Felt => serde_json::to_vec_pretty(&net).expect("net config serialises"),
            // kube-flannel.yml's net-conf.json, which flanneld and felt in
            // --compat flannel both read.
            Dialect::Flannel => serde_json::to_vec_pretty(&serde_json::json!({
                "Network": net.network.map(|n| n.to_string()),
                "Backend": {"Type": "vxlan"},
            }))
            .expect("net config serialises"),
        };
        write_atomic(&self.net_conf_path(), &net_json)
            .map_err(|e| LabError::io("writing", &self.net_conf_path(), e))?;
        let underlay = topo::underlay_subnet(&self.name);
        let ipv6 = super::state::nodes_have_ipv6(opts.ip_family, opts.underlay_family);
        topo::make_underlay(&self.underlay_ns(), topo::host_ip(underlay), underlay.prefix_len(), ipv6)?;
        let registry = self.registry_for(opts, underlay, progress)?;
        let mut state = LabState {
            name: self.name.clone(),
            underlay,
            mode: opts.mode,
            registry,
            pods_per_node: opts.pods_per_node,
            ip_family: opts.ip_family,
            underlay_family: opts.underlay_family,
            cni_delegate: opts.cni_delegate.clone(),
            flannel: opts.flannel.clone(),
            nodes: Vec::new(),
            pods: Vec::new(),
        };
        self.save(&state)?;
        let mut built = Vec::new();
        for i in 1..=opts.nodes {
            interrupt::check()?;
            let agent = if i <= opts.flannel_nodes { NodeAgent::Flannel } else { NodeAgent::Felt };
            built.push(self.make_node(&state, i, agent)?);
        }
        self.pin_underlay(&state, &built)?;
        for mut node in built {
            interrupt::check()?;
            node.pid = self.start_agent(&state, &node, opts.nodes as usize)?;
            let what = match node.agent {
                NodeAgent::Felt | NodeAgent::FeltOwn => "agent",
                NodeAgent::Flannel => "flanneld",
            };
            progress(&format!("node {} ({}) {what} pid {}", node.name, node.underlay_ip, node.pid));
            state.nodes.push(node);
            self.save(&state)?;
        }
        self.wait_leases(&state, Duration::from_secs(30))?;
        for node in state.nodes.clone() {
            for j in 1..=opts.pods_per_node {
                interrupt::check()?;
                let pod = self.add_pod(&state, &node, j)?;
                let ips = pod.ip.map(|ip| ip.to_string()).into_iter().chain(pod.ip6.map(|ip| ip.to_string()));
                progress(&format!(
                    "pod {} on {} at {}",
                    pod.name,
                    pod.node,
                    ips.collect::<Vec<_>>().join(", ")
                ));
                state.pods.push(pod);
                self.save(&state)?;
            }
        }
        self.wait_programmed(&state, Duration::from_secs(60))?;
        progress(&format!("fabric programmed on {} nodes in {:.1?}", state.nodes.len(), started.elapsed()));
        guard.armed = false;
        Ok(state)
    }

    /// Where the agents register: the file registry, the lab's own control
    /// plane (started here), or a given API server (waited for).
    fn registry_for(
        &self,
        opts: &UpOptions,
        underlay: Ipv4Net,
        progress: &mut dyn FnMut(&str),
    ) -> Result<LabRegistry, LabError> {
        Ok(match (&opts.control_plane, &opts.registry) {
            (Some(bins), _) => {
                progress("starting the lab's control plane (etcd, kube-apiserver)");
                let cp = control::start(
                    &self.dir.join("control-plane"),
                    &self.underlay_ns(),
                    topo::host_ip(underlay),
                    bins,
                    progress,
                )?;
                let state_root = self.dir.parent().unwrap_or(Path::new("/"));
                let cp_dir = self.dir.join("control-plane");
                let (proxy, local) = control::start_proxy(
                    &self.felt,
                    &self.name,
                    state_root,
                    &cp_dir,
                    topo::host_ip(underlay),
                )?;
                progress(&format!(
                    "control plane up in {:.1?}; from this host: kubectl --kubeconfig {} (loopback proxy, pid {proxy})",
                    cp.took,
                    local.display()
                ));
                LabRegistry::Kube {
                    kubeconfig: cp.admin_kubeconfig,
                    agent_kubeconfig: Some(cp.agent_kubeconfig),
                    dialect: opts.dialect(),
                    peer_source: opts.peer_source,
                }
            }
            (None, LabRegistry::File) => LabRegistry::File,
            (None, LabRegistry::Kube { kubeconfig, agent_kubeconfig, .. }) => {
                let kubeconfig = kube::absolute(kubeconfig)?;
                progress(&format!(
                    "waiting for the API server of {} (it listens inside namespace {})",
                    kubeconfig.display(),
                    self.underlay_ns()
                ));
                kube::wait_api(&netns::named(&self.underlay_ns()), &kubeconfig, Duration::from_secs(60))?;
                LabRegistry::Kube {
                    kubeconfig,
                    agent_kubeconfig: agent_kubeconfig.clone(),
                    dialect: opts.dialect(),
                    peer_source: opts.peer_source,
                }
            }
        })
    }

    /// Node `index`: its namespace wired to the underlay, its directory and,
    /// on Kubernetes, its Node object. Its agent is not started (`pid` 0).
    pub(super) fn make_node(
        &self,
        state: &LabState,
        index: u32,
        agent: NodeAgent,
    ) -> Result<NodeState, LabError> {
        let name = format!("n{index}");
        let netns = format!("{}-{name}", self.name);
        let underlay_ip = topo::node_ip(state.underlay, index);
        let node = NodeState { name, netns, index, underlay_ip, pid: 0, agent };
        let backend = state.backend_of(&node);
        // Only a kernel VXLAN node that sends to userspace nodes: see make_node.
        let sum_on_send = state.mode == Mode::Mixed && backend == DataplaneKind::Kernel;
        topo::make_node(
            &self.underlay_ns(),
            &node.netns,
            underlay_ip,
            state.underlay.prefix_len(),
            sum_on_send,
            state.nodes_have_ipv6(),
        )?;
        let dir = self.node_dir(&node.name);
        std::fs::create_dir_all(&dir).map_err(|e| LabError::io("creating", &dir, e))?;
        if let LabRegistry::Kube { kubeconfig, .. } = &state.registry {
            // The controller-manager's job: one /24 per node, by index.
            let cidr = Ipv4Net::new(std::net::Ipv4Addr::new(10, 244, (index - 1) as u8, 0), 24)
                .map_err(|e| LabError::Invalid(e.to_string()))?;
            let mut cidrs: Vec<ipnet::IpNet> =
                state.ip_family.has_ipv4().then_some(cidr.into()).into_iter().collect();
            if state.ip_family.has_ipv6() {
                let network = state.net().ipv6_network.expect("a lab with IPv6 has an IPv6 network");
                let cidr6 = network.subnets(64).ok().and_then(|mut s| s.nth((index - 1) as usize));
                cidrs.extend(cidr6.map(ipnet::IpNet::V6));
            }
            kube::create_node(&netns::named(&self.underlay_ns()), kubeconfig, &node.name, &cidrs)?;
        }
        Ok(node)
    }

    /// Pins the underlay's addresses as permanent neighbours (see
    /// [`topo::pin_neighbours`]): in each of `new`, every other node's and
    /// the lab host's; in each node of `state`, and in the underlay
    /// namespace, those of `new`.
    pub(super) fn pin_underlay(&self, state: &LabState, new: &[NodeState]) -> Result<(), LabError> {
        let host = topo::host_ip(state.underlay);
        let ipv6 = state.nodes_have_ipv6();
        let all: Vec<_> = state.nodes.iter().chain(new).map(|n| n.underlay_ip).collect();
        let added: Vec<_> = new.iter().map(|n| n.underlay_ip).collect();
        for n in new {
            let mut others: Vec<_> = all.iter().copied().filter(|ip| *ip != n.underlay_ip).collect();
            others.push(host);
            topo::pin_neighbours(&n.netns, "eth0", &others, ipv6)?;
        }
        for n in &state.nodes {
            topo::pin_neighbours(&n.netns, "eth0", &added, ipv6)?;
        }
        topo::pin_neighbours(&self.underlay_ns(), "br0", &added, ipv6)
    }

    /// The CNI network name of Flannel node `node`'s pods; host-local keeps
    /// their leases in [`HOST_LOCAL_DIR`]`/<it>`.
    pub(super) fn flannel_network(&self, node: &str) -> String {
        format!("felt-lab-{}-{node}", self.name)
    }

    /// Starts node `node`'s agent, felt or flanneld, in a lab of `nodes`; returns its pid.
    pub(super) fn start_agent(
        &self,
        state: &LabState,
        node: &NodeState,
        nodes: usize,
    ) -> Result<u32, LabError> {
        match (node.agent, &state.flannel) {
            (NodeAgent::Felt | NodeAgent::FeltOwn, _) => self.spawn_agent(state, node, probe_interval(nodes)),
            (NodeAgent::Flannel, Some(bins)) => {
                self.spawn_flanneld(&state.registry, bins, &node.name, &node.netns)
            }
            (NodeAgent::Flannel, None) => {
                Err(LabError::Invalid(format!("{} runs Flannel, but the lab has no flanneld", node.name)))
            }
        }
    }

    /// flanneld as kube-flannel.yml runs it (vxlan, the Kubernetes subnet
    /// manager, `--ip-masq`), with the lab's kubeconfig and files.
    fn spawn_flanneld(
        &self,
        registry: &LabRegistry,
        bins: &Path,
        node: &str,
        netns: &str,
    ) -> Result<u32, LabError> {
        let LabRegistry::Kube { kubeconfig, agent_kubeconfig, .. } = registry else {
            return Err(LabError::Invalid("flanneld needs the Kubernetes registry".into()));
        };
        let dir = self.node_dir(node);
        let args: Vec<String> = vec![
            "--kube-subnet-mgr".into(),
            format!("--kubeconfig-file={}", agent_kubeconfig.as_ref().unwrap_or(kubeconfig).display()),
            "--iface=eth0".into(),
            "--ip-masq".into(),
            format!("--net-config-path={}", self.net_conf_path().display()),
            format!("--subnet-file={}", dir.join("subnet.env").display()),
        ];
        topo::spawn_program_in(
            netns,
            &bins.join("flanneld"),
            &args,
            &[("NODE_NAME", node)],
            &self.log_path(node),
        )
    }

    /// Starts felt on `node` of `state`, probing its peers every `probe_interval`.
    pub(super) fn spawn_agent(
        &self,
        state: &LabState,
        node: &NodeState,
        probe_interval: Duration,
    ) -> Result<u32, LabError> {
        let (registry, compat, backend) =
            (&state.registry, node.agent.compat(state.dialect()), state.backend_of(node));
        let (underlay, netns, node) = (state.underlay_of(node), node.netns.as_str(), node.name.as_str());
        let dir = self.node_dir(node);
        let mut args: Vec<String> = vec!["daemon".into(), "--node-name".into(), node.into()];
        match registry {
            LabRegistry::File => args.extend([
                "--registry".into(),
                "file".into(),
                "--registry-dir".into(),
                self.registry_dir().display().to_string(),
            ]),
            LabRegistry::Kube { kubeconfig, agent_kubeconfig, peer_source, .. } => args.extend([
                "--registry".into(),
                "kube".into(),
                "--peer-source".into(),
                peer_source.name().into(),
                "--compat".into(),
                compat.name().into(),
                "--kubeconfig".into(),
                agent_kubeconfig.as_ref().unwrap_or(kubeconfig).display().to_string(),
                // Marks the process as this lab's, for `down` (see topo::agent_alive).
                "--registry-dir".into(),
                self.registry_dir().display().to_string(),
            ]),
        }
        // An IPv6 underlay is chosen by its address; eth0's first is IPv4.
        args.extend(match underlay {
            std::net::IpAddr::V6(ip6) => ["--underlay-ip".into(), ip6.to_string()],
            std::net::IpAddr::V4(_) => ["--underlay-iface".into(), "eth0".into()],
        });
        args.extend([
            "--backend".into(),
            backend.name().into(),
            "--subnet-file".into(),
            dir.join("subnet.env").display().to_string(),
            "--resync-period".into(),
            "5s".into(),
            "--probe-interval".into(),
            format!("{}ms", probe_interval.as_millis()),
        ]);
        // A Flannel lab's net-conf.json is in Flannel's shape; felt in its own
        // conventions reads felt's, whose defaults are the lab's network.
        if compat == Compat::Flannel || registry.dialect() == Dialect::Felt {
            args.extend(["--net-conf".into(), self.net_conf_path().display().to_string()]);
        }
        topo::spawn_in(netns, &self.felt, &args, &self.log_path(node))
    }

    /// Attaches pod `j` of `node`: through `felt cni` (in delegate mode with
    /// the lab's `cni_delegate` plugins when it has them), or on a Flannel
    /// node through Flannel's CNI plugin, which delegates to `bridge` and
    /// `host-local` (from `cni_delegate`, else Debian's /usr/lib/cni).
    pub(super) fn add_pod(&self, state: &LabState, node: &NodeState, j: u32) -> Result<PodState, LabError> {
        let name = format!("{}-p{j}", node.name);
        let netns = format!("{}-{name}", self.name);
        topo::ip(&["netns", "add", &netns])?;
        let dir = self.node_dir(&node.name);
        let delegate = state.cni_delegate.as_deref();
        let reply = match (node.agent, &state.flannel) {
            (NodeAgent::Flannel, Some(bins)) => {
                // kube-flannel.yml's conflist entry, with the lab's paths and
                // a network name of its own: host-local keeps its leases in
                // /var/lib/cni/networks/<name>, which the plugin does not let
                // a conflist move (`down` removes it).
                let conf = serde_json::json!({
                    "cniVersion": "0.3.1",
                    "name": self.flannel_network(&node.name),
                    "type": "flannel",
                    "subnetFile": dir.join("subnet.env"),
                    "dataDir": dir.join("flannel-cni"),
                    "delegate": {"hairpinMode": true, "isDefaultGateway": true},
                });
                let plugins = delegate.unwrap_or(Path::new(DEBIAN_CNI_PATH));
                topo::cni(&node.netns, &bins.join("flannel"), &[], "ADD", &netns, &conf, plugins)?
            }
            _ => {
                let mut conf = serde_json::json!({
                    "cniVersion": felt_proto::cni::CURRENT_VERSION,
                    "name": "felt",
                    "type": "felt",
                    "subnetFile": dir.join("subnet.env"),
                    "dataDir": dir.join("cni"),
                });
                if delegate.is_some() {
                    conf["delegate"] = serde_json::json!({});
                }
                let cni_path = delegate.unwrap_or_else(|| self.felt.parent().unwrap_or(Path::new("/")));
                topo::cni(&node.netns, &self.felt, &["cni"], "ADD", &netns, &conf, cni_path)?
            }
        };
        let result: felt_proto::cni::CniResult = serde_json::from_value(reply.clone()).map_err(|e| {
            LabError::Invalid(format!("CNI ADD for {name} returned no result ({e}): {reply}"))
        })?;
        let ip = result.ips.iter().find_map(|c| match c.address {
            ipnet::IpNet::V4(a) => Some(a.addr()),
            ipnet::IpNet::V6(_) => None,
        });
        let ip6 = result.ips.iter().find_map(|c| match c.address {
            ipnet::IpNet::V6(a) => Some(a.addr()),
            ipnet::IpNet::V4(_) => None,
        });
        for (family, want, got) in [
            ("IPv4", state.ip_family.has_ipv4(), ip.is_some()),
            ("IPv6", state.ip_family.has_ipv6(), ip6.is_some()),
        ] {
            if want && !got {
                return Err(LabError::Invalid(format!(
                    "CNI ADD for {name} returned no {family} address: {reply}"
                )));
            }
        }
        Ok(PodState { name, netns, node: node.name.clone(), ip, ip6 })
    }
}

/// Where host-local keeps its leases unless its conf says otherwise.
pub const HOST_LOCAL_DIR: &str = "/var/lib/cni/networks";

/// Where Debian's containernetworking-plugins puts `bridge` and `host-local`.
pub const DEBIAN_CNI_PATH: &str = "/usr/lib/cni";

/// Flannel nodes need flanneld, its CNI plugin's delegates, and the
/// Kubernetes registry; felt in `--compat flannel` needs the registry too.
fn check_flannel(opts: &UpOptions) -> Result<(), LabError> {
    let kube = opts.control_plane.is_some() || matches!(opts.registry, LabRegistry::Kube { .. });
    if opts.dialect() == Dialect::Flannel && opts.underlay_family == UnderlayFamily::Ipv6 {
        return Err(LabError::Invalid(
            "an IPv6 underlay runs felt's own conventions: Flannel's vxlan backend carries IPv4 pods over IPv4 \
             only (its IPv6 needs a second device, flannel-v6.1)"
                .into(),
        ));
    }
    if opts.dialect() == Dialect::Flannel && opts.ip_family != IpFamily::Ipv4 {
        return Err(LabError::Invalid(
            "a dual-stack or IPv6-only lab runs felt's own conventions: Flannel's IPv6 needs a second VXLAN \
             device (flannel-v6.1) that felt does not speak"
                .into(),
        ));
    }
    if opts.dialect() == Dialect::Flannel && !kube {
        return Err(LabError::Invalid(
            "Flannel nodes and --compat flannel need --registry kube (Flannel's annotations live on Node objects)"
                .into(),
        ));
    }
    if opts.flannel_nodes > opts.nodes {
        return Err(LabError::Invalid(format!(
            "--flannel-nodes {} is more than --nodes {}",
            opts.flannel_nodes, opts.nodes
        )));
    }
    if opts.flannel_nodes == 0 {
        return Ok(());
    }
    let Some(bins) = &opts.flannel else {
        return Err(LabError::Invalid(
            "--flannel-nodes needs --flannel DIR, holding flanneld and Flannel's CNI plugin `flannel` (bash tests/flannel/build.sh prints one)".into(),
        ));
    };
    for program in ["flanneld", "flannel"] {
        if !bins.join(program).is_file() {
            return Err(LabError::Invalid(format!(
                "--flannel {}: no {program} there (bash tests/flannel/build.sh builds both)",
                bins.display()
            )));
        }
    }
    let plugins = opts.cni_delegate.as_deref().unwrap_or(Path::new(DEBIAN_CNI_PATH));
    for plugin in ["bridge", "host-local"] {
        if !plugins.join(plugin).is_file() {
            return Err(LabError::Invalid(format!(
                "Flannel's CNI plugin delegates to {plugin}, which is not in {} (Debian: apt-get install containernetworking-plugins)",
                plugins.display()
            )));
        }
    }
    Ok(())
}

/// How often a lab agent probes each peer: every second in a lab of up to
/// 20 nodes, then one second more per 20 nodes (10 s at 200), so that all
/// agents together send at most about 20 × N probes a second on a machine
/// every node shares (each probes N − 1 peers).
pub(super) fn probe_interval(nodes: usize) -> Duration {
    Duration::from_secs(nodes.div_ceil(20).max(1) as u64)
}
