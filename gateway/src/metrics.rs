//! Prometheus metrics of the gateway. Labels are bounded: kinds and results, never names from
//! requests or tokens.

use prometheus::{
    Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Latency buckets (seconds): fine below a millisecond, where gateway overhead lives.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The gateway's metrics, registered in their own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Generation of the configuration in force (0 before the first valid load).
    pub config_generation: IntGauge,
    /// Configuration loads refused, counted once per refused load.
    pub config_load_errors: IntCounter,
    /// Reload attempts by result (`success`, `failure`).
    pub config_reloads: IntCounterVec,
    /// Unix time of the last reload attempt.
    pub config_last_reload_timestamp: Gauge,
    /// 1 when the last reload attempt succeeded, else 0.
    pub config_last_reload_success: IntGauge,
    /// Objects in the configuration in force, by kind.
    pub config_objects: IntGaugeVec,
    /// Requests by connection, identity, decision and status class. Connection and identity
    /// are configured names (or `none`), never values from the request.
    pub http_requests: IntCounterVec,
    /// Time from request head to response head, by connection.
    pub http_request_duration: HistogramVec,
    /// Time the upstream took to answer with a response head, by connection.
    pub http_upstream_duration: HistogramVec,
    /// Request-head-to-response-head time minus upstream time: what the gateway adds.
    pub http_gateway_overhead: HistogramVec,
    /// Problems the gateway answered, by problem type.
    pub http_problems: IntCounterVec,
    /// Values masked, by connection and cause (`field` or a detector name).
    pub masked_values: IntCounterVec,
    /// Responses refused because they could not be masked, by connection.
    pub masking_refusals: IntCounterVec,
    /// Recording writes that failed, by recording mode.
    pub recording_failures: IntCounterVec,
    /// Closed sessions shipped to object storage, by result (`shipped`, `failed`).
    pub recording_uploads: IntCounterVec,
    /// Session files in the spool waiting to be shipped (as of the last sweep).
    pub recording_upload_backlog: IntGauge,
    /// PostgreSQL statements decided, by connection, identity and decision.
    pub postgres_statements: IntCounterVec,
    /// ApprovalRequests waiting for a decision (updated when asked and when decided).
    pub approvals_pending: IntGauge,
    /// Time from an ApprovalRequest's creation to each decision, by decision.
    pub approval_decision_seconds: HistogramVec,
    /// Approval outcomes on the data path, by outcome (granted, pending, denied, expired, unavailable).
    pub approval_outcomes: IntCounterVec,
    /// PostgreSQL sessions by connection and outcome (`started`, or why the start was refused).
    pub postgres_sessions: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("agentgate".into()), None).expect("valid prefix");
        let config_generation =
            IntGauge::new("config_generation", "Generation of the configuration in force")
                .expect("valid metric");
        let config_load_errors = IntCounter::new(
            "config_load_errors_total",
            "Configuration loads refused because of errors",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new("config_reloads_total", "Configuration reload attempts by result"),
            &["result"],
        )
        .expect("valid metric");
        let config_last_reload_timestamp = Gauge::new(
            "config_last_reload_timestamp_seconds",
            "Unix time of the last configuration reload attempt",
        )
        .expect("valid metric");
        let config_last_reload_success = IntGauge::new(
            "config_last_reload_success",
            "Whether the last configuration reload succeeded",
        )
        .expect("valid metric");
        let config_objects = IntGaugeVec::new(
            Opts::new("config_objects", "Objects in the configuration in force, by kind"),
            &["kind"],
        )
        .expect("valid metric");
        let build_info = IntGaugeVec::new(Opts::new("build_info", "Build information"), &["version"])
            .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by connection, identity, decision and status class",
            ),
            &["connection", "identity", "decision", "status"],
        )
        .expect("valid metric");
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["connection"],
            )
            .expect("valid metric")
        };
        let http_request_duration = histogram(
            "http_request_duration_seconds",
            "Time from request head to response head",
        );
        let http_upstream_duration = histogram(
            "http_upstream_duration_seconds",
            "Time the upstream took to send its response head",
        );
        let http_gateway_overhead = histogram(
            "http_gateway_overhead_seconds",
            "Time the gateway added to a request (total minus upstream)",
        );
        let http_problems = IntCounterVec::new(
            Opts::new("http_problems_total", "Problem responses by type"),
            &["type"],
        )
        .expect("valid metric");
        let masked_values = IntCounterVec::new(
            Opts::new("masked_values_total", "Values masked, by connection and cause"),
            &["connection", "cause"],
        )
        .expect("valid metric");
        let masking_refusals = IntCounterVec::new(
            Opts::new(
                "masking_refusals_total",
                "Responses refused because they could not be masked",
            ),
            &["connection"],
        )
        .expect("valid metric");
        let recording_failures = IntCounterVec::new(
            Opts::new(
                "recording_failures_total",
                "Recording writes that failed, by mode",
            ),
            &["mode"],
        )
        .expect("valid metric");
        let recording_uploads = IntCounterVec::new(
            Opts::new(
                "recording_uploads_total",
                "Session files shipped to object storage, by result",
            ),
            &["result"],
        )
        .expect("valid metric");
        let recording_upload_backlog = IntGauge::new(
            "recording_upload_backlog",
            "Session files in the spool waiting to be shipped to object storage",
        )
        .expect("valid metric");
        let postgres_statements = IntCounterVec::new(
            Opts::new(
                "postgres_statements_total",
                "PostgreSQL statements decided, by connection, identity and decision",
            ),
            &["connection", "identity", "decision"],
        )
        .expect("valid metric");
        let postgres_sessions = IntCounterVec::new(
            Opts::new(
                "postgres_sessions_total",
                "PostgreSQL session starts by outcome (started, or the SQLSTATE of the refusal)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let approvals_pending = IntGauge::new("approvals_pending", "ApprovalRequests waiting for a decision")
            .expect("valid metric");
        let approval_decision_seconds = HistogramVec::new(
            HistogramOpts::new(
                "approval_decision_seconds",
                "Time from an ApprovalRequest's creation to a decision",
            )
            .buckets(vec![
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0,
            ]),
            &["decision"],
        )
        .expect("valid metric");
        let approval_outcomes = IntCounterVec::new(
            Opts::new("approval_outcomes_total", "Approval outcomes on the data path"),
            &["outcome"],
        )
        .expect("valid metric");
        for c in [
            Box::new(approvals_pending.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(approval_decision_seconds.clone()),
            Box::new(approval_outcomes.clone()),
            Box::new(postgres_statements.clone()),
            Box::new(postgres_sessions.clone()),
            Box::new(http_requests.clone()),
            Box::new(http_request_duration.clone()),
            Box::new(http_upstream_duration.clone()),
            Box::new(http_gateway_overhead.clone()),
            Box::new(http_problems.clone()),
            Box::new(masked_values.clone()),
            Box::new(masking_refusals.clone()),
            Box::new(recording_failures.clone()),
            Box::new(recording_uploads.clone()),
            Box::new(recording_upload_backlog.clone()),
        ] {
            registry.register(c).expect("metrics are registered once");
        }
        for c in [
            Box::new(config_generation.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(config_load_errors.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload_timestamp.clone()),
            Box::new(config_last_reload_success.clone()),
            Box::new(config_objects.clone()),
            Box::new(build_info),
        ] {
            registry.register(c).expect("metrics are registered once");
        }
        Self {
            registry,
            config_generation,
            config_load_errors,
            config_reloads,
            config_last_reload_timestamp,
            config_last_reload_success,
            config_objects,
            http_requests,
            http_request_duration,
            http_upstream_duration,
            http_gateway_overhead,
            http_problems,
            masked_values,
            masking_refusals,
            postgres_statements,
            postgres_sessions,
            approvals_pending,
            approval_decision_seconds,
            approval_outcomes,
            recording_failures,
            recording_uploads,
            recording_upload_backlog,
        }
    }

    /// Counts what masking did to one response.
    pub fn count_masking(&self, connection: &str, report: &crate::masking::MaskReport) {
        if report.fields > 0 {
            self.masked_values
                .with_label_values(&[connection, "field"])
                .inc_by(report.fields);
        }
        for (d, n) in crate::masking::ALL_DETECTORS.iter().zip(report.by_detector) {
            if n > 0 {
                self.masked_values
                    .with_label_values(&[connection, crate::masking::detector_label(*d)])
                    .inc_by(n);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("encoding to memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
