//! The lab on a real control plane: etcd and kube-apiserver built from the
//! pinned Go module `tests/k8s`, started by `felt lab up --registry kube`
//! inside the lab, with the agents running as the `felt` ServiceAccount of
//! `deploy/felt.yaml`.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::harness::{TestLab, control_plane_bin, require_root};

fn real_lab(nodes: u32, pods: u32) -> TestLab {
    let bin = control_plane_bin();
    let bin = bin.to_str().unwrap();
    TestLab::up_named(&TestLab::unique_name(), nodes, pods, &["--registry", "kube", "--control-plane", bin])
}

/// `kubectl` as the lab's admin, inside the lab's underlay namespace.
fn kubectl(lab: &TestLab, args: &[&str]) -> (bool, String, String) {
    let kubeconfig = lab.lab_dir().join("control-plane").join("admin.kubeconfig");
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("{}-ul", lab.name), "kubectl", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(args)
        .output()
        .expect("kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The audit log's events of `user`: (verb, resource[/subresource], decision).
fn requests_of(lab: &TestLab, user: &str) -> Vec<(String, String, String)> {
    let log = std::fs::read_to_string(lab.lab_dir().join("control-plane").join("audit.log")).unwrap();
    log.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["user"]["username"] == user)
        .map(|e| {
            let r = &e["objectRef"];
            let resource = match r["subresource"].as_str() {
                Some(sub) => format!("{}/{sub}", r["resource"].as_str().unwrap_or("")),
                None => r["resource"].as_str().unwrap_or("").to_owned(),
            };
            let decision =
                e["annotations"]["authorization.k8s.io/decision"].as_str().unwrap_or("").to_owned();
            (e["verb"].as_str().unwrap_or("").to_owned(), resource, decision)
        })
        .collect()
}

#[test]
fn a_real_control_plane_carries_the_lab_with_deploys_rbac_and_no_more() {
    if !require_root("a_real_control_plane_carries_the_lab_with_deploys_rbac_and_no_more") {
        return;
    }
    let lab = real_lab(3, 1);
    let check = lab.felt(&["lab", "check"]);
    assert_eq!(check.lines().last(), Some("6/6 pod pairs reachable"), "{check}");

    // kubectl's view: felt's annotations and the NetworkUnavailable condition.
    let (ok, nodes, err) = kubectl(&lab, &["get", "nodes", "-o", "json"]);
    assert!(ok, "{err}");
    let nodes: Value = serde_json::from_str(&nodes).unwrap();
    let status = lab.status();
    for n in status["nodes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        let node = nodes["items"].as_array().unwrap().iter().find(|x| x["metadata"]["name"] == name).unwrap();
        let ann = &node["metadata"]["annotations"];
        assert_eq!(ann["felt.network/backend-type"], "vxlan", "{name}: {ann}");
        assert_eq!(ann["felt.network/public-ip"], n["underlay_ip"], "{name}: {ann}");
        let nu = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "NetworkUnavailable")
            .unwrap_or_else(|| panic!("{name} has no NetworkUnavailable condition"));
        assert_eq!(
            (nu["status"].as_str(), nu["reason"].as_str()),
            (Some("False"), Some("FeltIsUp")),
            "{name}"
        );
    }
    // Selectors select (felt-test-apiserver returned every node for these).
    let (_, out, err) = kubectl(&lab, &["get", "nodes", "-l", "no=such", "-o", "name"]);
    assert_eq!(out.trim(), "", "{err}");
    let (_, out, _) = kubectl(&lab, &["get", "nodes", "--field-selector", "metadata.name=zzz", "-o", "name"]);
    assert_eq!(out.trim(), "");
    let (_, out, _) = kubectl(&lab, &["get", "nodes", "--field-selector", "metadata.name=n2", "-o", "name"]);
    assert_eq!(out.trim(), "node/n2");

    // Least privilege: every request the agents made was allowed, under the
    // felt ServiceAccount, and the ClusterRole grants nothing they never used.
    let requests = requests_of(&lab, "system:serviceaccount:kube-system:felt");
    assert!(requests.len() >= 6, "the agents' requests are in the audit log: {requests:?}");
    let denied: Vec<_> = requests.iter().filter(|(_, _, d)| d != "allow").collect();
    assert!(denied.is_empty(), "denied: {denied:?}");
    let used: BTreeSet<(String, String)> = requests.iter().map(|(v, r, _)| (v.clone(), r.clone())).collect();
    let (ok, role, err) = kubectl(&lab, &["get", "clusterrole", "felt", "-o", "json"]);
    assert!(ok, "{err}");
    let role: Value = serde_json::from_str(&role).unwrap();
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for r in rule["resources"].as_array().unwrap() {
            for v in rule["verbs"].as_array().unwrap() {
                granted.insert((v.as_str().unwrap().to_owned(), r.as_str().unwrap().to_owned()));
            }
        }
    }
    let unused: Vec<_> = granted.difference(&used).collect();
    assert!(unused.is_empty(), "granted but never used: {unused:?} (used: {used:?})");
    let ungranted: Vec<_> = used.difference(&granted).collect();
    assert!(ungranted.is_empty(), "used without a grant: {ungranted:?}");
    lab.finish();
}
