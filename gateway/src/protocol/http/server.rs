//! The listeners of the AgentGateway: bound from the configuration, rebound when their settings
//! change. HTTP connections are served here as HTTP/1.1 or HTTP/2 (by ALPN over TLS, by the
//! connection preface in plaintext) with bounded header size and header read time; PostgreSQL
//! connections are handed to [`crate::protocol::postgres::session`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use agentgate_crds::gateway::{Listener, ListenerProtocol};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use http_body_util::BodyExt;

use super::body::{Body, BodyError};
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
/// Longest an HTTP connection may sit with no request in flight: HTTP/1's keep-alive wait is
/// bounded by [`HEADER_READ_TIMEOUT`] already, HTTP/2's only by this (a client that sent one
/// request and then nothing would hold its connection, and its task, forever).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How often an HTTP/2 connection's peer is pinged, and how long its answer may take: a peer
/// gone without closing is found out.
pub const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
pub const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Most connections one listener holds at once; past it, accepting waits for one to end (the
/// kernel's backlog holds the rest), so a flood of idle sockets exhausts neither descriptors nor
/// memory. Head, idle and handshake timeouts bound how long each may be held.
pub const MAX_CONNECTIONS_PER_LISTENER: usize = 16_384;

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
    /// An HTTP listener's loop does not serve PostgreSQL, nor the other way round.
    protocol: ListenerProtocol,
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
                    protocol: l.protocol,
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
                        // The listener in force, if any, keeps serving with what it has.
                        tracing::error!(listener = %l.name, error = %e, "listener TLS configuration refused");
                        all_bound = false;
                        continue;
                    }
                };
                // Only now that the new one can be built: the address must be free to bind.
                if let Some(old) = running.remove(&l.name) {
                    let _ = old.stop.send(true);
                    let _ = old.task.await;
                }
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

/// The next connection once one of `slots` is free, with the slot it holds until it ends; `None`
/// once the gateway stops.
pub(crate) async fn accept_capped(
    socket: &TcpListener,
    slots: &Arc<tokio::sync::Semaphore>,
    stop: &mut watch::Receiver<bool>,
) -> Option<(
    tokio::net::TcpStream,
    SocketAddr,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let slot = tokio::select! {
        s = slots.clone().acquire_owned() => s.ok()?,
        _ = stop.changed() => return None,
    };
    let (stream, peer) = accept(socket, stop).await?;
    Some((stream, peer, slot))
}

async fn accept_loop(
    socket: TcpListener,
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    gw: Arc<Gateway>,
    name: String,
    mut stop: watch::Receiver<bool>,
    alive: Alive,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER));
    while let Some((stream, peer, slot)) = accept_capped(&socket, &slots, &mut stop).await {
        let _ = stream.set_nodelay(true);
        let timeouts = Timeouts::of_listener(&slots);
        let gw = gw.clone();
        let acceptor = acceptor.clone();
        let name = name.clone();
        let stop = stop.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            let (_alive, _slot) = (alive, slot);
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve(TokioIo::new(tls), peer, true, gw, name, stop, timeouts).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve(TokioIo::new(stream), peer, false, gw, name, stop, timeouts).await,
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
    // Capped as HTTP listeners are: a flood of idle sockets (each held up to the startup
    // timeouts) must not spend the process's descriptors.
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER));
    while let Some((stream, peer, slot)) = accept_capped(&socket, &slots, &mut stop).await {
        // The session's future is built inside the task: built outside and awaited in it, the
        // task kept it twice (the captured value and the awaitee), 20 KiB per idle client.
        let (ctx, acceptor, alive) = (ctx.clone(), acceptor.clone(), alive.clone());
        tokio::spawn(async move {
            let (_alive, _slot) = (alive, slot);
            crate::protocol::postgres::session::serve(ctx, stream, peer, acceptor).await
        });
    }
}

/// Requests in flight on one connection, and when the last one ended; the response bodies
/// that handed hyper a frame it has not come back for, each since when; and, on HTTP/1, when a
/// byte was last written to the client.
struct Activity {
    in_flight: AtomicUsize,
    since: std::sync::Mutex<tokio::time::Instant>,
    /// By body: when its frame waiting for the client was handed. A few at most (HTTP/2
    /// streams), so a list: no hashing on every poll.
    handed: std::sync::Mutex<Vec<(u64, tokio::time::Instant)>>,
    next_body: std::sync::atomic::AtomicU64,
    /// The connection speaks HTTP/2: writes are not one body's progress there (other streams,
    /// and hyper's own PINGs, write too).
    http2: std::sync::atomic::AtomicBool,
    base: tokio::time::Instant,
    /// Nanoseconds from `base` to the last byte written (HTTP/1).
    written: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            since: std::sync::Mutex::new(tokio::time::Instant::now()),
            handed: std::sync::Mutex::new(Vec::new()),
            next_body: std::sync::atomic::AtomicU64::new(0),
            http2: std::sync::atomic::AtomicBool::new(false),
            base: tokio::time::Instant::now(),
            written: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// How long a client may take nothing of a response it has been handed before its connection
/// is cut: hyper asks a body for its next frame once it has written the last, so a client that
/// stops reading holds that frame, the rest of the body and its share of the masking budget.
pub const STALLED_CLIENT_LIMIT: Duration = Duration::from_secs(60);

/// What a connection does about a response its client has taken nothing of for `stalled`.
#[derive(Debug, PartialEq, Eq)]
enum OnStall {
    Keep,
    /// HTTP/2: GOAWAY, so the other streams finish and no new one starts.
    GoAway,
    Cut,
}

/// Past [`STALLED_CLIENT_LIMIT`], an HTTP/1 connection carries only the stalled response and is
/// cut. An HTTP/2 one carries other streams too: it is told to close (`told` is how long ago),
/// and cut only if that stream is still stalled [`IDLE_CLOSE_LIMIT`] later, so the others are
/// not cut off with it. A stream that resumes is waited for like any other.
fn on_stall(stalled: Duration, http2: bool, told: Option<Duration>) -> OnStall {
    if stalled < STALLED_CLIENT_LIMIT {
        return OnStall::Keep;
    }
    match told {
        _ if !http2 => OnStall::Cut,
        None => OnStall::GoAway,
        Some(t) if t >= IDLE_CLOSE_LIMIT => OnStall::Cut,
        Some(_) => OnStall::Keep,
    }
}

/// How long a connection told to close for idleness may take to finish writing.
pub const IDLE_CLOSE_LIMIT: Duration = Duration::from_secs(30);

impl Activity {
    /// How long the connection has had no request in flight (zero while one is).
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Duration::ZERO;
        }
        self.since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .elapsed()
    }

    /// How long, at `now`, the longest-waiting frame handed to hyper has waited for the client
    /// (zero while none waits). On HTTP/1 a byte written since counts as the client reading.
    fn stalled_at(&self, now: tokio::time::Instant) -> Duration {
        let oldest = self
            .handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(_, at)| *at)
            .min();
        let Some(mut since) = oldest else {
            return Duration::ZERO;
        };
        if !self.http2.load(Ordering::Acquire) {
            since = since.max(self.base + Duration::from_nanos(self.written.load(Ordering::Acquire)));
        }
        now.saturating_duration_since(since)
    }

    /// A byte was written to the client now.
    fn wrote(&self) {
        let nanos = self.base.elapsed().as_nanos();
        self.written
            .store(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::Release);
    }

    /// Body `id` handed hyper a frame now (`true`), or is waiting for none (`false`).
    fn set_handed(&self, id: u64, handed: bool) {
        let mut bodies = self
            .handed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = bodies.iter().position(|(body, _)| *body == id);
        match (handed, at) {
            (true, Some(i)) => bodies[i].1 = tokio::time::Instant::now(),
            (true, None) => bodies.push((id, tokio::time::Instant::now())),
            (false, Some(i)) => {
                bodies.swap_remove(i);
            }
            (false, None) => {}
        }
    }
}

/// One request in flight; ends when dropped (with its response body).
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tokio::time::Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's I/O that notes every byte written to the client: on HTTP/1 a client reading
/// slowly, but reading, is not stalled (as nginx's `send_timeout` counts any write).
struct Progress<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: hyper::rt::Read + Unpin> hyper::rt::Read for Progress<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: hyper::rt::Write + Unpin> hyper::rt::Write for Progress<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        written
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let written = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until it is sent or dropped, and tells the
/// connection whether the client is taking what it was handed.
struct Guarded {
    inner: Body,
    guard: InFlight,
    /// Its key in [`Activity::handed`].
    id: u64,
    /// The last poll gave hyper a frame.
    handed: bool,
}

impl Guarded {
    fn new(inner: Body, guard: InFlight) -> Self {
        let id = guard.0.next_body.fetch_add(1, Ordering::Relaxed);
        Self {
            inner,
            guard,
            id,
            handed: false,
        }
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if self.handed {
            self.guard.0.set_handed(self.id, false);
        }
    }
}

impl hyper::body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        let handed = matches!(&polled, std::task::Poll::Ready(Some(Ok(f))) if f.is_data());
        // Asked again: the frame handed before was taken; a new one waits from now.
        if handed || self.handed {
            self.guard.0.set_handed(self.id, handed);
        }
        self.handed = handed;
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's time limits.
#[derive(Clone, Debug)]
struct Timeouts {
    /// The wait for each HTTP/1 request head and, for any protocol, for the first request.
    head: Duration,
    /// The time with no request in flight.
    idle: Duration,
    /// The listener's free connection slots: when few are left, idle connections get
    /// [`PRESSED_IDLE_TIMEOUT`], so holding slots open with a request now and then does not
    /// lock others out.
    slots: Option<Arc<tokio::sync::Semaphore>>,
}

impl Timeouts {
    fn of_listener(slots: &Arc<tokio::sync::Semaphore>) -> Self {
        Self {
            head: HEADER_READ_TIMEOUT,
            idle: IDLE_TIMEOUT,
            slots: Some(slots.clone()),
        }
    }

    /// The idle limit now: shorter while the listener is short of slots.
    fn idle_now(&self) -> Duration {
        let pressed = self
            .slots
            .as_ref()
            .is_some_and(|s| s.available_permits() < MAX_CONNECTIONS_PER_LISTENER / PRESSED_FRACTION);
        if pressed {
            self.idle.min(PRESSED_IDLE_TIMEOUT)
        } else {
            self.idle
        }
    }
}

/// The idle limit while fewer than 1/[`PRESSED_FRACTION`] of a listener's slots are free.
pub const PRESSED_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
const PRESSED_FRACTION: usize = 10;

/// Serves one connection within `timeouts`.
async fn serve<I>(
    io: I,
    peer: SocketAddr,
    tls: bool,
    gw: Arc<Gateway>,
    listener: String,
    mut stop: watch::Receiver<bool>,
    timeouts: Timeouts,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (head_timeout, idle_timeout) = (timeouts.head, timeouts.idle);
    let ctx = Arc::new(ConnContext::new(peer, tls, listener));
    // Set once a request head has been read, whatever the protocol.
    let arrived = Arc::new(AtomicBool::new(false));
    let activity = Arc::new(Activity::default());
    let service = {
        let ctx = ctx.clone();
        let arrived = arrived.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            arrived.store(true, Ordering::Release);
            if req.version() == hyper::Version::HTTP_2 {
                activity.http2.store(true, Ordering::Release);
            }
            // In flight until its response body has been sent (or dropped): a watch or a
            // download streaming for hours is not idleness.
            let guard = InFlight::new(activity.clone());
            let response = handle(gw.clone(), ctx.clone(), req);
            async move {
                let response = response.await?;
                Ok::<_, std::convert::Infallible>(response.map(|b| Guarded::new(b, guard).boxed()))
            }
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
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    let io = Progress {
        inner: io,
        activity: activity.clone(),
    };
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    // hyper's header read timeout starts only once the connection is known to be HTTP/1: a
    // client sending nothing, or part of the HTTP/2 preface, or an HTTP/2 preface and no
    // request, would hold the connection forever (slowloris).
    let first_head = tokio::time::sleep(head_timeout);
    tokio::pin!(first_head);
    let mut waiting = true;
    // Often enough for the shorter limit a listener short of slots applies.
    let mut idle_check = tokio::time::interval((idle_timeout / 4).min(PRESSED_IDLE_TIMEOUT));
    idle_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // When the connection was told to close; it is dropped if it has not within IDLE_CLOSE_LIMIT
    // (a client that reads nothing keeps hyper's last write waiting for ever).
    let mut draining: Option<tokio::time::Instant> = None;
    // When an HTTP/2 connection was told to close because a stream stalled.
    let mut stall_told: Option<tokio::time::Instant> = None;
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
            _ = idle_check.tick() => {
                let now = tokio::time::Instant::now();
                let http2 = activity.http2.load(Ordering::Acquire);
                match on_stall(activity.stalled_at(now), http2, stall_told.map(|at| now - at)) {
                    OnStall::Keep => {}
                    OnStall::GoAway => {
                        tracing::debug!(%peer, "a stream's client took nothing of its response within the limit; closing once the others finish");
                        if draining.is_none() {
                            conn.as_mut().graceful_shutdown();
                        }
                        stall_told = Some(now);
                    }
                    OnStall::Cut => {
                        tracing::debug!(%peer, "the client took nothing of its response within the limit; closing");
                        break Ok(());
                    }
                }
                match draining {
                    // A request admitted as the close began is served: the limit runs from
                    // when none is left in flight.
                    Some(_) if activity.in_flight.load(Ordering::Acquire) > 0 => {
                        draining = Some(tokio::time::Instant::now());
                    }
                    Some(at) if at.elapsed() >= IDLE_CLOSE_LIMIT => {
                        tracing::debug!(%peer, "the connection did not finish closing within the limit; dropped");
                        break Ok(());
                    }
                    Some(_) => {}
                    None if activity.idle_for() >= timeouts.idle_now() => {
                        tracing::debug!(%peer, "no request in flight within the idle timeout; closing");
                        // Graceful: HTTP/2 says GOAWAY, HTTP/1 closes between requests.
                        conn.as_mut().graceful_shutdown();
                        draining = Some(tokio::time::Instant::now());
                    }
                    None => {}
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

    /// Serves one accepted connection of a gateway with no configuration, within these limits.
    async fn serve_one(stream: tokio::net::TcpStream, peer: SocketAddr, head: Duration, idle: Duration) {
        let (_stop, stop_rx) = watch::channel(false);
        let timeouts = Timeouts {
            head,
            idle,
            slots: None,
        };
        let gw = Gateway::new(Metrics::new());
        serve(
            TokioIo::new(stream),
            peer,
            false,
            gw,
            "test".into(),
            stop_rx,
            timeouts,
        )
        .await
    }

    /// Opens a connection to `serve`, writes `first` and returns what the server sent before
    /// closing, or `None` if it was still open after `wait`.
    async fn until_closed(first: &[u8], head_timeout: Duration, wait: Duration) -> Option<Vec<u8>> {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(socket.local_addr().unwrap())
            .await
            .unwrap();
        let (server, peer) = socket.accept().await.unwrap();
        let task = tokio::spawn(serve_one(server, peer, head_timeout, IDLE_TIMEOUT));
        client.write_all(first).await.unwrap();
        let mut got = Vec::new();
        // A reset counts as closed.
        let closed = tokio::time::timeout(wait, client.read_to_end(&mut got)).await;
        task.abort();
        closed.ok().map(|_| got)
    }

    /// An HTTP/2 connection that was answered and then sends nothing is closed after the idle
    /// timeout (GOAWAY, then the socket); a request in flight, its body included, keeps it open.
    /// On HTTP/1 a byte written to the client is progress: a slow reader that reads is not
    /// stalled. On HTTP/2 it is not (other streams, and hyper's PINGs, write too).
    #[tokio::test]
    async fn bytes_written_to_the_client_are_progress_on_http1_only() {
        for http2 in [false, true] {
            let activity = Arc::new(Activity::default());
            activity.http2.store(http2, Ordering::Release);
            activity.set_handed(0, true);
            let (ours, mut theirs) = tokio::io::duplex(64);
            let mut io = Progress {
                inner: TokioIo::new(ours),
                activity: activity.clone(),
            };
            tokio::time::sleep(Duration::from_millis(30)).await;
            let waited = |a: &Activity| a.stalled_at(tokio::time::Instant::now());
            assert!(waited(&activity) >= Duration::from_millis(30));
            let written = std::future::poll_fn(|cx| {
                hyper::rt::Write::poll_write(std::pin::Pin::new(&mut io), cx, b"x")
            });
            assert_eq!(written.await.unwrap(), 1);
            assert_eq!(
                waited(&activity) < Duration::from_millis(30),
                !http2,
                "http2: {http2}"
            );
            let mut byte = [0u8; 1];
            theirs.read_exact(&mut byte).await.unwrap();
        }
    }

    /// A stalled response cuts an HTTP/1 connection at once; an HTTP/2 one is told to close
    /// first, and cut only if the stream is still stalled when the other streams had their time.
    #[test]
    fn a_stalled_stream_cuts_its_http2_connection_only_after_the_others_had_time() {
        let limit = STALLED_CLIENT_LIMIT;
        let short = Duration::from_secs(1);
        assert_eq!(on_stall(limit - short, false, None), OnStall::Keep);
        assert_eq!(on_stall(limit, false, None), OnStall::Cut);
        assert_eq!(on_stall(limit - short, true, None), OnStall::Keep);
        assert_eq!(on_stall(limit, true, None), OnStall::GoAway);
        assert_eq!(on_stall(limit + short, true, Some(short)), OnStall::Keep);
        assert_eq!(
            on_stall(limit + IDLE_CLOSE_LIMIT, true, Some(IDLE_CLOSE_LIMIT)),
            OnStall::Cut
        );
        // Resumed since it was told: waited for as any stream is.
        assert_eq!(on_stall(short, true, Some(IDLE_CLOSE_LIMIT)), OnStall::Keep);
    }

    /// A response frame handed to hyper that the client does not take makes the connection
    /// stalled after the limit, whatever other bodies of it do; asking for the next frame, or
    /// the body's end, clears it.
    #[tokio::test]
    async fn a_client_that_takes_nothing_it_was_handed_is_stalled() {
        use crate::protocol::http::body::{WHOLE_BODY_FRAME, paced};
        use http_body_util::BodyExt;
        let activity = Arc::new(Activity::default());
        activity.http2.store(true, Ordering::Release);
        let later = || tokio::time::Instant::now() + STALLED_CLIENT_LIMIT;
        let body_of = |len: usize| {
            Guarded::new(
                paced(bytes::Bytes::from(vec![0u8; len]), ()),
                InFlight::new(activity.clone()),
            )
        };
        let mut body = body_of(2 * WHOLE_BODY_FRAME);
        assert_eq!(activity.stalled_at(later()), Duration::ZERO);
        body.frame().await.unwrap().unwrap();
        let handed = tokio::time::Instant::now();
        assert!(activity.stalled_at(later()) >= STALLED_CLIENT_LIMIT);
        // Another stream's progress does not clear it: the longest wait counts.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut other = body_of(3 * WHOLE_BODY_FRAME);
        other.frame().await.unwrap().unwrap();
        other.frame().await.unwrap().unwrap();
        let now = tokio::time::Instant::now();
        assert!(activity.stalled_at(now) >= now - handed);
        drop(other);
        // Each frame waits from when it was handed, not from the body's first.
        tokio::time::sleep(Duration::from_millis(30)).await;
        // hyper asks for the next: the client took the first.
        body.frame().await.unwrap().unwrap();
        assert!(activity.stalled_at(tokio::time::Instant::now()) < Duration::from_millis(30));
        assert!(body.frame().await.is_none());
        assert_eq!(activity.stalled_at(later()), Duration::ZERO);
        drop(body);
        // A body dropped while it waits (hyper took its last frame) leaves nothing waiting.
        let mut body = body_of(10);
        body.frame().await.unwrap().unwrap();
        drop(body);
        assert_eq!(activity.stalled_at(later()), Duration::ZERO);
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn idle_http2_connections_are_closed() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let idle = Duration::from_millis(400);
        let server = tokio::spawn(async move {
            let (s, peer) = socket.accept().await.unwrap();
            let started = tokio::time::Instant::now();
            serve_one(s, peer, Duration::from_secs(5), idle).await;
            started.elapsed()
        });
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        let conn = tokio::spawn(conn);
        let request = hyper::Request::get("http://x/")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let res = send.send_request(request).await.unwrap();
        // No configuration is loaded: 503, and then nothing more from the client.
        assert_eq!(res.status(), 503);
        drop(res);
        let open_for = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the idle connection was closed")
            .unwrap();
        assert!(open_for >= idle, "{open_for:?}");
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;

        // While a response is in flight the connection is not idle.
        let activity = Arc::new(Activity::default());
        let guard = InFlight::new(activity.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(activity.idle_for(), Duration::ZERO);
        drop(guard);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(activity.idle_for() >= Duration::from_millis(40));
    }

    /// A listener takes no connection past its slots until one ends (the kernel's backlog
    /// holds the rest).
    #[tokio::test]
    async fn a_listener_out_of_slots_waits_for_one() {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
        let (_tx, mut stop) = watch::channel(false);
        let _first = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_, _, slot) = accept_capped(&socket, &slots, &mut stop).await.unwrap();
        let _second = tokio::net::TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(
            Duration::from_millis(300),
            accept_capped(&socket, &slots, &mut stop),
        )
        .await;
        assert!(
            waiting.is_err(),
            "a second connection was taken with no slot free"
        );
        drop(slot);
        let taken =
            tokio::time::timeout(Duration::from_secs(5), accept_capped(&socket, &slots, &mut stop)).await;
        assert!(taken.is_ok_and(|t| t.is_some()), "the freed slot was not used");
    }

    /// Short of free slots, a listener gives idle connections the shorter limit.
    #[test]
    fn a_listener_short_of_slots_shortens_the_idle_limit() {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS_PER_LISTENER));
        let timeouts = Timeouts::of_listener(&slots);
        assert_eq!(timeouts.idle_now(), IDLE_TIMEOUT);
        let held = slots
            .clone()
            .try_acquire_many_owned((MAX_CONNECTIONS_PER_LISTENER - 10) as u32)
            .unwrap();
        assert_eq!(timeouts.idle_now(), PRESSED_IDLE_TIMEOUT);
        drop(held);
        assert_eq!(timeouts.idle_now(), IDLE_TIMEOUT);
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
