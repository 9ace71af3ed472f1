//! The admin listener: liveness, readiness, Prometheus metrics and, in standalone mode, the
//! approvals API (`/approvals`, see [`crate::approval::api`]).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::approval::{Approvals, api};
use crate::config::watch::SnapshotReceiver;
use crate::metrics::Metrics;
use crate::protocol::http::Gateway;

/// Longest time a client may take to send request headers to the admin listener.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the admin endpoints read.
#[derive(Clone, Debug)]
pub struct AdminState {
    pub snapshots: SnapshotReceiver,
    pub metrics: Metrics,
    /// The approval store; `None` when it could not be opened (the API answers 503).
    pub approvals: Option<Arc<Approvals>>,
    /// The data plane, whose configuration and token verifier authenticate approvers.
    pub gateway: Option<Arc<Gateway>>,
}

/// Most admin connections served at once: probes and scrapes need a few; in a cluster the
/// admin port is reachable from other pods, whose connections must not exhaust the memory and
/// descriptors the data plane shares.
pub const MAX_ADMIN_CONNECTIONS: usize = 1024;

/// Serves the admin endpoints on `listener` until `shutdown` flips.
pub async fn serve(listener: TcpListener, state: AdminState, shutdown: watch::Receiver<bool>) {
    serve_capped(listener, state, shutdown, MAX_ADMIN_CONNECTIONS).await;
}

/// [`serve`] with at most `cap` connections at once (the next waits for one to end), accepting
/// as the data plane's listeners do (a failed accept, out of descriptors say, backs off).
async fn serve_capped(
    listener: TcpListener,
    state: AdminState,
    mut shutdown: watch::Receiver<bool>,
    cap: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(cap));
    while let Some((stream, peer, slot)) =
        crate::protocol::http::server::accept_capped(&listener, &slots, &mut shutdown).await
    {
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |mut req: Request<Incoming>| {
                let state = state.clone();
                // Who is calling, for the approvals API's per-address introspection budget.
                req.extensions_mut().insert(PeerIp(peer.ip()));
                async move { Ok::<_, Infallible>(route(&state, req).await) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The address an admin request came from, in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerIp(pub std::net::IpAddr);

/// Binds the admin address.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

async fn route(state: &AdminState, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if api::handles(req.uri().path()) {
        return api::handle(state.approvals.as_ref(), state.gateway.as_ref(), req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here\n",
        );
    }
    match req.uri().path() {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match state.snapshots.borrow().as_ref() {
            // Ready means serving: the listeners of the configuration are bound, not only loaded.
            Some(_) if state.gateway.as_ref().is_some_and(|g| g.listening() == 0) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the configuration's listeners are not all bound\n",
            ),
            // Serving, but refusing every operation: better another replica.
            Some(_) if let Some(why) = state.gateway.as_ref().and_then(|g| g.plane()?.unusable()) => {
                text(StatusCode::SERVICE_UNAVAILABLE, &format!("not ready: {why}\n"))
            }
            Some(s) => text(
                StatusCode::OK,
                &format!("ready: configuration generation {}\n", s.generation),
            ),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: no valid configuration loaded yet\n",
            ),
        },
        "/metrics" => {
            let mut resp = text(StatusCode::OK, &state.metrics.render());
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: the admin listener serves /healthz, /readyz, /metrics and /approvals\n",
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn healthz(conn: &mut tokio::net::TcpStream) -> String {
        conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 512];
        let n = conn.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    /// Past the cap a connection waits until one ends: a flood of kept-alive connections holds
    /// no more than the cap's memory and descriptors.
    #[tokio::test]
    async fn connections_past_the_cap_wait() {
        let (_tx, snapshots) = tokio::sync::watch::channel(None);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = super::AdminState {
            snapshots,
            metrics: crate::metrics::Metrics::new(),
            approvals: None,
            gateway: None,
        };
        let served = tokio::spawn(super::serve_capped(listener, state, shutdown, 1));
        let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(healthz(&mut first).await.starts_with("HTTP/1.1 200"));
        let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(300), healthz(&mut second)).await;
        assert!(waiting.is_err(), "served past the cap: {waiting:?}");
        drop(first);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            let mut buf = vec![0u8; 512];
            let n = second.read(&mut buf).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .await
        .expect("served once a slot is free");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        stop.send(true).unwrap();
        served.await.unwrap();
    }
}
