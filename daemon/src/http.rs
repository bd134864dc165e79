//! One HTTP/1.1 request from synchronous code (`felt status`, the lab, the
//! tests), with hyper's client: framing (content length or chunked) is
//! hyper's, not ours. Each call runs on a current-thread runtime of its own
//! and is bounded by a timeout.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting, or the runtime, failed.
    #[error("connecting to {addr}")]
    Connect {
        /// The server.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The exchange failed (the server closed, spoke something else).
    #[error("HTTP exchange with {addr}")]
    Exchange {
        /// The server.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: hyper::Error,
    },
    /// No whole answer within the timeout.
    #[error("{addr} did not answer within {after:?}")]
    Timeout {
        /// The server.
        addr: SocketAddr,
        /// The budget.
        after: Duration,
    },
}

/// `method path` to `addr` with `body` (sent as `content_type` when given);
/// the status and the whole body.
pub fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), HttpError> {
    let mut req = Request::builder().method(method).uri(path).header(hyper::header::HOST, addr.to_string());
    if let Some((content_type, _)) = &body {
        req = req.header(hyper::header::CONTENT_TYPE, *content_type);
    }
    let req = req
        .body(Full::new(Bytes::from(body.map(|(_, b)| b).unwrap_or_default())))
        .expect("a path and known headers make a valid request");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| HttpError::Connect { addr, source })?;
    rt.block_on(async {
        let exchange = async {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|source| HttpError::Connect { addr, source })?;
            let exchange = |source| HttpError::Exchange { addr, source };
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(exchange)?;
            tokio::spawn(conn);
            let resp = sender.send_request(req).await.map_err(exchange)?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(exchange)?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::Timeout { addr, after: timeout })?
    })
}

/// `GET path` from `addr`; the status code and the body as text.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    let (status, body) = request(addr, Method::GET, path, None, timeout)?;
    Ok((status.as_u16(), String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// A server that answers one request with `reply`, verbatim.
    fn one_shot(reply: &'static str) -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            s.write_all(reply.as_bytes()).unwrap();
        });
        addr
    }

    #[test]
    fn chunked_and_sized_bodies_read_whole() {
        let chunked = one_shot(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nfelt\r\n3\r\n ok\r\n0\r\n\r\n",
        );
        assert_eq!(get(chunked, "/x", Duration::from_secs(5)).unwrap(), (200, "felt ok".to_owned()));
        let sized = one_shot("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 5\r\n\r\nnot r");
        assert_eq!(get(sized, "/readyz", Duration::from_secs(5)).unwrap(), (503, "not r".to_owned()));
    }

    #[test]
    fn silence_times_out() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let err = get(addr, "/", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, HttpError::Timeout { .. }), "{err}");
        drop(listener);
    }
}
