//! Every active run and what may happen next: the dispatcher's decisions, as a pure state
//! machine. Messages and the clock go in (`now` is milliseconds since the epoch); jobs to
//! publish, claim verdicts and changed runs come out. The service persists and publishes them.
//!
//! The rules (DESIGN.md "Run semantics"):
//! - within a run, a job starts once every affected dependency has succeeded; destroy-flavoured
//!   jobs wait until every other job of the run is final, then run dependents first;
//! - a failure skips the jobs that need it, naming the root failure; independent jobs go on;
//! - across runs, applies and destroys of one unit run one at a time, in arrival order;
//! - an account's jobs in flight never exceed its cap, and plan workers' jobs (pull requests'
//!   plans, drift checks) leave the slots kept for the deploy branch's jobs free; when a slot
//!   frees, the deploy branch's jobs take it first, then pull requests', then drift checks;
//! - a newer pull-request run supersedes the older run of the same PR: jobs not yet started are
//!   cancelled, naming the newer run;
//! - a failure whose output matches a retry pattern runs again after a backoff, up to a limit;
//! - a worker runs a job only after its claim is granted: one holder per job and attempt, kept
//!   alive by heartbeats; a redelivered job may be taken over;
//! - a gated apply or destroy (`require_approval`) waits in `awaiting-approval` until an
//!   approver approves it (then it waits for its dependencies as any job), rejects it, or the
//!   approval timeout passes (both cancel it); a newer push of the same unit supersedes it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proto_types::untrusted_text::tail;
use proto_types::{
    Action, ApprovalGate, ApprovalVerdict, CancelJob, ChangeEvent, ClaimVerdict, DriftFindings,
    EventKind, ExecutorRole, Job, JobOutcome, JobPhase, JobStatus, JobSummary, PolicyReport,
    ResourceCounts, RunState, RunStatus, Trigger, UnitState, UnitStatus,
};
use regex::Regex;
use uuid::Uuid;

use crate::policy::RunPlan;

/// How much of a failed job's output travels in every status snapshot.
const OUTPUT_TAIL_BYTES: usize = 4096;
/// The most characters a rejected event's repository name or malformed sha keeps.
const MAX_REJECTED_NAME_CHARS: usize = 200;
/// The most characters of a reason a run or a dead-lettered message keeps.
pub const MAX_REASON_CHARS: usize = 1_000;

/// The scheduler's settings, from the policy file.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Jobs queued or running per account at most; absent or 0: no limit.
    pub caps: HashMap<String, u32>,
    /// Job timeouts per account, in seconds.
    pub timeouts: HashMap<String, u64>,
    pub max_attempts: u32,
    pub backoff_ms: u64,
    pub retry_patterns: Vec<Regex>,
    pub lease_ms: u64,
    /// The broker users who may approve gated jobs (shown to whoever waits for them).
    pub approvers: Vec<String>,
    /// How long a gated job waits for an approval before it is cancelled.
    pub approval_timeout_ms: u64,
    /// Drift checks queued or running per account at most (at least 1).
    pub drift_jobs_per_account: u32,
    /// Of each capped account's slots, how many only apply workers' jobs may take (at most
    /// the cap less one, so that plans always have a slot).
    pub reserved_apply_slots: u32,
}

impl Settings {
    pub fn from_config(config: &config::Config) -> Settings {
        Settings {
            caps: config
                .accounts
                .iter()
                .map(|a| (a.name.clone(), a.max_concurrent_jobs))
                .collect(),
            timeouts: config
                .accounts
                .iter()
                .map(|a| (a.name.clone(), a.job_timeout_secs()))
                .collect(),
            max_attempts: config.retry.max_attempts.max(1),
            backoff_ms: config.retry.backoff_seconds * 1000,
            // Validated when the configuration was loaded.
            retry_patterns: config
                .retry
                .patterns
                .iter()
                .filter_map(|p| Regex::new(p).ok())
                .collect(),
            lease_ms: config.dispatcher.lease_seconds * 1000,
            approvers: config.approvals.users.clone(),
            approval_timeout_ms: u64::try_from(config.approvals.timeout().as_millis())
                .unwrap_or(u64::MAX),
            drift_jobs_per_account: config.dispatcher.drift_jobs_per_account.max(1),
            reserved_apply_slots: config.dispatcher.reserved_apply_slots,
        }
    }

    /// How many of `account`'s jobs for plan workers may be queued or running at once: its
    /// cap less the slots kept for apply workers, and never none. `None`: no limit.
    pub fn plan_slots(&self, account: &str) -> Option<u32> {
        let cap = self.caps.get(account).copied().unwrap_or(0);
        (cap > 0).then(|| cap - self.reserved_apply_slots.min(cap - 1))
    }
}

/// A worker's hold on a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub worker: String,
    pub until_ms: u64,
    /// The holder's private queue, for telling it to stop the job.
    pub reply_to: Option<String>,
}

/// Which of a run's waiting jobs an approver's verdict is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalScope<'a> {
    /// Every job of the run that waits (`pipelines approve RUN`).
    Run,
    /// The unit's (`pipelines approve RUN --unit U`).
    Unit(&'a str),
    /// These jobs, each in the wait the approver's page showed (the web page's choice). A job
    /// that began to wait after the page was loaded, or waits again since (its plan denied
    /// after an approval, on the same attempt or a later one), is not among them: a stale
    /// page answers for nothing it did not show.
    Jobs(&'a [ShownJob]),
}

impl<'a> From<Option<&'a str>> for ApprovalScope<'a> {
    /// The unit's jobs, or the whole run's.
    fn from(unit: Option<&'a str>) -> Self {
        unit.map_or(ApprovalScope::Run, ApprovalScope::Unit)
    }
}

/// A job as an approver's page showed it waiting: its id, its attempt and when that wait
/// began. The attempt alone does not tell two waits apart: approving a gate does not raise
/// it, and the same attempt's plan may then be denied and wait again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShownJob {
    pub job_id: Uuid,
    pub attempt: u32,
    pub since_ms: u64,
}

impl ShownJob {
    /// The wait `job` is in, if it waits for an approval.
    pub fn waiting(job: &JobSummary) -> Option<ShownJob> {
        match (&job.approval, job.state) {
            (Some(ApprovalGate::Waiting { since_ms, .. }), JobPhase::AwaitingApproval) => {
                Some(ShownJob {
                    job_id: job.job_id,
                    attempt: job.attempt,
                    since_ms: *since_ms,
                })
            }
            _ => None,
        }
    }

    /// The wait an active job is in, if it waits for an approval.
    pub fn current(job: &RunJob) -> Option<ShownJob> {
        match (&job.approval, &job.state) {
            (Some(ApprovalGate::Waiting { since_ms, .. }), UnitState::AwaitingApproval) => {
                Some(ShownJob {
                    job_id: job.job.job_id,
                    attempt: job.job.attempt,
                    since_ms: *since_ms,
                })
            }
            _ => None,
        }
    }
}

/// How a form names a wait: `JOB_ID:ATTEMPT:SINCE_MS`.
impl std::fmt::Display for ShownJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.job_id, self.attempt, self.since_ms)
    }
}

impl std::str::FromStr for ShownJob {
    type Err = ();

    fn from_str(text: &str) -> Result<ShownJob, ()> {
        let mut parts = text.split(':');
        let (Some(job_id), Some(attempt), Some(since_ms), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(());
        };
        Ok(ShownJob {
            job_id: Uuid::parse_str(job_id).map_err(|_| ())?,
            attempt: attempt.parse().map_err(|_| ())?,
            since_ms: since_ms.parse().map_err(|_| ())?,
        })
    }
}

/// An active job as the store writes it: its run, and where it stands in the run's jobs.
#[derive(Debug, Clone, Copy)]
pub struct JobAt<'a> {
    pub run: &'a Run,
    pub index: usize,
    pub job: &'a RunJob,
}

/// One job of a run and everything known about it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunJob {
    /// The message that was (or will be) published; `attempt` is the current attempt.
    pub job: Job,
    /// Jobs of the run that must succeed first (indexes). Destroy-flavoured jobs also wait
    /// for every other job of the run to be final, whatever its outcome.
    pub requires: Vec<usize>,
    pub state: UnitState,
    /// Why a pending job waits, when it waits on something other than its dependencies.
    pub note: Option<String>,
    /// A retry does not start before this time.
    pub not_before_ms: u64,
    pub lease: Option<Lease>,
    pub exit_code: Option<i32>,
    pub resource_changes: Option<ResourceCounts>,
    /// The policy sets' verdict on its plan, when any governs the unit.
    pub policy: Option<PolicyReport>,
    pub duration_ms: Option<u64>,
    pub worker: Option<String>,
    pub output_tail: Option<String>,
    /// When the current holder's claim was granted.
    pub started_ms: Option<u64>,
    /// When the job reached its final state.
    pub finished_ms: Option<u64>,
    /// Where the worker keeps the whole log (`<worker>:<path>`).
    pub log: Option<String>,
    /// Set when the job was told to stop while running; why.
    pub cancel_requested: Option<String>,
    /// Its approval gate, when the admin config puts one on the unit.
    pub approval: Option<ApprovalGate>,
    /// What a drift check found, once it planned.
    pub drift: Option<DriftFindings>,
}

impl RunJob {
    /// Whether it waits for an approver to override its plan's policy denies.
    pub fn awaits_policy_override(&self) -> bool {
        self.state == UnitState::AwaitingApproval
            && matches!(&self.approval, Some(ApprovalGate::Waiting { policy_sets, .. }) if !policy_sets.is_empty())
    }

    /// When a job awaiting approval is cancelled for want of one.
    fn approval_expiry(&self) -> Option<u64> {
        match (&self.state, &self.approval) {
            (UnitState::AwaitingApproval, Some(ApprovalGate::Waiting { expires_ms, .. })) => {
                Some(*expires_ms)
            }
            _ => None,
        }
    }
}

/// A run: an accepted (or rejected) change event and its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Arrival order among all runs; applies of one unit follow it.
    pub seq: u64,
    pub run_id: Uuid,
    pub repository: String,
    pub event: EventKind,
    pub head_sha: String,
    pub base_sha: String,
    pub pull_request: Option<u64>,
    pub created_ms: u64,
    pub rejected: Option<String>,
    /// Why the run was cancelled (superseded by a newer run, or by an operator), if it was.
    pub cancelled: Option<String>,
    /// The W3C `traceparent` of the span that accepted the run: its jobs and reports join
    /// that trace.
    pub trace: Option<String>,
    pub jobs: Vec<RunJob>,
    /// Jobs other than destroys not final yet; destroys start at zero. Derived: the scheduler
    /// computes it when it takes the run in.
    pub open_non_destroy: usize,
}

impl Run {
    pub fn state(&self) -> RunState {
        if let Some(reason) = &self.rejected {
            return RunState::Rejected(reason.clone());
        }
        // From the end: jobs are released and finish roughly in order, so a running run's
        // unfinished job is found among the last at once, where a scan from the start walked
        // every finished one first, for every active run after every batch (evictions).
        if self.jobs.iter().rev().any(|j| !j.state.is_final()) {
            return RunState::Running;
        }
        let count = |f: fn(&UnitState) -> bool| self.jobs.iter().filter(|j| f(&j.state)).count();
        let failed = count(|s| *s == UnitState::Failed);
        let skipped = count(|s| matches!(s, UnitState::Skipped(_)));
        let cancelled = count(|s| matches!(s, UnitState::Cancelled(_)));
        if failed > 0 {
            return RunState::Failed(format!(
                "{failed} of {} jobs failed, {skipped} skipped",
                self.jobs.len()
            ));
        }
        if cancelled > 0 {
            let why = self.cancelled.as_deref().unwrap_or("cancelled");
            return RunState::Cancelled(format!(
                "{cancelled} of {} jobs cancelled: {why}",
                self.jobs.len()
            ));
        }
        RunState::Succeeded
    }

    pub fn is_final(&self) -> bool {
        self.state().is_final()
    }

    pub fn status(&self) -> RunStatus {
        RunStatus {
            run_id: self.run_id,
            repository: self.repository.clone(),
            event: self.event,
            head_sha: self.head_sha.clone(),
            state: self.state(),
            units: self
                .jobs
                .iter()
                .map(|j| UnitStatus {
                    unit: j.job.unit.clone(),
                    account: j.job.account.clone(),
                    action: j.job.action,
                    job_id: j.job.job_id,
                    state: j.state.clone(),
                    exit_code: j.exit_code,
                    resource_changes: j.resource_changes,
                    duration_ms: j.duration_ms,
                    worker: j.worker.clone(),
                    output_tail: j.output_tail.clone(),
                    attempt: j.job.attempt,
                    note: j.note.clone(),
                    log: j.log.clone(),
                    approval: j.approval.clone(),
                })
                .collect(),
        }
    }
}

/// The id of a unit's job in a run: stable, so a re-planned run yields the same ids.
pub fn job_id(run_id: Uuid, unit: &str, action: Action) -> Uuid {
    Uuid::new_v5(&run_id, format!("{unit}\0{action}").as_bytes())
}

/// What a step decided, for the service to persist and publish.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Effects {
    /// Jobs to publish to their accounts' queues, in order.
    pub publish: Vec<Job>,
    /// Runs whose status changed (to persist and publish).
    pub changed_runs: BTreeSet<Uuid>,
    /// Jobs that changed (to persist); their runs are in `changed_runs`.
    pub changed_jobs: BTreeSet<Uuid>,
    /// Stop orders for running jobs, to their holders' queues.
    pub stop: Vec<(String, CancelJob)>,
}

impl Effects {
    fn touch_run(&mut self, run_id: Uuid) {
        self.changed_runs.insert(run_id);
    }

    fn touch(&mut self, job: &Job) {
        self.changed_runs.insert(job.run_id);
        self.changed_jobs.insert(job.job_id);
    }

    pub fn merge(&mut self, other: Effects) {
        self.publish.extend(other.publish);
        self.changed_runs.extend(other.changed_runs);
        self.changed_jobs.extend(other.changed_jobs);
        self.stop.extend(other.stop);
    }

    pub fn is_empty(&self) -> bool {
        self.publish.is_empty() && self.changed_runs.is_empty()
    }
}

type JobRef = (u64, usize);

/// Every active run, and the indexes that make each step cheap.
#[derive(Debug)]
pub struct Scheduler {
    settings: Settings,
    runs: BTreeMap<u64, Run>,
    by_id: HashMap<Uuid, u64>,
    jobs: HashMap<Uuid, JobRef>,
    /// Jobs whose dependencies are met, waiting for their unit, their account or their backoff.
    eligible: BTreeSet<JobRef>,
    /// Applies and destroys not final yet, per (repository, unit), in arrival order.
    unit_queues: HashMap<(String, String), BTreeSet<JobRef>>,
    /// Jobs queued or running, per account.
    slots: Slots,
    /// For each job, the jobs of its run that require it or wait for it.
    followers: HashMap<JobRef, Vec<usize>>,
    /// Jobs awaiting approval, by the time their wait expires.
    awaiting: BTreeSet<(u64, JobRef)>,
    next_seq: u64,
}

impl Scheduler {
    pub fn new(settings: Settings) -> Scheduler {
        Scheduler {
            settings,
            runs: BTreeMap::new(),
            by_id: HashMap::new(),
            jobs: HashMap::new(),
            eligible: BTreeSet::new(),
            unit_queues: HashMap::new(),
            slots: Slots::default(),
            followers: HashMap::new(),
            awaiting: BTreeSet::new(),
            next_seq: 1,
        }
    }

    /// Rebuilds the scheduler from persisted runs after a restart. Leases are extended by a full
    /// lease from `now`: while the dispatcher was down it heard no heartbeats, which says
    /// nothing about the workers.
    pub fn restore(settings: Settings, runs: Vec<Run>, next_seq: u64, now: u64) -> Scheduler {
        let mut scheduler = Scheduler::new(settings);
        let lease_ms = scheduler.settings.lease_ms;
        for mut run in runs {
            for lease in run.jobs.iter_mut().filter_map(|job| job.lease.as_mut()) {
                lease.until_ms = lease.until_ms.max(now + lease_ms);
            }
            scheduler.next_seq = scheduler.next_seq.max(run.seq + 1);
            scheduler.insert(run);
        }
        scheduler.next_seq = scheduler.next_seq.max(next_seq);
        scheduler
    }

    pub fn run(&self, run_id: Uuid) -> Option<&Run> {
        self.by_id.get(&run_id).and_then(|seq| self.runs.get(seq))
    }

    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.values()
    }

    pub fn contains_job(&self, job_id: Uuid) -> bool {
        self.jobs.contains_key(&job_id)
    }

    /// Jobs queued or running, per account.
    pub fn in_flight(&self) -> &HashMap<String, u32> {
        &self.slots.all
    }

    /// Jobs not final and not in flight: waiting for something (an approval included).
    pub fn waiting(&self) -> usize {
        self.runs
            .values()
            .flat_map(|run| &run.jobs)
            .filter(|job| matches!(job.state, UnitState::Pending | UnitState::AwaitingApproval))
            .count()
    }

    /// Jobs waiting for an approver.
    pub fn awaiting_approval(&self) -> usize {
        self.awaiting.len()
    }

    /// Records the trace a run belongs to (the span that accepted it).
    pub fn set_trace(&mut self, run_id: Uuid, trace: Option<String>) {
        if let Some(run) = self
            .by_id
            .get(&run_id)
            .and_then(|seq| self.runs.get_mut(seq))
        {
            run.trace = trace;
        }
    }

    /// An active job and its run.
    pub fn job_by_id(&self, job_id: Uuid) -> Option<(&Run, &RunJob)> {
        let at = self.job_at(job_id)?;
        Some((at.run, at.job))
    }

    /// A job, its run and its index in the run's jobs (which the store keeps, and finding
    /// it again by a walk of the run cost a scan of up to every job).
    pub fn job_at(&self, job_id: Uuid) -> Option<JobAt<'_>> {
        let (seq, index) = *self.jobs.get(&job_id)?;
        let run = self.runs.get(&seq)?;
        Some(JobAt {
            run,
            index,
            job: run.jobs.get(index)?,
        })
    }

    /// The run of a job, if the job is active here.
    pub fn run_of_job(&self, job_id: Uuid) -> Option<Uuid> {
        self.jobs
            .get(&job_id)
            .and_then(|(seq, _)| self.runs.get(seq))
            .map(|run| run.run_id)
    }

    /// Forgets final runs (they are persisted); returns their ids.
    pub fn evict_finished(&mut self) -> Vec<Uuid> {
        let finished: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, run)| run.is_final())
            .map(|(seq, _)| *seq)
            .collect();
        let mut ids = Vec::new();
        for seq in finished {
            if let Some(run) = self.runs.remove(&seq) {
                self.by_id.remove(&run.run_id);
                for (idx, job) in run.jobs.iter().enumerate() {
                    self.jobs.remove(&job.job.job_id);
                    self.followers.remove(&(seq, idx));
                }
                ids.push(run.run_id);
            }
        }
        ids
    }

    /// The earliest time after `now` a retry becomes due or a wait for an approval expires.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        let retry = self
            .eligible
            .iter()
            .filter_map(|job| self.job(*job))
            .map(|job| job.not_before_ms)
            .filter(|&at| at > now)
            .min();
        let expiry = self.awaiting.first().map(|(at, _)| (*at).max(now + 1));
        retry.into_iter().chain(expiry).min()
    }

    /// Records a rejected event as a final run with no jobs, so that redeliveries are recognised
    /// and `pipelines status` can say why.
    pub fn reject(&mut self, event: &ChangeEvent, reason: &str, now: u64) -> Effects {
        let mut run = self.new_run(event, &RunPlan::default(), now);
        // A refused event may carry anything, megabytes of it: what it leaves is cut to size,
        // and a sha that is none shows as written but cannot pass for one.
        run.repository = crate::report::shorten(&run.repository, MAX_REJECTED_NAME_CHARS);
        for sha in [&mut run.head_sha, &mut run.base_sha] {
            if !crate::policy::is_commit_sha(sha) {
                *sha = crate::report::shorten(sha, MAX_REJECTED_NAME_CHARS);
            }
        }
        run.rejected = Some(crate::report::shorten(reason, MAX_REASON_CHARS));
        let mut effects = Effects::default();
        effects.touch_run(run.run_id);
        self.insert(run);
        effects
    }

    /// Accepts a validated event: creates the run, supersedes an older run of the same pull
    /// request, and queues what may start.
    pub fn accept(&mut self, event: &ChangeEvent, plan: &RunPlan, now: u64) -> Effects {
        let mut effects = Effects::default();
        let run = self.new_run(event, plan, now);
        if let Some(pr) = run.pull_request {
            self.supersede(&run.repository, pr, run.run_id, now, &mut effects);
        }
        self.supersede_approvals(&run, now, &mut effects);
        let seq = run.seq;
        effects.touch_run(run.run_id);
        for job in &run.jobs {
            effects.touch(&job.job);
        }
        self.insert(run);
        self.propagate_run(seq, now, &mut effects);
        self.schedule(now, &mut effects);
        effects
    }

    fn new_run(&mut self, event: &ChangeEvent, plan: &RunPlan, now: u64) -> Run {
        let seq = self.next_seq;
        self.next_seq += 1;
        let position = |unit: &str| plan.units.iter().position(|p| p.unit == unit);
        let mut jobs: Vec<RunJob> = plan
            .units
            .iter()
            .map(|planned| {
                let waits = planned.gated && planned.action.mutates();
                let approval = planned.gated.then(|| {
                    if waits {
                        self.waiting_gate(now, Vec::new())
                    } else {
                        ApprovalGate::AfterMerge
                    }
                });
                RunJob {
                    job: Job {
                        job_id: job_id(event.id, &planned.unit, planned.action),
                        run_id: event.id,
                        repository: event.repository.clone(),
                        account: planned.account.clone(),
                        commit: event.head_sha.clone(),
                        unit: planned.unit.clone(),
                        action: planned.action,
                        source_commit: planned.action.is_destroy().then(|| event.base_sha.clone()),
                        attempt: 1,
                        timeout_secs: self
                            .settings
                            .timeouts
                            .get(&planned.account)
                            .copied()
                            .unwrap_or(0),
                        role: ExecutorRole::for_event(event.trigger.kind()),
                        policy_override: None,
                    },
                    requires: Vec::new(),
                    state: if waits {
                        UnitState::AwaitingApproval
                    } else {
                        UnitState::Pending
                    },
                    note: None,
                    not_before_ms: 0,
                    lease: None,
                    exit_code: None,
                    resource_changes: None,
                    policy: None,
                    duration_ms: None,
                    worker: None,
                    output_tail: None,
                    started_ms: None,
                    finished_ms: None,
                    log: None,
                    cancel_requested: None,
                    approval,
                    drift: None,
                }
            })
            .collect();
        for edge in &plan.edges {
            let (Some(unit), Some(dependency)) = (position(&edge.unit), position(&edge.depends_on))
            else {
                continue;
            };
            match (
                jobs[unit].job.action.is_destroy(),
                jobs[dependency].job.action.is_destroy(),
            ) {
                // Apply after what it reads.
                (false, false) => jobs[unit].requires.push(dependency),
                // Destroy what reads a unit before the unit itself.
                (true, true) => jobs[dependency].requires.push(unit),
                // Policy refuses a live unit depending on a deleted one; a deleted unit reading a
                // changed one needs nothing beyond the wait below.
                _ => {}
            }
        }
        let pull_request = match &event.trigger {
            Trigger::PullRequest { number, .. } => *number,
            Trigger::Push { .. } | Trigger::Drift { .. } => None,
        };
        Run {
            seq,
            run_id: event.id,
            repository: event.repository.clone(),
            event: event.trigger.kind(),
            head_sha: event.head_sha.clone(),
            base_sha: event.base_sha.clone(),
            pull_request,
            created_ms: now,
            rejected: None,
            cancelled: None,
            trace: None,
            jobs,
            open_non_destroy: 0,
        }
    }

    /// A gate waiting for an approver from `now`; `policy_sets` names the denies an approval
    /// would override.
    fn waiting_gate(&self, now: u64, policy_sets: Vec<String>) -> ApprovalGate {
        ApprovalGate::Waiting {
            approvers: self.settings.approvers.clone(),
            since_ms: now,
            expires_ms: now.saturating_add(self.settings.approval_timeout_ms),
            policy_sets,
        }
    }

    /// Adds a run and its jobs to the indexes, whatever their states.
    fn insert(&mut self, mut run: Run) {
        let seq = run.seq;
        self.by_id.insert(run.run_id, seq);
        run.open_non_destroy = run
            .jobs
            .iter()
            .filter(|j| !j.job.action.is_destroy() && !j.state.is_final())
            .count();
        for (idx, job) in run.jobs.iter().enumerate() {
            self.jobs.insert(job.job.job_id, (seq, idx));
            for &before in &job.requires {
                self.followers.entry((seq, before)).or_default().push(idx);
            }
            if job.job.action.mutates() && !job.state.is_final() {
                let key = (job.job.repository.clone(), job.job.unit.clone());
                self.unit_queues.entry(key).or_default().insert((seq, idx));
            }
            if matches!(job.state, UnitState::Queued | UnitState::Running) {
                self.slots.take(&job.job);
            }
            if let Some(expires) = job.approval_expiry() {
                self.awaiting.insert((expires, (seq, idx)));
            }
        }
        let eligible: Vec<usize> = (0..run.jobs.len())
            .filter(|&i| run.jobs[i].state == UnitState::Pending && dependencies_met(&run, i))
            .collect();
        self.runs.insert(seq, run);
        for idx in eligible {
            self.eligible.insert((seq, idx));
        }
    }

    fn job(&self, (seq, idx): JobRef) -> Option<&RunJob> {
        self.runs.get(&seq).and_then(|run| run.jobs.get(idx))
    }

    fn job_mut(&mut self, (seq, idx): JobRef) -> Option<&mut RunJob> {
        self.runs
            .get_mut(&seq)
            .and_then(|run| run.jobs.get_mut(idx))
    }

    /// Cancels what has not started in older runs of the same pull request.
    fn supersede(
        &mut self,
        repository: &str,
        pr: u64,
        newer: Uuid,
        now: u64,
        effects: &mut Effects,
    ) {
        let older: Vec<u64> = self
            .runs
            .iter()
            .filter(|(_, run)| {
                run.repository == repository
                    && run.pull_request == Some(pr)
                    && run.cancelled.is_none()
                    && !run.is_final()
            })
            .map(|(seq, _)| *seq)
            .collect();
        let reason = format!("superseded by run {newer}");
        for seq in older {
            let Some(run) = self.runs.get_mut(&seq) else {
                continue;
            };
            run.cancelled = Some(reason.clone());
            effects.touch_run(run.run_id);
            let waiting: Vec<usize> = (0..run.jobs.len())
                .filter(|&i| {
                    matches!(
                        run.jobs[i].state,
                        UnitState::Pending | UnitState::Queued | UnitState::AwaitingApproval
                    )
                })
                .collect();
            for idx in waiting {
                self.finalize(
                    (seq, idx),
                    UnitState::Cancelled(reason.clone()),
                    now,
                    effects,
                );
            }
        }
    }

    /// Moves a job to a final state and updates everything that depends on that.
    fn finalize(&mut self, job_ref: JobRef, state: UnitState, now: u64, effects: &mut Effects) {
        let Some(job) = self.job_mut(job_ref) else {
            return;
        };
        // A job a loop meant to end may have ended already (the loop's own first job skipped
        // it): ending it twice would count it twice, and let destroys start early.
        if job.state.is_final() {
            return;
        }
        job.finished_ms = Some(now);
        if let Some(expires) = job.approval_expiry() {
            self.awaiting.remove(&(expires, job_ref));
        }
        let Some(job) = self.job_mut(job_ref) else {
            return;
        };
        let was_in_flight = matches!(job.state, UnitState::Queued | UnitState::Running);
        job.state = state;
        job.lease = None;
        job.note = None;
        let key = (job.job.repository.clone(), job.job.unit.clone());
        let mutates = job.job.action.mutates();
        let destroy = job.job.action.is_destroy();
        effects.touch(&job.job);
        if was_in_flight {
            let job = job.job.clone();
            self.slots.leave(&job);
        }
        if mutates && let Some(queue) = self.unit_queues.get_mut(&key) {
            queue.remove(&job_ref);
            if queue.is_empty() {
                self.unit_queues.remove(&key);
            }
        }
        self.eligible.remove(&job_ref);
        self.propagate_from(job_ref, now, effects);
        if !destroy && let Some(run) = self.runs.get_mut(&job_ref.0) {
            run.open_non_destroy = run.open_non_destroy.saturating_sub(1);
            if run.open_non_destroy == 0 {
                // Everything else is final: the destroys may go.
                let destroys: Vec<usize> = (0..run.jobs.len())
                    .filter(|&i| run.jobs[i].job.action.is_destroy())
                    .collect();
                for idx in destroys {
                    self.settle_pending((job_ref.0, idx), now, effects);
                }
            }
        }
    }

    /// After `job_ref` reached a final state: skip or cancel the jobs that needed it, and make
    /// eligible those whose dependencies are now met.
    fn propagate_from(&mut self, job_ref: JobRef, now: u64, effects: &mut Effects) {
        let (seq, _) = job_ref;
        let followers = self.followers.get(&job_ref).cloned().unwrap_or_default();
        for follower in followers {
            self.settle_pending((seq, follower), now, effects);
        }
    }

    /// Settles every pending job of a run whose fate is already decided (used on creation).
    fn propagate_run(&mut self, seq: u64, now: u64, effects: &mut Effects) {
        let count = self.runs.get(&seq).map_or(0, |run| run.jobs.len());
        for idx in 0..count {
            self.settle_pending((seq, idx), now, effects);
        }
    }

    /// A pending job either can never run (skip or cancel it, naming why), may run (eligible),
    /// or still waits for its dependencies.
    fn settle_pending(&mut self, job_ref: JobRef, now: u64, effects: &mut Effects) {
        let (seq, idx) = job_ref;
        let Some(run) = self.runs.get(&seq) else {
            return;
        };
        let awaiting = run.jobs[idx].state == UnitState::AwaitingApproval;
        if run.jobs[idx].state != UnitState::Pending && !awaiting {
            return;
        }
        let blocked = run.jobs[idx]
            .requires
            .iter()
            .find_map(|&r| match &run.jobs[r].state {
                UnitState::Failed => Some(UnitState::Skipped(format!(
                    "{} {} failed",
                    run.jobs[r].job.unit, run.jobs[r].job.action
                ))),
                UnitState::Skipped(reason) => Some(UnitState::Skipped(reason.clone())),
                UnitState::Cancelled(reason) => Some(UnitState::Cancelled(reason.clone())),
                _ => None,
            });
        if let Some(state) = blocked {
            // No approval can make a job run whose dependency did not succeed.
            self.finalize(job_ref, state, now, effects);
        } else if !awaiting && dependencies_met(run, idx) {
            self.eligible.insert(job_ref);
        }
    }

    /// Queues every eligible job whose unit, account and backoff allow it, in arrival order
    /// within three tiers: the deploy branch's jobs (apply workers) first, so that no pull
    /// request's plans, queued before a merge, hold up its applies; then pull requests'
    /// plans; drift checks last: they yield to every other run's jobs, and take at most
    /// `drift_jobs_per_account` places in an account's queue, so whatever comes later is
    /// queued behind no more than those.
    fn schedule(&mut self, now: u64, effects: &mut Effects) {
        let (mut applies, mut plans, mut drift) = (Vec::new(), Vec::new(), Vec::new());
        for &job_ref in &self.eligible {
            match self.job(job_ref).map(|j| (j.job.role, j.job.action)) {
                Some((_, Action::DriftPlan)) => drift.push(job_ref),
                Some((ExecutorRole::Plan, _)) => plans.push(job_ref),
                _ => applies.push(job_ref),
            }
        }
        applies.append(&mut plans);
        applies.append(&mut drift);
        for job_ref in applies {
            let Some(job) = self.job(job_ref) else {
                continue;
            };
            let account = job.job.account.clone();
            let drift_limit = self.settings.drift_jobs_per_account;
            let note = if job.not_before_ms > now {
                Some(format!(
                    "retry {} of {} due in {} s",
                    job.job.attempt,
                    self.settings.max_attempts,
                    (job.not_before_ms - now).div_ceil(1000)
                ))
            } else if let Some(holder) = self.unit_holder(job_ref) {
                Some(format!(
                    "waiting for run {holder} to finish {}",
                    job.job.unit
                ))
            } else if job.job.action == Action::DriftPlan
                && Slots::of(&self.slots.drift, &account) >= drift_limit
            {
                // No count in the note: it would change, and be written, on every slot freed.
                Some(format!(
                    "waiting for a drift slot of account {account} ({drift_limit} at once, \
                     after other runs' jobs)"
                ))
            } else {
                let cap = self.settings.caps.get(&account).copied().unwrap_or(0);
                let busy = Slots::of(&self.slots.all, &account);
                let plan_slots = self.settings.plan_slots(&account);
                if cap > 0 && busy >= cap {
                    Some(format!(
                        "account {account} has {busy} of {cap} jobs in flight"
                    ))
                } else if let Some(plan_slots) = plan_slots
                    && job.job.role == ExecutorRole::Plan
                    && Slots::of(&self.slots.plans, &account) >= plan_slots
                {
                    // No count in the note, as for drift: it would be written on every change.
                    Some(format!(
                        "waiting for a plan slot of account {account} (the deploy branch's \
                         jobs keep {} of its {cap})",
                        cap - plan_slots
                    ))
                } else {
                    None
                }
            };
            let Some(job) = self.job_mut(job_ref) else {
                continue;
            };
            if note.is_some() {
                if job.note != note {
                    job.note = note;
                    effects.touch(&job.job);
                }
                continue;
            }
            job.state = UnitState::Queued;
            job.note = None;
            let queued = job.job.clone();
            effects.touch(&queued);
            self.slots.take(&queued);
            effects.publish.push(queued);
            self.eligible.remove(&job_ref);
        }
    }

    /// The drift run of `repository` not finished yet, if there is one: there is at most one.
    pub fn active_drift_run(&self, repository: &str) -> Option<Uuid> {
        self.runs
            .values()
            .find(|run| {
                run.event == EventKind::Drift
                    && run.repository == repository
                    && run.rejected.is_none()
                    && !run.is_final()
            })
            .map(|run| run.run_id)
    }

    /// For an apply or destroy, the run holding its unit, if an earlier one does.
    fn unit_holder(&self, job_ref: JobRef) -> Option<Uuid> {
        let job = self.job(job_ref)?;
        if !job.job.action.mutates() {
            return None;
        }
        let queue = self
            .unit_queues
            .get(&(job.job.repository.clone(), job.job.unit.clone()))?;
        let first = *queue.iter().next()?;
        (first != job_ref)
            .then(|| self.runs.get(&first.0).map(|run| run.run_id))
            .flatten()
    }

    /// Retries whose backoff ended, waits for an approval that expired, and anything else time
    /// unblocks.
    pub fn tick(&mut self, now: u64) -> Effects {
        let mut effects = Effects::default();
        let expired: Vec<JobRef> = self
            .awaiting
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, job_ref)| *job_ref)
            .collect();
        let timeout = human_duration(self.settings.approval_timeout_ms);
        for job_ref in expired {
            let state = if self
                .job(job_ref)
                .is_some_and(RunJob::awaits_policy_override)
            {
                // Nobody overrode the denies: they stand.
                UnitState::Failed
            } else {
                let reason = format!("approval expired: nobody approved it within {timeout}");
                UnitState::Cancelled(reason)
            };
            self.finalize(job_ref, state, now, &mut effects);
        }
        self.schedule(now, &mut effects);
        effects
    }

    /// An approver's verdict on the run's jobs awaiting approval that `scope` names. Approved
    /// jobs wait for their dependencies as any job; rejected ones are cancelled with the
    /// reason, and so are the jobs that need them. A job waiting because a policy denied its
    /// plan is approved (its denies overridden) only when `overrides`: the approver is one of
    /// `[approvals] users`, whom `override = "approvers"` names; others leave it waiting.
    /// `Err` says why nothing matched.
    #[allow(clippy::too_many_arguments)] // Each is one fact of the order; a struct would only rename them.
    pub fn decide_approval(
        &mut self,
        run_id: Uuid,
        scope: ApprovalScope<'_>,
        verdict: ApprovalVerdict,
        by: &str,
        reason: &str,
        overrides: bool,
        now: u64,
    ) -> Result<(usize, Effects), String> {
        let mut effects = Effects::default();
        let Some(&seq) = self.by_id.get(&run_id) else {
            return Err(format!("run {run_id} is not active"));
        };
        let Some(run) = self.runs.get(&seq) else {
            return Err(format!("run {run_id} is not active"));
        };
        let waits = |i: usize| run.jobs[i].state == UnitState::AwaitingApproval;
        let awaiting: Vec<usize> = match scope {
            ApprovalScope::Run => (0..run.jobs.len()).filter(|&i| waits(i)).collect(),
            ApprovalScope::Unit(unit) => {
                let matching: Vec<usize> = (0..run.jobs.len())
                    .filter(|&i| run.jobs[i].job.unit == unit)
                    .collect();
                match matching.first() {
                    None => return Err(format!("run {run_id} has no job for unit {unit:?}")),
                    Some(&first) if !matching.iter().any(|&i| waits(i)) => {
                        return Err(format!(
                            "unit {unit:?} of run {run_id} is not awaiting approval (it is {})",
                            run.jobs[first].state.as_str()
                        ));
                    }
                    Some(_) => matching.into_iter().filter(|&i| waits(i)).collect(),
                }
            }
            ApprovalScope::Jobs(shown) => {
                let ids: HashSet<Uuid> = shown.iter().map(|job| job.job_id).collect();
                let chosen: Vec<usize> = (0..run.jobs.len())
                    .filter(|&i| ids.contains(&run.jobs[i].job.job_id))
                    .collect();
                if chosen.is_empty() {
                    return Err(format!("none of the chosen jobs is a job of run {run_id}"));
                }
                let shown: HashSet<&ShownJob> = shown.iter().collect();
                let still: Vec<usize> = chosen
                    .iter()
                    .copied()
                    .filter(|&i| {
                        ShownJob::current(&run.jobs[i]).is_some_and(|now| shown.contains(&now))
                    })
                    .collect();
                if still.is_empty() {
                    return Err(format!(
                        "none of the {} chosen job(s) of run {run_id} is still in the wait the \
                         page showed; reload the run's page",
                        chosen.len()
                    ));
                }
                still
            }
        };
        if awaiting.is_empty() {
            return Err(format!("run {run_id} has no job awaiting approval"));
        }
        let awaiting: Vec<usize> = match verdict {
            ApprovalVerdict::Approve if !overrides => awaiting
                .into_iter()
                .filter(|&i| !run.jobs[i].awaits_policy_override())
                .collect(),
            _ => awaiting,
        };
        if awaiting.is_empty() {
            return Err(format!(
                "{} of run {run_id} waits because a policy denied its plan: only the approvers \
                 of approvals.users may override a policy, with `pipelines approve`",
                match scope {
                    ApprovalScope::Unit(unit) => format!("unit {unit:?}"),
                    ApprovalScope::Run => "every job awaiting approval".to_owned(),
                    ApprovalScope::Jobs(_) => "every chosen job".to_owned(),
                }
            ));
        }
        for &idx in &awaiting {
            let job_ref = (seq, idx);
            match verdict {
                ApprovalVerdict::Approve => {
                    let Some(job) = self.job(job_ref) else {
                        continue;
                    };
                    if let Some(expires) = job.approval_expiry() {
                        self.awaiting.remove(&(expires, job_ref));
                    }
                    let Some(job) = self.job_mut(job_ref) else {
                        continue;
                    };
                    if job.awaits_policy_override() {
                        // Planned again, on a new attempt, with the denies let through.
                        job.job.attempt += 1;
                        job.job.policy_override = Some(format!("{by}: {reason}"));
                        job.finished_ms = None;
                    }
                    job.state = UnitState::Pending;
                    job.approval = Some(ApprovalGate::Approved {
                        by: by.to_owned(),
                        reason: reason.to_owned(),
                        at_ms: now,
                    });
                    effects.touch(&job.job);
                    self.settle_pending(job_ref, now, &mut effects);
                }
                ApprovalVerdict::Reject => {
                    let state = if self
                        .job(job_ref)
                        .is_some_and(RunJob::awaits_policy_override)
                    {
                        // The denies stand.
                        UnitState::Failed
                    } else {
                        UnitState::Cancelled(format!("rejected by {by}: {reason}"))
                    };
                    self.finalize(job_ref, state, now, &mut effects);
                }
            }
        }
        self.schedule(now, &mut effects);
        Ok((awaiting.len(), effects))
    }

    /// A push's apply or destroy of a unit supersedes older jobs of that unit still awaiting
    /// approval: the newer commit is what an approver should look at.
    fn supersede_approvals(&mut self, newer: &Run, now: u64, effects: &mut Effects) {
        let mut older = Vec::new();
        for job in newer.jobs.iter().filter(|job| job.job.action.mutates()) {
            let key = (job.job.repository.clone(), job.job.unit.clone());
            if let Some(queue) = self.unit_queues.get(&key) {
                older.extend(queue.iter().copied().filter(|&job_ref| {
                    self.job(job_ref)
                        .is_some_and(|job| job.state == UnitState::AwaitingApproval)
                }));
            }
        }
        let reason = format!(
            "superseded by run {}, a newer push of this unit",
            newer.run_id
        );
        for job_ref in older {
            self.finalize(job_ref, UnitState::Cancelled(reason.clone()), now, effects);
        }
    }

    /// A worker asks to start a job. Granted at most once per (job, attempt) while the holder's
    /// lease lasts; a redelivered job (its holder's connection is gone) or an expired lease may
    /// be taken over. `reply_to` is where the worker listens (for a later stop order).
    pub fn claim(
        &mut self,
        job_id: Uuid,
        attempt: u32,
        worker: &str,
        redelivered: bool,
        reply_to: Option<&str>,
        now: u64,
    ) -> (ClaimVerdict, Effects) {
        let mut effects = Effects::default();
        let deny = |reason: String, retry: bool| ClaimVerdict::Denied { reason, retry };
        let Some(&job_ref) = self.jobs.get(&job_id) else {
            return (
                deny("the job is finished or unknown".into(), false),
                effects,
            );
        };
        let lease_ms = self.settings.lease_ms;
        let Some(job) = self.job_mut(job_ref) else {
            return (deny("the job is unknown".into(), false), effects);
        };
        if attempt != job.job.attempt {
            let reason = format!(
                "attempt {attempt} is stale; the job is at attempt {}",
                job.job.attempt
            );
            return (deny(reason, false), effects);
        }
        match (&job.state, &job.lease) {
            (UnitState::Queued, _) => {}
            // The holder asking again: its answer was lost.
            (UnitState::Running, Some(lease)) if lease.worker == worker => {}
            (UnitState::Running, Some(lease)) if lease.until_ms > now => {
                // Never two holders: a redelivered copy waits until the holder's heartbeats
                // stop (it vanished) or the job ends; a fresh copy is a duplicate publish, and
                // the holder still has the original.
                let reason = if redelivered {
                    format!(
                        "running on {} (lease {} s more); ask again",
                        lease.worker,
                        (lease.until_ms - now).div_ceil(1000)
                    )
                } else {
                    format!(
                        "already running on {}: this delivery is a duplicate",
                        lease.worker
                    )
                };
                return (deny(reason, redelivered), effects);
            }
            (UnitState::Running, _) => {
                if let Some(reason) = job.cancel_requested.clone() {
                    // Told to stop, then silent: the holder is gone, and so is the job.
                    self.finalize(job_ref, UnitState::Cancelled(reason), now, &mut effects);
                    self.schedule(now, &mut effects);
                    return (deny("the job is already cancelled".into(), false), effects);
                }
                // The holder stopped sending heartbeats: take over.
            }
            (state, _) if state.is_final() => {
                return (
                    deny(format!("the job is already {}", state.as_str()), false),
                    effects,
                );
            }
            (state, _) => {
                return (
                    deny(format!("the job is {}, not queued", state.as_str()), false),
                    effects,
                );
            }
        }
        let Some(job) = self.job_mut(job_ref) else {
            return (deny("the job is unknown".into(), false), effects);
        };
        job.state = UnitState::Running;
        job.lease = Some(Lease {
            worker: worker.to_owned(),
            until_ms: now + lease_ms,
            reply_to: reply_to.map(str::to_owned),
        });
        job.worker = Some(worker.to_owned());
        job.started_ms = Some(now);
        effects.touch(&job.job);
        (
            ClaimVerdict::Granted {
                lease_secs: lease_ms / 1000,
            },
            effects,
        )
    }

    /// The holder gives a job back unfinished (it is shutting down): it is queued again, for
    /// any worker, at the same attempt. A job told to stop is cancelled instead.
    pub fn release(&mut self, job_id: Uuid, attempt: u32, worker: &str, now: u64) -> Effects {
        let mut effects = Effects::default();
        let Some(job_ref) = self.held_by(job_id, attempt, worker) else {
            return effects;
        };
        let Some(job) = self.job_mut(job_ref) else {
            return effects;
        };
        if let Some(reason) = job.cancel_requested.clone() {
            self.finalize(job_ref, UnitState::Cancelled(reason), now, &mut effects);
            self.schedule(now, &mut effects);
            return effects;
        }
        // Still in flight: its message goes back to the queue, so it keeps its account slot.
        job.state = UnitState::Queued;
        job.lease = None;
        job.note = Some(format!("given back by {worker}"));
        effects.touch(&job.job);
        effects
    }

    /// Cancels a run: jobs not started are cancelled at once; running jobs are told to stop,
    /// and are cancelled when their worker reports (or vanishes).
    pub fn cancel_run(&mut self, run_id: Uuid, reason: &str, now: u64) -> Effects {
        let mut effects = Effects::default();
        let Some(&seq) = self.by_id.get(&run_id) else {
            return effects;
        };
        let Some(run) = self.runs.get_mut(&seq) else {
            return effects;
        };
        if run.cancelled.is_none() {
            run.cancelled = Some(reason.to_owned());
        }
        effects.touch_run(run_id);
        let mut waiting = Vec::new();
        for (idx, job) in run.jobs.iter_mut().enumerate() {
            match job.state {
                UnitState::Pending | UnitState::Queued | UnitState::AwaitingApproval => {
                    waiting.push(idx);
                }
                UnitState::Running if job.cancel_requested.is_none() => {
                    job.cancel_requested = Some(reason.to_owned());
                    job.note = Some(format!("stopping: {reason}"));
                    effects.touch(&job.job);
                    if let Some(queue) = job.lease.as_ref().and_then(|lease| lease.reply_to.clone())
                    {
                        let order = CancelJob {
                            job_id: job.job.job_id,
                            attempt: job.job.attempt,
                            reason: reason.to_owned(),
                        };
                        effects.stop.push((queue, order));
                    }
                }
                _ => {}
            }
        }
        for idx in waiting {
            self.finalize(
                (seq, idx),
                UnitState::Cancelled(reason.to_owned()),
                now,
                &mut effects,
            );
        }
        self.schedule(now, &mut effects);
        effects
    }

    /// The job, when `worker` holds its running `attempt`: only the holder's reports count.
    fn held_by(&self, job_id: Uuid, attempt: u32, worker: &str) -> Option<JobRef> {
        let job_ref = *self.jobs.get(&job_id)?;
        let job = self.job(job_ref)?;
        let holds = job
            .lease
            .as_ref()
            .is_some_and(|lease| lease.worker == worker);
        (job.state == UnitState::Running && job.job.attempt == attempt && holds).then_some(job_ref)
    }

    /// A heartbeat renews the holder's lease. Returns whether anything changed.
    pub fn heartbeat(&mut self, job_id: Uuid, attempt: u32, worker: &str, now: u64) -> bool {
        let lease_ms = self.settings.lease_ms;
        let Some(&job_ref) = self.jobs.get(&job_id) else {
            return false;
        };
        let Some(job) = self.job_mut(job_ref) else {
            return false;
        };
        match &mut job.lease {
            Some(lease)
                if job.job.attempt == attempt
                    && lease.worker == worker
                    && job.state == UnitState::Running =>
            {
                lease.until_ms = now + lease_ms;
                true
            }
            _ => false,
        }
    }

    /// A worker reports the outcome of its attempt. Reports of stale attempts, of workers that
    /// do not hold the job, and of final jobs change nothing.
    pub fn finish(
        &mut self,
        job_id: Uuid,
        attempt: u32,
        worker: &str,
        outcome: &JobOutcome,
        now: u64,
    ) -> Effects {
        let mut effects = Effects::default();
        let Some(&job_ref) = self.jobs.get(&job_id) else {
            return effects;
        };
        let max_attempts = self.settings.max_attempts;
        let backoff_ms = self.settings.backoff_ms;
        let anyone_approves = !self.settings.approvers.is_empty();
        // A policy's verdict is the same on every attempt: never retried.
        let denied = outcome.policy.as_ref().is_some_and(PolicyReport::blocks);
        let retryable = outcome.status == JobStatus::Failed
            && !denied
            && self
                .settings
                .retry_patterns
                .iter()
                .any(|p| p.is_match(&outcome.output));
        if self.held_by(job_id, attempt, worker).is_none() {
            return effects;
        }
        let Some(job) = self.job_mut(job_ref) else {
            return effects;
        };
        job.exit_code = outcome.exit_code;
        job.resource_changes = outcome.resource_changes;
        job.policy = outcome.policy.clone();
        job.drift = outcome.drift.clone();
        job.duration_ms = Some(outcome.duration_ms);
        job.worker = Some(worker.to_owned());
        job.log = outcome.log.clone();
        if outcome.status != JobStatus::Succeeded {
            job.output_tail = Some(tail(&outcome.output, OUTPUT_TAIL_BYTES).to_owned());
        }
        let overridable = denied
            && job.job.action.mutates()
            && job.cancel_requested.is_none()
            && anyone_approves
            && outcome
                .policy
                .as_ref()
                .is_some_and(PolicyReport::overridable);
        if let Some(reason) = job.cancel_requested.clone()
            && outcome.status != JobStatus::Succeeded
        {
            // Told to stop: however it ended short of success, it ended because of that.
            self.finalize(job_ref, UnitState::Cancelled(reason), now, &mut effects);
        } else if overridable {
            // Denied by sets an approver may override: it waits for one, holding its unit,
            // out of its account's slots.
            let sets = outcome
                .policy
                .as_ref()
                .map(PolicyReport::blocking_sets)
                .unwrap_or_default();
            let gate = self.waiting_gate(now, sets);
            let Some(job) = self.job_mut(job_ref) else {
                return effects;
            };
            job.state = UnitState::AwaitingApproval;
            job.approval = Some(gate);
            job.lease = None;
            let expires = job.approval_expiry();
            let left = job.job.clone();
            effects.touch(&job.job);
            self.slots.leave(&left);
            self.awaiting.extend(expires.map(|at| (at, job_ref)));
        } else if retryable && attempt < max_attempts && job.cancel_requested.is_none() {
            // Back to pending with the next attempt: it leaves the account's slots and waits.
            let delay = backoff_ms.saturating_mul(1 << (attempt - 1).min(16));
            job.job.attempt += 1;
            job.state = UnitState::Pending;
            job.lease = None;
            job.not_before_ms = now + delay;
            job.note = Some(format!(
                "retry {} of {max_attempts} due in {} s",
                job.job.attempt,
                delay.div_ceil(1000)
            ));
            let left = job.job.clone();
            effects.touch(&job.job);
            self.slots.leave(&left);
            self.eligible.insert(job_ref);
        } else {
            let state = match outcome.status {
                JobStatus::Succeeded => UnitState::Succeeded,
                // A refusal is a failure that no retry can fix.
                JobStatus::Failed | JobStatus::Refused => UnitState::Failed,
                JobStatus::Cancelled => UnitState::Cancelled("stopped by its worker".into()),
            };
            self.finalize(job_ref, state, now, &mut effects);
        }
        self.schedule(now, &mut effects);
        effects
    }
}

/// Jobs queued or running, per account: all of them, and among them those of plan workers and
/// the drift checks.
#[derive(Debug, Default)]
struct Slots {
    all: HashMap<String, u32>,
    plans: HashMap<String, u32>,
    drift: HashMap<String, u32>,
}

impl Slots {
    /// A job becomes queued: it takes a slot of its account (and a plan or drift slot).
    fn take(&mut self, job: &Job) {
        self.count(job, |count| count + 1);
    }

    /// A job stops being queued or running: it frees what [`Slots::take`] took.
    fn leave(&mut self, job: &Job) {
        self.count(job, |count| count.saturating_sub(1));
    }

    fn count(&mut self, job: &Job, change: impl Fn(u32) -> u32) {
        let mut counts = [Some(&mut self.all), None, None];
        if job.role == ExecutorRole::Plan {
            counts[1] = Some(&mut self.plans);
        }
        if job.action == Action::DriftPlan {
            counts[2] = Some(&mut self.drift);
        }
        for count in counts.into_iter().flatten() {
            // Looked up before inserting: the account's name is cloned once per account.
            match count.get_mut(&job.account) {
                Some(n) => *n = change(*n),
                None => {
                    count.insert(job.account.clone(), change(0));
                }
            }
        }
    }

    fn of(counts: &HashMap<String, u32>, account: &str) -> u32 {
        counts.get(account).copied().unwrap_or(0)
    }
}

/// Whether every job `idx` requires has succeeded and, for a destroy, every other job is final.
fn dependencies_met(run: &Run, idx: usize) -> bool {
    let job = &run.jobs[idx];
    job.requires
        .iter()
        .all(|&r| run.jobs[r].state == UnitState::Succeeded)
        && (!job.job.action.is_destroy() || run.open_non_destroy == 0)
}

/// `24h`, `90m`, `45s`: a timeout as the config would write it.
fn human_duration(ms: u64) -> String {
    let secs = ms / 1000;
    if secs > 0 && secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs > 0 && secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

#[cfg(test)]
mod tests;
