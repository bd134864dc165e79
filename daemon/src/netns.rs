//! Running code inside another network namespace.
//!
//! A network namespace is per thread: we spawn a thread, `setns(2)` it into
//! the target, run the closure there and join. Sockets (netlink included)
//! keep the namespace they were created in, so a closure can open them and
//! hand them back. The caller's own thread never changes namespace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};

/// `/run/netns/<name>`, where `ip netns add` pins named namespaces.
pub fn named(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Runs `f` on a fresh thread inside the network namespace at `path`.
pub fn run_in<T, F>(path: &Path, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let ns =
        File::open(path).map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("netns".into())
        .spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("entering {}: {e}", path.display())))?;
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("thread inside the namespace panicked"))?
}

/// Runs an async job on a current-thread tokio runtime inside the namespace at `path`.
pub fn block_on_in<T, F, Fut>(path: &Path, job: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
{
    run_in(path, move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(rt.block_on(job()))
    })?
}
