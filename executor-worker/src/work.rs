//! What a claimed job does: check the job against the worker's own view of the world (known
//! repository, plain commit ids, and for applies and destroys a commit on the deploy branch),
//! obtain its credentials, check out its commit, run the tool's steps, clean up. Every problem
//! becomes an outcome whose output says what went wrong; nothing here fails the worker.

use std::path::PathBuf;
use std::time::Instant;

use proto_types::{Action, Job, JobOutcome, JobStatus};
use tokio::sync::watch;
use tracing::Instrument;

use crate::WorkerSettings;
use crate::credentials;
use crate::output::JobOutput;
use crate::runner::{self, Launch, Stop};
use crate::workspace::Workspace;

/// How a claimed job ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) outcome: JobOutcome,
    /// Set when it was stopped rather than ending by itself.
    pub(crate) stopped: Option<Stop>,
}

/// Where the whole log of an attempt goes.
fn log_path(settings: &WorkerSettings, job: &Job) -> PathBuf {
    settings
        .log_dir
        .join(job.run_id.to_string())
        .join(format!("{}-{}.log", job.job_id, job.attempt))
}

pub(crate) async fn run(
    settings: &WorkerSettings,
    workspace: &Workspace,
    job: &Job,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Finished {
    let started = Instant::now();
    // A no-op job runs nothing, so it has no log worth a file.
    let log = (job.action != Action::Noop).then(|| log_path(settings, job));
    let mut output = JobOutput::new(Vec::new(), log.as_deref());
    output.push_str(&format!(
        "pipelines: {} {} ({} at {}), attempt {}, on {}\n",
        job.action,
        job.unit,
        job.repository,
        job.checkout_commit(),
        job.attempt,
        settings.name
    ));
    let (status, exit_code, resource_changes, stopped) =
        match prepare_and_run(settings, workspace, job, &mut output, &mut stop).await {
            Ok(steps) => {
                let status = match &steps.stopped {
                    Some(reason) => {
                        output.push_str(&format!("Error: {}\n", stop_message(reason)));
                        match reason {
                            Stop::Cancel(_) => JobStatus::Cancelled,
                            Stop::Timeout(_) | Stop::Drain => JobStatus::Failed,
                        }
                    }
                    None => steps.status,
                };
                (
                    status,
                    steps.exit_code,
                    steps.resource_changes,
                    steps.stopped,
                )
            }
            Err((status, message)) => {
                output.push_str(&format!("Error: {message}\n"));
                (status, None, None, None)
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
        },
        stopped,
    }
}

fn stop_message(reason: &Stop) -> String {
    match reason {
        Stop::Timeout(limit) => format!(
            "the job timed out after {} and was stopped",
            humane(limit.as_secs())
        ),
        Stop::Cancel(why) => format!("the job was stopped: {why}"),
        Stop::Drain => "the worker shut down; the job goes back to the queue".to_owned(),
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
/// could run.
async fn prepare_and_run(
    settings: &WorkerSettings,
    workspace: &Workspace,
    job: &Job,
    output: &mut JobOutput,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Result<runner::StepsOutcome, (JobStatus, String)> {
    let failed = |message: String| (JobStatus::Failed, message);
    let refused = |message: String| {
        (
            JobStatus::Refused,
            format!("refused: {message}; nothing ran"),
        )
    };
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
    let mut commits = vec![job.commit.as_str()];
    commits.extend(job.source_commit.as_deref());
    if let Some(bad) = commits.iter().find(|c| !is_commit_id(c)) {
        return Err(refused(format!("{bad:?} is not a full commit id")));
    }
    if job.action == Action::Noop {
        // Everything up to here, and the claim, events and run state around it, is real.
        output.push_str("pipelines: noop: nothing checked out, no tool run\n");
        return Ok(runner::StepsOutcome {
            status: JobStatus::Succeeded,
            exit_code: None,
            resource_changes: None,
            stopped: None,
        });
    }
    if job.action.mutates() {
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
        verified.map_err(refused)?;
        output.push_str(&format!(
            "pipelines: verified: {} on branch {:?} of {}\n",
            commits.join(", "),
            repository.deploy_branch,
            repository.name
        ));
    }

    // The read-only identity for plans; the write identity only for applies and destroys.
    let entry = if job.action.mutates() {
        settings.apply_credentials.as_ref()
    } else {
        settings.plan_credentials.as_ref()
    };
    let credentials = match entry {
        Some(entry) => {
            let session = format!(
                "pipelines-{}-{}",
                &job.job_id.simple().to_string()[..12],
                job.attempt
            );
            let obtained = credentials::obtain(entry, &session)
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

    let commit = job.checkout_commit();
    let dir = workspace
        .checkout(&repository.name, &repository.url, commit, job.job_id)
        .instrument(tracing::info_span!("checkout", commit))
        .await
        .map_err(|err| failed(format!("checkout failed: {err}")))?;
    let unit_dir = dir.join(&job.unit);
    let result = if unit_dir.is_dir() {
        let tf_binary = repository
            .tf_binary
            .as_deref()
            .or(settings.tf_binary.as_deref());
        match runner::tool_for(
            &unit_dir,
            tf_binary,
            repository.terragrunt_binary.as_deref(),
        ) {
            Ok(tool) => {
                let launch = Launch {
                    supervisor: settings.supervisor.clone(),
                    grace: settings.stop_grace,
                    env: credentials.env.into_iter().collect(),
                };
                Ok(
                    runner::execute(&tool, job.action, &unit_dir, output, &launch, stop)
                        .instrument(tracing::info_span!("run_tool", tool = ?tool))
                        .await,
                )
            }
            Err(reason) => Err(failed(reason)),
        }
    } else {
        Err(failed(format!(
            "unit directory {} does not exist at commit {commit}",
            job.unit
        )))
    };
    workspace.remove(&dir).await;
    result
}

/// A full SHA-1 or SHA-256 commit id, and so never an option or a ref name to git.
fn is_commit_id(text: &str) -> bool {
    matches!(text.len(), 40 | 64) && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_full_hex_ids_are_commits() {
        assert!(is_commit_id(&"a".repeat(40)));
        assert!(is_commit_id(&"0".repeat(64)));
        assert!(!is_commit_id("--upload-pack=touch /tmp/pwned"));
        assert!(!is_commit_id("main"));
        assert!(!is_commit_id(&"g".repeat(40)));
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
    }
}
