//! The scheduler's property test, run against the real run database: random runs, random
//! outcomes and random interleavings of claims, heartbeats, give-backs, crashed workers whose
//! leases expire, cancellations, retries, approvals, rejections and expired approval waits of
//! gated jobs, and dispatcher restarts that restore from the store. The invariants are checked
//! after every step.

use std::collections::{HashMap, HashSet};

use dispatcher_core::policy::RunPlan;
use dispatcher_core::scheduler::{Effects, Scheduler, Settings};
use proptest::prelude::*;
use proto_types::{
    Action, ApprovalGate, ApprovalVerdict, ChangeEvent, ClaimVerdict, ExecutorRole, Job, JobStatus,
    UnitState,
};
use uuid::Uuid;

use crate::store::Store;
use crate::testing::{
    APPROVER, LEASE_MS, commit, denied, event, gated, outcome, pr, push, settings,
};

/// One run in a generated scenario.
#[derive(Debug, Clone)]
struct RunSpec {
    pr: Option<u64>,
    /// (unit index, destroy?) for each job; unit names come from a small shared pool so that
    /// runs overlap.
    jobs: Vec<(usize, bool)>,
    /// (dependent, dependency) as positions in `jobs`, dependency before dependent.
    edges: Vec<(usize, usize)>,
}

fn run_spec() -> impl Strategy<Value = RunSpec> {
    (
        prop::option::of(1u64..3),
        prop::collection::btree_set(0usize..6, 1..5),
    )
        .prop_flat_map(|(pr, units)| {
            let units: Vec<usize> = units.into_iter().collect();
            let n = units.len();
            (
                Just(pr),
                Just(units),
                prop::collection::vec(prop::bool::weighted(0.2), n),
                prop::collection::vec((0..n, 0..n), 0..6),
            )
                .prop_map(|(pr, units, destroys, pairs)| {
                    let jobs: Vec<(usize, bool)> = units.into_iter().zip(destroys).collect();
                    // Only edges from a later job to an earlier one, between jobs of the same kind
                    // (as the policy allows): acyclic by construction.
                    let edges = pairs
                        .into_iter()
                        .filter(|(a, b)| a > b && jobs[*a].1 == jobs[*b].1)
                        .collect();
                    RunSpec { pr, jobs, edges }
                })
        })
}

/// What the driver does next.
#[derive(Debug, Clone)]
enum Step {
    /// The next run arrives.
    Arrive,
    /// A worker takes the i-th published job (modulo) and claims it.
    Claim { pick: usize, worker: u8 },
    /// The i-th running job (modulo) ends: 0 a transient failure, 1 a failure, 2 a refusal,
    /// 3 given back (the worker shuts down), 7 a policy deny an approver may override,
    /// otherwise success. A job told to stop reports
    /// that it stopped, unless the outcome is 5 or 6 (it succeeded first).
    Finish { pick: usize, outcome: u8 },
    /// An operator cancels the i-th arrived run (modulo).
    Cancel { pick: usize },
    /// Time passes to the next retry (living holders keep heartbeating meanwhile).
    Wait,
    /// The holder of the i-th running job (modulo) sends a heartbeat; when `forged`, another
    /// worker sends one in its name, which must change nothing.
    Heartbeat { pick: usize, forged: bool },
    /// The worker of the i-th running job (modulo) dies: its message is redelivered, and a
    /// lease passes without its heartbeats (the others keep theirs).
    Crash { pick: usize },
    /// The dispatcher restarts: a new scheduler restored from what the store committed.
    Restart,
    /// A lease passes with messages waiting (living holders keep heartbeating), so that a
    /// copy waiting for a dead holder can take over.
    Linger,
    /// An approver approves (or rejects) the gated jobs of the i-th arrived run (modulo): all
    /// of them, or the one of the j-th unit of the pool.
    Approve {
        pick: usize,
        unit: Option<usize>,
        reject: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..3).prop_map(|(pick, worker)| Step::Claim { pick, worker }),
        4 => (any::<usize>(), 0u8..8).prop_map(|(pick, outcome)| Step::Finish { pick, outcome }),
        2 => Just(Step::Arrive),
        1 => any::<usize>().prop_map(|pick| Step::Cancel { pick }),
        1 => Just(Step::Wait),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(pick, forged)| Step::Heartbeat { pick, forged }),
        1 => any::<usize>().prop_map(|pick| Step::Crash { pick }),
        1 => Just(Step::Restart),
        1 => Just(Step::Linger),
        2 => (any::<usize>(), prop::option::of(0usize..POOL.len()), prop::bool::weighted(0.25))
            .prop_map(|(pick, unit, reject)| Step::Approve { pick, unit, reject }),
    ]
}

/// Everything the invariants need to know, checked after every step.
struct Checker {
    /// Per unit, the arrival sequence numbers of mutating jobs in the order they first started.
    starts: HashMap<String, Vec<u64>>,
    granted: HashSet<Uuid>,
    published: HashSet<(Uuid, u32)>,
}

impl Checker {
    fn on_grant(&mut self, scheduler: &Scheduler, job_id: Uuid) {
        let (run, job) = scheduler
            .job_by_id(job_id)
            .expect("a granted job is active");
        let seq = run.seq;
        assert!(
            !matches!(job.approval, Some(ApprovalGate::Waiting { .. })),
            "{} started without an approval",
            job.job.unit
        );
        assert!(
            job.job.policy_override.is_none()
                || matches!(job.approval, Some(ApprovalGate::Approved { .. })),
            "{} runs with a policy override nobody approved",
            job.job.unit
        );
        for &r in &job.requires {
            assert_eq!(
                run.jobs[r].state,
                UnitState::Succeeded,
                "{} started before {} succeeded",
                job.job.unit,
                run.jobs[r].job.unit
            );
        }
        if job.job.action.is_destroy() {
            for other in run.jobs.iter().filter(|j| !j.job.action.is_destroy()) {
                assert!(
                    other.state.is_final(),
                    "{} destroyed before {} ended",
                    job.job.unit,
                    other.job.unit
                );
            }
        }
        if job.job.action.mutates() && self.granted.insert(job_id) {
            self.starts
                .entry(job.job.unit.clone())
                .or_default()
                .push(seq);
        }
    }

    fn on_publish(&mut self, jobs: &[Job]) {
        for job in jobs {
            assert!(
                self.published.insert((job.job_id, job.attempt)),
                "{} attempt {} published twice",
                job.unit,
                job.attempt
            );
        }
    }

    fn check(
        &self,
        scheduler: &Scheduler,
        settings: &Settings,
        running: &[(Job, String)],
        crashed: &HashMap<Uuid, String>,
    ) {
        let mut in_flight_units: HashMap<&str, usize> = HashMap::new();
        let mut in_flight_accounts: HashMap<&str, u32> = HashMap::new();
        let mut plans_in_flight: HashMap<&str, u32> = HashMap::new();
        for run in scheduler.runs() {
            for job in &run.jobs {
                // A gated job's gate opens before it is published, or never. (A job waiting
                // for a policy override ran once; its deny stands if nobody overrides it.)
                let ran = !matches!(
                    job.state,
                    UnitState::Pending
                        | UnitState::AwaitingApproval
                        | UnitState::Skipped(_)
                        | UnitState::Cancelled(_)
                );
                assert!(
                    !(ran
                        && matches!(&job.approval, Some(ApprovalGate::Waiting { policy_sets, .. })
                            if policy_sets.is_empty())),
                    "{} is {:?} without an approval",
                    job.job.unit,
                    job.state
                );
                assert_eq!(
                    job.state == UnitState::AwaitingApproval,
                    matches!(job.approval, Some(ApprovalGate::Waiting { .. }))
                        && !job.state.is_final(),
                    "{}: state {:?} and gate {:?} disagree",
                    job.job.unit,
                    job.state,
                    job.approval
                );
                if matches!(job.state, UnitState::Queued | UnitState::Running) {
                    *in_flight_accounts.entry(&job.job.account).or_default() += 1;
                    if job.job.role == ExecutorRole::Plan {
                        *plans_in_flight.entry(&job.job.account).or_default() += 1;
                    }
                    if job.job.action.mutates() {
                        *in_flight_units.entry(&job.job.unit).or_default() += 1;
                    }
                }
                if job.state == UnitState::Running {
                    let holder = job.lease.as_ref().map(|l| l.worker.as_str());
                    // A dead worker holds its job until someone takes it over.
                    let held = running
                        .iter()
                        .find(|(r, _)| r.job_id == job.job.job_id)
                        .map(|(_, w)| w.as_str())
                        .or_else(|| crashed.get(&job.job.job_id).map(String::as_str));
                    assert_eq!(
                        holder, held,
                        "{} runs on {holder:?} but the workers say {held:?}",
                        job.job.unit
                    );
                }
            }
        }
        // What the workers do, not only what the scheduler thinks: one apply per unit at once.
        let mut applying: HashMap<&str, usize> = HashMap::new();
        for (job, _) in running.iter().filter(|(job, _)| job.action.mutates()) {
            *applying.entry(&job.unit).or_default() += 1;
        }
        for (unit, count) in applying {
            assert!(
                count <= 1,
                "{count} workers apply or destroy {unit} at once"
            );
        }
        let mut holders = HashSet::new();
        for (job, _) in running {
            assert!(
                holders.insert(job.job_id),
                "{} runs on two workers",
                job.unit
            );
        }
        for (unit, count) in in_flight_units {
            assert!(
                count <= 1,
                "{count} applies or destroys of {unit} in flight at once"
            );
        }
        for (account, count) in in_flight_accounts {
            let cap = settings.caps.get(account).copied().unwrap_or(0);
            assert!(
                cap == 0 || count <= cap,
                "{account}: {count} jobs in flight, cap {cap}"
            );
        }
        for (account, count) in plans_in_flight {
            let slots = settings.plan_slots(account);
            assert!(
                slots.is_none_or(|slots| count <= slots),
                "{account}: {count} plans in flight, {slots:?} plan slots"
            );
        }
        for (unit, seqs) in &self.starts {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "applies of {unit} started out of arrival order: {seqs:?}"
            );
        }
    }
}

/// The units runs share; those under `prod/` are gated.
const POOL: [&str; 6] = ["net", "db", "app", "prod/net", "prod/db", "prod/app"];

fn spec_event(spec: &RunSpec) -> (ChangeEvent, RunPlan) {
    let trigger = match spec.pr {
        Some(n) => pr(n),
        None => push(),
    };
    let units: Vec<(&str, Action)> = spec
        .jobs
        .iter()
        .map(|&(u, destroy)| {
            let action = match (spec.pr.is_some(), destroy) {
                (true, false) => Action::Plan,
                (true, true) => Action::PlanDestroy,
                (false, false) => Action::Apply,
                (false, true) => Action::Destroy,
            };
            (POOL[u], action)
        })
        .collect();
    let edges: Vec<(&str, &str)> = spec
        .edges
        .iter()
        .map(|&(a, b)| (units[a].0, units[b].0))
        .collect();
    let (event, plan) = event(trigger, &units, &edges);
    (event, gated(plan, &["prod/net", "prod/db", "prod/app"]))
}

/// A scheduler with a clock.
struct Sim {
    scheduler: Scheduler,
    now: u64,
}

impl Sim {
    fn accept(&mut self, (event, plan): &(ChangeEvent, RunPlan)) -> Effects {
        self.scheduler.accept(event, plan, self.now)
    }
}

/// The world around the scheduler: published messages, workers holding jobs, stop orders, and
/// the run database every step commits to, as the service does.
struct World {
    sim: Sim,
    settings: Settings,
    store: Store,
    checker: Checker,
    arrivals: std::vec::IntoIter<(ChangeEvent, RunPlan)>,
    arrived: Vec<Uuid>,
    /// Job messages on the queues (a given-back job returns here).
    queue: Vec<(Job, bool)>,
    /// Jobs claimed and not finished, with their worker.
    running: Vec<(Job, String)>,
    /// Jobs whose worker was told to stop.
    stopped: HashSet<Uuid>,
    /// Jobs whose holder died, with that holder, until someone takes them over.
    crashed: HashMap<Uuid, String>,
    /// Dispatcher restarts so far.
    restarts: usize,
}

impl World {
    fn absorb(&mut self, effects: Effects) {
        commit(
            &mut self.store,
            &self.sim.scheduler,
            &effects,
            &[],
            self.sim.now,
        );
        self.checker.on_publish(&effects.publish);
        self.queue
            .extend(effects.publish.into_iter().map(|job| (job, false)));
        for (_, order) in effects.stop {
            self.stopped.insert(order.job_id);
        }
    }

    /// Applies one step; whether it moved anything (a claim told to ask again did not).
    fn apply(&mut self, step: Step) -> bool {
        match step {
            Step::Arrive => {
                let Some(event) = self.arrivals.next() else {
                    return false;
                };
                self.arrived.push(event.0.id);
                let effects = self.sim.accept(&event);
                self.absorb(effects);
            }
            Step::Wait => {
                let Some(at) = self.sim.scheduler.next_wakeup(self.sim.now) else {
                    return false;
                };
                self.sim.now = at;
                self.heartbeat_all();
                let effects = self.sim.scheduler.tick(self.sim.now);
                self.absorb(effects);
            }
            Step::Heartbeat { pick, forged } => {
                if self.running.is_empty() {
                    return false;
                }
                let (job, worker) = &self.running[pick % self.running.len()];
                let sender = if forged { "w9" } else { worker.as_str() };
                let renewed =
                    self.sim
                        .scheduler
                        .heartbeat(job.job_id, job.attempt, sender, self.sim.now);
                assert_eq!(
                    renewed, !forged,
                    "a heartbeat from {sender} for {worker}'s job"
                );
            }
            Step::Crash { pick } => {
                if self.running.is_empty() {
                    return false;
                }
                let (job, worker) = self.running.remove(pick % self.running.len());
                self.crashed.insert(job.job_id, worker);
                // The broker redelivers what the dead worker had not acked.
                self.queue.push((job, true));
                self.sim.now += LEASE_MS + 1;
                self.heartbeat_all();
                let effects = self.sim.scheduler.tick(self.sim.now);
                self.absorb(effects);
            }
            Step::Restart => self.restart(),
            Step::Approve { pick, unit, reject } => {
                if self.arrived.is_empty() {
                    return false;
                }
                let run = self.arrived[pick % self.arrived.len()];
                let verdict = if reject {
                    ApprovalVerdict::Reject
                } else {
                    ApprovalVerdict::Approve
                };
                let Ok((jobs, effects)) = self.sim.scheduler.decide_approval(
                    run,
                    unit.map(|u| POOL[u]).into(),
                    verdict,
                    APPROVER,
                    "checked",
                    true,
                    self.sim.now,
                ) else {
                    return false;
                };
                assert!(jobs > 0, "an approval that applied touched no job");
                self.absorb(effects);
            }
            Step::Linger => {
                if self.queue.is_empty() {
                    return false;
                }
                self.sim.now += LEASE_MS + 1;
                self.heartbeat_all();
                let effects = self.sim.scheduler.tick(self.sim.now);
                self.absorb(effects);
            }
            Step::Cancel { pick } => {
                if self.arrived.is_empty() {
                    return false;
                }
                let run = self.arrived[pick % self.arrived.len()];
                let effects = self
                    .sim
                    .scheduler
                    .cancel_run(run, "cancelled by ops", self.sim.now);
                self.absorb(effects);
            }
            Step::Claim { pick, worker } => {
                if self.queue.is_empty() {
                    return false;
                }
                let (job, redelivered) = self.queue.remove(pick % self.queue.len());
                let worker = format!("w{worker}");
                let (verdict, effects) = self.sim.scheduler.claim(
                    job.job_id,
                    job.attempt,
                    &worker,
                    redelivered,
                    Some(&format!("amq.gen-{worker}")),
                    self.sim.now,
                );
                match verdict {
                    ClaimVerdict::Granted { .. } => {
                        self.crashed.remove(&job.job_id);
                        self.checker.on_grant(&self.sim.scheduler, job.job_id);
                        self.running.push((job, worker));
                    }
                    // Someone holds it: the copy waits in the queue, and nothing moved.
                    ClaimVerdict::Denied { retry: true, .. } => {
                        self.queue.push((job, redelivered));
                        self.absorb(effects);
                        return false;
                    }
                    ClaimVerdict::Denied { retry: false, .. } => {}
                }
                self.absorb(effects);
            }
            Step::Finish {
                pick,
                outcome: result,
            } => {
                if self.running.is_empty() {
                    return false;
                }
                let (job, worker) = self.running.remove(pick % self.running.len());
                let now = self.sim.now;
                let effects = if result == 3 && !self.stopped.contains(&job.job_id) {
                    let effects = self
                        .sim
                        .scheduler
                        .release(job.job_id, job.attempt, &worker, now);
                    self.queue.push((job, true));
                    effects
                } else {
                    let report = match result {
                        // Told to stop: it stops, unless it finished first.
                        _ if self.stopped.contains(&job.job_id) && result < 5 => {
                            outcome(JobStatus::Cancelled, "stopped")
                        }
                        0 => outcome(JobStatus::Failed, "Error acquiring the state lock"),
                        1 => outcome(JobStatus::Failed, "boom"),
                        2 => outcome(
                            JobStatus::Refused,
                            "refused: Error acquiring the state lock",
                        ),
                        // A policy deny an approver may override.
                        7 => denied(true),
                        _ => outcome(JobStatus::Succeeded, ""),
                    };
                    self.sim
                        .scheduler
                        .finish(job.job_id, job.attempt, &worker, &report, now)
                };
                self.absorb(effects);
            }
        }
        true
    }

    /// Living holders heartbeat while time passes.
    fn heartbeat_all(&mut self) {
        for (job, worker) in &self.running {
            // A holder whose job was taken over (it was told to stop, then went silent)
            // no longer holds it; its heartbeat changes nothing.
            self.sim
                .scheduler
                .heartbeat(job.job_id, job.attempt, worker, self.sim.now);
        }
    }

    /// The dispatcher restarts from its database. The restored scheduler must hold exactly the
    /// runs that were not final, in the same states, and make the same decisions from here.
    fn restart(&mut self) {
        let (runs, next_seq) = self.store.load_active().expect("load the active runs");
        let restored = Scheduler::restore(self.settings.clone(), runs, next_seq, self.sim.now);
        let before = &self.sim.scheduler;
        let active: Vec<Uuid> = before
            .runs()
            .filter(|run| !run.is_final())
            .map(|run| run.run_id)
            .collect();
        let restored_ids: Vec<Uuid> = restored.runs().map(|run| run.run_id).collect();
        assert_eq!(
            restored_ids, active,
            "the restored runs are the active ones, in order"
        );
        for run in restored.runs() {
            let old = before.run(run.run_id).expect("an active run");
            assert_eq!(
                run.status(),
                old.status(),
                "run {} restored differently",
                run.seq
            );
        }
        let in_flight = |s: &Scheduler| {
            let mut counts: Vec<(String, u32)> = s
                .in_flight()
                .iter()
                .map(|(a, n)| (a.clone(), *n))
                .filter(|(_, n)| *n > 0)
                .collect();
            counts.sort();
            counts
        };
        assert_eq!(
            in_flight(&restored),
            in_flight(before),
            "account slots after a restart"
        );
        assert_eq!(
            restored.waiting(),
            before.waiting(),
            "waiting jobs after a restart"
        );
        assert_eq!(
            restored.awaiting_approval(),
            before.awaiting_approval(),
            "jobs awaiting approval after a restart"
        );
        // Same decisions: what each would publish now, and when each wakes up next.
        let mut old = std::mem::replace(&mut self.sim.scheduler, restored);
        assert_eq!(
            self.sim.scheduler.next_wakeup(self.sim.now),
            old.next_wakeup(self.sim.now),
            "the next retry after a restart"
        );
        let published = |effects: Effects| -> Vec<(Uuid, u32)> {
            let mut jobs: Vec<(Uuid, u32)> = effects
                .publish
                .iter()
                .map(|job| (job.job_id, job.attempt))
                .collect();
            jobs.sort();
            jobs
        };
        let old_next = published(old.tick(self.sim.now));
        let effects = self.sim.scheduler.tick(self.sim.now);
        let new_next = published(Effects {
            publish: effects.publish.clone(),
            ..Effects::default()
        });
        assert_eq!(
            new_next, old_next,
            "a restored scheduler publishes what the old one would"
        );
        self.restarts += 1;
        self.absorb(effects);
    }

    /// Whether the run ended with every job final, by the scheduler or, once evicted by a
    /// restart, by the database.
    fn final_states(&self, run_id: Uuid) -> Vec<(String, String)> {
        if let Some(run) = self.sim.scheduler.run(run_id) {
            return run
                .jobs
                .iter()
                .map(|job| (job.job.unit.clone(), job.state.as_str().to_owned()))
                .collect();
        }
        let detail = self
            .store
            .run_detail(&run_id.to_string(), self.sim.now)
            .expect("a run the database knows");
        assert_ne!(detail.run.state, "running", "an evicted run is final");
        detail
            .jobs
            .iter()
            .map(|job| (job.unit.clone(), job.state.to_string()))
            .collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// No job starts before its dependencies; at most one apply or destroy per unit is in flight,
    /// and they first start in arrival order; caps hold, and plans leave the slots kept for
    /// applies; whoever the scheduler thinks holds a
    /// job holds it, and no job runs on two workers; every job reaches a final state (in the
    /// database too), whatever the interleaving of claims, heartbeats, outcomes, give-backs,
    /// crashed workers, cancellations, retries, approvals, rejections, expiries and restarts;
    /// no gated job starts without an approval, and every gated job ends (run, rejected,
    /// expired, skipped or cancelled); a restart restores the same runs and states and makes
    /// the same decisions.
    #[test]
    fn scheduling_invariants_hold_for_any_interleaving(
        specs in prop::collection::vec(run_spec(), 1..5),
        steps in prop::collection::vec(step(), 0..120),
        cap in 0u32..3,
        reserved_apply_slots in 0u32..3,
    ) {
        let mut settings = settings();
        settings.caps.insert("dev".into(), cap);
        settings.reserved_apply_slots = reserved_apply_slots;
        let checked = settings.clone();
        let mut world = World {
            sim: Sim { scheduler: Scheduler::new(settings.clone()), now: 1_000_000 },
            settings,
            store: Store::in_memory().expect("an in-memory run database"),
            checker: Checker { starts: HashMap::new(), granted: HashSet::new(), published: HashSet::new() },
            arrivals: specs.iter().map(spec_event).collect::<Vec<_>>().into_iter(),
            arrived: Vec::new(),
            queue: Vec::new(),
            running: Vec::new(),
            stopped: HashSet::new(),
            crashed: HashMap::new(),
            restarts: 0,
        };
        for step in steps {
            world.apply(step);
            world.checker.check(&world.sim.scheduler, &checked, &world.running, &world.crashed);
        }
        // Drain: every run arrives, every job is claimed and succeeds (or stops, if told to),
        // every retry comes due, and approval waits expire. It must end with every job final.
        let mut guard = 0;
        loop {
            guard += 1;
            prop_assert!(guard < 10_000, "the schedule did not converge");
            let progressed = world.apply(Step::Arrive)
                || world.apply(Step::Claim { pick: 0, worker: 0 })
                || world.apply(Step::Finish { pick: 0, outcome: 6 })
                || world.apply(Step::Wait)
                || world.apply(Step::Linger);
            world.checker.check(&world.sim.scheduler, &checked, &world.running, &world.crashed);
            if !progressed {
                break;
            }
        }
        for run_id in &world.arrived {
            if let Some(run) = world.sim.scheduler.run(*run_id) {
                for job in &run.jobs {
                    prop_assert!(job.state.is_final(), "{} of run {} stuck in {:?} ({:?})", job.job.unit, run.seq, job.state, job.note);
                    if world.stopped.contains(&job.job.job_id) && job.state != UnitState::Succeeded {
                        prop_assert_eq!(&job.state, &UnitState::Cancelled("cancelled by ops".into()), "{} was told to stop", &job.job.unit);
                    }
                }
                prop_assert!(run.state().is_final());
            }
            // Final in the database too, whether or not a restart evicted it.
            for (unit, state) in world.final_states(*run_id) {
                prop_assert!(
                    ["succeeded", "failed", "skipped", "cancelled"].contains(&state.as_str()),
                    "{} ended {} in the database", unit, state
                );
            }
        }
    }
}
