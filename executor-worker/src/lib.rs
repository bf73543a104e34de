//! Executor workers: take jobs from `jobs.<account>`, claim them from the dispatcher, check out
//! the job's commit from the canonical repository, run the IaC tool with the account's
//! credentials, and report what happened.
//!
//! Workers hold the cloud credentials, so they trust nothing in a job beyond ids, names and
//! commits: the clone URL, the tool, its arguments and the credentials come from the worker's
//! own configuration, and an apply runs only for a commit the worker itself finds on the deploy
//! branch.
//!
//! - `job`: one delivery's life: claim, heartbeats, stop orders, timeout, drain, report.
//! - `work`: what a claimed job does: verify, obtain credentials, check out, run the steps.
//! - [`workspace`]: the git cache and per-job checkouts (git CLI).
//! - `runner`: the tool steps of each action, and the only place IaC tools are started.
//! - [`supervisor`]: keeps a tool's process group from outliving its worker.
//! - `credentials`: the credential providers.
//! - `output`: redacted, bounded output and the job's log file.

mod credentials;
mod job;
mod metrics;
mod output;
mod runner;
pub mod supervisor;
mod work;
pub mod workspace;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use broker::topology::jobs_queue;
use broker::{Broker, BrokerError, Topology};
use config::{Config, Credentials, Repository};
use telemetry::Ops;

pub use crate::runner::SUPERVISE_COMMAND;
use crate::workspace::{Workspace, WorkspaceError};

/// Everything a worker needs to know, resolved from the admin-owned config.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub account: String,
    /// Shown in job events and run summaries.
    pub name: String,
    pub work_dir: PathBuf,
    /// Where each job's whole log goes: `<log_dir>/<run>/<job>-<attempt>.log`.
    pub log_dir: PathBuf,
    pub tf_binary: Option<String>,
    pub repositories: Vec<Repository>,
    /// The identity for plans (read-only), and for applies and destroys.
    pub plan_credentials: Option<Credentials>,
    pub apply_credentials: Option<Credentials>,
    pub heartbeat_interval: Duration,
    /// On shutdown, how long a running job may take before it is stopped and given back.
    pub drain: Duration,
    /// After asking a tool to stop, how long until its process group is killed.
    pub stop_grace: Duration,
    /// The `pipelines` binary, which supervises every tool process (see [`supervisor`]).
    pub supervisor: Option<PathBuf>,
}

impl WorkerSettings {
    /// Settings for a worker of `account`. `Err` names what is wrong.
    pub fn from_config(
        config: &Config,
        account: &str,
        name: Option<String>,
        work_dir: Option<PathBuf>,
    ) -> Result<WorkerSettings, String> {
        let Some(entry) = config.account(account) else {
            return Err(format!(
                "account {account:?} is not in the configuration (known: {})",
                config.account_names().join(", ")
            ));
        };
        let name = name.unwrap_or_else(default_worker_name);
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!(
                "worker name {name:?} must be non-empty, without spaces"
            ));
        }
        let work_dir = work_dir
            .or_else(|| config.executor.work_dir.clone())
            .unwrap_or_else(|| std::env::temp_dir().join("pipelines-executor").join(&name));
        let log_dir = config
            .executor
            .log_dir
            .clone()
            .unwrap_or_else(|| work_dir.join("logs"));
        Ok(WorkerSettings {
            account: account.to_owned(),
            name,
            work_dir,
            log_dir,
            tf_binary: config.executor.tf_binary.clone(),
            repositories: config.repositories.clone(),
            plan_credentials: config.credentials_for(entry, false).cloned(),
            apply_credentials: config.credentials_for(entry, true).cloned(),
            heartbeat_interval: Duration::from_secs(30),
            drain: Duration::from_secs(config.executor.drain_seconds),
            stop_grace: Duration::from_secs(config.executor.stop_grace_seconds),
            supervisor: None,
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
    /// The work directory cannot be used: fix the configuration.
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("the broker closed the consumer of {0}")]
    ConsumerClosed(String),
}

impl ExecuteError {
    /// Whether reconnecting to the broker and starting again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            ExecuteError::Broker(err) => err.is_transient(),
            ExecuteError::ConsumerClosed(_) => true,
            ExecuteError::Workspace(_) => false,
        }
    }
}

/// Consumes the account's job queue, one job at a time, until `shutdown` resolves. Then it
/// drains: the job in progress may finish within [`WorkerSettings::drain`]; past that it is
/// stopped and given back to the queue, never lost.
pub async fn run(
    broker: Broker,
    settings: WorkerSettings,
    ops: Ops,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ExecuteError> {
    let workspace = Workspace::open(settings.work_dir.clone())?;
    metrics::register(&ops.metrics);
    broker
        .ensure_topology(&Topology::new([settings.account.clone()]))
        .await?;
    let queue = jobs_queue(&settings.account);
    let mut replies = broker.reply_queue().await?;
    // Prefetch 1: a job waiting behind an hours-long apply should go to another worker.
    let mut jobs = broker.consume(&queue, 1).await?;
    ops.health.set_ready(true);
    tracing::info!(account = %settings.account, worker = %settings.name, work_dir = %settings.work_dir.display(), "Executor ready.");
    tokio::pin!(shutdown);
    let mut draining = false;
    while !draining {
        let delivery = tokio::select! {
            biased;
            () = &mut shutdown => break,
            delivery = jobs.next() => match delivery {
                Some(delivery) => delivery?,
                None => return Err(ExecuteError::ConsumerClosed(queue)),
            },
        };
        let worker = job::Worker {
            broker: &broker,
            settings: &settings,
            workspace: &workspace,
            metrics: &ops.metrics,
        };
        draining = worker.handle(delivery, &mut replies, &mut shutdown).await?;
    }
    tracing::info!("Executor stopped taking jobs; shutting down.");
    Ok(())
}
