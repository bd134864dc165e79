//! felt-test-apiserver: a Kubernetes API server for felt's tests, and only
//! for them (it is never shipped). It serves Nodes over the real wire
//! protocol, with k8s-openapi's types checking every object: discovery,
//! list with resourceVersion, chunked watch (ADDED, MODIFIED, DELETED,
//! BOOKMARK, ERROR; `timeoutSeconds`, `allowWatchBookmarks`, 410 Gone once
//! history is compacted), get, create, replace, delete, and JSON merge and
//! strategic merge patches on `nodes` and `nodes/status`.
//!
//! It listens on `--listen` (optionally inside the named network namespace
//! `--netns`, for lab agents) and on `--local` (loopback in its own
//! namespace, for tests and kubectl), and writes a kubeconfig for each.
//! Fault injection for tests, on either listener:
//! `POST /_test/compact`, `/_test/drop-watches`, `/_test/fail?status=503&seconds=N`,
//! `/_test/pause?seconds=N`, `/_test/stall-lists?count=N` (the next N lists
//! are read and never answered), `/_test/heal`; `GET /_test/stats`.

#![forbid(unsafe_code)]

mod serve;
mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "felt-test-apiserver",
    about = "A Kubernetes API server for felt's tests (Nodes only; never shipped)"
)]
struct Args {
    /// Address for the agents (e.g. inside a lab namespace).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Bind `--listen` inside this named network namespace (waits for it).
    #[arg(long)]
    netns: Option<String>,
    /// A second listener in the server's own namespace, for tests and kubectl.
    #[arg(long)]
    local: Option<SocketAddr>,
    /// Write a kubeconfig for `--listen` here.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Write a kubeconfig for `--local` here.
    #[arg(long)]
    local_kubeconfig: Option<PathBuf>,
    /// Changes kept for watches to resume from; older resourceVersions get 410.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Interval between BOOKMARK events on watches that allow them, in ms.
    #[arg(long, default_value_t = 1000)]
    bookmark_ms: u64,
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: felt-test\n  cluster:\n    server: {server}\ncontexts:\n- name: felt-test\n  context:\n    cluster: felt-test\n    user: felt-test\ncurrent-context: felt-test\nusers:\n- name: felt-test\n  user:\n    token: felt-test\n"
    )
}

/// Binds `addr`, inside namespace `netns` if given, retrying until the
/// namespace and the address exist (60 s).
fn bind(addr: SocketAddr, netns: Option<&str>) -> anyhow::Result<std::net::TcpListener> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = match netns {
            None => std::net::TcpListener::bind(addr).map_err(anyhow::Error::from),
            Some(ns) => {
                let path = PathBuf::from("/run/netns").join(ns);
                std::thread::spawn(move || -> anyhow::Result<std::net::TcpListener> {
                    let f =
                        std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).context("setns")?;
                    Ok(std::net::TcpListener::bind(addr)?)
                })
                .join()
                .map_err(|_| anyhow::anyhow!("bind thread panicked"))?
            }
        };
        match attempt {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(e.context(format!("binding {addr} in {}", netns.unwrap_or("this namespace"))));
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // With a fixed port the kubeconfig can be written before the namespace
    // exists, so a lab can read it while this waits to bind.
    if let (Some(path), true) = (&args.kubeconfig, args.listen.port() != 0) {
        std::fs::write(path, kubeconfig(&format!("http://{}", args.listen)))?;
    }
    let main = bind(args.listen, args.netns.as_deref())?;
    let main_addr = main.local_addr()?;
    let local = args.local.map(|a| bind(a, None)).transpose()?;
    if let Some(path) = &args.kubeconfig {
        std::fs::write(path, kubeconfig(&format!("http://{main_addr}")))?;
    }
    if let (Some(path), Some(l)) = (&args.local_kubeconfig, &local) {
        std::fs::write(path, kubeconfig(&format!("http://{}", l.local_addr()?)))?;
    }
    println!(
        "listening on {main_addr}{}",
        local
            .as_ref()
            .map(|l| format!(" and {}", l.local_addr().map(|a| a.to_string()).unwrap_or_default()))
            .unwrap_or_default()
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(serve::run(main, local, args.history, Duration::from_millis(args.bookmark_ms)))
}
