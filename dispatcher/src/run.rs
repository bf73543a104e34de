//! A run's state machine: which jobs may start, what a job event changes, and the status that
//! results. Pure; the service feeds it messages and publishes what it returns.
//!
//! Ordering rules (DESIGN.md "Run semantics"):
//! - a job starts once every job of an affected dependency in the run has succeeded;
//! - destroy-flavoured jobs wait until every other job of the run is final, then run
//!   dependents first;
//! - a failed or skipped job skips the jobs that require it, saying why; independent jobs go on.

use proto_types::{
    Action, EventKind, Job, JobEvent, JobEventKind, JobOutcome, JobStatus, ResourceCounts,
    RunState, RunStatus, UnitState, UnitStatus,
};
use uuid::Uuid;

use crate::policy::RunPlan;

/// How much of a failed job's output travels in every status snapshot.
const OUTPUT_TAIL_BYTES: usize = 4096;

#[derive(Debug, Clone)]
pub struct Run {
    pub run_id: Uuid,
    pub repository: String,
    pub event: EventKind,
    pub head_sha: String,
    jobs: Vec<RunJob>,
}

#[derive(Debug, Clone)]
struct RunJob {
    job: Job,
    /// Jobs that must succeed first (indexes into `jobs`).
    requires: Vec<usize>,
    /// Jobs that must be final first, whatever their outcome.
    waits_for: Vec<usize>,
    state: UnitState,
    exit_code: Option<i32>,
    resource_changes: Option<ResourceCounts>,
    duration_ms: Option<u64>,
    worker: Option<String>,
    output_tail: Option<String>,
}

/// The id of a unit's job in a run: stable, so a re-planned run yields the same ids and
/// executors can deduplicate.
pub fn job_id(run_id: Uuid, unit: &str, action: Action) -> Uuid {
    Uuid::new_v5(&run_id, format!("{unit}\0{action}").as_bytes())
}

impl Run {
    pub fn new(
        run_id: Uuid,
        repository: &str,
        event: EventKind,
        head_sha: &str,
        base_sha: &str,
        plan: &RunPlan,
    ) -> Run {
        let position = |unit: &str| plan.units.iter().position(|p| p.unit == unit);
        let mut jobs: Vec<RunJob> = plan
            .units
            .iter()
            .map(|planned| RunJob {
                job: Job {
                    job_id: job_id(run_id, &planned.unit, planned.action),
                    run_id,
                    repository: repository.to_owned(),
                    account: planned.account.clone(),
                    commit: head_sha.to_owned(),
                    unit: planned.unit.clone(),
                    action: planned.action,
                    source_commit: planned.action.is_destroy().then(|| base_sha.to_owned()),
                    attempt: 1,
                },
                requires: Vec::new(),
                waits_for: Vec::new(),
                state: UnitState::Pending,
                exit_code: None,
                resource_changes: None,
                duration_ms: None,
                worker: None,
                output_tail: None,
            })
            .collect();

        let non_destroy: Vec<usize> = (0..jobs.len())
            .filter(|&i| !jobs[i].job.action.is_destroy())
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
                // Policy refuses a live unit depending on a deleted one; a deleted unit reading
                // a changed one needs nothing beyond the wait below.
                _ => {}
            }
        }
        for job in jobs.iter_mut().filter(|j| j.job.action.is_destroy()) {
            job.waits_for = non_destroy.clone();
        }
        Run {
            run_id,
            repository: repository.to_owned(),
            event,
            head_sha: head_sha.to_owned(),
            jobs,
        }
    }

    pub fn contains_job(&self, job_id: Uuid) -> bool {
        self.jobs.iter().any(|j| j.job.job_id == job_id)
    }

    /// Marks as queued and returns every job whose turn has come; skips every job that can no
    /// longer run. Call after creating the run and after every state change.
    pub fn take_ready(&mut self) -> Vec<Job> {
        let mut ready = Vec::new();
        // Skips cascade, so repeat until nothing changes; each pass settles at least one job
        // or stops, hence at most `jobs.len()` passes.
        loop {
            let mut changed = false;
            for i in 0..self.jobs.len() {
                if self.jobs[i].state != UnitState::Pending {
                    continue;
                }
                if let Some(reason) = self.blocked_by(i) {
                    self.jobs[i].state = UnitState::Skipped(reason);
                    changed = true;
                    continue;
                }
                let requirements_met = self.jobs[i]
                    .requires
                    .iter()
                    .all(|&r| self.jobs[r].state == UnitState::Succeeded);
                let waits_over = self.jobs[i]
                    .waits_for
                    .iter()
                    .all(|&w| self.jobs[w].state.is_final());
                if requirements_met && waits_over {
                    self.jobs[i].state = UnitState::Queued;
                    ready.push(self.jobs[i].job.clone());
                    changed = true;
                }
            }
            if !changed {
                return ready;
            }
        }
    }

    /// Why job `i` can never run, if a job it requires failed or was skipped. Names the root
    /// failure, so a skip three levels down still says what to fix.
    fn blocked_by(&self, i: usize) -> Option<String> {
        self.jobs[i].requires.iter().find_map(|&r| {
            let required = &self.jobs[r];
            match &required.state {
                UnitState::Failed => Some(format!(
                    "{} {} failed",
                    required.job.unit, required.job.action
                )),
                UnitState::Skipped(reason) => Some(reason.clone()),
                _ => None,
            }
        })
    }

    /// Applies an executor's report. Returns whether anything visible changed. Reports for
    /// jobs already final (duplicates, redeliveries) change nothing.
    pub fn on_event(&mut self, event: &JobEvent) -> bool {
        let Some(job) = self.jobs.iter_mut().find(|j| j.job.job_id == event.job_id) else {
            return false;
        };
        if job.state.is_final() {
            return false;
        }
        match &event.kind {
            JobEventKind::Started => {
                job.worker = Some(event.worker.clone());
                let changed = job.state != UnitState::Running;
                job.state = UnitState::Running;
                changed
            }
            JobEventKind::Heartbeat => false,
            JobEventKind::Finished(outcome) => {
                job.record(outcome, &event.worker);
                true
            }
        }
    }

    pub fn state(&self) -> RunState {
        if self.jobs.iter().any(|j| !j.state.is_final()) {
            return RunState::Running;
        }
        let failed = self
            .jobs
            .iter()
            .filter(|j| j.state == UnitState::Failed)
            .count();
        if failed == 0 {
            return RunState::Succeeded;
        }
        let skipped = self
            .jobs
            .iter()
            .filter(|j| matches!(j.state, UnitState::Skipped(_)))
            .count();
        RunState::Failed(format!(
            "{failed} of {} jobs failed, {skipped} skipped",
            self.jobs.len()
        ))
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
                })
                .collect(),
        }
    }
}

impl RunJob {
    fn record(&mut self, outcome: &JobOutcome, worker: &str) {
        self.state = match outcome.status {
            JobStatus::Succeeded => UnitState::Succeeded,
            JobStatus::Failed => UnitState::Failed,
        };
        self.exit_code = outcome.exit_code;
        self.resource_changes = outcome.resource_changes;
        self.duration_ms = Some(outcome.duration_ms);
        self.worker = Some(worker.to_owned());
        if outcome.status == JobStatus::Failed {
            self.output_tail = Some(tail(&outcome.output, OUTPUT_TAIL_BYTES).to_owned());
        }
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

#[cfg(test)]
mod tests {
    use proto_types::DependencyEdge;

    use super::*;
    use crate::policy::PlannedUnit;

    fn run(units: &[(&str, Action)], edges: &[(&str, &str)]) -> Run {
        let plan = RunPlan {
            units: units
                .iter()
                .map(|(unit, action)| PlannedUnit {
                    unit: (*unit).into(),
                    account: "dev".into(),
                    action: *action,
                })
                .collect(),
            edges: edges
                .iter()
                .map(|(u, d)| DependencyEdge {
                    unit: (*u).into(),
                    depends_on: (*d).into(),
                })
                .collect(),
        };
        Run::new(
            Uuid::new_v4(),
            "infra",
            EventKind::Push,
            &"b".repeat(40),
            &"a".repeat(40),
            &plan,
        )
    }

    fn units(jobs: &[Job]) -> Vec<&str> {
        let mut units: Vec<&str> = jobs.iter().map(|j| j.unit.as_str()).collect();
        units.sort_unstable();
        units
    }

    fn finish(run: &mut Run, unit: &str, status: JobStatus) {
        let job_id = run
            .jobs
            .iter()
            .find(|j| j.job.unit == unit)
            .unwrap()
            .job
            .job_id;
        let event = JobEvent {
            job_id,
            run_id: run.run_id,
            worker: "w1".into(),
            kind: JobEventKind::Finished(JobOutcome {
                status,
                exit_code: Some(if status == JobStatus::Succeeded { 0 } else { 1 }),
                resource_changes: None,
                output: "some output".into(),
                duration_ms: 10,
            }),
        };
        assert!(run.on_event(&event), "finishing {unit} changed nothing");
    }

    fn state_of<'a>(run: &'a Run, unit: &str) -> &'a UnitState {
        &run.jobs.iter().find(|j| j.job.unit == unit).unwrap().state
    }

    #[test]
    fn jobs_start_in_dependency_layers() {
        // net ← db ← app, net ← cache ← app
        let mut run = run(
            &[
                ("app", Action::Apply),
                ("cache", Action::Apply),
                ("db", Action::Apply),
                ("net", Action::Apply),
            ],
            &[
                ("app", "db"),
                ("app", "cache"),
                ("db", "net"),
                ("cache", "net"),
            ],
        );
        assert_eq!(units(&run.take_ready()), ["net"]);
        assert!(
            run.take_ready().is_empty(),
            "a queued job is not handed out twice"
        );
        finish(&mut run, "net", JobStatus::Succeeded);
        assert_eq!(units(&run.take_ready()), ["cache", "db"]);
        finish(&mut run, "db", JobStatus::Succeeded);
        assert!(run.take_ready().is_empty(), "app still waits for cache");
        finish(&mut run, "cache", JobStatus::Succeeded);
        assert_eq!(units(&run.take_ready()), ["app"]);
        finish(&mut run, "app", JobStatus::Succeeded);
        assert_eq!(run.state(), RunState::Succeeded);
    }

    #[test]
    fn destroys_wait_for_every_apply_then_go_dependents_first() {
        let mut run = run(
            &[
                ("new", Action::Apply),
                ("old-app", Action::Destroy),
                ("old-db", Action::Destroy),
            ],
            &[("old-app", "old-db")],
        );
        assert_eq!(units(&run.take_ready()), ["new"]);
        finish(&mut run, "new", JobStatus::Failed);
        assert_eq!(
            units(&run.take_ready()),
            ["old-app"],
            "destroys wait for applies, not on their success"
        );
        finish(&mut run, "old-app", JobStatus::Succeeded);
        assert_eq!(units(&run.take_ready()), ["old-db"]);
        let job = run.jobs.iter().find(|j| j.job.unit == "old-db").unwrap();
        assert_eq!(
            job.job.source_commit.as_deref(),
            Some(&*"a".repeat(40)),
            "destroys read the base"
        );
    }

    #[test]
    fn a_failure_skips_its_dependents_transitively_and_independent_units_go_on() {
        let mut run = run(
            &[
                ("db", Action::Apply),
                ("app", Action::Apply),
                ("monitor", Action::Apply),
                ("dns", Action::Apply),
            ],
            &[("app", "db"), ("monitor", "app")],
        );
        assert_eq!(units(&run.take_ready()), ["db", "dns"]);
        finish(&mut run, "db", JobStatus::Failed);
        assert!(run.take_ready().is_empty());
        assert_eq!(
            state_of(&run, "app"),
            &UnitState::Skipped("db apply failed".into())
        );
        assert_eq!(
            state_of(&run, "monitor"),
            &UnitState::Skipped("db apply failed".into())
        );
        assert_eq!(run.state(), RunState::Running, "dns is still running");
        finish(&mut run, "dns", JobStatus::Succeeded);
        assert_eq!(
            run.state(),
            RunState::Failed("1 of 4 jobs failed, 2 skipped".into())
        );
        let status = run.status();
        let db = status.units.iter().find(|u| u.unit == "db").unwrap();
        assert_eq!(db.output_tail.as_deref(), Some("some output"));
    }

    #[test]
    fn duplicate_and_late_events_change_nothing() {
        let mut run = run(&[("db", Action::Apply)], &[]);
        run.take_ready();
        finish(&mut run, "db", JobStatus::Succeeded);
        let job_id = run.jobs[0].job.job_id;
        let late = JobEvent {
            job_id,
            run_id: run.run_id,
            worker: "w2".into(),
            kind: JobEventKind::Started,
        };
        assert!(!run.on_event(&late));
        assert_eq!(state_of(&run, "db"), &UnitState::Succeeded);
    }

    #[test]
    fn job_ids_are_stable_per_run_unit_and_action() {
        let run_id = Uuid::new_v4();
        assert_eq!(
            job_id(run_id, "a", Action::Apply),
            job_id(run_id, "a", Action::Apply)
        );
        assert_ne!(
            job_id(run_id, "a", Action::Apply),
            job_id(run_id, "a", Action::Destroy)
        );
        assert_ne!(
            job_id(run_id, "a", Action::Apply),
            job_id(Uuid::new_v4(), "a", Action::Apply)
        );
    }

    #[test]
    fn an_empty_run_succeeds_at_once() {
        let mut run = run(&[], &[]);
        assert!(run.take_ready().is_empty());
        assert_eq!(run.state(), RunState::Succeeded);
    }

    #[test]
    fn the_output_tail_is_cut_on_a_character_boundary() {
        assert_eq!(tail("héllo", 4), "llo");
        assert_eq!(tail("abc", 10), "abc");
    }
}
