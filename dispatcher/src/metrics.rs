//! The dispatcher's Prometheus metrics: their names, their help, and the updates.

use std::collections::HashMap;

use telemetry::Metrics;
use telemetry::metrics::DURATION_BUCKETS;

pub(crate) const JOBS_FINISHED: &str = "pipelines_jobs_finished_total";
pub(crate) const JOB_DURATION: &str = "pipelines_job_duration_seconds";
pub(crate) const JOBS_IN_FLIGHT: &str = "pipelines_jobs_in_flight";
pub(crate) const JOBS_WAITING: &str = "pipelines_jobs_waiting";
pub(crate) const QUEUE_DEPTH: &str = "pipelines_queue_depth";
pub(crate) const RETRIES: &str = "pipelines_job_retries_total";
pub(crate) const DEAD_LETTERS: &str = "pipelines_dead_letters_total";
pub(crate) const RUNS_FINISHED: &str = "pipelines_runs_finished_total";
pub(crate) const JOBS_AWAITING_APPROVAL: &str = "pipelines_jobs_awaiting_approval";
pub(crate) const APPROVAL_ORDERS: &str = "pipelines_approval_orders_total";
pub(crate) const DRIFTED_UNITS: &str = "pipelines_drifted_units";
pub(crate) const DRIFT_ERRORS: &str = "pipelines_drift_check_errors";
pub(crate) const DRIFT_LAST_RUN: &str = "pipelines_drift_last_run_timestamp_seconds";
pub(crate) const CHANGE_CONNECTION_REOPENED: &str = "pipelines_change_connection_reopened_total";

pub(crate) fn register(metrics: &Metrics) {
    metrics.counter(
        JOBS_FINISHED,
        "Jobs that reached a final state, by action and state.",
    );
    metrics.histogram(
        JOB_DURATION,
        "How long finished jobs ran on their worker, by action.",
        DURATION_BUCKETS,
    );
    metrics.gauge(
        JOBS_IN_FLIGHT,
        "Jobs queued for or running on an account's workers.",
    );
    metrics.gauge(
        JOBS_WAITING,
        "Jobs waiting for their dependencies, their unit, their account's cap or a retry.",
    );
    metrics.gauge(
        QUEUE_DEPTH,
        "Messages ready in each work queue, read from the broker.",
    );
    metrics.counter(
        RETRIES,
        "Jobs queued again after a retryable failure, by action.",
    );
    metrics.counter(
        DEAD_LETTERS,
        "Messages the dispatcher dead-lettered, by queue.",
    );
    metrics.counter(RUNS_FINISHED, "Runs that ended, by event and state.");
    metrics.counter(
        CHANGE_CONNECTION_REOPENED,
        "Attempts to open the connection for change events again after it failed (a change event whose headers fill its frame closes it).",
    );
    metrics.gauge(
        JOBS_AWAITING_APPROVAL,
        "Gated applies and destroys waiting for an approver.",
    );
    metrics.gauge(
        DRIFTED_UNITS,
        "Units whose last drift check found drift, by repository and account.",
    );
    metrics.gauge(
        DRIFT_ERRORS,
        "Units whose last drift check could not plan, by repository and account.",
    );
    metrics.gauge(
        DRIFT_LAST_RUN,
        "When the last drift run of a repository ended (Unix seconds).",
    );
    metrics.counter(
        APPROVAL_ORDERS,
        "Approval orders received, by verdict (approve, reject) and result (applied, matched-nothing, refused).",
    );
}

pub(crate) fn job_finished(metrics: &Metrics, action: &str, state: &str, duration_ms: Option<u64>) {
    metrics.inc(JOBS_FINISHED, &[("action", action), ("state", state)]);
    if let Some(ms) = duration_ms {
        metrics.observe(JOB_DURATION, &[("action", action)], ms as f64 / 1000.0);
    }
}

pub(crate) fn load(
    metrics: &Metrics,
    in_flight: &HashMap<String, u32>,
    waiting: usize,
    awaiting_approval: usize,
) {
    let series = in_flight
        .iter()
        .map(|(account, count)| (vec![("account", account.as_str())], f64::from(*count)))
        .collect();
    metrics.set_all(JOBS_IN_FLIGHT, series);
    metrics.set(JOBS_WAITING, &[], waiting as f64);
    metrics.set(JOBS_AWAITING_APPROVAL, &[], awaiting_approval as f64);
}

/// The drift gauges from every unit's last finding (zeros included, so that a unit back in
/// sync lowers its account's count to 0 rather than leaving the last value).
pub(crate) fn drift(metrics: &Metrics, units: &[proto_types::DriftUnit]) {
    use std::collections::BTreeMap;
    let mut drifted: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    let mut errors: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for unit in units {
        let key = (unit.repository.as_str(), unit.account.as_str());
        let drifted = drifted.entry(key).or_default();
        let errors = errors.entry(key).or_default();
        match unit.state {
            proto_types::DriftState::Drifted => *drifted += 1,
            proto_types::DriftState::Error => *errors += 1,
            proto_types::DriftState::InSync => {}
        }
    }
    metrics.set_all(DRIFTED_UNITS, drift_series(&drifted));
    metrics.set_all(DRIFT_ERRORS, drift_series(&errors));
}

fn drift_series<'a>(
    counts: &std::collections::BTreeMap<(&'a str, &'a str), u32>,
) -> Vec<(Vec<(&'static str, &'a str)>, f64)> {
    counts
        .iter()
        .map(|(&(repository, account), &n)| {
            (
                vec![("repository", repository), ("account", account)],
                f64::from(n),
            )
        })
        .collect()
}
