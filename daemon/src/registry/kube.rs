//! The Kubernetes registry: Nodes are the registry.
//!
//! - **lease**: this node's `spec.podCIDRs` (or `spec.podCIDR`), set by the
//!   controller-manager; until then the agent waits and says so.
//! - **publish**: a JSON merge patch of this node's `felt.network/`
//!   annotations (`backend-type`, `backend-data`, `public-ip`), sent only
//!   when they differ, honouring an operator's `public-ip-overwrite`; then
//!   `NetworkUnavailable=False` (reason `FeltIsUp`) on `nodes/status`.
//! - **watch**: one kube-runtime reflector on all Nodes. Every event is
//!   reduced to what felt uses (pod CIDRs and felt's annotations): only a
//!   change there — or the end of a relist, which is a full resync — wakes
//!   the agent, so status heartbeats cause no work at all.
//! - **outage**: the watcher backs off and relists; the store keeps the last
//!   state meanwhile, and [`KubeRegistry::synced`] is false until a relist
//!   completes. A server that goes silent (frozen, its etcd stopped) is found
//!   by a bounded GET of this node every 10 s; a list that never completes
//!   starts the watcher over after 20 s.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use felt_proto::{BackendData, BackendType, NodeRecord};
use futures::StreamExt;
use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Snapshot;

/// The annotation prefix felt owns.
pub const PREFIX: &str = "felt.network/";
/// `felt.network/backend-type`.
pub const BACKEND_TYPE: &str = "felt.network/backend-type";
/// `felt.network/backend-data`: `{"vni":1,"vtepMAC":"…"}`.
pub const BACKEND_DATA: &str = "felt.network/backend-data";
/// `felt.network/public-ip`.
pub const PUBLIC_IP: &str = "felt.network/public-ip";
/// `felt.network/public-ip-overwrite`, set by an operator.
pub const PUBLIC_IP_OVERWRITE: &str = "felt.network/public-ip-overwrite";

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

/// How long a list may take before the watcher is started over: a list
/// whose answer never comes (a lost response, a server that accepted the
/// request and hung) would otherwise keep the agent "not listed" forever.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

type NodeEvents = futures::stream::BoxStream<'static, Result<watcher::Event<Node>, watcher::Error>>;

/// The Node watcher, started over when a list has not finished within
/// [`LIST_TIMEOUT`]. A list is due when the watcher starts and after each
/// error (it may relist, or resume silently); events end the wait.
fn restarting_watcher(
    api: Api<Node>,
) -> impl futures::Stream<Item = Result<watcher::Event<Node>, watcher::Error>> {
    let make =
        move || -> NodeEvents { watcher(api.clone(), watcher::Config::default().any_semantic()).boxed() };
    let due = || Some(tokio::time::Instant::now() + LIST_TIMEOUT);
    futures::stream::unfold((make(), due(), make), move |(mut inner, mut deadline, make)| async move {
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, inner.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        warn!(after = ?LIST_TIMEOUT, "the node list did not complete in time; starting the watch over");
                        inner = make();
                        deadline = due();
                        continue;
                    }
                },
                None => inner.next().await,
            };
            let event = next?;
            deadline = match &event {
                Ok(watcher::Event::Init) | Err(_) => due(),
                Ok(watcher::Event::InitApply(_)) => deadline,
                Ok(_) => None,
            };
            return Some((event, (inner, deadline, make)));
        }
    })
}

/// Why a Node does not make a record.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A pod CIDR that does not parse.
    #[error("spec.podCIDRs: `{0}` is not a CIDR")]
    PodCidr(String),
    /// A backend felt does not speak.
    #[error("{BACKEND_TYPE}: unknown backend `{0}`")]
    Backend(String),
    /// Backend data that does not parse.
    #[error("{BACKEND_DATA}: `{value}` is not backend data")]
    BackendData {
        /// The annotation's value.
        value: String,
        /// The parser's complaint.
        source: serde_json::Error,
    },
    /// An address annotation that is not an IPv4 address.
    #[error("{key}: `{value}` is not an IPv4 address")]
    Address {
        /// The annotation.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// The record the Node makes is invalid.
    #[error(transparent)]
    Record(#[from] felt_proto::node::RecordError),
}

/// Reduces a Node to the record felt uses, or says why it cannot. An
/// operator's `public-ip-overwrite` takes the place of `public-ip`.
pub fn record_from_node(node: &Node) -> Result<NodeRecord, NodeError> {
    record_from_node_with(node, true)
}

fn record_from_node_with(node: &Node, honour_overwrite: bool) -> Result<NodeRecord, NodeError> {
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut record = NodeRecord::new(&name);
    let spec = node.spec.as_ref();
    let cidrs: Vec<String> = match spec.and_then(|s| s.pod_cidrs.clone()).filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    };
    for c in cidrs {
        record.pod_cidrs.push(c.parse::<IpNet>().map_err(|_| NodeError::PodCidr(c.clone()))?);
    }
    let empty = BTreeMap::new();
    let ann = node.metadata.annotations.as_ref().unwrap_or(&empty);
    if let Some(t) = ann.get(BACKEND_TYPE) {
        record.backend_type = Some(match t.as_str() {
            "vxlan" => BackendType::Vxlan,
            other => return Err(NodeError::Backend(other.to_owned())),
        });
    }
    if let Some(d) = ann.get(BACKEND_DATA) {
        record.backend_data = Some(
            serde_json::from_str::<BackendData>(d)
                .map_err(|source| NodeError::BackendData { value: d.clone(), source })?,
        );
    }
    let ip = |key: &'static str| -> Result<Option<Ipv4Addr>, NodeError> {
        ann.get(key)
            .map(|v| v.parse::<Ipv4Addr>().map_err(|_| NodeError::Address { key, value: v.clone() }))
            .transpose()
    };
    let overwrite = if honour_overwrite { ip(PUBLIC_IP_OVERWRITE)? } else { None };
    record.public_ip = overwrite.or(ip(PUBLIC_IP)?);
    record.validate()?;
    Ok(record)
}

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

/// The Kubernetes registry.
#[derive(Clone)]
pub struct KubeRegistry {
    api: Api<Node>,
    node: String,
    store: Store<Node>,
    writer: Arc<Mutex<Option<reflector::store::Writer<Node>>>>,
    synced: Arc<AtomicBool>,
    listed: Arc<AtomicBool>,
    /// Requests the API server forbade, by "verb resource", until one succeeds.
    denied: Denials,
}

/// What RBAC refused this agent, each said once.
#[derive(Debug, Clone, Default)]
struct Denials(Arc<Mutex<BTreeMap<String, String>>>);

impl Denials {
    /// Records the outcome of `verb` on `resource`: a 403 is kept (and
    /// logged the first time), a success clears it.
    fn note<T>(&self, verb: &str, resource: &str, r: &Result<T, kube::Error>) {
        match r {
            Ok(_) => self.allowed(verb, resource),
            Err(kube::Error::Api(s)) => self.answered(verb, resource, s),
            Err(_) => {}
        }
    }

    /// The server answered `verb` on `resource` with error status `s`: kept if a 403.
    fn answered(&self, verb: &str, resource: &str, s: &kube::core::Status) {
        if s.code != hyper::StatusCode::FORBIDDEN.as_u16() {
            return;
        }
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.insert(format!("{verb} {resource}"), s.message.clone()).is_none() {
            tracing::error!(
                verb, resource, server = %s.message,
                "the API server forbids `{verb}` on `{resource}` to this agent: grant it in felt's ClusterRole (deploy/felt.yaml)"
            );
        }
    }

    /// `verb` on `resource` succeeded: no longer forbidden.
    fn allowed(&self, verb: &str, resource: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.remove(&format!("{verb} {resource}")).is_some() {
            info!(verb, resource, "the API server allows `{verb}` on `{resource}` again");
        }
    }

    fn reasons(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.keys()
            .map(|k| {
                let (verb, resource) = k.split_once(' ').unwrap_or((k, ""));
                format!("RBAC forbids `{verb}` on `{resource}` (grant it in felt's ClusterRole)")
            })
            .collect()
    }
}

impl std::fmt::Debug for KubeRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeRegistry").field("node", &self.node).finish_non_exhaustive()
    }
}

/// What the reflector's events mean to the agent: a wake-up when a record
/// felt uses changed, or at the end of a relist; readiness and RBAC notes
/// on the way.
struct Tracker {
    /// Each Node's record (or why it is not one) as last seen.
    seen: BTreeMap<String, Result<NodeRecord, String>>,
    /// A relist in progress.
    relist: Option<BTreeMap<String, Result<NodeRecord, String>>>,
    synced: Arc<AtomicBool>,
    listed: Arc<AtomicBool>,
    denied: Denials,
}

impl Tracker {
    /// Whether `event` should wake the agent.
    fn on(&mut self, event: Result<watcher::Event<Node>, watcher::Error>) -> bool {
        match event {
            Ok(watcher::Event::Init) => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(n)) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(
                        n.metadata.name.clone().unwrap_or_default(),
                        record_from_node(&n).map_err(|e| crate::util::error_chain(&e)),
                    );
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                self.denied.allowed("list", "nodes");
                self.seen = self.relist.take().unwrap_or_default();
                self.listed.store(true, Ordering::Relaxed);
                if !self.synced.swap(true, Ordering::Relaxed) {
                    info!(nodes = self.seen.len(), "node list synced");
                }
                true
            }
            Ok(watcher::Event::Apply(n)) => {
                self.denied.allowed("watch", "nodes");
                let name = n.metadata.name.clone().unwrap_or_default();
                let rec = record_from_node(&n).map_err(|e| crate::util::error_chain(&e));
                self.seen.insert(name, rec.clone()).as_ref() != Some(&rec)
            }
            Ok(watcher::Event::Delete(n)) => {
                self.seen.remove(&n.metadata.name.clone().unwrap_or_default()).is_some()
            }
            // 410 Gone: history moved on; the watcher lists again. Routine, and the store stays whole.
            Err(watcher::Error::WatchError(status)) if status.code == hyper::StatusCode::GONE.as_u16() => {
                info!(reason = %status.message, "node watch expired; listing again");
                false
            }
            Err(e) => {
                match &e {
                    watcher::Error::InitialListFailed(kube::Error::Api(s)) => {
                        self.denied.answered("list", "nodes", s)
                    }
                    watcher::Error::WatchFailed(kube::Error::Api(s)) | watcher::Error::WatchError(s) => {
                        self.denied.answered("watch", "nodes", s)
                    }
                    _ => {}
                }
                if self.synced.swap(false, Ordering::Relaxed) {
                    warn!(error = %crate::util::error_chain(&e), "lost the node watch; keeping the last known nodes and retrying");
                }
                true
            }
        }
    }
}

impl KubeRegistry {
    /// Connects with `kubeconfig`, or in-cluster / `KUBECONFIG` when `None`.
    pub async fn connect(kubeconfig: Option<&Path>, node: &str) -> Result<Self, KubeError> {
        let client = client(kubeconfig).await?;
        let (store, writer) = reflector::store();
        Ok(KubeRegistry {
            api: Api::all(client),
            node: node.to_owned(),
            store,
            writer: Arc::new(Mutex::new(Some(writer))),
            synced: Arc::new(AtomicBool::new(false)),
            listed: Arc::new(AtomicBool::new(false)),
            denied: Denials::default(),
        })
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

    /// Starts the reflector; signals (coalesced) when something felt uses
    /// changed, and at the end of every relist. Call once.
    pub fn watch(&self) -> mpsc::Receiver<()> {
        let (tx, rx) = mpsc::channel(1);
        let writer =
            self.writer.lock().unwrap_or_else(|p| p.into_inner()).take().expect("watch is called once");
        let stream = reflector::reflector(writer, restarting_watcher(self.api.clone())).default_backoff();
        let (synced, listed, denied) = (self.synced.clone(), self.listed.clone(), self.denied.clone());
        tokio::spawn(self.clone().health(tx.clone()));
        let mut tracker = Tracker { seen: BTreeMap::new(), relist: None, synced, listed, denied };
        tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                if tracker.on(event) && tx.try_send(()).is_err() && tx.is_closed() {
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
            let answer = tokio::time::timeout(HEALTH_TIMEOUT, self.api.get(&self.node)).await;
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
        for n in self.store.state() {
            let name = n.metadata.name.clone().unwrap_or_default();
            match record_from_node(&n) {
                Ok(r) => snap.records.push(r),
                Err(why) => snap.malformed.push((format!("node/{name}"), crate::util::error_chain(&why))),
            }
        }
        snap.records.sort_by(|a, b| a.name.cmp(&b.name));
        Some(snap)
    }

    async fn own(&self) -> Result<Node, KubeError> {
        self.call("get", "nodes", || format!("reading node `{}`", self.node), self.api.get(&self.node)).await
    }

    /// This node's pod CIDR, checked against the cluster network.
    pub async fn lease(&self, network: Ipv4Net) -> Result<Ipv4Net, KubeError> {
        let node = self.own().await?;
        let record = record_from_node(&node)
            .map_err(|source| KubeError::BadNode { node: self.node.clone(), source })?;
        let cidr = record.pod_cidr_v4().ok_or_else(|| KubeError::NoPodCidr(self.node.clone()))?;
        felt_ipam::subnets::validate_pod_cidr(cidr, network)
            .map_err(|source| KubeError::BadPodCidr { node: self.node.clone(), source })?;
        Ok(cidr)
    }

    /// This node's record exactly as published (its own `public-ip`, not an
    /// overwrite), from the store.
    pub fn published(&self) -> Option<NodeRecord> {
        let node = self.store.get(&reflector::ObjectRef::new(&self.node))?;
        record_from_node_with(&node, false).ok()
    }

    /// The operator's `public-ip-overwrite` on this node, if valid.
    pub fn public_ip_overwrite(&self) -> Option<Ipv4Addr> {
        let key = reflector::ObjectRef::new(&self.node);
        let node = self.store.get(&key)?;
        node.metadata.annotations.as_ref()?.get(PUBLIC_IP_OVERWRITE)?.parse().ok()
    }

    /// Patches this node's annotations to `record`'s, and sets
    /// `NetworkUnavailable=False`; each only when it differs. Returns whether it wrote.
    pub async fn publish(&self, record: &NodeRecord) -> Result<bool, KubeError> {
        let node = self.own().await?;
        let empty = BTreeMap::new();
        let have = node.metadata.annotations.as_ref().unwrap_or(&empty);
        let mut want = BTreeMap::new();
        if let Some(t) = record.backend_type {
            want.insert(BACKEND_TYPE, t.to_string());
        }
        if let Some(d) = record.backend_data {
            want.insert(BACKEND_DATA, serde_json::to_string(&d).expect("backend data serialises"));
        }
        if let Some(ip) = record.public_ip {
            want.insert(PUBLIC_IP, ip.to_string());
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

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn node(ann: &[(&str, &str)], cidrs: Option<Vec<&str>>, cidr: Option<&str>) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some("n2".into()),
                annotations: Some(ann.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..Default::default()
            },
            spec: Some(NodeSpec {
                pod_cidrs: cidrs.map(|c| c.into_iter().map(str::to_owned).collect()),
                pod_cidr: cidr.map(str::to_owned),
                ..Default::default()
            }),
            status: None,
        }
    }

    const DATA: &str = r#"{"vni":1,"vtepMAC":"02:00:00:00:00:02"}"#;

    #[test]
    fn full_node_becomes_a_record() {
        let n = node(
            &[(BACKEND_TYPE, "vxlan"), (BACKEND_DATA, DATA), (PUBLIC_IP, "198.18.7.12")],
            Some(vec!["10.244.2.0/24"]),
            None,
        );
        let r = record_from_node(&n).unwrap();
        assert_eq!(r.pod_cidr_v4(), Some("10.244.2.0/24".parse().unwrap()));
        assert_eq!(r.public_ip, Some("198.18.7.12".parse().unwrap()));
        assert_eq!(r.backend_data.unwrap().vni, 1);
    }

    #[test]
    fn pod_cidr_falls_back_and_overwrite_wins() {
        let n = node(
            &[(PUBLIC_IP, "198.18.7.12"), (PUBLIC_IP_OVERWRITE, "198.18.9.9")],
            None,
            Some("10.244.3.0/24"),
        );
        let r = record_from_node(&n).unwrap();
        assert_eq!(r.pod_cidr_v4(), Some("10.244.3.0/24".parse().unwrap()));
        assert_eq!(r.public_ip, Some("198.18.9.9".parse().unwrap()));
    }

    #[test]
    fn malformed_annotations_say_what_is_wrong() {
        for (ann, want) in [
            ((BACKEND_DATA, "{not json"), BACKEND_DATA),
            ((BACKEND_TYPE, "udp"), "unknown backend"),
            ((PUBLIC_IP, "300.1.1.1"), "not an IPv4"),
            ((BACKEND_DATA, r#"{"vni":1,"vtepMAC":"01:00:5e:00:00:01"}"#), "unicast"),
        ] {
            let err = record_from_node(&node(&[ann], Some(vec!["10.244.2.0/24"]), None)).unwrap_err();
            let err = crate::util::error_chain(&err);
            assert!(err.contains(want), "{ann:?}: {err}");
        }
        let err = record_from_node(&node(&[], Some(vec!["banana"]), None)).unwrap_err();
        assert!(matches!(&err, NodeError::PodCidr(c) if c == "banana"), "{err}");
        let err = record_from_node(&node(&[(BACKEND_DATA, "{not json")], Some(vec!["10.244.2.0/24"]), None));
        let chain = crate::util::error_chain(&err.unwrap_err());
        assert!(
            chain.contains("is not backend data: key must be a string"),
            "the parser's cause follows: {chain}"
        );
    }
}
