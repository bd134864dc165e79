//! deploy/felt.yaml is what the agent needs: every document is a valid
//! Kubernetes object (checked with k8s-openapi's types), the RBAC grants
//! what the kube registry calls, and the embedded configs parse with the
//! same code the agent and the CNI plugin use. deploy/felt-flannel-compat.yaml
//! runs the same agent with Flannel's conventions, beside kube-flannel.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

const FELT: &str = "felt.yaml";
const COMPAT: &str = "felt-flannel-compat.yaml";

fn documents_of(file: &str) -> Vec<serde_yaml::Value> {
    let path = format!("{}/../deploy/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn documents() -> Vec<serde_yaml::Value> {
    documents_of(FELT)
}

fn kind_of<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let doc =
        documents_of(file).into_iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    serde_yaml::from_value(doc)
        .unwrap_or_else(|e| panic!("{file} {kind} does not parse as k8s-openapi's type: {e}"))
}

fn of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    kind_of(FELT, kind)
}

#[test]
fn every_document_is_a_valid_object() {
    let kinds: Vec<String> = documents().iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
        of_kind("CustomResourceDefinition");
    let resource = felt::registry::kube::feltnode_resource();
    assert_eq!(crd.metadata.name, Some(format!("{}.{}", resource.plural, resource.group)));
    assert_eq!(crd.spec.scope, "Cluster", "one FeltNode per Node, cluster-scoped like Nodes");
    let _: ServiceAccount = of_kind("ServiceAccount");
    let _: ClusterRoleBinding = of_kind("ClusterRoleBinding");
}

#[test]
fn rbac_grants_what_the_kube_registry_calls() {
    let role: ClusterRole = of_kind("ClusterRole");
    let grants = |resource: &str, verb: &str| {
        role.rules
            .iter()
            .flatten()
            .any(|r| r.resources.iter().flatten().any(|x| x == resource) && r.verbs.iter().any(|v| v == verb))
    };
    for verb in ["get", "list", "watch", "patch"] {
        assert!(grants("nodes", verb), "nodes {verb}");
    }
    assert!(grants("nodes/status", "patch"));
    // Server-side apply of its FeltNode: patch, and create the first time.
    for verb in ["get", "list", "watch", "create", "patch"] {
        assert!(grants("feltnodes", verb), "feltnodes {verb}");
    }
    assert!(!grants("nodes", "delete"), "the agent never deletes nodes");
}

#[test]
fn configs_parse_and_the_daemonset_runs_the_agent() {
    let cm: ConfigMap = of_kind("ConfigMap");
    let data = cm.data.unwrap();
    felt_proto::NetConfig::from_json(data["net-conf.json"].as_bytes()).unwrap();
    let list: serde_json::Value = serde_json::from_str(&data["cni-conflist.json"]).unwrap();
    felt::cni::install::check_conflist(&list).unwrap();
    assert_eq!(list["plugins"][0]["bridge"], "felt0");
    assert_eq!(list, felt::cni::install::default_conflist(), "the manifest installs the default conflist");
    let ds: DaemonSet = of_kind("DaemonSet");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    let agent = &pod.containers[0];
    assert_eq!(agent.command.as_deref(), Some(&["/felt".to_owned(), "daemon".to_owned()][..]));
    // The image holds only the binary: no container may need a shell.
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        let cmd = c.command.as_deref().unwrap_or_default();
        assert_eq!(cmd.first().map(String::as_str), Some("/felt"), "{} runs {cmd:?}", c.name);
    }
    let env: Vec<&str> = agent.env.iter().flatten().map(|e| e.name.as_str()).collect();
    for want in ["NODE_NAME", "FELT_REGISTRY", "FELT_NET_CONF", "FELT_SUBNET_FILE"] {
        assert!(env.contains(&want), "{want} missing from {env:?}");
    }
    let probe_port = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref().and_then(|p| p.http_get.as_ref()).map(|h| h.port.clone())
    };
    let want = Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i32::from(
        felt::agent::debug::DEFAULT_PORT,
    )));
    assert_eq!(probe_port(&agent.readiness_probe), want);
    assert_eq!(probe_port(&agent.liveness_probe), want);
}

#[test]
fn the_flannel_compat_manifest_runs_the_same_agent_in_flannels_conventions() {
    let kinds: Vec<String> =
        documents_of(COMPAT).iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]);
    let _: ServiceAccount = kind_of(COMPAT, "ServiceAccount");
    let _: ClusterRoleBinding = kind_of(COMPAT, "ClusterRoleBinding");
    // The RBAC the lab's agents run with (felt.yaml's) but FeltNodes, which
    // compat mode never reads or writes (Flannel's nodes publish none), and no more.
    let (own, compat): (ClusterRole, ClusterRole) = (of_kind("ClusterRole"), kind_of(COMPAT, "ClusterRole"));
    let mut rules = own.rules.unwrap_or_default();
    rules.retain(|r| r.api_groups.as_deref() != Some(&[felt::registry::kube::GROUP.to_owned()][..]));
    assert_eq!(Some(rules), compat.rules);
    let ds: DaemonSet = kind_of(COMPAT, "DaemonSet");
    assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-flannel"), "where kube-flannel-cfg lives");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.node_selector.unwrap()["felt.network/agent"], "felt");
    assert!(pod.init_containers.is_none(), "Flannel's CNI plugin and conflist stay");
    let agent = &pod.containers[0];
    let env: std::collections::BTreeMap<&str, &str> =
        agent.env.iter().flatten().filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?))).collect();
    assert_eq!(env["FELT_COMPAT"], "flannel");
    assert_eq!(env["FELT_REGISTRY"], "kube");
    assert_eq!(env["FELT_SUBNET_FILE"], "/run/flannel/subnet.env", "what Flannel's CNI plugin reads");
    // The net-conf.json the agent reads is kube-flannel-cfg's, mounted where the env says.
    let mounts: std::collections::BTreeMap<&str, &str> =
        agent.volume_mounts.iter().flatten().map(|m| (m.name.as_str(), m.mount_path.as_str())).collect();
    let cfg = pod.volumes.iter().flatten().find(|v| v.config_map.is_some()).unwrap();
    assert_eq!(cfg.config_map.as_ref().unwrap().name, "kube-flannel-cfg");
    assert_eq!(env["FELT_NET_CONF"], format!("{}/net-conf.json", mounts[cfg.name.as_str()]));
    let run = pod.volumes.iter().flatten().find(|v| v.host_path.is_some()).unwrap();
    assert_eq!(run.host_path.as_ref().unwrap().path, "/run/flannel");
    assert_eq!(mounts[run.name.as_str()], "/run/flannel");
    // kube-flannel.yml's net-conf.json, which this agent reads.
    let (net, _) = felt_proto::NetConfig::from_flannel_json(
        br#"{"Network": "10.244.0.0/16", "EnableNFTables": false, "Backend": {"Type": "vxlan"}}"#,
    )
    .unwrap();
    assert_eq!(net, felt_proto::NetConfig::default());
}
