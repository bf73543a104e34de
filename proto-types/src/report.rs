//! The JSON documents the CLI prints: the detection report of `orchestrate --dry-run --format
//! json` (a contract) and run statuses.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use uuid::Uuid;

use crate::messages::{Action, Change, EventKind, ResourceCounts, RunStatus};

/// `{"base_sha","head_sha","event","changes":[{"kind","units","files"}],"warnings":[..]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DetectionReport {
    pub base_sha: String,
    pub head_sha: String,
    pub event: EventKind,
    pub changes: Vec<Change>,
    pub warnings: Vec<String>,
}

impl DetectionReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}

/// Where a run is, as `pipelines status` and the reports show it: `running`, `succeeded`,
/// `failed`, `rejected` or `cancelled` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunPhase {
    Running,
    Succeeded,
    Failed,
    Rejected,
    Cancelled,
}

/// Where a job is: `pending`, `awaiting-approval`, `queued`, `running`, `succeeded`, `failed`,
/// `skipped` or `cancelled` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobPhase {
    Pending,
    Queued,
    Running,
    Succeeded,
    Failed,
    Skipped,
    Cancelled,
    #[serde(rename = "awaiting-approval")]
    AwaitingApproval,
}

/// The name each phase has in JSON, in the database and on screen; and its parser.
macro_rules! phase_names {
    ($phase:ident { $($variant:ident => $name:literal),* $(,)? }) => {
        impl $phase {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($phase::$variant => $name),*
                }
            }

            pub fn is_final(self) -> bool {
                !matches!(
                    self.as_str(),
                    "pending" | "queued" | "running" | "awaiting-approval"
                )
            }
        }

        impl std::str::FromStr for $phase {
            type Err = String;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($name => Ok($phase::$variant),)*
                    other => Err(format!("{other:?} is not a {}", stringify!($phase))),
                }
            }
        }

        impl std::fmt::Display for $phase {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        /// Comparisons with the JSON name, for tests and scripts that read the documents.
        impl PartialEq<&str> for $phase {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }

        impl PartialEq<str> for $phase {
            fn eq(&self, other: &str) -> bool {
                self.as_str() == other
            }
        }
    };
}

phase_names!(RunPhase {
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Rejected => "rejected",
    Cancelled => "cancelled",
});

phase_names!(JobPhase {
    Pending => "pending",
    Queued => "queued",
    Running => "running",
    Succeeded => "succeeded",
    Failed => "failed",
    Skipped => "skipped",
    Cancelled => "cancelled",
    AwaitingApproval => "awaiting-approval",
});

/// A run as `pipelines status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSummary {
    pub run_id: Uuid,
    pub repository: String,
    pub event: EventKind,
    pub pull_request: Option<u64>,
    pub head_sha: String,
    pub state: RunPhase,
    /// Why it failed, was rejected or was cancelled.
    pub reason: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// When its state last changed.
    pub updated_ms: u64,
    /// How many of its jobs are in each state.
    pub jobs: BTreeMap<String, u32>,
}

/// What a unit's last drift check found: `in-sync`, `drifted` or `error` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DriftState {
    /// The plan was empty: the infrastructure matches the code.
    InSync,
    /// The plan would change something: the infrastructure moved away from the code.
    Drifted,
    /// The check could not plan (a failure, a timeout, a refusal): nothing is known.
    Error,
}

impl DriftState {
    pub fn as_str(self) -> &'static str {
        match self {
            DriftState::InSync => "in-sync",
            DriftState::Drifted => "drifted",
            DriftState::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<DriftState> {
        [DriftState::InSync, DriftState::Drifted, DriftState::Error]
            .into_iter()
            .find(|state| state.as_str() == text)
    }
}

/// A unit's drift, as `pipelines drift status` lists it: the last check's finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftUnit {
    pub repository: String,
    pub unit: String,
    pub account: String,
    pub state: DriftState,
    /// Since when the unit has been in this state (for `drifted`: the first check that saw
    /// this drift), in ms since the epoch.
    pub since_ms: u64,
    /// When it was last checked.
    pub checked_ms: u64,
    /// The drift run that checked it last, and the commit it checked.
    pub run_id: Uuid,
    pub commit: String,
    /// Resources the plan would add, change and destroy.
    pub resource_changes: Option<ResourceCounts>,
    /// The resources the plan would change, `address (actions)`.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Resources to change beyond those listed.
    #[serde(default)]
    pub more: u32,
    /// The digest of the drift: the same drift seen again has the same digest.
    pub digest: Option<String>,
    /// Why the check failed.
    pub error: Option<String>,
}

/// A job as `pipelines status RUN_ID` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: Uuid,
    pub unit: String,
    pub account: String,
    pub action: Action,
    pub state: JobPhase,
    /// Why it was skipped or cancelled, or the end of a failure's output.
    pub reason: Option<String>,
    /// Why a pending job waits (a unit held by an earlier run, an account cap, a backoff).
    pub note: Option<String>,
    pub attempt: u32,
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    /// How long it ran, or has been running.
    pub duration_ms: Option<u64>,
    /// Where the worker keeps the job's whole log (`<worker>:<path>`).
    pub log: Option<String>,
    /// Resources to add, change and destroy, from the plan.
    pub resource_changes: Option<ResourceCounts>,
    /// What the policy sets governing the unit said about its plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<crate::PolicyReport>,
    /// Its approval gate: who may approve and since when, or who approved and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::ApprovalGate>,
    /// When the dispatcher granted a worker the job (its latest attempt), in ms since the epoch.
    #[serde(default)]
    pub started_ms: Option<u64>,
    /// When the job's outcome arrived, in ms since the epoch.
    #[serde(default)]
    pub finished_ms: Option<u64>,
    /// What a drift check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<crate::DriftFindings>,
}

/// `pipelines status RUN_ID`: a run and its jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetail {
    pub run: RunSummary,
    pub jobs: Vec<JobSummary>,
}

/// Pretty JSON of any report, for `--format json`.
pub fn to_json<T: Serialize>(report: &T) -> String {
    serde_json::to_string_pretty(report).expect("reports always serialize")
}

/// A run's status as JSON, for `--wait --format json`.
pub fn run_status_json(status: &RunStatus) -> String {
    serde_json::to_string_pretty(status).expect("a run status always serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::ChangeKind;

    #[test]
    fn json_follows_the_contract() {
        let report = DetectionReport {
            base_sha: "a".into(),
            head_sha: "b".into(),
            event: EventKind::PullRequest,
            changes: vec![Change {
                kind: ChangeKind::UnitDeleted,
                units: vec!["dev/app".into()],
                files: vec!["dev/app/main.tf".into()],
            }],
            warnings: vec![],
        };
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "base_sha": "a",
                "head_sha": "b",
                "event": "pull-request",
                "changes": [{"kind": "UnitDeleted", "units": ["dev/app"], "files": ["dev/app/main.tf"]}],
                "warnings": []
            })
        );
    }
}
