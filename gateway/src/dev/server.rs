//! The small HTTP/1.1 server under the development issuer and the demo upstream: loopback only,
//! bounded bodies and header times, synchronous handlers over in-memory state.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

use super::DevError;

/// Largest request body the development servers read; the demo only takes small JSON documents.
pub const MAX_REQUEST_BODY: usize = 64 * 1024;
/// Longest time a client may take to send request headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A request with its body read.
pub type DevRequest = Request<Bytes>;
/// What handlers answer.
pub type DevResponse = Response<Full<Bytes>>;
/// A synchronous request handler (the state behind it is in memory).
pub type Handler = Arc<dyn Fn(&DevRequest) -> DevResponse + Send + Sync>;

/// Whether `ip` is a loopback address (IPv4-mapped IPv6 loopback included).
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Binds `addr`, refusing anything but a loopback address: these servers hand out tokens and fake
/// data, and must never be reachable from another machine. Returns the listener and the address
/// it is bound to (the real port when 0 was asked for).
pub async fn bind_loopback(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), DevError> {
    if !is_loopback(addr.ip()) {
        return Err(DevError::NotLoopback { addr });
    }
    let bind = |source| DevError::Bind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind)?;
    let bound = listener.local_addr().map_err(bind)?;
    Ok((listener, bound))
}

/// `host:port` of a bound address, as it appears in a URL (IPv6 in brackets).
pub fn url_host(addr: SocketAddr) -> String {
    match addr.ip().to_canonical() {
        IpAddr::V4(v4) => format!("{v4}:{}", addr.port()),
        IpAddr::V6(v6) => format!("[{v6}]:{}", addr.port()),
    }
}

/// 127.0.0.1 and ::1: the loopback addresses every tool spells the same way.
pub fn is_canonical_loopback(ip: IpAddr) -> bool {
    matches!(ip.to_canonical(), IpAddr::V4(v4) if v4 == Ipv4Addr::LOCALHOST)
        || matches!(ip.to_canonical(), IpAddr::V6(v6) if v6 == Ipv6Addr::LOCALHOST)
}

/// A running server; it stops accepting when dropped (connections already open finish on their own).
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Serves `handler` on `listener`, bound to `addr` by [`bind_loopback`].
    pub fn spawn(listener: TcpListener, addr: SocketAddr, name: &'static str, handler: Handler) -> Self {
        let (shutdown, mut stop) = watch::channel(false);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!(server = name, error = %e, "accept failed");
                            // Out of file descriptors and the like: back off instead of spinning.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    _ = stop.changed() => return,
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move { Ok::<_, Infallible>(respond(req, &handler).await) }
                    });
                    let mut builder = http1::Builder::new();
                    builder
                        .timer(TokioTimer::new())
                        .header_read_timeout(HEADER_READ_TIMEOUT);
                    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(server = name, error = %e, "connection ended with an error");
                    }
                });
            }
        });
        Self { addr, shutdown }
    }

    /// The bound address (the real port when 0 was asked for).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn respond(req: Request<Incoming>, handler: &Handler) -> DevResponse {
    let (parts, body) = req.into_parts();
    match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => handler(&Request::from_parts(parts, collected.to_bytes())),
        Err(_) => json(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({
                "error": "request_too_large",
                "error_description": format!("the request body could not be read or exceeds {MAX_REQUEST_BODY} bytes"),
            }),
        ),
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: &Value) -> DevResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, body: &str) -> DevResponse {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// An empty response.
pub fn empty(status: StatusCode) -> DevResponse {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

/// `n` random bytes from the system generator.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], DevError> {
    let mut bytes = [0u8; N];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| DevError::Random)?;
    Ok(bytes)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
