//! FeltNode objects: one per Node, written by that node's agent, holding
//! what its peers need of it (the node record: pod CIDRs, public IP,
//! backend data) and owned by its Node, so the garbage collector deletes it
//! with the Node.
//!
//! Why: a Node changes whenever its kubelet updates its status, and even a
//! metadata-only watch of Nodes carries each of those updates to every
//! agent (a new resourceVersion, the managed fields). A FeltNode changes
//! only when felt changes it, so a watch of FeltNodes costs the API server
//! next to nothing between real changes (Cilium's CiliumNode does the
//! same). The agent still publishes its Node's annotations, which older
//! agents and `kubectl get node` read.
//!
//! An agent in `auto` mode watches FeltNodes alone only once every Node
//! that carries backend data (felt's or Flannel's annotations) has a
//! FeltNode saying the same thing; until then it watches Node metadata as
//! before, so a cluster upgraded node by node, or with flanneld nodes,
//! never loses a peer. See [`covers`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use felt_proto::NodeRecord;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::core::{ApiResource, ClusterResourceScope};
use kube::runtime::watcher;
use serde_json::json;

use super::watch::{Known, Seen};

/// The API group of felt's own objects.
pub const GROUP: &str = "felt.network";

/// The FeltNode resource (`feltnodes.felt.network/v1`, cluster-scoped), as
/// [`FeltNodeObject`] names it.
pub fn resource() -> ApiResource {
    ApiResource::erase::<FeltNodeObject>(&())
}

/// A FeltNode as the agent reads it: the metadata it uses and the spec.
/// Leaner than a `DynamicObject`: `managedFields` (three quarters of a
/// FeltNode's metadata) and every other field are skipped as they are parsed,
/// never held, so an unpaged list of thousands costs its body and little more.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FeltNodeObject {
    /// Name, resource version and owner references only.
    #[serde(deserialize_with = "lean_meta", default)]
    pub metadata: ObjectMeta,
    /// The node record, less its name (the object's). Any JSON here parses;
    /// [`record_of`] says what is wrong with it, so one bad FeltNode cannot
    /// fail a list of good ones.
    #[serde(default)]
    pub spec: Option<serde_json::Value>,
}

/// The metadata fields felt reads of a FeltNode (the watcher needs the
/// resource version).
fn lean_meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ObjectMeta, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Lean {
        name: Option<String>,
        uid: Option<String>,
        resource_version: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
    }
    let Lean { name, uid, resource_version, owner_references } = serde::Deserialize::deserialize(d)?;
    Ok(ObjectMeta { name, uid, resource_version, owner_references, ..ObjectMeta::default() })
}

impl kube::Resource for FeltNodeObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "FeltNode".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "feltnodes".into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Where an agent reads its peers from.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PeerSource {
    /// FeltNodes once every Node with backend data has a matching one;
    /// Node metadata until then, and when the resource is not installed.
    #[default]
    Auto,
    /// Node metadata (annotations and `spec.podCIDRs`), always.
    Nodes,
    /// FeltNodes, always (a Node without one is not a peer).
    Feltnodes,
}

impl PeerSource {
    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            PeerSource::Auto => "auto",
            PeerSource::Nodes => "nodes",
            PeerSource::Feltnodes => "feltnodes",
        }
    }
}

/// The source an agent is reading now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reading {
    /// Not decided yet.
    #[default]
    Undecided,
    /// Node metadata.
    Nodes,
    /// FeltNodes.
    Feltnodes,
}

impl Reading {
    /// The name `/debug/state` and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            Reading::Undecided => "undecided",
            Reading::Nodes => "nodes",
            Reading::Feltnodes => "feltnodes",
        }
    }
}

/// The record a FeltNode holds, or why it holds none.
pub(super) fn record_of(obj: &FeltNodeObject) -> Result<NodeRecord, String> {
    let name = obj.metadata.name.clone().unwrap_or_default();
    let mut spec = match &obj.spec {
        Some(serde_json::Value::Object(spec)) => spec.clone(),
        Some(_) => return Err("its spec is not an object".into()),
        None => return Err("it has no spec".into()),
    };
    spec.insert("name".into(), name.into());
    let bytes = serde_json::to_vec(&spec).map_err(|e| e.to_string())?;
    NodeRecord::from_json(&bytes).map_err(|e| crate::util::error_chain(&e))
}

/// The uid of the Node that owns this FeltNode (the Node of the same name).
pub(super) fn owner_uid(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.api_version == "v1" && o.kind == "Node" && Some(&o.name) == meta.name.as_ref())
        .map(|o| o.uid.clone())
}

/// The FeltNode an agent applies for its node: `record`, owned by the Node
/// whose uid is `node_uid`.
pub fn object_for(record: &NodeRecord, node_uid: &str) -> serde_json::Value {
    let mut spec = serde_json::to_value(record).expect("a node record always serialises");
    if let Some(spec) = spec.as_object_mut() {
        spec.remove("name");
    }
    json!({
        "apiVersion": format!("{GROUP}/v1"),
        "kind": "FeltNode",
        "metadata": {
            "name": record.name,
            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": record.name, "uid": node_uid}],
        },
        "spec": spec,
    })
}

/// Whether the FeltNodes say of every node what its Node says: each Node
/// with backend data (or whose annotations are malformed) has a FeltNode
/// with the same record, and no FeltNode is without such a Node. When true,
/// reading FeltNodes instead of Nodes changes no peer. Returns how many
/// nodes differ (0: covered), `node` (this one) aside.
pub(super) fn covers(nodes: &BTreeMap<String, Seen>, records: &BTreeMap<String, Seen>, node: &str) -> usize {
    let published = |seen: &Seen| match seen {
        Ok((r, _)) => r.backend_data.is_some(),
        Err(_) => true,
    };
    fn record(seen: Option<&Seen>) -> Option<&NodeRecord> {
        seen.and_then(|s| s.as_ref().ok()).map(|(r, _)| r)
    }
    let mut differ = 0;
    for (name, seen) in nodes.iter().filter(|(n, s)| *n != node && published(s)) {
        let same = matches!((seen, record(records.get(name))), (Ok((r, _)), Some(f)) if r == f);
        differ += usize::from(!same);
    }
    differ + records.keys().filter(|n| *n != node && !nodes.get(*n).is_some_and(published)).count()
}

/// Turns FeltNode watch events into `Known::records` (and this node's
/// own FeltNode into `Known::own_feltnode`).
pub(super) struct RecordTracker {
    pub(super) known: Arc<Mutex<Known>>,
    /// This node's name.
    pub(super) node: String,
    /// A relist in progress.
    relist: Option<BTreeMap<String, Seen>>,
    /// Whether a list completed.
    pub(super) listed: bool,
}

/// What one FeltNode event changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Changed {
    /// A peer's record (or the end of a relist).
    pub(super) records: bool,
    /// This node's own FeltNode.
    pub(super) own: bool,
}

impl RecordTracker {
    pub(super) fn new(known: Arc<Mutex<Known>>, node: String) -> Self {
        RecordTracker { known, node, relist: None, listed: false }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes `obj` if it is this node's own; returns whether that changed.
    fn own(&self, obj: &FeltNodeObject, deleted: bool) -> bool {
        if obj.metadata.name.as_deref() != Some(self.node.as_str()) {
            return false;
        }
        let own = (!deleted).then(|| (record_of(obj).ok(), owner_uid(&obj.metadata)));
        let mut known = self.known();
        let changed = known.own_feltnode != own;
        known.own_feltnode = own;
        changed
    }

    /// What `event` changed.
    pub(super) fn on(&mut self, event: watcher::Event<FeltNodeObject>) -> Changed {
        let seen = |obj: &FeltNodeObject| -> Seen { record_of(obj).map(|r| (r, None)) };
        match event {
            watcher::Event::Init => {
                self.relist = Some(BTreeMap::new());
                Changed::default()
            }
            watcher::Event::InitApply(obj) => {
                let own = self.own(&obj, false);
                if let Some(r) = self.relist.as_mut() {
                    r.insert(obj.metadata.name.clone().unwrap_or_default(), seen(&obj));
                }
                Changed { records: false, own }
            }
            watcher::Event::InitDone => {
                let records = self.relist.take().unwrap_or_default();
                let mut known = self.known();
                // Gone while the watch was down: the agent publishes it again.
                if !records.contains_key(&self.node) {
                    known.own_feltnode = None;
                }
                known.records = records;
                known.touch_all();
                drop(known);
                self.listed = true;
                Changed { records: true, own: true }
            }
            watcher::Event::Apply(obj) => {
                let own = self.own(&obj, false);
                let name = obj.metadata.name.clone().unwrap_or_default();
                let now = seen(&obj);
                let mut known = self.known();
                known.touch(&name);
                let records = known.records.insert(name, now.clone()).as_ref() != Some(&now);
                drop(known);
                Changed { records, own }
            }
            watcher::Event::Delete(obj) => {
                let own = self.own(&obj, true);
                let name = obj.metadata.name.clone().unwrap_or_default();
                let mut known = self.known();
                known.touch(&name);
                Changed { records: known.records.remove(&name).is_some(), own }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::core::ApiResource;

    use super::*;

    fn record(name: &str, cidr: &str, mac: &str) -> NodeRecord {
        NodeRecord::from_json(
            format!(
                r#"{{"name":"{name}","podCIDRs":["{cidr}"],"publicIP":"198.18.0.2","backendType":"vxlan",
                    "backendData":{{"vni":1,"vtepMAC":"{mac}"}}}}"#
            )
            .as_bytes(),
        )
        .unwrap()
    }

    /// As the watch parses one: from the text.
    fn parsed(value: serde_json::Value) -> FeltNodeObject {
        serde_json::from_slice(&serde_json::to_vec(&value).unwrap()).unwrap()
    }

    #[test]
    fn a_record_round_trips_through_its_feltnode() {
        let r = record("n2", "10.244.2.0/24", "02:00:00:00:00:02");
        let obj = object_for(&r, "uid-2");
        assert_eq!(obj["spec"]["backendData"]["vtepMAC"], "02:00:00:00:00:02");
        assert!(obj["spec"].get("name").is_none(), "the name is the object's");
        let obj = parsed(obj);
        assert_eq!(record_of(&obj), Ok(r));
        assert_eq!(owner_uid(&obj.metadata).as_deref(), Some("uid-2"));
        // Another kind's owner reference is not the Node's.
        let mut other = obj.clone();
        other.metadata.owner_references.as_mut().unwrap()[0].kind = "Pod".into();
        assert_eq!(owner_uid(&other.metadata), None);
        let ar: ApiResource = resource();
        assert_eq!((ar.api_version.as_str(), ar.plural.as_str()), ("felt.network/v1", "feltnodes"));
    }

    #[test]
    fn a_feltnode_is_read_without_what_felt_does_not_use() {
        let r = record("n2", "10.244.2.0/24", "02:00:00:00:00:02");
        let mut obj = object_for(&r, "uid-2");
        let meta = obj["metadata"].as_object_mut().unwrap();
        meta.insert("uid".into(), json!("f-uid"));
        meta.insert("resourceVersion".into(), json!("42"));
        meta.insert("generation".into(), json!(1));
        meta.insert("creationTimestamp".into(), json!("2026-12-01T00:00:00Z"));
        meta.insert("labels".into(), json!({"a": "b"}));
        meta.insert(
            "managedFields".into(),
            json!([{"apiVersion": "felt.network/v1", "fieldsType": "FieldsV1", "manager": "felt",
                    "operation": "Apply", "fieldsV1": {"f:spec": {"f:podCIDRs": {}}}}]),
        );
        let lean = parsed(obj.clone());
        assert_eq!(lean.metadata.name.as_deref(), Some("n2"));
        assert_eq!(lean.metadata.uid.as_deref(), Some("f-uid"));
        assert_eq!(lean.metadata.resource_version.as_deref(), Some("42"), "the watcher resumes from it");
        assert_eq!(owner_uid(&lean.metadata).as_deref(), Some("uid-2"));
        assert_eq!(lean.metadata.managed_fields, None, "never held");
        assert_eq!(lean.metadata.labels, None);
        assert_eq!(record_of(&lean), Ok(r.clone()));
        // Inside a watch event, whichever key comes first (the spec is parsed
        // into a value, not kept as raw text, which a buffered event could not hold).
        for line in [
            json!({"type": "MODIFIED", "object": obj}).to_string(),
            format!(r#"{{"object":{obj},"type":"MODIFIED"}}"#),
        ] {
            let event: kube::core::WatchEvent<FeltNodeObject> = serde_json::from_str(&line).unwrap();
            let kube::core::WatchEvent::Modified(o) = event else { panic!("{line}") };
            assert_eq!(record_of(&o), Ok(r.clone()));
        }
    }

    #[test]
    fn a_malformed_feltnode_says_why() {
        for (spec, want) in [
            (json!(null), "no spec"),
            (json!("x"), "not an object"),
            (json!({"podCIDRs": ["banana"]}), "malformed node record"),
            (json!({"backendData": {"vni": 1, "vtepMAC": "01:00:5e:00:00:01"}}), "unicast"),
            (json!({"extra": 1}), "unknown field"),
        ] {
            let mut obj =
                json!({"apiVersion": "felt.network/v1", "kind": "FeltNode", "metadata": {"name": "n2"}});
            if !spec.is_null() {
                obj["spec"] = spec;
            }
            let why = record_of(&parsed(obj)).unwrap_err();
            assert!(why.contains(want), "{why} lacks {want}");
        }
    }

    #[test]
    fn feltnodes_cover_the_nodes_only_when_they_say_the_same() {
        let seen = |r: NodeRecord| -> Seen { Ok((r, None)) };
        let (a, b) = (
            record("a", "10.244.1.0/24", "02:00:00:00:00:01"),
            record("b", "10.244.2.0/24", "02:00:00:00:00:02"),
        );
        let mut bare = NodeRecord::new("c");
        bare.pod_cidrs = vec!["10.244.3.0/24".parse().unwrap()];
        let nodes: BTreeMap<String, Seen> =
            [("a".into(), seen(a.clone())), ("b".into(), seen(b.clone())), ("c".into(), seen(bare))].into();
        let mut records: BTreeMap<String, Seen> = [("a".into(), seen(a.clone()))].into();
        assert_eq!(covers(&nodes, &records, "me"), 1, "b has no FeltNode");
        assert_eq!(covers(&nodes, &records, "b"), 0, "this node's own is not counted");
        records.insert("b".into(), seen(record("b", "10.244.2.0/24", "02:00:00:00:00:99")));
        assert_eq!(covers(&nodes, &records, "me"), 1, "b's FeltNode says another MAC");
        records.insert("b".into(), seen(b));
        assert_eq!(covers(&nodes, &records, "me"), 0, "c has published nothing: it needs no FeltNode");
        records.insert("z".into(), seen(record("z", "10.244.9.0/24", "02:00:00:00:00:09")));
        assert_eq!(covers(&nodes, &records, "me"), 1, "a FeltNode whose Node is gone");
        records.remove("z");
        let mut nodes = nodes;
        nodes.insert("m".into(), Err("malformed annotations".into()));
        assert_eq!(
            covers(&nodes, &records, "me"),
            1,
            "a Node with malformed annotations keeps Node watching"
        );
    }
}
