//! The listeners of the AgentGateway: bound from the configuration, rebound when their settings
//! change. HTTP connections are served here as HTTP/1.1 or HTTP/2 (by ALPN over TLS, by the
//! connection preface in plaintext) with bounded header size and header read time; PostgreSQL
//! connections are handed to [`crate::protocol::postgres::session`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentgate_crds::gateway::{Listener, ListenerProtocol};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::plane::Gateway;
use super::proxy::{ConnContext, handle};
use super::tls::{server_config, server_config_with_alpn};
use crate::config::watch::SnapshotReceiver;
use crate::protocol::postgres::session::Context as PostgresContext;

/// Longest time a client may take to send a request head (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest time for a TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head (HTTP/1.1 read buffer; HTTP/2 header list).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Most concurrent HTTP/2 streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// How long shutdown waits for open connections to end (HTTP requests in flight to finish,
/// PostgreSQL sessions to send 57P01) so their records close as such and are shipped; within
/// Kubernetes' default 30 s termination grace period, with the spool drain after it.
pub const CONNECTION_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// Held by every connection task; shutdown waits until no copy is left (the receiver then
/// reads `None`).
type Alive = tokio::sync::mpsc::Sender<()>;

/// What identifies a running listener: when any of it changes, the listener is rebound.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ListenerKey {
    addr: SocketAddr,
    /// Hash of the certificate and key, so a renewed certificate rebinds.
    tls: Option<[u8; 32]>,
}

struct Running {
    key: ListenerKey,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Runs the listeners of each configuration until `shutdown` turns true.
pub async fn run(gw: Arc<Gateway>, mut snapshots: SnapshotReceiver, mut shutdown: watch::Receiver<bool>) {
    let mut running: BTreeMap<String, Running> = BTreeMap::new();
    let postgres = PostgresContext::with_shutdown(gw.clone(), shutdown.clone());
    let (alive, mut all_gone) = tokio::sync::mpsc::channel::<()>(1);
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        if let Some(snapshot) = snapshot {
            gw.install(snapshot.clone());
            let cfg = &snapshot.config;
            let wanted: Vec<&Listener> = cfg.gateway.listeners.iter().collect();
            let mut all_bound = true;
            running.retain(|name, r| {
                let keep = wanted.iter().any(|l| &l.name == name);
                if !keep {
                    let _ = r.stop.send(true);
                }
                keep
            });
            for l in wanted {
                let addr: SocketAddr =
                    match format!("{}:{}", l.address.as_deref().unwrap_or("0.0.0.0"), l.port)
                        .parse()
                        .or_else(|_| format!("[{}]:{}", l.address.as_deref().unwrap_or("::"), l.port).parse())
                    {
                        Ok(a) => a,
                        Err(_) => {
                            tracing::error!(listener = %l.name, "listener address is not an IP address");
                            all_bound = false;
                            continue;
                        }
                    };
                let tls = cfg.gateway.listener_tls.get(&l.name);
                let key = ListenerKey {
                    addr,
                    tls: tls.map(|(c, k)| {
                        Sha256::new()
                            .chain_update(c.expose())
                            .chain_update(k.expose())
                            .finalize()
                            .into()
                    }),
                };
                if running
                    .get(&l.name)
                    .is_some_and(|r| r.key == key && !r.task.is_finished())
                {
                    continue;
                }
                if let Some(old) = running.remove(&l.name) {
                    let _ = old.stop.send(true);
                    let _ = old.task.await;
                }
                if tls.is_none()
                    && l.protocol == ListenerProtocol::Http
                    && !addr.ip().to_canonical().is_loopback()
                {
                    // PostgreSQL refuses such clients itself; HTTP may sit behind a proxy that
                    // terminates TLS, so it is said loudly rather than refused.
                    tracing::warn!(
                        listener = %l.name,
                        %addr,
                        "plaintext HTTP on a non-loopback address: agents' tokens cross the network in clear unless a proxy in front terminates TLS; set tls.secretName, or address 127.0.0.1 for local use"
                    );
                }
                let acceptor = match tls
                    .map(|(c, k)| match l.protocol {
                        ListenerProtocol::Http => server_config(c, k),
                        ListenerProtocol::Postgres => {
                            server_config_with_alpn(c, k, vec![b"postgresql".to_vec()])
                        }
                    })
                    .transpose()
                {
                    Ok(cfg) => cfg.map(tokio_rustls::TlsAcceptor::from),
                    Err(e) => {
                        tracing::error!(listener = %l.name, error = %e, "listener TLS configuration refused");
                        all_bound = false;
                        continue;
                    }
                };
                let socket = match TcpListener::bind(addr).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(listener = %l.name, %addr, error = %e, "cannot bind listener");
                        all_bound = false;
                        continue;
                    }
                };
                tracing::info!(listener = %l.name, %addr, tls = acceptor.is_some(), protocol = ?l.protocol, "listener up");
                let (stop, stop_rx) = watch::channel(false);
                let task = match l.protocol {
                    ListenerProtocol::Http => tokio::spawn(accept_loop(
                        socket,
                        acceptor,
                        gw.clone(),
                        l.name.clone(),
                        stop_rx,
                        alive.clone(),
                    )),
                    ListenerProtocol::Postgres => tokio::spawn(postgres_accept_loop(
                        socket,
                        acceptor,
                        postgres.clone(),
                        stop_rx,
                        alive.clone(),
                    )),
                };
                running.insert(l.name.clone(), Running { key, stop, task });
            }
            gw.set_listening(if all_bound { snapshot.generation } else { 0 });
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    for (_, r) in running {
        let _ = r.stop.send(true);
        let _ = r.task.await;
    }
    // Connections were told to end (HTTP by the listener's stop, PostgreSQL by `shutdown`).
    // The sessions of those still open after the limit are closed by the caller
    // (`Gateway::close_open_sessions`) before the spool is shipped.
    drop(alive);
    if tokio::time::timeout(CONNECTION_DRAIN_LIMIT, all_gone.recv())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain limit are cut");
    }
}

/// The next connection, or `None` once the listener is told to stop.
async fn accept(
    socket: &TcpListener,
    stop: &mut watch::Receiver<bool>,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = socket.accept() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return None,
        }
    }
}

async fn accept_loop(
    socket: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gw: Arc<Gateway>,
    name: String,
    mut stop: watch::Receiver<bool>,
    alive: Alive,
) {
    while let Some((stream, peer)) = accept(&socket, &mut stop).await {
        let _ = stream.set_nodelay(true);
        let gw = gw.clone();
        let acceptor = acceptor.clone();
        let name = name.clone();
        let stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let _alive = alive;
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            serve(TokioIo::new(tls), peer, true, gw, name, stop, HEADER_READ_TIMEOUT).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => {
                    serve(
                        TokioIo::new(stream),
                        peer,
                        false,
                        gw,
                        name,
                        stop,
                        HEADER_READ_TIMEOUT,
                    )
                    .await
                }
            }
        });
    }
}

async fn postgres_accept_loop(
    socket: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    ctx: Arc<PostgresContext>,
    mut stop: watch::Receiver<bool>,
    alive: Alive,
) {
    while let Some((stream, peer)) = accept(&socket, &mut stop).await {
        // The session's future is built inside the task: built outside and awaited in it, the
        // task kept it twice (the captured value and the awaitee), 20 KiB per idle client.
        let (ctx, acceptor, alive) = (ctx.clone(), acceptor.clone(), alive.clone());
        tokio::spawn(async move {
            let _alive = alive;
            crate::protocol::postgres::session::serve(ctx, stream, peer, acceptor).await
        });
    }
}

/// Serves one connection. `head_timeout` bounds the wait for each HTTP/1 request head and, for
/// any protocol, for the first request.
async fn serve<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    gw: Arc<Gateway>,
    listener: String,
    mut stop: watch::Receiver<bool>,
    head_timeout: Duration,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let ctx = Arc::new(ConnContext::new(peer, tls, listener));
    // Set once a request head has been read, whatever the protocol.
    let arrived = Arc::new(AtomicBool::new(false));
    let service = {
        let ctx = ctx.clone();
        let arrived = arrived.clone();
        service_fn(move |req| {
            arrived.store(true, Ordering::Release);
            handle(gw.clone(), ctx.clone(), req)
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .max_buf_size(MAX_HEADER_BYTES)
        .half_close(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // hyper's header read timeout starts only once the connection is known to be HTTP/1: a
    // client sending nothing, or part of the HTTP/2 preface, or an HTTP/2 preface and no
    // request, would hold the connection forever (slowloris).
    let first_head = tokio::time::sleep(head_timeout);
    tokio::pin!(first_head);
    let mut waiting = true;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = &mut first_head, if waiting => {
                waiting = false;
                if !arrived.load(Ordering::Acquire) {
                    tracing::debug!(%peer, "no request within the header read timeout; closing");
                    break Ok(());
                }
            }
            _ = stop.changed() => {
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
    // Closing signs and fsyncs each session file: off the async workers.
    let _ = tokio::task::spawn_blocking(move || ctx.close_sessions()).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Opens a connection to `serve`, writes `first` and returns what the server sent before
    /// closing, or `None` if it was still open after `wait`.
    async fn until_closed(first: &[u8], head_timeout: Duration, wait: Duration) -> Option<Vec<u8>> {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(socket.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = socket.accept().await.unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let gw = Gateway::new(Metrics::new());
        let task = tokio::spawn(serve(
            TokioIo::new(server),
            peer,
            false,
            gw,
            "test".into(),
            stop_rx,
            head_timeout,
        ));
        client.write_all(first).await.unwrap();
        let mut got = Vec::new();
        // A reset counts as closed.
        let closed = tokio::time::timeout(wait, client.read_to_end(&mut got)).await;
        task.abort();
        closed.ok().map(|_| got)
    }

    #[tokio::test]
    async fn connections_without_a_request_head_are_closed_after_the_head_timeout() {
        let head_timeout = Duration::from_millis(200);
        for first in [
            &b""[..],
            b"P",
            b"PRI * HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
            b"GET / HTTP/1.1\r\nHost: x\r\n",
        ] {
            let got = until_closed(first, head_timeout, Duration::from_secs(5)).await;
            let first = String::from_utf8_lossy(first);
            let got = got.unwrap_or_else(|| panic!("{first:?}: still open"));
            assert!(!got.starts_with(b"HTTP/1.1 2"), "{first:?}");
        }
        // A head in time is served (no configuration is loaded: 503).
        let got = until_closed(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            head_timeout,
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert!(
            got.starts_with(b"HTTP/1.1 503"),
            "{}",
            String::from_utf8_lossy(&got)
        );
    }
}
