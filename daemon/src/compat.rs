//! `--compat flannel`: the conventions of the agent felt lives beside and
//! takes over from. In this mode felt reads and writes Flannel's Node
//! annotations, runs `flannel.<VNI>` with the VTEP MAC the node already
//! published, writes `/run/flannel/subnet.env` (so Flannel's CNI plugin
//! and conflist keep working), owns the `proto boot` routes on that device
//! as flanneld leaves them, and reads `net-conf.json` in Flannel's shape:
//! a flanneld node switched to felt keeps every kernel object it had.

use felt_overlay::RouteTag;
use felt_proto::annotations::Dialect;

/// Whose conventions the agent keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Compat {
    /// felt's own: `felt.network/` annotations, `felt.<VNI>`,
    /// `/run/felt/subnet.env`, routes `proto 76`.
    #[default]
    None,
    /// Flannel's: its annotations, `flannel.<VNI>`, `/run/flannel/subnet.env`,
    /// routes `proto boot`, its `net-conf.json`.
    Flannel,
}

impl Compat {
    /// The Node annotations the agent reads and writes.
    pub fn dialect(self) -> Dialect {
        match self {
            Compat::None => Dialect::Felt,
            Compat::Flannel => Dialect::Flannel,
        }
    }

    /// The VXLAN device's name when `--device` does not give one.
    pub fn default_device(self, vni: u32) -> String {
        match self {
            Compat::None => felt_overlay::dataplane::default_device(vni),
            Compat::Flannel => format!("flannel.{vni}"),
        }
    }

    /// The subnet file when `--subnet-file` does not give one.
    pub fn default_subnet_file(self) -> &'static str {
        match self {
            Compat::None => "/run/felt/subnet.env",
            Compat::Flannel => "/run/flannel/subnet.env",
        }
    }

    /// The subnet file's key prefix (`FELT_SUBNET`, `FLANNEL_SUBNET`, …).
    pub fn subnet_prefix(self) -> &'static str {
        match self {
            Compat::None => "FELT",
            Compat::Flannel => "FLANNEL",
        }
    }

    /// The routes the agent owns.
    pub fn route_tag(self) -> RouteTag {
        match self {
            Compat::None => RouteTag::FELT,
            Compat::Flannel => RouteTag::FLANNEL,
        }
    }

    /// The flag's value, for logs and `/debug/state`.
    pub fn name(self) -> &'static str {
        match self {
            Compat::None => "none",
            Compat::Flannel => "flannel",
        }
    }
}
