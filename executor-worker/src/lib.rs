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
use broker::{Broker, BrokerError, Consumer, Delivery, Headers, Outgoing, Route, Topology};
use config::{Config, Repository};
use proto_types::{
    ClaimReply, ClaimVerdict, Job, JobEvent, JobEventKind, JobOutcome, JobStatus, Payload,
};
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

/// How long a worker waits for the dispatcher to answer a claim before asking again.
const CLAIM_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest pause between claims while another worker's lease on the job runs out.
const MAX_CLAIM_RETRY_DELAY: Duration = Duration::from_secs(15);

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
    let mut replies = broker.reply_queue().await?;
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
        handle(&broker, &settings, &workspace, &mut replies, delivery).await?;
    }
}

async fn handle(
    broker: &Broker,
    settings: &WorkerSettings,
    workspace: &Workspace,
    replies: &mut Consumer,
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
        let lease = match claim(broker, settings, replies, &job, delivery.redelivered).await? {
            Ok(lease) => lease,
            Err(reason) => {
                // Finished, cancelled, or a second copy of a job someone else runs: drop it.
                tracing::info!(%reason, "Not running the job.");
                delivery.ack().await?;
                return Ok(());
            }
        };
        // Heartbeats well inside the lease, so one lost heartbeat costs nothing.
        let interval = settings.heartbeat_interval.min(lease / 3).max(Duration::from_secs(1));
        let heartbeat = tokio::spawn(heartbeats(broker.clone(), settings.clone(), job.clone(), interval));
        let outcome = execute_with_timeout(settings, workspace, &job).await;
        heartbeat.abort();
        tracing::info!(status = ?outcome.status, exit_code = ?outcome.exit_code, duration_ms = outcome.duration_ms, "Job finished.");
        // Ack only once the outcome is confirmed: if we die in between, the job is redelivered.
        publish_event(broker, settings, &job, JobEventKind::Finished(outcome), None).await?;
        delivery.ack().await?;
        Ok(())
    }
    .instrument(span)
    .await
}

/// Asks the dispatcher for the job until it answers yes (`Ok(lease)`) or no for good
/// (`Err(reason)`). The dispatcher grants each attempt of a job to one worker at a time, so a
/// duplicate or redelivered message never runs twice at once.
async fn claim(
    broker: &Broker,
    settings: &WorkerSettings,
    replies: &mut Consumer,
    job: &Job,
    redelivered: bool,
) -> Result<Result<Duration, String>, ExecuteError> {
    let mut retry_delay = Duration::from_secs(1);
    loop {
        let kind = JobEventKind::Started { redelivered };
        publish_event(broker, settings, job, kind, Some(replies.queue())).await?;
        let deadline = tokio::time::Instant::now() + CLAIM_ANSWER_TIMEOUT;
        let answer = loop {
            let delivery = match tokio::time::timeout_at(deadline, replies.next()).await {
                Err(_elapsed) => break None,
                Ok(None) => return Err(ExecuteError::ConsumerClosed(replies.queue().to_owned())),
                Ok(Some(delivery)) => delivery?,
            };
            let reply = ClaimReply::decode(&delivery.body);
            delivery.ack().await?;
            match reply {
                // Answers to earlier claims (asked again after a timeout) are not this one.
                Ok(reply) if reply.job_id == job.job_id && reply.attempt == job.attempt => {
                    break Some(reply.verdict);
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "Undecodable claim reply ignored."),
            }
        };
        match answer {
            Some(ClaimVerdict::Granted { lease_secs }) => {
                tracing::info!(lease_secs, "Job claimed.");
                return Ok(Ok(Duration::from_secs(lease_secs.max(1))));
            }
            Some(ClaimVerdict::Denied {
                reason,
                retry: false,
            }) => return Ok(Err(reason)),
            Some(ClaimVerdict::Denied {
                reason,
                retry: true,
            }) => {
                tracing::info!(%reason, retry_in_ms = retry_delay.as_millis() as u64, "Job held by another worker; asking again.");
                tokio::time::sleep(retry_delay).await;
                retry_delay = (retry_delay * 2).min(MAX_CLAIM_RETRY_DELAY);
            }
            None => {
                tracing::warn!(
                    timeout_s = CLAIM_ANSWER_TIMEOUT.as_secs(),
                    "No answer to the claim; is the dispatcher running? Asking again."
                );
            }
        }
    }
}

async fn heartbeats(broker: Broker, settings: WorkerSettings, job: Job, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(err) =
            publish_event(&broker, &settings, &job, JobEventKind::Heartbeat, None).await
        {
            tracing::warn!(error = %err, "Heartbeat not published.");
        }
    }
}

/// Runs the job, stopping it when it outlives the account's job timeout.
async fn execute_with_timeout(
    settings: &WorkerSettings,
    workspace: &Workspace,
    job: &Job,
) -> JobOutcome {
    if job.timeout_secs == 0 {
        return execute(settings, workspace, job).await;
    }
    let started = Instant::now();
    let limit = Duration::from_secs(job.timeout_secs);
    match tokio::time::timeout(limit, execute(settings, workspace, job)).await {
        Ok(outcome) => outcome,
        // Dropping the future kills the tool's process (kill_on_drop).
        Err(_elapsed) => JobOutcome {
            status: JobStatus::Failed,
            exit_code: None,
            resource_changes: None,
            output: format!(
                "Error: the job timed out after {} s and was stopped\n",
                job.timeout_secs
            ),
            duration_ms: elapsed_ms(started),
        },
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
    reply_to: Option<&str>,
) -> Result<(), BrokerError> {
    let event = JobEvent {
        job_id: job.job_id,
        run_id: job.run_id,
        attempt: job.attempt,
        worker: settings.name.clone(),
        kind,
    };
    let body = event.encode();
    let id = uuid::Uuid::new_v4().to_string();
    let headers = Headers::new();
    let message = Outgoing {
        reply_to,
        ..Outgoing::new(&body, &id, &headers)
    };
    broker.publish(Route::JobEvents, message).await
}
