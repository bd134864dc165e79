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
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube::{Client, Config};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Snapshot;

mod node;
mod records;
mod watch;

use node::record_from_node_with;
pub use node::{NodeError, record_from_node};
use records::{FeltNodeObject, Reading, RecordTracker};
pub use records::{GROUP, PeerSource, object_for as feltnode_object, resource as feltnode_resource};
use watch::{Denials, Events, Known, PodCidrs, Tracker, restarting_watcher};

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

/// The watch of Node metadata, with the pod CIDRs read per Node object.
struct NodeWatch {
    api: Api<Node>,
    denied: Denials,
    cidrs: PodCidrs,
    tracker: Tracker,
    stream: Events<watch::Meta>,
    /// When the Nodes waiting for their pod CIDRs are read again.
    tick: tokio::time::Interval,
}

/// What the node watch has next.
enum NodeStep {
    Event(Box<Result<watcher::Event<watch::Meta>, watcher::Error>>),
    /// Nodes waiting for their pod CIDRs are due a read.
    Reread,
}

impl NodeWatch {
    /// Reads every Node's pod CIDRs, then starts watching metadata.
    async fn start(reg: &KubeRegistry) -> Self {
        let tracker = Tracker {
            known: reg.known.clone(),
            node: reg.node.clone(),
            relist: None,
            waiting: BTreeMap::new(),
            synced: reg.synced.clone(),
            listed: reg.listed.clone(),
            denied: reg.denied.clone(),
            dialect: reg.dialect,
        };
        let mut cidrs = PodCidrs::default();
        list_pod_cidrs(&mut cidrs, &reg.api, &reg.denied).await;
        let mut tick = tokio::time::interval(watch::REREAD_AFTER);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        NodeWatch {
            api: reg.api.clone(),
            denied: reg.denied.clone(),
            cidrs,
            tracker,
            stream: restarting_watcher(reg.api.clone()).default_backoff().boxed(),
            tick,
        }
    }

    /// Waits for the next event or re-read (cancel-safe); `None`: the watch ended.
    async fn next(&mut self) -> Option<NodeStep> {
        let rereads = !self.tracker.waiting.is_empty() && self.tracker.relist.is_none();
        tokio::select! {
            event = self.stream.next() => event.map(|e| NodeStep::Event(Box::new(e))),
            _ = self.tick.tick(), if rereads => Some(NodeStep::Reread),
        }
    }

    /// Handles `step`; whether it changed what felt uses.
    async fn handle(&mut self, step: NodeStep) -> bool {
        match step {
            NodeStep::Event(event) => {
                let event = *event;
                // The list at start failed (a server down as the agent
                // started): try it again before reading Nodes one by one.
                if let Ok(watcher::Event::Init) = &event
                    && !self.cidrs.listed
                {
                    list_pod_cidrs(&mut self.cidrs, &self.api, &self.denied).await;
                }
                if let Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) = &event
                    && self.cidrs.due(&m.metadata)
                {
                    self.cidrs.read(&self.api, &m.metadata, &self.denied).await;
                }
                self.tracker.on(event, &mut self.cidrs)
            }
            NodeStep::Reread => {
                let mut woke = false;
                for metadata in self.tracker.due(&self.cidrs) {
                    self.cidrs.read(&self.api, &metadata, &self.denied).await;
                    woke |= self.tracker.apply(&metadata, &self.cidrs);
                }
                woke
            }
        }
    }
}

/// The Kubernetes registry.
#[derive(Clone)]
pub struct KubeRegistry {
    api: Api<Node>,
    /// FeltNodes.
    feltnodes: Api<FeltNodeObject>,
    /// Where peers come from (see `records`).
    source: PeerSource,
    /// Whether the FeltNode resource is installed: `None` until known.
    installed: Arc<Mutex<Option<bool>>>,
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
    pub async fn connect(
        kubeconfig: Option<&Path>,
        node: &str,
        dialect: Dialect,
        source: PeerSource,
    ) -> Result<Self, KubeError> {
        let client = client(kubeconfig).await?;
        Ok(KubeRegistry {
            feltnodes: Api::all(client.clone()),
            source,
            installed: Arc::default(),
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
        tokio::spawn(self.clone().run(tx));
        rx
    }

    /// Which source the agent reads its peers from now.
    pub fn reading(&self) -> &'static str {
        self.known().reading.name()
    }

    /// From now on, peers come from Node metadata: the node watch, started.
    async fn read_nodes(&self) -> NodeWatch {
        let watch = NodeWatch::start(self).await;
        let mut known = self.known();
        known.reading = Reading::Nodes;
        known.touch_all();
        drop(known);
        watch
    }

    /// Whether the FeltNode resource is installed: `None` until known.
    fn installed(&self) -> Option<bool> {
        *self.installed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes whether the FeltNode resource is installed; returns what was known before.
    fn set_installed(&self, installed: bool) -> Option<bool> {
        self.installed.lock().unwrap_or_else(|p| p.into_inner()).replace(installed)
    }

    /// The watch task: FeltNodes, Node metadata, or FeltNodes after Node
    /// metadata (see `records`).
    async fn run(self, tx: mpsc::Sender<()>) {
        // FeltNodes hold felt's dialect only: a node in Flannel's compat mode reads Nodes.
        let with_records = self.dialect == Dialect::Felt && self.source != PeerSource::Nodes;
        // Whether the FeltNode watch streams its list: a server that refuses
        // it makes it list for good (see `watch_feltnodes`).
        let streaming = Arc::new(AtomicBool::new(with_records));
        let mut records: Events<FeltNodeObject> = if with_records {
            self.watch_feltnodes(streaming.clone())
        } else {
            futures::stream::pending().boxed()
        };
        let mut own: Events<watch::Meta> = futures::stream::pending().boxed();
        let mut tracker = RecordTracker::new(self.known.clone(), self.node.clone());
        let mut nodes = None;
        if !with_records {
            nodes = Some(self.read_nodes().await);
        }
        let decide_by = tokio::time::Instant::now() + watch::LIST_TIMEOUT;
        let mut check = tokio::time::interval(std::time::Duration::from_secs(1));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let reading = self.known().reading;
            let woke = tokio::select! {
                event = records.next() => {
                    let Some(event) = event else { break };
                    match event {
                        Ok(event) => {
                            let done = matches!(event, watcher::Event::InitDone);
                            if matches!(event, watcher::Event::Apply(_) | watcher::Event::Delete(_)) {
                                self.denied.allowed("watch", "feltnodes");
                            }
                            let changed = tracker.on(event);
                            if done {
                                self.set_installed(true);
                                // A streamed list is a watch.
                                let verb = if streaming.load(Ordering::Relaxed) { "watch" } else { "list" };
                                self.denied.allowed(verb, "feltnodes");
                            }
                            match reading {
                                Reading::Undecided if done => {
                                    if self.decide(tracker.listed).await {
                                        own = self.read_feltnodes("every node has a FeltNode");
                                    } else {
                                        nodes = Some(self.read_nodes().await);
                                    }
                                    true
                                }
                                Reading::Feltnodes => {
                                    if done && !self.synced.swap(true, Ordering::Relaxed) {
                                        info!("FeltNode list synced");
                                    }
                                    changed.records || changed.own
                                }
                                // Only whether this node's own FeltNode must be published.
                                _ => changed.own,
                            }
                        }
                        // 410 Gone: history moved on; the watcher lists again, the store stays whole.
                        Err(watcher::Error::WatchError(s)) if s.code == hyper::StatusCode::GONE.as_u16() => {
                            info!(reason = %s.message, "FeltNode watch expired; listing again");
                            false
                        }
                        Err(e) => {
                            let refused = watch::refusal(&e);
                            // Invalid or bad request: a server without WatchList.
                            if streaming.load(Ordering::Relaxed)
                                && refused.is_some_and(|(_, s)| matches!(s.code, 400 | 422))
                            {
                                streaming.store(false, Ordering::Relaxed);
                                info!(error = %crate::util::error_chain(&e), "the FeltNode watch cannot stream its list (an API server without WatchList, such as Kubernetes 1.33, refuses it); listing FeltNodes instead");
                                records = self.watch_feltnodes(streaming.clone());
                            }
                            if let Some((verb, s)) = refused {
                                self.denied.answered(verb, "feltnodes", s);
                            }
                            let code = refused.map(|(_, s)| s.code);
                            if reading != Reading::Feltnodes && matches!(code, Some(403 | 404)) {
                                // Not installed, or not allowed: Nodes it is, and no more tries.
                                if code == Some(404) {
                                    self.set_installed(false);
                                    warn!("the FeltNode resource (feltnodes.{GROUP}) is not installed: reading peers from Node metadata; apply deploy/felt.yaml's CustomResourceDefinition to cut what each agent receives");
                                } else {
                                    warn!("RBAC forbids listing FeltNodes: reading peers from Node metadata");
                                }
                                records = futures::stream::pending().boxed();
                                if nodes.is_none() {
                                    nodes = Some(self.read_nodes().await);
                                }
                                true
                            } else if reading == Reading::Feltnodes {
                                if self.synced.swap(false, Ordering::Relaxed) {
                                    warn!(error = %crate::util::error_chain(&e), "lost the FeltNode watch; keeping the last known nodes and retrying");
                                }
                                true
                            } else {
                                debug!(error = %crate::util::error_chain(&e), "FeltNode watch failed; retrying");
                                false
                            }
                        }
                    }
                }
                event = own.next() => match event {
                    Some(Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m))) => self.note_own(&m.metadata),
                    Some(Err(e)) => {
                        debug!(error = %crate::util::error_chain(&e), "watching this node failed; retrying");
                        false
                    }
                    _ => false,
                },
                step = async {
                    match nodes.as_mut() {
                        Some(n) => n.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let Some(step) = step else { break };
                    let n = nodes.as_mut().expect("a step comes from the node watch");
                    n.handle(step).await
                }
                _ = check.tick() => match reading {
                    Reading::Undecided if tokio::time::Instant::now() >= decide_by => {
                        warn!(after = ?watch::LIST_TIMEOUT, "the FeltNode list did not complete in time; reading peers from Node metadata meanwhile");
                        nodes = Some(self.read_nodes().await);
                        true
                    }
                    Reading::Nodes if with_records && self.source == PeerSource::Auto && tracker.listed
                        && self.listed.load(Ordering::Relaxed) && self.synced.load(Ordering::Relaxed) =>
                    {
                        let differ = {
                            let known = self.known();
                            records::covers(&known.seen, &known.records, &self.node)
                        };
                        if differ == 0 {
                            nodes = None;
                            own = self.read_feltnodes("every node with backend data now has a matching FeltNode");
                            true
                        } else {
                            false
                        }
                    }
                    _ => false,
                },
            };
            if woke && tx.try_send(()).is_err() && tx.is_closed() {
                break;
            }
        }
    }

    /// The FeltNode watch. While `streaming`, its list comes as watch events
    /// (`sendInitialEvents`, Kubernetes' WatchList, on by default in 1.32 and
    /// 1.34+): from the API server's watch cache, each object parsed as it
    /// arrives. Measured at 5,000 FeltNodes: 0.11-0.17 s to the last, as
    /// fast as one whole list (0.11-0.21 s) and without its 4 MB reply held
    /// and parsed at once; 11 pages of 500 took 0.6 s. A watch started over
    /// after its list timed out lists, and clears `streaming`. Otherwise, one
    /// list at resourceVersion 0, from the watch cache too (unpaged: the client
    /// drops resourceVersion=0 from a list with a limit, which pages it from etcd).
    fn watch_feltnodes(&self, streaming: Arc<AtomicBool>) -> Events<FeltNodeObject> {
        let listed = watcher::Config { page_size: None, ..watcher::Config::default().any_semantic() };
        let started = AtomicBool::new(false);
        let api = self.feltnodes.clone();
        watch::restarting("FeltNode", move || {
            if started.swap(true, Ordering::Relaxed) {
                streaming.store(false, Ordering::Relaxed);
            }
            let config = if streaming.load(Ordering::Relaxed) {
                listed.clone().streaming_lists()
            } else {
                listed.clone()
            };
            watcher::watcher(api.clone(), config).boxed()
        })
        .default_backoff()
        .boxed()
    }

    /// Whether to read FeltNodes alone from the start: always with
    /// `--peer-source feltnodes`; with `auto`, when there are as many
    /// FeltNodes as Nodes (counting this node's, published soon). If not, the
    /// agent reads Node metadata until the FeltNodes match them exactly.
    async fn decide(&self, listed: bool) -> bool {
        if self.source == PeerSource::Feltnodes {
            return true;
        }
        if !listed {
            return false;
        }
        let (feltnodes, own) = {
            let known = self.known();
            (known.records.len(), known.records.contains_key(&self.node))
        };
        let meta: Api<watch::Meta> = Api::all(self.api.clone().into_client());
        let params = ListParams::default().limit(1);
        let count = self.call("list", "nodes", || "counting nodes".into(), meta.list(&params));
        match count.await {
            Ok(list) => {
                let more = list.metadata.continue_.as_deref().is_some_and(|c| !c.is_empty());
                let rest = list.metadata.remaining_item_count.and_then(|n| usize::try_from(n).ok());
                let nodes = match (more, rest) {
                    (false, _) => list.items.len(),
                    (true, Some(rest)) => list.items.len() + rest,
                    (true, None) => return false,
                };
                let enough = feltnodes + usize::from(!own) >= nodes;
                if !enough {
                    info!(
                        nodes,
                        feltnodes,
                        "not every node has a FeltNode yet: reading peers from Node metadata until they do"
                    );
                }
                enough
            }
            Err(e) => {
                warn!(error = %crate::util::error_chain(&e), "counting nodes failed: reading peers from Node metadata");
                false
            }
        }
    }

    /// From now on, peers come from FeltNodes only. Returns the watch of this
    /// node's own Node (metadata, a field selector: its own updates alone,
    /// not N nodes'), for its annotations and an operator's overwrite.
    fn read_feltnodes(&self, why: &str) -> Events<watch::Meta> {
        let n = {
            let mut known = self.known();
            known.reading = Reading::Feltnodes;
            known.seen.clear();
            known.touch_all();
            known.records.len()
        };
        self.listed.store(true, Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
        info!(
            feltnodes = n,
            "{why}: reading peers from FeltNodes only (Node status updates no longer reach this agent)"
        );
        let api: Api<watch::Meta> = Api::all(self.api.clone().into_client());
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.node));
        watch::restarting("own node", move || watcher::watcher(api.clone(), config.clone()).boxed())
            .default_backoff()
            .boxed()
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
            let overwrite = match &answer {
                Ok(Ok(meta)) => self.note_own(&meta.metadata),
                _ => false,
            };
            let changed = overwrite
                || match answer {
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
        let mut known = self.known();
        known.dirty_all = false;
        known.dirty.clear();
        let (from, kind) = known.source();
        // In name order already.
        for (name, seen) in from {
            match seen {
                Ok((r, _)) => snap.records.push(r.clone()),
                Err(why) => snap.malformed.push((format!("{kind}/{name}"), why.clone())),
            }
        }
        Some(snap)
    }

    /// The records that changed since the last [`KubeRegistry::snapshot`]
    /// or call of this; `None` when it cannot say (nothing listed yet, a
    /// relist, a change of source): read a snapshot.
    pub fn changes(&self) -> Option<Vec<super::Changed>> {
        if !self.listed.load(Ordering::Relaxed) {
            return None;
        }
        let mut known = self.known();
        if known.dirty_all {
            return None;
        }
        let dirty = std::mem::take(&mut known.dirty);
        let (from, kind) = known.source();
        let changes = dirty
            .into_iter()
            .map(|name| {
                let now =
                    from.get(&name).map(|seen| seen.as_ref().map(|(r, _)| r.clone()).map_err(Clone::clone));
                super::Changed { document: format!("{kind}/{name}"), name, now }
            })
            .collect();
        Some(changes)
    }

    /// This node's Node, whose uid and overwrite are noted.
    async fn own(&self) -> Result<Node, KubeError> {
        let node = self
            .call("get", "nodes", || format!("reading node `{}`", self.node), self.api.get(&self.node))
            .await?;
        self.note_own(&node.metadata);
        Ok(node)
    }

    /// Notes this node's uid and (when Node metadata is not watched) its
    /// annotations and `public-ip-overwrite`; returns whether they changed.
    fn note_own(&self, meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
        let mut known = self.known();
        known.own_uid.clone_from(&meta.uid);
        if known.reading != Reading::Feltnodes {
            return false;
        }
        let annotations = meta.annotations.clone().unwrap_or_default();
        let overwrite = annotations.get(self.dialect.keys().public_ip_overwrite).cloned();
        let own = known.own.get_or_insert((None, None));
        let mut changed = own.1 != overwrite;
        own.1 = overwrite;
        changed |= known.own_annotations.as_ref() != Some(&annotations);
        known.own_annotations = Some(annotations);
        changed
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
    /// When FeltNodes are read, that is this node's FeltNode (owned by this
    /// Node object); while Nodes are read, its annotations, and also its
    /// FeltNode when the resource is watched (`None` when they differ, so
    /// the agent publishes both).
    pub fn published(&self) -> Option<NodeRecord> {
        let known = self.known();
        let feltnode = || match &known.own_feltnode {
            Some((record, owner)) if known.own_uid.is_none() || *owner == known.own_uid => record.clone(),
            _ => None,
        };
        match known.reading {
            // The FeltNode, and the annotations saying the same.
            Reading::Feltnodes => {
                let record = feltnode()?;
                let annotated = known.own_annotations.as_ref().is_none_or(|have| {
                    self.dialect.annotations(&record).iter().all(|(k, v)| have.get(*k) == Some(v))
                });
                annotated.then_some(record)
            }
            _ => {
                let annotated = known.own.as_ref()?.0.clone();
                let watched = self.installed() == Some(true);
                if watched && feltnode() != annotated { None } else { annotated }
            }
        }
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
        if let Some(uid) = node.metadata.uid.as_deref() {
            wrote |= self.publish_feltnode(record, uid).await?;
        }
        Ok(wrote)
    }

    /// Applies this node's FeltNode when it differs from `record` (or is
    /// owned by another Node object), unless the resource is not installed
    /// or RBAC forbids it (each said once: the agent still publishes its
    /// annotations, and peers reading Nodes see it). Returns whether it wrote.
    async fn publish_feltnode(&self, record: &NodeRecord, node_uid: &str) -> Result<bool, KubeError> {
        if self.dialect != Dialect::Felt || self.installed() == Some(false) {
            return Ok(false);
        }
        let what = || format!("reading FeltNode `{}`", self.node);
        let have = match self.call("get", "feltnodes", what, self.feltnodes.get_opt(&self.node)).await {
            Ok(have) => have,
            Err(KubeError::Api { source: kube::Error::Api(s), .. }) if s.code == 403 => return Ok(false),
            Err(e) => return Err(e),
        };
        if let Some(obj) = &have
            && records::record_of(obj).as_ref() == Ok(record)
            && records::owner_uid(&obj.metadata).as_deref() == Some(node_uid)
        {
            return Ok(false);
        }
        let object = Patch::Apply(records::object_for(record, node_uid));
        let params = PatchParams::apply("felt").force();
        let what = || format!("applying FeltNode `{}`", self.node);
        let applied =
            self.call("patch", "feltnodes", what, self.feltnodes.patch(&self.node, &params, &object));
        match applied.await {
            Ok(_) => Ok(true),
            Err(KubeError::Api { source: kube::Error::Api(s), .. }) if s.code == 403 => Ok(false),
            Err(KubeError::Api { source: kube::Error::Api(s), .. }) if s.code == 404 => {
                if self.set_installed(false) != Some(false) {
                    warn!(
                        "the FeltNode resource (feltnodes.{GROUP}) is not installed: publishing this node in its annotations only"
                    );
                }
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}
