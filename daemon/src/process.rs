//! Other processes, as `/proc` shows them: who runs, with what arguments,
//! in which network namespace. The one place felt reads `/proc/<pid>`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Every process id, this process's included.
pub fn pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
}

/// A process's arguments; `None` when it is gone.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// A process's command name (`comm`); `None` when it is gone.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|c| c.trim_end().to_owned())
}

/// The process has exited (a zombie not yet reaped counts as exited).
pub fn is_zombie_or_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which may hold anything but `)`.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// The process runs in the network namespace pinned at `netns` (a
/// `/run/netns/NAME` path).
pub fn in_netns(pid: u32, netns: &Path) -> bool {
    let Ok(target) = std::fs::metadata(netns) else { return false };
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_seen_and_a_child_is_seen_go() {
        let me = std::process::id();
        assert!(pids().any(|p| p == me));
        assert!(!cmdline(me).unwrap().is_empty());
        assert!(!is_zombie_or_gone(me));
        assert!(in_netns(me, Path::new("/proc/self/ns/net")));
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        // Between fork and the end of exec the child shows the parent's
        // arguments, then none.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let sleeping = || cmdline(pid).is_some_and(|a| a == ["sleep", "30"]);
        while !sleeping() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(cmdline(pid).unwrap(), ["sleep", "30"]);
        assert_eq!(comm(pid).as_deref(), Some("sleep"));
        child.kill().unwrap();
        // Not reaped yet: a zombie, which counts as gone.
        while !is_zombie_or_gone(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(is_zombie_or_gone(pid));
        child.wait().unwrap();
        assert!(cmdline(pid).is_none() || is_zombie_or_gone(pid));
    }
}
