//! Node objects → node records: takes out of a Node what felt reads of it;
//! `felt_proto::annotations` makes the record (or says why not).

use felt_proto::NodeRecord;
use felt_proto::annotations::Dialect;
pub use felt_proto::annotations::NodeError;
use k8s_openapi::api::core::v1::Node;

/// Reduces a Node, read in `dialect`, to the record felt uses, or says why
/// it cannot. An operator's `public-ip-overwrite` takes the place of `public-ip`.
pub fn record_from_node(node: &Node, dialect: Dialect) -> Result<NodeRecord, NodeError> {
    record_from_node_with(node, dialect, true)
}

pub(super) fn record_from_node_with(
    node: &Node,
    dialect: Dialect,
    honour_overwrite: bool,
) -> Result<NodeRecord, NodeError> {
    super::watch::record_of(&node.metadata, &super::watch::pod_cidrs_of(node), dialect, honour_overwrite)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::registry::kube::{BACKEND_DATA, BACKEND_TYPE, PUBLIC_IP, PUBLIC_IP_OVERWRITE};

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
        let r = record_from_node(&n, Dialect::Felt).unwrap();
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
        let r = record_from_node(&n, Dialect::Felt).unwrap();
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
            let err = record_from_node(&node(&[ann], Some(vec!["10.244.2.0/24"]), None), Dialect::Felt)
                .unwrap_err();
            let err = crate::util::error_chain(&err);
            assert!(err.contains(want), "{ann:?}: {err}");
        }
        let err = record_from_node(&node(&[], Some(vec!["banana"]), None), Dialect::Felt).unwrap_err();
        assert!(matches!(&err, NodeError::PodCidr(c) if c == "banana"), "{err}");
        let err = record_from_node(
            &node(&[(BACKEND_DATA, "{not json")], Some(vec!["10.244.2.0/24"]), None),
            Dialect::Felt,
        );
        let chain = crate::util::error_chain(&err.unwrap_err());
        assert!(
            chain.contains("is not backend data: key must be a string"),
            "the parser's cause follows: {chain}"
        );
    }
}
