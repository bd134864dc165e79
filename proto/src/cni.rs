//! The CNI protocol's JSON, as felt's plugin reads and writes it.
//!
//! The container runtime runs the plugin with the command and the pod in the
//! environment (`CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`)
//! and the network configuration on stdin; the plugin answers with a
//! [`CniResult`], a [`VersionReply`] or a [`CniError`] on stdout (CNI spec
//! 1.1, "Section 5: Result Types"). Nothing here does I/O: the plugin hands
//! the bytes in and prints what comes out.
//!
//! Versions: felt answers 0.3.0 through 1.1.0. A result is shaped for the
//! version the runtime asked for ([`CniResult::for_version`]): before 1.0.0
//! every IP carries `"version": "4"`, and only 1.1.0 results carry `mtu`.
//! `CHECK` exists from 0.4.0, `STATUS` and `GC` from 1.1.0
//! ([`Command::since`]).

use std::net::IpAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// CNI versions the plugin answers to, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest version the plugin speaks; `VERSION` answers in it.
pub const CURRENT_VERSION: &str = "1.1.0";

/// The operation the runtime asks for (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container interface.
    Add,
    /// Detach it; succeeds when nothing is left to remove.
    Del,
    /// Verify an attachment is as `ADD` left it.
    Check,
    /// Report the versions the plugin speaks.
    Version,
    /// Whether the plugin is ready to `ADD` (1.1.0).
    Status,
    /// Release what belongs to attachments the runtime no longer lists (1.1.0).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The first spec version that defines the command.
    pub fn since(self) -> &'static str {
        match self {
            Command::Add | Command::Del | Command::Version => "0.3.0",
            Command::Check => "0.4.0",
            Command::Status | Command::Gc => "1.1.0",
        }
    }
}

/// Compares two `MAJOR.MINOR.PATCH` versions; `None` if either is malformed.
pub fn version_cmp(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    fn parts(v: &str) -> Option<[u32; 3]> {
        let mut it = v.split('.').map(|p| p.parse::<u32>().ok());
        let out = [it.next()??, it.next()??, it.next()??];
        it.next().is_none().then_some(out)
    }
    Some(parts(a)?.cmp(&parts(b)?))
}

/// One attachment the runtime still uses (`cni.dev/valid-attachments`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    /// The container's ID.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// The interface name inside the container.
    pub ifname: String,
}

/// The network configuration on stdin (one plugin's entry of a conflist, with
/// `name` and `cniVersion` filled in by the runtime). Fields felt does not
/// know (`capabilities`, `runtimeConfig`, other plugins' keys) are ignored,
/// as the spec asks.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct NetConf {
    /// Spec version the runtime speaks.
    pub cni_version: String,
    /// Network name; keys the address store.
    pub name: String,
    /// The plugin's type (`felt`).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// The agent's subnet file.
    #[serde(default = "default_subnet_file")]
    pub subnet_file: PathBuf,
    /// The node bridge.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Where pod addresses are kept.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The result of the plugins before this one in a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<CniResult>,
    /// With `GC`: the attachments the runtime still uses.
    #[serde(rename = "cni.dev/valid-attachments", default, skip_serializing_if = "Option::is_none")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Delegate mode, when present (even `{}`): the interface work goes to
    /// another plugin (`bridge` with `host-local` by default), as Flannel's
    /// plugin does; this object is that plugin's config, and felt fills in
    /// what it leaves out (the node's subnet, the MTU, the bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<serde_json::Map<String, serde_json::Value>>,
}

fn default_subnet_file() -> PathBuf {
    PathBuf::from("/run/felt/subnet.env")
}
fn default_bridge() -> String {
    "felt0".to_owned()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("/var/lib/cni/felt")
}

impl NetConf {
    /// Parses and checks a configuration: a version felt speaks, a name, a
    /// bridge name the kernel accepts.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let conf: NetConf = serde_json::from_slice(bytes).map_err(|e| {
            CniError::new(ErrorCode::DecodingFailure, "network config is not valid JSON of its shape")
                .details(e)
        })?;
        if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
            return Err(CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("cniVersion {} is not supported", conf.cni_version),
            )
            .details(format!("supported: {}", SUPPORTED_VERSIONS.join(", "))));
        }
        if conf.name.is_empty() || conf.name.contains(['/', '\0']) || conf.name.starts_with('.') {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!("network name {:?} is not usable", conf.name),
            ));
        }
        if conf.bridge.is_empty() || conf.bridge.len() > 15 || conf.bridge.contains(['/', ' ', '\0']) {
            return Err(CniError::new(
                ErrorCode::InvalidConfig,
                format!(
                    "bridge {:?} is not a Linux interface name (1-15 characters, no '/' or space)",
                    conf.bridge
                ),
            ));
        }
        Ok(conf)
    }

    /// Whether the config's version defines `command`.
    pub fn allows(&self, command: Command) -> bool {
        version_cmp(&self.cni_version, command.since()).is_some_and(|o| o.is_ge())
    }
}

/// An interface the plugin created or found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its MAC address (empty when it has none).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    /// Its MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The container's network namespace path; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

/// An address given to an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// `"4"` or `"6"`, only in results before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The address with its prefix length, e.g. `10.244.1.2/24`.
    pub address: IpNet,
    /// The default gateway for this subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces` of the interface holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

/// A route the plugin installed in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination.
    pub dst: IpNet,
    /// Next hop; absent means the gateway of the IP config.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings (felt sets none; chained results keep theirs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

/// The result of `ADD` (spec "Success"), also `prevResult` in a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// The version the result is shaped for.
    pub cni_version: String,
    /// Interfaces, host side and container side.
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    /// Addresses.
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    /// Routes in the container.
    #[serde(default)]
    pub routes: Vec<Route>,
    /// DNS.
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// An empty result to build on (or the previous plugin's, when chained).
    pub fn start(cni_version: &str, prev: Option<&CniResult>) -> CniResult {
        let mut r = prev.cloned().unwrap_or(CniResult {
            cni_version: String::new(),
            interfaces: Vec::new(),
            ips: Vec::new(),
            routes: Vec::new(),
            dns: Dns::default(),
        });
        r.cni_version = cni_version.to_owned();
        r
    }

    /// The result shaped for `version`: IP versions before 1.0.0, MTUs only
    /// from 1.1.0.
    pub fn for_version(mut self, version: &str) -> CniResult {
        let before = |v: &str| version_cmp(version, v).is_some_and(|o| o.is_lt());
        self.cni_version = version.to_owned();
        for ip in &mut self.ips {
            ip.version =
                before("1.0.0").then(|| if ip.address.addr().is_ipv4() { "4" } else { "6" }.to_owned());
        }
        if before("1.1.0") {
            for i in &mut self.interfaces {
                i.mtu = None;
            }
        }
        self
    }
}

/// The answer to `VERSION`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReply {
    /// The version of this reply.
    pub cni_version: String,
    /// Every version the plugin speaks.
    pub supported_versions: Vec<String>,
}

impl Default for VersionReply {
    fn default() -> Self {
        VersionReply {
            cni_version: CURRENT_VERSION.to_owned(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }
    }
}

/// The spec's error codes (CNI spec 1.1, "Error"), and felt's own from 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the config's cniVersion is not one the plugin speaks.
    IncompatibleVersion,
    /// 2: a field in the config is not supported.
    UnsupportedField,
    /// 3: the container is unknown or does not exist.
    UnknownContainer,
    /// 4: a required environment variable is missing or invalid.
    InvalidEnvironment,
    /// 5: an I/O failure (e.g. reading the config).
    IoFailure,
    /// 6: the config could not be decoded.
    DecodingFailure,
    /// 7: the config is invalid.
    InvalidConfig,
    /// 11: a transient failure; the runtime may try again later.
    TryAgainLater,
    /// 50: `STATUS`: the plugin cannot serve `ADD` now.
    NotAvailable,
    /// 100: `CHECK`: the attachment is not as `ADD` left it.
    AttachmentChanged,
    /// 101: the node's pod subnet has no free address.
    AddressesExhausted,
    /// 999: anything else (netlink, file system).
    Internal,
}

impl ErrorCode {
    /// The number on the wire.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::IncompatibleVersion => 1,
            ErrorCode::UnsupportedField => 2,
            ErrorCode::UnknownContainer => 3,
            ErrorCode::InvalidEnvironment => 4,
            ErrorCode::IoFailure => 5,
            ErrorCode::DecodingFailure => 6,
            ErrorCode::InvalidConfig => 7,
            ErrorCode::TryAgainLater => 11,
            ErrorCode::NotAvailable => 50,
            ErrorCode::AttachmentChanged => 100,
            ErrorCode::AddressesExhausted => 101,
            ErrorCode::Internal => 999,
        }
    }
}

/// An error reply: code, short message, details.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "camelCase")]
#[error("{msg}")]
pub struct CniError {
    /// The version of the reply (some plugins leave it out of errors).
    #[serde(default)]
    pub cni_version: String,
    /// The spec's code.
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer details (the cause).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub details: String,
}

impl CniError {
    /// An error with `code` and `msg`.
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> CniError {
        CniError {
            cni_version: CURRENT_VERSION.to_owned(),
            code: code.code(),
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Adds the cause.
    pub fn details(mut self, d: impl std::fmt::Display) -> CniError {
        self.details = d.to_string();
        self
    }

    /// An internal failure: `what` went wrong, because of `cause`.
    pub fn internal(what: impl Into<String>, cause: impl std::fmt::Display) -> CniError {
        CniError::new(ErrorCode::Internal, what).details(cause)
    }
}

#[cfg(test)]
mod tests;
