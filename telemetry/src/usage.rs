//! Usage data, as the seed describes it: for every finished run, its duration, its number of
//! jobs and of failed jobs, and its event and state. It is an OpenTelemetry event on the run's
//! trace (`pipelines.usage`), so it goes only where the operator's own
//! `OTEL_EXPORTER_OTLP_ENDPOINT` points, and nowhere when that is unset. No repository,
//! unit, path or output is sent. `PIPELINES_TELEMETRY_OPT_OUT=1` (or `true`) turns it off.

/// The opt-out variable.
pub const OPT_OUT_VAR: &str = "PIPELINES_TELEMETRY_OPT_OUT";

/// Whether usage data may be emitted.
pub fn enabled() -> bool {
    !std::env::var(OPT_OUT_VAR).is_ok_and(|value| {
        let value = value.trim().to_ascii_lowercase();
        value == "1" || value == "true" || value == "yes"
    })
}

/// What is sent about one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunUsage {
    /// `pull-request` or `push`.
    pub event: &'static str,
    /// `succeeded`, `failed`, `cancelled` or `rejected`.
    pub state: &'static str,
    pub duration_ms: u64,
    pub jobs: usize,
    pub failed_jobs: usize,
}

/// Emits the usage event in the current span, unless opted out.
pub fn record_run(usage: &RunUsage) {
    if !enabled() {
        return;
    }
    tracing::info!(
        target: "pipelines::usage",
        event = usage.event,
        state = usage.state,
        duration_ms = usage.duration_ms,
        jobs = usage.jobs,
        failed_jobs = usage.failed_jobs,
        "pipelines.usage"
    );
}
