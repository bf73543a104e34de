//! Running one job's IaC steps in a unit directory: `init`, `plan -out`, `show -json`, and
//! `apply` of the saved plan for applies and destroys.
//!
//! The step list is pure ([`steps`]); [`execute`] is the process edge. This module is the only
//! place in the workspace that starts terraform, tofu or terragrunt: through the supervisor
//! ([`crate::supervisor`]) in a deployed worker, so that no tool outlives its worker. Stops
//! (timeout, cancellation, drain) ask the tool to stop, then kill its whole process group.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use proto_types::{Action, DriftFindings, JobStatus, PolicyReport, ResourceCounts};
use rustix::process::{Pid, Signal};
use tokio::process::Command;
use tokio::sync::watch;
use tracing::Instrument;

use crate::output::JobOutput;
use crate::pipe;
use crate::plan_summary::{self, PlanSummary, plan_summary_from};
use crate::policy::{PlanContext, Policies};

/// How long to wait for a state lock held by someone else (a previous attempt, a human)
/// before failing.
const LOCK_TIMEOUT: &str = "-lock-timeout=5m";
const PLAN_FILE: &str = "tfplan";

/// Which program runs a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tool {
    /// `terragrunt`, by name or path.
    Terragrunt(String),
    /// `terraform` or `tofu`, by name or path.
    Terraform(String),
}

impl Tool {
    fn program(&self) -> &str {
        match self {
            Tool::Terragrunt(binary) | Tool::Terraform(binary) => binary,
        }
    }
}

/// Picks the tool for a checked-out unit directory.
pub(crate) fn tool_for(
    unit_dir: &Path,
    tf_binary: Option<&str>,
    terragrunt_binary: Option<&str>,
) -> Result<Tool, String> {
    if unit_dir.join("terragrunt.hcl").is_file() {
        return Ok(Tool::Terragrunt(
            terragrunt_binary.unwrap_or("terragrunt").to_owned(),
        ));
    }
    if let Some(binary) = tf_binary {
        return Ok(Tool::Terraform(binary.to_owned()));
    }
    ["tofu", "terraform"]
        .into_iter()
        .find(|name| on_path(name).is_some())
        .map(|name| Tool::Terraform(name.to_owned()))
        .ok_or_else(|| "neither tofu nor terraform is on PATH (set executor.tf_binary)".to_owned())
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    })
}

/// One invocation of the tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) args: Vec<&'static str>,
    /// Exit codes that mean success (`plan -detailed-exitcode` exits 2 when there are changes).
    pub(crate) ok_codes: &'static [i32],
    /// Stdout is data (the JSON plan), not output for people.
    pub(crate) captures_stdout: bool,
}

/// The steps of an action. Pure.
pub(crate) fn steps(action: Action) -> Vec<Step> {
    let mut plan = vec![
        "plan",
        "-input=false",
        "-no-color",
        // Only a job that applies writes state, so only its plan takes the lock. Any other
        // plan (a pull request's, a drift check) never waits for an apply of its unit, and an
        // apply never waits for it: a pull request's code could otherwise kill its terraform
        // while it holds the lock and leave it behind for the next apply, and the plan
        // role's credentials need only read the lock table.
        if action.mutates() {
            LOCK_TIMEOUT
        } else {
            "-lock=false"
        },
        "-detailed-exitcode",
    ];
    if action.is_destroy() {
        plan.push("-destroy");
    }
    plan.push("-out=tfplan");
    let mut steps = vec![
        Step {
            args: vec!["init", "-input=false", "-no-color"],
            ok_codes: &[0],
            captures_stdout: false,
        },
        Step {
            args: plan,
            ok_codes: &[0, 2],
            captures_stdout: false,
        },
        Step {
            args: vec!["show", "-json", "-no-color", PLAN_FILE],
            ok_codes: &[0],
            captures_stdout: true,
        },
    ];
    if action.mutates() {
        steps.push(Step {
            args: vec![
                "apply",
                "-input=false",
                "-no-color",
                LOCK_TIMEOUT,
                PLAN_FILE,
            ],
            ok_codes: &[0],
            captures_stdout: false,
        });
    }
    steps
}

/// Why a running job must stop before it ends by itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// It outlived the account's job timeout.
    Timeout(Duration),
    /// The dispatcher said so (an operator cancelled the run).
    Cancel(String),
    /// The worker is shutting down and the drain period is over.
    Drain,
    /// Before the job started, processes of the tool user outlived the kill: the job must not
    /// meet them, and the worker stops.
    Unclean { left: usize },
}

/// How tools are started and stopped.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    /// The `pipelines` binary, to run each tool as `pipelines __supervise <worker pid> TOOL
    /// ARGS...`: the supervisor kills the tool's whole process group when the worker dies,
    /// even by SIGKILL. `None` (library tests): the tool runs in its own process group, which
    /// timeouts and cancellations still kill, but which outlives a killed worker.
    pub(crate) supervisor: Option<PathBuf>,
    /// After asking a tool to stop, how long until its process group is killed.
    pub(crate) grace: Duration,
    /// The tool's whole environment (see [`crate::work::tool_env`]): nothing of the
    /// worker's own environment is inherited.
    pub(crate) env: Vec<(String, String)>,
    /// Run the tool as this user (the supervisor, the worker's, switches to it); `None`: as
    /// the worker.
    pub(crate) user: Option<config::ToolUser>,
}

/// What running the steps produced.
#[derive(Debug)]
pub(crate) struct StepsOutcome {
    pub(crate) status: JobStatus,
    pub(crate) exit_code: Option<i32>,
    pub(crate) resource_changes: Option<ResourceCounts>,
    /// Set when the steps were stopped rather than ending by themselves.
    pub(crate) stopped: Option<Stop>,
    /// The policy sets' verdict on the plan, when any governs the unit.
    pub(crate) policy: Option<PolicyReport>,
    /// A drift check's finding, once it planned.
    pub(crate) drift: Option<DriftFindings>,
}

/// The policy sets to hold the plan against, between `show -json` and `apply`.
#[derive(Debug, Clone)]
pub(crate) struct PolicyCheck {
    pub(crate) policies: Arc<Policies>,
    pub(crate) context: PlanContext,
    /// An approver's override of the overridable denies (`who: why`), on an apply worker.
    pub(crate) override_by: Option<String>,
}

/// How one process ended.
enum Ended {
    Exited(Option<i32>),
    Stopped(Stop),
}

/// Runs the steps of `action` in `unit_dir`, stopping at the first failure or when `stop`
/// says so.
pub(crate) async fn execute(
    tool: &Tool,
    action: Action,
    unit_dir: &Path,
    output: &mut JobOutput,
    launch: &Launch,
    policy: Option<PolicyCheck>,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> StepsOutcome {
    let mut outcome = StepsOutcome {
        status: JobStatus::Succeeded,
        exit_code: Some(0),
        resource_changes: None,
        stopped: None,
        policy: None,
        drift: None,
    };
    // `plan -detailed-exitcode`: 0 no changes, 2 changes (a drift check's answer).
    let mut plan_exit = None;
    // With a policy check, the plan JSON is kept (up to one byte past the limit, which the
    // check then refuses) instead of only counted as it streams by.
    let keep_plan = policy
        .as_ref()
        .map(|check| check.policies.max_plan_bytes().saturating_add(1));
    for step in steps(action) {
        if let Some(reason) = stop.borrow().clone() {
            outcome.stopped = Some(reason);
            outcome.status = JobStatus::Failed;
            outcome.exit_code = None;
            return outcome;
        }
        output.push_str(&format!("$ {} {}\n", tool.program(), step.args.join(" ")));
        let mut command = command(tool.program(), &step.args, unit_dir, launch);
        let span = tracing::info_span!("step", step = step.args[0], program = tool.program());
        let result = if step.captures_stdout {
            run_capturing(
                &mut command,
                tool.program(),
                output,
                launch,
                keep_plan,
                stop,
            )
            .instrument(span)
            .await
        } else {
            run_merged(&mut command, tool.program(), output, launch, stop)
                .instrument(span)
                .await
                .map(|ended| (ended, None, None))
        };
        let (ended, counts, plan_json) = match result {
            Ok(result) => result,
            Err(err) => {
                output.push_str(&format!("cannot run {}: {err}\n", tool.program()));
                return StepsOutcome {
                    status: JobStatus::Failed,
                    exit_code: None,
                    resource_changes: None,
                    stopped: None,
                    policy: None,
                    drift: None,
                };
            }
        };
        let code = match ended {
            Ended::Exited(code) => code,
            Ended::Stopped(reason) => {
                outcome.status = JobStatus::Failed;
                outcome.exit_code = None;
                outcome.stopped = Some(reason);
                return outcome;
            }
        };
        if !code.is_some_and(|c| step.ok_codes.contains(&c)) {
            outcome.status = JobStatus::Failed;
            outcome.exit_code = code;
            return outcome;
        }
        if step.args[0] == "plan" {
            plan_exit = code;
        }
        match counts {
            Some(Ok(summary)) => {
                outcome.resource_changes = Some(summary.counts);
                if action == Action::DriftPlan {
                    let more = summary.changed.saturating_sub(summary.listed.len());
                    outcome.drift = Some(DriftFindings {
                        drifted: plan_exit == Some(2),
                        digest: summary.digest,
                        resources: summary
                            .listed
                            .iter()
                            .map(|change| output.redact(change))
                            .collect(),
                        more: u32::try_from(more).unwrap_or(u32::MAX),
                    });
                    // The answer is the plan's exit code: 2 says the unit drifted.
                    outcome.exit_code = plan_exit;
                }
            }
            Some(Err(err)) => output.push_str(&format!("cannot read the JSON plan: {err}\n")),
            None => {}
        }
        if let (Some(check), Some(plan_json)) = (&policy, plan_json) {
            let report = check_policies(check, plan_json, output).await;
            let blocks = report.blocks();
            outcome.policy = Some(report);
            if blocks {
                output.push_str(if action.mutates() {
                    "Error: the policy checks did not pass: the plan is not applied\n"
                } else {
                    "Error: the policy checks did not pass\n"
                });
                outcome.status = JobStatus::Failed;
                outcome.exit_code = None;
                return outcome;
            }
        }
    }
    if action == Action::DriftPlan && outcome.status == JobStatus::Succeeded {
        // The answer is the plan's exit code (2: drifted), whether or not its JSON could be
        // read for the details.
        outcome.exit_code = plan_exit;
        let drift = outcome.drift.get_or_insert_with(DriftFindings::default);
        drift.drifted = plan_exit == Some(2);
    }
    outcome
}

/// Evaluates the policy sets off the async threads (an evaluation may take its whole time
/// budget), and writes each set's verdict into the job's output.
async fn check_policies(
    check: &PolicyCheck,
    plan_json: Vec<u8>,
    output: &mut JobOutput,
) -> PolicyReport {
    let policies = Arc::clone(&check.policies);
    let context = check.context.clone();
    let override_by = check.override_by.clone();
    let report = tokio::task::spawn_blocking(move || {
        let mut report = policies.evaluate(&plan_json, &context);
        if let Some(by) = &override_by {
            crate::policy::override_denies(&mut report, by);
        }
        report
    })
    .await
    .unwrap_or_else(|err| PolicyReport {
        sets: vec![proto_types::PolicySetResult {
            name: "policies".into(),
            enforced: true,
            rules: 0,
            denies: Vec::new(),
            warnings: Vec::new(),
            error: Some(format!("the evaluation did not finish: {err}")),
            overridable: false,
            overridden: None,
        }],
    });
    output.push_str(&crate::policy::render_report(&report));
    report
}

/// The command for one step: under the supervisor when there is one, else in a process group
/// of its own.
fn command(program: &str, args: &[&str], dir: &Path, launch: &Launch) -> Command {
    let mut command = match &launch.supervisor {
        Some(supervisor) => {
            let mut command = Command::new(supervisor);
            command.arg(SUPERVISE_COMMAND);
            if let Some(user) = launch.user {
                command
                    .arg("--as-user")
                    .arg(format!("{}:{}", user.uid, user.gid));
            }
            command.arg(std::process::id().to_string()).arg(program);
            command
        }
        None => {
            let mut command = Command::new(program);
            command.process_group(0);
            if let Some(user) = launch.user {
                // Supplementary groups are dropped with the switch: std drops them when the
                // worker is root, and a worker that is not root and has any is refused at start.
                command.uid(user.uid).gid(user.gid);
            }
            command
        }
    };
    command
        .args(args)
        .current_dir(dir)
        // Built from nothing: a pull request's provider must not find the worker's variables.
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        // A supervisor must outlive an abandoned step long enough to kill the tool's group
        // (see AbandonGuard); a bare tool is killed with its group.
        .kill_on_drop(launch.supervisor.is_none());
    command
}

/// The hidden subcommand that runs a tool under [`crate::supervisor`].
pub const SUPERVISE_COMMAND: &str = "__supervise";
/// The hidden subcommand that kills every process of the user it runs as
/// ([`crate::supervisor::kill_all_of_user`]).
pub(crate) const KILL_ALL_COMMAND: &str = "__kill-all";

/// Runs with stdout and stderr merged into one pipe, so the output keeps its real order. When
/// the tool ended, what it left running is killed ([`end_of_step`]) and the pipe is listened to
/// for at most [`pipe::OUTPUT_DRAIN`] more (see [`crate::pipe`]).
async fn run_merged(
    command: &mut Command,
    program: &str,
    output: &mut JobOutput,
    launch: &Launch,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> std::io::Result<Ended> {
    let (reader, writer) = std::io::pipe()?;
    let (mut reader, feeding) = pipe::feed(reader)?;
    command.stdout(writer.try_clone()?).stderr(writer);
    let mut child = command.spawn()?;
    // Drop our copies of the pipe's write end, or reading would never see end-of-file.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut collected = std::mem::replace(output, JobOutput::new(Vec::new(), None));
    let reading = tokio::task::spawn_blocking(move || {
        let mut buffer = [0_u8; 8192];
        loop {
            match reader.read(&mut buffer) {
                Ok(0) | Err(_) => return collected,
                Ok(n) => collected.push(&buffer[..n]),
            }
        }
    });
    let pid = child.id();
    let mut guard = AbandonGuard {
        pid,
        supervised: launch.supervisor.is_some(),
        armed: true,
    };
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status?.code()),
        reason = stopped(stop) => {
            // Ask the tool to stop (terraform then releases its state lock), then insist.
            signal_tool(pid, launch.supervisor.is_some(), false);
            if tokio::time::timeout(launch.grace, child.wait()).await.is_err() {
                signal_tool(pid, launch.supervisor.is_some(), true);
                if tokio::time::timeout(KILL_WAIT, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
            Ended::Stopped(reason)
        }
    };
    guard.armed = false;
    let killed = end_of_step(launch).await;
    let whole = feeding.drained().await;
    *output = reading.await.map_err(std::io::Error::other)?;
    say_what_was_left(output, program, killed, whole);
    Ok(ended)
}

/// After a step's tool ended, with a tool user: kills what it left running, and how many. No
/// process of a step may see the next: one left by `plan` could rewrite the saved plan before
/// `show` reads it, or hold the step's output. (Without a tool user the worker cannot tell a
/// tool's processes from its own; the output drain still bounds the wait.)
async fn end_of_step(launch: &Launch) -> Killed {
    match launch.user {
        Some(user) => kill_all_of(user, launch.supervisor.clone()).await,
        None => Killed::default(),
    }
}

/// [`kill_processes_of`], off the async threads.
pub(crate) async fn kill_all_of(user: config::ToolUser, pipelines: Option<PathBuf>) -> Killed {
    tokio::task::spawn_blocking(move || kill_processes_of(user, pipelines.as_deref()))
        .await
        .unwrap_or_default()
}

fn say_what_was_left(output: &mut JobOutput, program: &str, killed: Killed, whole: bool) {
    output.push_str(&killed.note(program));
    if !whole {
        output.push_str(&pipe::given_up_note(program));
    }
}

/// How long a killed process group gets to disappear before the supervisor itself is killed.
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(10);

/// What `show -json` gave: how it ended, the resource counts, and the plan's first
/// `keep` bytes when asked to keep them.
type Captured = (Ended, Option<Result<PlanSummary, String>>, Option<Vec<u8>>);

/// Runs with stdout read as a JSON plan while it streams (a plan of a big unit is hundreds of
/// megabytes: only its summary is kept ([`crate::plan_summary`]), unless a policy check needs
/// the first `keep` bytes) and stderr appended to the output. Like [`run_merged`], both pipes are
/// listened to for at most [`pipe::OUTPUT_DRAIN`] after the tool ended.
async fn run_capturing(
    command: &mut Command,
    program: &str,
    output: &mut JobOutput,
    launch: &Launch,
    keep: Option<u64>,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> std::io::Result<Captured> {
    let (reader, writer) = std::io::pipe()?;
    let (stderr_reader, stderr_writer) = std::io::pipe()?;
    let (mut reader, feeding) = pipe::feed(reader)?;
    let (mut stderr, stderr_feeding) = pipe::feed(stderr_reader)?;
    command.stdout(writer).stderr(stderr_writer);
    let mut child = command.spawn()?;
    // Drop our copies of the write ends, or the readers would never see end-of-file.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let parsing = tokio::task::spawn_blocking(move || {
        let kept = keep.map(|limit| {
            let mut kept = Vec::new();
            let _ = (&mut reader).take(limit).read_to_end(&mut kept);
            kept
        });
        // The counts stream over the kept bytes and whatever is left, so a plan too big to
        // keep is still counted.
        let head = kept.as_deref().unwrap_or_default();
        // Cut: serde_json quotes a value of the wrong type whole (up to a held string's 1 MiB).
        let counts = plan_summary_from(head.chain(&mut reader))
            .map_err(|err| plan_summary::kept_error(&err.to_string()));
        // Whatever follows (nothing, from a well-behaved tool) is drained, not kept.
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
        (counts, kept)
    });
    let collecting = tokio::task::spawn_blocking(move || {
        // Bounded: stderr of `show` is a few lines, never a plan; the rest is drained.
        let mut bytes = Vec::new();
        let _ = (&mut stderr).take(1 << 20).read_to_end(&mut bytes);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        bytes
    });
    // A stop (or abandoning the step) kills `show` at once, through the guard, as this
    // returns: it has no state lock to release.
    let mut guard = AbandonGuard {
        pid: child.id(),
        supervised: launch.supervisor.is_some(),
        armed: true,
    };
    let status = tokio::select! {
        status = child.wait() => status?,
        reason = stopped(stop) => return Ok((Ended::Stopped(reason), None, None)),
    };
    guard.armed = false;
    let killed = end_of_step(launch).await;
    let (whole, whole_stderr) = tokio::join!(feeding.drained(), stderr_feeding.drained());
    output.push(&collecting.await.map_err(std::io::Error::other)?);
    let (counts, kept) = parsing.await.map_err(std::io::Error::other)?;
    say_what_was_left(output, program, killed, whole && whole_stderr);
    Ok((Ended::Exited(status.code()), Some(counts), kept))
}

/// Kills every process of `user`: what a job's tools left running (a daemon a provider
/// forked off, escaping its process group) must not see the next job. Returns how many were
/// alive. Blocking: call it off the async threads.
///
/// First `pipelines __kill-all` (of the binary `pipelines`) becomes `user` and kills all its
/// processes at once: a process that forks and exits over and over has a new pid each time
/// a pass over `/proc` looks, and passes alone never catch it
/// ([`crate::supervisor::kill_all_of_user`]). Then passes over `/proc` repeat until one
/// finds nothing of `user` alive (a killed process is still running until it has exited), or
/// [`KILL_DEADLINE`] passes, killing what they find. Without the binary (library tests) the
/// passes alone: a process sent SIGKILL cannot fork any more, so each leaves only what was
/// forked while it ran; the supervisor's `RLIMIT_NPROC` ([`crate::supervisor::TOOL_TASKS`])
/// bounds how many that can be.
pub(crate) fn kill_processes_of(user: config::ToolUser, pipelines: Option<&Path>) -> Killed {
    let uid = user.uid;
    let deadline = std::time::Instant::now() + KILL_DEADLINE;
    // Counted before: what the one call kills, the passes never see alive.
    let mut killed: std::collections::HashSet<i32> = processes_of(uid)
        .iter()
        .filter(|process| process.alive)
        .map(|process| process.pid)
        .collect();
    if let Some(pipelines) = pipelines {
        kill_all_as(user, pipelines);
    }
    let mut left = 0;
    for pass in 0.. {
        let found = processes_of(uid);
        left = found.iter().filter(|process| process.alive).count();
        if left == 0 {
            break;
        }
        // Zombies too: a process whose first thread exited while others run looks like one.
        for process in &found {
            if kill_if_still_of(uid, process.pid) && process.alive {
                killed.insert(process.pid);
            }
        }
        if std::time::Instant::now() > deadline {
            left = processes_of(uid)
                .iter()
                .filter(|process| process.alive)
                .count();
            break;
        }
        // What was killed takes a moment to exit: look again at once, then less eagerly.
        if pass >= 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Killed {
        killed: killed.len(),
        left,
    }
}

/// Runs `pipelines __kill-all --as-user UID:GID`, with nothing of the worker's environment,
/// up to [`KILL_ALL_ATTEMPTS`] times until it exits 0. Once it has become the tool user, a
/// process of that user may stop or kill it before its own kill: so each attempt has
/// [`KILL_ALL_WAIT`], after which the worker kills it. A failure is logged; the passes over
/// `/proc` that follow still kill what they find, and count what is left.
fn kill_all_as(user: config::ToolUser, pipelines: &Path) {
    for attempt in 1..=KILL_ALL_ATTEMPTS {
        let started = std::process::Command::new(pipelines)
            .arg(KILL_ALL_COMMAND)
            .arg("--as-user")
            .arg(format!("{}:{}", user.uid, user.gid))
            .env_clear()
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let mut helper = match started {
            Ok(helper) => helper,
            Err(err) => {
                tracing::warn!(error = %err, binary = %pipelines.display(), "Cannot run the tool user's kill; killing its processes one by one.");
                return;
            }
        };
        let deadline = std::time::Instant::now() + KILL_ALL_WAIT;
        let status = loop {
            match helper.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                _ => {
                    let _ = helper.kill();
                    let _ = helper.wait();
                    break None;
                }
            }
        };
        match status {
            Some(status) if status.success() => return,
            status => tracing::warn!(
                attempt,
                status = ?status,
                "The tool user's kill did not finish (stopped or killed by a process of that user?)."
            ),
        }
    }
}

/// How many times [`kill_all_as`] tries.
const KILL_ALL_ATTEMPTS: u32 = 3;
/// How long one attempt of [`kill_all_as`] may take: it makes a handful of system calls.
const KILL_ALL_WAIT: Duration = Duration::from_secs(2);

/// Sends SIGKILL to `pid` if it is still a process of `uid`; whether it was sent. Through a
/// pidfd opened before the check: a pid that was freed and reused since the pass over `/proc`
/// (a fork bomb churns through them) then names a process that has gone, never someone
/// else's.
fn kill_if_still_of(uid: u32, pid: i32) -> bool {
    let Some(id) = Pid::from_raw(pid) else {
        return false;
    };
    let pidfd = match rustix::process::pidfd_open(id, rustix::process::PidfdFlags::empty()) {
        Ok(pidfd) => Some(pidfd),
        // It has gone (and been reaped).
        Err(rustix::io::Errno::SRCH) => return false,
        // No pidfd here (a kernel before 5.3, a seccomp profile that refuses it): the pid, as
        // found, once more checked.
        Err(_) => None,
    };
    if status_of(pid).is_none_or(|status| status.uid != uid) {
        return false;
    }
    match pidfd {
        Some(pidfd) => rustix::process::pidfd_send_signal(&pidfd, Signal::KILL).is_ok(),
        None => rustix::process::kill_process(id, Signal::KILL).is_ok(),
    }
}

/// What [`kill_processes_of`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Killed {
    /// Processes that were alive and were sent SIGKILL.
    pub(crate) killed: usize,
    /// Processes still alive when it gave up (stuck in the kernel, say).
    pub(crate) left: usize,
}

impl Killed {
    /// What to add to the job's output: nothing when nothing was left running.
    pub(crate) fn note(self, left_by: &str) -> String {
        let mut note = String::new();
        if self.killed > 0 {
            note.push_str(&format!(
                "(killed {} process(es) {left_by} left running)\n",
                self.killed
            ));
        }
        if self.left > 0 {
            tracing::warn!(
                left = self.left,
                "Processes of the tool user outlived the kill."
            );
            note.push_str(&format!(
                "(warning: {} process(es) of the tool user were still alive {} s after they were killed)\n",
                self.left,
                KILL_DEADLINE.as_secs()
            ));
        }
        note
    }
}

/// How long [`kill_processes_of`] keeps at it.
const KILL_DEADLINE: Duration = Duration::from_secs(5);

/// A process of a user, as `/proc` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) pid: i32,
    /// Not a zombie, or a zombie whose other threads still run (its first thread exited).
    /// A plain zombie is dead (its parent has not reaped it yet) and holds nothing.
    pub(crate) alive: bool,
}

/// The processes whose real user is `uid`.
pub(crate) fn processes_of(uid: u32) -> Vec<Found> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<i32>().ok())
        else {
            continue;
        };
        if let Some(status) = status_of(pid)
            && status.uid == uid
        {
            found.push(Found {
                pid,
                alive: status.alive,
            });
        }
    }
    found
}

/// What `/proc/PID/status` says of a process that matters to a kill.
struct Status {
    /// The real user.
    uid: u32,
    /// As [`Found::alive`].
    alive: bool,
}

fn status_of(pid: i32) -> Option<Status> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.split_whitespace().next())
    };
    let uid = field("Uid:")?.parse().ok()?;
    let zombie = field("State:") == Some("Z");
    let threads = field("Threads:").and_then(|n| n.parse::<u32>().ok());
    Some(Status {
        uid,
        alive: !zombie || threads.is_some_and(|n| n > 1),
    })
}

/// Resolves once a stop is asked for.
pub(crate) async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) -> Stop {
    let asked = stop
        .wait_for(Option::is_some)
        .await
        .map(|reason| reason.clone());
    match asked {
        Ok(reason) => reason.unwrap_or(Stop::Drain),
        // The job's controller is gone: nobody will ask any more.
        Err(_) => std::future::pending().await,
    }
}

/// The polite request (`insist = false`): SIGTERM to the supervisor, which interrupts the
/// tool's group, or SIGINT to the tool's own group. The end of patience (`insist = true`):
/// SIGUSR1 makes the supervisor kill the group; without one, SIGKILL to the group.
fn signal_tool(pid: Option<u32>, supervised: bool, insist: bool) {
    let Some(pid) = pid.and_then(|pid| Pid::from_raw(pid as i32)) else {
        return;
    };
    let _ = match (supervised, insist) {
        (true, false) => rustix::process::kill_process(pid, Signal::TERM),
        (true, true) => rustix::process::kill_process(pid, Signal::USR1),
        (false, false) => rustix::process::kill_process_group(pid, Signal::INT),
        (false, true) => rustix::process::kill_process_group(pid, Signal::KILL),
    };
}

/// Kills a tool's process group if the step is abandoned while the tool runs (the job's future
/// is dropped: the worker lost the broker, or is stopping), so that no tool outlives its job.
struct AbandonGuard {
    pid: Option<u32>,
    supervised: bool,
    armed: bool,
}

impl Drop for AbandonGuard {
    fn drop(&mut self) {
        if self.armed {
            signal_tool(self.pid, self.supervised, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_whose_first_thread_exited_is_killed_though_it_looks_like_a_zombie() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        // Its main thread exits, its other thread sleeps on: /proc says "Z", with 2 threads.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let source = dir.path().join("half.c");
        std::fs::write(
            &source,
            "#include <pthread.h>\n#include <unistd.h>\n\
             static void *nap(void *arg) { (void)arg; sleep(600); return 0; }\n\
             int main(void) { pthread_t t; pthread_create(&t, 0, nap, 0); pthread_exit(0); }\n",
        )
        .unwrap();
        let binary = dir.path().join("half");
        let compiled = std::process::Command::new("cc")
            .arg("-pthread")
            .arg("-o")
            .arg(&binary)
            .arg(&source)
            .status()
            .expect("this test compiles a C program: install a C compiler (cc)");
        assert!(compiled.success());
        let uid = 63_000 + std::process::id() % 1_000;
        let mut half = std::process::Command::new(&binary)
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("running a process as another user needs root: run the tests as root");
        let pid = half.id() as i32;
        let looks_dead = |process: &Found| {
            let status = std::fs::read_to_string(format!("/proc/{}/status", process.pid))
                .unwrap_or_default();
            status.contains("State:\tZ") && status.contains("Threads:\t2")
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let found = processes_of(uid);
            if found.iter().any(|p| p.pid == pid && looks_dead(p)) {
                assert!(found.iter().all(|p| p.alive), "{found:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{found:?}");
            std::thread::yield_now();
        }
        let user = config::ToolUser { uid, gid: uid };
        assert_eq!(kill_processes_of(user, None), Killed { killed: 1, left: 0 });
        assert!(processes_of(uid).iter().all(|p| !p.alive));
        let _ = half.wait();
    }

    #[test]
    fn nothing_a_tool_user_left_running_is_alive_when_the_kill_returns() {
        use std::os::unix::process::CommandExt;
        // A uid of this test process alone (the end-to-end tests use 61001 and 61002).
        let uid = 62_000 + std::process::id() % 1_000;
        // Four shells that keep forking, at once, while the kill runs.
        let forker = "i=0; while [ $i -lt 150 ]; do sleep 600 & i=$((i+1)); done; wait";
        let mut shells: Vec<std::process::Child> = (0..4)
            .map(|_| {
                std::process::Command::new("sh")
                    .args(["-c", forker])
                    .current_dir("/")
                    .uid(uid)
                    .gid(uid)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("running a process as another user needs root: run the tests as root")
            })
            .collect();
        let alive = || {
            processes_of(uid)
                .into_iter()
                .filter(|process| process.alive)
                .map(|process| process.pid)
                .collect::<Vec<_>>()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while alive().len() < 40 {
            assert!(
                std::time::Instant::now() < deadline,
                "the shells did not fork"
            );
            std::thread::yield_now();
        }
        let killed = kill_processes_of(config::ToolUser { uid, gid: uid }, None);
        assert!(killed.killed >= 40 && killed.left == 0, "{killed:?}");
        assert_eq!(alive(), Vec::<i32>::new(), "alive after the kill");
        for shell in &mut shells {
            let _ = shell.wait();
        }
    }

    #[test]
    fn a_pid_that_now_names_another_users_process_is_not_killed() {
        // What the kill finds at a pid once the tool user's process there has gone and the pid
        // was reused: a process of someone else (this test's, root's).
        let mut theirs = std::process::Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let pid = theirs.id() as i32;
        let tool_user = 64_000 + std::process::id() % 1_000;
        // `false`: no signal was sent.
        assert!(!kill_if_still_of(tool_user, pid));
        // The same pid, still of the user it names, is.
        assert!(kill_if_still_of(rustix::process::getuid().as_raw(), pid));
        assert!(!theirs.wait().unwrap().success());
        // Nor does a pid that names nothing any more.
        assert!(!kill_if_still_of(tool_user, pid));
    }

    #[test]
    fn plans_never_apply_and_applies_apply_the_saved_plan() {
        let args = |action| {
            steps(action)
                .into_iter()
                .map(|s| s.args.join(" "))
                .collect::<Vec<_>>()
        };
        let plan = args(Action::Plan);
        assert_eq!(plan.len(), 3);
        assert!(plan[1].ends_with("-detailed-exitcode -out=tfplan"));
        assert!(args(Action::PlanDestroy)[1].contains("-destroy"));
        let destroy = args(Action::Destroy);
        assert!(destroy[1].contains("-destroy"));
        // Plans that apply nothing take no lock; a job that applies waits for the lock.
        for action in [Action::Plan, Action::PlanDestroy] {
            assert!(args(action)[1].contains(" -lock=false "), "{action:?}");
        }
        for action in [Action::Apply, Action::Destroy] {
            assert!(args(action)[1].contains(" -lock-timeout=5m "), "{action:?}");
        }
        assert_eq!(
            destroy[3],
            "apply -input=false -no-color -lock-timeout=5m tfplan"
        );
        assert_eq!(args(Action::Apply).len(), 4);
    }

    #[test]
    fn a_drift_check_plans_without_a_lock_and_never_applies() {
        let args: Vec<String> = steps(Action::DriftPlan)
            .iter()
            .map(|step| step.args.join(" "))
            .collect();
        assert_eq!(args.len(), 3, "{args:?}");
        assert!(args[1].contains("-lock=false") && args[1].contains("-detailed-exitcode"));
        assert!(!args[1].contains("-destroy"));
    }

    #[test]
    fn terragrunt_units_run_with_terragrunt() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("terragrunt.hcl"), "").unwrap();
        assert_eq!(
            tool_for(dir.path(), Some("tofu"), None),
            Ok(Tool::Terragrunt("terragrunt".into()))
        );
        assert_eq!(
            tool_for(dir.path(), None, Some("/opt/terragrunt-0.66")),
            Ok(Tool::Terragrunt("/opt/terragrunt-0.66".into()))
        );
        let plain = tempfile::tempdir().unwrap();
        assert_eq!(
            tool_for(plain.path(), Some("/opt/tofu"), None),
            Ok(Tool::Terraform("/opt/tofu".into()))
        );
    }
}
