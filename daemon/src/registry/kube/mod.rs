//! The Kubernetes registry: Nodes are the registry.
//!
//! - **lease**: this node's `spec.podCIDRs` (or `spec.podCIDR`), set by the
//!   controller-manager; until then the agent waits and says so.
//! - **publish**: a JSON merge patch of this node's `felt.network/`
//!   annotations (`backend-type`, `backend-data`, `public-ip`), sent only
//!   when they differ, honouring an operator's `public-ip-overwrite`; then
//!   `NetworkUnavailable=False` (reason `FeltIsUp`) on `nodes/status`. With
//!   `--compat flannel`, Flannel's annotations instead, read and written
//!   ([`Dialect::Flannel`]), so felt and flanneld nodes see each other. A
//!   node that left compat mode keeps its Flannel annotations up to date
//!   as long as it carries them, and reads a peer with only Flannel's.
//! - **watch**: a watch of every Node's *metadata* (`PartialObjectMetadata`),
//!   so a kubelet's status updates, most of a Node's bytes, never reach the
//!   agent; each Node's `spec.podCIDRs`, set once and then immutable, is read
//!   once per Node object (one paged list at start, a GET per joining Node;
//!   see `watch`). Every event is reduced to what felt uses (pod CIDRs and
//!   felt's annotations) and only that is kept: only a change there — or
//!   the end of a relist, which is a full resync — wakes the agent, so
//!   status heartbeats cause no work at all.
//! - **outage**: the watcher backs off and relists; the store keeps the last
//!   state meanwhile, and [`KubeRegistry::synced`] is false until a relist
//!   completes. A server that goes silent (frozen, its etcd stopped) is found
//!   by a bounded GET of this node's metadata every 10 s; a list that never completes
//!   starts the watcher over after 20 s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use felt_proto::annotations::{self, Dialect};
use felt_proto::{NetConfig, NodeRecord};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Snapshot;

mod node;
mod watch;

use node::record_from_node_with;
pub use node::{NodeError, record_from_node};
use watch::{Denials, Known, PodCidrs, Tracker, restarting_watcher};

pub use felt_proto::annotations::{BACKEND_DATA, BACKEND_TYPE, PREFIX, PUBLIC_IP, PUBLIC_IP_OVERWRITE};

/// What went wrong with the API server.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig could not be read.
    #[error("reading kubeconfig {path}")]
    Kubeconfig {
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No in-cluster config and no KUBECONFIG.
    #[error("finding the API server (in-cluster service account or KUBECONFIG)")]
    Infer(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// An API call failed.
    #[error("{what}")]
    Api {
        /// What was asked.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// An API call did not answer in time.
    #[error("{what}: no answer within {after:?}")]
    Timeout {
        /// What was asked.
        what: String,
        /// How long we waited.
        after: std::time::Duration,
    },
    /// The node has no pod CIDR yet.
    #[error("node `{0}` has no spec.podCIDRs yet; waiting for the controller-manager to assign one")]
    NoPodCidr(String),
    /// The cluster has IPv6 but the node has no IPv6 pod CIDR.
    #[error(
        "node `{0}` has no IPv6 pod CIDR in spec.podCIDRs, and the network config has an ipv6Network; \
         waiting (the controller-manager assigns one per family of its --cluster-cidr: give it an \
         IPv6 CIDR too)"
    )]
    NoPodCidr6(String),
    /// The node's own Node object does not make a record.
    #[error("node `{node}`")]
    BadNode {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: NodeError,
    },
    /// The node's pod CIDR is not usable in the cluster network.
    #[error("node `{node}`'s pod subnet")]
    BadPodCidr {
        /// The node.
        node: String,
        /// Why.
        #[source]
        source: felt_ipam::subnets::CidrError,
    },
}

/// How long one API call (not a watch) may take.
const CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the API server is asked whether it still answers (a GET of
/// this node: N nodes cost the server N/10 requests per second).
const HEALTH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// How long that question may take: a server silent for longer makes the
/// agent not ready, at most `HEALTH_INTERVAL + HEALTH_TIMEOUT` (15 s) after
/// it froze.
const HEALTH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A client from `kubeconfig`, or from the in-cluster service account or
/// `KUBECONFIG` when `None`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                path: path.display().to_string(),
                source: Box::new(e),
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| {
                KubeError::Kubeconfig { path: path.display().to_string(), source: Box::new(e) }
            })?
        }
        None => Config::infer().await.map_err(|e| KubeError::Infer(Box::new(e)))?,
    };
    // The client's own retries would hide an outage from the watcher (and so
    // from readiness); the watcher and the agent back off and retry themselves.
    config.default_retry = false;
    Client::try_from(config).map_err(|source| KubeError::Api { what: "building the client".into(), source })
}

/// Reads every Node's pod CIDRs in one list, saying how it went.
async fn list_pod_cidrs(cidrs: &mut PodCidrs, api: &Api<Node>, denied: &Denials) {
    match cidrs.list(api, denied).await {
        Ok(n) => info!(nodes = n, "read every node's pod CIDRs; watching node metadata from now on"),
        Err(e) => warn!(
            error = %crate::util::error_chain(&e),
            "listing nodes failed; reading each node's pod CIDRs as the watch meets it"
        ),
    }
}

/// The Kubernetes registry.
#[derive(Clone)]
pub struct KubeRegistry {
    api: Api<Node>,
    node: String,
    /// What the watch made of every Node.
    known: Arc<Mutex<Known>>,
    watching: Arc<AtomicBool>,
    synced: Arc<AtomicBool>,
    listed: Arc<AtomicBool>,
    /// Requests the API server forbade, by "verb resource", until one succeeds.
    denied: Denials,
    /// Whose annotations are read and written.
    dialect: Dialect,
}

impl std::fmt::Debug for KubeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRegistry").field("node", &self.node).finish_non_exhaustive()
    }
}

impl KubeRegistry {
    /// Connects with `kubeconfig`, or in-cluster / `KUBECONFIG` when `None`.
    pub async fn connect(kubeconfig: Option<&Path>, node: &str, dialect: Dialect) -> Result<Self, KubeError> {
        let client = client(kubeconfig).await?;
        Ok(KubeRegistry {
            api: Api::all(client),
            node: node.to_owned(),
            known: Arc::default(),
            watching: Arc::default(),
            synced: Arc::new(AtomicBool::new(false)),
            listed: Arc::new(AtomicBool::new(false)),
            denied: Denials::default(),
            dialect,
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when the last relist completed and the watch has not failed since.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// What RBAC forbids this agent now, one reason per verb and resource.
    pub fn forbidden(&self) -> Vec<String> {
        self.denied.reasons()
    }

    /// One API call, bounded by [`CALL_TIMEOUT`], its 403s kept as denials.
    async fn call<T>(
        &self,
        verb: &str,
        resource: &str,
        what: impl FnOnce() -> String,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, KubeError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(r) => {
                self.denied.note(verb, resource, &r);
                r.map_err(|source| KubeError::Api { what: what(), source })
            }
            Err(_) => Err(KubeError::Timeout { what: what(), after: CALL_TIMEOUT }),
        }
    }

    /// Starts the watch; signals (coalesced) when something felt uses
    /// changed, and at the end of every relist. Call once.
    pub fn watch(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(1);
        assert!(!self.watching.swap(true, Ordering::Relaxed), "watch is called once");
        tokio::spawn(self.clone().health(tx.clone()));
        let mut tracker = Tracker {
            known: self.known.clone(),
            node: self.node.clone(),
            relist: None,
            waiting: BTreeMap::new(),
            synced: self.synced.clone(),
            listed: self.listed.clone(),
            denied: self.denied.clone(),
            dialect: self.dialect,
        };
        let (api, denied) = (self.api.clone(), self.denied.clone());
        tokio::spawn(async move {
            let mut cidrs = PodCidrs::default();
            list_pod_cidrs(&mut cidrs, &api, &denied).await;
            let stream = restarting_watcher(api.clone()).default_backoff();
            futures::pin_mut!(stream);
            let mut tick = tokio::time::interval(watch::REREAD_AFTER);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let woke = tokio::select! {
                    event = stream.next() => {
                        let Some(event) = event else { break };
                        // The list at start failed (a server down as the agent
                        // started): try it again before reading Nodes one by one.
                        if let Ok(watcher::Event::Init) = &event
                            && !cidrs.listed
                        {
                            list_pod_cidrs(&mut cidrs, &api, &denied).await;
                        }
                        if let Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) = &event
                            && cidrs.due(&m.metadata)
                        {
                            cidrs.read(&api, &m.metadata, &denied).await;
                        }
                        tracker.on(event, &mut cidrs)
                    }
                    _ = tick.tick(), if !tracker.waiting.is_empty() && tracker.relist.is_none() => {
                        let mut woke = false;
                        for metadata in tracker.due(&cidrs) {
                            cidrs.read(&api, &metadata, &denied).await;
                            woke |= tracker.apply(&metadata, &cidrs);
                        }
                        woke
                    }
                };
                if woke && tx.try_send(()).is_err() && tx.is_closed() {
                    break;
                }
            }
        });
        rx
    }

    /// Every [`HEALTH_INTERVAL`], a GET of this node bounded by
    /// [`HEALTH_TIMEOUT`]: a server that stops answering (frozen, its etcd
    /// gone) leaves a watch silent rather than broken, so without this the
    /// agent would call itself in sync forever. No answer in time: not
    /// synced (readiness false) until one comes. Wakes the agent on each change.
    async fn health(self, tx: mpsc::Sender<()>) {
        let mut tick = tokio::time::interval(HEALTH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if tx.is_closed() {
                return;
            }
            if !self.listed.load(Ordering::Relaxed) {
                continue;
            }
            let answer = tokio::time::timeout(HEALTH_TIMEOUT, self.api.get_metadata(&self.node)).await;
            if let Ok(r) = &answer {
                self.denied.note("get", "nodes", r);
            }
            let changed = match answer {
                Ok(Ok(_)) => {
                    let back = !self.synced.swap(true, Ordering::Relaxed);
                    if back {
                        info!("the API server answers again; node watch resumed");
                    }
                    back
                }
                Ok(Err(e)) => {
                    let lost = self.synced.swap(false, Ordering::Relaxed);
                    if lost {
                        warn!(error = %crate::util::error_chain(&e), node = %self.node, "the API server refused a GET of this node; not ready until it answers");
                    }
                    lost
                }
                Err(_) => {
                    let lost = self.synced.swap(false, Ordering::Relaxed);
                    if lost {
                        warn!(node = %self.node, timeout = ?HEALTH_TIMEOUT, "the API server did not answer a GET of this node in time; not ready until it does");
                    }
                    lost
                }
            };
            if changed {
                let _ = tx.try_send(());
            }
        }
    }

    /// Every node in the store. `None` until the first list completed.
    pub fn snapshot(&self) -> Option<Snapshot> {
        if !self.listed.load(Ordering::Relaxed) {
            return None;
        }
        let mut snap = Snapshot::default();
        // In name order already.
        for (name, seen) in &self.known().seen {
            match seen {
                Ok((r, _)) => snap.records.push(r.clone()),
                Err(why) => snap.malformed.push((format!("node/{name}"), why.clone())),
            }
        }
        Some(snap)
    }

    async fn own(&self) -> Result<Node, KubeError> {
        self.call("get", "nodes", || format!("reading node `{}`", self.node), self.api.get(&self.node)).await
    }

    /// This node's pod CIDRs (`spec.podCIDRs`), checked against the cluster
    /// networks: one per family the network config has.
    pub async fn lease(&self, net: &NetConfig) -> Result<super::Lease, KubeError> {
        let node = self.own().await?;
        let record = record_from_node(&node, self.dialect)
            .map_err(|source| KubeError::BadNode { node: self.node.clone(), source })?;
        let bad = |source| KubeError::BadPodCidr { node: self.node.clone(), source };
        if record.pod_cidrs.is_empty() {
            return Err(KubeError::NoPodCidr(self.node.clone()));
        }
        let pod_cidr = match net.network {
            Some(network) => {
                let cidr = record.pod_cidr_v4().ok_or_else(|| KubeError::NoPodCidr(self.node.clone()))?;
                felt_ipam::subnets::validate_pod_cidr(cidr, network).map_err(bad)?;
                Some(cidr)
            }
            None => None,
        };
        let pod_cidr6 = match net.ipv6_network {
            Some(network) => {
                let cidr = record.pod_cidr_v6().ok_or_else(|| KubeError::NoPodCidr6(self.node.clone()))?;
                felt_ipam::subnets::validate_pod_cidr(cidr, network).map_err(bad)?;
                Some(cidr)
            }
            None => None,
        };
        Ok(super::Lease { pod_cidr, pod_cidr6 })
    }

    /// This node's record exactly as published (its own `public-ip`, not an
    /// overwrite), from the store.
    pub fn published(&self) -> Option<NodeRecord> {
        self.known().own.as_ref()?.0.clone()
    }

    /// This node's record exactly as published, read from the API server.
    pub async fn published_now(&self) -> Option<NodeRecord> {
        record_from_node_with(&self.own().await.ok()?, self.dialect, false).ok()
    }

    /// The operator's `public-ip-overwrite` on this node, if valid.
    pub fn public_ip_overwrite(&self) -> Option<IpAddr> {
        self.known().own.as_ref()?.1.as_ref()?.parse().ok()
    }

    /// Patches this node's annotations to `record`'s, and sets
    /// `NetworkUnavailable=False`; each only when it differs. Returns whether it wrote.
    pub async fn publish(&self, record: &NodeRecord) -> Result<bool, KubeError> {
        let node = self.own().await?;
        let empty = BTreeMap::new();
        let have = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let mut want = self.dialect.annotations(record);
        // A node that left compat mode keeps Flannel's annotations true while
        // it carries them: its peers still on flanneld or in compat mode read those.
        if self.dialect == Dialect::Felt && have.contains_key(annotations::FLANNEL_KUBE_SUBNET_MANAGER) {
            want.extend(Dialect::Flannel.annotations(record));
        }
        let mut wrote = false;
        if want.iter().any(|(k, v)| have.get(*k) != Some(v)) {
            let patch = json!({"metadata": {"annotations": want}});
            self.call(
                "patch",
                "nodes",
                || format!("annotating node `{}`", self.node),
                self.api.patch(&self.node, &PatchParams::default(), &Patch::Merge(&patch)),
            )
            .await?;
            wrote = true;
        }
        let up = node.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "NetworkUnavailable"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("FeltIsUp")
            })
        });
        if !up {
            let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
            let patch = json!({"status": {"conditions": [{
                "type": "NetworkUnavailable", "status": "False", "reason": "FeltIsUp",
                "message": "felt is running on this node", "lastTransitionTime": now, "lastHeartbeatTime": now,
            }]}});
            self.call(
                "patch",
                "nodes/status",
                || format!("setting NetworkUnavailable=False on `{}`", self.node),
                self.api.patch_status(&self.node, &PatchParams::default(), &Patch::Strategic(&patch)),
            )
            .await?;
            wrote = true;
        }
        Ok(wrote)
    }
}
