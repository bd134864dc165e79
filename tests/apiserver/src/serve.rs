//! HTTP: routing, faults, and the watch stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

use crate::store::{ApiError, Store};

type Body = BoxBody<Bytes, Infallible>;

#[derive(Debug, Default)]
struct Faults {
    fail: Option<(u16, Instant)>,
    pause_until: Option<Instant>,
    /// Lists still to leave unanswered forever (a response that never comes).
    stall_lists: u64,
}

#[derive(Debug, Default)]
struct Stats {
    requests: AtomicU64,
    lists: AtomicU64,
    watches: AtomicU64,
    writes: AtomicU64,
}

struct Server {
    store: Mutex<Store>,
    faults: Mutex<Faults>,
    drop_watches: watch::Sender<u64>,
    bookmark: Duration,
    stats: Stats,
}

impl Server {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn faults(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn end_watches(&self) {
        self.drop_watches.send_modify(|g| *g += 1);
    }
}

pub async fn run(
    main: std::net::TcpListener,
    local: Option<std::net::TcpListener>,
    history: usize,
    bookmark: Duration,
) -> anyhow::Result<()> {
    let (drop_watches, _) = watch::channel(0);
    let server = Arc::new(Server {
        store: Mutex::new(Store::new(history)),
        faults: Mutex::new(Faults::default()),
        drop_watches,
        bookmark,
        stats: Stats::default(),
    });
    let mut tasks = Vec::new();
    for l in std::iter::once(main).chain(local) {
        l.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(l)?;
        let server = server.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let server = server.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| handle(req, server.clone()));
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                });
            }
        }));
    }
    // The listeners serve until the process is killed.
    futures::future::join_all(tasks).await;
    Ok(())
}

fn full(code: u16, v: &Value) -> Response<Body> {
    let mut body = serde_json::to_vec(v).expect("JSON serialises");
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert("content-type", "application/json".parse().expect("static"));
    r
}

fn err(e: &ApiError) -> Response<Body> {
    full(e.code, &e.status())
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.replace("%3D", "=").replace("%2C", ",").replace("%21", "!")))
        .collect()
}

async fn handle(req: Request<Incoming>, server: Arc<Server>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    if let Some(cmd) = path.strip_prefix("/_test/") {
        return Ok(control(cmd, &query(&req), &server));
    }
    server.stats.requests.fetch_add(1, Ordering::Relaxed);
    let pause = server.faults().pause_until;
    if let Some(until) = pause {
        tokio::time::sleep_until(until.into()).await;
    }
    let fail = server.faults().fail;
    if let Some((code, until)) = fail {
        if Instant::now() < until {
            return Ok(err(&ApiError::new(code, "ServiceUnavailable", "injected failure")));
        }
    }
    Ok(route(req, &path, &server).await.unwrap_or_else(|e| err(&e)))
}

fn control(cmd: &str, q: &HashMap<String, String>, server: &Server) -> Response<Body> {
    let seconds = q.get("seconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    match cmd {
        "compact" => {
            server.store().compact();
            server.end_watches();
        }
        "drop-watches" => server.end_watches(),
        "fail" => {
            let code = q.get("status").and_then(|s| s.parse().ok()).unwrap_or(503);
            server.faults().fail = Some((code, Instant::now() + Duration::from_secs(seconds)));
            server.end_watches();
        }
        "pause" => server.faults().pause_until = Some(Instant::now() + Duration::from_secs(seconds)),
        "stall-lists" => {
            server.faults().stall_lists = q.get("count").and_then(|c| c.parse().ok()).unwrap_or(1)
        }
        "heal" => *server.faults() = Faults::default(),
        "stats" => {
            let s = &server.stats;
            return full(
                200,
                &json!({
                    "requests": s.requests.load(Ordering::Relaxed),
                    "lists": s.lists.load(Ordering::Relaxed),
                    "watches": s.watches.load(Ordering::Relaxed),
                    "writes": s.writes.load(Ordering::Relaxed),
                    "resourceVersion": server.store().rv(),
                }),
            );
        }
        other => return err(&ApiError::new(404, "NotFound", format!("no test control `{other}`"))),
    }
    full(200, &json!({"ok": cmd}))
}

async fn body_json(req: Request<Incoming>) -> Result<(String, Value), ApiError> {
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let ct = ct.split(';').next().unwrap_or("").trim().to_owned();
    let bytes = req
        .into_body()
        .collect()
        .await
        .map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))?
        .to_bytes();
    if bytes.len() > 1 << 20 {
        return Err(ApiError::new(413, "RequestEntityTooLarge", "body over 1 MiB"));
    }
    let v = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::new(400, "BadRequest", format!("body is not JSON: {e}")))?
    };
    Ok((ct, v))
}

async fn route(req: Request<Incoming>, path: &str, server: &Arc<Server>) -> Result<Response<Body>, ApiError> {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["version"]) => Ok(full(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-felt-test",
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
            "goVersion": "go1.24.0", "compiler": "gc", "platform": "linux/amd64"}),
        )),
        (Method::GET, ["api"]) => Ok(full(
            200,
            &json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "0.0.0.0:0"}]}),
        )),
        (Method::GET, ["apis"]) => {
            Ok(full(200, &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})))
        }
        (Method::GET, ["api", "v1"]) => Ok(full(
            200,
            &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            {"name": "nodes", "singularName": "node", "namespaced": false, "kind": "Node",
             "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"], "shortNames": ["no"]},
            {"name": "nodes/status", "singularName": "", "namespaced": false, "kind": "Node", "verbs": ["get", "patch", "update"]}]}),
        )),
        (Method::GET, ["api", "v1", "nodes"]) => {
            let q = query(&req);
            if matches!(q.get("watch").map(String::as_str), Some("true" | "1")) {
                Ok(watch_nodes(&q, server))
            } else {
                server.stats.lists.fetch_add(1, Ordering::Relaxed);
                let stall = {
                    let mut f = server.faults();
                    let stall = f.stall_lists > 0;
                    f.stall_lists = f.stall_lists.saturating_sub(1);
                    stall
                };
                if stall {
                    // The request was read; its answer never comes (until the client gives up).
                    std::future::pending::<()>().await;
                }
                let s = server.store();
                let (labels, fields) = (q.get("labelSelector"), q.get("fieldSelector"));
                let mut items = Vec::new();
                for n in s.list() {
                    if crate::store::selected(&n, labels.map(String::as_str), fields.map(String::as_str))? {
                        items.push(n);
                    }
                }
                Ok(full(
                    200,
                    &json!({"kind": "NodeList", "apiVersion": "v1",
                    "metadata": {"resourceVersion": s.rv().to_string()}, "items": items}),
                ))
            }
        }
        (Method::GET, ["api", "v1", "watch", "nodes"]) => Ok(watch_nodes(&query(&req), server)),
        (Method::POST, ["api", "v1", "nodes"]) => {
            let (_, obj) = body_json(req).await?;
            server.stats.writes.fetch_add(1, Ordering::Relaxed);
            Ok(full(201, &server.store().create(obj)?))
        }
        (Method::GET, ["api", "v1", "nodes", name] | ["api", "v1", "nodes", name, "status"]) => {
            Ok(full(200, &server.store().get(name)?))
        }
        (Method::PUT, ["api", "v1", "nodes", name, rest @ ..]) if rest.len() <= 1 => {
            let status_only = rest == ["status"];
            let name = (*name).to_owned();
            let (_, obj) = body_json(req).await?;
            server.stats.writes.fetch_add(1, Ordering::Relaxed);
            Ok(full(200, &server.store().replace(&name, obj, status_only)?))
        }
        (Method::PATCH, ["api", "v1", "nodes", name, rest @ ..]) if rest.len() <= 1 => {
            let status_only = rest == ["status"];
            let name = (*name).to_owned();
            let (ct, patch) = body_json(req).await?;
            server.stats.writes.fetch_add(1, Ordering::Relaxed);
            Ok(full(200, &server.store().patch(&name, &ct, &patch, status_only)?))
        }
        (Method::DELETE, ["api", "v1", "nodes", name]) => {
            server.stats.writes.fetch_add(1, Ordering::Relaxed);
            Ok(full(200, &server.store().delete(name)?))
        }
        _ => Err(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        )),
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).expect("JSON serialises");
    line.push(b'\n');
    Bytes::from(line)
}

fn watch_nodes(q: &HashMap<String, String>, server: &Arc<Server>) -> Response<Body> {
    server.stats.watches.fetch_add(1, Ordering::Relaxed);
    let from = q.get("resourceVersion").filter(|v| !v.is_empty()).map(|v| v.parse::<u64>().unwrap_or(0));
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|v| v == "true" || v == "1");
    let timeout = q.get("timeoutSeconds").and_then(|v| v.parse::<u64>().ok()).unwrap_or(1800).min(1800);
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let replay = {
        let s = server.store();
        s.replay(from).map(|(initial, start)| (initial, start, s.tx.subscribe()))
    };
    let server = server.clone();
    let mut dropped = server.drop_watches.subscribe();
    tokio::spawn(async move {
        let (initial, start, mut changes) = match replay {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(event_line("ERROR", &e.status())).await;
                return;
            }
        };
        for c in initial {
            if tx.send(event_line(c.kind, &c.object)).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut tick = tokio::time::interval(server.bookmark);
        tick.tick().await;
        loop {
            let line = tokio::select! {
                c = changes.recv() => match c {
                    Ok(c) if c.rv > start => event_line(c.kind, &c.object),
                    Ok(_) => continue,
                    // Too slow a reader: end the watch, as the real server does; the client re-watches.
                    Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tick.tick(), if bookmarks => {
                    let rv = server.store().rv();
                    event_line("BOOKMARK", &json!({"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": rv.to_string()}}))
                }
                _ = tokio::time::sleep_until(deadline) => return,
                _ = dropped.changed() => return,
            };
            if tx.send(line).await.is_err() {
                return;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    r.headers_mut().insert("content-type", "application/json".parse().expect("static"));
    r.headers_mut().insert("transfer-encoding", "chunked".parse().expect("static"));
    r
}
