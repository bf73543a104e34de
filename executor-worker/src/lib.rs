//! Executor workers: take jobs from `jobs.<account>.<role>`, claim them from the dispatcher,
//! check out the job's commit from the canonical repository, run the IaC tool with the role's
//! credentials, and report what happened.
//!
//! Each account has two kinds of worker. A plan worker runs pull requests' code (providers,
//! `data "external"`, hooks) and holds only the read-only identity; an apply worker runs only
//! reviewed commits of the deploy branch and holds the write identity. They share nothing: not
//! a queue, a broker login, credentials or a disk.
//!
//! Workers trust nothing in a job beyond ids, names and commits: the clone URL, the tool, its
//! arguments, its environment and the credentials come from the worker's own configuration,
//! the job's unit must belong to the worker's account by that configuration, and an apply
//! worker runs only commits it finds itself on the deploy branch of the canonical remote.
//!
//! - [`checks`]: what the worker checks of a job before anything runs.
//! - `access`: who besides the worker may read or write a file: its mode bits and POSIX ACLs.
//! - `job`: one delivery's life: claim, heartbeats, stop orders, timeout, drain, report.
//! - `work`: what a claimed job does: verify, obtain credentials, check out, run the steps.
//! - [`workspace`]: the git cache and per-job checkouts (git CLI).
//! - `runner`: the tool steps of each action, and the only place IaC tools are started.
//! - [`supervisor`]: keeps a tool's process group from outliving its worker.
//! - `credentials`: the credential providers.
//! - `output`: redacted, bounded output and the job's log file.
//! - `pipe`: a tool's output pipe, read so that the worker can stop listening to it.

mod access;
pub mod checks;
mod credentials;
mod job;
mod logstream;
mod metrics;
mod output;
mod pipe;
pub mod plan_summary;
pub mod policy;
mod remove_tree;
mod runner;
mod shared_sources;
mod shared_temp;
pub mod supervisor;
mod sysv_ipc;
mod work;
pub mod workspace;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use broker::topology::jobs_queue;
use broker::{Broker, BrokerError, Topology};
use config::{Config, Credentials, CredentialsProvider, Repository, ToolUser};
use proto_types::ExecutorRole;
use telemetry::Ops;

pub use crate::runner::SUPERVISE_COMMAND;
use crate::workspace::{GitSettings, Workspace, WorkspaceError};

/// Everything a worker needs to know, resolved from the admin-owned config.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    pub account: String,
    /// Which jobs this worker takes: pull-request plans, or every job of a push.
    pub role: ExecutorRole,
    /// Shown in job events and run summaries.
    pub name: String,
    pub work_dir: PathBuf,
    /// Where each job's log goes: `<log_dir>/<run>/<job>-<attempt>.log`.
    pub log_dir: PathBuf,
    /// Stream each job's log to the dispatcher as it is written (`executor.stream_logs`).
    pub stream_logs: bool,
    /// The most bytes of one job's output written to its log file (`executor.max_log_bytes`).
    pub max_log_bytes: u64,
    /// Runs' logs not written for this long are deleted (`executor.log_retention_days`);
    /// `None` keeps them.
    pub log_retention: Option<Duration>,
    /// What all logs in `log_dir` may take (`executor.max_total_log_bytes`,
    /// `log_keep_free_bytes`).
    pub log_budget: run_logs::Budget,
    pub tf_binary: Option<String>,
    pub repositories: Vec<Repository>,
    /// The role's identity, for every job it runs: the account's `plan_credentials` for a plan
    /// worker, its `apply_credentials` for an apply worker. A worker never holds the other's.
    pub credentials: Option<Credentials>,
    /// How long a credentials command or an STS call may take.
    pub credentials_timeout: Duration,
    /// Which account owns a unit, by this worker's own configuration.
    pub owners: config::AccountRouter,
    /// The tools' user and environment.
    pub tools: ToolSettings,
    /// The worker's own git: its deadline and settings.
    pub git: GitSettings,
    pub heartbeat_interval: Duration,
    /// On shutdown, how long a running job may take before it is stopped and given back.
    pub drain: Duration,
    /// After asking a tool to stop, how long until its process group is killed.
    pub stop_grace: Duration,
    /// The `pipelines` binary, which supervises every tool process (see [`supervisor`]).
    pub supervisor: Option<PathBuf>,
    /// The admin's policy sets, read when the worker started and on an explicit reload
    /// ([`reload_policies_on_hangup`]).
    pub policies: policy::PolicyHandle,
    /// The file holding the worker's broker password (`broker_password_file`): a tool user
    /// that could read it would give a plan the worker's broker login.
    pub broker_password_file: Option<PathBuf>,
}

/// Who tools run as and what environment they get. Nothing else of the worker's environment
/// reaches a tool.
#[derive(Clone, Default)]
pub struct ToolSettings {
    /// Run tools as this user (`executor.tool_user`); `None`: as the worker.
    pub user: Option<ToolUser>,
    /// The worker's `pass_env` variables, read once at start, then `executor.tool_env`.
    pub env: BTreeMap<String, String>,
    /// The PATH tools get: the worker's.
    pub path: String,
}

impl std::fmt::Debug for ToolSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: a proxy URL may carry a password.
        f.debug_struct("ToolSettings")
            .field("user", &self.user)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("path", &self.path)
            .finish()
    }
}

impl ToolSettings {
    /// From `[executor]` and the worker's own environment (`lookup`).
    pub fn from_config(
        executor: &config::ExecutorSettings,
        user: Option<ToolUser>,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> ToolSettings {
        let mut env: BTreeMap<String, String> = executor
            .pass_env
            .iter()
            .filter_map(|name| lookup(name).map(|value| (name.clone(), value)))
            .collect();
        env.extend(executor.tool_env.clone());
        ToolSettings {
            user,
            env,
            path: lookup("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_owned()),
        }
    }
}

impl WorkerSettings {
    /// Settings for a worker of `account` in `role`. `Err` names what is wrong.
    pub fn from_config(
        config: &Config,
        account: &str,
        role: ExecutorRole,
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
        // Another name's log chunks are refused by the dispatcher's log store (and a name past
        // 256 bytes its every claim): the worker would stream no log, or take no job.
        if !proto_types::is_worker_name(&name) {
            return Err(format!(
                "worker name {name:?} must be letters, digits and ._@:- only, not starting \
                 with '.', at most {} bytes",
                proto_types::MAX_WORKER_NAME_BYTES
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
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let user = config.executor.tool_user(&passwd)?;
        let tools =
            ToolSettings::from_config(&config.executor, user, |name| std::env::var(name).ok());
        Ok(WorkerSettings {
            account: account.to_owned(),
            role,
            name,
            work_dir,
            log_dir,
            stream_logs: config.executor.stream_logs,
            max_log_bytes: config.executor.max_log_bytes,
            log_retention: (config.executor.log_retention_days > 0).then(|| {
                Duration::from_secs(config.executor.log_retention_days.saturating_mul(86_400))
            }),
            log_budget: run_logs::Budget::from_settings(
                0,
                config.executor.max_total_log_bytes,
                config.executor.log_keep_free_bytes,
            ),
            tf_binary: config.executor.tf_binary.clone(),
            repositories: config.repositories.clone(),
            credentials: config
                .credentials_for(entry, role == ExecutorRole::Apply)
                .cloned(),
            credentials_timeout: config.timeouts.credentials(),
            owners: config::AccountRouter::new(config),
            tools,
            git: GitSettings {
                timeout: config.timeouts.git(),
                config: config.executor.git_config.clone(),
            },
            heartbeat_interval: Duration::from_secs(30),
            drain: Duration::from_secs(config.executor.drain_seconds),
            stop_grace: Duration::from_secs(config.executor.stop_grace_seconds),
            supervisor: None,
            policies: policy::PolicyHandle::new(policy::Policies::load(
                &config.policies,
                &config.policy,
            )),
            broker_password_file: config.broker_password_file.clone(),
        })
    }
}

/// Why a worker of `account` in `role` must not start on this machine as configured: a plan
/// worker that can read the apply identity's token file would hand it to a pull request's
/// code. `Ok` when nothing is wrong. (Reads the file system: run where the worker runs.)
pub fn check_isolation(config: &Config, account: &str, role: ExecutorRole) -> Result<(), String> {
    let Some(entry) = config.account(account) else {
        return Err(format!("account {account:?} is not in the configuration"));
    };
    if role != ExecutorRole::Plan {
        return Ok(());
    }
    // Shared entries, token files, roles and commands were refused when the config loaded
    // (`accounts[i].plan_credentials`); what is left is what this machine lets the worker read.
    if let Some(apply) = config.credentials_for(entry, true)
        && apply.provider == CredentialsProvider::AwsWebIdentity
        && let Some(token) = &apply.token_file
        && std::fs::File::open(token).is_ok()
    {
        return Err(format!(
            "the plan worker of {account:?} can read the apply credentials' token file {} \
             (mount only the plan role's token into plan workers)",
            token.display()
        ));
    }
    Ok(())
}

impl WorkerSettings {
    /// What [`checks::check_job`] compares a job with.
    pub(crate) fn identity(&self) -> checks::Identity<'_> {
        checks::Identity {
            account: &self.account,
            role: self.role,
            owners: &self.owners,
        }
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
    /// The worker cannot keep its promises here (missing privileges): fix the deployment.
    #[error("{0}")]
    Setup(String),
    /// Processes of the tool user outlived SIGKILL (stuck in the kernel): no job may meet
    /// them, so the worker stops (at start, it does not start); any job in hand was reported
    /// or given back first.
    #[error("{0} process(es) of the tool user outlived the kill: no job may meet them")]
    ToolUserAlive(usize),
}

impl ExecuteError {
    /// Whether reconnecting to the broker and starting again may help.
    pub fn is_transient(&self) -> bool {
        match self {
            ExecuteError::Broker(err) => err.is_transient(),
            ExecuteError::ConsumerClosed(_) => true,
            ExecuteError::Workspace(_)
            | ExecuteError::Setup(_)
            | ExecuteError::ToolUserAlive(_) => false,
        }
    }
}

/// Consumes the account's job queue, one job at a time, until `shutdown` resolves. Then it
/// drains: the job in progress may finish within [`WorkerSettings::drain`]; past that it is
/// stopped and given back to the queue, never lost.
pub async fn run(
    broker: Broker,
    mut settings: WorkerSettings,
    ops: Ops,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ExecuteError> {
    harden_process();
    if let Some(user) = settings.tools.user {
        can_switch_to(user).map_err(ExecuteError::Setup)?;
        if settings.supervisor.is_none() {
            // Only the supervisor bounds the tool user's tasks and outlives a killed worker.
            return Err(ExecuteError::Setup(format!(
                "executor.tool_user = {}:{} needs the pipelines binary to supervise the tools, and none was given",
                user.uid, user.gid
            )));
        }
        // What a worker killed before it could clean up after its job left running goes now;
        // a worker whose tool user keeps processes through SIGKILL takes no job at all.
        let killed = runner::kill_all_of(user, settings.supervisor.clone()).await;
        if killed.killed > 0 {
            tracing::warn!(
                killed = killed.killed,
                "Killed processes of the tool user left from before the start."
            );
        }
        if killed.left > 0 {
            return Err(ExecuteError::ToolUserAlive(killed.left));
        }
    }
    if let Some(source) = check_host(&settings)? {
        tracing::warn!(
            source,
            "Registry credentials reach every tool, so a pull request's plan can read them: give plan workers a Terraform CLI configuration and tool_env without credentials."
        );
    }
    let workspace = Workspace::open(
        settings.work_dir.clone(),
        settings.git.clone(),
        settings.tools.user,
    )?;
    // Job logs are the worker's: a tool (as the tool user) must not read another job's, nor
    // put a directory of its own in their place. The default is in the work directory as
    // checked (canonical).
    let log_dir = if settings.log_dir == settings.work_dir.join("logs") {
        workspace.root().join("logs")
    } else {
        settings.log_dir.clone()
    };
    settings.log_dir = workspace::private_dir(
        &log_dir,
        0o700,
        workspace::PrivateDir::Logs,
        settings.tools.user,
    )?;
    let run_logs = run_logs::SharedRunLogs::new(&settings.log_dir, settings.log_budget);
    // Counted now, off the async threads, rather than at a job's first line.
    let counting = run_logs.clone();
    let _ = tokio::task::spawn_blocking(move || counting.lock().total_bytes()).await;
    metrics::register(&ops.metrics);
    broker
        .ensure_topology(&Topology::new([settings.account.clone()]))
        .await?;
    let queue = jobs_queue(&settings.account, settings.role);
    let mut replies = broker.reply_queue().await?;
    // Prefetch 1: a job waiting behind an hours-long apply should go to another worker.
    let mut jobs = broker.consume(&queue, 1).await?;
    // A set that cannot load fails every job it governs; say so now, not at the first job.
    for (set, error) in settings.policies.current().load_errors() {
        tracing::error!(policy_set = set, %error, "Policy set not loaded: the jobs it governs will fail.");
    }
    ops.health.set_ready(true);
    tracing::info!(account = %settings.account, role = %settings.role, worker = %settings.name, work_dir = %settings.work_dir.display(), "Executor ready.");
    tokio::pin!(shutdown);
    let mut draining = false;
    let mut next_prune = std::time::Instant::now();
    let reported = std::sync::Mutex::new(job::Reported::default());
    while !draining {
        prune_logs_if_due(&settings, &run_logs, &mut next_prune).await;
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
            run_logs: &run_logs,
            reported: &reported,
        };
        draining = worker.handle(delivery, &mut replies, &mut shutdown).await?;
    }
    tracing::info!("Executor stopped taking jobs; shutting down.");
    Ok(())
}

/// What this machine must give a worker before it takes a job, checked without changing
/// anything: its tool user cannot read the broker password file, and what every job's tools
/// read from is not open to others' writes ([`refuse_shared_sources_others_write`]). `Ok`
/// holds what is allowed but must be said: where a plan worker's tools find registry
/// credentials. The worker checks this at start, `pipelines config check --account --role`
/// ahead of it. (It reads the file system and the settings' environment: run it where, and
/// as, the worker runs.)
pub fn check_host(settings: &WorkerSettings) -> Result<Option<String>, ExecuteError> {
    if let Some(user) = settings.tools.user
        && let Some(file) = &settings.broker_password_file
        && let Some(why) = tool_user_reads(file, user)
    {
        return Err(ExecuteError::Setup(format!(
            "broker_password_file {} {why}: a pull request's plan could read the worker's broker password (keep the file and every directory above it root's, the file with mode 0400 and one link)",
            file.display()
        )));
    }
    refuse_shared_sources_others_write(settings)?;
    Ok(if settings.role == ExecutorRole::Plan {
        registry_credentials_for_tools(&settings.tools)
    } else {
        None
    })
}

/// Refuses to start when what every job's tools read from (their PATH and binaries, plugin
/// caches, mirrors, the CLI configuration: see [`shared_sources`]) could be written by anyone
/// on the host, or by a plan worker's tool user. Without a tool user a plan's tools may write
/// wherever the worker may: SECURITY.md says what that leaves open.
fn refuse_shared_sources_others_write(settings: &WorkerSettings) -> Result<(), ExecuteError> {
    let plan = settings.role == ExecutorRole::Plan;
    let writers = shared_sources::Writers {
        plan_tools: settings.tools.user.filter(|_| plan),
    };
    let sources = shared_sources::shared_sources(
        &settings.tools.env,
        &settings.tools.path,
        settings.tf_binary.as_deref(),
    )
    .map_err(ExecuteError::Setup)?;
    for source in sources {
        if let Some(why) = shared_sources::writable_by_others(&source.path, writers) {
            return Err(ExecuteError::Setup(format!(
                "{} ({}) {why}. A pull request's plan could put a program, provider or module there that later jobs run: {}",
                source.named_by,
                source.path.display(),
                source.advice
            )));
        }
    }
    Ok(())
}

/// Where the tools would find registry credentials, if anywhere: a `TF_TOKEN_*` variable, or
/// a Terraform CLI configuration (`TF_CLI_CONFIG_FILE`) with a `credentials` block or a
/// `credentials_helper`. On a plan worker a pull request's code reads them.
fn registry_credentials_for_tools(tools: &ToolSettings) -> Option<String> {
    if let Some(name) = tools.env.keys().find(|name| name.starts_with("TF_TOKEN_")) {
        return Some(name.clone());
    }
    let file = tools.env.get("TF_CLI_CONFIG_FILE")?;
    let text = std::fs::read_to_string(file).ok()?;
    hands_out_credentials(&text).then(|| format!("TF_CLI_CONFIG_FILE={file}"))
}

/// Whether a Terraform CLI configuration gives credentials: a `credentials "host"` block or
/// a `credentials_helper`, outside comments.
fn hands_out_credentials(cli_config: &str) -> bool {
    cli_config
        .lines()
        .map(str::trim_start)
        .filter(|line| !line.starts_with('#') && !line.starts_with("//"))
        .any(|line| {
            line.strip_prefix("credentials").is_some_and(|rest| {
                rest.starts_with([' ', '\t', '"']) || rest.starts_with("_helper")
            })
        })
}

/// How often, at most, the worker looks for job logs past `executor.log_retention_days`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deletes runs' logs past `executor.log_retention_days`: at start, then after a job once
/// [`PRUNE_EVERY`] has passed (an idle worker writes no logs). Off the async threads.
async fn prune_logs_if_due(
    settings: &WorkerSettings,
    run_logs: &run_logs::SharedRunLogs,
    next: &mut std::time::Instant,
) {
    let Some(keep) = settings.log_retention else {
        return;
    };
    if std::time::Instant::now() < *next {
        return;
    }
    *next = std::time::Instant::now() + PRUNE_EVERY;
    let run_logs = run_logs.clone();
    let before = std::time::SystemTime::now()
        .checked_sub(keep)
        .unwrap_or(std::time::UNIX_EPOCH);
    if let Ok(pruned @ 1..) =
        tokio::task::spawn_blocking(move || run_logs.lock().prune_older_than(before)).await
    {
        tracing::info!(
            runs = pruned,
            log_retention_days = keep.as_secs() / 86_400,
            "Pruned job logs."
        );
    }
}

/// On every SIGHUP, reads the policy sets of `config_path` again (`[[policies]]` and
/// `[policy]`; any other change needs a restart) and puts them in force from the next job on.
/// A file that no longer loads keeps the sets in force, saying why; a set that fails to load
/// is logged, and fails the jobs it governs, as at start-up.
pub async fn reload_policies_on_hangup(config_path: PathBuf, handle: policy::PolicyHandle) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(error = %err, "Cannot listen for SIGHUP: policies reload only on restart.");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        let path = config_path.clone();
        // Loading prepares every engine under its time budget: off the async threads.
        let loaded = tokio::task::spawn_blocking(move || {
            Config::load(&path)
                .map(|config| policy::Policies::load(&config.policies, &config.policy))
        })
        .await;
        match loaded {
            Ok(Ok(policies)) => {
                for (set, error) in policies.load_errors() {
                    tracing::error!(policy_set = set, %error, "Policy set not loaded: the jobs it governs will fail.");
                }
                let sets = policies.len();
                handle.replace(policies);
                tracing::info!(sets, config = %config_path.display(), "Policies reloaded: in force from the next job on.");
            }
            Ok(Err(err)) => {
                tracing::error!(error = %err, "Policies not reloaded: the configuration does not load; the sets in force stay.");
            }
            Err(err) => {
                tracing::error!(error = %err, "Policies not reloaded: the loader failed; the sets in force stay.");
            }
        }
    }
}

/// Makes the worker's memory and `/proc/<pid>/` files (environ, mem, fds) unreadable to
/// processes of the same user, tools included: they cannot attach to it or read what it holds.
/// Each tool starts dumpable again (the flag resets on exec), so this costs tools nothing.
pub fn harden_process() {
    if let Err(err) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        tracing::warn!(error = %err, "Cannot make the worker non-dumpable.");
    }
}

/// The worker's own settings in its environment (`PIPELINES_*`: a broker password, a GitHub
/// token) among `vars`: what the processes it starts for itself (git, credential commands)
/// must not carry. Tools get an environment built from nothing; these processes need the
/// worker's (proxies, certificates, an ssh agent), but while one runs, a process a job left
/// behind as the same user could read its `/proc/<pid>/environ`.
fn worker_settings(vars: impl Iterator<Item = std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    // Case-insensitive, as the configuration reads them.
    vars.filter(|name| {
        name.as_encoded_bytes()
            .get(..10)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(b"PIPELINES_"))
    })
    .collect()
}

/// Removes the worker's own settings (see [`worker_settings`]) from `command`'s environment.
pub(crate) fn without_worker_settings(
    command: &mut tokio::process::Command,
) -> &mut tokio::process::Command {
    for name in worker_settings(std::env::vars_os().map(|(name, _)| name)) {
        command.env_remove(name);
    }
    command
}

/// Why `tools` can read `path`: every directory above it lets the tool user pass, and the
/// file's mode or ACL lets it read (as a named user, its group or anyone); or the tool user
/// owns the file or a directory above it, and so may open it to itself with `chmod`; or the
/// file has another hard link, which may be in a directory the tool user can pass. What
/// cannot be checked counts as readable. `None`: it cannot read it.
fn tool_user_reads(path: &std::path::Path, tools: ToolUser) -> Option<String> {
    use access::{Access, READ, SEARCH};
    use std::os::unix::fs::MetadataExt;
    let cannot_check = |path: &std::path::Path, err: std::io::Error| {
        format!(
            "may be readable by the tool user: {} cannot be checked: {err}",
            path.display()
        )
    };
    let path = match path.canonicalize() {
        Ok(path) => path,
        Err(err) => return Some(cannot_check(path, err)),
    };
    let mut passes = true;
    for dir in path.ancestors().skip(1) {
        let dir_access = match Access::of(dir) {
            Ok(access) => access,
            Err(err) => return Some(cannot_check(dir, err)),
        };
        if dir_access.uid == tools.uid {
            return Some(format!(
                "is in {}, which the tool user {}:{} owns: it may open that directory to itself and replace the file",
                dir.display(),
                tools.uid,
                tools.gid
            ));
        }
        passes &= dir_access.permits(tools, SEARCH);
    }
    let read =
        std::fs::metadata(&path).and_then(|meta| Ok((Access::read(&path, &meta)?, meta.nlink())));
    let (file, links) = match read {
        Ok(read) => read,
        Err(err) => return Some(cannot_check(&path, err)),
    };
    let described = format!(
        "(owner {}, group {}, mode {:o}{})",
        file.uid,
        file.gid,
        file.mode,
        if file.acl.is_some() {
            ", and an access control list"
        } else {
            ""
        },
    );
    if file.uid == tools.uid {
        return Some(format!(
            "{described} is owned by the tool user {}:{} (it may open it to itself)",
            tools.uid, tools.gid
        ));
    }
    if !file.permits(tools, READ) {
        return None;
    }
    if passes {
        Some(format!(
            "{described} is readable by the tool user {}:{}",
            tools.uid, tools.gid
        ))
    } else if links > 1 {
        Some(format!(
            "{described} is readable by the tool user {}:{}, and has {links} hard links: another may be where the tool user can pass",
            tools.uid, tools.gid
        ))
    } else {
        None
    }
}

/// Capabilities a worker needs to run tools as another user, and to clean up after them.
const SWITCH_CAPABILITIES: &[(u32, &str)] = &[
    (0, "CAP_CHOWN"),
    (1, "CAP_DAC_OVERRIDE"),
    (3, "CAP_FOWNER"),
    (5, "CAP_KILL"),
    (6, "CAP_SETGID"),
    (7, "CAP_SETUID"),
];

/// Whether this process may run tools as `user`: `Err` names what is missing.
fn can_switch_to(user: ToolUser) -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let capabilities = |key: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .unwrap_or(0)
    };
    let groups: Vec<u32> = status
        .lines()
        .find_map(|line| line.strip_prefix("Groups:"))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    switch_problem(
        rustix::process::geteuid().as_raw(),
        capabilities("CapEff:"),
        capabilities("CapAmb:"),
        &groups,
        user,
    )
}

/// Whether a worker running as `euid` with the `effective` and `ambient` capability sets and
/// the supplementary `groups` (as `/proc/self/status` shows them) may run tools as `user`.
///
/// A worker that is not root hands the tools more than it means to. Ambient capabilities are
/// kept across `execve`, and a switch between two users other than root does not clear them:
/// `CAP_SETUID` and `CAP_DAC_OVERRIDE` for a pull request's code. And the standard library
/// drops supplementary groups only when root switches: the tools would read what the worker's
/// groups may (a policy file `root:pipelines`, mode 0640). Root loses both with the switch.
fn switch_problem(
    euid: u32,
    effective: u64,
    ambient: u64,
    groups: &[u32],
    user: ToolUser,
) -> Result<(), String> {
    if euid == user.uid {
        return Err(format!(
            "executor.tool_user is the worker's own user ({euid}): tools would read the worker's files"
        ));
    }
    if euid != 0 && ambient != 0 {
        return Err(format!(
            "the worker (user {euid}) holds ambient capabilities ({ambient:#x}), which tools run as executor.tool_user = {}:{} would inherit: run the worker as root (bounded to the capabilities it needs), not as a user with AmbientCapabilities",
            user.uid, user.gid
        ));
    }
    if euid != 0 && !groups.is_empty() {
        return Err(format!(
            "the worker (user {euid}) has supplementary groups {groups:?}, which tools run as executor.tool_user = {}:{} would keep (they are dropped only when root switches): run the worker as root, or as a user without supplementary groups",
            user.uid, user.gid
        ));
    }
    let missing: Vec<&str> = SWITCH_CAPABILITIES
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "executor.tool_user = {}:{} needs the worker to hold {} (run it as root, or grant them)",
            user.uid,
            user.gid,
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_credentials_in_the_tools_cli_configuration_are_found() {
        assert!(hands_out_credentials(
            "plugin_cache_dir = \"/x\"\ncredentials \"app.terraform.io\" {\n  token = \"t\"\n}\n"
        ));
        assert!(hands_out_credentials("  credentials_helper \"vault\" {}\n"));
        assert!(hands_out_credentials(
            "credentials\t\"registry.example.com\" { token = \"t\" }"
        ));
        for none in [
            "provider_installation {\n  filesystem_mirror { path = \"/m\" }\n}\n",
            "# credentials \"app.terraform.io\" { token = \"t\" }\n",
            "// credentials_helper \"vault\" {}\n",
            "disable_checkpoint = true\n",
        ] {
            assert!(!hands_out_credentials(none), "{none}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("terraformrc");
        std::fs::write(
            &file,
            "credentials \"app.terraform.io\" { token = \"t\" }\n",
        )
        .unwrap();
        let tools = |env: &[(&str, String)]| ToolSettings {
            env: env
                .iter()
                .map(|(name, value)| ((*name).to_owned(), value.clone()))
                .collect(),
            ..ToolSettings::default()
        };
        let path = file.display().to_string();
        assert_eq!(
            registry_credentials_for_tools(&tools(&[("TF_CLI_CONFIG_FILE", path.clone())])),
            Some(format!("TF_CLI_CONFIG_FILE={path}"))
        );
        assert_eq!(
            registry_credentials_for_tools(&tools(&[("TF_TOKEN_app_terraform_io", "t".into())])),
            Some("TF_TOKEN_app_terraform_io".to_owned())
        );
        std::fs::write(&file, "disable_checkpoint = true\n").unwrap();
        assert_eq!(
            registry_credentials_for_tools(&tools(&[("TF_CLI_CONFIG_FILE", path)])),
            None
        );
    }

    const TOOLS: ToolUser = ToolUser {
        uid: 61001,
        gid: 61001,
    };
    /// Every capability the switch needs.
    const ALL: u64 = 0b1110_1011;

    #[test]
    fn a_worker_with_ambient_capabilities_may_not_run_tools_as_another_user() {
        assert_eq!(switch_problem(0, ALL, 0, &[], TOOLS), Ok(()));
        assert_eq!(switch_problem(1000, ALL, 0, &[], TOOLS), Ok(()));
        // Root loses ambient capabilities with the switch; a plain user keeps them.
        assert_eq!(switch_problem(0, ALL, ALL, &[], TOOLS), Ok(()));
        let refused = switch_problem(1000, ALL, ALL, &[], TOOLS).unwrap_err();
        assert!(
            refused.contains("holds ambient capabilities (0xeb)")
                && refused.contains("tool_user = 61001:61001"),
            "{refused}"
        );
    }

    #[test]
    fn the_worker_keeps_its_own_settings_from_the_processes_it_starts() {
        let names = [
            "PATH",
            "PIPELINES_BROKER_URL",
            "HTTPS_PROXY",
            "pipelines_github__token",
            "PIPELINES",
        ];
        let removed = worker_settings(names.iter().map(std::ffi::OsString::from));
        assert_eq!(removed, ["PIPELINES_BROKER_URL", "pipelines_github__token"]);
    }

    #[test]
    fn a_worker_name_the_dispatcher_would_refuse_is_refused_at_start() {
        let config = Config::from_toml(
            "[[repositories]]\nname = \"infra\"\nurl = \"/srv/infra.git\"\n\
             [[accounts]]\nname = \"dev\"\npaths = [\"**\"]\n",
        )
        .unwrap();
        let with = |name: &str| {
            WorkerSettings::from_config(&config, "dev", ExecutorRole::Plan, Some(name.into()), None)
                .map(|settings| settings.name)
        };
        assert_eq!(with(&"w".repeat(128)), Ok("w".repeat(128)));
        assert_eq!(
            with("host-1.example:prod@2"),
            Ok("host-1.example:prod@2".into())
        );
        for bad in [
            "w".repeat(129),
            "has space".into(),
            String::new(),
            "host/1".into(),
            ".hidden".into(),
            "wörker".into(),
        ] {
            let refused = with(&bad).unwrap_err();
            assert!(
                refused.contains(
                    "must be letters, digits and ._@:- only, not starting with '.', at most 128 bytes"
                ),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_password_file_the_tool_user_may_read_is_named_with_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let set = |path: &std::path::Path, mode: u32| {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        set(dir.path(), 0o711);
        let file = dir.path().join("broker.password");
        std::fs::write(&file, "secret").unwrap();
        set(&file, 0o444);
        let why = tool_user_reads(&file, TOOLS).unwrap();
        assert!(
            why.contains("mode 444) is readable by the tool user 61001:61001"),
            "{why}"
        );
        set(&file, 0o400);
        assert_eq!(tool_user_reads(&file, TOOLS), None);
        // `setfacl -m u:61001:r`: the mode reads 440, the group root's.
        use access::tests::{MASK, NOBODY, OTHER, OWNER, OWNING_GROUP, USER, set_acl};
        set_acl(
            &file,
            false,
            &[
                (OWNER, 4, NOBODY),
                (USER, 4, TOOLS.uid),
                (OWNING_GROUP, 0, NOBODY),
                (MASK, 4, NOBODY),
                (OTHER, 0, NOBODY),
            ],
        );
        let why = tool_user_reads(&file, TOOLS).unwrap();
        assert!(
            why.contains("mode 440, and an access control list) is readable by the tool user"),
            "{why}"
        );
        set(&file, 0o400);
        assert_eq!(tool_user_reads(&file, TOOLS), None);
        // Readable by anyone, but inside a directory the tool user may not pass.
        set(&file, 0o444);
        set(dir.path(), 0o700);
        assert_eq!(tool_user_reads(&file, TOOLS), None);
        // ... unless another hard link to it may be elsewhere.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::hard_link(&file, elsewhere.path().join("link")).unwrap();
        let why = tool_user_reads(&file, TOOLS).unwrap();
        assert!(
            why.ends_with("and has 2 hard links: another may be where the tool user can pass"),
            "{why}"
        );
        std::fs::remove_file(elsewhere.path().join("link")).unwrap();
        // Its owner may open it to itself, whatever the mode says: the file's owner, or the
        // owner of a directory above it.
        set(&file, 0o000);
        std::os::unix::fs::chown(&file, Some(TOOLS.uid), None).unwrap();
        let why = tool_user_reads(&file, TOOLS).unwrap();
        assert!(
            why.contains("is owned by the tool user 61001:61001 (it may open it to itself)"),
            "{why}"
        );
        std::os::unix::fs::chown(&file, Some(0), None).unwrap();
        std::os::unix::fs::chown(dir.path(), Some(TOOLS.uid), None).unwrap();
        let why = tool_user_reads(&file, TOOLS).unwrap();
        assert!(
            why.starts_with(&format!(
                "is in {}, which the tool user 61001:61001 owns",
                dir.path().display()
            )),
            "{why}"
        );
        std::os::unix::fs::chown(dir.path(), Some(0), None).unwrap();
        assert_eq!(tool_user_reads(&file, TOOLS), None);
        // What cannot be checked counts as readable.
        let why = tool_user_reads(&dir.path().join("missing"), TOOLS).unwrap();
        assert!(
            why.starts_with("may be readable by the tool user:"),
            "{why}"
        );
    }

    #[test]
    fn a_worker_that_is_not_root_with_supplementary_groups_may_not_run_tools_as_another_user() {
        // Root's groups go with the switch; a plain user's would stay with the tools.
        assert_eq!(switch_problem(0, ALL, 0, &[0, 27], TOOLS), Ok(()));
        let refused = switch_problem(1000, ALL, 0, &[1000, 27], TOOLS).unwrap_err();
        assert!(
            refused.contains("has supplementary groups [1000, 27]"),
            "{refused}"
        );
    }

    #[test]
    fn the_switch_names_what_the_worker_lacks_and_refuses_its_own_user() {
        let lacking = switch_problem(1000, ALL & !(1 << 7), 0, &[], TOOLS).unwrap_err();
        assert!(
            lacking.contains("needs the worker to hold CAP_SETUID"),
            "{lacking}"
        );
        let own = switch_problem(61001, ALL, 0, &[], TOOLS).unwrap_err();
        assert!(own.contains("the worker's own user (61001)"), "{own}");
    }
}
