//! The executor's Prometheus metrics: their names, their help, and the updates.

use telemetry::Metrics;
use telemetry::metrics::DURATION_BUCKETS;

pub(crate) const JOBS: &str = "pipelines_executor_jobs_total";
pub(crate) const JOB_DURATION: &str = "pipelines_executor_job_duration_seconds";
pub(crate) const RUNNING: &str = "pipelines_executor_jobs_running";
pub(crate) const NOT_RUN: &str = "pipelines_executor_jobs_not_run_total";
pub(crate) const GIVEN_BACK: &str = "pipelines_executor_jobs_given_back_total";
pub(crate) const GIVEN_UP: &str = "pipelines_executor_jobs_given_up_total";
pub(crate) const DEAD_LETTERS: &str = "pipelines_dead_letters_total";

pub(crate) fn register(metrics: &Metrics) {
    metrics.counter(
        JOBS,
        "Jobs this worker ran to an outcome, by action and status.",
    );
    metrics.histogram(
        JOB_DURATION,
        "How long this worker's jobs ran, by action.",
        DURATION_BUCKETS,
    );
    metrics.gauge(RUNNING, "Jobs running on this worker (0 or 1).");
    metrics.counter(NOT_RUN, "Deliveries this worker dropped unrun: the dispatcher said no (finished, cancelled or duplicate jobs), or the worker had run and reported that attempt already.");
    metrics.counter(
        GIVEN_BACK,
        "Jobs this worker gave back to the queue unfinished (shutdown).",
    );
    metrics.counter(
        GIVEN_UP,
        "Jobs failed unrun on their message's last delivery: every earlier delivery ended without a result.",
    );
    metrics.counter(
        DEAD_LETTERS,
        "Messages this worker dead-lettered, by queue.",
    );
}
