//! `felt lab bench --control-plane --registry kube`: the same benchmark
//! through a real Kubernetes API server, and what it costs the server.
//!
//! Inside the bench namespace: etcd and kube-apiserver (the lab's
//! [`control`](super::super::control) plane, on the node's underlay
//! address), N + 1 Node objects shaped like a kubelet's (labels,
//! annotations, capacity, conditions, addresses, node info and 40 images:
//! about 10 KB of JSON each), the synthetic peers' felt annotations on them.
//! The agent runs with the `felt` ServiceAccount's token, as in a cluster.
//!
//! Two clients of the API server are measured, each through a counting TCP
//! proxy on loopback (the bytes the server sends it, TLS included): the
//! agent, and a Flannel-style watch of whole Nodes (list, then watch, as
//! flanneld's informer does), the reference. While every Node's status is
//! updated once per `status_seconds`, as a kubelet reports, both counts
//! are taken, and the agent's netlink writes and reconcile passes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::runtime::watcher;
use serde::Serialize;
use serde_json::{Value, json};

use super::super::{LabError, control, interrupt};
use crate::netns;
use crate::registry::kube::{PeerSource, feltnode_object, feltnode_resource};

/// Requests in flight at once when creating or deleting many Nodes.
const CONCURRENCY: usize = 16;

/// What the API server sent while every Node's status was updated.
#[derive(Debug, Clone, Serialize)]
pub struct ApiTraffic {
    /// Where the agent read its peers from (`feltnodes` or `nodes`).
    pub peer_source: String,
    /// Status updates made (one per Node).
    pub status_updates: u32,
    /// Over how long, seconds.
    pub seconds: f64,
    /// Bytes the server sent the agent, per minute.
    pub agent_bytes_per_minute: f64,
    /// Bytes it sent a Flannel-style watch of whole Nodes, per minute.
    pub full_watch_bytes_per_minute: f64,
    /// How many times fewer the agent received.
    pub ratio: f64,
    /// The agent's netlink writes meanwhile.
    pub netlink_writes: f64,
    /// Its reconcile passes meanwhile.
    pub passes: f64,
    /// Where the bytes go: one peer's Node after the updates, as JSON:
    /// whole, its metadata alone, and the `managedFields` inside that.
    pub node_bytes: usize,
    /// …its metadata (what a metadata watch sends per update).
    pub metadata_bytes: usize,
    /// …of which `metadata.managedFields`.
    pub managed_fields_bytes: usize,
}

/// The control plane, the counting proxies, the reference watch and a
/// client for the bench's own writes; everything stops on drop (the
/// processes with the namespace).
pub(super) struct Side {
    rt: tokio::runtime::Runtime,
    api: Api<Node>,
    /// The agent's `--peer-source`.
    pub(super) peers: PeerSource,
    /// The agent's kubeconfig, through its counting proxy.
    pub(super) agent_kubeconfig: PathBuf,
    agent_bytes: Arc<AtomicU64>,
    full_bytes: Arc<AtomicU64>,
    full_synced: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for Side {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Side {
    /// Starts the control plane in namespace `ns` on `host`, files in `dir`.
    pub(super) fn start(
        dir: &Path,
        ns: &str,
        host: Ipv4Addr,
        bins: &control::Binaries,
        peers: PeerSource,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Side, LabError> {
        let started = control::start(dir, ns, host, bins, progress)?;
        let path = netns::named(ns);
        let rt = netns::run_in(&path, || {
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
        })
        .and_then(|r| r)
        .map_err(|e| LabError::io("starting a runtime in", &path, e))?;
        // Every socket must be opened inside the namespace: by the runtime's
        // workers, which were started from a thread inside it.
        let want = ns_inode(&path)?;
        let got = rt
            .block_on(rt.spawn(async { ns_inode(Path::new("/proc/thread-self/ns/net")) }))
            .map_err(|e| LabError::Invalid(e.to_string()))??;
        if got != want {
            return Err(LabError::Invalid("the bench's runtime is not inside its namespace".into()));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let to = SocketAddr::from((host, control::API_PORT));
        let (agent_bytes, full_bytes) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let agent_port = counting_proxy(&path, to, agent_bytes.clone(), stop.clone())?;
        let full_port = counting_proxy(&path, to, full_bytes.clone(), stop.clone())?;
        let text = std::fs::read_to_string(&started.agent_kubeconfig)
            .map_err(|e| LabError::io("reading", &started.agent_kubeconfig, e))?;
        let server = format!("https://{to}");
        let agent_kubeconfig = dir.join("agent-counted.kubeconfig");
        let counted = |port: u16| text.replace(&server, &format!("https://127.0.0.1:{port}"));
        std::fs::write(&agent_kubeconfig, counted(agent_port))
            .map_err(|e| LabError::io("writing", &agent_kubeconfig, e))?;
        let full_kubeconfig = dir.join("full-watch.kubeconfig");
        std::fs::write(&full_kubeconfig, counted(full_port))
            .map_err(|e| LabError::io("writing", &full_kubeconfig, e))?;
        let admin = started.admin_kubeconfig.clone();
        let api = rt
            .block_on(rt.spawn(async move { crate::registry::kube::client(Some(&admin)).await }))
            .map_err(|e| LabError::Invalid(e.to_string()))?
            .map_err(|e| LabError::Invalid(crate::util::error_chain(&e)))?;
        let full_synced = Arc::new(AtomicBool::new(false));
        let side = Side {
            api: Api::all(api),
            peers,
            rt,
            agent_kubeconfig,
            agent_bytes,
            full_bytes,
            full_synced: full_synced.clone(),
            stop: stop.clone(),
        };
        // The reference: every whole Node, listed and watched, as flanneld does.
        side.rt.spawn(async move {
            let Ok(client) = crate::registry::kube::client(Some(&full_kubeconfig)).await else { return };
            let stream = watcher(Api::<Node>::all(client), watcher::Config::default());
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                if let Ok(watcher::Event::InitDone) = event {
                    full_synced.store(true, Ordering::Relaxed);
                }
            }
        });
        Ok(side)
    }

    /// Runs `job` with the admin's Node API on the bench's runtime.
    fn call<T, F, Fut>(&self, job: F) -> Result<T, LabError>
    where
        T: Send + 'static,
        F: FnOnce(Api<Node>) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>> + Send + 'static,
    {
        let fut = job(self.api.clone());
        self.rt
            .block_on(self.rt.spawn(fut))
            .map_err(|e| LabError::Invalid(e.to_string()))?
            .map_err(LabError::Invalid)
    }

    /// Creates the agent's Node `node` (pod CIDR `own`) and one per peer,
    /// kubelet-shaped, and each peer's FeltNode as its agent would.
    pub(super) fn create(
        &self,
        node: &str,
        own: &str,
        peers: &[felt_proto::NodeRecord],
    ) -> Result<(), LabError> {
        let mut nodes = vec![(kubelet_node(node, own, None), None)];
        nodes.extend(peers.iter().map(|p| {
            let cidr = p.pod_cidr_v4().map(|c| c.to_string()).unwrap_or_default();
            (kubelet_node(&p.name, &cidr, Some(p)), Some(p.clone()))
        }));
        self.call(move |api| async move {
            let feltnodes = Api::<DynamicObject>::all_with(api.clone().into_client(), &feltnode_resource());
            futures::stream::iter(nodes)
                .map(|((node, status), record)| {
                    let (api, feltnodes) = (api.clone(), feltnodes.clone());
                    async move {
                        let name = node.metadata.name.clone().unwrap_or_default();
                        let pp = PostParams { field_manager: Some("kubelet".into()), ..Default::default() };
                        let made =
                            api.create(&pp, &node).await.map_err(|e| format!("creating node {name}: {e}"))?;
                        let params =
                            PatchParams { field_manager: Some("kubelet".into()), ..Default::default() };
                        api.patch_status(&name, &params, &Patch::Merge(&status))
                            .await
                            .map_err(|e| format!("setting node {name}'s status: {e}"))?;
                        if let Some(record) = record {
                            let uid = made.metadata.uid.unwrap_or_default();
                            let object = Patch::Apply(feltnode_object(&record, &uid));
                            feltnodes
                                .patch(&name, &PatchParams::apply("felt").force(), &object)
                                .await
                                .map_err(|e| format!("applying FeltNode {name}: {e}"))?;
                        }
                        Ok::<_, String>(())
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| ())
        })
    }

    /// Sets peer `name`'s public IP in its annotations and its FeltNode, as
    /// its agent would; returns when the request the agent reads left (the
    /// other one is made first).
    pub(super) fn change(&self, name: &str, to: IpAddr) -> Result<Instant, LabError> {
        let name = name.to_owned();
        let feltnodes_read = self.peers != PeerSource::Nodes;
        self.call(move |api| async move {
            let feltnodes = Api::<DynamicObject>::all_with(api.clone().into_client(), &feltnode_resource());
            let annotate = || async {
                let patch =
                    json!({"metadata": {"annotations": {felt_proto::annotations::PUBLIC_IP: to.to_string()}}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("annotating {name}: {e}"))
            };
            let publish = || async {
                let patch = json!({"spec": {"publicIP": to.to_string()}});
                feltnodes
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("changing FeltNode {name}: {e}"))
            };
            if feltnodes_read {
                annotate().await?;
                let at = Instant::now();
                publish().await.map(|()| at)
            } else {
                publish().await?;
                let at = Instant::now();
                annotate().await.map(|()| at)
            }
        })
    }

    /// Deletes the Nodes `names`, many at once; returns when the first request left.
    pub(super) fn remove(&self, names: Vec<String>) -> Result<Instant, LabError> {
        self.call(move |api| async move {
            let at = Instant::now();
            futures::stream::iter(names)
                .map(|name| {
                    let api = api.clone();
                    async move {
                        api.delete(&name, &DeleteParams::default())
                            .await
                            .map(|_| ())
                            .map_err(|e| format!("deleting node {name}: {e}"))
                    }
                })
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await
                .map(|_| at)
        })
    }

    /// The sizes of `name`'s Node as JSON: whole, metadata, managedFields.
    pub(super) fn sizes(&self, name: &str) -> Result<(usize, usize, usize), LabError> {
        let name = name.to_owned();
        self.call(move |api| async move {
            let node = api.get(&name).await.map_err(|e| format!("reading node {name}: {e}"))?;
            let meta = api.get_metadata(&name).await.map_err(|e| format!("reading node {name}: {e}"))?;
            let managed = meta.metadata.managed_fields.as_ref().map_or(0, json_len);
            Ok((json_len(&node), json_len(&meta), managed))
        })
    }

    /// Waits until the reference watch has listed every Node.
    pub(super) fn wait_full_watch(&self) -> Result<(), LabError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.full_synced.load(Ordering::Relaxed) {
            interrupt::check()?;
            if Instant::now() > deadline {
                return Err(LabError::Timeout("the reference watch of whole Nodes never listed".into()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Updates every one of `names`' status once, evenly over `over`, as
    /// kubelets report (fresh condition heartbeats, an image list that
    /// changed). Returns the bytes the agent and the reference received
    /// meanwhile, and how long it took.
    pub(super) fn status_churn(
        &self,
        names: Vec<String>,
        over: Duration,
    ) -> Result<(u64, u64, Duration), LabError> {
        let (agent0, full0) =
            (self.agent_bytes.load(Ordering::Relaxed), self.full_bytes.load(Ordering::Relaxed));
        let start = Instant::now();
        let n = names.len().max(1) as u32;
        let step = over / n;
        self.call(move |api| async move {
            let mut tick = tokio::time::interval(step.max(Duration::from_micros(100)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let params = PatchParams { field_manager: Some("kubelet".into()), ..Default::default() };
            for (i, name) in names.iter().enumerate() {
                tick.tick().await;
                let patch = status_update(i);
                api.patch_status(name, &params, &Patch::Strategic(&patch))
                    .await
                    .map_err(|e| format!("updating node {name}'s status: {e}"))?;
            }
            Ok(())
        })?;
        // What was sent in the last moment is still on its way.
        std::thread::sleep(Duration::from_millis(500));
        let took = start.elapsed();
        Ok((
            self.agent_bytes.load(Ordering::Relaxed) - agent0,
            self.full_bytes.load(Ordering::Relaxed) - full0,
            took,
        ))
    }
}

/// `v`'s length as compact JSON.
fn json_len<T: Serialize>(v: &T) -> usize {
    serde_json::to_vec(v).map_or(0, |v| v.len())
}

/// The inode of a network namespace file.
fn ns_inode(path: &Path) -> Result<u64, LabError> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path).map_err(|e| LabError::io("reading", path, e))?.ino())
}

/// A TCP proxy on loopback inside namespace `ns` to `to`, counting the
/// bytes `to` sends into `count`; returns its port. Stops accepting when
/// `stop` is set (its connections end with their clients).
fn counting_proxy(
    ns: &Path,
    to: SocketAddr,
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> Result<u16, LabError> {
    let listener = netns::run_in(ns, || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .and_then(|r| r)
        .map_err(|e| LabError::io("listening in", ns, e))?;
    let port = listener.local_addr().map_err(|e| LabError::io("listening in", ns, e))?.port();
    listener.set_nonblocking(true).map_err(|e| LabError::io("listening in", ns, e))?;
    let ns = ns.to_owned();
    std::thread::Builder::new()
        .name("cp-proxy".into())
        .spawn(move || {
            // Threads started from inside the namespace stay inside it.
            let _ = netns::run_in(&ns.clone(), move || {
                while !stop.load(Ordering::Relaxed) {
                    let client = match listener.accept() {
                        Ok((c, _)) => c,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                        Err(_) => continue,
                    };
                    let count = count.clone();
                    std::thread::spawn(move || pipe(client, to, &count));
                }
            });
        })
        .map_err(|e| LabError::io("spawning", Path::new("the bench's proxy"), e))?;
    Ok(port)
}

/// Bytes both ways between `client` and a new connection to `to`, those from `to` counted.
fn pipe(client: TcpStream, to: SocketAddr, count: &AtomicU64) {
    use std::io::{Read, Write};
    let _ = client.set_nonblocking(false);
    let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(5)) else { return };
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else { return };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut s2);
        let _ = s2.shutdown(std::net::Shutdown::Write);
    });
    let (mut client, mut server) = (client, server);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match server.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                count.fetch_add(n as u64, Ordering::Relaxed);
                if client.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

const CONDITIONS: [(&str, &str, &str); 5] = [
    ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
    ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
    ("PIDPressure", "False", "KubeletHasSufficientPID"),
    ("Ready", "True", "KubeletReady"),
    ("NetworkUnavailable", "False", "FeltIsUp"),
];

fn conditions(now: &str) -> Vec<Value> {
    CONDITIONS
        .iter()
        .map(|(t, s, reason)| {
            json!({"type": t, "status": s, "reason": reason, "lastHeartbeatTime": now,
                   "lastTransitionTime": "2026-01-01T00:00:00Z",
                   "message": format!("kubelet reports {t} {s}")})
        })
        .collect()
}

/// A kubelet's image list: `count` images, each by tag and by digest.
fn images(count: usize, salt: usize) -> Vec<Value> {
    (0..count)
        .map(|i| {
            let repo = format!("registry.example.internal/team-{}/service-{i:02}", i % 7);
            let digest: String = (0..64).map(|d| char::from(b"0123456789abcdef"[(i * 31 + d * 7 + salt) % 16])).collect();
            json!({"names": [format!("{repo}@sha256:{digest}"), format!("{repo}:v1.{}.{}", i % 13, salt % 100)],
                   "sizeBytes": 20_000_000 + i * 1_234_567})
        })
        .collect()
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// A Node as a kubelet registers it (`record`'s felt annotations on a peer)
/// and the status it reports.
fn kubelet_node(name: &str, pod_cidr: &str, record: Option<&felt_proto::NodeRecord>) -> (Node, Value) {
    let mut annotations = serde_json::Map::new();
    for (k, v) in [
        ("kubeadm.alpha.kubernetes.io/cri-socket", "unix:///run/containerd/containerd.sock"),
        ("node.alpha.kubernetes.io/ttl", "0"),
        ("volumes.kubernetes.io/controller-managed-attach-detach", "true"),
    ] {
        annotations.insert(k.into(), v.into());
    }
    if let Some(r) = record {
        for (k, v) in felt_proto::annotations::Dialect::Felt.annotations(r) {
            annotations.insert(k.into(), v.into());
        }
    }
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux", "kubernetes.io/hostname": name,
                "node.kubernetes.io/instance-type": "m6i.2xlarge",
                "topology.kubernetes.io/region": "region-1", "topology.kubernetes.io/zone": "region-1a",
                "felt.network/bench": "true",
            },
            "annotations": annotations,
        },
        "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr], "providerID": format!("lab:///{name}")},
    }))
    .expect("a Node");
    let ip = record.and_then(|r| r.public_ip).unwrap_or(Ipv4Addr::new(198, 19, 0, 1).into());
    let resources = json!({"cpu": "8", "ephemeral-storage": "101430960Ki", "hugepages-1Gi": "0",
                           "hugepages-2Mi": "0", "memory": "32475260Ki", "pods": "110"});
    let status = json!({"status": {
        "capacity": resources, "allocatable": resources,
        "conditions": conditions(&now()),
        "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {"machineID": format!("{:032x}", name.len() * 7919), "systemUUID": "ec2b-lab",
            "bootID": "5b0f6a8e-1c1d-4a44-9a55-000000000000", "kernelVersion": "6.12.0-lab",
            "osImage": "Debian GNU/Linux 13 (trixie)", "containerRuntimeVersion": "containerd://2.1.4",
            "kubeletVersion": "v1.34.4", "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64"},
        "images": images(40, 0),
    }});
    (node, status)
}

/// What a kubelet's status report changes: every condition's heartbeat,
/// and (one report in four) the image list.
fn status_update(i: usize) -> Value {
    let mut status = json!({"conditions": conditions(&now())});
    if i % 4 == 0 {
        status["images"] = json!(images(40, i));
    }
    json!({"status": status})
}
