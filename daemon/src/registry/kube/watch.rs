//! Watching Nodes: the metadata of every Node (a watch started over when
//! its list hangs), the pod CIDRs read once per Node, the tracker that
//! turns events into records, wake-ups and readiness, and the record of
//! what RBAC refused.
//!
//! Why metadata: a kubelet rewrites its Node's status (conditions, images,
//! addresses: most of a Node's bytes) on its own schedule, and a watch of
//! whole Nodes sends every one of those updates to every agent: N² bytes
//! for the API server. Everything felt reads of a peer is in its metadata
//! (the annotations its agent publishes) except `spec.podCIDRs`, which the
//! API server lets be set once and never changed afterwards, so it is read
//! once per Node object (by uid): one list of whole Nodes when the agent
//! starts, then a GET for each Node that joins.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use felt_proto::NodeRecord;
use felt_proto::annotations::{self, Dialect, NodeFields};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, watcher};
use tracing::{debug, info, warn};

/// A Node as the watch delivers it: its metadata only.
pub(super) type Meta = PartialObjectMeta<Node>;

/// How long a list may take before the watcher is started over: a list
/// whose answer never comes (a lost response, a server that accepted the
/// request and hung) would otherwise keep the agent "not listed" forever.
pub(super) const LIST_TIMEOUT: Duration = Duration::from_secs(20);

/// Nodes per page of a list (whole ones in the agent's one list of them,
/// metadata in the watch's).
const LIST_PAGE: u32 = 100;

/// How often a Node whose pod CIDRs could not be read (or were empty while
/// it already carried backend data) is read again.
pub(super) const REREAD_AFTER: Duration = Duration::from_secs(5);

/// How long one read of a Node may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream of watch events.
pub(super) type Events<K> = futures::stream::BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// The Node metadata watcher, started over when a list hangs (see [`restarting`]).
pub(super) fn restarting_watcher(api: Api<Node>) -> Events<Meta> {
    let api: Api<Meta> = Api::all(api.into_client());
    // Paged lists (a list at resourceVersion 0 is served whole from the
    // server's cache, however large: one allocation of every Node at once).
    let config = watcher::Config::default().page_size(LIST_PAGE);
    restarting("node", move || watcher(api.clone(), config.clone()).boxed())
}

/// A watcher made by `make`, started over when a list has not finished
/// within [`LIST_TIMEOUT`]. A list is due when the watcher starts and after
/// each error (it may relist, or resume silently); events end the wait.
pub(super) fn restarting<K: Send + 'static>(
    what: &'static str,
    make: impl Fn() -> Events<K> + Send + 'static,
) -> Events<K> {
    let due = || Some(tokio::time::Instant::now() + LIST_TIMEOUT);
    futures::stream::unfold((make(), due(), make), move |(mut inner, mut deadline, make)| async move {
        loop {
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, inner.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        warn!(after = ?LIST_TIMEOUT, "the {what} list did not complete in time; starting the watch over");
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
    .boxed()
}

/// `spec.podCIDRs` (or `spec.podCIDR`) of a whole Node.
pub(super) fn pod_cidrs_of(node: &Node) -> Vec<String> {
    let spec = node.spec.as_ref();
    match spec.and_then(|s| s.pod_cidrs.clone()).filter(|c| !c.is_empty()) {
        Some(c) => c,
        None => spec.and_then(|s| s.pod_cidr.clone()).into_iter().collect(),
    }
}

/// Why the agent's one list of whole Nodes failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum ListError {
    /// The server refused it, or the connection failed.
    #[error("listing nodes")]
    Api(#[source] kube::Error),
    /// No answer in time.
    #[error("the node list did not complete in time ({0:?})")]
    Timeout(Duration),
}

/// One Node object's pod CIDRs as last read.
#[derive(Debug, Clone)]
struct Read {
    /// `None`: the read failed.
    cidrs: Option<Vec<String>>,
    at: Instant,
    /// Whether the Node carried backend data when read.
    with_data: bool,
}

/// Every Node's pod CIDRs, by uid. `spec.podCIDRs` may go from empty to
/// set once and never changes afterwards (the API server refuses it), so
/// a Node object whose CIDRs were read non-empty is never read again; one
/// recreated under the same name is a new uid, read afresh.
#[derive(Debug, Default)]
pub(super) struct PodCidrs {
    by_uid: HashMap<String, Read>,
    /// Whether a list of whole Nodes completed.
    pub(super) listed: bool,
}

impl PodCidrs {
    /// Reads every Node's pod CIDRs in one paged list. Called once, before
    /// the metadata watch starts; a failure leaves the reads to the watch.
    pub(super) async fn list(&mut self, api: &Api<Node>, denied: &Denials) -> Result<usize, ListError> {
        let mut params = ListParams::default().limit(LIST_PAGE);
        let mut n = 0;
        loop {
            let Ok(page) = tokio::time::timeout(LIST_TIMEOUT, api.list(&params)).await else {
                return Err(ListError::Timeout(LIST_TIMEOUT));
            };
            denied.note("list", "nodes", &page);
            let page = page.map_err(ListError::Api)?;
            let now = Instant::now();
            for node in &page.items {
                if let Some(uid) = node.metadata.uid.clone() {
                    let read = Read {
                        cidrs: Some(pod_cidrs_of(node)),
                        at: now,
                        with_data: has_backend_data(&node.metadata),
                    };
                    self.by_uid.insert(uid, read);
                    n += 1;
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => {
                    self.listed = true;
                    return Ok(n);
                }
            }
        }
    }

    /// This Node object's pod CIDRs, if read.
    pub(super) fn get(&self, meta: &ObjectMeta) -> Option<&[String]> {
        self.by_uid.get(meta.uid.as_deref()?)?.cidrs.as_deref()
    }

    /// Whether `meta`'s Node must be read (again): never read; or its last
    /// read failed; or it found no pod CIDRs and the Node now carries
    /// backend data (its agent published, so its CIDRs are due): at once
    /// the first time, then at most once per [`REREAD_AFTER`].
    pub(super) fn due(&self, meta: &ObjectMeta) -> bool {
        let Some(uid) = meta.uid.as_deref() else { return false };
        let Some(read) = self.by_uid.get(uid) else { return true };
        let again = read.at.elapsed() >= REREAD_AFTER;
        match &read.cidrs {
            None => again,
            Some(c) => c.is_empty() && has_backend_data(meta) && (!read.with_data || again),
        }
    }

    /// Reads `meta`'s Node (bounded by [`READ_TIMEOUT`]).
    pub(super) async fn read(&mut self, api: &Api<Node>, meta: &ObjectMeta, denied: &Denials) {
        let (Some(name), Some(uid)) = (meta.name.as_deref(), meta.uid.clone()) else { return };
        let cidrs = match tokio::time::timeout(READ_TIMEOUT, api.get(name)).await {
            Ok(r) => {
                denied.note("get", "nodes", &r);
                match r {
                    // The name may already belong to the next object: only this one's spec counts.
                    Ok(node) if node.metadata.uid.as_deref() == Some(&uid) => Some(pod_cidrs_of(&node)),
                    Ok(_) => None,
                    Err(e) => {
                        debug!(node = name, error = %crate::util::error_chain(&e), "reading the node's pod CIDRs failed; retrying");
                        None
                    }
                }
            }
            Err(_) => None,
        };
        self.by_uid.insert(uid, Read { cidrs, at: Instant::now(), with_data: has_backend_data(meta) });
    }

    /// Forgets a deleted Node object.
    pub(super) fn forget(&mut self, meta: &ObjectMeta) {
        if let Some(uid) = meta.uid.as_deref() {
            self.by_uid.remove(uid);
        }
    }

    /// Keeps only the Node objects of `live` (after a relist).
    pub(super) fn retain(&mut self, live: &std::collections::HashSet<String>) {
        self.by_uid.retain(|uid, _| live.contains(uid));
    }
}

/// Whether a Node carries backend data in either dialect.
fn has_backend_data(meta: &ObjectMeta) -> bool {
    meta.annotations.as_ref().is_some_and(|a| {
        a.contains_key(Dialect::Felt.keys().backend_data)
            || a.contains_key(Dialect::Flannel.keys().backend_data)
    })
}

/// What RBAC refused this agent, each said once.
#[derive(Debug, Clone, Default)]
pub(super) struct Denials(pub(super) Arc<Mutex<BTreeMap<String, String>>>);

impl Denials {
    /// Records the outcome of `verb` on `resource`: a 403 is kept (and
    /// logged the first time), a success clears it.
    pub(super) fn note<T>(&self, verb: &str, resource: &str, r: &Result<T, kube::Error>) {
        match r {
            Ok(_) => self.allowed(verb, resource),
            Err(kube::Error::Api(s)) => self.answered(verb, resource, s),
            Err(_) => {}
        }
    }

    /// The server answered `verb` on `resource` with error status `s`: kept if a 403.
    pub(super) fn answered(&self, verb: &str, resource: &str, s: &kube::core::Status) {
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
    pub(super) fn allowed(&self, verb: &str, resource: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.remove(&format!("{verb} {resource}")).is_some() {
            info!(verb, resource, "the API server allows `{verb}` on `{resource}` again");
        }
    }

    pub(super) fn reasons(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.keys()
            .map(|k| {
                let (verb, resource) = k.split_once(' ').unwrap_or((k, ""));
                format!("RBAC forbids `{verb}` on `{resource}` (grant it in felt's ClusterRole)")
            })
            .collect()
    }
}

/// The API server's answer inside a watcher's error, with the verb that
/// got it (`list` or `watch`), when the server answered at all.
pub(super) fn refusal(e: &watcher::Error) -> Option<(&'static str, &kube::core::Status)> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s)) => Some(("list", s)),
        watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s))
        | watcher::Error::WatchError(s) => Some(("watch", s)),
        _ => None,
    }
}

/// What every Node means to felt, shared by the watch task (which writes)
/// and the agent (which reads).
#[derive(Debug, Default)]
pub(super) struct Known {
    /// Each Node's record (or why it is not one) as last seen.
    pub(super) seen: BTreeMap<String, Seen>,
    /// This node's own record as published (its `public-ip`, not an
    /// overwrite), and the operator's overwrite.
    pub(super) own: Option<(Option<NodeRecord>, Option<String>)>,
    /// Each FeltNode's record (or why it is not one), when FeltNodes are watched.
    pub(super) records: BTreeMap<String, Seen>,
    /// This node's own FeltNode: its record and its owner's uid.
    pub(super) own_feltnode: Option<(Option<NodeRecord>, Option<String>)>,
    /// This node's Node object's uid, as last read.
    pub(super) own_uid: Option<String>,
    /// This node's annotations, as last read (while FeltNodes are read).
    pub(super) own_annotations: Option<BTreeMap<String, String>>,
    /// Which of the two the agent's peers come from.
    pub(super) reading: super::records::Reading,
    /// Names whose record (of either source) changed since the agent last
    /// read them, for [`super::KubeRegistry::changes`].
    pub(super) dirty: std::collections::BTreeSet<String>,
    /// Everything may have changed (a relist, a change of source): the
    /// agent reads a whole snapshot next.
    pub(super) dirty_all: bool,
}

impl Known {
    /// The records the agent reads now, and what their documents are called.
    pub(super) fn source(&self) -> (&BTreeMap<String, Seen>, &'static str) {
        match self.reading {
            super::records::Reading::Feltnodes => (&self.records, "feltnode"),
            _ => (&self.seen, "node"),
        }
    }

    /// `name`'s record may have changed.
    pub(super) fn touch(&mut self, name: &str) {
        if !self.dirty_all {
            self.dirty.insert(name.to_owned());
        }
    }

    /// Any record may have changed.
    pub(super) fn touch_all(&mut self) {
        self.dirty_all = true;
        self.dirty.clear();
    }
}

/// What the watch's events mean to the agent: a wake-up when a record
/// felt uses changed, or at the end of a relist; readiness and RBAC notes
/// on the way.
pub(super) struct Tracker {
    pub(super) known: Arc<Mutex<Known>>,
    /// This node's name.
    pub(super) node: String,
    /// A relist in progress: its records, and the uids it saw.
    pub(super) relist: Option<(BTreeMap<String, Seen>, std::collections::HashSet<String>)>,
    /// Nodes left out until their pod CIDRs are read, with their metadata.
    pub(super) waiting: BTreeMap<String, ObjectMeta>,
    pub(super) synced: Arc<AtomicBool>,
    pub(super) listed: Arc<AtomicBool>,
    pub(super) denied: Denials,
    pub(super) dialect: Dialect,
}

/// What felt uses of a Node: its record as peers use it (an operator's
/// `public-ip-overwrite` in place of `public-ip`) and the overwrite itself,
/// so that removing one wakes the node's own agent: it published the
/// overwrite as its `public-ip` and must publish its own address again,
/// while the record alone does not change (it falls back to that
/// published overwrite).
pub(super) type Seen = Result<(NodeRecord, Option<String>), String>;

/// Reduces a Node's metadata and pod CIDRs, read in `dialect`, to the
/// record felt uses, or says why it cannot.
pub(super) fn record_of(
    meta: &ObjectMeta,
    pod_cidrs: &[String],
    dialect: Dialect,
    honour_overwrite: bool,
) -> Result<NodeRecord, annotations::NodeError> {
    let empty = BTreeMap::new();
    let fields = NodeFields {
        name: meta.name.as_deref().unwrap_or_default(),
        pod_cidrs,
        annotations: meta.annotations.as_ref().unwrap_or(&empty),
    };
    annotations::record(fields, dialect, honour_overwrite)
}

fn seen_of(meta: &ObjectMeta, pod_cidrs: &[String], dialect: Dialect) -> Seen {
    let used = record_of(meta, pod_cidrs, dialect, true).map_err(|e| crate::util::error_chain(&e))?;
    let key = dialect.keys().public_ip_overwrite;
    let overwrite = meta.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    Ok((used, overwrite))
}

impl Tracker {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `meta` means with `cidrs`: its record, or (CIDRs not read yet) nothing.
    fn reduce(&mut self, meta: &ObjectMeta, cidrs: &PodCidrs) -> Option<Seen> {
        let name = meta.name.clone().unwrap_or_default();
        let Some(pod_cidrs) = cidrs.get(meta) else {
            self.waiting.insert(name, meta.clone());
            return None;
        };
        // Published backend data but no pod CIDRs read yet: read again later.
        if pod_cidrs.is_empty() && has_backend_data(meta) {
            self.waiting.insert(name.clone(), meta.clone());
        } else {
            self.waiting.remove(&name);
        }
        if name == self.node {
            let published = record_of(meta, pod_cidrs, self.dialect, false).ok();
            let overwrite =
                meta.annotations.as_ref().and_then(|a| a.get(self.dialect.keys().public_ip_overwrite));
            self.known().own = Some((published, overwrite.cloned()));
        }
        Some(seen_of(meta, pod_cidrs, self.dialect))
    }

    /// Whether `event` should wake the agent. `cidrs` holds the pod CIDRs
    /// of the Nodes it names, read before (see [`PodCidrs::due`]).
    pub(super) fn on(
        &mut self,
        event: Result<watcher::Event<Meta>, watcher::Error>,
        cidrs: &mut PodCidrs,
    ) -> bool {
        match event {
            Ok(watcher::Event::Init) => {
                self.relist = Some(Default::default());
                false
            }
            Ok(watcher::Event::InitApply(n)) => {
                let seen = self.reduce(&n.metadata, cidrs);
                if let Some((r, uids)) = self.relist.as_mut() {
                    let name = n.metadata.name.clone().unwrap_or_default();
                    uids.extend(n.metadata.uid.clone());
                    match seen {
                        Some(seen) => r.insert(name, seen),
                        None => r.remove(&name),
                    };
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                self.denied.allowed("list", "nodes");
                let (seen, uids) = self.relist.take().unwrap_or_default();
                cidrs.retain(&uids);
                self.waiting.retain(|_, m| m.uid.as_ref().is_some_and(|u| uids.contains(u)));
                let n = seen.len();
                let mut known = self.known();
                known.seen = seen;
                known.touch_all();
                drop(known);
                self.listed.store(true, Ordering::Relaxed);
                if !self.synced.swap(true, Ordering::Relaxed) {
                    info!(nodes = n, "node list synced");
                }
                true
            }
            Ok(watcher::Event::Apply(n)) => {
                self.denied.allowed("watch", "nodes");
                self.apply(&n.metadata, cidrs)
            }
            Ok(watcher::Event::Delete(n)) => {
                let name = n.metadata.name.clone().unwrap_or_default();
                cidrs.forget(&n.metadata);
                self.waiting.remove(&name);
                if name == self.node {
                    self.known().own = None;
                }
                let mut known = self.known();
                known.touch(&name);
                known.seen.remove(&name).is_some()
            }
            // 410 Gone: history moved on; the watcher lists again. Routine, and the store stays whole.
            Err(watcher::Error::WatchError(status)) if status.code == hyper::StatusCode::GONE.as_u16() => {
                info!(reason = %status.message, "node watch expired; listing again");
                false
            }
            Err(e) => {
                if let Some((verb, s)) = refusal(&e) {
                    self.denied.answered(verb, "nodes", s);
                }
                if self.synced.swap(false, Ordering::Relaxed) {
                    warn!(error = %crate::util::error_chain(&e), "lost the node watch; keeping the last known nodes and retrying");
                }
                true
            }
        }
    }

    /// A Node as it is now; whether that changed what felt uses.
    pub(super) fn apply(&mut self, meta: &ObjectMeta, cidrs: &PodCidrs) -> bool {
        let name = meta.name.clone().unwrap_or_default();
        let seen = self.reduce(meta, cidrs);
        let mut known = self.known();
        known.touch(&name);
        match seen {
            Some(seen) => known.seen.insert(name, seen.clone()).as_ref() != Some(&seen),
            // A new object under a known name: the old one is gone.
            None => known.seen.remove(&name).is_some(),
        }
    }

    /// Nodes waiting for their pod CIDRs whose read is due.
    pub(super) fn due(&self, cidrs: &PodCidrs) -> Vec<ObjectMeta> {
        self.waiting.values().filter(|m| cidrs.due(m)).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;

    fn meta(uid: &str, ann: &[(&str, &str)]) -> Meta {
        Meta {
            metadata: ObjectMeta {
                name: Some("n1".into()),
                uid: Some(uid.into()),
                annotations: Some(ann.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn tracker() -> Tracker {
        Tracker {
            known: Arc::default(),
            node: "n1".into(),
            relist: None,
            waiting: BTreeMap::new(),
            synced: Arc::default(),
            listed: Arc::default(),
            denied: Denials::default(),
            dialect: Dialect::Felt,
        }
    }

    impl PodCidrs {
        /// As if `uid`'s Node had been read with `cidrs`, `ago` ago.
        fn insert(&mut self, uid: &str, cidrs: Option<&[&str]>, with_data: bool, ago: Duration) {
            let cidrs = cidrs.map(|c| c.iter().map(|s| (*s).to_owned()).collect());
            self.by_uid.insert(uid.into(), Read { cidrs, at: Instant::now() - ago, with_data });
        }
    }

    fn cidrs_of(t: &Tracker) -> Option<Vec<String>> {
        let known = t.known.lock().unwrap();
        let (record, _) = known.seen.get("n1")?.as_ref().ok()?;
        Some(record.pod_cidrs.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn removing_an_overwrite_the_node_published_wakes_its_agent() {
        let (mut t, mut c) = (tracker(), PodCidrs::default());
        c.insert("u1", Some(&["10.244.0.0/24"]), true, Duration::ZERO);
        let (ip, over) = (super::super::PUBLIC_IP, super::super::PUBLIC_IP_OVERWRITE);
        // The agent published its overwrite as its public-ip…
        assert!(t.on(Ok(Event::Apply(meta("u1", &[(ip, "198.18.0.99"), (over, "198.18.0.99")]))), &mut c));
        assert_eq!(t.known.lock().unwrap().own.as_ref().unwrap().1.as_deref(), Some("198.18.0.99"));
        // …so without the overwrite, peers' view of the node is the same, but
        // its agent must publish its own address again.
        assert!(
            t.on(Ok(Event::Apply(meta("u1", &[(ip, "198.18.0.99")]))), &mut c),
            "no wake-up: the node keeps the old overwrite"
        );
        assert_eq!(t.known.lock().unwrap().own.as_ref().unwrap().1, None);
        // A heartbeat-like update that changes nothing felt uses does not wake it.
        let mut beat = meta("u1", &[(ip, "198.18.0.99"), ("example.com/other", "x")]);
        beat.metadata.resource_version = Some("99".into());
        assert!(!t.on(Ok(Event::Apply(beat)), &mut c));
        assert_eq!(cidrs_of(&t), Some(vec!["10.244.0.0/24".to_owned()]));
    }

    #[test]
    fn a_node_recreated_under_the_same_name_is_not_taken_for_the_old_one() {
        let (mut t, mut c) = (tracker(), PodCidrs::default());
        let data = (super::super::BACKEND_DATA, r#"{"vni":1,"vtepMAC":"02:00:00:00:00:02"}"#);
        c.insert("old", Some(&["10.244.1.0/24"]), true, Duration::ZERO);
        assert!(t.on(Ok(Event::Apply(meta("old", &[data]))), &mut c));
        assert_eq!(cidrs_of(&t), Some(vec!["10.244.1.0/24".to_owned()]));
        // The same name, a new object whose spec is not read yet: its old
        // pod CIDRs must not be used with its new annotations.
        let new = meta("new", &[data]);
        assert!(c.due(&new.metadata), "a new uid must be read");
        assert!(t.on(Ok(Event::Apply(new.clone())), &mut c), "the old object's record is gone");
        assert_eq!(cidrs_of(&t), None);
        assert_eq!(t.due(&c).len(), 1, "it waits to be read");
        // Read: the new CIDRs, and it is a peer again.
        c.insert("new", Some(&["10.244.7.0/24"]), true, Duration::ZERO);
        assert!(t.on(Ok(Event::Apply(new)), &mut c));
        assert_eq!(cidrs_of(&t), Some(vec!["10.244.7.0/24".to_owned()]));
        assert!(t.waiting.is_empty());
    }

    #[test]
    fn pod_cidrs_are_read_again_only_when_backend_data_shows_they_are_due() {
        let mut c = PodCidrs::default();
        let bare = meta("u1", &[]);
        let data = meta("u1", &[(super::super::BACKEND_DATA, r#"{"vni":1,"vtepMAC":"02:00:00:00:00:02"}"#)]);
        assert!(c.due(&bare.metadata), "never read");
        // Read before the controller-manager assigned a CIDR, and before its agent published.
        c.insert("u1", Some(&[]), false, Duration::ZERO);
        assert!(!c.due(&bare.metadata), "status updates of a node without a CIDR cost no read");
        assert!(c.due(&data.metadata), "its agent published: read at once");
        // Read again, still empty: at most once per REREAD_AFTER from now on.
        c.insert("u1", Some(&[]), true, Duration::ZERO);
        assert!(!c.due(&data.metadata));
        c.insert("u1", Some(&[]), true, REREAD_AFTER);
        assert!(c.due(&data.metadata));
        // Known CIDRs are never read again.
        c.insert("u1", Some(&["10.244.0.0/24"]), true, REREAD_AFTER * 100);
        assert!(!c.due(&data.metadata) && !c.due(&bare.metadata));
        // A failed read is retried after REREAD_AFTER.
        c.insert("u1", None, true, Duration::ZERO);
        assert!(!c.due(&data.metadata));
        c.insert("u1", None, true, REREAD_AFTER);
        assert!(c.due(&bare.metadata));
        c.forget(&bare.metadata);
        assert!(c.due(&bare.metadata), "forgotten: read again");
    }
}
