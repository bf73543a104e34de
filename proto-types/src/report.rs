//! The JSON documents the CLI prints: the detection report of `orchestrate --dry-run --format
//! json` (a contract) and run statuses.

use serde::{Deserialize, Serialize};

use crate::messages::{Change, EventKind, RunStatus};

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
