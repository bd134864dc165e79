//! Watching Nodes: a watcher started over when its list hangs, the
//! tracker that turns reflector events into wake-ups and readiness, and the
//! record of what RBAC refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use felt_proto::NodeRecord;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use kube::runtime::watcher;
use tracing::{info, warn};

use felt_proto::annotations::Dialect;

use super::node::record_from_node;

/// How long a list may take before the watcher is started over: a list
/// whose answer never comes (a lost response, a server that accepted the
/// request and hung) would otherwise keep the agent "not listed" forever.
const LIST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

type NodeEvents = futures::stream::BoxStream<'static, Result<watcher::Event<Node>, watcher::Error>>;

/// The Node watcher, started over when a list has not finished within
/// [`LIST_TIMEOUT`]. A list is due when the watcher starts and after each
/// error (it may relist, or resume silently); events end the wait.
pub(super) fn restarting_watcher(
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

/// What the reflector's events mean to the agent: a wake-up when a record
/// felt uses changed, or at the end of a relist; readiness and RBAC notes
/// on the way.
pub(super) struct Tracker {
    /// Each Node's record (or why it is not one) as last seen.
    pub(super) seen: BTreeMap<String, Seen>,
    /// A relist in progress.
    pub(super) relist: Option<BTreeMap<String, Seen>>,
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

fn seen_of(n: &Node, dialect: Dialect) -> Seen {
    let used = record_from_node(n, dialect).map_err(|e| crate::util::error_chain(&e))?;
    let key = dialect.keys().public_ip_overwrite;
    let overwrite = n.metadata.annotations.as_ref().and_then(|a| a.get(key)).cloned();
    Ok((used, overwrite))
}

impl Tracker {
    /// Whether `event` should wake the agent.
    pub(super) fn on(&mut self, event: Result<watcher::Event<Node>, watcher::Error>) -> bool {
        match event {
            Ok(watcher::Event::Init) => {
                self.relist = Some(BTreeMap::new());
                false
            }
            Ok(watcher::Event::InitApply(n)) => {
                if let Some(r) = self.relist.as_mut() {
                    r.insert(n.metadata.name.clone().unwrap_or_default(), seen_of(&n, self.dialect));
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
                let rec = seen_of(&n, self.dialect);
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

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;

    fn node(ann: &[(&str, &str)]) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n1", "annotations": ann.iter().copied().collect::<BTreeMap<_, _>>()},
            "spec": {"podCIDRs": ["10.244.0.0/24"]},
        }))
        .unwrap()
    }

    #[test]
    fn removing_an_overwrite_the_node_published_wakes_its_agent() {
        let mut t = Tracker {
            seen: BTreeMap::new(),
            relist: None,
            synced: Arc::default(),
            listed: Arc::default(),
            denied: Denials::default(),
            dialect: Dialect::Felt,
        };
        let (ip, over) = (super::super::PUBLIC_IP, super::super::PUBLIC_IP_OVERWRITE);
        // The agent published its overwrite as its public-ip…
        assert!(t.on(Ok(Event::Apply(node(&[(ip, "198.18.0.99"), (over, "198.18.0.99")])))));
        // …so without the overwrite, peers' view of the node is the same, but
        // its agent must publish its own address again.
        assert!(
            t.on(Ok(Event::Apply(node(&[(ip, "198.18.0.99")])))),
            "no wake-up: the node keeps the old overwrite"
        );
        // A heartbeat-like update that changes nothing felt uses does not wake it.
        assert!(!t.on(Ok(Event::Apply(node(&[(ip, "198.18.0.99"), ("example.com/other", "x")])))));
    }
}
