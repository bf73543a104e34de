//! Driving runs from a test: submit with `orchestrate`, follow with `pipelines status`.

use std::time::Duration;

use proto_types::{JobSummary, RunDetail, RunStatus};
use uuid::Uuid;

use crate::process::{self, Finished};
use crate::rabbit::{self, Vhost};
use crate::sandbox::{Engine, Sandbox};
use crate::{poll_until, require_null_provider, require_terraform};

/// How long a test waits for a run (or a command) at most.
pub const DEADLINE: Duration = Duration::from_secs(240);

/// The real parts these tests need: terraform with the null provider, a vhost, a sandbox.
pub fn setup() -> (Vhost, Sandbox) {
    setup_on(Engine::Sqlite)
}

/// [`setup`], the dispatchers keeping their runs in `engine`.
pub fn setup_on(engine: Engine) -> (Vhost, Sandbox) {
    require_terraform();
    require_null_provider();
    (rabbit::vhost(), Sandbox::with_engine(engine))
}

/// Where a test's broker is: a [`Vhost`] of its own, or a URL.
pub trait BrokerUrl {
    fn broker_url(&self) -> &str;
}

impl BrokerUrl for Vhost {
    fn broker_url(&self) -> &str {
        &self.url
    }
}

impl BrokerUrl for str {
    fn broker_url(&self) -> &str {
        self
    }
}

/// `orchestrate` for the repository `infra` on `vhost`, with `extra` flags.
pub fn orchestrate(
    sandbox: &Sandbox,
    vhost: &(impl BrokerUrl + ?Sized),
    range: (&str, &str),
    event: &str,
    extra: &[&str],
) -> Finished {
    let mut args = vec!["--repo-name", "infra", "--broker", vhost.broker_url()];
    args.extend_from_slice(extra);
    process::run(
        sandbox.pipelines_on_range("orchestrate", range.0, range.1, event, &args),
        DEADLINE,
    )
}

/// Submits a run without waiting for it; its id.
pub fn submit(
    sandbox: &Sandbox,
    vhost: &(impl BrokerUrl + ?Sized),
    range: (&str, &str),
    event: &str,
    extra: &[&str],
) -> Uuid {
    let mut args = vec!["--format", "json"];
    args.extend_from_slice(extra);
    let submitted = orchestrate(sandbox, vhost, range, event, &args);
    assert_eq!(submitted.code(), Some(0), "{}", submitted.transcript());
    let value: serde_json::Value = serde_json::from_str(&submitted.stdout).unwrap();
    value["run_id"].as_str().unwrap().parse().unwrap()
}

/// `pipelines orchestrate --event drift` of the sandbox's repository (as `infra`) with
/// `extra` flags, without waiting; the run id.
pub fn submit_drift(sandbox: &Sandbox, vhost: &(impl BrokerUrl + ?Sized), extra: &[&str]) -> Uuid {
    let repo = sandbox.repo.path().to_str().unwrap().to_owned();
    let mut args = vec![
        "orchestrate",
        "--event",
        "drift",
        "--repo",
        &repo,
        "--repo-name",
        "infra",
        "--broker",
        vhost.broker_url(),
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    let finished = process::run(sandbox.pipelines(&args), DEADLINE);
    assert_eq!(finished.code(), Some(0), "{}", finished.transcript());
    let value: serde_json::Value = serde_json::from_str(&finished.stdout).unwrap();
    value["run_id"].as_str().unwrap().parse().unwrap()
}

/// `pipelines status [RUN] --format json` against the sandbox's dispatcher database.
pub fn status_json(sandbox: &Sandbox, run: Option<Uuid>) -> Option<String> {
    let store = sandbox.store_args();
    let mut args = vec!["status"];
    args.extend(store.iter().map(String::as_str));
    args.extend(["--format", "json"]);
    let id = run.map(|id| id.to_string());
    args.extend(id.as_deref());
    let finished = process::run(sandbox.pipelines(&args), Duration::from_secs(30));
    (finished.code() == Some(0)).then_some(finished.stdout)
}

pub fn status(sandbox: &Sandbox, run: Uuid) -> Option<RunDetail> {
    status_json(sandbox, Some(run)).map(|json| serde_json::from_str(&json).unwrap())
}

/// Polls `pipelines status RUN` until the run is final.
pub fn wait_final(sandbox: &Sandbox, run: Uuid) -> RunDetail {
    poll_until(DEADLINE, &format!("run {run} to finish"), || {
        status(sandbox, run).filter(|detail| detail.run.state != "running")
    })
}

pub fn job<'a>(detail: &'a RunDetail, unit: &str) -> &'a JobSummary {
    detail
        .jobs
        .iter()
        .find(|j| j.unit == unit)
        .unwrap_or_else(|| panic!("no job for {unit} in {detail:#?}"))
}

/// The dispatcher's copy of `job`'s log in `run` (streamed by its worker), once its end
/// marker says it is complete: the log's path, and the marker.
pub fn stored_log(sandbox: &Sandbox, run: Uuid, job: Uuid) -> (std::path::PathBuf, String) {
    let job_dir = sandbox
        .dispatcher_state_dir()
        .join("logs")
        .join(run.to_string())
        .join(job.to_string());
    poll_until(DEADLINE, &format!("job {job}'s log to be complete"), || {
        let log = std::fs::read_dir(&job_dir)
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|e| e == "log"))?;
        // The marker is written after the log is created: wait until it says how it ended.
        let end = std::fs::read_to_string(log.with_extension("end")).ok()?;
        end.starts_with("complete").then_some((log, end))
    })
}

/// Fails unless `unit`'s job ended in `state` on `worker` at `attempt`.
pub fn assert_job(detail: &RunDetail, unit: &str, state: &str, worker: &str, attempt: u32) {
    let found = job(detail, unit);
    assert_eq!(
        (found.state.as_str(), found.worker.as_deref(), found.attempt),
        (state, Some(worker), attempt),
        "{detail:#?}"
    );
}

/// `orchestrate --wait --format json`: fails unless it exits with `code`; the final status and
/// the command's transcript.
pub fn follow_to_end(
    sandbox: &Sandbox,
    vhost: &(impl BrokerUrl + ?Sized),
    range: (&str, &str),
    event: &str,
    code: i32,
) -> (RunStatus, Finished) {
    let run = orchestrate(
        sandbox,
        vhost,
        range,
        event,
        &["--wait", "--format", "json"],
    );
    assert_eq!(run.code(), Some(code), "{}", run.transcript());
    let status = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|err| panic!("no status ({err}):\n{}", run.transcript()));
    (status, run)
}
