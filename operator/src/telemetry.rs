//! Metrics (reconciles, failures, duration, compile time, leadership) and the health endpoints
//! `/healthz`, `/readyz` and `/metrics` the chart's probes and ServiceMonitor use.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::Error;

/// Longest time a client may take to send request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The operator's metrics, under the `agentgate_operator_` prefix.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    pub reconciles: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub compile_seconds: HistogramVec,
    pub leader: IntGauge,
    state: Arc<AtomicU8>,
}

/// Where the process is, as `/readyz` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for the Lease: ready (a standby replica is healthy), not reconciling.
    Standby = 0,
    /// Leading, controllers running.
    Leading = 1,
    /// Stopping.
    Stopping = 2,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("agentgate_operator".into()), None).expect("valid prefix");
        let reconciles = IntCounterVec::new(
            Opts::new("reconciles_total", "Reconciles by controller"),
            &["controller"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "reconcile_failures_total",
                "Failed reconciles by controller and error",
            ),
            &["controller", "error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new("reconcile_duration_seconds", "Reconcile duration by controller").buckets(
                vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
            ),
            &["controller"],
        )
        .expect("valid metric");
        let compile_seconds = HistogramVec::new(
            HistogramOpts::new(
                "compile_duration_seconds",
                "Time to compile one gateway's configuration",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]),
            &["outcome"],
        )
        .expect("valid metric");
        let leader = IntGauge::new(
            "leader",
            "Whether this replica holds the leader Lease (1) or stands by (0)",
        )
        .expect("valid metric");
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(compile_seconds.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).expect("registered once");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            compile_seconds,
            leader,
            state: Arc::new(AtomicU8::new(Phase::Standby as u8)),
        }
    }

    /// Records where the process is.
    pub fn set_phase(&self, phase: Phase) {
        self.state.store(phase as u8, Ordering::Relaxed);
        self.leader.set(i64::from(phase == Phase::Leading));
    }

    fn phase(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Binds `addr` and serves the endpoints until the process ends.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> Result<(), Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Serve { addr, source })?;
    tracing::info!(%addr, "health and metrics endpoints up");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(route(&metrics, req.uri().path())) }
            });
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT);
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(metrics: &Metrics, path: &str) -> Response<Full<Bytes>> {
    match path {
        "/healthz" | "/livez" => text(StatusCode::OK, "ok\n"),
        "/readyz" => match metrics.phase() {
            0 => text(StatusCode::OK, "standby\n"),
            1 => text(StatusCode::OK, "leading\n"),
            _ => text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n"),
        },
        "/metrics" => text(StatusCode::OK, &metrics.encode()),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_phase_and_metrics_expose_leadership() {
        let m = Metrics::new();
        assert_eq!(route(&m, "/readyz").status(), StatusCode::OK);
        m.set_phase(Phase::Leading);
        assert!(m.encode().contains("agentgate_operator_leader 1"));
        m.set_phase(Phase::Stopping);
        assert_eq!(route(&m, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(route(&m, "/nope").status(), StatusCode::NOT_FOUND);
    }
}
