//! Delegate mode: the interface work is done by another CNI plugin (the
//! standard `bridge` with `host-local` addresses by default), as Flannel's
//! plugin does. felt's part is the node's facts: it reads the agent's subnet
//! file, fills them into the delegate's config, runs the delegate, and keeps
//! the config each attachment was made with, so `DEL`, `CHECK` and `GC` use
//! the same one even after the subnet file changed.
//!
//! The delegate is found in `CNI_PATH`. felt asks it `VERSION` first and
//! speaks the newest version both know that is no newer than the runtime's
//! (Debian's plugins stop at 1.0.0, runtimes may send 1.1.0); the result is
//! reshaped for the runtime's version. `STATUS` and `GC` are felt's own: GC
//! runs the delegate's `DEL` for every kept config the runtime no longer
//! lists.
//!
//! Kept configs live in `<dataDir>/delegate/<network>/<container>-<ifname>.json`,
//! written through a temporary file and a rename; host-local's addresses in
//! `<dataDir>/host-local`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};

use felt_proto::SubnetFile;
use felt_proto::cni::{CniError, CniResult, Command, ErrorCode, NetConf, VersionReply, version_cmp};
use serde_json::{Map, Value, json};

/// The delegate's config for `conf` on a node with `subnet`: the user's
/// `delegate` object, with what it leaves out filled in. Its `cniVersion`
/// is set by [`negotiate`] later.
pub fn delegate_conf(conf: &NetConf, user: &Map<String, Value>, subnet: &SubnetFile) -> Map<String, Value> {
    let mut d = user.clone();
    d.insert("name".into(), json!(conf.name));
    d.entry("type").or_insert(json!("bridge"));
    d.entry("mtu").or_insert(json!(subnet.mtu));
    // The agent masquerades (nftables); the delegate must not do it twice.
    d.entry("ipMasq").or_insert(json!(false));
    if d["type"] == "bridge" {
        d.entry("bridge").or_insert(json!(conf.bridge));
        d.entry("isGateway").or_insert(json!(true));
        d.entry("isDefaultGateway").or_insert(json!(true));
        d.entry("hairpinMode").or_insert(json!(true));
    }
    let ipam = d.entry("ipam").or_insert(json!({}));
    if let Some(ipam) = ipam.as_object_mut() {
        ipam.entry("type").or_insert(json!("host-local"));
        if ipam["type"] == "host-local" {
            // One range set per family: host-local gives one address of each.
            let mut ranges = Vec::new();
            if let (Some(subnet4), Some(gateway)) = (subnet.subnet(), subnet.gateway()) {
                ranges.push(json!([{
                    "subnet": subnet4.trunc().to_string(),
                    "gateway": gateway.to_string(),
                }]));
            }
            if let (Some(subnet6), Some(gateway6)) = (subnet.subnet6(), subnet.gateway6()) {
                // host-local starts at ::1 and skips the gateway: `::`, the
                // node's IPv6 VTEP address, is never handed out.
                ranges.push(json!([{
                    "subnet": subnet6.trunc().to_string(),
                    "gateway": gateway6.to_string(),
                }]));
            }
            ipam.entry("ranges").or_insert(json!(ranges));
            ipam.entry("dataDir").or_insert(json!(conf.data_dir.join("host-local")));
        }
    }
    d
}

/// The delegate's executable: `kind` in one of `CNI_PATH`'s directories.
pub fn find_plugin(kind: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    if kind.is_empty() || kind.contains(['/', '\0']) || kind.starts_with('.') {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("delegate type {kind:?} is not a plugin name"),
        ));
    }
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(ErrorCode::NotAvailable, format!("delegate plugin {kind} is not in CNI_PATH"))
                .details(format!("CNI_PATH={cni_path}"))
        })
}

/// One run of a plugin: the command, the attachment, the config on stdin.
#[derive(Debug, Clone)]
pub struct Invocation<'a> {
    /// The plugin.
    pub plugin: &'a Path,
    /// `CNI_COMMAND`.
    pub command: &'a str,
    /// `CNI_CONTAINERID`, `CNI_IFNAME`, `CNI_NETNS` (`None` leaves them as
    /// the runtime set them).
    pub attachment: Option<(&'a str, &'a str, Option<&'a Path>)>,
}

impl Invocation<'_> {
    /// Runs the plugin; its stdout on success, its error (as the spec's JSON,
    /// or one made from its exit) otherwise.
    pub fn run(&self, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        let mut cmd = Process::new(self.plugin);
        cmd.env("CNI_COMMAND", self.command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some((container, ifname, netns)) = self.attachment {
            cmd.env("CNI_CONTAINERID", container).env("CNI_IFNAME", ifname);
            match netns {
                Some(n) => cmd.env("CNI_NETNS", n),
                None => cmd.env_remove("CNI_NETNS"),
            };
        }
        let name = self.plugin.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let mut child = cmd
            .spawn()
            .map_err(|e| CniError::internal(format!("running delegate {}", self.plugin.display()), e))?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading says why on stdout.
            let _ = input.write_all(stdin);
        }
        let out =
            child.wait_with_output().map_err(|e| CniError::internal(format!("waiting for {name}"), e))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(match serde_json::from_slice::<CniError>(&out.stdout) {
            Ok(mut e) => {
                e.msg = format!("{name} {}: {}", self.command, e.msg);
                e
            }
            Err(_) => {
                CniError::new(ErrorCode::Internal, format!("{name} {} failed ({})", self.command, out.status))
                    .details(format!(
                        "stdout: {}; stderr: {}",
                        String::from_utf8_lossy(&out.stdout).trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ))
            }
        })
    }
}

/// The newest version both the runtime's config and the delegate speak that
/// defines `command`.
pub fn negotiate(runtime: &str, delegate: &VersionReply, command: Command) -> Result<String, CniError> {
    delegate
        .supported_versions
        .iter()
        .filter(|v| version_cmp(v, runtime).is_some_and(|o| o.is_le()))
        .filter(|v| version_cmp(v, command.since()).is_some_and(|o| o.is_ge()))
        .max_by(|a, b| version_cmp(a, b).unwrap_or(std::cmp::Ordering::Equal))
        .cloned()
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::IncompatibleVersion,
                format!("the delegate speaks no version of {runtime} or older that has {command:?}"),
            )
            .details(format!("it speaks {}", delegate.supported_versions.join(", ")))
        })
}

/// Asks `plugin` which versions it speaks.
pub fn versions(plugin: &Path, runtime: &str) -> Result<VersionReply, CniError> {
    let out = Invocation { plugin, command: "VERSION", attachment: None }
        .run(json!({"cniVersion": runtime}).to_string().as_bytes())?;
    serde_json::from_slice(&out).map_err(|e| {
        CniError::new(
            ErrorCode::DecodingFailure,
            format!("{} answered VERSION with garbage", plugin.display()),
        )
        .details(e)
    })
}

/// One attachment made in delegate mode, as kept.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KeptEntry {
    /// `CNI_CONTAINERID`.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_NETNS` at ADD: GC hands it to the delegate's DEL while it exists,
    /// so the pod's interface goes too.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// The delegate's config.
    pub delegate: Map<String, Value>,
}

/// Where the configs of attachments made in delegate mode are kept.
#[derive(Debug, Clone)]
pub struct Kept {
    dir: PathBuf,
}

impl Kept {
    /// The store of network `conf.name`.
    pub fn of(conf: &NetConf) -> Kept {
        Kept { dir: conf.data_dir.join("delegate").join(&conf.name) }
    }

    fn path(&self, container: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container}-{ifname}.json"))
    }

    fn io(&self, what: &str, e: impl std::fmt::Display) -> CniError {
        CniError::new(ErrorCode::IoFailure, format!("{what} in {}", self.dir.display())).details(e)
    }

    /// Keeps `entry`, replacing what was kept for its attachment.
    pub fn save(&self, entry: &KeptEntry) -> Result<(), CniError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io("creating the delegate store", e))?;
        let target = self.path(&entry.container_id, &entry.ifname);
        let bytes = serde_json::to_vec(entry).map_err(|e| self.io("keeping a delegate config", e))?;
        crate::util::write_atomic(&target, &bytes).map_err(|e| self.io("keeping a delegate config", e))
    }

    /// What was kept for `container`/`ifname`, if anything.
    pub fn load(&self, container: &str, ifname: &str) -> Result<Option<KeptEntry>, CniError> {
        match std::fs::read(self.path(container, ifname)) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map(Some).map_err(|e| self.io("reading a kept config", e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.io("reading a kept config", e)),
        }
    }

    /// Forgets `container`/`ifname`.
    pub fn forget(&self, container: &str, ifname: &str) -> Result<(), CniError> {
        match std::fs::remove_file(self.path(container, ifname)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(self.io("removing a kept config", e)),
            _ => Ok(()),
        }
    }

    /// Every kept attachment. Removes temporaries of plugins that are no
    /// longer running.
    pub fn entries(&self) -> Result<Vec<KeptEntry>, CniError> {
        let dir = match std::fs::read_dir(&self.dir) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io("listing the delegate store", e)),
        };
        let mut out = Vec::new();
        for entry in dir {
            let path = entry.map_err(|e| self.io("listing the delegate store", e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if let Some(pid) = crate::util::temporary_pid(&name) {
                if crate::process::is_zombie_or_gone(pid) {
                    let _ = std::fs::remove_file(&path);
                }
                continue;
            }
            let bytes = std::fs::read(&path).map_err(|e| self.io("reading a kept config", e))?;
            out.push(serde_json::from_slice(&bytes).map_err(|e| self.io(&format!("reading {name}"), e))?);
        }
        Ok(out)
    }
}

/// The delegate's result, reshaped for the runtime's version.
pub fn result_for(out: &[u8], runtime: &str) -> Result<CniResult, CniError> {
    let r: CniResult = serde_json::from_slice(out).map_err(|e| {
        CniError::new(ErrorCode::DecodingFailure, "the delegate's ADD result does not parse").details(e)
    })?;
    Ok(r.for_version(runtime))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(delegate: Value) -> (NetConf, Map<String, Value>) {
        let c = NetConf::parse(
            json!({"cniVersion": "1.1.0", "name": "felt", "type": "felt", "dataDir": "/var/lib/cni/felt",
                   "delegate": delegate})
            .to_string()
            .as_bytes(),
        )
        .unwrap();
        let d = c.delegate.clone().unwrap();
        (c, d)
    }

    fn subnet() -> SubnetFile {
        SubnetFile::parse(
            "FELT_NETWORK=10.244.0.0/16\nFELT_SUBNET=10.244.3.1/24\nFELT_MTU=1450\nFELT_IPMASQ=true\n",
        )
        .unwrap()
    }

    #[test]
    fn fills_in_the_node_and_keeps_what_the_user_set() {
        let (c, user) = conf(json!({}));
        let d = delegate_conf(&c, &user, &subnet());
        assert_eq!(
            Value::Object(d),
            json!({
                "name": "felt", "type": "bridge", "mtu": 1450, "ipMasq": false, "bridge": "felt0",
                "isGateway": true, "isDefaultGateway": true, "hairpinMode": true,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.3.0/24", "gateway": "10.244.3.1"}]],
                         "dataDir": "/var/lib/cni/felt/host-local"},
            })
        );
        let (c, user) = conf(json!({"mtu": 1400, "hairpinMode": false, "ipam": {"type": "static"}}));
        let d = delegate_conf(&c, &user, &subnet());
        assert_eq!(d["mtu"], 1400);
        assert_eq!(d["hairpinMode"], false);
        assert_eq!(d["ipam"], json!({"type": "static"}));
        let (c, user) = conf(json!({"type": "ipvlan", "master": "eth0"}));
        let d = delegate_conf(&c, &user, &subnet());
        assert!(d.get("bridge").is_none() && d["master"] == "eth0");
    }

    #[test]
    fn speaks_the_newest_version_both_know() {
        let reply = |v: &[&str]| VersionReply {
            cni_version: "1.0.0".into(),
            supported_versions: v.iter().map(|s| (*s).to_owned()).collect(),
        };
        let debian = reply(&["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]);
        assert_eq!(negotiate("1.1.0", &debian, Command::Add).unwrap(), "1.0.0");
        assert_eq!(negotiate("0.4.0", &debian, Command::Check).unwrap(), "0.4.0");
        assert_eq!(negotiate("0.3.1", &debian, Command::Add).unwrap(), "0.3.1");
        let e = negotiate("0.3.1", &debian, Command::Check).unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion.code());
        assert!(negotiate("1.1.0", &reply(&["0.2.0"]), Command::Add).is_err());
    }

    #[test]
    fn finds_only_plugin_names_on_the_path() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("bridge"), b"").unwrap();
        let path = format!("/nonexistent::{}", tmp.path().display());
        assert_eq!(find_plugin("bridge", &path).unwrap(), tmp.path().join("bridge"));
        assert_eq!(find_plugin("macvlan", &path).unwrap_err().code, ErrorCode::NotAvailable.code());
        for bad in ["", "../bridge", "a/b", ".hidden"] {
            assert_eq!(find_plugin(bad, &path).unwrap_err().code, ErrorCode::InvalidConfig.code(), "{bad}");
        }
    }

    #[test]
    fn keeps_configs_across_runs() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut c, user) = conf(json!({}));
        c.data_dir = tmp.path().to_owned();
        let kept = Kept::of(&c);
        let entry = |id: &str| KeptEntry {
            container_id: id.into(),
            ifname: "eth0".into(),
            netns: Some("/run/netns/x".into()),
            delegate: user.clone(),
        };
        assert!(kept.load("c1", "eth0").unwrap().is_none());
        kept.save(&entry("c1")).unwrap();
        kept.save(&entry("c2")).unwrap();
        assert_eq!(kept.load("c1", "eth0").unwrap(), Some(entry("c1")));
        std::fs::write(kept.dir.join(".c1-eth0.json.tmp-4194304999-0"), b"half").unwrap();
        let mut names: Vec<String> = kept.entries().unwrap().into_iter().map(|e| e.container_id).collect();
        names.sort();
        assert_eq!(names, ["c1", "c2"]);
        assert!(
            !kept.dir.join(".c1-eth0.json.tmp-4194304999-0").exists(),
            "a dead plugin's temporary is swept"
        );
        kept.forget("c1", "eth0").unwrap();
        kept.forget("c1", "eth0").unwrap();
        assert_eq!(kept.entries().unwrap().len(), 1);
    }
}
