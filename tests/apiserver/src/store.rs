//! The object store: Nodes by name, a global resourceVersion, a bounded
//! history of changes for watches, and the patch semantics.
//!
//! Every write bumps the resourceVersion, stamps it on the object and appends
//! `(rv, type, object)` to the history; a watch from `rv` replays what came
//! after it, or gets 410 Gone when `rv` predates the history (compaction).

use std::collections::{BTreeMap, VecDeque};
use std::time::SystemTime;

use k8s_openapi::api::core::v1::Node;
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
pub struct Change {
    /// The resourceVersion the change created.
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// The object after the change (before, for a deletion).
    pub object: Value,
}

/// An API error, as a `Status`.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP code.
    pub code: u16,
    /// Status reason (`NotFound`, `AlreadyExists`, …).
    pub reason: &'static str,
    /// Message.
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into() }
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code})
    }
}

/// All Nodes and their history.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    nodes: BTreeMap<String, Value>,
    history: VecDeque<Change>,
    history_cap: usize,
    /// A watch from below this resourceVersion is too old (410).
    compacted: u64,
    uid: u64,
    /// Live watchers.
    pub tx: broadcast::Sender<Change>,
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Whether `node` matches a `labelSelector` (equality-based: `k=v`, `k==v`,
/// `k!=v`, `k`, `!k`, comma-separated, all must hold) and a `fieldSelector`
/// (`metadata.name=x`, `metadata.name!=x`; other fields are refused, as the
/// real server refuses fields it does not index).
pub fn selected(node: &Value, labels: Option<&str>, fields: Option<&str>) -> Result<bool, ApiError> {
    let label = |k: &str| node.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str);
    for term in labels.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let ok = if let Some((k, v)) = term.split_once("!=") {
            label(k.trim()) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k.trim()) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            label(k.trim()).is_none()
        } else {
            label(term).is_some()
        };
        if !ok {
            return Ok(false);
        }
    }
    let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
    for term in fields.unwrap_or("").split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let (key, want, equal) = match term.split_once("!=") {
            Some((k, v)) => (k, v, false),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, true),
                None => {
                    return Err(ApiError::new(400, "BadRequest", format!("invalid field selector {term:?}")));
                }
            },
        };
        if key.trim() != "metadata.name" {
            return Err(ApiError::new(
                400,
                "BadRequest",
                format!("field label not supported: {}", key.trim()),
            ));
        }
        if (name == want.trim()) != equal {
            return Ok(false);
        }
    }
    Ok(true)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge patch as the API server applies it to Nodes: a merge
/// patch, except that the lists Kubernetes declares with a merge key
/// (`status.conditions` and `status.addresses` by `type`) merge item by item.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    for key in ["conditions", "addresses"] {
        let Some(items) = patch.pointer(&format!("/status/{key}")).and_then(Value::as_array).cloned() else {
            continue;
        };
        let mut merged =
            target.pointer(&format!("/status/{key}")).and_then(Value::as_array).cloned().unwrap_or_default();
        for item in items {
            match merged.iter_mut().find(|m| m["type"] == item["type"]) {
                Some(existing) => merge_patch(existing, &item),
                None => merged.push(item),
            }
        }
        patch["status"][key] = Value::Array(merged);
    }
    merge_patch(target, &patch);
}

impl Store {
    pub fn new(history_cap: usize) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Store {
            rv: 1,
            nodes: BTreeMap::new(),
            history: VecDeque::new(),
            history_cap,
            compacted: 1,
            uid: 0,
            tx,
        }
    }

    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// All nodes, by name.
    pub fn list(&self) -> Vec<Value> {
        self.nodes.values().cloned().collect()
    }

    pub fn get(&self, name: &str) -> Result<Value, ApiError> {
        self.nodes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("nodes \"{name}\" not found")))
    }

    /// Checks the object is a valid Node (through k8s-openapi's types).
    fn validate(obj: &Value) -> Result<(), ApiError> {
        serde_json::from_value::<Node>(obj.clone())
            .map(|_| ())
            .map_err(|e| ApiError::new(422, "Invalid", format!("Node is invalid: {e}")))
    }

    fn record(&mut self, kind: &'static str, object: Value) {
        let change = Change { rv: self.rv, kind, object };
        if self.history.len() == self.history_cap {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        self.history.push_back(change.clone());
        let _ = self.tx.send(change);
    }

    fn stamp(&mut self, obj: &mut Value) {
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
    }

    pub fn create(&mut self, mut obj: Value) -> Result<Value, ApiError> {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_owned();
        if name.is_empty() {
            return Err(ApiError::new(422, "Invalid", "metadata.name is required"));
        }
        if self.nodes.contains_key(&name) {
            return Err(ApiError::new(409, "AlreadyExists", format!("nodes \"{name}\" already exists")));
        }
        obj["apiVersion"] = json!("v1");
        obj["kind"] = json!("Node");
        self.uid += 1;
        obj["metadata"]["uid"] = json!(format!("00000000-0000-0000-0000-{:012x}", self.uid));
        obj["metadata"]["creationTimestamp"] = json!(now());
        Self::validate(&obj)?;
        self.stamp(&mut obj);
        self.nodes.insert(name, obj.clone());
        self.record("ADDED", obj.clone());
        Ok(obj)
    }

    /// Replaces a node (PUT); `metadata.resourceVersion`, when given, must match.
    pub fn replace(&mut self, name: &str, mut obj: Value, status_only: bool) -> Result<Value, ApiError> {
        let current = self.get(name)?;
        if let Some(rv) = obj.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
            if rv != current["metadata"]["resourceVersion"] {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!(
                        "Operation cannot be fulfilled on nodes \"{name}\": the object has been modified"
                    ),
                ));
            }
        }
        if status_only {
            obj["spec"] = current["spec"].clone();
        } else {
            obj["status"] = current["status"].clone();
        }
        self.commit(name, current, obj)
    }

    /// Applies a patch of the given content type.
    pub fn patch(
        &mut self,
        name: &str,
        content_type: &str,
        patch: &Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        let current = self.get(name)?;
        let mut next = current.clone();
        match content_type {
            "application/merge-patch+json" => merge_patch(&mut next, patch),
            "application/strategic-merge-patch+json" => strategic_merge_patch(&mut next, patch),
            other => {
                return Err(ApiError::new(
                    415,
                    "UnsupportedMediaType",
                    format!("the patch type {other} is not supported"),
                ));
            }
        }
        if status_only {
            // nodes/status changes status and metadata (as the real server's
            // Node status strategy does: Flannel publishes its annotations
            // that way), never spec.
            next["spec"] = current["spec"].clone();
        } else {
            next["status"] = current["status"].clone();
        }
        self.commit(name, current, next)
    }

    fn commit(&mut self, name: &str, current: Value, mut next: Value) -> Result<Value, ApiError> {
        if let Some(o) = next.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        // Identity fields are the server's.
        for f in ["name", "uid", "creationTimestamp", "resourceVersion"] {
            next["metadata"][f] = current["metadata"][f].clone();
        }
        next["apiVersion"] = json!("v1");
        next["kind"] = json!("Node");
        Self::validate(&next)?;
        if next == current {
            return Ok(current);
        }
        self.stamp(&mut next);
        self.nodes.insert(name.to_owned(), next.clone());
        self.record("MODIFIED", next.clone());
        Ok(next)
    }

    pub fn delete(&mut self, name: &str) -> Result<Value, ApiError> {
        let mut obj = self
            .nodes
            .remove(name)
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("nodes \"{name}\" not found")))?;
        self.stamp(&mut obj);
        self.record("DELETED", obj.clone());
        Ok(obj)
    }

    /// What a watch from `from` starts with, and the rv it then follows from.
    /// `None` means "send the current state as ADDED".
    pub fn replay(&self, from: Option<u64>) -> Result<(Vec<Change>, u64), ApiError> {
        match from {
            None | Some(0) => Ok((
                self.nodes
                    .values()
                    .map(|o| Change { rv: self.rv, kind: "ADDED", object: o.clone() })
                    .collect(),
                self.rv,
            )),
            Some(rv) if rv < self.compacted => Err(ApiError::new(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", self.compacted),
            )),
            Some(rv) => Ok((self.history.iter().filter(|c| c.rv > rv).cloned().collect(), self.rv)),
        }
    }

    /// Forgets all history and moves the resourceVersion on (as etcd's
    /// compaction does while writes go on): every watch that resumes from
    /// an earlier resourceVersion gets 410 Gone and must list again.
    pub fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.compacted = self.rv;
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn selectors_select_as_the_real_server_does() {
        let n = json!({"metadata": {"name": "n1", "labels": {"role": "edge"}}});
        let sel = |l: Option<&str>, f: Option<&str>| selected(&n, l, f).unwrap();
        assert!(sel(None, None));
        assert!(!sel(Some("no=such"), None));
        assert!(sel(Some("role=edge"), None) && sel(Some("role==edge,role"), None));
        assert!(!sel(Some("role!=edge"), None) && !sel(Some("!role"), None) && sel(Some("!zone"), None));
        assert!(!sel(None, Some("metadata.name=zzz")) && sel(None, Some("metadata.name=n1")));
        assert!(sel(None, Some("metadata.name!=zzz")));
        assert_eq!(selected(&n, None, Some("spec.podCIDR=x")).unwrap_err().code, 400);
    }

    #[test]
    fn a_status_patch_keeps_metadata_and_never_spec() {
        let mut s = Store::new(16);
        s.create(json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.244.1.0/24"}}))
            .unwrap();
        let patch = json!({"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "198.18.0.11"}},
                           "spec": {"podCIDR": "10.244.9.0/24"},
                           "status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}]}});
        let n = s.patch("n1", "application/strategic-merge-patch+json", &patch, true).unwrap();
        assert_eq!(n["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"], "198.18.0.11");
        assert_eq!(n["spec"]["podCIDR"], "10.244.1.0/24");
        assert_eq!(n["status"]["conditions"][0]["type"], "NetworkUnavailable");
    }

    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
    }

    #[test]
    fn strategic_merge_merges_conditions_by_type() {
        let mut t = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}, {"type": "MemoryPressure", "status": "False"}]}});
        strategic_merge_patch(
            &mut t,
            &json!({"status": {"conditions": [{"type": "NetworkUnavailable", "status": "False"}, {"type": "Ready", "status": "False"}]}}),
        );
        let c = t["status"]["conditions"].as_array().unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c[0]["status"], "False");
    }

    #[test]
    fn history_and_compaction() {
        let mut s = Store::new(3);
        s.create(json!({"metadata": {"name": "n1"}})).unwrap();
        let rv = s.rv();
        s.patch("n1", "application/merge-patch+json", &json!({"metadata": {"labels": {"a": "b"}}}), false)
            .unwrap();
        let (changes, _) = s.replay(Some(rv)).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].kind, "MODIFIED");
        s.compact();
        assert_eq!(s.replay(Some(rv)).unwrap_err().code, 410);
        // A no-op patch changes nothing and bumps nothing.
        let before = s.rv();
        s.patch("n1", "application/merge-patch+json", &json!({"metadata": {"labels": {"a": "b"}}}), false)
            .unwrap();
        assert_eq!(s.rv(), before);
        // Status patches leave spec alone and vice versa.
        s.patch(
            "n1",
            "application/merge-patch+json",
            &json!({"spec": {"podCIDR": "10.244.1.0/24"}, "status": {"phase": "x"}}),
            false,
        )
        .unwrap();
        assert!(s.get("n1").unwrap()["status"].get("phase").is_none());
        assert_eq!(s.get("n1").unwrap()["spec"]["podCIDR"], "10.244.1.0/24");
    }
}
