//! Rootless labs: `felt lab up --rootless` run by the unprivileged `nobody`
//! user, with no capability at all on the host.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::{FELT, TestLab, processes_where, require_root, root_snapshot};

/// `felt` run as `nobody` from a copy anyone may execute (the build tree
/// may sit under a home directory `nobody` cannot enter), with a minimal
/// environment.
struct Nobody {
    felt: PathBuf,
    uid: u32,
    gid: u32,
    _dir: tempfile::TempDir,
}

impl Nobody {
    fn new() -> Nobody {
        let user = nix::unistd::User::from_name("nobody").unwrap().expect("a `nobody` user");
        let dir = tempfile::Builder::new().prefix("felt-rootless-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let felt = dir.path().join("felt");
        std::fs::copy(FELT, &felt).unwrap();
        std::fs::set_permissions(&felt, std::fs::Permissions::from_mode(0o755)).unwrap();
        Nobody { felt, uid: user.uid.as_raw(), gid: user.gid.as_raw(), _dir: dir }
    }

    fn command(&self, lab: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.felt);
        c.args(args)
            .args(["--name", lab])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .current_dir("/")
            .uid(self.uid)
            .gid(self.gid);
        c
    }

    fn run(&self, lab: &str, args: &[&str]) -> Output {
        self.command(lab, args).output().unwrap()
    }

    /// Runs and must succeed; returns stdout.
    fn ok(&self, lab: &str, args: &[&str]) -> String {
        let out = self.run(lab, args);
        assert!(
            out.status.success(),
            "felt {args:?} as nobody failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Takes a rootless lab down on drop, panics included.
struct Down<'a>(&'a Nobody, &'a str);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(self.1, &["lab", "down"]);
    }
}

fn uid_of(pid: u64) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn holders_of(lab: &str) -> Vec<u32> {
    processes_where(|cmd| cmd.contains("lab hold") && cmd.contains(lab))
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn rootless_labs_run_as_nobody() {
    require_root();
    // Root is only needed to become `nobody`, and for /dev/net/tun's mode:
    // distributions ship it 0666; some minimal images do not.
    let tun = Path::new("/dev/net/tun");
    let mode = std::fs::metadata(tun).expect("/dev/net/tun exists").permissions().mode();
    if mode & 0o006 != 0o006 {
        std::fs::set_permissions(tun, std::fs::Permissions::from_mode(0o666)).unwrap();
        eprintln!("rootless_labs_run_as_nobody: made /dev/net/tun mode 0666 (it was {:o})", mode & 0o777);
    }
    let nobody = Nobody::new();
    let root_before = root_snapshot();

    // Without a lab, a user gets told what to do, and `down` stays safe to repeat.
    let name = TestLab::unique_name();
    let out = nobody.run(&name, &["lab", "check"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rootless"), "{out:?}");
    assert!(nobody.ok(&name, &["lab", "down"]).contains("nothing to remove"));

    for (mode, nodes, pairs) in [("userspace", 3, "6/6"), ("mixed", 2, "2/2")] {
        let name = TestLab::unique_name();
        let _down = Down(&nobody, &name);
        nobody.ok(
            &name,
            &[
                "lab",
                "up",
                "--rootless",
                "--mode",
                mode,
                "--nodes",
                &nodes.to_string(),
                "--pods-per-node",
                "1",
            ],
        );
        let check = nobody.ok(&name, &["lab", "check"]);
        assert_eq!(check.lines().last(), Some(&*format!("{pairs} pod pairs reachable")), "{check}");

        // Everything runs as nobody, and nothing of the lab is visible on the host.
        let status: felt::lab::LabStatus =
            serde_json::from_str(&nobody.ok(&name, &["lab", "status", "--json"])).unwrap();
        for n in &status.nodes {
            assert_eq!(n.ready, Some(true), "{n:?}");
            assert_eq!(uid_of(u64::from(n.pid)), Some(nobody.uid), "{n:?}");
        }
        let holders = holders_of(&name);
        assert_eq!(holders.len(), 1, "one holder per rootless lab");
        assert_eq!(uid_of(u64::from(holders[0])), Some(nobody.uid));
        let host_netns = std::fs::read_dir("/run/netns")
            .map(|d| d.filter_map(|e| e.ok()).any(|e| e.file_name().to_string_lossy().starts_with(&name)))
            .unwrap_or(false);
        assert!(!host_netns, "a rootless lab's namespaces are pinned inside its own mount namespace");

        // A restarted agent rejoins.
        nobody.ok(&name, &["lab", "restart-agent", "n2"]);
        let check = nobody.ok(&name, &["lab", "check"]);
        assert_eq!(check.lines().last(), Some(&*format!("{pairs} pod pairs reachable")), "{check}");

        let status: felt::lab::LabStatus =
            serde_json::from_str(&nobody.ok(&name, &["lab", "status", "--json"])).unwrap();
        assert!(nobody.ok(&name, &["lab", "down"]).contains("removed"));
        assert!(holders_of(&name).is_empty(), "the holder stops with the lab");
        let agents: Vec<u32> = status.nodes.iter().map(|n| n.pid).collect();
        for pid in agents {
            let cmd = felt::process::cmdline(pid).unwrap_or_default().join(" ");
            assert!(!cmd.contains(&name), "agent {pid} outlived the lab");
        }
    }
    assert_eq!(root_before, root_snapshot(), "the root network namespace changed");
}
