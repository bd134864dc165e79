//! Delegate mode's verbs: felt hands the attachment to `bridge` +
//! `host-local` (see [`super::delegate`] for the pieces), keeping the
//! delegate config of each attachment so DEL, CHECK and GC run what ADD ran.

use std::collections::HashSet;
use std::path::PathBuf;

use felt_proto::cni::{CniError, Command, ErrorCode, NetConf};
use serde_json::{Map, Value, json};

use super::delegate::{self, Invocation, Kept, KeptEntry};
use super::{Pod, read_subnet, status, to_json, version_reply};

/// One command in delegate mode.
pub(super) fn run(
    conf: &NetConf,
    user: &Map<String, Value>,
    command: Command,
) -> Result<Option<String>, CniError> {
    let d = Delegated {
        conf,
        user,
        cni_path: std::env::var("CNI_PATH").unwrap_or_default(),
        kept: Kept::of(conf),
    };
    match command {
        Command::Add => d.add(&Pod::from_env(command)?).map(Some),
        Command::Del => d.del(&Pod::from_env(command)?).map(|()| None),
        Command::Check => d.check(&Pod::from_env(command)?).map(|()| None),
        Command::Status => d.status().map(|()| None),
        Command::Gc => d.gc().map(|()| None),
        Command::Version => Ok(Some(version_reply())),
    }
}

struct Delegated<'a> {
    conf: &'a NetConf,
    user: &'a Map<String, Value>,
    cni_path: String,
    kept: Kept,
}

impl Delegated<'_> {
    /// The plugin a delegate config names, from CNI_PATH.
    fn plugin_of(&self, d: &Map<String, Value>) -> Result<PathBuf, CniError> {
        delegate::find_plugin(d.get("type").and_then(|t| t.as_str()).unwrap_or_default(), &self.cni_path)
    }

    /// `d` with the runtime's prevResult, shaped for the version the delegate speaks.
    fn with_prev(&self, mut d: Map<String, Value>) -> String {
        if let Some(prev) = &self.conf.prev_result {
            let version = d["cniVersion"].as_str().unwrap_or(&self.conf.cni_version).to_owned();
            d.insert("prevResult".into(), json!(prev.clone().for_version(&version)));
        }
        Value::Object(d).to_string()
    }

    /// ADD: the delegate config is kept before the delegate runs, so a
    /// plugin killed mid-ADD leaves something GC can undo; a failed ADD is
    /// undone with DEL at once.
    fn add(&self, pod: &Pod) -> Result<String, CniError> {
        let subnet = read_subnet(&self.conf.subnet_file)?;
        let mut d = delegate::delegate_conf(self.conf, self.user, &subnet);
        let plugin = self.plugin_of(&d)?;
        let runtime = &self.conf.cni_version;
        let version = delegate::negotiate(runtime, &delegate::versions(&plugin, runtime)?, Command::Add)?;
        d.insert("cniVersion".into(), version.into());
        self.kept.save(&KeptEntry {
            container_id: pod.container_id.clone(),
            ifname: pod.ifname.clone(),
            netns: pod.netns.clone(),
            delegate: d.clone(),
        })?;
        let add = Invocation { plugin: &plugin, command: "ADD", attachment: None };
        match add.run(self.with_prev(d.clone()).as_bytes()) {
            Ok(out) => Ok(to_json(&delegate::result_for(&out, runtime)?)),
            Err(e) => {
                let undo = Invocation { command: "DEL", ..add };
                if undo.run(Value::Object(d).to_string().as_bytes()).is_ok() {
                    let _ = self.kept.forget(&pod.container_id, &pod.ifname);
                }
                Err(e)
            }
        }
    }

    /// DEL: what ADD ran, undone; nothing kept means never added or
    /// deleted already, which is success.
    fn del(&self, pod: &Pod) -> Result<(), CniError> {
        let Some(k) = self.kept.load(&pod.container_id, &pod.ifname)? else { return Ok(()) };
        let plugin = self.plugin_of(&k.delegate)?;
        Invocation { plugin: &plugin, command: "DEL", attachment: None }
            .run(self.with_prev(k.delegate).as_bytes())?;
        self.kept.forget(&pod.container_id, &pod.ifname)
    }

    /// CHECK: the delegate checks what it added.
    fn check(&self, pod: &Pod) -> Result<(), CniError> {
        let Some(k) = self.kept.load(&pod.container_id, &pod.ifname)? else {
            return Err(CniError::new(
                ErrorCode::AttachmentChanged,
                format!("{}/{} was not added through felt on this node", pod.container_id, pod.ifname),
            ));
        };
        let plugin = self.plugin_of(&k.delegate)?;
        Invocation { plugin: &plugin, command: "CHECK", attachment: None }
            .run(self.with_prev(k.delegate).as_bytes())?;
        Ok(())
    }

    /// STATUS: felt's own readiness, then the delegates being there.
    fn status(&self) -> Result<(), CniError> {
        status(self.conf)?;
        let d = delegate::delegate_conf(self.conf, self.user, &read_subnet(&self.conf.subnet_file)?);
        let not_ready = |e: CniError| CniError::new(ErrorCode::NotAvailable, format!("not ready: {}", e.msg));
        self.plugin_of(&d).map_err(not_ready)?;
        if let Some(ipam) = d.get("ipam").and_then(|i| i["type"].as_str()) {
            delegate::find_plugin(ipam, &self.cni_path).map_err(not_ready)?;
        }
        Ok(())
    }

    /// GC: DEL every kept attachment the runtime no longer lists.
    fn gc(&self) -> Result<(), CniError> {
        let valid: HashSet<(String, String)> = self
            .conf
            .valid_attachments
            .iter()
            .flatten()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        for k in self.kept.entries()? {
            if valid.contains(&(k.container_id.clone(), k.ifname.clone())) {
                continue;
            }
            let plugin = self.plugin_of(&k.delegate)?;
            let netns = k.netns.as_deref().filter(|n| n.exists());
            let attachment = Some((k.container_id.as_str(), k.ifname.as_str(), netns));
            Invocation { plugin: &plugin, command: "DEL", attachment }
                .run(Value::Object(k.delegate).to_string().as_bytes())?;
            self.kept.forget(&k.container_id, &k.ifname)?;
        }
        Ok(())
    }
}
