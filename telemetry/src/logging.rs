//! The process-wide tracing subscriber.
//!
//! Logs go to stderr, human-readable by default or as JSON lines (`--log-format json` or
//! `PIPELINES_LOG_FORMAT=json`); colours only on a terminal. When `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, spans are also exported over OTLP/HTTP (protobuf, or JSON with
//! `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`), batched on the tokio runtime.

use std::io::IsTerminal;
use std::str::FromStr;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The environment variable that turns span export on.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?}: expected text or json"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter cannot be built from the environment: fix the OTEL_* variables.
    #[error("cannot export traces to {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// Keeps span export alive; [`Telemetry::shutdown`] flushes what is still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered. Call before the runtime stops: a short command would
    /// otherwise lose its whole trace.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}

/// Installs the subscriber for `service` (the OpenTelemetry `service.name`). `default_level`
/// applies unless `RUST_LOG` says otherwise. Must run inside the tokio runtime when export is
/// on.
pub fn init(
    service: &str,
    format: LogFormat,
    default_level: &str,
) -> Result<Telemetry, TelemetryError> {
    let filter =
        || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let ansi = std::io::stderr().is_terminal();
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
    };
    let provider = match std::env::var(OTLP_ENDPOINT_VAR) {
        Ok(endpoint) if !endpoint.is_empty() => Some(tracer_provider(service, &endpoint)?),
        _ => None,
    };
    // Spans are exported at info and above whatever the log level: a quiet command still
    // belongs to its run's trace.
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("pipelines"))
            .with_filter(EnvFilter::new("info"))
    });
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(Telemetry { provider })
}

fn tracer_provider(service: &str, endpoint: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|err| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            reason: err.to_string(),
        })?;
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build())
}
