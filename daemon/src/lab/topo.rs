//! The lab's plumbing: namespaces and links through iproute2, agent
//! processes, CNI invocations.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What went wrong building, using or removing a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command failed.
    #[error("`{cmd}` failed: {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// What it said.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{action} {path}")]
    Io {
        /// What we were doing.
        action: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Bad request or bad state.
    #[error("{0}")]
    Invalid(String),
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// A signal stopped the command (see `lab::interrupt`).
    #[error("interrupted")]
    Interrupted,
    /// Teardown went on past errors; here they all are.
    #[error("teardown left things behind: {}", .0.join("; "))]
    Teardown(Vec<String>),
}

impl LabError {
    pub(crate) fn io(action: &'static str, path: &Path, source: std::io::Error) -> Self {
        LabError::Io { action, path: path.to_owned(), source }
    }
}

/// Runs `ip ARGS…`.
pub fn ip(args: &[&str]) -> Result<(), LabError> {
    ip_with_input(args, "")
}

/// Runs `ip ARGS…` with `input` on its stdin (`-batch -` reads commands there).
fn ip_with_input(args: &[&str], input: &str) -> Result<(), LabError> {
    let failed = |stderr: String| LabError::Command { cmd: format!("ip {}", args.join(" ")), stderr };
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    // Dropped after writing: `ip` sees end-of-file.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes()).map_err(|e| failed(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_owned()))
    }
}

/// Named namespaces whose name is `<prefix>-…`.
pub fn namespaces_with_prefix(prefix: &str) -> Result<Vec<String>, LabError> {
    let dir = Path::new("/run/netns");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::io("listing", dir, e)),
    };
    let want = format!("{prefix}-");
    Ok(entries
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&want))
        .collect())
}

/// The lab's underlay: a /24 in 198.18.0.0/15 chosen by the lab's name.
pub fn underlay_subnet(name: &str) -> Ipv4Net {
    let seed = felt_proto::MacAddr::derive(name.as_bytes()).octets();
    let k = (u32::from(seed[4]) << 8 | u32::from(seed[5])) % 512;
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + (k << 8);
    Ipv4Net::new(Ipv4Addr::from(base), 24).expect("24 is a valid prefix")
}

/// The lab host's address on the underlay bridge: `.1`. A lab's API server listens there.
pub fn host_ip(underlay: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(underlay.network()) + 1)
}

/// Node `i`'s underlay address: `.10 + i`.
pub fn node_ip(underlay: Ipv4Net, index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(underlay.network()) + 10 + index)
}

/// The IPv6 underlay address beside IPv4 underlay address `ip` (on an
/// IPv6 underlay): `fd00:f31::` with `ip`'s 32 bits, in a /120 per lab (its
/// /24's). ULA space, as `LAB-NETWORK.md` asks.
pub fn underlay6(ip: Ipv4Addr) -> Ipv6Addr {
    Ipv6Addr::from(0xfd00_0f31_0000_0000_0000_0000_0000_0000_u128 | u128::from(u32::from(ip)))
}

/// The IPv6 underlay's prefix length: the IPv4 /24's 8 host bits.
pub const UNDERLAY6_PREFIX: u8 = 120;

/// The underlay MAC of the interface holding `ip` (a node's `eth0`, the
/// lab host's bridge): `02:f1:` and the address's four bytes. Fixed, so
/// every node can hold every other's as a permanent neighbour entry.
pub fn underlay_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:f1:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Makes `(address, MAC)` permanent neighbours on `dev` in namespace `ns`,
/// in one `ip -batch`. All lab nodes share one kernel, whose ARP table
/// garbage-collects above `gc_thresh3` (1,024 by default) entries across
/// every namespace; a full mesh of dynamic underlay entries (n × (n − 1))
/// overflows it past ~30 nodes and pods cannot even resolve their gateway.
/// Permanent entries do not count (Linux ≥ 4.20).
/// With `ipv6` (an IPv6 underlay) each address's [`underlay6`] twin too.
pub fn pin_neighbours(ns: &str, dev: &str, entries: &[Ipv4Addr], ipv6: bool) -> Result<(), LabError> {
    let batch: String = entries
        .iter()
        .map(|ip| {
            let mac = underlay_mac(*ip);
            let mut line = format!("neigh replace {ip} lladdr {mac} dev {dev} nud permanent\n");
            if ipv6 {
                line += &format!("neigh replace {} lladdr {mac} dev {dev} nud permanent\n", underlay6(*ip));
            }
            line
        })
        .collect();
    ip_with_input(&["-n", ns, "-batch", "-"], &batch)
}

/// Removes the neighbour entries for `addr` (and its [`underlay6`] twin)
/// on `dev` in `ns`, if there are any.
pub fn unpin_neighbour(ns: &str, dev: &str, addr: Ipv4Addr) {
    let _ = ip(&["-n", ns, "neigh", "del", &addr.to_string(), "dev", dev]);
    let _ = ip(&["-n", ns, "-6", "neigh", "del", &underlay6(addr).to_string(), "dev", dev]);
}

/// The lab's stand-in for the world outside the cluster: an address from a
/// documentation range (RFC 5737), held by the underlay namespace, reachable
/// only inside the lab (LAB-NETWORK.md rule 3). Pods' traffic to it must
/// leave their node masqueraded.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

/// Its IPv6 address, in a lab whose nodes have IPv6 ones: ULA space
/// (`fd00:f31:…`, `LAB-NETWORK.md`), a /64 of its own on the underlay bridge.
pub const OUTSIDE_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xf31, 0xffff, 0, 0, 0, 0, 1);

/// The underlay namespace with its bridge, which holds `host` (the lab's
/// host address, where a lab's API server listens), [`OUTSIDE_IP`], and
/// with `ipv6` (nodes with IPv6 addresses) `host`'s [`underlay6`] twin and
/// [`OUTSIDE_IP6`].
pub fn make_underlay(ns: &str, host: Ipv4Addr, prefix: u8, ipv6: bool) -> Result<(), LabError> {
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "link", "add", "br0", "address", &underlay_mac(host), "type", "bridge"])?;
    ip(&["-n", ns, "addr", "add", &format!("{host}/{prefix}"), "dev", "br0"])?;
    if ipv6 {
        let host6 = format!("{}/{UNDERLAY6_PREFIX}", underlay6(host));
        ip(&["-n", ns, "addr", "add", &host6, "dev", "br0", "nodad"])?;
        ip(&["-n", ns, "addr", "add", &format!("{OUTSIDE_IP6}/64"), "dev", "br0", "nodad"])?;
    }
    ip(&["-n", ns, "addr", "add", &format!("{OUTSIDE_IP}/24"), "dev", "br0"])?;
    ip(&["-n", ns, "link", "set", "br0", "up"])
}

/// A node namespace, wired to the underlay bridge as `eth0`.
///
/// With `sum_on_send`, `eth0` computes checksums in software before sending.
/// A kernel VXLAN device otherwise passes its frames on with the *inner*
/// checksum still to be filled in (checksum offload), and veths deliver them
/// so; a kernel VXLAN receiver accepts that, but a userspace one reads the
/// bytes as they are. Real NICs fill it in on the wire, so this only matters
/// for kernel nodes of a mixed lab. (Userspace senders fill in inner
/// checksums themselves, and keep offload for UDP GSO.)
pub fn make_node(
    underlay_ns: &str,
    ns: &str,
    addr: Ipv4Addr,
    prefix: u8,
    sum_on_send: bool,
    ipv6: bool,
) -> Result<(), LabError> {
    ip(&["netns", "add", ns])?;
    // The bridge-side end is named after the node namespace: unique, and recognisable.
    let mac = underlay_mac(addr);
    ip(&[
        "-n",
        underlay_ns,
        "link",
        "add",
        ns,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "address",
        &mac,
        "netns",
        ns,
    ])?;
    ip(&["-n", underlay_ns, "link", "set", ns, "master", "br0", "up"])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    ip(&["-n", ns, "addr", "add", &format!("{addr}/{prefix}"), "dev", "eth0"])?;
    if ipv6 {
        let addr6 = format!("{}/{UNDERLAY6_PREFIX}", underlay6(addr));
        ip(&["-n", ns, "addr", "add", &addr6, "dev", "eth0", "nodad"])?;
    }
    if sum_on_send {
        tx_checksum_offload(ns, false)?;
    }
    ip(&["-n", ns, "link", "set", "eth0", "up"])?;
    // The outside host, through the lab host: the node's only route off its /24.
    let lab_host = host_ip(Ipv4Net::new(addr, prefix).map_err(|e| LabError::Invalid(e.to_string()))?.trunc());
    let outside = Ipv4Net::new(OUTSIDE_IP, 24).map_err(|e| LabError::Invalid(e.to_string()))?.trunc();
    ip(&["-n", ns, "route", "add", &outside.to_string(), "via", &lab_host.to_string(), "dev", "eth0"])?;
    if ipv6 {
        let outside6 = Ipv6Net::new(OUTSIDE_IP6, 64).map_err(|e| LabError::Invalid(e.to_string()))?.trunc();
        let via = underlay6(lab_host).to_string();
        ip(&["-n", ns, "-6", "route", "add", &outside6.to_string(), "via", &via, "dev", "eth0"])?;
    }
    Ok(())
}

/// Turns checksum offload on `eth0` of node namespace `ns` on or off (see [`make_node`]).
pub fn tx_checksum_offload(ns: &str, on: bool) -> Result<(), LabError> {
    let state = if on { "on" } else { "off" };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-K", "eth0", "tx", state])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command {
            cmd: format!("ethtool -K eth0 tx {state}"),
            stderr: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("ip netns exec {ns} ethtool -K eth0 tx {state} (mixed labs need ethtool)"),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Stops every process still inside named namespace `ns` (a stopped
/// agent's keeper, say): SIGTERM, then SIGKILL after a second, then waits (5 s at
/// most) until they are gone. Returns how many.
pub fn kill_processes_in(ns: &str) -> usize {
    let netns = crate::netns::named(ns);
    if !netns.exists() {
        return 0;
    }
    let inside = |pid: u32| crate::process::in_netns(pid, &netns) && !is_zombie_or_gone(pid);
    let pids: Vec<u32> =
        crate::process::pids().filter(|pid| *pid != std::process::id() && inside(*pid)).collect();
    for pid in &pids {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(1);
    while pids.iter().any(|p| inside(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    for pid in pids.iter().filter(|p| inside(**p)) {
        if let Ok(raw) = i32::try_from(*pid) {
            let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
        }
    }
    // Killed is not yet gone: a kube-apiserver with hundreds of threads takes
    // a moment to exit, and the caller deletes the namespace next.
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|p| inside(*p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    pids.len()
}

/// Starts `felt ARGS…` inside `ns`, detached, logging to `log`. Returns its pid.
pub fn spawn_in(ns: &str, felt: &Path, args: &[String], log: &Path) -> Result<u32, LabError> {
    spawn_program_in(ns, felt, args, &[], log)
}

/// Starts `program` with `args` and `env` inside namespace `ns`, in its own
/// process group, its output appended to `log`. Returns its pid.
pub fn spawn_program_in(
    ns: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
) -> Result<u32, LabError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LabError::io("opening", log, e))?;
    let file2 = file.try_clone().map_err(|e| LabError::io("opening", log, e))?;
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(file2)
        // Its own process group: a Ctrl-C on `felt lab up` does not take the agents down.
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Command {
            cmd: format!("ip netns exec {ns} {}", program.display()),
            stderr: e.to_string(),
        })?;
    Ok(child.id())
}

/// Runs a CNI plugin (`felt cni`: `plugin` felt, `args` `["cni"]`) inside
/// node namespace `ns` the way a container runtime does.
pub fn cni(
    ns: &str,
    plugin: &Path,
    args: &[&str],
    command: &str,
    pod_ns: &str,
    conf: &serde_json::Value,
    cni_path: &Path,
) -> Result<serde_json::Value, LabError> {
    let cmd = format!("CNI_COMMAND={command} {} {} (pod {pod_ns})", plugin.display(), args.join(" "));
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(plugin)
        .args(args)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", pod_ns)
        .env("CNI_NETNS", crate::netns::named(pod_ns))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| LabError::Command { cmd: cmd.clone(), stderr: e.to_string() })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| LabError::Command { cmd: cmd.clone(), stderr: e.to_string() })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| LabError::Command { cmd: cmd.clone(), stderr: e.to_string() })?;
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    if !out.status.success() {
        return Err(LabError::Command {
            cmd,
            stderr: format!("{value} {}", String::from_utf8_lossy(&out.stderr).trim()),
        });
    }
    Ok(value)
}

pub(crate) use crate::process::{cmdline, is_zombie_or_gone};

/// True when `pid` is a live agent of the lab whose registry is
/// `registry`: felt naming it, or flanneld naming a file of the lab's.
pub fn agent_alive(pid: u32, registry: &Path) -> bool {
    let lab_dir = registry.parent().map(|d| format!("{}/", d.display()));
    !is_zombie_or_gone(pid)
        && cmdline(pid).is_some_and(|args| {
            let registry = registry.display().to_string();
            let felt = args.iter().any(|a| a == "daemon") && args.iter().any(|a| a.contains(&registry));
            let flanneld = args.first().is_some_and(|a| a.ends_with("/flanneld"))
                && lab_dir.as_ref().is_some_and(|d| args.iter().any(|a| a.contains(d.as_str())));
            felt || flanneld
        })
}

/// Every live felt agent using `registry`.
pub fn agents_using(registry: &Path) -> Vec<u32> {
    crate::process::pids().filter(|pid| *pid != std::process::id() && agent_alive(*pid, registry)).collect()
}

/// Stops a lab agent: SIGTERM (or SIGKILL), then SIGKILL after 3 s. Only a
/// process whose command line names this lab's registry is signalled, so a
/// recycled pid is never hit. Returns whether there was an agent to stop.
pub fn kill_agent(pid: u32, registry: &Path, hard: bool) -> bool {
    if !agent_alive(pid, registry) {
        return false;
    }
    let Ok(raw) = i32::try_from(pid) else { return false };
    let target = Pid::from_raw(raw);
    let _ = kill(target, if hard { Signal::SIGKILL } else { Signal::SIGTERM });
    let deadline = Instant::now() + Duration::from_secs(3);
    while !is_zombie_or_gone(pid) {
        if Instant::now() > deadline {
            let _ = kill(target, Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(50));
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn underlay_stays_in_the_benchmark_range() {
        let bench: Ipv4Net = "198.18.0.0/15".parse().unwrap();
        for name in ["felt", "ft3a9", "a", "zzzzzzzz"] {
            let u = underlay_subnet(name);
            assert!(bench.contains(&u), "{name}: {u}");
            assert!(u.contains(&node_ip(u, 200)));
        }
    }
}
