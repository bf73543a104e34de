//! Builders shared by the tests of the dispatcher's decisions and of its edges: settings, change
//! events with the plan the policy made of them, and workers' reports. Not for production use.

use std::collections::HashMap;

use proto_types::{
    Action, Change, ChangeEvent, ChangeKind, DependencyEdge, JobOutcome, JobStatus, ResourceCounts,
    Trigger,
};
use regex::Regex;
use uuid::Uuid;

use crate::policy::{PlannedUnit, RunPlan};
use crate::scheduler::Settings;

pub const LEASE_MS: u64 = 10_000;
pub const BACKOFF_MS: u64 = 1_000;

pub fn settings() -> Settings {
    Settings {
        caps: HashMap::new(),
        timeouts: HashMap::new(),
        max_attempts: 3,
        backoff_ms: BACKOFF_MS,
        retry_patterns: vec![
            Regex::new("Error acquiring the state lock").expect("a valid pattern"),
        ],
        lease_ms: LEASE_MS,
        approvers: vec![APPROVER.to_owned()],
        approval_timeout_ms: APPROVAL_TIMEOUT_MS,
        drift_jobs_per_account: 2,
        reserved_apply_slots: 1,
    }
}

/// The one broker user [`settings`] lets approve.
pub const APPROVER: &str = "alice";
pub const APPROVAL_TIMEOUT_MS: u64 = 3_600_000;

/// `plan` with the applies and destroys of `units` waiting for an approval.
pub fn gated(mut plan: RunPlan, units: &[&str]) -> RunPlan {
    for planned in &mut plan.units {
        planned.gated = units.contains(&planned.unit.as_str());
    }
    plan
}

/// A change event (only its identity matters here) and the plan the policy made of it. Units
/// under `prod/` belong to the prod account, the others to dev.
pub fn event(
    trigger: Trigger,
    units: &[(&str, Action)],
    edges: &[(&str, &str)],
) -> (ChangeEvent, RunPlan) {
    let event = ChangeEvent {
        id: Uuid::new_v4(),
        repository: "infra".into(),
        trigger,
        base_sha: "a".repeat(40),
        head_sha: "b".repeat(40),
        changes: vec![Change {
            kind: ChangeKind::UnitChanged,
            units: units.iter().map(|(u, _)| (*u).to_owned()).collect(),
            files: Vec::new(),
        }],
        dependencies: Vec::new(),
    };
    let plan = RunPlan {
        units: units
            .iter()
            .map(|(unit, action)| PlannedUnit {
                unit: (*unit).into(),
                account: if unit.starts_with("prod") {
                    "prod".into()
                } else {
                    "dev".into()
                },
                action: *action,
                gated: false,
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
    (event, plan)
}

pub fn push() -> Trigger {
    Trigger::Push {
        branch: "main".into(),
    }
}

pub fn pr(number: u64) -> Trigger {
    Trigger::PullRequest {
        number: Some(number),
        base_branch: "main".into(),
        head_branch: "x".into(),
    }
}

/// A worker's report: exit code 0 or 1, some resource changes, `output`.
pub fn outcome(status: JobStatus, output: &str) -> JobOutcome {
    JobOutcome {
        status,
        exit_code: Some(if status == JobStatus::Succeeded { 0 } else { 1 }),
        resource_changes: Some(ResourceCounts {
            add: 1,
            change: 2,
            destroy: 3,
        }),
        output: output.into(),
        duration_ms: 1_234,
        log: Some("w1:/var/log/pipelines/job.log".into()),
        policy: None,
        drift: None,
    }
}

/// A failed report whose plan the policy set `security` denied; `overridable` when the set
/// allows an approver to override it.
pub fn denied(overridable: bool) -> JobOutcome {
    JobOutcome {
        exit_code: None,
        policy: Some(proto_types::PolicyReport {
            sets: vec![proto_types::PolicySetResult {
                name: "security".into(),
                enforced: true,
                rules: 1,
                denies: vec!["aws_s3_bucket.b: public".into()],
                warnings: Vec::new(),
                error: None,
                overridable,
                overridden: None,
            }],
        }),
        ..outcome(
            JobStatus::Failed,
            "Error: the policy checks did not pass: the plan is not applied",
        )
    }
}

/// A run of one job per `(unit, state)`, each after the one before it (a chain), as
/// `pipelines status` would read it from the store.
pub fn run_detail(jobs: &[(&str, &str)]) -> proto_types::RunDetail {
    use proto_types::{JobSummary, RunDetail, RunSummary};
    let run_id = Uuid::from_u128(0xfeed);
    let jobs: Vec<JobSummary> = jobs
        .iter()
        .enumerate()
        .map(|(i, (unit, state))| JobSummary {
            job_id: Uuid::from_u128(i as u128 + 1),
            unit: (*unit).to_owned(),
            account: "prod".into(),
            action: Action::Apply,
            state: state.parse().expect("a job state"),
            reason: None,
            note: None,
            attempt: 1,
            worker: None,
            exit_code: None,
            duration_ms: None,
            log: None,
            resource_changes: None,
            policy: None,
            approval: None,
            started_ms: None,
            finished_ms: None,
            drift: None,
            requires: if i == 0 {
                Vec::new()
            } else {
                vec![Uuid::from_u128(i as u128)]
            },
        })
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for job in &jobs {
        *counts.entry(job.state.as_str().to_owned()).or_insert(0) += 1;
    }
    let running = jobs.iter().any(|job| !job.state.is_final());
    RunDetail {
        run: RunSummary {
            run_id,
            repository: "infra".into(),
            event: proto_types::EventKind::Push,
            pull_request: None,
            head_sha: "c0ffee".repeat(6) + "c0ff",
            state: if running {
                proto_types::RunPhase::Running
            } else {
                proto_types::RunPhase::Succeeded
            },
            reason: None,
            created_ms: 1_000,
            updated_ms: 61_000,
            jobs: counts,
        },
        jobs,
    }
}
