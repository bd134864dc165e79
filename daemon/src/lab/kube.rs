//! The lab on a Kubernetes API server: Node objects instead of files.
//!
//! The API server must be reachable from the lab's namespaces: it listens
//! inside the underlay namespace `<lab>-ul`, where the bridge holds the
//! lab's host address (`.1` of the underlay /24). Every call here runs
//! inside that namespace, as the agents' calls do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use felt_proto::NodeRecord;
use felt_proto::annotations::Dialect;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;

use super::LabError;
use crate::netns;
use crate::registry::kube::{client, record_from_node};

fn in_ns<T, F, Fut>(ns: &Path, kubeconfig: &Path, job: F) -> Result<T, LabError>
where
    T: Send + 'static,
    F: FnOnce(Api<Node>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let kubeconfig = kubeconfig.to_owned();
    netns::block_on_in(ns, move || async move {
        let c = client(Some(&kubeconfig)).await.map_err(|e| crate::util::error_chain(&e))?;
        job(Api::all(c)).await
    })
    .map_err(|e| LabError::io("entering", ns, e))?
    .map_err(LabError::Invalid)
}

/// Waits until the API server answers from inside the lab.
pub fn wait_api(ns: &Path, kubeconfig: &Path, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        let r = in_ns(ns, kubeconfig, |api| async move {
            api.list(&ListParams::default().limit(1)).await.map(|_| ()).map_err(|e| e.to_string())
        });
        match r {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                return Err(LabError::Timeout(format!(
                    "the API server in {} did not answer: {e}",
                    kubeconfig.display()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Creates a Node with its pod CIDR set, as the controller-manager does
/// with `--allocate-node-cidrs`, and the annotations a kubelet registers
/// with (flanneld v0.28 panics on a Node with none: it writes into a nil map).
pub fn create_node(
    ns: &Path,
    kubeconfig: &Path,
    name: &str,
    pod_cidrs: &[ipnet::IpNet],
) -> Result<(), LabError> {
    let cidrs: Vec<String> = pod_cidrs.iter().map(ToString::to_string).collect();
    let node: Node = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"felt.network/lab": "true"},
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": cidrs.first(), "podCIDRs": cidrs},
    }))
    .map_err(|e| LabError::Invalid(e.to_string()))?;
    let name = name.to_owned();
    in_ns(ns, kubeconfig, move |api| async move {
        api.create(&PostParams::default(), &node)
            .await
            .map(|_| ())
            .map_err(|e| format!("creating node {name}: {e}"))
    })
}

/// Deletes a Node; a missing one is fine.
pub fn delete_node(ns: &Path, kubeconfig: &Path, name: &str) -> Result<(), LabError> {
    let name = name.to_owned();
    in_ns(ns, kubeconfig, move |api| async move {
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == hyper::StatusCode::NOT_FOUND.as_u16() => Ok(()),
            Err(e) => Err(format!("deleting node {name}: {e}")),
        }
    })
}

/// Every Node that reduces to a valid record, by name.
pub fn records(
    ns: &Path,
    kubeconfig: &Path,
    dialect: Dialect,
) -> Result<BTreeMap<String, NodeRecord>, LabError> {
    in_ns(ns, kubeconfig, move |api| async move {
        let list = api.list(&ListParams::default()).await.map_err(|e| format!("listing nodes: {e}"))?;
        Ok(list
            .items
            .iter()
            .filter_map(|n| record_from_node(n, dialect).ok())
            .map(|r| (r.name.clone(), r))
            .collect())
    })
}

/// The kubeconfig path as the agents will read it.
pub fn absolute(kubeconfig: &Path) -> Result<PathBuf, LabError> {
    std::fs::canonicalize(kubeconfig).map_err(|e| LabError::io("reading", kubeconfig, e))
}

/// Sets (or with `None` removes) one annotation on a node. Returns when the
/// request was sent, stamped just before it left.
pub fn annotate(
    ns: &Path,
    kubeconfig: &Path,
    node: &str,
    key: &str,
    value: Option<String>,
) -> Result<std::time::SystemTime, LabError> {
    let (node, key) = (node.to_owned(), key.to_owned());
    in_ns(ns, kubeconfig, move |api| async move {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        let sent = std::time::SystemTime::now();
        api.patch(&node, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
            .await
            .map(|_| sent)
            .map_err(|e| format!("annotating {node}: {e}"))
    })
}
