//! What operators see of Pipelines: logs, one OpenTelemetry trace per run across every process,
//! Prometheus metrics with health endpoints, and the usage data the seed describes.
//!
//! - [`logging`]: the tracing subscriber: text or JSON lines on stderr, plus OTLP export of
//!   spans when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//! - [`propagation`]: W3C trace context in message headers, so that a run is one trace.
//! - [`metrics`]: counters, gauges and histograms, rendered in the Prometheus text format.
//! - [`endpoint`]: `/metrics`, `/healthz` and `/readyz` over plain HTTP.
//! - [`usage`]: run duration, jobs and errors, to the operator's own collector only; opt out
//!   with `PIPELINES_TELEMETRY_OPT_OUT=1`.

pub mod endpoint;
pub mod logging;
pub mod metrics;
pub mod propagation;
pub mod usage;

pub use endpoint::{Health, serve};
pub use logging::{LogFormat, Telemetry, init};
pub use metrics::Metrics;

/// What a service shows operators: its metrics and its readiness. Cheap to clone; clones
/// share everything.
#[derive(Debug, Clone, Default)]
pub struct Ops {
    pub metrics: Metrics,
    pub health: Health,
}
