//! `felt install-cni`: puts the plugin and its network config on a node.
//!
//! The DaemonSet's init container runs it from an image that holds nothing
//! but the felt binary, so it needs no shell: it copies its own executable
//! to the CNI bin dir as `felt` and writes the conflist, each through a
//! temporary file and `rename(2)`, so a runtime never sees half a binary or
//! half a config. The conflist is checked with the plugin's own parser
//! before it is written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use felt_proto::cni::NetConf;
use serde_json::{Value, json};

/// Where to install.
#[derive(Debug, Clone)]
pub struct InstallCni {
    /// The binary to install (normally the running executable).
    pub binary: PathBuf,
    /// The CNI bin dir (`/opt/cni/bin`).
    pub bin_dir: PathBuf,
    /// The CNI config dir (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The conflist's file name (`10-felt.conflist`).
    pub conf_name: String,
    /// A conflist to install instead of the default one.
    pub conflist: Option<PathBuf>,
}

/// Why the plugin could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// A file could not be read or written.
    #[error("{action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The conflist is not one felt's plugin can run.
    #[error("conflist {path}: {why}")]
    BadConflist {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> InstallError {
    let path = path.to_owned();
    move |source| InstallError::Io { action, path, source }
}

/// The conflist felt installs by default: felt, then `portmap` for hostPorts.
pub fn default_conflist() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "felt",
        "plugins": [
            {"type": "felt", "subnetFile": "/run/felt/subnet.env", "bridge": "felt0", "dataDir": "/var/lib/cni/felt"},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

/// Checks a conflist: a list with a `felt` plugin whose config, given the
/// list's `name` and `cniVersion` as a runtime would, parses.
pub fn check_conflist(list: &Value) -> Result<(), String> {
    let plugins = list["plugins"].as_array().ok_or("no \"plugins\" list")?;
    let felt = plugins.iter().find(|p| p["type"] == "felt").ok_or("no plugin of type \"felt\"")?;
    let mut conf = felt.clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    NetConf::parse(conf.to_string().as_bytes()).map(|_| ()).map_err(|e| format!("{e}: {}", e.details))
}

/// Writes `bytes` to `dir/name` through a temporary file and a rename.
fn write_atomic(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> Result<(), InstallError> {
    fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let target = dir.join(name);
    crate::util::write_atomic_mode(&target, bytes, Some(mode)).map_err(io_err("writing", &target))
}

impl InstallCni {
    /// Installs the binary, then the conflist; returns the paths written.
    pub fn run(&self) -> Result<Vec<PathBuf>, InstallError> {
        let list = match &self.conflist {
            Some(path) => {
                let text = fs::read(path).map_err(io_err("reading", path))?;
                serde_json::from_slice(&text)
                    .map_err(|e| InstallError::BadConflist { path: path.clone(), why: e.to_string() })?
            }
            None => default_conflist(),
        };
        let source = self.conflist.clone().unwrap_or_else(|| PathBuf::from("(default)"));
        check_conflist(&list).map_err(|why| InstallError::BadConflist { path: source, why })?;
        let binary = fs::read(&self.binary).map_err(io_err("reading", &self.binary))?;
        write_atomic(&self.bin_dir, "felt", &binary, 0o755)?;
        let text = serde_json::to_string_pretty(&list).expect("a JSON value serializes");
        write_atomic(&self.conf_dir, &self.conf_name, format!("{text}\n").as_bytes(), 0o644)?;
        Ok(vec![self.bin_dir.join("felt"), self.conf_dir.join(&self.conf_name)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_binary_and_conflist_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let binary = tmp.path().join("src-felt");
        fs::write(&binary, b"\x7fELF pretend").unwrap();
        let install = InstallCni {
            binary,
            bin_dir: tmp.path().join("bin"),
            conf_dir: tmp.path().join("net.d"),
            conf_name: "10-felt.conflist".into(),
            conflist: None,
        };
        let written = install.run().unwrap();
        assert_eq!(fs::read(&written[0]).unwrap(), b"\x7fELF pretend");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&written[0]).unwrap().permissions().mode() & 0o777, 0o755);
        let list: Value = serde_json::from_slice(&fs::read(&written[1]).unwrap()).unwrap();
        assert_eq!(list["plugins"][1]["type"], "portmap");
        let leftovers: Vec<_> = fs::read_dir(tmp.path().join("net.d")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
    }

    #[test]
    fn refuses_a_conflist_the_plugin_cannot_run() {
        assert!(check_conflist(&default_conflist()).is_ok());
        let mut bad = default_conflist();
        bad["cniVersion"] = json!("0.1.0");
        assert!(check_conflist(&bad).unwrap_err().contains("not supported"));
        assert!(check_conflist(&json!({"name": "x", "plugins": []})).is_err());
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("list");
        fs::write(&path, "{ nope").unwrap();
        let install = InstallCni {
            binary: path.clone(),
            bin_dir: tmp.path().join("bin"),
            conf_dir: tmp.path().join("net.d"),
            conf_name: "10-felt.conflist".into(),
            conflist: Some(path),
        };
        assert!(matches!(install.run(), Err(InstallError::BadConflist { .. })));
        assert!(!tmp.path().join("bin").exists(), "nothing is installed from a bad conflist");
    }
}
