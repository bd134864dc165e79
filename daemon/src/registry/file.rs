//! The file registry: a directory shared by every agent of one cluster.
//!
//! ```text
//! <dir>/nodes/<node>.json    one NodeRecord per node, written atomically
//! <dir>/leases/<a.b.c.d>-<len>  subnet leases (felt_ipam::LeaseDir)
//! ```
//! Writers replace a record with write-to-temp + rename, so readers see the
//! old or the new document, never half of one. Readers learn of changes
//! through inotify (or, without it, the directory's modification time),
//! and relist on a timer as a safety net (the caller's resync). It is the embedded default: the lab runs a whole cluster on it.

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
    /// Must run inside a tokio runtime. Uses inotify; where the kernel
    /// refuses another inotify instance (`fs.inotify.max_user_instances`,
    /// 128 by default, is per user: many agents on one machine, as in a big
    /// lab, run out), it says so and watches the directory's modification
    /// time instead, every [`POLL`].
    pub fn watch(&self) -> Result<mpsc::Receiver<()>, FileRegistryError> {
        let (tx, rx) = mpsc::channel(1);
        match self.inotify() {
            Ok(stream) => {
                tokio::spawn(forward_events(stream, tx));
            }
            Err(e) => {
                tracing::warn!(
                    error = %crate::util::error_chain(&e),
                    poll = ?POLL,
                    "no inotify for the registry; polling its directory instead"
                );
                tokio::spawn(poll_mtime(self.nodes.clone(), tx));
            }
        }
        Ok(rx)
    }

    fn inotify(&self) -> Result<inotify::EventStream<[u8; 4096]>, FileRegistryError> {
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
        inotify.into_event_stream([0u8; 4096]).map_err(io_err("watching", &self.nodes))
    }
}

/// How often the directory is checked when inotify is not available.
pub const POLL: std::time::Duration = std::time::Duration::from_millis(500);

async fn forward_events(mut stream: inotify::EventStream<[u8; 4096]>, tx: mpsc::Sender<()>) {
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
}

/// Signals when the directory's modification time moves: every writer
/// replaces a record by renaming into it, and removes by unlinking, both of
/// which touch it. (A document written in place is read at the next resync.)
async fn poll_mtime(dir: PathBuf, tx: mpsc::Sender<()>) {
    let mtime = |d: &Path| fs::metadata(d).and_then(|m| m.modified()).ok();
    let mut last = mtime(&dir);
    let mut tick = tokio::time::interval(POLL);
    loop {
        tick.tick().await;
        let now = mtime(&dir);
        if now != last {
            last = now;
            if tx.try_send(()).is_err() && tx.is_closed() {
                break;
            }
        }
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

    #[tokio::test]
    async fn without_inotify_a_rename_into_the_directory_is_seen() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = FileRegistry::open(tmp.path()).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        tokio::spawn(poll_mtime(reg.nodes.clone(), tx));
        tokio::time::sleep(POLL * 2).await;
        assert!(rx.try_recv().is_err(), "nothing changed, nothing said");
        reg.put(&NodeRecord::new("n1")).unwrap();
        tokio::time::timeout(POLL * 4, rx.recv()).await.expect("seen within two polls").unwrap();
        std::fs::remove_file(reg.nodes.join("n1.json")).unwrap();
        tokio::time::timeout(POLL * 4, rx.recv()).await.expect("a removal too").unwrap();
    }
}
