//! `felt lab down`, and undoing a half-built `up`.

use super::{Lab, LabError, control, kill_agent, topo};

impl Lab {
    /// Removes everything of this lab. Returns what it removed.
    pub fn down(&self) -> Result<Vec<String>, LabError> {
        let mut removed = Vec::new();
        if let Some(state) = self.load()? {
            for n in &state.nodes {
                if kill_agent(n.pid, &self.registry_dir(), false) {
                    removed.push(format!("agent {} (pid {})", n.name, n.pid));
                }
            }
        }
        for pid in topo::agents_using(&self.registry_dir()) {
            kill_agent(pid, &self.registry_dir(), false);
            removed.push(format!("agent pid {pid}"));
        }
        if control::stop_proxy(&self.dir.join("control-plane")) {
            removed.push("the API server's loopback proxy".to_owned());
        }
        let mut namespaces = topo::namespaces_with_prefix(&self.name)?;
        // Pods before nodes before the underlay: longest names first.
        namespaces.sort_by_key(|n| std::cmp::Reverse(n.len()));
        let mut errors = Vec::new();
        for ns in namespaces {
            // Whatever the agents left running there (a keeper waiting for a successor).
            let stray = topo::kill_processes_in(&ns);
            if stray > 0 {
                removed.push(format!("{stray} process(es) in {ns}"));
            }
            match topo::ip(&["netns", "delete", &ns]) {
                Ok(()) => removed.push(format!("netns {ns}")),
                Err(e) => errors.push(e.to_string()),
            }
        }
        // host-local's leases of Flannel nodes' pods (see Lab::add_pod).
        let prefix = self.flannel_network("");
        if let Ok(entries) = std::fs::read_dir(super::up::HOST_LOCAL_DIR) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    match std::fs::remove_dir_all(e.path()) {
                        Ok(()) => removed.push(e.path().display().to_string()),
                        Err(err) => errors.push(format!("removing {}: {err}", e.path().display())),
                    }
                }
            }
        }
        if self.dir.exists() {
            match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => removed.push(self.dir.display().to_string()),
                Err(e) => errors.push(format!("removing {}: {e}", self.dir.display())),
            }
        }
        if errors.is_empty() { Ok(removed) } else { Err(LabError::Teardown(errors)) }
    }
}

/// Tears a half-built lab down when `up` fails.
pub(super) struct TeardownOnError<'a> {
    pub(super) lab: &'a Lab,
    pub(super) armed: bool,
}

impl Drop for TeardownOnError<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = self.lab.down() {
                eprintln!("felt lab: cleaning up after a failed `up` also failed: {e}");
            }
        }
    }
}
