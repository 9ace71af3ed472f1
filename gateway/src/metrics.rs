//! Prometheus metrics of the gateway. Labels are bounded: kinds and results, never names from
//! requests or tokens.

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

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
