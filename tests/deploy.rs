//! deploy/felt.yaml is what the agent needs: every document is a valid
//! Kubernetes object (checked with k8s-openapi's types), the RBAC grants
//! what the kube registry calls, and the embedded configs parse with the
//! same code the agent and the CNI plugin use.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::Deserialize;

fn documents() -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/felt.yaml")).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_yaml::Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(kind: &str) -> T {
    let doc = documents().into_iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    serde_yaml::from_value(doc).unwrap_or_else(|e| panic!("{kind} does not parse as k8s-openapi's type: {e}"))
}

#[test]
fn every_document_is_a_valid_object() {
    let kinds: Vec<String> = documents().iter().map(|d| d["kind"].as_str().unwrap().to_owned()).collect();
    assert_eq!(kinds, ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet"]);
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
