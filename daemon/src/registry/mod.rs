//! Registries: where the agent leases its subnet, publishes itself and
//! learns its peers. Today the file registry; Kubernetes comes next, as
//! another variant of [`Registry`].

pub mod file;

use felt_proto::NodeRecord;

/// One snapshot of the cluster as a registry holds it.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Records that parsed and validated.
    pub records: Vec<NodeRecord>,
    /// Documents that did not: (document name, why).
    pub malformed: Vec<(String, String)>,
}
