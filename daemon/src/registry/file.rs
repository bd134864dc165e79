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

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use felt_ipam::LeaseDir;
use felt_proto::NodeRecord;
use felt_proto::node::is_dns_subdomain;
use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
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
    /// What [`FileRegistry::read`] last read, and what changed since.
    cache: Arc<Mutex<Cache>>,
}

/// The documents as last read and the files inotify named since: with it a
/// change costs one file read, not N.
#[derive(Debug)]
struct Cache {
    /// By file name: the record, or why the document is refused.
    docs: BTreeMap<String, Result<NodeRecord, String>>,
    /// Files inotify named since the last read.
    dirty: BTreeSet<String>,
    /// Read every document next time: nothing read yet, no inotify (the
    /// mtime poll names no file), or inotify lost events.
    full: bool,
    /// The watch names the files that change (inotify is on).
    named: bool,
}

impl Cache {
    /// What the watch saw: a file (`None`: something it cannot name, such
    /// as lost events).
    fn changed(&mut self, file: Option<String>) {
        match file {
            Some(f) => {
                self.dirty.insert(f);
            }
            None => self.full = true,
        }
    }
}

/// `x` of a node document's file name `x.json` (not a hidden temporary file).
fn node_file_stem(file: &str) -> Option<&str> {
    file.strip_suffix(".json").filter(|_| !file.starts_with('.'))
}

/// Records sorted by name, and the refused documents.
fn snapshot_of(docs: &BTreeMap<String, Result<NodeRecord, String>>) -> Snapshot {
    let mut snap = Snapshot::default();
    for (file, doc) in docs {
        match doc {
            Ok(r) => snap.records.push(r.clone()),
            Err(why) => snap.malformed.push((file.clone(), why.clone())),
        }
    }
    snap.records.sort_by(|a, b| a.name.cmp(&b.name));
    snap
}

impl FileRegistry {
    /// Opens the registry, creating its directories.
    pub fn open(dir: &Path) -> Result<Self, FileRegistryError> {
        let nodes = dir.join("nodes");
        fs::create_dir_all(&nodes).map_err(io_err("creating", &nodes))?;
        let leases = LeaseDir::open(dir.join("leases"))?;
        let cache = Cache { docs: BTreeMap::new(), dirty: BTreeSet::new(), full: true, named: false };
        Ok(FileRegistry { nodes, leases, cache: Arc::new(Mutex::new(cache)) })
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
        let docs = self.read_all()?;
        Ok(snapshot_of(&docs))
    }

    /// The records as [`FileRegistry::list`] reads them, but re-reading only
    /// the files the watch named since the last call; every file when
    /// `full`, on the first call, without inotify, or after it lost events.
    pub fn read(&self, full: bool) -> Result<Snapshot, FileRegistryError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if full || cache.full {
            // Whatever the watch names from here on is read again next time.
            cache.dirty.clear();
            cache.full = !cache.named;
            cache.docs = self.read_all()?;
        } else {
            for file in std::mem::take(&mut cache.dirty) {
                match self.read_doc(&file) {
                    Some(doc) => cache.docs.insert(file, doc),
                    None => cache.docs.remove(&file),
                };
            }
        }
        Ok(snapshot_of(&cache.docs))
    }

    /// The documents the watch named since the last read, read again;
    /// `None` when it cannot name them (see [`FileRegistry::read`]).
    pub fn changes(&self) -> Result<Option<Vec<super::Changed>>, FileRegistryError> {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.full {
            return Ok(None);
        }
        let mut changes = Vec::new();
        for file in std::mem::take(&mut cache.dirty) {
            let Some(stem) = node_file_stem(&file) else { continue };
            let now = self.read_doc(&file);
            let was = match &now {
                Some(doc) => cache.docs.insert(file.clone(), doc.clone()),
                None => cache.docs.remove(&file),
            };
            if was != now {
                changes.push(super::Changed { name: stem.to_owned(), document: file, now });
            }
        }
        Ok(Some(changes))
    }

    /// Every document in the directory, by file name.
    fn read_all(&self) -> Result<BTreeMap<String, Result<NodeRecord, String>>, FileRegistryError> {
        let mut docs = BTreeMap::new();
        let entries = fs::read_dir(&self.nodes).map_err(io_err("listing", &self.nodes))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.nodes))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            if let Some(doc) = self.read_doc(&file) {
                docs.insert(file, doc);
            }
        }
        Ok(docs)
    }

    /// One document: the record or why it is refused (an unreadable file
    /// is refused, not an error); `None` when it is gone or is no node
    /// document (a temporary file, say).
    fn read_doc(&self, file: &str) -> Option<Result<NodeRecord, String>> {
        let stem = node_file_stem(file)?;
        let bytes = match fs::read(self.nodes.join(file)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => return Some(Err(format!("unreadable: {e}"))),
        };
        Some(match NodeRecord::from_json(&bytes) {
            Ok(r) if r.name == stem => Ok(r),
            Ok(r) => Err(format!("names node `{}`, not `{stem}`", r.name)),
            Err(e) => Err(e.to_string()),
        })
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
                self.cache.lock().unwrap_or_else(|p| p.into_inner()).named = true;
                tokio::spawn(forward_events(stream, self.cache.clone(), tx));
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

/// Notes each node document inotify names as changed (lost events: all of
/// them), then signals.
async fn forward_events(
    mut stream: inotify::EventStream<[u8; 4096]>,
    cache: Arc<Mutex<Cache>>,
    tx: mpsc::Sender<()>,
) {
    while let Some(event) = stream.next().await {
        let changed = match &event {
            Ok(ev) if ev.mask.contains(EventMask::Q_OVERFLOW) => Some(None),
            Ok(ev) => match &ev.name {
                Some(n) => {
                    let n = n.to_string_lossy().into_owned();
                    node_file_stem(&n).is_some().then_some(Some(n))
                }
                None => Some(None),
            },
            // A read error: a full read is the safe answer.
            Err(_) => Some(None),
        };
        let Some(file) = changed else { continue };
        cache.lock().unwrap_or_else(|p| p.into_inner()).changed(file);
        if tx.try_send(()).is_err() && tx.is_closed() {
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

    /// With the watch on, a read re-reads only the files it named: a
    /// document the cache holds and nobody named is not read again (the
    /// cache is seeded with a stale copy to show it), a full read is.
    #[tokio::test]
    async fn incremental_reads_follow_the_watch() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = FileRegistry::open(tmp.path()).unwrap();
        let mut rx = reg.watch().unwrap();
        let wait = async |rx: &mut mpsc::Receiver<()>| {
            tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv()).await.unwrap().unwrap()
        };
        let mut n1 = NodeRecord::new("n1");
        reg.put(&n1).unwrap();
        reg.put(&NodeRecord::new("n2")).unwrap();
        wait(&mut rx).await;
        assert_eq!(reg.read(false).unwrap().records.len(), 2, "the first read is a full one");

        n1.public_ip = Some("198.18.7.11".parse().unwrap());
        reg.put(&n1).unwrap();
        reg.remove("n2").unwrap();
        fs::write(tmp.path().join("nodes/bad.json"), b"{not json").unwrap();
        wait(&mut rx).await;
        // Let every event of the three writes arrive.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let snap = reg.read(false).unwrap();
        assert_eq!(snap.records, vec![n1.clone()]);
        assert_eq!(snap.malformed.len(), 1, "{:?}", snap.malformed);
        assert_eq!(snap.records, reg.list().unwrap().records);

        let stale = NodeRecord::new("n1");
        reg.cache.lock().unwrap().docs.insert("n1.json".into(), Ok(stale.clone()));
        assert_eq!(reg.read(false).unwrap().records, vec![stale], "nothing named n1: not read");
        assert_eq!(reg.read(true).unwrap().records, vec![n1.clone()], "a full read reads it");
        reg.cache.lock().unwrap().docs.insert("n1.json".into(), Ok(NodeRecord::new("n1")));
        reg.cache.lock().unwrap().changed(None);
        assert_eq!(reg.read(false).unwrap().records, vec![n1], "lost events: a full read");
    }
}
