//! One decision per message kind: the dispatcher's state and a decoded message in, the changed
//! state and its effects out.
//!
//! The service decodes a delivery, asks the store what it knows about a run or job that is no
//! longer active (only then: [`Core::is_active_run`], [`Core::is_active_job`]), calls the
//! `decide_*` function of the message's kind, and applies the [`Decision`]: the scheduler's
//! [`Effects`] go into one transaction with the batch's others ([`Core::persist`]), the claim
//! answer to the worker, the verdict to the delivery, the [`Outcome`] to logs and metrics.
//! Nothing here reads a clock: `now` is an input.

use std::borrow::Cow;

use config::{AccountRouter, ApprovalGates, Config};
use proto_types::{
    Action, ApprovalOrder, ApprovalVerdict, CancelRun, ChangeEvent, ClaimReply, ClaimVerdict,
    EventKind, JobEvent, JobEventKind, JobOutcome, JobStatus, PolicyReport, RunState, Trigger,
    UnitState,
};
use uuid::Uuid;

use crate::identity::{self, Identity};
use crate::pacing::StatusPacer;
use crate::policy;
use crate::scheduler::{ApprovalScope, Effects, JobAt, Run, RunJob, Scheduler, Settings, ShownJob};

/// How much of each finished job's output the database keeps for reports (the end of it).
pub const KEPT_OUTPUT_BYTES: usize = 64 * 1024;
/// The longest approval reason kept, in characters.
pub const MAX_APPROVAL_REASON_CHARS: usize = 1_000;
/// A running run's status snapshot goes out at most this often (its final one at once).
pub const STATUS_INTERVAL_MS: u64 = 500;

/// What a job event may carry at most, far above what an executor sends (it bounds what it
/// makes): each is kept in the run database and repeated in every status of the run, so only
/// a sender that is not one of our executors (a plan that escaped its tool user, holding the
/// executor's login) meets these, and its event is dead-lettered.
/// Twice what a worker takes as its name ([`proto_types::MAX_WORKER_NAME_BYTES`]).
const MAX_WORKER_NAME_BYTES: usize = 2 * proto_types::MAX_WORKER_NAME_BYTES;
/// A give-back's reason, a finished job's log place. (A policy report's text is fitted, and
/// its sets bounded by [`PolicyReport::MAX_SETS`].)
const MAX_EVENT_TEXT_BYTES: usize = 8 * 1024;
/// One resource a drift check lists, and its digest.
const MAX_DRIFT_TEXT_BYTES: usize = 4 * 1024;

/// `outcome`, its policy report cut to [`PolicyReport::MAX_TEXT_BYTES`] when it is larger
/// (a copy only then).
fn fitted(outcome: &JobOutcome) -> Cow<'_, JobOutcome> {
    match &outcome.policy {
        Some(report) if report.text_bytes() > PolicyReport::MAX_TEXT_BYTES => {
            let mut smaller = outcome.clone();
            if let Some(report) = &mut smaller.policy {
                report.fit(PolicyReport::MAX_TEXT_BYTES);
            }
            Cow::Owned(smaller)
        }
        _ => Cow::Borrowed(outcome),
    }
}

/// Why `event` is larger than any executor's, if it is.
fn oversized(event: &JobEvent) -> Option<String> {
    let over = |what: &str, bytes: usize, max: usize| {
        (bytes > max)
            .then(|| format!("its {what} takes {bytes} bytes, more than an executor's {max}"))
    };
    let text = |text: &Option<String>| text.as_ref().map_or(0, String::len);
    if let Some(why) = over("worker name", event.worker.len(), MAX_WORKER_NAME_BYTES) {
        return Some(why);
    }
    match &event.kind {
        JobEventKind::Released { reason } => over("reason", reason.len(), MAX_EVENT_TEXT_BYTES),
        JobEventKind::Finished(outcome) => {
            // A report's text is fitted rather than refused ([`PolicyReport::fit`]): several
            // full sets are honest.
            let sets = outcome
                .policy
                .as_ref()
                .map_or(0, |report| report.sets.len());
            let drift = outcome.drift.as_ref();
            let resources = drift.map_or(0, |found| found.resources.len());
            let longest_resource = drift
                .and_then(|found| found.resources.iter().map(String::len).max())
                .unwrap_or(0);
            over("log place", text(&outcome.log), MAX_EVENT_TEXT_BYTES)
                .or_else(|| {
                    (sets > PolicyReport::MAX_SETS).then(|| {
                        format!(
                            "its policy report names {sets} sets, more than {}",
                            PolicyReport::MAX_SETS
                        )
                    })
                })
                .or_else(|| {
                    (resources > proto_types::DriftFindings::MAX_RESOURCES).then(|| {
                        format!(
                            "its drift findings list {resources} resources, more than an executor's {}",
                            proto_types::DriftFindings::MAX_RESOURCES
                        )
                    })
                })
                .or_else(|| over("longest drift resource", longest_resource, MAX_DRIFT_TEXT_BYTES))
                .or_else(|| {
                    over(
                        "drift digest",
                        drift.map_or(0, |found| found.digest.len()),
                        MAX_DRIFT_TEXT_BYTES,
                    )
                })
        }
        JobEventKind::Started { .. } | JobEventKind::Heartbeat => None,
    }
}

/// What the run database knows of a run that is not active (final, or never seen: `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownRun {
    /// Why its event was rejected, if it was.
    pub rejected: Option<String>,
}

/// What the run database knows of a job that is not active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownJob {
    /// Its final state, as stored (`succeeded`, `failed`, ...).
    pub state: String,
}

/// What a pull request event its token did not vouch for leaves as its rejected run: neither
/// its pull request's number nor its commits, so that nothing is reported in the name of a
/// pull request it may not speak for (its reason names them; the dead-letter queue keeps the
/// message as sent).
fn unvouched(event: &ChangeEvent) -> ChangeEvent {
    let mut trigger = event.trigger.clone();
    if let Trigger::PullRequest { number, .. } = &mut trigger {
        *number = None;
    }
    ChangeEvent {
        id: event.id,
        repository: event.repository.clone(),
        trigger,
        base_sha: String::new(),
        head_sha: String::new(),
        changes: Vec::new(),
        dependencies: Vec::new(),
    }
}

/// How a delivery is settled once its decision is committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Verdict {
    #[default]
    Ack,
    /// Dead-lettered with this reason: the message can never be handled.
    DeadLetter(String),
}

/// What a decision amounted to, for logs and metrics (the edge's only inputs for both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    RunAccepted {
        jobs: usize,
    },
    RunRejected {
        reason: String,
    },
    /// A change event from a broker user not in `dispatcher.orchestrator_users`.
    SubmitterRefused {
        user: String,
    },
    /// A change event whose run exists already: settled as its first delivery was.
    EventRedelivered,
    ClaimGranted {
        redelivered: bool,
    },
    ClaimDenied {
        reason: String,
        retry: bool,
    },
    /// A claim without a reply queue of the allowed shape.
    ClaimWithoutReplyQueue,
    HeartbeatRenewed,
    /// A heartbeat from a worker that does not hold the job (or of a job no longer active).
    HeartbeatIgnored,
    Released {
        reason: String,
    },
    /// The holder's report ended the job (or sent it back to wait for a retry).
    JobReported {
        action: Action,
        status: JobStatus,
        exit_code: Option<i32>,
        duration_ms: u64,
        /// The job's state after the report, when it is final.
        finished: Option<UnitState>,
    },
    /// A report of a stale attempt or of a former holder.
    StaleReport,
    /// A report for a job that ended already.
    LateReport,
    /// A job event naming a run the job does not belong to, or a job nobody knows.
    UnknownJob,
    /// A job event carrying more than any executor sends (a worker name, a log place, a
    /// policy report or drift findings): dead-lettered, nothing of it kept.
    OversizedJobEvent,
    /// A job event from a broker user other than the executor user of the job's account and
    /// role (`dispatcher.executor_users`).
    JobEventSenderRefused {
        user: String,
        expected: String,
    },
    CancelRequested {
        reason: String,
    },
    CancelOfEndedRun,
    CancelOfUnknownRun,
    /// A cancel from a web user not in `[web] operators`.
    CancellerRefused {
        user: String,
    },
    /// An approval order from a broker user not in `[approvals] users`, or from a web user
    /// not in `[web] approvers`.
    ApproverRefused {
        user: String,
    },
    /// An approver's verdict, applied to this many jobs awaiting approval.
    ApprovalApplied {
        verdict: ApprovalVerdict,
        by: String,
        jobs: usize,
    },
    /// An approver's verdict that found no job awaiting approval (why, naming the unit).
    ApprovalMatchedNothing {
        reason: String,
    },
}

/// Everything one message decided.
#[derive(Debug, Default)]
pub struct Decision {
    /// What changed in the scheduler: jobs to publish, runs and jobs to persist, stop orders.
    pub effects: Effects,
    /// How to settle the delivery.
    pub verdict: Verdict,
    /// The answer to a claim: the worker's reply queue and the reply.
    pub reply: Option<(String, ClaimReply)>,
    /// A finished job's output, kept for reports (its end).
    pub output: Option<(Uuid, String)>,
    pub outcome: Option<Outcome>,
}

impl Decision {
    fn new(verdict: Verdict, outcome: Outcome) -> Decision {
        Decision {
            verdict,
            outcome: Some(outcome),
            ..Decision::default()
        }
    }

    fn with_effects(mut self, effects: Effects) -> Decision {
        self.effects = effects;
        self
    }
}

/// What a batch's transaction writes: the runs and jobs that changed, the jobs to publish
/// (with their run's trace) and the runs whose status snapshot goes out now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Persist {
    /// Each changed run with its state after the batch: worked out once here, because it
    /// reads every job of the run, and the store and the metrics both need it.
    pub runs: Vec<(Uuid, RunState)>,
    pub jobs: Vec<Uuid>,
    pub statuses: Vec<Uuid>,
}

impl Persist {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.jobs.is_empty() && self.statuses.is_empty()
    }
}

/// How the orders of the web page's users name them: `web:<user>`.
pub const WEB_REQUESTER_PREFIX: &str = "web:";

/// Who sent an approval order, as the edge that received it vouches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Approver<'a> {
    /// A message on the control queue: its broker-validated `user_id`.
    Broker(Option<&'a str>),
    /// A user signed in to this dispatcher's web page, handed over in process (never through
    /// the broker, so no broker user can speak for the page), with the jobs they chose among
    /// those the page showed waiting: the verdict is for those alone, whatever the order's
    /// unit says.
    Web {
        user: &'a str,
        chosen: &'a [ShownJob],
    },
}

/// The dispatcher's state: the policy it judges by, the scheduler and the status pacing.
#[derive(Debug)]
pub struct Core {
    config: Config,
    router: AccountRouter,
    gates: ApprovalGates,
    scheduler: Scheduler,
    pacer: StatusPacer,
}

impl Core {
    /// The state a dispatcher starts from: the active runs the store holds, leases extended
    /// from `now`.
    pub fn restore(config: Config, runs: Vec<Run>, next_seq: u64, now: u64) -> Core {
        let settings = Settings::from_config(&config);
        Core {
            router: AccountRouter::new(&config),
            gates: ApprovalGates::new(&config),
            scheduler: Scheduler::restore(settings, runs, next_seq, now),
            pacer: StatusPacer::new(STATUS_INTERVAL_MS),
            config,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// Whether a run is active here; if not, its message needs the store's [`KnownRun`].
    pub fn is_active_run(&self, run_id: Uuid) -> bool {
        self.scheduler.run(run_id).is_some()
    }

    /// Whether a job is active here; if not, its event needs the store's [`KnownJob`].
    pub fn is_active_job(&self, job_id: Uuid) -> bool {
        self.scheduler.contains_job(job_id)
    }

    /// Records the trace a run belongs to (the span that accepted it).
    pub fn set_trace(&mut self, run_id: Uuid, trace: Option<String>) {
        self.scheduler.set_trace(run_id, trace);
    }

    /// A change event: a new run, a rejection, or a redelivery of one of those. `user_id` is
    /// the broker-validated publisher; `known` the store's answer when the run is not active.
    pub fn decide_change(
        &mut self,
        event: &ChangeEvent,
        user_id: Option<&str>,
        identity: &Identity,
        known: Option<KnownRun>,
        now: u64,
    ) -> Decision {
        let settings = &self.config.dispatcher;
        let (allowed, deploy) = (
            &settings.orchestrator_users,
            &settings.deploy_orchestrator_users,
        );
        // The dispatcher's own user submits the scheduled drift runs.
        let own = config::url_user(self.config.first_broker_node());
        let listed = |users: &[String], user: &str| users.iter().any(|u| u == user);
        let from = user_id.unwrap_or("(no user_id)");
        let refused = |reason: String| {
            Decision::new(
                Verdict::DeadLetter(reason),
                Outcome::SubmitterRefused {
                    user: from.to_owned(),
                },
            )
        };
        let submits =
            |user: &str| listed(allowed, user) || listed(deploy, user) || own == Some(user);
        if !allowed.is_empty() && !user_id.is_some_and(submits) {
            let users: Vec<&str> = allowed.iter().chain(deploy).map(String::as_str).collect();
            return refused(format!(
                "change event from broker user {from:?}: only {} may submit runs",
                users.join(", ")
            ));
        }
        // Pushes and drift checks are about the deploy branch: only its own workflow's login,
        // and the dispatcher's own for its `[[drift]]` schedules.
        let kind = event.trigger.kind();
        let may_send =
            |user: &str| listed(deploy, user) || (kind == EventKind::Drift && own == Some(user));
        if matches!(kind, EventKind::Push | EventKind::Drift)
            && !deploy.is_empty()
            && !user_id.is_some_and(may_send)
        {
            return refused(format!(
                "{} event from broker user {from:?}: only {} may submit runs of the deploy \
                 branch (dispatcher.deploy_orchestrator_users)",
                event.trigger.kind(),
                deploy.join(", ")
            ));
        }
        // A redelivery (we crashed before the ack, or the publisher sent it twice): the run
        // exists, so settle the message the way the first delivery was settled.
        let mut effects = Effects::default();
        let rejected = match self.scheduler.run(event.id) {
            Some(run) => {
                effects.changed_runs.insert(event.id);
                Some(run.rejected.clone())
            }
            None => known.map(|known| known.rejected),
        };
        if let Some(rejected) = rejected {
            let verdict = match rejected {
                Some(reason) => Verdict::DeadLetter(format!("rejected: {reason}")),
                None => Verdict::Ack,
            };
            return Decision::new(verdict, Outcome::EventRedelivered).with_effects(effects);
        }
        // After the redelivery check: a run accepted once is not refused for a token that
        // expired while its event waited to be acked.
        if let Some(reason) = self.identity_refusal(event, identity) {
            let reason = crate::report::shorten(&reason, crate::scheduler::MAX_REASON_CHARS);
            let effects = self.scheduler.reject(&unvouched(event), &reason, now);
            return Decision::new(
                Verdict::DeadLetter(format!("rejected: {reason}")),
                Outcome::RunRejected { reason },
            )
            .with_effects(effects);
        }
        let planned = match event.trigger.kind() {
            EventKind::Drift => match self.scheduler.active_drift_run(&event.repository) {
                Some(running) => Err(format!(
                    "a drift run of {} is already running ({running}): one at a time per \
                     repository",
                    event.repository
                )),
                None => policy::plan(event, &self.config, &self.router, &self.gates),
            },
            _ => policy::plan(event, &self.config, &self.router, &self.gates),
        };
        match planned {
            Ok(plan) => {
                let effects = self.scheduler.accept(event, &plan, now);
                Decision::new(
                    Verdict::Ack,
                    Outcome::RunAccepted {
                        jobs: plan.units.len(),
                    },
                )
                .with_effects(effects)
            }
            Err(reason) => {
                let reason = crate::report::shorten(&reason, crate::scheduler::MAX_REASON_CHARS);
                let effects = self.scheduler.reject(event, &reason, now);
                Decision::new(
                    Verdict::DeadLetter(format!("rejected: {reason}")),
                    Outcome::RunRejected { reason },
                )
                .with_effects(effects)
            }
        }
    }

    /// Why `event` may not start a run under `[dispatcher.oidc]` ([`identity::refusal`]).
    /// An unknown repository is left to the policy, which refuses it by name.
    fn identity_refusal(&self, event: &ChangeEvent, identity: &Identity) -> Option<String> {
        self.config.dispatcher.oidc.as_ref()?;
        let github = self
            .config
            .repository(&event.repository)?
            .github
            .as_deref()?;
        identity::refusal(event, github, identity)
    }

    /// A worker's event about a job: a claim, a heartbeat, a give-back or an outcome.
    /// `reply_to` is the delivery's reply queue and `user` its broker user (RabbitMQ checked
    /// it against the login); `known` the store's answer when the job is not active.
    pub fn decide_job_event(
        &mut self,
        event: &JobEvent,
        reply_to: Option<&str>,
        user: Option<&str>,
        known: Option<KnownJob>,
        now: u64,
    ) -> Decision {
        if let Some(why) = oversized(event) {
            let reason = format!("job event about job {} refused: {why}", event.job_id);
            return Decision::new(Verdict::DeadLetter(reason), Outcome::OversizedJobEvent);
        }
        if let Some((run, job)) = self.scheduler.job_by_id(event.job_id) {
            if run.run_id != event.run_id {
                let reason = format!(
                    "job event names run {} but job {} belongs to run {}",
                    event.run_id, event.job_id, run.run_id
                );
                return Decision::new(Verdict::DeadLetter(reason), Outcome::UnknownJob);
            }
            // The worker name in an event is the sender's word; the broker user is not. Only
            // the executors of the job's own account and role may act on it, so that no other
            // executor login can claim it first and report a result it never produced.
            let (account, role) = (&job.job.account, job.job.role.as_str());
            if let Some(expected) = self
                .config
                .dispatcher
                .executor_user_mismatch(account, role, user)
            {
                let user = user.unwrap_or("(none)").to_owned();
                let reason = format!(
                    "job event about job {} of account {account:?} ({role}) sent by broker user {user:?}; only {expected:?} may send it (dispatcher.executor_users)",
                    event.job_id
                );
                return Decision::new(
                    Verdict::DeadLetter(reason),
                    Outcome::JobEventSenderRefused { user, expected },
                );
            }
        }
        let active = self.scheduler.contains_job(event.job_id);
        match &event.kind {
            JobEventKind::Started { redelivered } => {
                let redelivered = *redelivered;
                let Some(reply_to) = reply_to.filter(|queue| proto_types::is_reply_queue(queue))
                else {
                    let reason = format!(
                        "claim for job {} has no valid reply_to ({reply_to:?})",
                        event.job_id
                    );
                    return Decision::new(
                        Verdict::DeadLetter(reason),
                        Outcome::ClaimWithoutReplyQueue,
                    );
                };
                let (verdict, effects) = if active {
                    self.scheduler.claim(
                        event.job_id,
                        event.attempt,
                        &event.worker,
                        redelivered,
                        Some(reply_to),
                        now,
                    )
                } else {
                    let reason = match known {
                        Some(known) => format!("the job is already {}", known.state),
                        None => "the job is unknown".to_owned(),
                    };
                    let verdict = ClaimVerdict::Denied {
                        reason,
                        retry: false,
                    };
                    (verdict, Effects::default())
                };
                let outcome = match &verdict {
                    ClaimVerdict::Granted { .. } => Outcome::ClaimGranted { redelivered },
                    ClaimVerdict::Denied { reason, retry } => Outcome::ClaimDenied {
                        reason: reason.clone(),
                        retry: *retry,
                    },
                };
                let reply = ClaimReply {
                    job_id: event.job_id,
                    attempt: event.attempt,
                    verdict,
                };
                Decision {
                    reply: Some((reply_to.to_owned(), reply)),
                    ..Decision::new(Verdict::Ack, outcome).with_effects(effects)
                }
            }
            JobEventKind::Heartbeat => {
                // Leases are not persisted on heartbeats: a restarted dispatcher extends every
                // lease anyway, so the write would buy nothing.
                let renewed = active
                    && self
                        .scheduler
                        .heartbeat(event.job_id, event.attempt, &event.worker, now);
                let outcome = if renewed {
                    Outcome::HeartbeatRenewed
                } else {
                    Outcome::HeartbeatIgnored
                };
                Decision::new(Verdict::Ack, outcome)
            }
            JobEventKind::Released { reason } => {
                let effects = if active {
                    self.scheduler
                        .release(event.job_id, event.attempt, &event.worker, now)
                } else {
                    Effects::default()
                };
                Decision::new(
                    Verdict::Ack,
                    Outcome::Released {
                        reason: reason.clone(),
                    },
                )
                .with_effects(effects)
            }
            JobEventKind::Finished(outcome) => {
                if !active {
                    return match known {
                        Some(_) => Decision::new(Verdict::Ack, Outcome::LateReport),
                        None => Decision::new(
                            Verdict::DeadLetter(format!(
                                "job event for unknown run {} / job {}",
                                event.run_id, event.job_id
                            )),
                            Outcome::UnknownJob,
                        ),
                    };
                }
                let outcome = &*fitted(outcome);
                let effects =
                    self.scheduler
                        .finish(event.job_id, event.attempt, &event.worker, outcome, now);
                if !effects.changed_jobs.contains(&event.job_id) {
                    return Decision::new(Verdict::Ack, Outcome::StaleReport).with_effects(effects);
                }
                let job = self.scheduler.job_by_id(event.job_id).map(|(_, job)| job);
                let reported = Outcome::JobReported {
                    action: job.map_or(Action::Plan, |job| job.job.action),
                    status: outcome.status,
                    exit_code: outcome.exit_code,
                    duration_ms: outcome.duration_ms,
                    finished: job
                        .filter(|job| job.state.is_final())
                        .map(|job| job.state.clone()),
                };
                Decision {
                    // Kept for reports: the end, where plans summarise and errors show.
                    output: Some((
                        event.job_id,
                        proto_types::untrusted_text::tail(&outcome.output, KEPT_OUTPUT_BYTES)
                            .to_owned(),
                    )),
                    ..Decision::new(Verdict::Ack, reported).with_effects(effects)
                }
            }
        }
    }

    /// An operator's order to cancel a run; `known` the store's answer when it is not active.
    pub fn decide_control(
        &mut self,
        order: &CancelRun,
        known: Option<KnownRun>,
        now: u64,
    ) -> Decision {
        let reason = format!("cancelled by {}: {}", order.requested_by, order.reason);
        if self.is_active_run(order.run_id) {
            let effects = self.scheduler.cancel_run(order.run_id, &reason, now);
            Decision::new(Verdict::Ack, Outcome::CancelRequested { reason }).with_effects(effects)
        } else if known.is_some() {
            Decision::new(Verdict::Ack, Outcome::CancelOfEndedRun)
        } else {
            Decision::new(
                Verdict::DeadLetter(format!("cancellation of unknown run {}", order.run_id)),
                Outcome::CancelOfUnknownRun,
            )
        }
    }

    /// A cancel from `user`, signed in to this dispatcher's web page: only `[web] operators`
    /// may.
    pub fn decide_web_cancel(
        &mut self,
        run_id: Uuid,
        user: &str,
        reason: &str,
        known: Option<KnownRun>,
        now: u64,
    ) -> Decision {
        if !self.config.web.may_cancel(user) {
            let reason = format!(
                "cancel of run {run_id} from web user {user:?}: only [web] operators may cancel"
            );
            return Decision::new(
                Verdict::DeadLetter(reason),
                Outcome::CancellerRefused {
                    user: format!("{WEB_REQUESTER_PREFIX}{user}"),
                },
            );
        }
        let order = CancelRun {
            run_id,
            reason: reason.to_owned(),
            requested_by: format!("{WEB_REQUESTER_PREFIX}{user}"),
        };
        self.decide_control(&order, known, now)
    }

    /// An approver's verdict on a run's jobs awaiting approval, from `approver`: only
    /// `[approvals] users` count for broker users, only `[web] approvers` for the web page's
    /// users, whatever the order says about who sent it. `known` is the store's answer when
    /// the run is not active.
    pub fn decide_approval(
        &mut self,
        order: &ApprovalOrder,
        approver: Approver<'_>,
        known: Option<KnownRun>,
        now: u64,
    ) -> Decision {
        let user = match approver {
            Approver::Broker(user_id) => user_id
                .filter(|user| self.config.approvals.is_approver(user))
                .map(str::to_owned),
            Approver::Web { user, .. } => self
                .config
                .web
                .may_approve(user)
                .then(|| format!("{WEB_REQUESTER_PREFIX}{user}")),
        };
        let Some(user) = user else {
            let (from, allowed) = match approver {
                Approver::Broker(user_id) => (
                    format!("broker user {:?}", user_id.unwrap_or("(no user_id)")),
                    if self.config.approvals.users.is_empty() {
                        "nobody (approvals.users is empty)".to_owned()
                    } else {
                        self.config.approvals.users.join(", ")
                    },
                ),
                Approver::Web { user, .. } => (
                    format!("web user {user:?}"),
                    if self.config.web.approvers.is_empty() {
                        "nobody on the web page (web.approvers is empty)".to_owned()
                    } else {
                        self.config.web.approvers.join(", ")
                    },
                ),
            };
            let reason = format!(
                "{} of run {} from {from}: only {allowed} may approve or reject",
                order.verdict.as_str(),
                order.run_id
            );
            let user = match approver {
                Approver::Broker(user_id) => user_id.unwrap_or("(no user_id)").to_owned(),
                Approver::Web { user, .. } => format!("{WEB_REQUESTER_PREFIX}{user}"),
            };
            return Decision::new(
                Verdict::DeadLetter(reason),
                Outcome::ApproverRefused { user },
            );
        };
        let user = user.as_str();
        if !self.is_active_run(order.run_id) {
            let reason = match known {
                Some(_) => format!("run {} has ended", order.run_id),
                None => format!("run {} is unknown", order.run_id),
            };
            return Decision::new(Verdict::Ack, Outcome::ApprovalMatchedNothing { reason });
        }
        // The broker user is the authority; what the order says about its sender is a note.
        let by = if order.requested_by.is_empty() || order.requested_by == user {
            user.to_owned()
        } else {
            format!("{user} ({})", order.requested_by)
        };
        // Kept with every job it opens or closes, and shown in the comment: bounded.
        let reason = match order.reason.trim() {
            "" => "no reason given".to_owned(),
            reason => reason.chars().take(MAX_APPROVAL_REASON_CHARS).collect(),
        };
        let scope = match approver {
            Approver::Web { chosen, .. } => ApprovalScope::Jobs(chosen),
            Approver::Broker(_) => ApprovalScope::from(order.unit.as_deref()),
        };
        match self.scheduler.decide_approval(
            order.run_id,
            scope,
            order.verdict,
            &by,
            &reason,
            // `override = "approvers"` names `[approvals] users`: a web approver opens
            // approval gates, and overrides no policy.
            matches!(approver, Approver::Broker(_)),
            now,
        ) {
            Ok((jobs, effects)) => Decision::new(
                Verdict::Ack,
                Outcome::ApprovalApplied {
                    verdict: order.verdict,
                    by,
                    jobs,
                },
            )
            .with_effects(effects),
            Err(reason) => Decision::new(Verdict::Ack, Outcome::ApprovalMatchedNothing { reason }),
        }
    }

    /// Time passing: retries whose backoff ended, and anything else time unblocks.
    pub fn decide_tick(&mut self, now: u64) -> Effects {
        self.scheduler.tick(now)
    }

    /// The earliest time something is due without a message: a retry, a paced status.
    pub fn next_wakeup(&self, now: u64) -> Option<u64> {
        [self.scheduler.next_wakeup(now), self.pacer.next_due()]
            .into_iter()
            .flatten()
            .min()
    }

    /// What the batch's transaction must write for `effects`: changed runs and jobs, and the
    /// status snapshots due (a running run's at most every [`STATUS_INTERVAL_MS`], a final
    /// one at once).
    pub fn persist(&mut self, effects: &Effects, now: u64) -> Persist {
        let mut persist = Persist {
            runs: effects
                .changed_runs
                .iter()
                .filter_map(|id| Some((*id, self.scheduler.run(*id)?.state())))
                .collect(),
            jobs: effects
                .changed_jobs
                .iter()
                .copied()
                .filter(|id| self.scheduler.contains_job(*id))
                .collect(),
            statuses: Vec::new(),
        };
        for (run_id, state) in &persist.runs {
            if self.pacer.changed(*run_id, state.is_final(), now) {
                persist.statuses.push(*run_id);
            }
        }
        for run_id in self.pacer.due(now) {
            if self.scheduler.run(run_id).is_some() {
                persist.statuses.push(run_id);
            }
        }
        persist
    }

    /// An active run.
    pub fn run(&self, run_id: Uuid) -> Option<&Run> {
        self.scheduler.run(run_id)
    }

    /// An active job and its run.
    pub fn job(&self, job_id: Uuid) -> Option<(&Run, &RunJob)> {
        self.scheduler.job_by_id(job_id)
    }

    /// An active job, its run and its place in the run's jobs.
    pub fn job_at(&self, job_id: Uuid) -> Option<JobAt<'_>> {
        self.scheduler.job_at(job_id)
    }

    /// Forgets final runs once their last state is committed.
    pub fn evict_finished(&mut self) -> Vec<Uuid> {
        self.scheduler.evict_finished()
    }
}

#[cfg(test)]
mod tests;
