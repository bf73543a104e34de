//! What a claimed job does: check the job against the worker's own view of the world (known
//! repository, plain commit ids, and for applies and destroys a commit on the deploy branch),
//! obtain its credentials, check out its commit, run the tool's steps, clean up. Every problem
//! becomes an outcome whose output says what went wrong; nothing here fails the worker.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use config::ToolUser;
use proto_types::{Action, ExecutorRole, Job, JobOutcome, JobStatus, PolicyReport};
use run_logs::SharedRunLogs;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::output::JobOutput;
use crate::policy::PlanContext;
use crate::runner::{self, Launch, PolicyCheck, Stop};
use crate::workspace::{JobDir, Workspace};
use crate::{ToolSettings, WorkerSettings, checks, credentials};
use crate::{shared_temp, sysv_ipc};

/// How a claimed job ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) outcome: JobOutcome,
    /// Set when it was stopped rather than ending by itself.
    pub(crate) stopped: Option<Stop>,
    /// Processes of the tool user that outlived the kill after the job: the worker reports
    /// the job, then stops taking jobs.
    pub(crate) tool_user_alive: usize,
}

/// Where the log of an attempt goes.
pub(crate) fn log_path(settings: &WorkerSettings, job: &Job) -> PathBuf {
    settings
        .log_dir
        .join(job.run_id.to_string())
        .join(format!("{}-{}.log", job.job_id, job.attempt))
}

pub(crate) async fn run(
    settings: &WorkerSettings,
    workspace: &Workspace,
    run_logs: &SharedRunLogs,
    job: &Job,
    mut stop: watch::Receiver<Option<Stop>>,
    log_written: Option<Arc<Notify>>,
) -> Finished {
    let started = Instant::now();
    // A no-op job runs nothing, so it has no log worth a file.
    let log = (job.action != Action::Noop).then(|| log_path(settings, job));
    let mut output = JobOutput::new(Vec::new(), log.as_deref())
        .with_log_limit(settings.max_log_bytes)
        .with_run_logs(run_logs.clone(), job.run_id)
        .notifying(log_written);
    output.push_str(&format!(
        "pipelines: {} {} ({} at {}), attempt {}, on {}\n",
        job.action,
        job.unit,
        job.repository,
        job.checkout_commit(),
        job.attempt,
        settings.name
    ));
    let mut tool_user_alive = 0;
    let (status, exit_code, resource_changes, stopped, policy, drift) = match prepare_and_run(
        settings,
        workspace,
        job,
        &mut output,
        &mut stop,
        &mut tool_user_alive,
    )
    .await
    {
        Ok(steps) => {
            let status = match &steps.stopped {
                Some(reason) => {
                    output.push_str(&format!("Error: {}\n", stop_message(reason)));
                    match reason {
                        Stop::Cancel(_) => JobStatus::Cancelled,
                        Stop::Timeout(_) | Stop::Drain | Stop::Unclean { .. } => JobStatus::Failed,
                    }
                }
                None => steps.status,
            };
            let policy = steps.policy.map(|report| redacted(report, &output));
            (
                status,
                steps.exit_code,
                steps.resource_changes,
                steps.stopped,
                policy,
                steps.drift,
            )
        }
        Err((status, message)) => {
            output.push_str(&format!("Error: {message}\n"));
            (status, None, None, None, None, None)
        }
    };
    Finished {
        outcome: JobOutcome {
            status,
            exit_code,
            resource_changes,
            output: output.finish(),
            duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            log: log.map(|log| format!("{}:{}", settings.name, log.display())),
            policy,
            drift,
        },
        stopped,
        tool_user_alive,
    }
}

/// Policy messages may quote the plan, so they are redacted like the output.
fn redacted(mut report: PolicyReport, output: &JobOutput) -> PolicyReport {
    for set in &mut report.sets {
        for message in set.denies.iter_mut().chain(set.warnings.iter_mut()) {
            *message = output.redact(message);
        }
        if let Some(error) = &mut set.error {
            *error = output.redact(error);
        }
    }
    report
}

fn stop_message(reason: &Stop) -> String {
    match reason {
        Stop::Timeout(limit) => format!(
            "the job timed out after {} and was stopped",
            humane(limit.as_secs())
        ),
        Stop::Cancel(why) => format!("the job was stopped: {why}"),
        Stop::Drain => "the worker shut down; the job goes back to the queue".to_owned(),
        Stop::Unclean { left } => format!(
            "{left} process(es) of the tool user outlived the kill; the job goes back to the queue and this worker stops"
        ),
    }
}

/// `90 s`, `5 min`, `4 h 30 min`.
fn humane(secs: u64) -> String {
    match secs {
        0..120 => format!("{secs} s"),
        120..3600 => format!("{} min", secs / 60),
        _ if secs.is_multiple_of(3600) => format!("{} h", secs / 3600),
        _ => format!("{} h {} min", secs / 3600, (secs % 3600) / 60),
    }
}

/// Everything up to and including the tool's steps. `Err((status, why))` when nothing (more)
/// could run. The job's directory is removed afterwards, however it ended; `left_after` is
/// how many processes of the tool user outlived the kill after it.
async fn prepare_and_run(
    settings: &WorkerSettings,
    workspace: &Workspace,
    job: &Job,
    output: &mut JobOutput,
    stop: &mut watch::Receiver<Option<Stop>>,
    left_after: &mut usize,
) -> Result<runner::StepsOutcome, (JobStatus, String)> {
    let Some(repository) = settings
        .repositories
        .iter()
        .find(|r| r.name == job.repository)
    else {
        return Err(refused(format!(
            "repository {:?} is not in this worker's configuration",
            job.repository
        )));
    };
    checks::check_job(job, settings.identity()).map_err(refused)?;
    if job.action == Action::Noop {
        // Everything up to here, and the claim, events and run state around it, is real.
        output.push_str("pipelines: noop: nothing checked out, no tool run\n");
        return Ok(runner::StepsOutcome {
            status: JobStatus::Succeeded,
            exit_code: None,
            resource_changes: None,
            stopped: None,
            policy: None,
            drift: None,
        });
    }
    // Nothing of an earlier job may meet this one. Its clean-up below does not run when the
    // job is dropped (the broker went away mid-job) or the worker is killed, so what such a
    // job's tools left running, in the shared temporary directories, their System V IPC
    // objects, and its directory, go now.
    if let Some(user) = settings.tools.user {
        let (note, killed) = clear_left_by(settings, user, "an earlier job").await;
        output.push_str(&note);
        if killed.left > 0 {
            // Something of the tool user lives on through SIGKILL (stuck in the kernel): it
            // must not meet this job. The job goes back to the queue for another worker, and
            // this one stops; restarting it (systemd, Kubernetes) ends what it leaves.
            return Ok(runner::StepsOutcome {
                status: JobStatus::Failed,
                exit_code: None,
                resource_changes: None,
                stopped: Some(Stop::Unclean { left: killed.left }),
                policy: None,
                drift: None,
            });
        }
    }
    let leftovers = workspace.remove_leftover_jobs().await;
    if leftovers > 0 {
        output.push_str(&format!(
            "pipelines: removed {leftovers} directory(ies) an earlier job left\n"
        ));
    }
    // Fetching, checking out and obtaining credentials wait on the network: a stop (timeout,
    // cancellation, drain) ends them too.
    let prepared = tokio::select! {
        prepared = prepare(settings, workspace, job, repository, output) => prepared,
        reason = runner::stopped(stop) => Err(Interrupted::Stopped(reason)),
    };
    let result = match prepared {
        Ok(prepared) => {
            let launch = Launch {
                supervisor: settings.supervisor.clone(),
                grace: settings.stop_grace,
                env: tool_env(&settings.tools, &prepared.dir, &prepared.credentials.env),
                user: settings.tools.user,
            };
            // This job's sets: a reload meanwhile applies from the next job on.
            let policies = settings.policies.current();
            // A drift check's plan changes nothing: there is nothing for a policy to stop.
            let policy = (job.action != Action::DriftPlan
                && policies.govern(&job.account, &job.unit))
            .then(|| PolicyCheck {
                policies: Arc::clone(&policies),
                context: plan_context(job),
                // Only an apply worker's apply or destroy: a pull request's plan is never
                // let through, whatever its job says.
                override_by: (job.role == ExecutorRole::Apply && job.action.mutates())
                    .then(|| job.policy_override.clone())
                    .flatten(),
            });
            Ok(runner::execute(
                &prepared.tool,
                job.action,
                &prepared.unit_dir,
                output,
                &launch,
                policy,
                stop,
            )
            .instrument(tracing::info_span!("run_tool", tool = ?prepared.tool))
            .await)
        }
        Err(Interrupted::Stopped(reason)) => Ok(runner::StepsOutcome {
            status: JobStatus::Failed,
            exit_code: None,
            resource_changes: None,
            stopped: Some(reason),
            policy: None,
            drift: None,
        }),
        Err(Interrupted::Failed(status, message)) => Err((status, message)),
    };
    // Nothing of a job outlives it: not a process its tools left behind, not its files,
    // here or in /tmp and /dev/shm, not its shared memory (the processes first, so that none
    // writes while its files are removed).
    if let Some(user) = settings.tools.user {
        let (note, killed) = clear_left_by(settings, user, "the job's tools").await;
        output.push_str(&note);
        *left_after = killed.left;
    }
    workspace.remove(&workspace.job_dir(job.job_id)).await;
    result
}

/// Kills every process of the tool user, then removes what it left in the shared temporary
/// directories and its System V IPC objects (not while any process outlived the kill); what
/// to add to the job's output about what `left_by` left, and what the kill did.
async fn clear_left_by(
    settings: &WorkerSettings,
    user: ToolUser,
    left_by: &str,
) -> (String, runner::Killed) {
    let killed = runner::kill_all_of(user, settings.supervisor.clone()).await;
    // Not while processes outlived the kill: they could write or make more meanwhile.
    let (removed, ipc) = if killed.left > 0 {
        Default::default()
    } else {
        tokio::task::spawn_blocking(move || {
            (
                shared_temp::remove_shared_temp_of(user),
                sysv_ipc::remove_objects_of(user),
            )
        })
        .await
        .unwrap_or_default()
    };
    let note = killed.note(left_by) + &removed.note(left_by) + &ipc.note(left_by);
    (note, killed)
}

/// `input.pipelines` of the job's policy evaluation.
fn plan_context(job: &Job) -> PlanContext {
    PlanContext {
        repository: job.repository.clone(),
        // Plan workers run pull requests; apply workers everything of a push.
        event: match job.role {
            ExecutorRole::Plan => "pull-request",
            ExecutorRole::Apply => "push",
        }
        .to_owned(),
        unit: job.unit.clone(),
        account: job.account.clone(),
        action: job.action.to_string(),
        commit: job.checkout_commit().to_owned(),
    }
}

fn refused(message: String) -> (JobStatus, String) {
    (
        JobStatus::Refused,
        format!("refused: {message}; nothing ran"),
    )
}

/// Why preparing a job did not lead to its steps.
enum Interrupted {
    Stopped(Stop),
    Failed(JobStatus, String),
}

/// A job ready to run: checked out, its unit resolved, its credentials obtained.
struct Prepared {
    dir: JobDir,
    unit_dir: PathBuf,
    tool: runner::Tool,
    credentials: credentials::JobCredentials,
}

/// A destroy is for a unit the deploy branch deleted: the unit must be gone at the job's
/// commit and at the branch's tip now. The event that asked for it is the orchestrator's
/// word, and the orchestrator runs where collaborators change code: a range given backwards
/// (a later commit as its base), or a forged deletion, names a live unit as deleted, and both
/// commits are on the branch.
async fn verify_deleted(
    workspace: &Workspace,
    job: &Job,
    repository: &config::Repository,
    tip: &str,
    output: &mut JobOutput,
) -> Result<(), Interrupted> {
    for (commit, which) in [(job.commit.as_str(), "the run's commit"), (tip, "the tip")] {
        let files = workspace
            .unit_files(&repository.name, commit, &job.unit)
            .await
            .map_err(|err| {
                Interrupted::Failed(
                    JobStatus::Failed,
                    format!("cannot verify the unit was deleted: {err}"),
                )
            })?;
        if !files.is_empty() {
            let (status, message) = refused(format!(
                "{} is not deleted: {which} {commit} of branch {:?} has its {}; only a unit \
                 the deploy branch deleted may be destroyed",
                job.unit,
                repository.deploy_branch,
                files.join(", ")
            ));
            return Err(Interrupted::Failed(status, message));
        }
    }
    output.push_str(&format!(
        "pipelines: verified: {} is deleted at {} and at the tip {tip}\n",
        job.unit, job.commit
    ));
    Ok(())
}

async fn prepare(
    settings: &WorkerSettings,
    workspace: &Workspace,
    job: &Job,
    repository: &config::Repository,
    output: &mut JobOutput,
) -> Result<Prepared, Interrupted> {
    let failed = |message: String| Interrupted::Failed(JobStatus::Failed, message);
    let mut commits = vec![job.commit.as_str()];
    commits.extend(job.source_commit.as_deref());
    if settings.role == ExecutorRole::Apply || job.action == Action::DriftPlan {
        // An apply worker runs reviewed code only, whatever the job says it is: every commit
        // it checks out must be on the deploy branch, as the canonical remote says now. A
        // drift check is about the deploy branch too: checked at another commit, it could
        // call drifted infrastructure in sync.
        let verified = workspace
            .verify_on_branch(
                &repository.name,
                &repository.url,
                &repository.deploy_branch,
                &commits,
            )
            .instrument(tracing::info_span!("verify", branch = %repository.deploy_branch))
            .await
            .map_err(|err| failed(format!("cannot verify the commit: {err}")))?;
        let tip = verified.map_err(|reason| {
            let (status, message) = refused(reason);
            Interrupted::Failed(status, message)
        })?;
        output.push_str(&format!(
            "pipelines: verified: {} on branch {:?} of {}\n",
            commits.join(", "),
            repository.deploy_branch,
            repository.name
        ));
        if job.action == Action::Destroy {
            verify_deleted(workspace, job, repository, &tip, output).await?;
        }
    }

    let commit = job.checkout_commit();
    let dir = workspace
        .checkout(&repository.name, &repository.url, commit, job.job_id)
        .instrument(tracing::info_span!("checkout", commit))
        .await
        .map_err(|err| failed(format!("checkout failed: {err}")))?;
    let unit_dir = checks::resolve_unit(&dir.src, &job.unit, commit).map_err(|reason| {
        let (status, message) = refused(reason);
        Interrupted::Failed(status, message)
    })?;
    let tf_binary = repository
        .tf_binary
        .as_deref()
        .or(settings.tf_binary.as_deref());
    let tool = runner::tool_for(
        &unit_dir,
        tf_binary,
        repository.terragrunt_binary.as_deref(),
    )
    .map_err(failed)?;

    let credentials = match &settings.credentials {
        Some(entry) => {
            let session = format!(
                "pipelines-{}-{}",
                &job.job_id.simple().to_string()[..12],
                job.attempt
            );
            let files = credentials::FileTarget {
                dir: dir.credentials.clone(),
                owner: settings.tools.user,
            };
            let obtained =
                credentials::obtain(entry, &session, settings.credentials_timeout, &files)
                    .instrument(tracing::info_span!("credentials", name = %entry.name))
                    .await
                    .map_err(|err| failed(err.to_string()))?;
            output.add_secrets(obtained.secrets());
            output.push_str(&format!(
                "pipelines: credentials {:?} ({} variable(s))\n",
                entry.name,
                obtained.env.len()
            ));
            obtained
        }
        None => credentials::JobCredentials::default(),
    };
    Ok(Prepared {
        dir,
        unit_dir,
        tool,
        credentials,
    })
}

/// The whole environment of a tool, built from nothing: the worker's `pass_env` and
/// `tool_env` settings, the job's credentials, and what the worker sets itself, in that order
/// of precedence. Pure.
pub(crate) fn tool_env(
    tools: &ToolSettings,
    dir: &JobDir,
    credentials: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut env = tools.env.clone();
    env.extend(credentials.clone());
    let path = |path: &std::path::Path| path.to_string_lossy().into_owned();
    for (name, value) in [
        ("PATH", tools.path.clone()),
        ("HOME", path(&dir.home)),
        ("TMPDIR", path(&dir.tmp)),
        ("TF_IN_AUTOMATION", "1".to_owned()),
        ("TF_INPUT", "0".to_owned()),
        ("CHECKPOINT_DISABLE", "1".to_owned()),
    ] {
        env.insert(name.to_owned(), value);
    }
    env.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use run_logs::RunLogs;

    use super::*;

    #[test]
    fn tools_get_an_environment_built_from_nothing_with_the_worker_settings_last() {
        let tools = ToolSettings {
            user: None,
            env: BTreeMap::from([
                ("HTTPS_PROXY".to_owned(), "http://proxy:3128".to_owned()),
                ("HOME".to_owned(), "/root".to_owned()),
                ("AWS_REGION".to_owned(), "eu-west-1".to_owned()),
            ]),
            path: "/usr/bin:/bin".to_owned(),
        };
        let dir = JobDir::at(std::path::Path::new("/w/jobs/1"));
        let credentials = BTreeMap::from([
            ("AWS_REGION".to_owned(), "us-east-1".to_owned()),
            ("TF_IN_AUTOMATION".to_owned(), "0".to_owned()),
        ]);
        let env: BTreeMap<_, _> = tool_env(&tools, &dir, &credentials).into_iter().collect();
        let get = |name: &str| env.get(name).map(String::as_str);
        assert_eq!(get("HTTPS_PROXY"), Some("http://proxy:3128"));
        assert_eq!(
            get("AWS_REGION"),
            Some("us-east-1"),
            "credentials over settings"
        );
        assert_eq!(
            get("HOME"),
            Some("/w/jobs/1/home"),
            "the worker's own over both"
        );
        assert_eq!(get("TMPDIR"), Some("/w/jobs/1/tmp"));
        assert_eq!(get("TF_IN_AUTOMATION"), Some("1"));
        assert_eq!(get("PATH"), Some("/usr/bin:/bin"));
        assert_eq!(env.len(), 8, "nothing else: {env:?}");
    }

    #[test]
    fn stop_messages_say_what_happened() {
        assert_eq!(
            stop_message(&Stop::Timeout(std::time::Duration::from_secs(5400))),
            "the job timed out after 1 h 30 min and was stopped"
        );
        assert_eq!(humane(3), "3 s");
        assert_eq!(humane(600), "10 min");
        assert_eq!(humane(7200), "2 h");
        assert_eq!(
            stop_message(&Stop::Cancel("cancelled by ops: wrong".into())),
            "the job was stopped: cancelled by ops: wrong"
        );
        assert_eq!(
            stop_message(&Stop::Unclean { left: 2 }),
            "2 process(es) of the tool user outlived the kill; the job goes back to the queue and this worker stops"
        );
    }

    fn age(path: &Path, days: u64) {
        let when = std::time::SystemTime::now() - std::time::Duration::from_secs(days * 86_400);
        std::fs::File::open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    #[test]
    fn runs_logs_not_written_within_the_retention_are_pruned_and_the_rest_kept() {
        let logs = tempfile::tempdir().unwrap();
        let run = |name: &str, days: &[u64]| {
            let dir = logs.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            for (n, days) in days.iter().enumerate() {
                let log = dir.join(format!("job-{n}.log"));
                std::fs::write(&log, "output\n").unwrap();
                age(&log, *days);
            }
            age(&dir, days.iter().copied().max().unwrap_or(0));
        };
        let (old, retried, new) = (
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
            uuid::Uuid::new_v4().to_string(),
        );
        run(&old, &[40, 35]);
        // One attempt old, the other recent: the run is still being written.
        run(&retried, &[40, 1]);
        run(&new, &[2]);
        // Not a run's: an old directory an operator keeps there, and a stray file.
        run("archive", &[90]);
        std::fs::write(logs.path().join("stray"), "").unwrap();
        age(&logs.path().join("stray"), 90);
        let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
        let prune_logs = |dir: &Path, before| {
            RunLogs::new(dir, run_logs::Budget::UNLIMITED).prune_older_than(before)
        };
        assert_eq!(prune_logs(logs.path(), month_ago), 1);
        let mut left: Vec<String> = std::fs::read_dir(logs.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mut kept = vec![retried, new, "archive".to_owned(), "stray".to_owned()];
        kept.sort();
        assert_eq!(left, kept);
        assert_eq!(prune_logs(&logs.path().join("missing"), month_ago), 0);
    }
}
