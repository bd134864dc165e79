//! On-disk stores: subnet leases and pod addresses, one file per claim.

use std::fs;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;

use crate::subnets::first_free;

/// What went wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file system refused.
    #[error("{action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Every subnet or address is taken.
    #[error("no free {what} left in {range}")]
    Exhausted {
        /// `subnet` or `address`.
        what: &'static str,
        /// The range searched.
        range: IpNet,
    },
    /// The subnet is leased to another node.
    #[error("{subnet} is leased to node `{owner}`")]
    Taken {
        /// The subnet.
        subnet: IpNet,
        /// Who holds it.
        owner: String,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { action, path, source }
}

/// Atomically creates `dir/name` holding `content`. `Ok(false)` when it already exists.
fn create_exclusive(dir: &Path, name: &str, content: &str) -> Result<bool, StoreError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(content.as_bytes())?;
        f.sync_all()
    };
    write().map_err(io_err("writing", &tmp))?;
    let target = dir.join(name);
    let linked = fs::hard_link(&tmp, &target);
    // The temporary name is ours alone; failing to remove it leaves litter, not a wrong claim.
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io_err("claiming", &target)(e)),
    }
}

fn read_dir_files(dir: &Path) -> Result<Vec<(String, String)>, StoreError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("listing", dir))? {
        let entry = entry.map_err(io_err("listing", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        match fs::read_to_string(entry.path()) {
            Ok(content) => out.push((name, content)),
            // Released between listing and reading.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("reading", &entry.path())(e)),
        }
    }
    Ok(out)
}

/// Subnet leases of either family: `<dir>/10.244.3.0-24` (or
/// `<dir>/fd00:10:244:3::-64`) holds the owning node's name.
#[derive(Debug, Clone)]
pub struct LeaseDir {
    dir: PathBuf,
}

impl LeaseDir {
    /// Opens (creating if needed) a lease directory.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(LeaseDir { dir })
    }

    fn file_name(subnet: IpNet) -> String {
        format!("{}-{}", subnet.network(), subnet.prefix_len())
    }

    /// Every lease: subnet and owner. Files that are not leases are skipped.
    pub fn leases(&self) -> Result<Vec<(IpNet, String)>, StoreError> {
        Ok(read_dir_files(&self.dir)?
            .into_iter()
            .filter_map(|(name, owner)| {
                let (addr, len) = name.split_once('-')?;
                let subnet = IpNet::new(addr.parse().ok()?, len.parse().ok()?).ok()?;
                Some((subnet, owner.trim().to_owned()))
            })
            .collect())
    }

    /// Claims `subnet` for `owner`; succeeds when it is free or already theirs.
    pub fn claim(&self, subnet: IpNet, owner: &str) -> Result<(), StoreError> {
        let name = Self::file_name(subnet);
        if create_exclusive(&self.dir, &name, &format!("{owner}\n"))? {
            return Ok(());
        }
        let path = self.dir.join(&name);
        let holder = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
        if holder.trim() == owner {
            Ok(())
        } else {
            Err(StoreError::Taken { subnet, owner: holder.trim().to_owned() })
        }
    }

    /// Returns `owner`'s lease in `network`, or claims the first free subnet
    /// of length `len` that overlaps no lease and none of `also_taken`.
    pub fn allocate(
        &self,
        network: IpNet,
        len: u8,
        owner: &str,
        also_taken: &[IpNet],
    ) -> Result<IpNet, StoreError> {
        loop {
            let leases = self.leases()?;
            if let Some((s, _)) = leases.iter().find(|(s, o)| o == owner && network.contains(s)) {
                return Ok(*s);
            }
            let mut taken: Vec<IpNet> = leases.iter().map(|(s, _)| *s).collect();
            taken.extend_from_slice(also_taken);
            let candidate = first_free(network, len, &taken)
                .ok_or(StoreError::Exhausted { what: "subnet", range: network })?;
            match self.claim(candidate, owner) {
                Ok(()) => return Ok(candidate),
                // Another agent won the race for this one: look again.
                Err(StoreError::Taken { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Drops `owner`'s lease on `subnet`; a lease held by someone else is left alone.
    pub fn release(&self, subnet: IpNet, owner: &str) -> Result<(), StoreError> {
        let path = self.dir.join(Self::file_name(subnet));
        match fs::read_to_string(&path) {
            Ok(holder) if holder.trim() == owner => fs::remove_file(&path).map_err(io_err("removing", &path)),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }
}

/// One address in a [`PodAddressStore`] and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodAddress {
    /// The address.
    pub ip: IpAddr,
    /// The holder's container ID.
    pub container_id: String,
    /// The holder's interface in the container.
    pub ifname: String,
}

/// Pod addresses on one node, of either family: `<dir>/10.244.3.7` (or
/// `<dir>/fd00:f31:244:3::2`) holds `<container id>\n<ifname>\n`. A pod
/// interface of a dual-stack cluster holds one of each.
///
/// Concurrent plugins never share an address: a claim is a `link(2)` of a
/// fully written temporary file onto the address's name, which fails with
/// `EEXIST` for all but one (the same guarantee a lock + rename gives,
/// without a lock to leak). A plugin killed mid-claim leaves at most a
/// temporary file ([`PodAddressStore::sweep_temporaries`]) or a complete
/// claim that `GC` releases.
#[derive(Debug, Clone)]
pub struct PodAddressStore {
    dir: PathBuf,
}

impl PodAddressStore {
    /// Opens (creating if needed) a store.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(PodAddressStore { dir })
    }

    fn owner(container_id: &str, ifname: &str) -> String {
        format!("{container_id}\n{ifname}\n")
    }

    /// The addresses held by this container interface (one per family).
    pub fn find(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        let want = Self::owner(container_id, ifname);
        let mut held: Vec<IpAddr> = read_dir_files(&self.dir)?
            .into_iter()
            .filter(|(_, c)| *c == want)
            .filter_map(|(n, _)| n.parse().ok())
            .collect();
        held.sort();
        Ok(held)
    }

    /// An address in `subnet` for this container interface: the one it holds
    /// there, or the lowest free host address that is neither the subnet's
    /// network address (the node's VTEP address in either family) nor
    /// `reserved` (the gateway).
    pub fn allocate(
        &self,
        subnet: IpNet,
        reserved: IpAddr,
        container_id: &str,
        ifname: &str,
    ) -> Result<IpAddr, StoreError> {
        if let Some(ip) = self.find(container_id, ifname)?.into_iter().find(|ip| subnet.contains(ip)) {
            return Ok(ip);
        }
        let owner = Self::owner(container_id, ifname);
        for ip in subnet.hosts().filter(|ip| *ip != reserved && *ip != subnet.network()) {
            if create_exclusive(&self.dir, &ip.to_string(), &owner)? {
                return Ok(ip);
            }
        }
        Err(StoreError::Exhausted { what: "address", range: subnet })
    }

    /// Every address held: the address and its holder's container ID and interface.
    pub fn entries(&self) -> Result<Vec<PodAddress>, StoreError> {
        Ok(read_dir_files(&self.dir)?
            .into_iter()
            .filter_map(|(name, content)| {
                let ip = name.parse().ok()?;
                let mut lines = content.lines();
                let (container_id, ifname) = (lines.next()?.to_owned(), lines.next()?.to_owned());
                Some(PodAddress { ip, container_id, ifname })
            })
            .collect())
    }

    /// Removes the temporary files of claims whose writer is gone (a plugin
    /// killed between writing and linking); returns how many. `alive` says
    /// whether a process ID still runs.
    pub fn sweep_temporaries(&self, alive: impl Fn(u32) -> bool) -> Result<usize, StoreError> {
        let mut swept = 0;
        for entry in fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))? {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(pid) = name.strip_prefix(".tmp-").and_then(|r| r.split('-').next()?.parse::<u32>().ok())
            else {
                continue;
            };
            if !alive(pid) {
                match fs::remove_file(entry.path()) {
                    Ok(()) => swept += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("removing", &entry.path())(e)),
                }
            }
        }
        Ok(swept)
    }

    /// Frees every address this container interface holds; freeing nothing is fine.
    pub fn release(&self, container_id: &str, ifname: &str) -> Result<Vec<IpAddr>, StoreError> {
        let want = Self::owner(container_id, ifname);
        let mut freed = Vec::new();
        for (name, content) in read_dir_files(&self.dir)? {
            if content == want {
                let path = self.dir.join(&name);
                fs::remove_file(&path).map_err(io_err("removing", &path))?;
                freed.extend(name.parse::<IpAddr>().ok());
            }
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests;
