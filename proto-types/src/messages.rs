//! The message types themselves: plain data with no behaviour beyond naming.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the orchestrator saw between two commits. Everything in it is untrusted: the dispatcher
/// validates it against the admin-owned policy before anything runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// Unique per event; also the id of the run the dispatcher makes from it.
    pub id: Uuid,
    /// The repository's name as the policy knows it. Never a URL: executors clone from the
    /// canonical URL in their own configuration.
    pub repository: String,
    pub trigger: Trigger,
    /// The commit the changes are relative to (the merge base for pull requests).
    pub base_sha: String,
    pub head_sha: String,
    pub changes: Vec<Change>,
    /// Dependency edges among the affected units (transitively, through unaffected ones).
    pub dependencies: Vec<DependencyEdge>,
}

/// The git event that produced a change event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    PullRequest {
        number: Option<u64>,
        base_branch: String,
        head_branch: String,
    },
    Push {
        branch: String,
    },
    /// A drift check of the deploy branch's head: every listed unit is planned, read-only, to
    /// see whether the real infrastructure still matches the code. Nothing is applied.
    Drift {
        branch: String,
    },
}

impl Trigger {
    pub fn kind(&self) -> EventKind {
        match self {
            Trigger::PullRequest { .. } => EventKind::PullRequest,
            Trigger::Push { .. } => EventKind::Push,
            Trigger::Drift { .. } => EventKind::Drift,
        }
    }
}

/// The events the CLI contract names: `pull-request`, `push` and `drift`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    PullRequest,
    Push,
    Drift,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PullRequest => "pull-request",
            EventKind::Push => "push",
            EventKind::Drift => "drift",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pull-request" => Ok(EventKind::PullRequest),
            "push" => Ok(EventKind::Push),
            "drift" => Ok(EventKind::Drift),
            other => Err(format!(
                "unknown event {other:?}: expected pull-request, push or drift"
            )),
        }
    }
}

/// One kind of change with the units it affects and the files that caused it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    /// Repo-relative unit directories, `/`-separated, sorted.
    pub units: Vec<String>,
    /// Repo-relative files that caused the change, sorted.
    pub files: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ChangeKind {
    UnitAdded,
    UnitChanged,
    UnitDeleted,
    EnvCommonChanged,
    HclChanged,
    FileChanged,
    AccountsRequested,
    AccountsChanged,
    DriftDetected,
    /// The unit is checked for drift: the only kind of a drift event, which lists every unit
    /// it checks (last, so that the kinds before it keep their wire indexes).
    DriftCheck,
}

impl ChangeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::UnitAdded => "UnitAdded",
            ChangeKind::UnitChanged => "UnitChanged",
            ChangeKind::UnitDeleted => "UnitDeleted",
            ChangeKind::EnvCommonChanged => "EnvCommonChanged",
            ChangeKind::HclChanged => "HclChanged",
            ChangeKind::FileChanged => "FileChanged",
            ChangeKind::AccountsRequested => "AccountsRequested",
            ChangeKind::AccountsChanged => "AccountsChanged",
            ChangeKind::DriftDetected => "DriftDetected",
            ChangeKind::DriftCheck => "DriftCheck",
        }
    }
}

impl fmt::Display for ChangeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `unit` depends on `depends_on`: it reads its outputs, so it must be applied after it and
/// destroyed before it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DependencyEdge {
    pub unit: String,
    pub depends_on: String,
}

/// Which of an account's two worker pools runs a job. They are different processes with
/// different broker users, credentials and disks, because a pull request's plan runs code
/// nobody reviewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutorRole {
    /// Pull-request plans (and drift plans): unreviewed code with the read-only identity.
    Plan,
    /// Everything of a push to the deploy branch (plans, applies and destroys of reviewed
    /// commits), with the write identity for applies and destroys.
    Apply,
}

impl ExecutorRole {
    pub const ALL: [ExecutorRole; 2] = [ExecutorRole::Plan, ExecutorRole::Apply];

    pub fn as_str(self) -> &'static str {
        match self {
            ExecutorRole::Plan => "plan",
            ExecutorRole::Apply => "apply",
        }
    }

    /// The pool that runs the jobs of an event: only a push to the deploy branch (which the
    /// dispatcher checked) reaches the apply workers. A drift check needs only the read-only
    /// identity, which is what the plan workers hold, and never the write one.
    pub fn for_event(event: EventKind) -> ExecutorRole {
        match event {
            EventKind::PullRequest | EventKind::Drift => ExecutorRole::Plan,
            EventKind::Push => ExecutorRole::Apply,
        }
    }
}

impl fmt::Display for ExecutorRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ExecutorRole {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "plan" => Ok(ExecutorRole::Plan),
            "apply" => Ok(ExecutorRole::Apply),
            other => Err(format!("unknown role {other:?}: expected plan or apply")),
        }
    }
}

/// What an executor does to a unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Plan,
    PlanDestroy,
    Apply,
    Destroy,
    /// Goes through the whole pipeline (dispatch, claim, events, run state, reports) but checks
    /// nothing out and runs no tool: for smoke-testing a deployment, and for benchmarks.
    Noop,
    /// A drift check: `plan -detailed-exitcode -lock=false` of the deploy branch's head. It
    /// writes no state and takes no lock, so it never waits for an apply of its unit, nor an
    /// apply for it. The outcome's [`DriftFindings`] say whether the unit drifted.
    DriftPlan,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Plan => "plan",
            Action::PlanDestroy => "plan-destroy",
            Action::Apply => "apply",
            Action::Destroy => "destroy",
            Action::Noop => "noop",
            Action::DriftPlan => "drift-plan",
        }
    }

    /// Destroy-flavoured actions run on the unit as it was at the base commit, after every
    /// non-destroy job of the run, dependents first.
    pub fn is_destroy(self) -> bool {
        matches!(self, Action::PlanDestroy | Action::Destroy)
    }

    /// Actions that change real infrastructure and need the apply credentials.
    pub fn mutates(self) -> bool {
        matches!(self, Action::Apply | Action::Destroy)
    }
}

impl FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            Action::Plan,
            Action::PlanDestroy,
            Action::Apply,
            Action::Destroy,
            Action::Noop,
            Action::DriftPlan,
        ]
        .into_iter()
        .find(|action| action.as_str() == s)
        .ok_or_else(|| {
            format!(
                "unknown action {s:?}: expected plan, plan-destroy, apply, destroy, noop or \
                 drift-plan"
            )
        })
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One action on one unit, addressed to the executors of one account and role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub job_id: Uuid,
    pub run_id: Uuid,
    pub repository: String,
    pub account: String,
    /// The commit the run is about (the head).
    pub commit: String,
    pub unit: String,
    pub action: Action,
    /// For destroys: the commit whose files describe the deleted unit (the base).
    pub source_commit: Option<String>,
    /// 1 for the first attempt; the dispatcher increments it on retries.
    pub attempt: u32,
    /// The executor stops the job after this many seconds; 0 means no limit.
    pub timeout_secs: u64,
    /// The worker pool it is queued for (`jobs.<account>.<role>`); a worker of the other role
    /// refuses it.
    pub role: ExecutorRole,
    /// An approver overrode the policy denies of this apply or destroy (`who: why`): the
    /// worker lets the denies of the sets its own configuration allows to be overridden
    /// (`override = "approvers"`) pass, recorded in the report. Plan workers ignore it.
    pub policy_override: Option<String>,
}

impl Job {
    /// The commit whose tree the executor checks out to run this job.
    pub fn checkout_commit(&self) -> &str {
        self.source_commit.as_deref().unwrap_or(&self.commit)
    }
}

/// What an executor reports about a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEvent {
    pub job_id: Uuid,
    pub run_id: Uuid,
    /// The attempt the event is about: reports of an earlier attempt are stale.
    pub attempt: u32,
    /// The worker's name, for operators (`host-pid` unless configured).
    pub worker: String,
    pub kind: JobEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobEventKind {
    /// A claim: the worker asks to start the job and waits for a [`ClaimReply`]. `redelivered`
    /// says the broker handed the job out before, so its previous holder is gone.
    Started {
        redelivered: bool,
    },
    /// Still running: renews the worker's lease on the job.
    Heartbeat,
    Finished(JobOutcome),
    /// The holder gives the job back without an outcome (it is shutting down): another
    /// worker may take it at once. The job's message goes back to the queue.
    Released {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOutcome {
    pub status: JobStatus,
    /// Exit code of the step that decided the outcome, when a process ran.
    pub exit_code: Option<i32>,
    /// Resource changes from `show -json` of the plan, when one was made.
    pub resource_changes: Option<ResourceCounts>,
    /// Combined, bounded and redacted output of every step.
    pub output: String,
    pub duration_ms: u64,
    /// Where the worker wrote the whole (redacted) log: `<worker>:<path>`.
    pub log: Option<String>,
    /// What the policy sets governing the unit said about its plan; `None` when none does.
    pub policy: Option<PolicyReport>,
    /// For a drift check that planned: whether the unit drifted, and how.
    pub drift: Option<DriftFindings>,
}

/// What a drift check's plan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftFindings {
    /// `plan -detailed-exitcode` exited 2: the infrastructure differs from the code.
    pub drifted: bool,
    /// A digest of what the plan would change (addresses, actions and planned values): the
    /// same drift seen twice has the same digest, so it is not reported twice.
    pub digest: String,
    /// The resources the plan would change, `address (actions)`, at most
    /// [`DriftFindings::MAX_RESOURCES`] (redacted like the output).
    pub resources: Vec<String>,
    /// Resources to change beyond the ones listed.
    pub more: u32,
}

impl DriftFindings {
    pub const MAX_RESOURCES: usize = 50;
}

/// What the admin's policy sets said about one plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub sets: Vec<PolicySetResult>,
}

impl PolicyReport {
    /// Whether the plan must not go on: a set in deny mode denied it, or any set failed to
    /// load or to evaluate (fail closed: a check that did not run is not a pass).
    pub fn blocks(&self) -> bool {
        self.sets.iter().any(PolicySetResult::blocks)
    }

    /// Whether it blocks only by denies an approver may override: every blocking set allows
    /// it, and none failed to give a verdict.
    pub fn overridable(&self) -> bool {
        self.blocks()
            && self
                .sets
                .iter()
                .filter(|set| set.blocks())
                .all(|set| set.overridable && set.error.is_none())
    }

    /// The sets whose denies block the plan.
    pub fn blocking_sets(&self) -> Vec<String> {
        self.sets
            .iter()
            .filter(|set| set.blocks())
            .map(|set| set.name.clone())
            .collect()
    }

    /// Rules evaluated, over every set.
    pub fn rules(&self) -> u32 {
        self.sets.iter().map(|set| set.rules).sum()
    }

    /// Bytes of text a report keeps, at most, once [`PolicyReport::fit`]: the run database
    /// keeps it, and every status of the run repeats it.
    pub const MAX_TEXT_BYTES: usize = 256 * 1024;
    /// Sets a report may name: far more than govern any unit.
    pub const MAX_SETS: usize = 256;
    /// What a set's error, name and override keep of themselves when a report is fitted.
    const KEPT_ERROR_BYTES: usize = 2048;
    const KEPT_NAME_BYTES: usize = 256;
    const KEPT_OVERRIDE_BYTES: usize = 1024;
    /// What a message keeps: the executor's own bound (and its `…`).
    const KEPT_MESSAGE_BYTES: usize = 1024 + 3;

    /// Its text, in bytes: names, messages, errors and overrides.
    pub fn text_bytes(&self) -> usize {
        self.sets.iter().map(PolicySetResult::text_bytes).sum()
    }

    /// Makes a report of more than `max` bytes of text smaller. Each set keeps its first
    /// messages within an equal share of `max`, denies before warnings, and always its first
    /// deny (so that [`PolicyReport::blocks`] says what it said), then says how many it cut; its
    /// error, name and override keep their start. What an executor sends for a few sets is
    /// within `max` and left as it is. How many messages were cut.
    pub fn fit(&mut self, max: usize) -> usize {
        if self.text_bytes() <= max {
            return 0;
        }
        let share = max / self.sets.len().max(1);
        // What a set keeps whatever its share holds (its name, error and override, its first
        // deny and the lines that say what went) takes at most its share: with many sets, the
        // shares are small.
        let kept = |most: usize, part: usize| most.min(share / part).max(8);
        let mut cut = 0;
        for set in &mut self.sets {
            cut_text(&mut set.name, kept(Self::KEPT_NAME_BYTES, 8));
            if let Some(error) = &mut set.error {
                cut_text(error, kept(Self::KEPT_ERROR_BYTES, 4));
            }
            if let Some(overridden) = &mut set.overridden {
                cut_text(overridden, kept(Self::KEPT_OVERRIDE_BYTES, 8));
            }
            let mut used = set.name.len()
                + set.error.as_ref().map_or(0, String::len)
                + set.overridden.as_ref().map_or(0, String::len);
            let first_deny = kept(Self::KEPT_MESSAGE_BYTES, 4);
            cut += keep_within(&mut set.denies, &mut used, share, Some(first_deny));
            cut += keep_within(&mut set.warnings, &mut used, share, None);
        }
        cut
    }
}

/// Keeps the first of `messages` while `used` stays within `share`, each cut to
/// [`PolicyReport::KEPT_MESSAGE_BYTES`]; with `first`, the first always, cut to that many
/// bytes when it does not fit. A line says how many went, counted in `used`.
fn keep_within(
    messages: &mut Vec<String>,
    used: &mut usize,
    share: usize,
    first: Option<usize>,
) -> usize {
    let mut kept = 0;
    for message in messages.iter_mut() {
        cut_text(message, PolicyReport::KEPT_MESSAGE_BYTES);
        // Room is kept for the line that says what went.
        if *used + message.len() + 64 > share {
            match first {
                Some(bytes) if kept == 0 => cut_text(message, bytes),
                _ => break,
            }
        }
        *used += message.len();
        kept += 1;
    }
    let cut = messages.len() - kept;
    if cut > 0 {
        messages.truncate(kept);
        let said = format!("… and {cut} more, cut to fit the report");
        *used += said.len();
        messages.push(said);
    }
    cut
}

/// `text`'s first `max` bytes at most, on a character boundary, with `…` when cut.
fn cut_text(text: &mut String, max: usize) {
    if text.len() > max {
        let keep = crate::untrusted_text::head(text, max.saturating_sub(3)).len();
        text.truncate(keep);
        text.push('…');
    }
}

/// One policy set's verdict on one plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySetResult {
    pub name: String,
    /// `true`: its `deny` results fail the job; `false` (warn mode): they are warnings.
    pub enforced: bool,
    /// `deny` and `warn` rules the set declares (one per name per file) that were evaluated.
    pub rules: u32,
    pub denies: Vec<String>,
    pub warnings: Vec<String>,
    /// Why the set could not give a verdict (a load or evaluation error, with file and line).
    pub error: Option<String>,
    /// Its denies may be overridden by an approver (`override = "approvers"`).
    #[serde(default)]
    pub overridable: bool,
    /// Its denies were overridden: by whom and why (`who: why`). They no longer block.
    #[serde(default)]
    pub overridden: Option<String>,
}

impl PolicySetResult {
    /// Its text, in bytes.
    pub fn text_bytes(&self) -> usize {
        self.name.len()
            + self
                .denies
                .iter()
                .chain(&self.warnings)
                .map(String::len)
                .sum::<usize>()
            + self.error.as_ref().map_or(0, String::len)
            + self.overridden.as_ref().map_or(0, String::len)
    }

    pub fn blocks(&self) -> bool {
        self.error.is_some()
            || (self.enforced && !self.denies.is_empty() && self.overridden.is_none())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JobStatus {
    Succeeded,
    Failed,
    /// Nothing ran: the worker's own checks refused the job (an apply of a commit that is not
    /// on the deploy branch). Never retried.
    Refused,
    /// Stopped on the dispatcher's word ([`CancelJob`]).
    Cancelled,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceCounts {
    pub add: u32,
    pub change: u32,
    pub destroy: u32,
}

impl fmt::Display for ResourceCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{} ~{} -{}", self.add, self.change, self.destroy)
    }
}

/// The dispatcher's answer to a claim ([`JobEventKind::Started`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimReply {
    pub job_id: Uuid,
    pub attempt: u32,
    pub verdict: ClaimVerdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimVerdict {
    /// Run it; send a heartbeat well within `lease_secs`, or another worker may take over.
    Granted { lease_secs: u64 },
    /// Do not run it. `retry`: ask again later (another worker's lease is still valid);
    /// otherwise drop the delivery (the job is finished, cancelled, or a duplicate).
    Denied { reason: String, retry: bool },
}

/// A piece of a job's whole log, streamed by the worker that runs the attempt while it runs,
/// so that operators can follow it from the dispatcher's web page. The bytes are the worker's
/// own log file (already redacted), in order; `offset` places them, so a redelivered or
/// duplicated chunk rewrites the same bytes and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub job_id: Uuid,
    pub run_id: Uuid,
    pub attempt: u32,
    /// The worker's name: two workers may run the same attempt one after the other (the first
    /// was lost), and each has its own log.
    pub worker: String,
    /// When the worker began streaming this log (ms since the epoch): a worker that runs the
    /// same attempt again (restarted under the same name) writes a new log, not over the old.
    pub stream: u64,
    /// Where in the log `text` starts, in bytes.
    pub offset: u64,
    /// Whole UTF-8 characters of the log, at most [`LogChunk::MAX_BYTES`].
    pub text: String,
    /// Nothing follows: the log is complete (a log that never gets its end was cut).
    pub end: bool,
}

impl LogChunk {
    /// The most text one chunk carries.
    pub const MAX_BYTES: usize = 256 * 1024;
}

/// An operator asks the dispatcher to cancel a run: jobs not started are cancelled, running
/// ones are stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelRun {
    pub run_id: Uuid,
    pub reason: String,
    /// Who asked, for the record (`user@host` by default).
    pub requested_by: String,
}

/// An approver opens (or closes) the gate of a run's jobs that wait for an approval. Only the
/// broker users in `[approvals] users` count: RabbitMQ validates the message's `user_id`, and
/// the dispatcher refuses anyone else's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalOrder {
    pub run_id: Uuid,
    /// One unit, or every job of the run that waits for an approval.
    pub unit: Option<String>,
    pub verdict: ApprovalVerdict,
    /// Why, for the record: it shows in the status and the PR comment.
    pub reason: String,
    /// Who asked, for the record (`user@host` by default). The authority is the broker user.
    pub requested_by: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalVerdict {
    /// The jobs may run once their dependencies succeed.
    Approve,
    /// The jobs are cancelled, with the reason; their dependents too.
    Reject,
}

impl ApprovalVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ApprovalVerdict::Approve => "approve",
            ApprovalVerdict::Reject => "reject",
        }
    }
}

/// A job's approval gate (`require_approval` in the admin config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalGate {
    /// A pull-request plan of a unit whose apply will wait for an approval after the merge.
    AfterMerge,
    /// The job waits (state `awaiting-approval`) for one of `approvers` since `since_ms`; it is
    /// cancelled at `expires_ms` (milliseconds since the epoch).
    Waiting {
        approvers: Vec<String>,
        since_ms: u64,
        expires_ms: u64,
        /// The policy sets whose denies an approval would override; empty for a gate of
        /// `require_approval`.
        #[serde(default)]
        policy_sets: Vec<String>,
    },
    /// Opened: by which broker user (and who they said they were), why, when.
    Approved {
        by: String,
        reason: String,
        at_ms: u64,
    },
}

/// The dispatcher tells the worker holding a job to stop it; sent to the worker's reply queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelJob {
    pub job_id: Uuid,
    pub attempt: u32,
    pub reason: String,
}

/// A snapshot of a run, published on every change of any of its units.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStatus {
    pub run_id: Uuid,
    pub repository: String,
    pub event: EventKind,
    pub head_sha: String,
    pub state: RunState,
    pub units: Vec<UnitStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunState {
    Running,
    Succeeded,
    /// At least one job failed; the reason summarises which.
    Failed(String),
    /// The event was refused before any job ran.
    Rejected(String),
    /// A newer run superseded this one before all of it ran; nothing failed.
    Cancelled(String),
}

impl RunState {
    pub fn is_final(&self) -> bool {
        !matches!(self, RunState::Running)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed(_) => "failed",
            RunState::Rejected(_) => "rejected",
            RunState::Cancelled(_) => "cancelled",
        }
    }

    /// Why the run ended the way it did, when that needs saying.
    pub fn reason(&self) -> Option<&str> {
        match self {
            RunState::Running | RunState::Succeeded => None,
            RunState::Failed(reason) | RunState::Rejected(reason) | RunState::Cancelled(reason) => {
                Some(reason)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitStatus {
    pub unit: String,
    pub account: String,
    pub action: Action,
    pub job_id: Uuid,
    pub state: UnitState,
    pub exit_code: Option<i32>,
    pub resource_changes: Option<ResourceCounts>,
    pub duration_ms: Option<u64>,
    pub worker: Option<String>,
    /// The end of the output of a failed job, so that a follower can say why without the logs.
    pub output_tail: Option<String>,
    /// 1 for the first attempt; more after retries.
    pub attempt: u32,
    /// Why a pending job waits (another run holds the unit, the account is at its limit, a
    /// retry's backoff), when it does.
    pub note: Option<String>,
    /// Where the worker keeps the job's whole log (`<worker>:<path>`).
    pub log: Option<String>,
    /// Its approval gate, when the admin config puts one on the unit.
    pub approval: Option<ApprovalGate>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitState {
    /// Waiting for its dependencies.
    Pending,
    /// Published to its account's queue.
    Queued,
    Running,
    Succeeded,
    Failed,
    /// Not run because a job it depends on did not succeed; says which.
    Skipped(String),
    /// Not run because a newer run superseded this one; says which.
    Cancelled(String),
    /// An apply or destroy that waits for an approver before it may start (last, so that the
    /// variants before it keep their wire indexes).
    AwaitingApproval,
}

impl UnitState {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            UnitState::Succeeded
                | UnitState::Failed
                | UnitState::Skipped(_)
                | UnitState::Cancelled(_)
        )
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            UnitState::Pending => "pending",
            UnitState::Queued => "queued",
            UnitState::Running => "running",
            UnitState::Succeeded => "succeeded",
            UnitState::Failed => "failed",
            UnitState::Skipped(_) => "skipped",
            UnitState::Cancelled(_) => "cancelled",
            UnitState::AwaitingApproval => "awaiting-approval",
        }
    }

    /// Why a job was skipped or cancelled.
    pub fn reason(&self) -> Option<&str> {
        match self {
            UnitState::Skipped(reason) | UnitState::Cancelled(reason) => Some(reason),
            _ => None,
        }
    }

    /// The inverse of [`as_str`](Self::as_str) with [`reason`](Self::reason).
    pub fn from_parts(state: &str, reason: Option<String>) -> Option<UnitState> {
        Some(match state {
            "pending" => UnitState::Pending,
            "queued" => UnitState::Queued,
            "running" => UnitState::Running,
            "succeeded" => UnitState::Succeeded,
            "failed" => UnitState::Failed,
            "skipped" => UnitState::Skipped(reason.unwrap_or_default()),
            "cancelled" => UnitState::Cancelled(reason.unwrap_or_default()),
            "awaiting-approval" => UnitState::AwaitingApproval,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(name: &str, denies: usize, warnings: usize, each: usize) -> PolicySetResult {
        PolicySetResult {
            name: name.into(),
            enforced: true,
            rules: 2,
            denies: vec!["d".repeat(each); denies],
            warnings: vec!["w".repeat(each); warnings],
            error: None,
            overridable: false,
            overridden: None,
        }
    }

    /// Three sets each at what an executor sends at most (51 messages of about 1 KiB per rule)
    /// come to more than a report keeps: each keeps its share, denies first and its first deny
    /// always, says what it cut, and blocks as it did; a report within the bound is untouched.
    #[test]
    fn a_report_larger_than_it_may_be_is_fitted_and_still_blocks_as_it_did() {
        let full = || set("security", 51, 51, 1_027);
        let mut report = PolicyReport {
            sets: vec![full(), full(), full()],
        };
        assert!(report.text_bytes() > PolicyReport::MAX_TEXT_BYTES);
        let cut = report.fit(PolicyReport::MAX_TEXT_BYTES);
        assert!(cut > 0);
        assert!(
            report.text_bytes() <= PolicyReport::MAX_TEXT_BYTES,
            "{}",
            report.text_bytes()
        );
        assert!(report.blocks());
        for set in &report.sets {
            assert!(set.denies.len() > 1, "each set keeps its share");
            let said = set.denies.last().unwrap().clone() + set.warnings.last().unwrap();
            assert!(said.contains("more, cut to fit the report"), "{said}");
        }

        // One huge message, an endless error and a name: each keeps its start.
        let mut one = PolicyReport {
            sets: vec![PolicySetResult {
                error: Some("e".repeat(1 << 20)),
                ..set(&"n".repeat(1_000), 1, 0, 1 << 20)
            }],
        };
        one.fit(PolicyReport::MAX_TEXT_BYTES);
        assert!(one.text_bytes() <= 4 * 1024, "{}", one.text_bytes());
        assert_eq!(one.sets[0].denies.len(), 1, "the first deny stays");
        assert!(one.sets[0].denies[0].ends_with('…') && one.blocks());

        // As many sets as a report may name, each full, with a long name and error: the
        // report still fits, and each set still blocks.
        let mut many = PolicyReport {
            sets: vec![
                PolicySetResult {
                    error: Some("e".repeat(10_000)),
                    ..set(&"n".repeat(1_000), 51, 51, 1_027)
                };
                PolicyReport::MAX_SETS
            ],
        };
        many.fit(PolicyReport::MAX_TEXT_BYTES);
        assert!(
            many.text_bytes() <= PolicyReport::MAX_TEXT_BYTES,
            "{}",
            many.text_bytes()
        );
        assert!(
            many.sets
                .iter()
                .all(|set| set.blocks() && !set.denies.is_empty())
        );

        let mut small = PolicyReport {
            sets: vec![set("security", 3, 2, 100)],
        };
        let before = small.clone();
        assert_eq!(small.fit(PolicyReport::MAX_TEXT_BYTES), 0);
        assert_eq!(small, before);
    }
}
