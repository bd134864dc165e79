//! A real container runtime drives the plugin: Debian's podman, with its CNI
//! network backend and runc, started inside a lab node's network namespace
//! (`nsenter --net=`), runs busybox-static containers attached through
//! `felt cni` with `portmap` chained after it, in native and delegate mode.
//! No image is pulled: the container's root is a directory (`--rootfs`).

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cni::{call, conf, new_pod, plugin_links};
use crate::harness::{FELT, TestLab, require_root, run};

/// What the test needs installed (`.ci/run` installs it).
const NEEDS: [&str; 4] = ["/usr/bin/podman", "/usr/sbin/runc", "/bin/busybox", "/usr/lib/cni/portmap"];

/// A podman with all its state in a temporary directory, run in a node's
/// network namespace. Removes its containers and state on drop.
struct Podman {
    dir: tempfile::TempDir,
    node_ns: String,
}

impl Podman {
    /// Sets up podman for `node_ns`, with `conflist` as its only network.
    fn new(node_ns: &str, conflist: &Value) -> Podman {
        for path in NEEDS {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: .ci/run installs podman, runc, busybox-static"
            );
        }
        let dir = tempfile::Builder::new().prefix("felt-podman-").tempdir().unwrap();
        let d = dir.path();
        // The container's root: busybox-static and the applets the test uses.
        let rootfs = d.join("rootfs");
        for sub in ["bin", "etc", "proc", "sys", "dev", "tmp"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "nc", "ping", "cat", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        // The plugins podman may run: felt itself, and Debian's.
        let bin = d.join("cni-bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(FELT, bin.join("felt")).unwrap();
        for plugin in ["portmap", "bridge", "host-local"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(plugin), bin.join(plugin)).unwrap();
        }
        let net_d = d.join("net.d");
        std::fs::create_dir_all(&net_d).unwrap();
        std::fs::write(net_d.join("felt.conflist"), conflist.to_string()).unwrap();
        // The machine's file-descriptor and process limits are below podman's
        // defaults, which runc cannot raise: ask for what is there.
        let conf = format!(
            "[network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\"]\nnetwork_config_dir = \"{}\"\n\
             [engine]\nruntime = \"runc\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             events_logfile_path = \"{}\"\n[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
            bin.display(),
            net_d.display(),
            d.join("events.log").display()
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        Podman { dir, node_ns: node_ns.to_owned() }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    fn command(&self, args: &[&str]) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", felt::netns::named(&self.node_ns).display()))
            .arg("podman")
            .arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("runroot"))
            .args(["--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", d.join("containers.conf"))
            .current_dir(d);
        c
    }

    /// Runs podman; it must succeed. Returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run(&mut self.command(args)).stdout).into_owned()
    }

    fn output(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("running podman")
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "--all", "--force", "--time", "0"]).output();
        // runc's and podman's mounts under the state directory, if any are left.
        let _ = Command::new("umount")
            .arg("--recursive")
            .arg("--lazy")
            .arg(self.dir.path().join("runroot"))
            .output();
        let _ = Command::new("umount")
            .arg("--recursive")
            .arg("--lazy")
            .arg(self.dir.path().join("root"))
            .output();
    }
}

/// The network namespaces podman made (its CNI backend names them `netns-<uuid>`;
/// labs of tests running beside this one come and go under their own names).
fn netns_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    names.retain(|n| n.starts_with("netns-"));
    names.sort();
    names
}

/// What a connection to `addr` from inside namespace `ns` reads; `None`
/// when nothing answers.
fn read_from(ns: &str, addr: SocketAddr) -> Option<String> {
    felt::netns::run_in(&felt::netns::named(ns), move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut got = String::new();
        s.read_to_string(&mut got).ok()?;
        Some(got)
    })
    .expect("entering the namespace")
}

/// Addresses held on `node` in felt's own store (native) and host-local's (delegate).
fn held(lab: &TestLab, node: &str, data_dir: &str) -> usize {
    let dir = lab.node_dir(node).join(data_dir);
    [dir.join("felt"), dir.join("host-local").join("felt")]
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<std::net::Ipv4Addr>().ok())
        .count()
}

#[test]
#[ignore = "needs root: run as root with `cargo test -- --include-ignored` (CI does)"]
fn podman_containers_attach_through_felt_with_portmap() {
    require_root();
    let _alone = crate::harness::exclusive();
    let lab = TestLab::up(2, 0);
    // A pod on n2 to reach, attached by the plugin directly.
    new_pod(&lab, "far");
    let far = call(&lab, "n2", "ADD", "far", conf(&lab, "n2", "1.1.0")).ok();
    let far_ip = far["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    let n1_ip = lab.status().nodes[0].underlay_ip.to_string();
    let data_dir = "podman-cni";

    for (mode, delegate) in [("native", None), ("delegate", Some(json!({})))] {
        let mut felt = json!({
            "type": "felt",
            "subnetFile": lab.node_dir("n1").join("subnet.env"),
            "dataDir": lab.node_dir("n1").join(data_dir),
        });
        if let Some(d) = delegate {
            felt["delegate"] = d;
        }
        let conflist = json!({
            "cniVersion": "1.0.0",
            "name": "felt",
            "plugins": [felt, {"type": "portmap", "capabilities": {"portMappings": true}}],
        });
        let podman = Podman::new(&lab.node_ns("n1"), &conflist);
        let rootfs = podman.rootfs();
        let rootfs = rootfs.to_str().unwrap();
        let netns_before = netns_names();

        // A server with a hostPort, reached from another node through portmap's DNAT.
        let hello = format!("hello from podman, {mode} mode");
        podman.ok(&[
            "run",
            "-d",
            "--name",
            "web",
            "--network",
            "felt",
            "-p",
            "8080:80",
            "--rootfs",
            rootfs,
            "/bin/nc",
            "-ll",
            "-p",
            "80",
            "-e",
            "/bin/echo",
            &hello,
        ]);
        let web_ip =
            podman.ok(&["inspect", "web", "--format", "{{.NetworkSettings.Networks.felt.IPAddress}}"]);
        assert!(web_ip.trim().starts_with("10.244."), "{mode}: web has {web_ip:?}");
        let addr: SocketAddr = format!("{n1_ip}:8080").parse().unwrap();
        // The listener may not be up the instant `run -d` returns.
        let mut got = String::new();
        for _ in 0..50 {
            got = read_from(&lab.node_ns("n2"), addr).unwrap_or_default();
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(got.trim(), hello, "{mode}: the hostPort from n2");

        // A container reaches a pod on another node, with the overlay MTU.
        let out = podman.output(&[
            "run",
            "--rm",
            "--network",
            "felt",
            "--rootfs",
            rootfs,
            "/bin/sh",
            "-c",
            &format!("cat /sys/class/net/eth0/mtu; ping -c 3 -W 2 {far_ip}"),
        ]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{mode}: {said}{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(said.lines().next(), Some("1450"), "{mode}: {said}");
        assert!(said.contains("3 packets received"), "{mode}: {said}");

        // Removed: no address, no veth, no namespace, no DNAT is left (each
        // seen first while web runs, so its absence means something).
        let nat = || {
            let out = run(Command::new("ip").args([
                "netns",
                "exec",
                &lab.node_ns("n1"),
                "iptables",
                "-t",
                "nat",
                "-S",
            ]));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        assert_eq!(held(&lab, "n1", data_dir), 1, "{mode}: only web holds an address now");
        assert_eq!(plugin_links(&lab, "n1").len(), 1, "{mode}: web's host end");
        assert_eq!(netns_names().len(), netns_before.len() + 1, "{mode}: web's namespace");
        assert!(nat().contains("--dport 8080 -j DNAT"), "{mode}: {}", nat());
        podman.ok(&["rm", "--force", "--time", "0", "web"]);
        assert_eq!(held(&lab, "n1", data_dir), 0, "{mode}: web's address is freed");
        assert!(plugin_links(&lab, "n1").is_empty(), "{mode}: {:?}", plugin_links(&lab, "n1"));
        assert_eq!(netns_names(), netns_before, "{mode}: podman's namespace is gone");
        let nat = nat();
        assert!(
            !nat.contains("CNI-DN-") && !nat.contains("8080"),
            "{mode}: portmap's rules are left:\n{nat}"
        );
    }
    call(&lab, "n2", "DEL", "far", conf(&lab, "n2", "1.1.0")).ok();
    lab.finish();
}
