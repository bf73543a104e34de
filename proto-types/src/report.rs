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

/// One entry of a unit's `.drift-history.json`: a drift a drift run found. A change to that
/// file is a `DriftDetected` change, which applies the unit again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriftHistoryEntry {
    /// When the drift was first seen (`2026-12-04 13:31 UTC`).
    pub since: String,
    pub run_id: Uuid,
    /// The commit the drift run checked.
    pub commit: String,
    pub add: u32,
    pub change: u32,
    pub destroy: u32,
}

/// How many entries a `.drift-history.json` keeps (the oldest go first; git keeps the rest).
pub const DRIFT_HISTORY_ENTRIES: usize = 100;

/// A `.drift-history.json` with `entry` appended to `previous` (the file as it is, if it
/// exists). A file that is not a list of entries is kept under `"previous"` rather than lost.
pub fn append_drift_history(previous: Option<&str>, entry: DriftHistoryEntry) -> String {
    let mut entries: Vec<serde_json::Value> = Vec::new();
    if let Some(text) = previous.filter(|text| !text.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Array(kept)) => entries = kept,
            Ok(other) => entries.push(serde_json::json!({ "previous": other })),
            Err(_) => entries.push(serde_json::json!({ "previous": text })),
        }
    }
    entries.push(serde_json::to_value(entry).expect("an entry always serializes"));
    let from = entries.len().saturating_sub(DRIFT_HISTORY_ENTRIES);
    let mut text = serde_json::to_string_pretty(&entries[from..]).expect("JSON always serializes");
    text.push('\n');
    text
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
    /// The jobs of the run this one starts after (its dependencies in the run).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<Uuid>,
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

    #[test]
    fn a_drift_history_grows_by_one_entry_and_keeps_what_it_cannot_read() {
        let entry = |n: u32| crate::DriftHistoryEntry {
            since: "2026-12-04 13:31 UTC".into(),
            run_id: Uuid::nil(),
            commit: "c".repeat(40),
            add: n,
            change: 0,
            destroy: 0,
        };
        let first = crate::append_drift_history(None, entry(1));
        let second = crate::append_drift_history(Some(&first), entry(2));
        let parsed: Vec<crate::DriftHistoryEntry> = serde_json::from_str(&second).unwrap();
        assert_eq!(parsed, [entry(1), entry(2)]);
        let odd = crate::append_drift_history(Some("not json"), entry(3));
        let parsed: serde_json::Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(parsed[0]["previous"], "not json");
        assert_eq!(parsed[1]["add"], 3);
        let mut long = String::from("[]");
        for n in 0..150 {
            long = crate::append_drift_history(Some(&long), entry(n));
        }
        let parsed: Vec<crate::DriftHistoryEntry> = serde_json::from_str(&long).unwrap();
        assert_eq!(parsed.len(), crate::DRIFT_HISTORY_ENTRIES);
        assert_eq!(parsed.last().unwrap().add, 149);
    }
}
