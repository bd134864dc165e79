//! Rootless labs: the whole lab inside a user namespace the invoking user
//! owns, so `felt lab` needs no root and no sudo.
//!
//! `felt lab up --rootless` starts a *holder*: a `felt lab hold` process
//! that unshares a user namespace (our uid and gid mapped to 0), a mount
//! namespace (a private tmpfs on `/run`, where `ip netns` pins namespaces
//! and the lab keeps its state) and a network namespace (the lab's "root"
//! namespace, so nothing touches the host's). The holder then just waits.
//! Every `felt lab` command for that lab joins the holder's namespaces
//! before doing anything else, and from there on is the same code as a
//! root lab: inside, we are root over everything the lab creates.
//! `felt lab down` removes the lab and stops the holder; with the holder
//! gone, the kernel frees every namespace of the lab.
//!
//! The holder's pid is kept in `$TMPDIR/felt-lab-<uid>/<name>.pid`, outside
//! the lab's mount namespace, so later commands can find it.
//!
//! What the host must allow: unprivileged user namespaces
//! (`kernel.unprivileged_userns_clone`, AppArmor's
//! `kernel.apparmor_restrict_unprivileged_userns` where those exist, and a
//! non-zero `user.max_user_namespaces`), `/dev/net/tun` mode 0666 (as
//! distributions ship it) for the userspace data plane, and `ip` and
//! `ethtool` on `PATH`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Gid, Pid, Uid};

use super::LabError;

/// What the holder prints once its namespaces are ready.
const READY: &str = "felt-lab-holder-ready";

fn failed(what: impl Into<String>, e: impl std::fmt::Display) -> LabError {
    LabError::Command { cmd: what.into(), stderr: e.to_string() }
}

/// The directory holding this user's rootless labs' holder pids.
fn locator_dir() -> PathBuf {
    std::env::temp_dir().join(format!("felt-lab-{}", Uid::current()))
}

fn pid_file(name: &str) -> PathBuf {
    locator_dir().join(format!("{name}.pid"))
}

/// True when `pid` is a live `felt lab hold` for lab `name`.
fn is_holder(pid: i32, name: &str) -> bool {
    let Ok(pid) = u32::try_from(pid) else { return false };
    let Some(args) = super::topo::cmdline(pid) else { return false };
    let has = |s: &str| args.iter().any(|a| a == s);
    !super::topo::is_zombie_or_gone(pid) && has("lab") && has("hold") && has(name)
}

/// A rootless lab's holder process.
#[derive(Debug, Clone)]
pub struct Holder {
    name: String,
    pid: i32,
    /// Resolved before joining the lab's namespaces (where our uid reads 0).
    pid_file: PathBuf,
}

/// The live holder of this user's rootless lab `name`, if there is one. A
/// pid file whose holder is gone (a reboot, a kill) is removed: the lab
/// went with it.
pub fn holder(name: &str) -> Option<Holder> {
    let path = pid_file(name);
    let pid = std::fs::read_to_string(&path).ok()?.trim().parse::<i32>().ok()?;
    if is_holder(pid, name) {
        Some(Holder { name: name.to_owned(), pid, pid_file: path })
    } else {
        let _ = std::fs::remove_file(&path);
        None
    }
}

/// Starts the holder of rootless lab `name` and records its pid.
pub fn start_holder(name: &str, felt: &Path) -> Result<Holder, LabError> {
    let dir = locator_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| LabError::io("creating", &dir, e))?;
    // A shared temporary directory: only trust our own.
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| LabError::io("reading", &dir, e))?;
    if !meta.is_dir() || meta.uid() != Uid::current().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(LabError::Invalid(format!(
            "{} must be a directory owned by uid {} with mode 0700",
            dir.display(),
            Uid::current()
        )));
    }
    let mut child = Command::new(felt)
        .args(["lab", "hold", "--name", name])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C on `felt lab up` does not take the lab down.
        .process_group(0)
        .spawn()
        .map_err(|e| failed(format!("{} lab hold", felt.display()), e))?;
    let pid = i32::try_from(child.id()).expect("pids fit in i32");
    let mut line = String::new();
    let mut out = BufReader::new(child.stdout.take().expect("stdout is piped"));
    let _ = out.read_line(&mut line);
    if line.trim() != READY {
        let _ = child.kill();
        let _ = child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        return Err(failed(
            "creating the rootless lab's user, mount and network namespaces",
            format!(
                "{}{}",
                stderr.trim(),
                " (does this host allow unprivileged user namespaces? see README, Rootless labs)"
            ),
        ));
    }
    let holder = Holder { name: name.to_owned(), pid, pid_file: pid_file(name) };
    if let Err(e) = std::fs::write(&holder.pid_file, format!("{pid}\n")) {
        holder.stop();
        return Err(LabError::io("writing", &pid_file(name), e));
    }
    Ok(holder)
}

impl Holder {
    /// Joins the holder's user, mount and network namespaces. Must be called
    /// while the process has one thread (the kernel refuses to move a
    /// multithreaded process into another user namespace).
    pub fn enter(&self) -> Result<(), LabError> {
        let pid = self.pid;
        let cwd = std::env::current_dir().ok();
        let open = |ns: &str| {
            let path = PathBuf::from(format!("/proc/{pid}/ns/{ns}"));
            std::fs::File::open(&path).map_err(|e| LabError::io("opening", &path, e))
        };
        let (user, mnt, net) = (open("user")?, open("mnt")?, open("net")?);
        setns(&user, CloneFlags::CLONE_NEWUSER).map_err(|e| failed("joining the lab's user namespace", e))?;
        setns(&mnt, CloneFlags::CLONE_NEWNS).map_err(|e| failed("joining the lab's mount namespace", e))?;
        setns(&net, CloneFlags::CLONE_NEWNET)
            .map_err(|e| failed("joining the lab's network namespace", e))?;
        // Paths resolve in the new mount namespace from here on.
        if let Some(cwd) = cwd {
            let _ = std::env::set_current_dir(cwd);
        }
        Ok(())
    }

    /// Stops the holder (after `down` removed the lab) and forgets it.
    pub fn stop(&self) {
        if is_holder(self.pid, &self.name) {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while is_holder(self.pid, &self.name) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// The holder itself: makes the namespaces, says so on stdout, then waits
/// for SIGTERM. Must be called while the process has one thread.
pub fn hold() -> Result<std::convert::Infallible, LabError> {
    let (uid, gid) = (Uid::current(), Gid::current());
    unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| failed("unshare(CLONE_NEWUSER)", e))?;
    // Map ourselves to root inside; setgroups must be denied before an
    // unprivileged process may write its gid map.
    let write = |file: &str, what: String| {
        std::fs::write(format!("/proc/self/{file}"), what)
            .map_err(|e| failed(format!("writing /proc/self/{file}"), e))
    };
    write("setgroups", "deny".into())?;
    write("uid_map", format!("0 {uid} 1"))?;
    write("gid_map", format!("0 {gid} 1"))?;
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWNET)
        .map_err(|e| failed("unshare(CLONE_NEWNS | CLONE_NEWNET)", e))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| failed("making / private in the lab's mount namespace", e))?;
    mount(Some("felt-lab"), "/run", Some("tmpfs"), MsFlags::empty(), Some("mode=0755"))
        .map_err(|e| failed("mounting a tmpfs on /run in the lab's mount namespace", e))?;
    println!("{READY}");
    // Nothing else to say; the parent stops reading here.
    loop {
        nix::unistd::pause();
    }
}
