//! The debug endpoint: ask a node what it thinks the network is.
//!
//! | path | answers |
//! |---|---|
//! | `/healthz` | 200 while the reconcile loop is alive; 503 when it is stuck |
//! | `/readyz` | 200 when the lease is held, the registry read and the data plane programmed; 503 with the failing conditions |
//! | `/metrics` | Prometheus metrics, OpenMetrics text |
//! | `/debug/state` | JSON: node, lease, config, every peer with desired vs programmed entries and probe state, the diff, refused records, recent errors |
//! | `/debug/peers/{name}` | JSON: one peer, or why its record was refused |
//!
//! `/debug/state` reads the kernel when asked, so "programmed" is what the
//! kernel holds at that moment, not what the agent last wrote. It listens
//! on loopback by default; binding anything else is logged as a warning,
//! since the endpoint has no authentication.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use felt_overlay::kernel::Kernel;
use felt_overlay::userspace::DropReason;
use felt_overlay::{Observed, Op, Peer, dataplane, desired, plan};
use felt_proto::debug::{self, PeerReply};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::CONTENT_TYPE;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tracing::{debug, info, warn};

use super::status::Shared;

/// The endpoint's default port.
pub const DEFAULT_PORT: u16 = 9469;

/// Binds `addr` and serves in the background. Fails only if it cannot bind.
pub async fn serve(addr: SocketAddr, shared: Arc<Shared>, kernel: Kernel) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    if addr.ip().is_loopback() {
        info!(%addr, "debug endpoint listening");
    } else {
        warn!(%addr, "debug endpoint listening on a non-loopback address by request; it has no authentication");
    }
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "debug endpoint accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (shared, kernel) = (shared.clone(), kernel.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(req, shared.clone(), kernel.clone()));
                let conn = http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    debug!(%peer, error = %e, "debug connection ended");
                }
            });
        }
    });
    Ok(())
}

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, content_type.parse().expect("static content type"));
    r
}

fn json_reply(status: StatusCode, v: &impl serde::Serialize) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(v).expect("debug types serialise");
    body.push(b'\n');
    reply(status, "application/json", body)
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    kernel: Kernel,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n"));
    }
    let path = req.uri().path().to_owned();
    let resp = match path.as_str() {
        "/healthz" => healthz(&shared),
        "/readyz" => readyz(&shared, &kernel).await,
        "/metrics" => {
            shared.refresh_engine_metrics();
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                shared.metrics.encode(),
            )
        }
        "/debug/state" => json_reply(StatusCode::OK, &state(&shared, live(&shared, &kernel).await)),
        p if p.starts_with("/debug/peers/") => {
            let name = &p["/debug/peers/".len()..];
            let state = state(&shared, live(&shared, &kernel).await);
            let found = state.peers.into_iter().find(|x| x.name == name);
            let rejected = state.rejected.into_iter().find(|x| x.node == name);
            match (found, rejected) {
                (Some(peer), _) => json_reply(StatusCode::OK, &PeerReply::Peer(Box::new(peer))),
                (None, Some(rejected)) => {
                    json_reply(StatusCode::OK, &PeerReply::Rejected { name: name.to_owned(), rejected })
                }
                (None, None) => json_reply(
                    StatusCode::NOT_FOUND,
                    &debug::ErrorReply { error: format!("no peer named `{name}`") },
                ),
            }
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try /healthz, /readyz, /metrics, /debug/state, /debug/peers/{name}\n",
        ),
    };
    Ok(resp)
}

/// Ready when nothing in [`Shared::not_ready`] holds and the kernel,
/// read now, matches the desired state.
async fn readyz(shared: &Shared, kernel: &Kernel) -> Response<Full<Bytes>> {
    let mut why = shared.not_ready();
    match live(shared, kernel).await {
        Ok(observed) => {
            let backend = shared.backend();
            let diff = plan(
                &dataplane::desired(backend, &shared.state().peers),
                &dataplane::owned(backend, observed),
            );
            if !diff.is_empty() && why.is_empty() {
                why.push(format!(
                    "the data plane differs from the desired state by {} entries (repair pending)",
                    diff.len()
                ));
            }
        }
        Err(e) if why.is_empty() => why.push(e),
        Err(_) => {}
    }
    if why.is_empty() {
        reply(StatusCode::OK, "text/plain", "ready\n")
    } else {
        let body: String = why.iter().map(|w| format!("not ready: {w}\n")).collect();
        reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
    }
}

/// Healthy while the loop has shown life within twice the resync period
/// (and never less than 45 s: the lease retry backs off up to 30 s).
fn healthz(shared: &Shared) -> Response<Full<Bytes>> {
    let limit =
        Duration::from_secs_f64(shared.config().resync_seconds * 2.0 + 10.0).max(Duration::from_secs(45));
    let since = shared.since_heartbeat();
    if since <= limit {
        reply(StatusCode::OK, "text/plain", "ok\n")
    } else {
        reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            format!("the reconcile loop has shown no life for {:.0?} (limit {:.0?})\n", since, limit),
        )
    }
}

/// What the kernel holds right now, if the device exists.
async fn live(shared: &Shared, kernel: &Kernel) -> Result<Observed, String> {
    let index = shared.state().device_index;
    if index == 0 {
        return Err("the VXLAN device does not exist yet".into());
    }
    kernel.observe(index).await.map_err(|e| crate::util::error_chain(&e))
}

/// The whole state, with desired vs programmed per peer.
pub fn state(shared: &Shared, observed: Result<Observed, String>) -> debug::State {
    let st = shared.state().clone();
    let probes = shared.probes().clone();
    let not_ready = shared.not_ready();
    let backend = shared.backend();
    let observed = observed.map(|o| dataplane::owned(backend, o));
    // Indexed once: each peer then looks only at its own keys (a plan of
    // one peer against every entry, per peer, was quadratic).
    let held = observed.as_ref().ok().map(|o| felt_overlay::Held::from(o.clone()));
    let peer_state = |p: &Peer| {
        let want = desired(std::slice::from_ref(p));
        let programmed = held.as_ref().map(|held| {
            let around = held.around(std::slice::from_ref(p));
            let missing = plan(&dataplane::desired(backend, std::slice::from_ref(p)), &around);
            // Only Set ops concern this peer alone, plus removal of extra
            // remotes for its MAC; other peers' entries show up as Del ops.
            let lacks = |f: &dyn Fn(&Op) -> bool| missing.iter().any(f);
            debug::Programmed {
                route: !lacks(&|op| matches!(op, Op::SetRoute(_))),
                neighbour: !lacks(&|op| matches!(op, Op::SetNeighbour(_))),
                fdb: !lacks(&|op| {
                    matches!(op, Op::SetFdb(_)) || matches!(op, Op::DelFdb(f) if f.mac == p.vtep_mac)
                }),
            }
        });
        debug::PeerState {
            name: p.name.clone(),
            pod_cidr: p.pod_cidr,
            underlay_ip: p.underlay_ip,
            vtep_ip: p.vtep_ip(),
            pod_cidr6: p.pod_cidr6,
            vtep_ip6: p.vtep_ip6(),
            vtep_mac: p.vtep_mac,
            desired: debug::Entries {
                route: want.routes.iter().find(|r| r.dst.addr().is_ipv4()).copied(),
                neighbour: want.neighbours.iter().find(|n| n.ip.is_ipv4()).copied(),
                fdb: want.fdb[0],
                route6: want.routes.iter().find(|r| r.dst.addr().is_ipv6()).copied(),
                neighbour6: want.neighbours.iter().find(|n| n.ip.is_ipv6()).copied(),
            },
            in_sync: programmed.map(|p| p.all()),
            programmed,
            probe: probes.get(&p.name).cloned().unwrap_or_default(),
        }
    };
    let diff = observed.as_ref().ok().map(|o| plan(&dataplane::desired(backend, &st.peers), o));
    debug::State {
        node: shared.node.clone(),
        ready: not_ready.is_empty(),
        not_ready,
        lease: st.lease.clone(),
        config: shared.config(),
        peers: st.peers.iter().map(peer_state).collect(),
        diff,
        observe_error: observed.as_ref().err().cloned(),
        pending: st.pending,
        rejected: st.rejected,
        malformed: st.malformed,
        registry_synced: st.registry_synced,
        peer_source: st.peer_source.map(str::to_owned),
        last_reconcile: st.last_reconcile,
        recent_errors: st.recent_errors.into(),
        warnings: st.warnings,
        engine: engine(shared),
    }
}

/// The userspace engine's counters, when there is an engine.
fn engine(shared: &Shared) -> Option<debug::Engine> {
    shared.engine_counters().map(|c| debug::Engine {
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_super_packets: c.tx_super_packets,
        rx_coalesced: c.rx_coalesced,
        offloads: shared.engine_offloads(),
        drops: DropReason::ALL.iter().zip(c.drops).map(|(r, n)| (r.label().to_owned(), n)).collect(),
        peers: shared.engine_peers(),
    })
}
