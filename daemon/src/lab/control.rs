//! A real Kubernetes control plane for a lab: etcd, kube-apiserver and
//! kube-controller-manager (its garbage collector only), started inside the lab's underlay namespace `NAME-ul` (so nothing of it is
//! reachable from outside the lab), for `felt lab up --registry kube` without
//! `--kubeconfig`.
//!
//! - etcd listens on loopback inside `NAME-ul`; kube-apiserver on the lab
//!   host address (`.1` of the underlay), port 6443, where every node reaches
//!   it, with a serving certificate from a throwaway CA (made with `openssl`).
//! - Authentication: a static token for the lab's admin (group
//!   `system:masters`), and service-account tokens signed with a throwaway key.
//!   Authorization: RBAC only. An audit log (metadata level) records every
//!   request with its user and decision.
//! - The lab applies `deploy/felt.yaml`'s ServiceAccount, ClusterRole and
//!   binding, asks the TokenRequest API for a token of the `felt`
//!   ServiceAccount, and gives the agents a kubeconfig with that token: they
//!   run with exactly the RBAC a cluster would give them. It creates
//!   `deploy/felt.yaml`'s CustomResourceDefinition (FeltNode) too, then
//!   starts kube-controller-manager with only its garbage collector, which
//!   deletes a Node's FeltNode with the Node, as in a cluster.
//!
//! `felt lab down` stops both with the rest of the namespace's processes.
//! The binaries are built from the pinned Go module `tests/k8s` by
//! `tests/k8s/build.sh`.

use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde::Deserialize;

use super::{LabError, topo};
use crate::netns;

/// The manifest whose RBAC the agents get.
const DEPLOY: &str = include_str!("../../../deploy/felt.yaml");

/// The port kube-apiserver serves on, on the lab host address.
pub const API_PORT: u16 = 6443;

/// Where the control plane's programs are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `kube-apiserver`.
    pub kube_apiserver: PathBuf,
    /// `kube-controller-manager`.
    pub kube_controller_manager: PathBuf,
    /// `etcd`.
    pub etcd: PathBuf,
}

impl Binaries {
    /// The programs in `dir`, or else on `$PATH`.
    pub fn find(dir: Option<&Path>) -> Result<Binaries, LabError> {
        let find = |name: &str| -> Result<PathBuf, LabError> {
            let candidates: Vec<PathBuf> = match dir {
                Some(d) => vec![d.join(name)],
                None => std::env::var_os("PATH")
                    .map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect())
                    .unwrap_or_default(),
            };
            candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
                LabError::Invalid(format!(
                    "no {name} {}: build the control plane with tests/k8s/build.sh and pass \
                     --control-plane \"$(tests/k8s/build.sh)\" (or FELT_K8S_BIN)",
                    dir.map_or_else(|| "on PATH".to_owned(), |d| format!("in {}", d.display()))
                ))
            })
        };
        Ok(Binaries {
            kube_apiserver: find("kube-apiserver")?,
            kube_controller_manager: find("kube-controller-manager")?,
            etcd: find("etcd")?,
        })
    }
}

/// A started control plane.
#[derive(Debug, Clone)]
pub struct Started {
    /// Admin kubeconfig (server on the lab host address: use it inside `NAME-ul`).
    pub admin_kubeconfig: PathBuf,
    /// The agents' kubeconfig: the `felt` ServiceAccount's token.
    pub agent_kubeconfig: PathBuf,
    /// The API server's audit log.
    pub audit_log: PathBuf,
    /// From the first process started to the RBAC applied and the token issued.
    pub took: Duration,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), LabError> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError::Command { cmd: "openssl".into(), stderr: e.to_string() })?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: format!("openssl {}", args.join(" ")),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| LabError::io("writing", path, e))
}

/// A random token: 32 bytes of the kernel's randomness, in hex.
fn token() -> Result<String, LabError> {
    let mut bytes = [0u8; 32];
    let path = Path::new("/dev/urandom");
    std::io::Read::read_exact(
        &mut std::fs::File::open(path).map_err(|e| LabError::io("opening", path, e))?,
        &mut bytes,
    )
    .map_err(|e| LabError::io("reading", path, e))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A throwaway CA, the API server's certificate for `host`, the
/// service-account key pair.
fn make_keys(dir: &Path, host: Ipv4Addr) -> Result<(), LabError> {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &ec[..],
            &["-keyout", "ca.key", "-out", "ca.crt", "-days", "7", "-subj", "/CN=felt-lab-ca"],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[
            &["req"],
            &ec[..],
            &["-keyout", "apiserver.key", "-out", "apiserver.csr", "-subj", "/CN=kube-apiserver"],
        ]
        .concat(),
    )?;
    write(
        &dir.join("apiserver.ext"),
        &format!(
            "subjectAltName=IP:{host},IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default.svc\n\
             extendedKeyUsage=serverAuth\n"
        ),
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "apiserver.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-extfile",
            "apiserver.ext",
            "-out",
            "apiserver.crt",
        ],
    )?;
    openssl(
        dir,
        &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-out", "sa.key"],
    )?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])
}

/// A kubeconfig for `server` with `token`, trusting the lab's CA.
fn kubeconfig_text(dir: &Path, user: &str, server: &str, token: &str) -> Result<String, LabError> {
    let ca = dir.join("ca.crt");
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lab", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": user}}],
        "current-context": "lab",
    })
    .to_string())
}

/// Starts etcd and kube-apiserver in namespace `ul` and gives the agents
/// their ServiceAccount. Files go to `dir`, logs to `dir/*.log`.
pub fn start(
    dir: &Path,
    ul: &str,
    host: Ipv4Addr,
    bins: &Binaries,
    progress: &mut dyn FnMut(&str),
) -> Result<Started, LabError> {
    let started = Instant::now();
    std::fs::create_dir_all(dir).map_err(|e| LabError::io("creating", dir, e))?;
    let dir = &std::fs::canonicalize(dir).map_err(|e| LabError::io("reading", dir, e))?;
    make_keys(dir, host)?;
    let admin_token = token()?;
    write(
        &dir.join("tokens.csv"),
        &format!("{admin_token},felt-lab-admin,felt-lab-admin,\"system:masters\"\n"),
    )?;
    write(
        &dir.join("audit-policy.yaml"),
        "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
    )?;
    let audit_log = dir.join("audit.log");
    let etcd = topo::spawn_in(ul, &bins.etcd, &etcd_args(dir), &dir.join("etcd.log"))?;
    progress(&format!("etcd pid {etcd} in {ul}"));
    let api = topo::spawn_in(
        ul,
        &bins.kube_apiserver,
        &apiserver_args(dir, host, &audit_log),
        &dir.join("kube-apiserver.log"),
    )?;
    progress(&format!("kube-apiserver pid {api} on https://{host}:{API_PORT} in {ul}"));

    let server = format!("https://{host}:{API_PORT}");
    let admin_kubeconfig = dir.join("admin.kubeconfig");
    write(&admin_kubeconfig, &kubeconfig_text(dir, "felt-lab-admin", &server, &admin_token)?)?;
    let ns = netns::named(ul);
    let log_tail = |name: &str| {
        let text = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    };
    super::kube::wait_api(&ns, &admin_kubeconfig, Duration::from_secs(120)).map_err(|e| {
        LabError::Timeout(format!(
            "{e}\n--- etcd.log (tail)\n{}\n--- kube-apiserver.log (tail)\n{}",
            log_tail("etcd.log"),
            log_tail("kube-apiserver.log")
        ))
    })?;
    wait_readyz(&ns, &admin_kubeconfig, Duration::from_secs(60))?;
    progress(&format!("API server ready {:.1?} after start", started.elapsed()));
    let token = apply_rbac_and_issue_token(&ns, &admin_kubeconfig)?;
    create_crd(&ns, &admin_kubeconfig)?;
    // Started after the CRD exists: the garbage collector finds FeltNodes at once.
    let kcm = topo::spawn_in(
        ul,
        &bins.kube_controller_manager,
        &controller_manager_args(&admin_kubeconfig),
        &dir.join("kube-controller-manager.log"),
    )?;
    progress(&format!("kube-controller-manager pid {kcm} (garbage collector only) in {ul}"));
    let agent_kubeconfig = dir.join("felt-agent.kubeconfig");
    write(&agent_kubeconfig, &kubeconfig_text(dir, "felt", &server, &token)?)?;
    // The agents' token works (and the server has seen the ServiceAccount)
    // before any agent depends on it.
    super::kube::wait_api(&ns, &agent_kubeconfig, Duration::from_secs(60))?;
    Ok(Started { admin_kubeconfig, agent_kubeconfig, audit_log, took: started.elapsed() })
}

/// etcd on loopback inside the lab's underlay namespace.
fn etcd_args(dir: &Path) -> Vec<String> {
    let path = |p: &str| dir.join(p).display().to_string();
    [
        "--name=lab".into(),
        format!("--data-dir={}", path("etcd")),
        "--listen-client-urls=http://127.0.0.1:2379".into(),
        "--advertise-client-urls=http://127.0.0.1:2379".into(),
        "--listen-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
        "--initial-cluster=lab=http://127.0.0.1:2380".into(),
        "--log-level=warn".into(),
        // A lab's etcd dies with the lab: durability buys nothing here.
        "--unsafe-no-fsync".into(),
    ]
    .into()
}

/// kube-apiserver on the lab host address: token and ServiceAccount auth,
/// RBAC, and an audit log of every request's metadata.
fn apiserver_args(dir: &Path, host: Ipv4Addr, audit_log: &Path) -> Vec<String> {
    let path = |p: &str| dir.join(p).display().to_string();
    vec![
        "--etcd-servers=http://127.0.0.1:2379".into(),
        format!("--bind-address={host}"),
        format!("--advertise-address={host}"),
        format!("--secure-port={API_PORT}"),
        format!("--tls-cert-file={}", path("apiserver.crt")),
        format!("--tls-private-key-file={}", path("apiserver.key")),
        format!("--cert-dir={}", path("certs")),
        format!("--token-auth-file={}", path("tokens.csv")),
        "--authorization-mode=RBAC".into(),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", path("sa.pub")),
        format!("--service-account-signing-key-file={}", path("sa.key")),
        "--service-cluster-ip-range=10.96.0.0/16".into(),
        format!("--audit-policy-file={}", path("audit-policy.yaml")),
        format!("--audit-log-path={}", audit_log.display()),
        "--audit-log-format=json".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// kube-controller-manager running only the garbage collector, as the
/// lab's admin, serving nothing.
fn controller_manager_args(admin: &Path) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", admin.display()),
        "--controllers=garbagecollector".into(),
        "--leader-elect=false".into(),
        // The stock 20 requests/s would make the bench's removal of 1,000
        // Nodes (a FeltNode each to collect) a measure of this limit.
        "--kube-api-qps=200".into(),
        "--kube-api-burst=400".into(),
        "--secure-port=0".into(),
        "--v=1".into(),
    ]
}

/// Creates `deploy/felt.yaml`'s CustomResourceDefinition and waits until it is established.
fn create_crd(ns: &Path, admin: &Path) -> Result<(), LabError> {
    let crd = deploy_crd()?;
    let admin = admin.to_owned();
    netns::block_on_in(ns, move || async move {
        let c =
            crate::registry::kube::client(Some(&admin)).await.map_err(|e| crate::util::error_chain(&e))?;
        let api = Api::<CustomResourceDefinition>::all(c);
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.create(&PostParams::default(), &crd).await.map_err(|e| format!("creating CRD {name}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let crd = api.get(&name).await.map_err(|e| format!("reading CRD {name}: {e}"))?;
            let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions.iter().any(|c| c.type_ == "Established" && c.status == "True") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("CRD {name} not established after 30 s: {conditions:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .map_err(|e| LabError::io("entering", ns, e))?
    .map_err(LabError::Invalid)
}

/// `deploy/felt.yaml`'s CustomResourceDefinition (compiled in).
pub fn deploy_crd() -> Result<CustomResourceDefinition, LabError> {
    let bad = |e: serde_yaml::Error| LabError::Invalid(format!("deploy/felt.yaml: {e}"));
    for doc in serde_yaml::Deserializer::from_str(DEPLOY) {
        let v = serde_yaml::Value::deserialize(doc).map_err(bad)?;
        if v["kind"].as_str() == Some("CustomResourceDefinition") {
            return serde_yaml::from_value(v).map_err(bad);
        }
    }
    Err(LabError::Invalid("deploy/felt.yaml has no CustomResourceDefinition".into()))
}

/// Waits for `/readyz` to answer 200: the server's post-start hooks are
/// done (the system namespaces exist, the default RBAC is in place).
fn wait_readyz(ns: &Path, admin: &Path, timeout: Duration) -> Result<(), LabError> {
    let admin = admin.to_owned();
    netns::block_on_in(ns, move || async move {
        let c =
            crate::registry::kube::client(Some(&admin)).await.map_err(|e| crate::util::error_chain(&e))?;
        let deadline = Instant::now() + timeout;
        loop {
            let req = hyper::Request::get("/readyz").body(Vec::new()).map_err(|e| e.to_string())?;
            match c.request_text(req).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                Ok(body) if Instant::now() > deadline => return Err(format!("/readyz still says {body}")),
                Err(e) if Instant::now() > deadline => return Err(format!("/readyz: {e}")),
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    })
    .map_err(|e| LabError::io("entering", ns, e))?
    .map_err(LabError::Timeout)
}

/// Serves `listen` (loopback, in the caller's namespace) by connecting each
/// client to `to` from inside namespace `ns`, bytes both ways, until either
/// side closes. Writes the bound address to `addr_file` once listening.
/// Runs until killed (`felt lab down` stops it by pid).
pub fn proxy(
    listen: std::net::SocketAddr,
    ns: &Path,
    to: std::net::SocketAddr,
    addr_file: &Path,
) -> std::io::Result<()> {
    use std::net::{TcpListener, TcpStream};
    let listener = TcpListener::bind(listen)?;
    std::fs::write(addr_file, listener.local_addr()?.to_string())?;
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let ns = ns.to_owned();
        std::thread::spawn(move || {
            let Ok(Ok(server)) =
                netns::run_in(&ns, move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
            else {
                return;
            };
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else { return };
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            let (mut client, mut server) = (client, server);
            let _ = std::io::copy(&mut server, &mut client);
            let _ = client.shutdown(std::net::Shutdown::Write);
            let _ = up.join();
        });
    }
    Ok(())
}

/// Starts [`proxy`] as its own process (`felt lab api-proxy`) for the lab's
/// API server and writes a loopback kubeconfig for the user beside the
/// admin one. Returns the proxy's pid and that kubeconfig.
pub fn start_proxy(
    felt: &Path,
    lab: &str,
    state_root: &Path,
    dir: &Path,
    host: Ipv4Addr,
) -> Result<(u32, PathBuf), LabError> {
    let addr_file = dir.join("proxy.addr");
    let log = dir.join("proxy.log");
    let out = std::fs::File::create(&log).map_err(|e| LabError::io("creating", &log, e))?;
    let child = Command::new(felt)
        .args(["lab", "api-proxy", "--name", lab, "--to", &format!("{host}:{API_PORT}"), "--addr-file"])
        .arg(&addr_file)
        .env("FELT_LAB_STATE", state_root)
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| LabError::io("opening", &log, e))?)
        .stderr(out)
        .process_group(0)
        .spawn()
        .map_err(|e| LabError::Command { cmd: "felt lab api-proxy".into(), stderr: e.to_string() })?;
    let pid = child.id();
    std::fs::write(dir.join("proxy.pid"), pid.to_string()).map_err(|e| LabError::io("writing", dir, e))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.is_empty() {
                break a;
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout(format!(
                "the API proxy did not listen: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let admin =
        std::fs::read_to_string(dir.join("tokens.csv")).map_err(|e| LabError::io("reading", dir, e))?;
    let token = admin.split(',').next().unwrap_or_default().to_owned();
    let kubeconfig = dir.join("local.kubeconfig");
    write(&kubeconfig, &kubeconfig_text(dir, "felt-lab-admin", &format!("https://{addr}"), &token)?)?;
    Ok((pid, kubeconfig))
}

/// Stops the lab's API proxy, if one was started from `dir`; whether it did.
pub fn stop_proxy(dir: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(dir.join("proxy.pid")) else { return false };
    let Ok(pid) = pid.trim().parse::<i32>() else { return false };
    // Only ours: a pid may have been reused since.
    let ours = u32::try_from(pid)
        .ok()
        .and_then(super::topo::cmdline)
        .is_some_and(|args| args.iter().any(|a| a == "api-proxy"));
    if ours {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    ours
}

/// The RBAC documents of `deploy/felt.yaml`.
#[derive(Debug)]
pub struct DeployRbac {
    /// The agent's ServiceAccount.
    pub account: ServiceAccount,
    /// What it may do.
    pub role: ClusterRole,
    /// The binding.
    pub binding: ClusterRoleBinding,
}

/// Reads `deploy/felt.yaml`'s RBAC (compiled in).
pub fn deploy_rbac() -> Result<DeployRbac, LabError> {
    let mut account = None;
    let mut role = None;
    let mut binding = None;
    let bad = |e: serde_yaml::Error| LabError::Invalid(format!("deploy/felt.yaml: {e}"));
    for doc in serde_yaml::Deserializer::from_str(DEPLOY) {
        let v = serde_yaml::Value::deserialize(doc).map_err(bad)?;
        match v["kind"].as_str() {
            Some("ServiceAccount") => account = Some(serde_yaml::from_value(v).map_err(bad)?),
            Some("ClusterRole") => role = Some(serde_yaml::from_value(v).map_err(bad)?),
            Some("ClusterRoleBinding") => binding = Some(serde_yaml::from_value(v).map_err(bad)?),
            _ => {}
        }
    }
    let missing = |what: &str| LabError::Invalid(format!("deploy/felt.yaml has no {what}"));
    Ok(DeployRbac {
        account: account.ok_or_else(|| missing("ServiceAccount"))?,
        role: role.ok_or_else(|| missing("ClusterRole"))?,
        binding: binding.ok_or_else(|| missing("ClusterRoleBinding"))?,
    })
}

fn apply_rbac_and_issue_token(ns: &Path, admin: &Path) -> Result<String, LabError> {
    let rbac = deploy_rbac()?;
    let admin = admin.to_owned();
    netns::block_on_in(ns, move || async move {
        let c =
            crate::registry::kube::client(Some(&admin)).await.map_err(|e| crate::util::error_chain(&e))?;
        let namespace = rbac.account.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let name = rbac.account.metadata.name.clone().unwrap_or_default();
        let pp = PostParams::default();
        let fail = |what: &'static str| move |e: kube::Error| format!("creating {what}: {e}");
        Api::<ServiceAccount>::namespaced(c.clone(), &namespace)
            .create(&pp, &rbac.account)
            .await
            .map_err(fail("the ServiceAccount"))?;
        Api::<ClusterRole>::all(c.clone()).create(&pp, &rbac.role).await.map_err(fail("the ClusterRole"))?;
        Api::<ClusterRoleBinding>::all(c.clone())
            .create(&pp, &rbac.binding)
            .await
            .map_err(fail("the ClusterRoleBinding"))?;
        let request: TokenRequest = serde_json::from_value(serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": 86400},
        }))
        .map_err(|e| e.to_string())?;
        let issued = Api::<ServiceAccount>::namespaced(c, &namespace)
            .create_token_request(&name, &pp, &request)
            .await
            .map_err(|e| format!("asking for {namespace}/{name}'s token: {e}"))?;
        issued.status.map(|s| s.token).ok_or_else(|| "the TokenRequest came back without a token".to_owned())
    })
    .map_err(|e| LabError::io("entering", ns, e))?
    .map_err(LabError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_manifest_has_the_agents_rbac() {
        let rbac = deploy_rbac().unwrap();
        assert_eq!(rbac.account.metadata.name.as_deref(), Some("felt"));
        assert_eq!(rbac.binding.role_ref.name, "felt");
        assert!(!rbac.role.rules.unwrap_or_default().is_empty());
        let crd = deploy_crd().unwrap();
        let resource = crate::registry::kube::feltnode_resource();
        assert_eq!(crd.spec.group, resource.group);
        assert_eq!(crd.spec.names.plural, resource.plural);
        assert_eq!(crd.spec.names.kind, resource.kind);
        assert!(crd.spec.versions.iter().any(|v| v.name == resource.version && v.served && v.storage));
    }
}
