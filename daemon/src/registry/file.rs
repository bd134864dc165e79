//! The file registry: a directory shared by every agent of one cluster.
//!
//! ```text
//! <dir>/nodes/<node>.json    one NodeRecord per node, written atomically
//! <dir>/leases/<a.b.c.d>-<len>  subnet leases (felt_ipam::LeaseDir)
//! ```
//! Writers replace a record with write-to-temp + rename, so readers see the
//! old or the new document, never half of one. Readers learn of changes
//! through inotify, and relist on a timer as a safety net (the caller's
//! resync). It is the embedded default: the lab runs a whole cluster on it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use felt_ipam::LeaseDir;
use felt_proto::NodeRecord;
use felt_proto::node::is_dns_subdomain;
use futures::StreamExt;
use inotify::{Inotify, WatchMask};
use tokio::sync::mpsc;

use super::Snapshot;

/// What went wrong with the registry directory.
#[derive(Debug, thiserror::Error)]
pub enum FileRegistryError {
    /// The file system refused.
    #[error("{action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The lease store refused.
    #[error(transparent)]
    Lease(#[from] felt_ipam::StoreError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> FileRegistryError {
    let path = path.to_owned();
    move |source| FileRegistryError::Io { action, path, source }
}

/// A file registry rooted at one directory.
#[derive(Debug, Clone)]
pub struct FileRegistry {
    nodes: PathBuf,
    leases: LeaseDir,
}

impl FileRegistry {
    /// Opens the registry, creating its directories.
    pub fn open(dir: &Path) -> Result<Self, FileRegistryError> {
        let nodes = dir.join("nodes");
        fs::create_dir_all(&nodes).map_err(io_err("creating", &nodes))?;
        let leases = LeaseDir::open(dir.join("leases"))?;
        Ok(FileRegistry { nodes, leases })
    }

    /// The lease store.
    pub fn leases(&self) -> &LeaseDir {
        &self.leases
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.nodes.join(format!("{name}.json"))
    }

    /// Reads every record. A document that does not parse, or whose name does
    /// not match its file, is reported in `malformed` and left out.
    pub fn list(&self) -> Result<Snapshot, FileRegistryError> {
        let mut snap = Snapshot::default();
        let entries = fs::read_dir(&self.nodes).map_err(io_err("listing", &self.nodes))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.nodes))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let Some(stem) = file.strip_suffix(".json").filter(|_| !file.starts_with('.')).map(str::to_owned)
            else {
                continue;
            };
            let bytes = match fs::read(entry.path()) {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    snap.malformed.push((file, format!("unreadable: {e}")));
                    continue;
                }
            };
            match NodeRecord::from_json(&bytes) {
                Ok(r) if r.name == stem => snap.records.push(r),
                Ok(r) => snap.malformed.push((file, format!("names node `{}`, not `{stem}`", r.name))),
                Err(e) => snap.malformed.push((file, e.to_string())),
            }
        }
        snap.records.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(snap)
    }

    /// This node's record, if it exists and is valid.
    pub fn get(&self, name: &str) -> Result<Option<NodeRecord>, FileRegistryError> {
        let path = self.path_of(name);
        match fs::read(&path) {
            Ok(b) => Ok(NodeRecord::from_json(&b).ok().filter(|r| r.name == name)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    /// Writes a record, only when it differs from what is there.
    /// Returns whether it wrote.
    pub fn put(&self, record: &NodeRecord) -> Result<bool, FileRegistryError> {
        if self.get(&record.name)?.as_ref() == Some(record) {
            return Ok(false);
        }
        let path = self.path_of(&record.name);
        crate::util::write_atomic(&path, &record.to_json()).map_err(io_err("writing", &path))?;
        Ok(true)
    }

    /// Removes a node: its record and its leases.
    pub fn remove(&self, name: &str) -> Result<(), FileRegistryError> {
        for (subnet, owner) in self.leases.leases()? {
            if owner == name {
                self.leases.release(subnet, name)?;
            }
        }
        let path = self.path_of(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &path)(e)),
            _ => Ok(()),
        }
    }

    /// Signals (coalesced) whenever a node document appears, changes or goes.
    /// Must run inside a tokio runtime.
    pub fn watch(&self) -> Result<mpsc::Receiver<()>, FileRegistryError> {
        let inotify = Inotify::init().map_err(io_err("starting inotify for", &self.nodes))?;
        inotify
            .watches()
            .add(
                &self.nodes,
                WatchMask::CLOSE_WRITE
                    | WatchMask::MOVED_TO
                    | WatchMask::MOVED_FROM
                    | WatchMask::DELETE
                    | WatchMask::CREATE,
            )
            .map_err(io_err("watching", &self.nodes))?;
        let mut stream = inotify.into_event_stream([0u8; 4096]).map_err(io_err("watching", &self.nodes))?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let relevant = match &event {
                    Ok(ev) => ev.name.as_ref().is_none_or(|n| {
                        let n = n.to_string_lossy();
                        !n.starts_with('.') && n.ends_with(".json")
                    }),
                    // Overflow or read error: a relist is the safe answer.
                    Err(_) => true,
                };
                if relevant && tx.try_send(()).is_err() && tx.is_closed() {
                    break;
                }
            }
        });
        Ok(rx)
    }
}

/// Checks a node name before it becomes a file name.
pub fn valid_node_name(name: &str) -> bool {
    is_dns_subdomain(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = FileRegistry::open(tmp.path()).unwrap();
        let mut r = NodeRecord::new("n1");
        assert!(reg.put(&r).unwrap());
        assert!(!reg.put(&r).unwrap(), "unchanged record is not rewritten");
        r.public_ip = Some("198.18.7.11".parse().unwrap());
        assert!(reg.put(&r).unwrap());
        assert_eq!(reg.get("n1").unwrap(), Some(r.clone()));
        fs::write(tmp.path().join("nodes/bad.json"), b"{not json").unwrap();
        fs::write(tmp.path().join("nodes/n9.json"), br#"{"name":"n8"}"#).unwrap();
        fs::write(tmp.path().join("nodes/.n1.json.123.tmp"), b"partial").unwrap();
        let snap = reg.list().unwrap();
        assert_eq!(snap.records, vec![r]);
        assert_eq!(snap.malformed.len(), 2, "{:?}", snap.malformed);
        reg.leases().claim("10.244.1.0/24".parse().unwrap(), "n1").unwrap();
        reg.remove("n1").unwrap();
        assert_eq!(reg.get("n1").unwrap(), None);
        assert!(reg.leases().leases().unwrap().is_empty());
    }

    #[tokio::test]
    async fn watch_signals_changes() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = FileRegistry::open(tmp.path()).unwrap();
        let mut rx = reg.watch().unwrap();
        reg.put(&NodeRecord::new("n1")).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
    }
}
