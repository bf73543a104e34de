//! The GitHub Actions event payload (`GITHUB_EVENT_NAME`, `GITHUB_EVENT_PATH`): what to compare
//! when `orchestrate` runs in Actions without flags. Pure: payload text in, revisions out.

use proto_types::EventKind;

/// Revisions and names taken from an Actions event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GithubEvent {
    pub event: EventKind,
    /// Pull requests: the base commit. Pushes: `before` (all zeros for a new branch).
    pub base: String,
    pub head: String,
    pub pr: Option<u64>,
    /// Pushes: the pushed branch. Pull requests: the head branch.
    pub branch: Option<String>,
}

/// Reads the payload of a `pull_request`, `pull_request_target` or `push` event.
pub fn from_payload(event_name: &str, payload: &str) -> Result<GithubEvent, String> {
    let json: serde_json::Value = serde_json::from_str(payload)
        .map_err(|err| format!("the event payload is not JSON: {err}"))?;
    let text = |pointer: &str| -> Result<String, String> {
        json.pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("the {event_name} payload has no {pointer}"))
    };
    match event_name {
        "pull_request" | "pull_request_target" => Ok(GithubEvent {
            event: EventKind::PullRequest,
            base: text("/pull_request/base/sha")?,
            head: text("/pull_request/head/sha")?,
            pr: json
                .pointer("/pull_request/number")
                .and_then(serde_json::Value::as_u64),
            branch: text("/pull_request/head/ref").ok(),
        }),
        "push" => {
            let git_ref = text("/ref")?;
            Ok(GithubEvent {
                event: EventKind::Push,
                base: text("/before")?,
                head: text("/after")?,
                pr: None,
                branch: git_ref.strip_prefix("refs/heads/").map(str::to_owned),
            })
        }
        other => Err(format!(
            "GITHUB_EVENT_NAME is {other:?}: pass --base, --head and --event, or run on pull_request or push"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_request_payloads_give_base_head_number_and_branch() {
        let payload = r#"{"number": 12, "pull_request": {"number": 12,
            "base": {"sha": "aaa", "ref": "main"}, "head": {"sha": "bbb", "ref": "feature/x"}}}"#;
        assert_eq!(
            from_payload("pull_request", payload),
            Ok(GithubEvent {
                event: EventKind::PullRequest,
                base: "aaa".into(),
                head: "bbb".into(),
                pr: Some(12),
                branch: Some("feature/x".into())
            })
        );
    }

    #[test]
    fn push_payloads_give_before_after_and_branch() {
        let payload = r#"{"ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000", "after": "ccc"}"#;
        let event = from_payload("push", payload).unwrap();
        assert_eq!(
            (event.event, event.head.as_str(), event.branch.as_deref()),
            (EventKind::Push, "ccc", Some("main"))
        );
    }

    #[test]
    fn other_events_and_bad_payloads_are_explained() {
        assert!(
            from_payload("workflow_dispatch", "{}")
                .unwrap_err()
                .contains("pass --base")
        );
        assert!(from_payload("push", "{}").unwrap_err().contains("no /ref"));
        assert!(
            from_payload("push", "not json")
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
