//! Executor workers: take jobs from `jobs.<account>`, check out the job's commit from the
//! canonical repository, run the IaC tool, and report what happened.
//!
//! Workers hold the cloud credentials, so they trust nothing in a job beyond ids, names and
//! commits: the clone URL, the tool and its arguments come from the worker's own
//! configuration.
//!
//! - [`workspace`]: the git cache and per-job checkouts (git CLI).
//! - `runner`: the tool steps of each action, and the only place IaC tools are started.
//! - `output`: bounded output.

mod output;
mod runner;
pub mod workspace;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use broker::topology::jobs_queue;
use broker::{Broker, BrokerError, Delivery, Headers, Outgoing, Route, Topology};
use config::{Config, Repository};
use proto_types::{Job, JobEvent, JobEventKind, JobOutcome, JobStatus, Payload};
use tracing::Instrument;

use crate::output::BoundedOutput;
use crate::workspace::Workspace;

/// Everything a worker needs to know, resolved from the admin-owned config.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub account: String,
    /// Shown in job events and run summaries.
    pub name: String,
    pub work_dir: PathBuf,
    pub tf_binary: Option<String>,
    pub repositories: Vec<Repository>,
    pub heartbeat_interval: Duration,
}

impl WorkerSettings {
    /// Settings for a worker of `account`. `Err` names what is wrong.
    pub fn from_config(
        config: &Config,
        account: &str,
        name: Option<String>,
        work_dir: Option<PathBuf>,
    ) -> Result<WorkerSettings, String> {
        if config.account(account).is_none() {
            return Err(format!(
                "account {account:?} is not in the configuration (known: {})",
                config.account_names().join(", ")
            ));
        }
        let name = name.unwrap_or_else(default_worker_name);
        let work_dir = work_dir
            .or_else(|| config.executor.work_dir.clone())
            .unwrap_or_else(|| std::env::temp_dir().join("pipelines-executor").join(&name));
        Ok(WorkerSettings {
            account: account.to_owned(),
            name,
            work_dir,
            tf_binary: config.executor.tf_binary.clone(),
            repositories: config.repositories.clone(),
            heartbeat_interval: Duration::from_secs(30),
        })
    }
}

/// `<hostname>-<pid>`: unique per process on a host, recognisable in a run summary.
pub fn default_worker_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "executor".to_owned());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The broker failed: exit; the job in hand, unacked, is redelivered.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("the broker closed the consumer of {0}")]
    ConsumerClosed(String),
}

/// Consumes the account's job queue, one job at a time, until `shutdown` resolves. A job in
/// progress when `shutdown` resolves finishes first.
pub async fn run(
    broker: Broker,
    settings: WorkerSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ExecuteError> {
    broker
        .declare_topology(&Topology::new([settings.account.clone()]))
        .await?;
    let queue = jobs_queue(&settings.account);
    // Prefetch 1: a job waiting behind an hours-long apply should go to another worker.
    let mut jobs = broker.consume(&queue, 1).await?;
    let workspace = Workspace::new(settings.work_dir.clone());
    tracing::info!(account = %settings.account, worker = %settings.name, work_dir = %settings.work_dir.display(), "Executor ready.");
    tokio::pin!(shutdown);
    loop {
        let delivery = tokio::select! {
            biased;
            () = &mut shutdown => {
                tracing::info!("Executor shutting down.");
                return Ok(());
            }
            delivery = jobs.next() => match delivery {
                Some(delivery) => delivery?,
                None => return Err(ExecuteError::ConsumerClosed(queue)),
            },
        };
        handle(&broker, &settings, &workspace, delivery).await?;
    }
}

async fn handle(
    broker: &Broker,
    settings: &WorkerSettings,
    workspace: &Workspace,
    delivery: Delivery,
) -> Result<(), ExecuteError> {
    let job = match Job::decode(&delivery.body) {
        Ok(job) => job,
        Err(err) => {
            delivery
                .dead_letter(&format!("undecodable job: {err}"))
                .await?;
            return Ok(());
        }
    };
    if job.account != settings.account {
        let reason = format!(
            "job for account {:?} on the queue of {:?}",
            job.account, settings.account
        );
        delivery.dead_letter(&reason).await?;
        return Ok(());
    }
    let span = tracing::info_span!(
        "job",
        run_id = %job.run_id,
        job_id = %job.job_id,
        unit = %job.unit,
        account = %job.account,
        action = %job.action,
        attempt = job.attempt,
    );
    async {
        publish_event(broker, settings, &job, JobEventKind::Started).await?;
        let heartbeat = tokio::spawn(heartbeats(broker.clone(), settings.clone(), job.clone()));
        let outcome = execute(settings, workspace, &job).await;
        heartbeat.abort();
        tracing::info!(status = ?outcome.status, exit_code = ?outcome.exit_code, duration_ms = outcome.duration_ms, "Job finished.");
        // Ack only once the outcome is confirmed: if we die in between, the job is redelivered.
        publish_event(broker, settings, &job, JobEventKind::Finished(outcome)).await?;
        delivery.ack().await?;
        Ok(())
    }
    .instrument(span)
    .await
}

async fn heartbeats(broker: Broker, settings: WorkerSettings, job: Job) {
    let mut interval = tokio::time::interval(settings.heartbeat_interval);
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(err) = publish_event(&broker, &settings, &job, JobEventKind::Heartbeat).await {
            tracing::warn!(error = %err, "Heartbeat not published.");
        }
    }
}

/// Checks out, runs, cleans up. Never fails: every problem becomes a failed outcome whose
/// output says what went wrong.
async fn execute(settings: &WorkerSettings, workspace: &Workspace, job: &Job) -> JobOutcome {
    let started = Instant::now();
    let mut output = BoundedOutput::default();
    let failed = |output: BoundedOutput, started: Instant| JobOutcome {
        status: JobStatus::Failed,
        exit_code: None,
        resource_changes: None,
        output: output.finish(),
        duration_ms: elapsed_ms(started),
    };

    let Some(repository) = settings
        .repositories
        .iter()
        .find(|r| r.name == job.repository)
    else {
        output.push_str(&format!(
            "repository {:?} is not in this executor's configuration\n",
            job.repository
        ));
        return failed(output, started);
    };
    let commit = job.checkout_commit();
    let checkout = workspace
        .checkout(&repository.name, &repository.url, commit, job.job_id)
        .instrument(tracing::info_span!("checkout", commit))
        .await;
    let dir = match checkout {
        Ok(dir) => dir,
        Err(err) => {
            output.push_str(&format!("checkout failed: {err}\n"));
            return failed(output, started);
        }
    };
    let unit_dir = dir.join(&job.unit);
    let outcome = if unit_dir.is_dir() {
        match runner::tool_for(&unit_dir, settings.tf_binary.as_deref()) {
            Ok(tool) => Some(
                runner::execute(&tool, job.action, &unit_dir, &mut output)
                    .instrument(tracing::info_span!("run_tool", tool = ?tool))
                    .await,
            ),
            Err(reason) => {
                output.push_str(&format!("{reason}\n"));
                None
            }
        }
    } else {
        output.push_str(&format!(
            "unit directory {} does not exist at commit {commit}\n",
            job.unit
        ));
        None
    };
    workspace.remove(&dir).await;
    match outcome {
        Some(steps) => JobOutcome {
            status: steps.status,
            exit_code: steps.exit_code,
            resource_changes: steps.resource_changes,
            output: output.finish(),
            duration_ms: elapsed_ms(started),
        },
        None => failed(output, started),
    }
}

fn elapsed_ms(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn publish_event(
    broker: &Broker,
    settings: &WorkerSettings,
    job: &Job,
    kind: JobEventKind,
) -> Result<(), BrokerError> {
    let event = JobEvent {
        job_id: job.job_id,
        run_id: job.run_id,
        worker: settings.name.clone(),
        kind,
    };
    let body = event.encode();
    let id = uuid::Uuid::new_v4().to_string();
    let headers = Headers::new();
    let message = Outgoing {
        body: &body,
        message_id: &id,
        headers: &headers,
    };
    broker.publish(Route::JobEvents, message).await
}
