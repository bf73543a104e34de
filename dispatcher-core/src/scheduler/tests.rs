//! The scheduler as a pure state machine: messages and a clock in, decisions out.

use super::*;

use crate::testing::{
    APPROVAL_TIMEOUT_MS, APPROVER, BACKOFF_MS, LEASE_MS, event, gated, outcome, pr, push, settings,
};

fn applies<'a>(units: &[&'a str]) -> Vec<(&'a str, Action)> {
    units.iter().map(|u| (*u, Action::Apply)).collect()
}

fn units(jobs: &[Job]) -> Vec<&str> {
    let mut units: Vec<&str> = jobs.iter().map(|j| j.unit.as_str()).collect();
    units.sort_unstable();
    units
}

/// A scheduler with a clock, and helpers that play a worker.
struct Sim {
    scheduler: Scheduler,
    now: u64,
}

impl Sim {
    fn new() -> Sim {
        Sim::with(settings())
    }

    fn with(settings: Settings) -> Sim {
        Sim {
            scheduler: Scheduler::new(settings),
            now: 1_000_000,
        }
    }

    fn accept(&mut self, (event, plan): &(ChangeEvent, RunPlan)) -> Effects {
        self.scheduler.accept(event, plan, self.now)
    }

    fn job(&self, run_id: Uuid, unit: &str) -> &RunJob {
        let run = self.scheduler.run(run_id).expect("run is active");
        run.jobs
            .iter()
            .find(|j| j.job.unit == unit)
            .expect("unit in run")
    }

    fn state(&self, run_id: Uuid, unit: &str) -> UnitState {
        self.job(run_id, unit).state.clone()
    }

    fn claim(&mut self, job: &Job, worker: &str, redelivered: bool) -> ClaimVerdict {
        self.scheduler
            .claim(
                job.job_id,
                job.attempt,
                worker,
                redelivered,
                Some(&format!("amq.gen-{worker}")),
                self.now,
            )
            .0
    }

    /// Claims the job as `w1` and reports `status`; returns what became publishable.
    fn run_job(&mut self, job: &Job, status: JobStatus) -> Vec<Job> {
        self.run_job_with(job, status, "output")
    }

    fn run_job_with(&mut self, job: &Job, status: JobStatus, output: &str) -> Vec<Job> {
        assert!(
            matches!(self.claim(job, "w1", false), ClaimVerdict::Granted { .. }),
            "{} not granted",
            job.unit
        );
        self.scheduler
            .finish(
                job.job_id,
                job.attempt,
                "w1",
                &outcome(status, output),
                self.now,
            )
            .publish
    }
}

fn find<'a>(jobs: &'a [Job], unit: &str) -> &'a Job {
    jobs.iter()
        .find(|j| j.unit == unit)
        .unwrap_or_else(|| panic!("{unit} not in {:?}", units(jobs)))
}

#[test]
fn jobs_start_in_dependency_layers() {
    // net ← db ← app, net ← cache ← app
    let mut sim = Sim::new();
    let event = event(
        push(),
        &applies(&["app", "cache", "db", "net"]),
        &[
            ("app", "db"),
            ("app", "cache"),
            ("db", "net"),
            ("cache", "net"),
        ],
    );
    let first = sim.accept(&event).publish;
    assert_eq!(units(&first), ["net"]);
    let second = sim.run_job(&first[0], JobStatus::Succeeded);
    assert_eq!(units(&second), ["cache", "db"]);
    assert!(
        sim.run_job(find(&second, "db"), JobStatus::Succeeded)
            .is_empty(),
        "app started before cache"
    );
    let third = sim.run_job(find(&second, "cache"), JobStatus::Succeeded);
    assert_eq!(units(&third), ["app"]);
    sim.run_job(&third[0], JobStatus::Succeeded);
    assert_eq!(
        sim.scheduler.run(event.0.id).unwrap().state(),
        RunState::Succeeded
    );
}

#[test]
fn destroys_wait_for_every_apply_then_go_dependents_first() {
    let mut sim = Sim::new();
    let event = event(
        push(),
        &[
            ("new", Action::Apply),
            ("old-app", Action::Destroy),
            ("old-net", Action::Destroy),
        ],
        &[("old-app", "old-net")],
    );
    let first = sim.accept(&event).publish;
    assert_eq!(
        units(&first),
        ["new"],
        "destroys started before the apply finished"
    );
    let second = sim.run_job(&first[0], JobStatus::Succeeded);
    assert_eq!(
        units(&second),
        ["old-app"],
        "the dependent is destroyed first"
    );
    let third = sim.run_job(&second[0], JobStatus::Succeeded);
    assert_eq!(units(&third), ["old-net"]);
    assert_eq!(
        third[0].source_commit.as_deref(),
        Some("a".repeat(40).as_str()),
        "destroys check out the base"
    );
}

#[test]
fn a_failure_skips_its_dependents_transitively_naming_it_and_independent_units_go_on() {
    let mut sim = Sim::new();
    let event = event(
        push(),
        &applies(&["app", "db", "net", "other"]),
        &[("app", "db"), ("db", "net")],
    );
    let run_id = event.0.id;
    let first = sim.accept(&event).publish;
    assert_eq!(units(&first), ["net", "other"]);
    assert!(
        sim.run_job(find(&first, "net"), JobStatus::Failed)
            .is_empty()
    );
    assert_eq!(
        sim.state(run_id, "db"),
        UnitState::Skipped("net apply failed".into())
    );
    assert_eq!(
        sim.state(run_id, "app"),
        UnitState::Skipped("net apply failed".into()),
        "the root failure is named"
    );
    assert_eq!(
        sim.scheduler.run(run_id).unwrap().state(),
        RunState::Running,
        "other is still running"
    );
    sim.run_job(find(&first, "other"), JobStatus::Succeeded);
    assert_eq!(sim.state(run_id, "other"), UnitState::Succeeded);
    assert_eq!(
        sim.scheduler.run(run_id).unwrap().state(),
        RunState::Failed("1 of 4 jobs failed, 2 skipped".into())
    );
}

#[test]
fn applies_of_one_unit_run_one_at_a_time_in_arrival_order() {
    let mut sim = Sim::new();
    let older = event(push(), &applies(&["app"]), &[]);
    let newer = event(push(), &applies(&["app"]), &[]);
    let third = event(push(), &applies(&["app"]), &[]);
    let first = sim.accept(&older).publish;
    assert_eq!(units(&first), ["app"]);
    assert!(
        sim.accept(&newer).publish.is_empty(),
        "a second apply of app was queued while the first is in flight"
    );
    assert!(sim.accept(&third).publish.is_empty());
    assert_eq!(
        sim.job(newer.0.id, "app").note.as_deref(),
        Some(format!("waiting for run {} to finish app", older.0.id).as_str())
    );
    let next = sim.run_job(&first[0], JobStatus::Failed);
    assert_eq!(next.len(), 1);
    assert_eq!(
        next[0].run_id, newer.0.id,
        "the hand-off follows arrival order, whatever the outcome"
    );
    let last = sim.run_job(&next[0], JobStatus::Succeeded);
    assert_eq!(last[0].run_id, third.0.id);
}

#[test]
fn plans_of_one_unit_are_not_serialized() {
    let mut sim = Sim::new();
    let plan = |n| event(pr(n), &[("app", Action::Plan)], &[]);
    assert_eq!(sim.accept(&plan(1)).publish.len(), 1);
    assert_eq!(sim.accept(&plan(2)).publish.len(), 1);
}

#[test]
fn pull_request_jobs_go_to_plan_workers_and_every_job_of_a_push_to_apply_workers() {
    let mut sim = Sim::new();
    let pr_jobs = sim
        .accept(&event(pr(1), &[("app", Action::Plan)], &[]))
        .publish;
    assert_eq!(pr_jobs[0].role, ExecutorRole::Plan);
    // A push's plans run reviewed code too: they go where its applies go.
    let push_jobs = sim
        .accept(&event(
            push(),
            &[("db", Action::Apply), ("docs", Action::Plan)],
            &[],
        ))
        .publish;
    assert_eq!(push_jobs.len(), 2);
    assert!(
        push_jobs.iter().all(|job| job.role == ExecutorRole::Apply),
        "{push_jobs:?}"
    );
}

#[test]
fn an_accounts_cap_limits_its_jobs_in_flight_and_says_so() {
    let mut settings = settings();
    settings.caps.insert("dev".into(), 2);
    let mut sim = Sim::with(settings);
    let event = event(push(), &applies(&["a", "b", "c", "prod/x"]), &[]);
    let first = sim.accept(&event).publish;
    assert_eq!(
        units(&first),
        ["a", "b", "prod/x"],
        "prod has no cap; dev has 2"
    );
    assert_eq!(
        sim.job(event.0.id, "c").note.as_deref(),
        Some("account dev has 2 of 2 jobs in flight")
    );
    let next = sim.run_job(find(&first, "a"), JobStatus::Succeeded);
    assert_eq!(units(&next), ["c"]);
    assert_eq!(sim.job(event.0.id, "c").note, None);
}

#[test]
fn a_pull_requests_plans_leave_a_slot_for_the_deploy_branch_which_takes_freed_slots_first() {
    let mut settings = settings();
    settings.caps.insert("dev".into(), 2);
    assert_eq!(settings.reserved_apply_slots, 1, "the default");
    let mut sim = Sim::with(settings);
    let plans = event(
        pr(7),
        &[
            ("a", Action::Plan),
            ("b", Action::Plan),
            ("c", Action::Plan),
        ],
        &[],
    );
    let first = sim.accept(&plans).publish;
    assert_eq!(units(&first), ["a"], "one of dev's 2 slots is kept");
    assert_eq!(
        sim.job(plans.0.id, "b").note.as_deref(),
        Some("waiting for a plan slot of account dev (the deploy branch's jobs keep 1 of its 2)")
    );

    // A merge arrives while the pull request's plans hold what they may: its first apply
    // starts at once.
    let merge = event(push(), &applies(&["x", "y"]), &[]);
    let applied = sim.accept(&merge).publish;
    assert_eq!(units(&applied), ["x"]);
    assert_eq!(
        sim.job(merge.0.id, "y").note.as_deref(),
        Some("account dev has 2 of 2 jobs in flight")
    );
    // A plan ends: the freed slot goes to the merge's apply, though the plans came first.
    let second = sim.run_job(find(&first, "a"), JobStatus::Succeeded);
    assert_eq!(units(&second), ["y"]);
    assert_eq!(sim.state(plans.0.id, "b"), UnitState::Pending);
    // The merge's applies end: the plans go on, within the slots they may take.
    assert_eq!(
        units(&sim.run_job(find(&applied, "x"), JobStatus::Succeeded)),
        ["b"]
    );
    assert!(
        sim.run_job(find(&second, "y"), JobStatus::Succeeded)
            .is_empty(),
        "a slot is free, but it is the kept one"
    );
    assert_eq!(sim.state(plans.0.id, "c"), UnitState::Pending);
}

#[test]
fn drift_checks_take_plan_slots_too() {
    let mut settings = settings();
    settings.caps.insert("dev".into(), 2);
    let mut sim = Sim::with(settings);
    let checks = event(
        drift(),
        &[("dev/a", Action::DriftPlan), ("dev/b", Action::DriftPlan)],
        &[],
    );
    assert_eq!(units(&sim.accept(&checks).publish), ["dev/a"]);
    assert_eq!(
        sim.job(checks.0.id, "dev/b").note.as_deref(),
        Some("waiting for a plan slot of account dev (the deploy branch's jobs keep 1 of its 2)")
    );
    let merge = event(push(), &applies(&["dev/x"]), &[]);
    assert_eq!(units(&sim.accept(&merge).publish), ["dev/x"]);
}

#[test]
fn an_account_with_one_slot_keeps_none_and_zero_kept_lets_plans_take_every_slot() {
    let mut one = settings();
    one.caps.insert("dev".into(), 1);
    one.reserved_apply_slots = 3;
    let mut sim = Sim::with(one);
    let plan = event(pr(7), &[("a", Action::Plan)], &[]);
    assert_eq!(units(&sim.accept(&plan).publish), ["a"]);

    let mut none_kept = settings();
    none_kept.caps.insert("dev".into(), 2);
    none_kept.reserved_apply_slots = 0;
    let mut sim = Sim::with(none_kept);
    let plans = event(pr(7), &[("a", Action::Plan), ("b", Action::Plan)], &[]);
    assert_eq!(units(&sim.accept(&plans).publish), ["a", "b"]);
}

#[test]
fn a_newer_pull_request_run_cancels_what_the_older_has_not_started() {
    let mut sim = Sim::new();
    let plans =
        |units: &[&'static str]| units.iter().map(|u| (*u, Action::Plan)).collect::<Vec<_>>();
    let older = event(
        pr(7),
        &plans(&["app", "db", "net"]),
        &[("app", "db"), ("db", "net")],
    );
    let first = sim.accept(&older).publish;
    assert!(matches!(
        sim.claim(&first[0], "w1", false),
        ClaimVerdict::Granted { .. }
    ));
    let other_pr = event(pr(8), &plans(&["net"]), &[]);
    sim.accept(&other_pr);
    assert_eq!(
        sim.state(older.0.id, "db"),
        UnitState::Pending,
        "another PR superseded this one"
    );

    let newer = event(pr(7), &plans(&["app", "net"]), &[("app", "net")]);
    let effects = sim.accept(&newer);
    assert!(effects.changed_runs.contains(&older.0.id));
    let cancelled = UnitState::Cancelled(format!("superseded by run {}", newer.0.id));
    assert_eq!(sim.state(older.0.id, "db"), cancelled);
    assert_eq!(sim.state(older.0.id, "app"), cancelled);
    assert_eq!(
        sim.state(older.0.id, "net"),
        UnitState::Running,
        "a started job is left to finish"
    );
    sim.scheduler.finish(
        first[0].job_id,
        1,
        "w1",
        &outcome(JobStatus::Succeeded, ""),
        sim.now,
    );
    let older_state = sim.scheduler.run(older.0.id).unwrap().state();
    assert_eq!(
        older_state,
        RunState::Cancelled(format!(
            "2 of 3 jobs cancelled: superseded by run {}",
            newer.0.id
        ))
    );

    let jobs = effects.publish;
    assert_eq!(units(&jobs), ["net"]);
    let next = sim.run_job(&jobs[0], JobStatus::Succeeded);
    sim.run_job(&next[0], JobStatus::Succeeded);
    assert_eq!(
        sim.scheduler.run(newer.0.id).unwrap().state(),
        RunState::Succeeded
    );
}

#[test]
fn a_cancelled_queued_job_is_refused_to_workers() {
    let mut sim = Sim::new();
    let older = event(pr(7), &[("app", Action::Plan)], &[]);
    let queued = sim.accept(&older).publish;
    sim.accept(&event(pr(7), &[("app", Action::Plan)], &[]));
    let verdict = sim.claim(&queued[0], "w1", false);
    assert_eq!(
        verdict,
        ClaimVerdict::Denied {
            reason: "the job is already cancelled".into(),
            retry: false
        }
    );
}

#[test]
fn retryable_failures_run_again_after_a_doubling_backoff_up_to_the_limit() {
    let mut sim = Sim::new();
    let event = event(push(), &applies(&["app"]), &[]);
    let run_id = event.0.id;
    let first = sim.accept(&event).publish;
    let locked = "Error: Error acquiring the state lock\n";
    assert!(
        sim.run_job_with(&first[0], JobStatus::Failed, locked)
            .is_empty(),
        "retried without a backoff"
    );
    assert_eq!(sim.state(run_id, "app"), UnitState::Pending);
    assert_eq!(
        sim.scheduler.next_wakeup(sim.now),
        Some(sim.now + BACKOFF_MS)
    );
    assert!(
        sim.scheduler
            .tick(sim.now + BACKOFF_MS - 1)
            .publish
            .is_empty()
    );
    sim.now += BACKOFF_MS;
    let second = sim.scheduler.tick(sim.now).publish;
    assert_eq!((second.len(), second[0].attempt), (1, 2));
    assert_eq!(second[0].job_id, first[0].job_id, "a retry is the same job");

    assert!(
        sim.run_job_with(&second[0], JobStatus::Failed, locked)
            .is_empty()
    );
    assert_eq!(
        sim.scheduler.next_wakeup(sim.now),
        Some(sim.now + 2 * BACKOFF_MS),
        "the backoff doubles"
    );
    sim.now += 2 * BACKOFF_MS;
    let third = sim.scheduler.tick(sim.now).publish;
    assert_eq!(third[0].attempt, 3);
    sim.run_job_with(&third[0], JobStatus::Failed, locked);
    assert_eq!(
        sim.state(run_id, "app"),
        UnitState::Failed,
        "max_attempts = 3 ends it"
    );
    assert_eq!(sim.job(run_id, "app").output_tail.as_deref(), Some(locked));
}

#[test]
fn other_failures_are_final_at_once() {
    let mut sim = Sim::new();
    let event = event(push(), &applies(&["app"]), &[]);
    let first = sim.accept(&event).publish;
    sim.run_job_with(&first[0], JobStatus::Failed, "Error: Unsupported argument");
    assert_eq!(sim.state(event.0.id, "app"), UnitState::Failed);
    assert_eq!(sim.scheduler.next_wakeup(sim.now), None);
}

#[test]
fn one_holder_per_job_duplicates_dropped_and_a_silent_holder_taken_over() {
    let mut sim = Sim::new();
    let event = event(push(), &applies(&["app"]), &[]);
    let job = sim.accept(&event).publish.remove(0);
    assert_eq!(
        sim.claim(&job, "w1", false),
        ClaimVerdict::Granted {
            lease_secs: LEASE_MS / 1000
        }
    );
    assert_eq!(
        sim.claim(&job, "w1", false),
        ClaimVerdict::Granted {
            lease_secs: LEASE_MS / 1000
        },
        "the holder asking again"
    );
    let duplicate = sim.claim(&job, "w2", false);
    assert_eq!(
        duplicate,
        ClaimVerdict::Denied {
            reason: "already running on w1: this delivery is a duplicate".into(),
            retry: false
        }
    );
    let redelivered = sim.claim(&job, "w2", true);
    assert!(
        matches!(redelivered, ClaimVerdict::Denied { retry: true, .. }),
        "{redelivered:?}"
    );

    sim.now += LEASE_MS / 2;
    assert!(sim.scheduler.heartbeat(job.job_id, 1, "w1", sim.now));
    assert!(
        !sim.scheduler.heartbeat(job.job_id, 1, "w2", sim.now),
        "only the holder renews"
    );
    sim.now += LEASE_MS - 1;
    assert!(
        matches!(
            sim.claim(&job, "w2", true),
            ClaimVerdict::Denied { retry: true, .. }
        ),
        "the heartbeat renewed the lease"
    );
    sim.now += 1;
    assert!(
        matches!(sim.claim(&job, "w2", true), ClaimVerdict::Granted { .. }),
        "w1 fell silent: w2 takes over"
    );

    let stale = sim.scheduler.finish(
        job.job_id,
        1,
        "w1",
        &outcome(JobStatus::Failed, ""),
        sim.now,
    );
    assert!(
        stale.changed_runs.is_empty(),
        "the old holder's report counted"
    );
    sim.scheduler.finish(
        job.job_id,
        1,
        "w2",
        &outcome(JobStatus::Succeeded, ""),
        sim.now,
    );
    assert_eq!(sim.state(event.0.id, "app"), UnitState::Succeeded);
    assert_eq!(sim.job(event.0.id, "app").worker.as_deref(), Some("w2"));
    assert_eq!(
        sim.claim(&job, "w3", true),
        ClaimVerdict::Denied {
            reason: "the job is already succeeded".into(),
            retry: false
        }
    );
}

#[test]
fn cancelling_a_run_cancels_what_waits_and_tells_running_holders_to_stop() {
    let mut sim = Sim::new();
    let event = event(
        push(),
        &applies(&["app", "db", "net", "web"]),
        &[("app", "db"), ("db", "net")],
    );
    let run_id = event.0.id;
    let first = sim.accept(&event).publish;
    assert!(matches!(
        sim.claim(find(&first, "net"), "w1", false),
        ClaimVerdict::Granted { .. }
    ));
    assert!(matches!(
        sim.claim(find(&first, "web"), "w2", false),
        ClaimVerdict::Granted { .. }
    ));

    let effects = sim
        .scheduler
        .cancel_run(run_id, "cancelled by ops: wrong change", sim.now);
    let reason = UnitState::Cancelled("cancelled by ops: wrong change".into());
    assert_eq!(sim.state(run_id, "db"), reason);
    assert_eq!(sim.state(run_id, "app"), reason);
    assert_eq!(
        sim.state(run_id, "net"),
        UnitState::Running,
        "running until its worker stops it"
    );
    let mut stops: Vec<(&str, &str)> = effects
        .stop
        .iter()
        .map(|(q, o)| (q.as_str(), o.reason.as_str()))
        .collect();
    stops.sort_unstable();
    assert_eq!(
        stops,
        [
            ("amq.gen-w1", "cancelled by ops: wrong change"),
            ("amq.gen-w2", "cancelled by ops: wrong change")
        ]
    );
    assert_eq!(
        sim.job(run_id, "net").note.as_deref(),
        Some("stopping: cancelled by ops: wrong change")
    );

    // One stops; the other had already succeeded when the order came, and says so.
    let stopped = outcome(JobStatus::Cancelled, "interrupted");
    sim.scheduler
        .finish(find(&first, "net").job_id, 1, "w1", &stopped, sim.now);
    assert_eq!(sim.state(run_id, "net"), reason);
    let done = outcome(JobStatus::Succeeded, "");
    sim.scheduler
        .finish(find(&first, "web").job_id, 1, "w2", &done, sim.now);
    assert_eq!(sim.state(run_id, "web"), UnitState::Succeeded);
    assert_eq!(
        sim.scheduler.run(run_id).unwrap().state(),
        RunState::Cancelled("3 of 4 jobs cancelled: cancelled by ops: wrong change".into())
    );
}

#[test]
fn a_holder_that_falls_silent_after_a_stop_order_leaves_its_job_cancelled() {
    let mut sim = Sim::new();
    let event = event(push(), &applies(&["app"]), &[]);
    let job = sim.accept(&event).publish.remove(0);
    sim.claim(&job, "w1", false);
    sim.scheduler
        .cancel_run(event.0.id, "cancelled by ops: stop", sim.now);
    assert!(
        matches!(
            sim.claim(&job, "w2", true),
            ClaimVerdict::Denied { retry: true, .. }
        ),
        "the lease still runs"
    );
    sim.now += LEASE_MS;
    assert_eq!(
        sim.claim(&job, "w2", true),
        ClaimVerdict::Denied {
            reason: "the job is already cancelled".into(),
            retry: false
        }
    );
    assert_eq!(
        sim.state(event.0.id, "app"),
        UnitState::Cancelled("cancelled by ops: stop".into())
    );
}

#[test]
fn a_given_back_job_is_queued_again_for_any_worker_and_keeps_its_unit() {
    let mut sim = Sim::new();
    let older = event(push(), &applies(&["app"]), &[]);
    let newer = event(push(), &applies(&["app"]), &[]);
    let job = sim.accept(&older).publish.remove(0);
    assert!(sim.accept(&newer).publish.is_empty());
    sim.claim(&job, "w1", false);
    let given_back = sim.scheduler.release(job.job_id, 1, "w1", sim.now);
    assert!(
        given_back.publish.is_empty(),
        "the worker requeues the message itself"
    );
    assert_eq!(sim.state(older.0.id, "app"), UnitState::Queued);
    assert!(
        matches!(sim.claim(&job, "w2", true), ClaimVerdict::Granted { .. }),
        "another worker takes it at once"
    );
    assert_eq!(
        sim.job(older.0.id, "app").job.attempt,
        1,
        "giving back is not a failed attempt"
    );
    assert_eq!(
        sim.state(newer.0.id, "app"),
        UnitState::Pending,
        "the unit stays with the older run"
    );
    assert!(
        sim.scheduler
            .release(job.job_id, 1, "w1", sim.now)
            .changed_jobs
            .is_empty(),
        "only the holder gives back"
    );
}

#[test]
fn a_refusal_is_final_even_when_its_output_looks_transient() {
    let mut sim = Sim::new();
    let event = event(push(), &applies(&["app"]), &[]);
    let job = sim.accept(&event).publish.remove(0);
    sim.claim(&job, "w1", false);
    let refused = outcome(
        JobStatus::Refused,
        "refused: Error acquiring the state lock",
    );
    sim.scheduler.finish(job.job_id, 1, "w1", &refused, sim.now);
    assert_eq!(sim.state(event.0.id, "app"), UnitState::Failed);
    assert_eq!(sim.job(event.0.id, "app").job.attempt, 1);
    assert_eq!(
        sim.job(event.0.id, "app").log.as_deref(),
        Some("w1:/var/log/pipelines/job.log")
    );
}

#[test]
fn stale_attempts_and_unknown_jobs_are_refused() {
    let mut sim = Sim::new();
    let event = event(push(), &applies(&["app"]), &[]);
    let mut job = sim.accept(&event).publish.remove(0);
    job.attempt = 2;
    assert!(matches!(
        sim.claim(&job, "w1", false),
        ClaimVerdict::Denied { retry: false, .. }
    ));
    job.job_id = Uuid::new_v4();
    job.attempt = 1;
    assert!(matches!(
        sim.claim(&job, "w1", false),
        ClaimVerdict::Denied { retry: false, .. }
    ));
}

#[test]
fn a_restored_scheduler_carries_on_where_the_old_one_stopped() {
    let mut sim = Sim::new();
    let older = event(push(), &applies(&["app", "db"]), &[("app", "db")]);
    let newer = event(push(), &applies(&["db"]), &[]);
    let first = sim.accept(&older).publish;
    sim.accept(&newer);
    assert!(matches!(
        sim.claim(&first[0], "w1", false),
        ClaimVerdict::Granted { .. }
    ));
    let runs: Vec<Run> = sim.scheduler.runs().cloned().collect();

    // The dispatcher was down for longer than a lease: w1's lease is extended, not lost.
    let later = sim.now + 5 * LEASE_MS;
    let mut restored = Scheduler::restore(settings(), runs, 0, later);
    let taken = restored
        .claim(first[0].job_id, 1, "w2", true, None, later)
        .0;
    assert!(
        matches!(taken, ClaimVerdict::Denied { retry: true, .. }),
        "{taken:?}"
    );
    let effects = restored.finish(
        first[0].job_id,
        1,
        "w1",
        &outcome(JobStatus::Succeeded, ""),
        later,
    );
    let mut next: Vec<(Uuid, &str)> = effects
        .publish
        .iter()
        .map(|j| (j.run_id, j.unit.as_str()))
        .collect();
    next.sort_unstable();
    let mut expected = vec![(older.0.id, "app"), (newer.0.id, "db")];
    expected.sort_unstable();
    assert_eq!(
        next, expected,
        "the unit queue and the dependency graph survived the restore"
    );
    let third = event(push(), &applies(&["x"]), &[]);
    restored.accept(&third.0, &third.1, later);
    assert!(
        restored.run(third.0.id).unwrap().seq > restored.run(newer.0.id).unwrap().seq,
        "arrival order continues"
    );
}

#[test]
fn an_empty_run_succeeds_at_once_and_a_rejected_one_is_final() {
    let mut sim = Sim::new();
    let empty = event(push(), &[], &[]);
    sim.accept(&empty);
    assert_eq!(
        sim.scheduler.run(empty.0.id).unwrap().state(),
        RunState::Succeeded
    );
    let bad = event(push(), &[], &[]);
    sim.scheduler
        .reject(&bad.0, "unknown repository \"x\"", sim.now);
    assert_eq!(
        sim.scheduler.run(bad.0.id).unwrap().state(),
        RunState::Rejected("unknown repository \"x\"".into())
    );
    assert_eq!(sim.scheduler.evict_finished().len(), 2);
    assert!(sim.scheduler.run(empty.0.id).is_none());
}

/// What an event may put in a rejected run is bounded: a megabyte of repository name or of
/// sha, or a reason that quotes them, is kept cut, and a real sha is kept whole.
#[test]
fn a_rejected_event_leaves_its_identity_and_reason_cut_to_size() {
    let mut sim = Sim::new();
    let (mut huge, _) = event(pr(3), &[], &[]);
    huge.repository = "r".repeat(1 << 20);
    huge.head_sha = "é".repeat(1 << 19);
    let reason = format!("unknown repository {:?}", huge.repository);
    sim.scheduler.reject(&huge, &reason, sim.now);
    let run = sim.scheduler.run(huge.id).unwrap();
    assert_eq!(run.repository.chars().count(), 200);
    assert_eq!(run.head_sha.chars().count(), 200);
    assert_eq!(run.base_sha, "a".repeat(40), "a real sha stays whole");
    let RunState::Rejected(kept) = run.state() else {
        panic!("{:?}", run.state())
    };
    assert_eq!(kept.chars().count(), 1_000);
    assert!(kept.starts_with("unknown repository \"rrr"), "{kept}");
}

#[test]
fn job_ids_are_stable_per_run_unit_and_action() {
    let run = Uuid::new_v4();
    assert_eq!(
        job_id(run, "a", Action::Apply),
        job_id(run, "a", Action::Apply)
    );
    assert_ne!(
        job_id(run, "a", Action::Apply),
        job_id(run, "a", Action::Destroy)
    );
    assert_ne!(
        job_id(run, "a", Action::Apply),
        job_id(Uuid::new_v4(), "a", Action::Apply)
    );
}

/// A push of `units` (applies, `edges` as given) with the applies of `gates` gated.
fn gated_push(units: &[&str], edges: &[(&str, &str)], gates: &[&str]) -> (ChangeEvent, RunPlan) {
    let (event, plan) = event(push(), &applies(units), edges);
    (event, gated(plan, gates))
}

impl Sim {
    fn approve(
        &mut self,
        run_id: Uuid,
        unit: Option<&str>,
        verdict: ApprovalVerdict,
    ) -> Result<Effects, String> {
        self.scheduler
            .decide_approval(
                run_id,
                unit.into(),
                verdict,
                APPROVER,
                "looks right",
                true,
                self.now,
            )
            .map(|(_, effects)| effects)
    }
}

#[test]
fn a_gated_apply_waits_for_an_approval_while_the_rest_of_the_run_goes_on() {
    // prod/app needs prod/db; dev/app is independent. Only prod/app is gated.
    let mut sim = Sim::new();
    let run = gated_push(
        &["dev/app", "prod/app", "prod/db"],
        &[("prod/app", "prod/db")],
        &["prod/app"],
    );
    let first = sim.accept(&run).publish;
    assert_eq!(units(&first), ["dev/app", "prod/db"]);
    assert_eq!(sim.state(run.0.id, "prod/app"), UnitState::AwaitingApproval);
    assert!(matches!(
        &sim.job(run.0.id, "prod/app").approval,
        Some(ApprovalGate::Waiting { approvers, since_ms, expires_ms, policy_sets })
            if approvers == &[APPROVER.to_owned()]
                && *since_ms == sim.now
                && *expires_ms == sim.now + APPROVAL_TIMEOUT_MS
                && policy_sets.is_empty()
    ));
    for job in &first {
        assert!(
            sim.run_job(job, JobStatus::Succeeded).is_empty(),
            "a gated job started without an approval"
        );
    }
    assert_eq!(sim.state(run.0.id, "prod/app"), UnitState::AwaitingApproval);
    assert_eq!(
        sim.scheduler.run(run.0.id).unwrap().state(),
        RunState::Running
    );
    assert_eq!(sim.scheduler.awaiting_approval(), 1);

    sim.now += 1_000;
    let approved = sim
        .approve(run.0.id, Some("prod/app"), ApprovalVerdict::Approve)
        .unwrap();
    assert_eq!(units(&approved.publish), ["prod/app"]);
    assert!(matches!(
        &sim.job(run.0.id, "prod/app").approval,
        Some(ApprovalGate::Approved { by, reason, at_ms })
            if by == APPROVER && reason == "looks right" && *at_ms == sim.now
    ));
    sim.run_job(&approved.publish[0], JobStatus::Succeeded);
    assert_eq!(
        sim.scheduler.run(run.0.id).unwrap().state(),
        RunState::Succeeded
    );
}

#[test]
fn an_approval_given_early_still_waits_for_the_dependencies() {
    let mut sim = Sim::new();
    let run = gated_push(&["app", "db"], &[("app", "db")], &["app"]);
    let first = sim.accept(&run).publish;
    assert_eq!(units(&first), ["db"]);
    let approved = sim
        .approve(run.0.id, None, ApprovalVerdict::Approve)
        .unwrap();
    assert!(approved.publish.is_empty(), "app started before db");
    assert_eq!(sim.state(run.0.id, "app"), UnitState::Pending);
    let next = sim.run_job(&first[0], JobStatus::Succeeded);
    assert_eq!(units(&next), ["app"]);
}

#[test]
fn a_rejection_cancels_the_gated_job_and_its_dependents_with_the_reason() {
    let mut sim = Sim::new();
    let run = gated_push(&["app", "db", "other"], &[("app", "db")], &["db"]);
    let first = sim.accept(&run).publish;
    assert_eq!(units(&first), ["other"]);
    let rejected = sim
        .scheduler
        .decide_approval(
            run.0.id,
            ApprovalScope::Unit("db"),
            ApprovalVerdict::Reject,
            APPROVER,
            "not during the freeze",
            true,
            sim.now,
        )
        .unwrap();
    assert!(rejected.1.publish.is_empty());
    let why = "rejected by alice: not during the freeze";
    assert_eq!(sim.state(run.0.id, "db"), UnitState::Cancelled(why.into()));
    assert_eq!(sim.state(run.0.id, "app"), UnitState::Cancelled(why.into()));
    sim.run_job(&first[0], JobStatus::Succeeded);
    assert!(matches!(
        sim.scheduler.run(run.0.id).unwrap().state(),
        RunState::Cancelled(_)
    ));
}

#[test]
fn an_unanswered_approval_expires_and_cancels_the_job() {
    let mut sim = Sim::new();
    let run = gated_push(&["app"], &[], &["app"]);
    assert!(sim.accept(&run).publish.is_empty());
    let due = sim.now + APPROVAL_TIMEOUT_MS;
    assert_eq!(sim.scheduler.next_wakeup(sim.now), Some(due));
    assert!(sim.scheduler.tick(due - 1).changed_jobs.is_empty());
    let expired = sim.scheduler.tick(due);
    assert!(expired.publish.is_empty());
    assert_eq!(
        sim.state(run.0.id, "app"),
        UnitState::Cancelled("approval expired: nobody approved it within 1h".into())
    );
    assert_eq!(sim.scheduler.awaiting_approval(), 0);
    assert_eq!(sim.scheduler.next_wakeup(due), None);
    let late = sim.approve(run.0.id, None, ApprovalVerdict::Approve);
    assert!(late.unwrap_err().contains("no job awaiting approval"));
}

#[test]
fn an_approval_that_matches_nothing_says_why() {
    let mut sim = Sim::new();
    let run = gated_push(&["app", "db"], &[], &["app"]);
    sim.accept(&run);
    let err = sim
        .approve(run.0.id, Some("db"), ApprovalVerdict::Approve)
        .unwrap_err();
    assert!(
        err.contains("\"db\"") && err.contains("is not awaiting approval (it is queued)"),
        "{err}"
    );
    let err = sim
        .approve(run.0.id, Some("nope"), ApprovalVerdict::Approve)
        .unwrap_err();
    assert!(err.contains("no job for unit \"nope\""), "{err}");
    let err = sim
        .approve(Uuid::new_v4(), None, ApprovalVerdict::Approve)
        .unwrap_err();
    assert!(err.contains("is not active"), "{err}");
}

#[test]
fn a_newer_push_of_the_unit_supersedes_a_waiting_approval() {
    let mut sim = Sim::new();
    let older = gated_push(&["app", "web"], &[("web", "app")], &["app"]);
    sim.accept(&older);
    let newer = gated_push(&["app"], &[], &["app"]);
    sim.accept(&newer);
    let why = format!(
        "superseded by run {}, a newer push of this unit",
        newer.0.id
    );
    assert_eq!(
        sim.state(older.0.id, "app"),
        UnitState::Cancelled(why.clone())
    );
    assert_eq!(sim.state(older.0.id, "web"), UnitState::Cancelled(why));
    assert_eq!(sim.state(newer.0.id, "app"), UnitState::AwaitingApproval);
    let approved = sim
        .approve(newer.0.id, None, ApprovalVerdict::Approve)
        .unwrap();
    assert_eq!(units(&approved.publish), ["app"], "the unit queue is free");
}

#[test]
fn a_pull_request_plan_of_a_gated_unit_runs_and_says_the_apply_will_wait() {
    let mut sim = Sim::new();
    let (event, plan) = event(pr(1), &[("app", Action::Plan)], &[]);
    let first = sim.accept(&(event.clone(), gated(plan, &["app"]))).publish;
    assert_eq!(units(&first), ["app"]);
    assert_eq!(
        sim.job(event.id, "app").approval,
        Some(ApprovalGate::AfterMerge)
    );
}

#[test]
fn a_failed_dependency_skips_a_job_awaiting_approval_and_a_restore_keeps_the_wait() {
    let mut sim = Sim::new();
    let run = gated_push(&["app", "db", "web"], &[("app", "db")], &["app", "web"]);
    let first = sim.accept(&run).publish;
    let runs: Vec<Run> = sim.scheduler.runs().cloned().collect();
    let restored = Scheduler::restore(settings(), runs, 0, sim.now);
    assert_eq!(restored.awaiting_approval(), 2);
    assert_eq!(
        restored.next_wakeup(sim.now),
        Some(sim.now + APPROVAL_TIMEOUT_MS)
    );
    sim.scheduler = restored;
    sim.run_job(&first[0], JobStatus::Failed);
    assert_eq!(
        sim.state(run.0.id, "app"),
        UnitState::Skipped("db apply failed".into())
    );
    assert_eq!(sim.state(run.0.id, "web"), UnitState::AwaitingApproval);
    assert_eq!(sim.scheduler.awaiting_approval(), 1);
}

/// Runs `job` as `w1` and reports `report`; what became publishable.
fn report(sim: &mut Sim, job: &Job, report: &JobOutcome) -> Effects {
    assert!(matches!(
        sim.claim(job, "w1", false),
        ClaimVerdict::Granted { .. }
    ));
    sim.scheduler
        .finish(job.job_id, job.attempt, "w1", report, sim.now)
}

#[test]
fn an_overridable_deny_waits_for_an_approver_and_runs_again_with_the_override() {
    let mut sim = Sim::new();
    let run = event(push(), &applies(&["app", "web"]), &[("web", "app")]);
    let first = sim.accept(&run).publish;
    report(&mut sim, &first[0], &crate::testing::denied(true));
    assert_eq!(sim.state(run.0.id, "app"), UnitState::AwaitingApproval);
    assert_eq!(sim.state(run.0.id, "web"), UnitState::Pending);
    assert!(matches!(
        &sim.job(run.0.id, "app").approval,
        Some(ApprovalGate::Waiting { policy_sets, .. }) if policy_sets == &["security".to_owned()]
    ));
    assert_eq!(sim.scheduler.in_flight().get("dev"), Some(&0));

    sim.now += 10;
    let approved = sim
        .approve(run.0.id, Some("app"), ApprovalVerdict::Approve)
        .unwrap();
    assert_eq!(approved.publish.len(), 1);
    let again = &approved.publish[0];
    assert_eq!(again.attempt, 2);
    assert_eq!(again.policy_override.as_deref(), Some("alice: looks right"));
    let next = sim.run_job(again, JobStatus::Succeeded);
    assert_eq!(units(&next), ["web"]);
    assert_eq!(
        next[0].policy_override, None,
        "an override is the job's alone"
    );
}

/// `override = "approvers"` names `[approvals] users`. An approver who is not one (a web
/// approver) opens the approval gates of the run, and leaves a job that a policy denied
/// waiting: approving the whole run overrides nothing it was not meant to.
#[test]
fn an_approver_who_may_not_override_opens_gates_and_leaves_a_denied_job_waiting() {
    let mut sim = Sim::new();
    let run = gated_push(&["app", "db"], &[], &["app"]);
    let first = sim.accept(&run).publish;
    assert_eq!(units(&first), ["db"]);
    report(&mut sim, &first[0], &crate::testing::denied(true));
    assert_eq!(sim.state(run.0.id, "db"), UnitState::AwaitingApproval);
    assert_eq!(sim.state(run.0.id, "app"), UnitState::AwaitingApproval);

    let by_web = |sim: &mut Sim, unit: Option<&str>| {
        sim.scheduler.decide_approval(
            run.0.id,
            unit.into(),
            ApprovalVerdict::Approve,
            "web:lead@example.com",
            "ship it",
            false,
            sim.now,
        )
    };
    let refused = by_web(&mut sim, Some("db")).unwrap_err();
    assert_eq!(
        refused,
        format!(
            "unit \"db\" of run {} waits because a policy denied its plan: only the approvers \
             of approvals.users may override a policy, with `pipelines approve`",
            run.0.id
        )
    );
    assert_eq!(sim.state(run.0.id, "db"), UnitState::AwaitingApproval);
    let (approved, effects) = by_web(&mut sim, None).unwrap();
    assert_eq!(approved, 1, "the gate of app only");
    assert_eq!(units(&effects.publish), ["app"]);
    assert!(effects.publish[0].policy_override.is_none());
    assert_eq!(sim.state(run.0.id, "db"), UnitState::AwaitingApproval);
    assert!(
        by_web(&mut sim, None)
            .unwrap_err()
            .contains("policy denied")
    );

    // An approver of approvals.users overrides it.
    let overridden = sim
        .approve(run.0.id, Some("db"), ApprovalVerdict::Approve)
        .unwrap();
    assert_eq!(
        overridden.publish[0].policy_override.as_deref(),
        Some("alice: looks right")
    );
}

/// The web page's approval is for the jobs its user chose, each in the wait the page showed:
/// a job left unchosen stays waiting, and so does one that waits again since, although its
/// attempt is the same (approving a gate does not raise it).
#[test]
fn a_chosen_jobs_verdict_answers_for_those_waits_the_page_showed_and_no_others() {
    let mut sim = Sim::new();
    let run = gated_push(&["app", "dns", "web"], &[], &["app", "dns", "web"]);
    assert!(sim.accept(&run).publish.is_empty(), "every apply is gated");
    let shown = |sim: &Sim, unit: &str| {
        let job = &sim.job(run.0.id, unit);
        let Some(ApprovalGate::Waiting { since_ms, .. }) = job.approval else {
            panic!("{unit} waits: {:?}", job.approval);
        };
        ShownJob {
            job_id: job.job.job_id,
            attempt: job.job.attempt,
            since_ms,
        }
    };
    // The page showed the three waiting; its user ticked app and web.
    let chosen = [shown(&sim, "app"), shown(&sim, "web")];
    // Meanwhile an approver of approvals.users opened app's gate, and its plan was denied:
    // it waits again, on the same attempt, for denies the page never showed.
    sim.now += 1_000;
    let opened = sim
        .approve(run.0.id, Some("app"), ApprovalVerdict::Approve)
        .unwrap()
        .publish;
    report(&mut sim, &opened[0], &crate::testing::denied(true));
    assert_eq!(sim.state(run.0.id, "app"), UnitState::AwaitingApproval);
    assert_eq!(sim.job(run.0.id, "app").job.attempt, chosen[0].attempt);
    assert_ne!(shown(&sim, "app"), chosen[0]);

    let by_web = |sim: &mut Sim, chosen: &[ShownJob], verdict, overrides| {
        sim.scheduler.decide_approval(
            run.0.id,
            ApprovalScope::Jobs(chosen),
            verdict,
            "web:lead@example.com",
            "as shown",
            overrides,
            sim.now,
        )
    };
    let stale = format!(
        "none of the 1 chosen job(s) of run {} is still in the wait the page showed; reload \
         the run's page",
        run.0.id
    );
    for verdict in [ApprovalVerdict::Reject, ApprovalVerdict::Approve] {
        // Even from an approver who may override: the wait is not the one shown.
        let refused = by_web(&mut sim, &chosen[..1], verdict, true).unwrap_err();
        assert_eq!(refused, stale, "{verdict:?}");
        assert_eq!(sim.state(run.0.id, "app"), UnitState::AwaitingApproval);
    }

    let (approved, effects) = by_web(
        &mut sim,
        &[chosen[0], chosen[1], chosen[1]],
        ApprovalVerdict::Approve,
        true,
    )
    .unwrap();
    assert_eq!(approved, 1, "web alone, once");
    assert_eq!(units(&effects.publish), ["web"]);
    assert_eq!(
        sim.state(run.0.id, "dns"),
        UnitState::AwaitingApproval,
        "not chosen"
    );
    assert_eq!(sim.state(run.0.id, "app"), UnitState::AwaitingApproval);

    let elsewhere = ShownJob {
        job_id: Uuid::new_v4(),
        ..chosen[1]
    };
    assert_eq!(
        by_web(&mut sim, &[elsewhere], ApprovalVerdict::Approve, true).unwrap_err(),
        format!("none of the chosen jobs is a job of run {}", run.0.id)
    );
}

#[test]
fn a_shown_wait_reads_back_as_it_is_written() {
    let wait = ShownJob {
        job_id: Uuid::from_u128(7),
        attempt: 2,
        since_ms: 1_700_000_000_123,
    };
    assert_eq!(wait.to_string().parse(), Ok(wait));
    for bad in [
        "",
        "7:1:1",
        "00000000-0000-0000-0000-000000000007:1",
        "00000000-0000-0000-0000-000000000007:x:1",
        "00000000-0000-0000-0000-000000000007:1:1:1",
        "00000000-0000-0000-0000-000000000007:-1:1",
    ] {
        assert_eq!(bad.parse::<ShownJob>(), Err(()), "{bad}");
    }
}

#[test]
fn a_rejected_or_expired_override_leaves_the_deny_standing_and_a_final_deny_fails_at_once() {
    let mut sim = Sim::new();
    let rejected = event(push(), &applies(&["a", "b"]), &[("b", "a")]);
    let first = sim.accept(&rejected).publish;
    report(&mut sim, &first[0], &crate::testing::denied(true));
    sim.approve(rejected.0.id, None, ApprovalVerdict::Reject)
        .unwrap();
    assert_eq!(sim.state(rejected.0.id, "a"), UnitState::Failed);
    assert_eq!(
        sim.state(rejected.0.id, "b"),
        UnitState::Skipped("a apply failed".into())
    );

    let expired = event(push(), &applies(&["c"]), &[]);
    let first = sim.accept(&expired).publish;
    report(&mut sim, &first[0], &crate::testing::denied(true));
    sim.scheduler.tick(sim.now + APPROVAL_TIMEOUT_MS);
    assert_eq!(sim.state(expired.0.id, "c"), UnitState::Failed);

    let final_deny = event(push(), &applies(&["d"]), &[]);
    let first = sim.accept(&final_deny).publish;
    report(&mut sim, &first[0], &crate::testing::denied(false));
    assert_eq!(sim.state(final_deny.0.id, "d"), UnitState::Failed);

    let plan = event(pr(9), &[("e", Action::Plan)], &[]);
    let first = sim.accept(&plan).publish;
    report(&mut sim, &first[0], &crate::testing::denied(true));
    assert_eq!(
        sim.state(plan.0.id, "e"),
        UnitState::Failed,
        "a pull request's plan is never held for an override"
    );
}

#[test]
fn expiring_a_gated_job_and_its_gated_dependent_together_ends_each_once() {
    // a ← b, both gated; c runs meanwhile; d is a destroy, which must wait for c.
    let mut sim = Sim::new();
    let (event, plan) = event(
        push(),
        &[
            ("a", Action::Apply),
            ("b", Action::Apply),
            ("c", Action::Apply),
            ("d", Action::Destroy),
        ],
        &[("b", "a")],
    );
    let run = (event, gated(plan, &["a", "b"]));
    let first = sim.accept(&run).publish;
    assert_eq!(units(&first), ["c"]);
    let expired = sim.scheduler.tick(sim.now + APPROVAL_TIMEOUT_MS);
    assert!(
        expired.publish.is_empty(),
        "the destroy started before c ended"
    );
    assert!(matches!(sim.state(run.0.id, "b"), UnitState::Cancelled(_)));
    let next = sim.run_job(&first[0], JobStatus::Succeeded);
    assert_eq!(units(&next), ["d"]);
}

fn drift() -> Trigger {
    Trigger::Drift {
        branch: "main".into(),
    }
}

#[test]
fn drift_checks_take_few_slots_and_yield_to_later_runs() {
    let mut sim = Sim::new();
    let checks: Vec<(&str, Action)> = ["dev/a", "dev/b", "dev/c", "dev/d"]
        .into_iter()
        .map(|u| (u, Action::DriftPlan))
        .collect();
    let drift_run = event(drift(), &checks, &[]);
    let first = sim.accept(&drift_run).publish;
    // settings(): two drift checks per account at once; the rest wait, saying why.
    assert_eq!(units(&first), ["dev/a", "dev/b"]);
    assert!(first.iter().all(|job| job.role == ExecutorRole::Plan));
    let note = sim
        .job(drift_run.0.id, "dev/c")
        .note
        .clone()
        .unwrap_or_default();
    assert!(
        note.contains("waiting for a drift slot of account dev"),
        "{note}"
    );

    // A pull request arrives while the checks run: its plan is queued at once, so it is
    // ahead of every drift check queued after it.
    let pull = event(pr(7), &[("dev/x", Action::Plan)], &[]);
    assert_eq!(units(&sim.accept(&pull).publish), ["dev/x"]);
    // A check ends: the next one is queued only now, behind the pull request's plan.
    let next = sim.run_job(&first[0], JobStatus::Succeeded);
    assert_eq!(units(&next), ["dev/c"]);
    assert_eq!(sim.scheduler.in_flight().get("dev"), Some(&3));
}

#[test]
fn drift_checks_neither_hold_nor_wait_for_a_units_applies() {
    let mut sim = Sim::new();
    let drift_run = event(drift(), &[("prod/app", Action::DriftPlan)], &[]);
    let check = sim.accept(&drift_run).publish;
    assert_eq!(units(&check), ["prod/app"]);
    assert!(matches!(
        sim.claim(&check[0], "w1", false),
        ClaimVerdict::Granted { .. }
    ));
    // An apply of the same unit is queued while the check runs: a plan with -lock=false
    // takes no lock, and the check is not in the unit's queue.
    let apply = event(push(), &applies(&["prod/app"]), &[]);
    assert_eq!(units(&sim.accept(&apply).publish), ["prod/app"]);
    // And a check queued behind a running apply is not held either.
    let again = event(drift(), &[("prod/app", Action::DriftPlan)], &[]);
    let published = sim.accept(&again).publish;
    assert_eq!(units(&published), ["prod/app"]);
    assert_eq!(published[0].action, Action::DriftPlan);
}
