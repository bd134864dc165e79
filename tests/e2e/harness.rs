//! The end-to-end harness: real labs built by the real `felt` binary.
//!
//! - [`require_root`]: root tests are `#[ignore]`d with the reason, so a
//!   plain `cargo test` shows them as ignored; `-- --include-ignored` runs
//!   them (CI does, and fails if any test was ignored), and then they fail
//!   without root.
//! - [`TestLab`]: a lab with a unique name and its own state directory, torn
//!   down on drop (also on panic); [`TestLab::finish`] tears down and checks
//!   that nothing is left and that the root namespace is as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const FELT: &str = env!("CARGO_BIN_EXE_felt");

/// Fails a root test run without root. Root tests are `#[ignore]`d with
/// that reason, so a plain `cargo test` lists them as ignored rather than
/// passing them unrun; `--include-ignored` (as CI runs) runs them, and then
/// nothing may skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces, netlink): run it as root, or leave out --include-ignored"
    );
}

/// Runs a command and returns its output; panics with everything it said on failure.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `ip ARGS…` inside namespace `ns`, stdout as text.
pub fn ip_in(ns: &str, args: &[&str]) -> String {
    let out = run(Command::new("ip").arg("-n").arg(ns).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `bridge ARGS…` inside namespace `ns`.
pub fn bridge_in(ns: &str, args: &[&str]) -> String {
    let out = run(Command::new("ip").args(["netns", "exec", ns, "bridge"]).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A small generator (xorshift64) for tests that draw intervals or orders
/// at random; printing [`Random::seed`] lets a run be told apart.
#[derive(Debug, Clone)]
pub struct Random {
    /// What it started from.
    pub seed: u64,
    state: u64,
}

impl Random {
    /// Seeded from the clock.
    pub fn from_clock() -> Random {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        // Never zero: xorshift would stay there.
        let seed = nanos as u64 | 1;
        Random { seed, state: seed }
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }
}

/// `nft ARGS…` inside namespace `ns`, which must succeed; returns stdout.
pub fn nft_in(ns: &str, args: &[&str]) -> String {
    let out = run(Command::new("ip").args(["netns", "exec", ns, "nft"]).args(args));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process started with its stderr collected line by line as it runs
/// (to wait for a progress line, then signal it).
pub struct Talking {
    pub child: std::process::Child,
    said: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Talking {
    pub fn spawn(cmd: &mut Command) -> Talking {
        use std::io::BufRead;
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = said.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Talking { child, said, reader: Some(reader) }
    }

    /// What it said so far.
    pub fn said(&self) -> String {
        self.said.lock().unwrap().clone()
    }

    /// Its exit status and all it said.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let status = self.child.wait().expect("waiting for the process");
        if let Some(r) = self.reader.take() {
            r.join().unwrap();
        }
        (status, self.said())
    }
}

/// A bare network namespace, deleted on drop (a panic too).
pub struct Netns(pub String);

impl Netns {
    /// A new namespace, its name unique to this run and ending in `-what`.
    pub fn new(what: &str) -> Netns {
        let name = format!("{}-{what}", TestLab::unique_name());
        run(Command::new("ip").args(["netns", "add", &name]));
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// Polls `f` every 5 ms until it is true or `timeout` passes; returns how long it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

/// The root namespace's network state, minus what changes by itself
/// (dynamic neighbour states, address lifetimes).
pub fn root_snapshot() -> String {
    let mut out = String::new();
    let mut add = |title: &str, cmd: &mut Command| {
        if let Ok(o) = cmd.output() {
            out.push_str(title);
            out.push('\n');
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    };
    add("links", Command::new("ip").args(["-o", "link", "show"]));
    add("addresses", Command::new("ip").args(["-o", "addr", "show"]));
    add("routes", Command::new("ip").args(["route", "show", "table", "all"]));
    add("routes6", Command::new("ip").args(["-6", "route", "show", "table", "all"]));
    add("neighbours", Command::new("ip").args(["neigh", "show", "nud", "permanent"]));
    add("fdb", Command::new("bridge").args(["fdb", "show"]));
    if Path::new("/usr/sbin/nft").exists() {
        add("nft", Command::new("nft").args(["list", "ruleset"]));
    }
    out.lines()
        .map(|l| {
            // Address lifetimes count down; link state words and counters are not compared.
            let l = l.split("valid_lft").next().unwrap_or(l);
            l.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A lab owned by one test.
pub struct TestLab {
    pub name: String,
    state: tempfile::TempDir,
    root_before: String,
    finished: bool,
    /// Held for the lab's life by tests that must not share the machine (see [`exclusive`]).
    exclusive: Option<std::sync::MutexGuard<'static, ()>>,
    /// Every lab's share of the machine, unless its test holds it all (see [`alone`]).
    _shared: Option<std::sync::RwLockReadGuard<'static, ()>>,
}

static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

std::thread_local! {
    /// Whether this test thread holds [`alone`]'s guard.
    static ALONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The whole machine for the caller: no other test's lab runs meanwhile
/// (it waits for those running to finish, and new ones wait for it). For a
/// 200-node lab, whose load (200 agents, a 39,800-pair check) would starve
/// any test beside it.
pub struct Alone(#[allow(dead_code)] std::sync::RwLockWriteGuard<'static, ()>);

/// Takes the whole machine (see [`Alone`]).
pub fn alone() -> Alone {
    let guard = MACHINE.write().unwrap_or_else(|p| p.into_inner());
    ALONE.with(|a| a.set(true));
    Alone(guard)
}

impl Drop for Alone {
    fn drop(&mut self) {
        ALONE.with(|a| a.set(false));
    }
}

/// Whether a kernel worker is freeing network namespaces now: its name
/// says so (`kworker/u8:2+netns`) while it runs the netns work queue (the
/// queue's idle rescuer is `kworker/R-netns`).
fn freeing_namespaces() -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else { return false };
    procs.filter_map(Result::ok).any(|p| {
        std::fs::read_to_string(p.path().join("comm"))
            .is_ok_and(|c| c.starts_with("kworker") && c.contains("+netns"))
    })
}

/// Waits until the kernel has freed a big lab's namespaces: `ip netns del`
/// returns at once and a kernel worker frees them later in batches, under
/// the RTNL lock, so after 200 of them every netlink request waits (7 s
/// measured; the next test's agents stuck in `rtnl_dumpit` meanwhile).
/// Settled: no worker freeing namespaces, and a namespace with a veth pair
/// made and removed in under 100 ms, six times in a row 500 ms apart.
pub fn wait_for_the_kernel_to_settle() {
    let deadline = Instant::now() + Duration::from_secs(180);
    let ns = format!("settle{}", std::process::id());
    let mut quiet = 0;
    while quiet < 6 {
        let started = Instant::now();
        run(Command::new("ip").args(["netns", "add", &ns]));
        run(Command::new("ip").args(["-n", &ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"]));
        run(Command::new("ip").args(["netns", "del", &ns]));
        let fast = started.elapsed() < Duration::from_millis(100);
        quiet = if fast && !freeing_namespaces() { quiet + 1 } else { 0 };
        assert!(Instant::now() < deadline, "the kernel is still freeing namespaces after 180 s");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Runs the caller alone among the tests that take it: those that start a
/// real control plane or podman (hundreds of MB and seconds of CPU each),
/// and those that count every packet across agent restarts. On two cores,
/// two of them side by side starve each other (a CI run saw an API request
/// unanswered for 10 s, and 2 of 1,000 pings lost across userspace restarts).
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|p| p.into_inner())
}

impl TestLab {
    /// A fresh unique lab name.
    pub fn unique_name() -> String {
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        format!("ft{:04x}{seq}", std::process::id() & 0xffff)
    }

    /// Brings up `nodes` nodes with `pods` pods each.
    pub fn up(nodes: u32, pods: u32) -> TestLab {
        Self::up_named(&Self::unique_name(), nodes, pods, &[])
    }

    /// Brings up lab `name` with extra `felt lab up` arguments.
    pub fn up_named(name: &str, nodes: u32, pods: u32, extra: &[&str]) -> TestLab {
        let lab = Self::unbuilt(name);
        let (n, p) = (nodes.to_string(), pods.to_string());
        let mut args = vec!["lab", "up", "--nodes", n.as_str(), "--pods-per-node", p.as_str()];
        args.extend_from_slice(extra);
        lab.felt(&args);
        lab
    }

    /// A handle on lab `name` with its own state directory, not brought up
    /// (for tests that run `felt lab up` themselves); torn down on drop.
    pub fn unbuilt(name: &str) -> TestLab {
        TestLab {
            name: name.to_owned(),
            state: tempfile::Builder::new().prefix("felt-e2e-").tempdir().expect("temp dir"),
            root_before: root_snapshot(),
            finished: false,
            exclusive: None,
            _shared: (!ALONE.with(std::cell::Cell::get))
                .then(|| MACHINE.read().unwrap_or_else(|p| p.into_inner())),
        }
    }

    /// The lab's namespaces that exist now.
    pub fn namespaces(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with(&format!("{}-", self.name)))
            .collect()
    }

    /// Keeps `guard` (from [`exclusive`]) until the lab is gone.
    pub fn hold(&mut self, guard: std::sync::MutexGuard<'static, ()>) {
        self.exclusive = Some(guard);
    }

    /// Runs `felt <args> --name <lab>` (the name goes after the subcommand words).
    pub fn felt_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(FELT);
        c.args(args).arg("--name").arg(&self.name).env("FELT_LAB_STATE", self.state.path());
        c
    }

    /// Runs a felt command that must succeed; returns stdout.
    pub fn felt(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&run(&mut self.felt_command(args)).stdout).into_owned()
    }

    /// A node's namespace.
    pub fn node_ns(&self, node: &str) -> String {
        format!("{}-{node}", self.name)
    }

    /// The lab's status (`felt lab status --json`).
    pub fn status(&self) -> felt::lab::LabStatus {
        serde_json::from_str(&self.felt(&["lab", "status", "--json"]))
            .expect("status --json is the lab's status")
    }

    /// The IPv4 address of the first pod on `node`.
    pub fn first_pod_ip(&self, node: &str) -> std::net::Ipv4Addr {
        let pod = self.status().pods.into_iter().find(|p| p.node == node).expect("a pod on the node");
        pod.ip.expect("the pod has an IPv4 address")
    }

    /// `GET path` on `node`'s debug endpoint, from inside its namespace; `None`
    /// when the endpoint does not answer.
    pub fn try_debug_get(&self, node: &str, path: &'static str) -> Option<(u16, String)> {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], felt::agent::debug::DEFAULT_PORT));
        felt::netns::run_in(&felt::netns::named(&self.node_ns(node)), move || felt::status::get(addr, path))
            .expect("entering the node namespace")
            .ok()
    }

    /// `GET path` on `node`'s debug endpoint, which must answer.
    pub fn debug_get(&self, node: &str, path: &'static str) -> (u16, String) {
        self.try_debug_get(node, path).expect("the debug endpoint answers")
    }

    /// `node`'s `/debug/state`.
    pub fn debug_state(&self, node: &str) -> felt_proto::debug::State {
        let (code, body) = self.debug_get(node, "/debug/state");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("/debug/state is not the debug API's state ({e}): {body}"))
    }

    /// Samples of one metric family on `node`, parsed with a Prometheus text parser.
    pub fn metric_samples(&self, node: &str, name: &str) -> Vec<prometheus_parse::Sample> {
        let (code, body) = self.debug_get(node, "/metrics");
        assert_eq!(code, 200);
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        let scrape = prometheus_parse::Scrape::parse(lines).expect("metrics parse as Prometheus text");
        scrape.samples.into_iter().filter(|s| s.metric == name).collect()
    }

    /// SIGKILLs `node`'s agent and starts it again; returns once the new
    /// one holds its lease, with the length its log had before the kill
    /// (where the new agent's lines start).
    pub fn kill_and_restart(&self, node: &str) -> usize {
        let before = self.log(node).len();
        self.felt(&["lab", "restart-agent", node, "--kill"]);
        let restarted =
            wait_until(Duration::from_secs(10), || self.log(node)[before..].contains("lease held"));
        assert!(restarted.is_some(), "{node}'s agent did not come back:\n{}", self.log(node));
        before
    }

    /// Waits (10 s at most) until `node`'s agent has finished a reconcile
    /// pass since it started; panics with its log otherwise.
    pub fn wait_for_a_pass(&self, node: &str) {
        let passed = wait_until(Duration::from_secs(10), || {
            self.metric_samples(node, "felt_reconcile_total")
                .iter()
                .any(|s| s.labels.get("result") == Some("ok") && sample_value(s).is_some_and(|v| v >= 1.0))
        });
        assert!(passed.is_some(), "{node}'s agent never finished a pass:\n{}", self.log(node));
    }

    /// A node's agent log.
    pub fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.state.path().join(&self.name).join(node).join("agent.log"))
            .unwrap_or_default()
    }

    /// The lab's state directory (its registry, nodes, control plane).
    pub fn lab_dir(&self) -> PathBuf {
        self.state.path().join(&self.name)
    }

    /// A node's directory: its subnet file, CNI store and agent log.
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state.path().join(&self.name).join(node)
    }

    /// The registry's node directory.
    pub fn registry_nodes(&self) -> PathBuf {
        self.state.path().join(&self.name).join("registry").join("nodes")
    }

    /// Tears down and checks: no namespace, no agent, root namespace unchanged.
    pub fn finish(mut self) {
        self.felt(&["lab", "down"]);
        self.finished = true;
        let left: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let mine: Vec<&String> = left.iter().filter(|n| n.starts_with(&format!("{}-", self.name))).collect();
        assert!(mine.is_empty(), "namespaces left behind: {mine:?}");
        let registry = self.state.path().join(&self.name).join("registry").display().to_string();
        assert!(!agents_running(&registry), "agents of {} still running", self.name);
        assert_eq!(self.root_before, root_snapshot(), "the root network namespace changed");
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.felt_command(&["lab", "down"]).output();
        }
    }
}

/// Every ping of a series was answered.
pub fn assert_all_answered(report: &felt::lab::probe::SeriesReport) {
    assert_eq!(
        report.received,
        report.sent,
        "lost {} of {} pings",
        report.sent - report.received,
        report.sent
    );
}

/// Live (not zombie) processes whose command line (arguments joined by
/// spaces) satisfies `matches`.
pub fn processes_where(matches: impl Fn(&str) -> bool) -> Vec<u32> {
    use felt::process;
    process::pids()
        .filter(|pid| {
            !process::is_zombie_or_gone(*pid)
                && process::cmdline(*pid).is_some_and(|args| matches(&args.join(" ")))
        })
        .collect()
}

/// True when any live process's command line names `registry`.
pub fn agents_running(registry: &str) -> bool {
    !processes_where(|cmd| cmd.contains(registry)).is_empty()
}

/// A test API server (tests/apiserver) serving one lab: it binds inside the
/// lab's underlay namespace (waiting for it to exist) on the lab host
/// address, and on loopback here for the test and kubectl. Killed on drop.
pub struct ApiServer {
    child: std::process::Child,
    /// The kubeconfig the lab and its agents use.
    pub kubeconfig: PathBuf,
    /// The kubeconfig for the test and kubectl (loopback).
    pub local_kubeconfig: PathBuf,
    /// The loopback listener.
    pub local: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

fn apiserver_binary() -> PathBuf {
    static BUILD: std::sync::Once = std::sync::Once::new();
    let path = Path::new(FELT).with_file_name("felt-test-apiserver");
    BUILD.call_once(|| {
        // `cargo test` builds this package's binaries only; the test server is another package's.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
        run(Command::new(cargo)
            .args(["build", "-q", "-p", "felt-test-apiserver", "--manifest-path"])
            .arg(manifest));
    });
    assert!(path.exists(), "{} was not built", path.display());
    path
}

impl ApiServer {
    /// Starts a server for lab `lab` (whose namespaces do not exist yet).
    pub fn start(lab: &str) -> ApiServer {
        let dir = tempfile::Builder::new().prefix("felt-api-").tempdir().expect("temp dir");
        let host = felt::lab::host_ip(felt::lab::underlay_subnet(lab));
        let kubeconfig = dir.path().join("lab.kubeconfig");
        let local_kubeconfig = dir.path().join("local.kubeconfig");
        let mut child = Command::new(apiserver_binary())
            .args([
                "--netns",
                &format!("{lab}-ul"),
                "--listen",
                &format!("{host}:6443"),
                "--local",
                "127.0.0.1:0",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--local-kubeconfig")
            .arg(&local_kubeconfig)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("starting felt-test-apiserver");
        // The kubeconfig for the lab is written before the server binds.
        assert!(
            wait_until(Duration::from_secs(10), || kubeconfig.exists()).is_some(),
            "no kubeconfig written"
        );
        let _ = &mut child;
        ApiServer { local: "127.0.0.1:0".parse().unwrap(), child, kubeconfig, local_kubeconfig, _dir: dir }
    }

    /// Reads the loopback address once the server printed it (after binding).
    pub fn wait_ready(&mut self) {
        use std::io::BufRead;
        let stdout = self.child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("reading the server's first line");
        let local = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or("")
            .parse()
            .unwrap_or_else(|_| panic!("unexpected first line {line:?}"));
        self.local = local;
    }

    /// One HTTP request on the loopback listener; returns (code, body).
    pub fn request(&self, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
        let method = method.parse().expect("an HTTP method");
        let body = Some((content_type, body.as_bytes().to_vec()));
        let (status, body) = felt::http::request(self.local, method, path, body, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{}", felt::util::error_chain(&e)));
        (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST /_test/<cmd>`.
    pub fn control(&self, cmd: &str) -> serde_json::Value {
        let (code, body) = self.request("POST", &format!("/_test/{cmd}"), "application/json", "");
        assert_eq!(code, 200, "{cmd}: {body}");
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// `kubectl ARGS…` against the loopback listener; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = run(Command::new("kubectl").arg("--kubeconfig").arg(&self.local_kubeconfig).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of a counter, gauge or untyped sample.
pub fn sample_value(s: &prometheus_parse::Sample) -> Option<f64> {
    match s.value {
        prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Untyped(v) => Some(v),
        _ => None,
    }
}

/// Runs `tests/<module>/build.sh` (which builds once and caches outside the
/// repository) and returns the directory it prints, checked to hold `programs`.
fn built_by(module: &str, programs: &[&str], needs: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../tests/{module}/build.sh"));
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running tests/{module}/build.sh: {e}"));
    assert!(out.status.success(), "tests/{module}/build.sh failed: is {needs} installed?");
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    for program in programs {
        assert!(dir.join(program).exists(), "build.sh printed {}, which lacks {program}", dir.display());
    }
    dir
}

/// The directory holding the real `kube-apiserver`, `kubectl` and `etcd`, built from
/// the Go module `tests/k8s` by its `build.sh` on first use (minutes, once
/// per machine: the binaries are cached outside the repository).
pub fn control_plane_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        built_by("k8s", &["kube-apiserver", "kube-controller-manager", "kubectl", "etcd"], "Go 1.24+")
    })
    .clone()
}

/// The directory holding the real `flanneld` and Flannel's CNI plugin
/// `flannel`, built from the Go modules `tests/flannel` by its `build.sh`
/// on first use (cached outside the repository, like the control plane).
pub fn flannel_bin() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| built_by("flannel", &["flanneld", "flannel"], "Go 1.26+ with gcc")).clone()
}
