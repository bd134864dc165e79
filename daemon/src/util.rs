//! Small helpers shared by the commands.

use std::error::Error;

/// A duration as flags and settings take it: humantime's syntax (`30s`,
/// `500ms`, `2m`, `1h30m`), or a bare number of seconds; never zero.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = match s.parse::<u64>() {
        Ok(secs) => std::time::Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 500ms, 2m)"))?,
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

/// An error and its causes, joined with `: `, for one log line.
pub fn error_chain(e: &dyn Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cur = c.source();
    }
    out
}

/// Writes `bytes` to `path` so readers see the old file or the whole new
/// one: a temporary file in the same directory (see [`temporary_pid`]),
/// fsync, rename. The temporary is removed on failure.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(path, bytes, None)
}

/// [`write_atomic`], with the file's permission bits set to `mode` when given.
pub fn write_atomic_mode(path: &std::path::Path, bytes: &[u8], mode: Option<u32>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}{TEMPORARY}{}-{seq}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        if let Some(mode) = mode {
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        }
        f.sync_all()?;
        // Closed before the rename: closing after it would tell a watcher of
        // the directory (the file registry's inotify) of a second write, under
        // the final name.
        drop(f);
        std::fs::rename(&tmp, path)
    };
    write().inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// What [`write_atomic`] puts between a file's name and the writer's pid.
const TEMPORARY: &str = ".tmp-";

/// The pid of the process writing `file_name`, when it is a temporary of
/// [`write_atomic`]: a writer killed mid-write leaves one, which whoever
/// lists the directory may remove once that process is gone.
pub fn temporary_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(TEMPORARY)?;
    tail.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A watcher of the directory hears of the final name once, moved in:
    /// a close after the rename told the file registry of a second write
    /// (and woke every agent twice per record).
    #[test]
    fn an_atomic_write_is_one_event_under_its_name() {
        use inotify::{Inotify, WatchMask};
        let dir = tempfile::tempdir().unwrap();
        let mut inotify = Inotify::init().unwrap();
        inotify.watches().add(dir.path(), WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO).unwrap();
        write_atomic(&dir.path().join("n1.json"), b"{}").unwrap();
        let mut buf = [0u8; 4096];
        let named: Vec<String> = inotify
            .read_events(&mut buf)
            .unwrap()
            .filter_map(|e| e.name.map(|n| n.to_string_lossy().into_owned()))
            .filter(|n| n == "n1.json")
            .collect();
        assert_eq!(named, ["n1.json"], "one event under the final name");
    }

    #[test]
    fn atomic_writes_leave_no_temporary_and_name_their_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic_mode(&path, b"two", Some(0o640)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["conf.json"]);
        assert_eq!(temporary_pid(".conf.json.tmp-4242-7"), Some(4242));
        assert_eq!(temporary_pid("conf.json"), None);
        assert_eq!(temporary_pid(".hidden"), None);
        // A write that cannot finish leaves nothing behind.
        assert!(write_atomic(&dir.path().join("no-such-dir").join("x"), b"x").is_err());
    }
}
