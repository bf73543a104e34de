//! What `pipelines status` prints: runs and their jobs as aligned text. Pure.

use std::fmt::Write as _;

use proto_types::{
    DriftState, DriftUnit, JobPhase, ResourceCounts, RunDetail, RunPhase, RunSummary,
};

use crate::report::{PolicyMessage, policy_messages};

/// One line saying why a job failed: terraform's first `Error:` line in the output's tail if
/// there is one, else the last line, after the exit code.
pub fn failure_reason(output_tail: &str, exit_code: Option<i32>) -> String {
    let clean = |line: &str| {
        printable(
            line.trim_start_matches(['│', '╷', '╵', ' ', '\t'])
                .trim_end(),
        )
    };
    let lines: Vec<String> = output_tail
        .lines()
        .map(clean)
        .filter(|line| !line.is_empty())
        .collect();
    let line = lines
        .iter()
        .find(|line| line.starts_with("Error:") || line.starts_with("ERROR"))
        .or_else(|| lines.last())
        .map_or("no output", String::as_str);
    let line = truncate(line, 160);
    match exit_code {
        Some(code) => format!("exit code {code}: {line}"),
        None => line,
    }
}

/// `text` as `pipelines status` shows it: what a job printed must not drive the terminal of
/// whoever reads it (no control characters) nor reorder what they read (bidirectional
/// formatting characters revealed).
fn printable(text: &str) -> String {
    proto_types::untrusted_text::printable(text)
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(max_chars - 1).collect();
    cut.push('…');
    cut
}

/// `pipelines status`: the most recent runs, newest first.
pub fn render_runs(runs: &[RunSummary], now: u64) -> String {
    if runs.is_empty() {
        return "No runs yet.\n".to_owned();
    }
    let mut rows = vec![
        [
            "RUN",
            "REPOSITORY",
            "EVENT",
            "STATE",
            "JOBS",
            "AGE",
            "REASON",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for run in runs {
        let event = match run.pull_request {
            Some(number) => format!("{} #{number}", run.event),
            None => run.event.to_string(),
        };
        // A rejected run's repository and reason are the event's, as sent: printable only.
        rows.push(vec![
            run.run_id.to_string(),
            printable(&run.repository),
            event,
            run.state.to_string(),
            job_counts(run),
            format!("{} ago", duration(now.saturating_sub(run.created_ms))),
            run.reason
                .as_deref()
                .map(|r| truncate(&printable(r), 100))
                .unwrap_or_default(),
        ]);
    }
    table(&rows)
}

/// `pipelines status RUN_ID`: the run, then one line per job.
pub fn render_run(detail: &RunDetail, now: u64) -> String {
    let run = &detail.run;
    let mut out = String::new();
    let event = match run.pull_request {
        Some(number) => format!("{} #{number}", run.event),
        None => run.event.to_string(),
    };
    let head: String = printable(&run.head_sha).chars().take(12).collect();
    let _ = write!(
        out,
        "Run {} ({}, {event}, head {head}): {}",
        run.run_id,
        printable(&run.repository),
        run.state
    );
    if let Some(reason) = &run.reason {
        let _ = write!(out, ": {}", printable(reason));
    }
    let elapsed = if run.state == RunPhase::Running {
        now
    } else {
        run.updated_ms
    };
    let _ = writeln!(
        out,
        ", {}.",
        duration(elapsed.saturating_sub(run.created_ms))
    );
    if detail.jobs.is_empty() {
        out.push_str("No jobs.\n");
        return out;
    }
    let mut rows = vec![
        [
            "UNIT", "ACCOUNT", "ACTION", "STATE", "ATTEMPT", "WORKER", "DURATION", "POLICY",
            "REASON",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for job in &detail.jobs {
        let gate = job
            .approval
            .as_ref()
            .filter(|_| job.state == JobPhase::AwaitingApproval)
            .and_then(|gate| crate::report::approval_note(gate, job.state));
        let drift = job
            .drift
            .as_ref()
            .filter(|_| job.state == JobPhase::Succeeded)
            .map(|found| drift_note(found, job.resource_changes));
        let why = job
            .reason
            .as_deref()
            .or(job.note.as_deref())
            .or(gate.as_deref())
            .or(drift.as_deref())
            .unwrap_or_default();
        rows.push(vec![
            printable(&job.unit),
            job.account.clone(),
            job.action.to_string(),
            job.state.to_string(),
            job.attempt.to_string(),
            job.worker.as_deref().map_or_else(|| "-".into(), printable),
            job.duration_ms.map_or_else(|| "-".into(), duration),
            job.policy
                .as_ref()
                .map_or_else(|| "-".into(), crate::report::policy_cell),
            printable(why),
        ]);
    }
    out.push_str(&table(&rows));
    let logs: Vec<String> = detail
        .jobs
        .iter()
        .filter_map(|job| {
            job.log.as_ref().map(|log| {
                format!(
                    "  {} {}: {}",
                    printable(&job.unit),
                    job.action,
                    printable(log)
                )
            })
        })
        .collect();
    if !logs.is_empty() {
        out.push_str("Logs (worker:path):\n");
        out.push_str(&logs.join("\n"));
        out.push('\n');
    }
    let policy: Vec<String> = detail
        .jobs
        .iter()
        .filter_map(|job| Some((job, job.policy.as_ref()?)))
        .flat_map(|(job, report)| {
            policy_messages(report).map(move |(set, kind, text)| {
                let kind = match kind {
                    PolicyMessage::Error => "error",
                    PolicyMessage::Deny => "deny",
                    PolicyMessage::DenyOverridden => "deny (overridden)",
                    PolicyMessage::DenyInWarnMode => "warn (deny, warn mode)",
                    PolicyMessage::Warning => "warn",
                };
                let text = printable(text);
                format!("  {} {}: {kind} [{set}] {text}", job.unit, job.action)
            })
        })
        .collect();
    let approvals: Vec<String> = detail
        .jobs
        .iter()
        .filter_map(|job| {
            let note = crate::report::approval_note(job.approval.as_ref()?, job.state)?;
            Some(format!("  {} {}: {note}", job.unit, job.action))
        })
        .collect();
    if !approvals.is_empty() {
        out.push_str("Approvals:\n");
        out.push_str(&approvals.join("\n"));
        out.push('\n');
    }
    if !policy.is_empty() {
        out.push_str("Policy messages:\n");
        out.push_str(&policy.join("\n"));
        out.push('\n');
    }
    out
}

fn job_counts(run: &RunSummary) -> String {
    if run.jobs.is_empty() {
        return "-".into();
    }
    // Most interesting first.
    let order = [
        "failed",
        "awaiting-approval",
        "running",
        "queued",
        "pending",
        "skipped",
        "cancelled",
        "succeeded",
    ];
    let mut parts: Vec<String> = order
        .iter()
        .filter_map(|state| run.jobs.get(*state).map(|count| format!("{count} {state}")))
        .collect();
    parts.extend(
        run.jobs
            .iter()
            .filter(|(state, _)| !order.contains(&state.as_str()))
            .map(|(state, count)| format!("{count} {state}")),
    );
    parts.join(", ")
}

/// A drift check's answer in a word, with its plan's counts when it drifted.
fn drift_note(found: &proto_types::DriftFindings, counts: Option<ResourceCounts>) -> String {
    match (found.drifted, counts) {
        (false, _) => "in sync".to_owned(),
        (true, Some(counts)) => format!("drifted: {counts}"),
        (true, None) => "drifted".to_owned(),
    }
}

/// `pipelines drift status`: every unit's last drift finding, drifted and failed ones first.
pub fn render_drift(units: &[DriftUnit], now: u64) -> String {
    if units.is_empty() {
        return "No drift check has finished yet: run `pipelines orchestrate --event drift`, \
                or give a repository a [[drift]] schedule.\n"
            .to_owned();
    }
    let mut sorted: Vec<&DriftUnit> = units.iter().collect();
    sorted.sort_by_key(|unit| {
        (
            match unit.state {
                DriftState::Drifted => 0,
                DriftState::Error => 1,
                DriftState::InSync => 2,
            },
            unit.repository.as_str(),
            unit.unit.as_str(),
        )
    });
    let mut rows = vec![
        [
            "REPOSITORY",
            "UNIT",
            "ACCOUNT",
            "STATE",
            "SINCE",
            "CHECKED",
            "PLAN",
            "ERROR",
        ]
        .map(str::to_owned)
        .to_vec(),
    ];
    for unit in sorted {
        rows.push(vec![
            unit.repository.clone(),
            unit.unit.clone(),
            unit.account.clone(),
            unit.state.as_str().to_owned(),
            format!("{} ago", duration(now.saturating_sub(unit.since_ms))),
            format!("{} ago", duration(now.saturating_sub(unit.checked_ms))),
            unit.resource_changes
                .map_or_else(|| "-".to_owned(), |c| c.to_string()),
            unit.error
                .as_deref()
                .and_then(|e| e.lines().last())
                .unwrap_or("-")
                .to_owned(),
        ]);
    }
    let drifted = units
        .iter()
        .filter(|u| u.state == DriftState::Drifted)
        .count();
    let errors = units
        .iter()
        .filter(|u| u.state == DriftState::Error)
        .count();
    format!(
        "{}{} unit(s): {drifted} drifted, {errors} could not be checked, {} in sync.\n",
        table(&rows),
        units.len(),
        units.len() - drifted - errors
    )
}

/// `850ms`, `12.3s`, `4m05s`, `2h03m`.
pub fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{}.{}s", secs, (ms % 1000) / 100),
        60_000..3_600_000 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto_types::{Action, EventKind, JobSummary};
    use uuid::Uuid;

    use super::*;

    #[test]
    fn the_failure_reason_is_terraforms_error_line_after_the_exit_code() {
        let output =
            "Plan: 1 to add\n╷\n│ Error: Invalid reference\n│ \n│   on main.tf line 3:\n╵\n";
        assert_eq!(
            failure_reason(output, Some(1)),
            "exit code 1: Error: Invalid reference"
        );
        assert_eq!(failure_reason("first\nlast line\n\n", None), "last line");
        assert_eq!(failure_reason("", Some(137)), "exit code 137: no output");
        // A job's terminal escapes (here: clear the screen, then fake a success) stay inert.
        assert_eq!(
            failure_reason("Error: boom\u{1b}[2J\u{1b}[32mall good\u{7}\n", Some(1)),
            "exit code 1: Error: boom[2J[32mall good"
        );
        assert_eq!(failure_reason(&"x".repeat(300), None).chars().count(), 160);
    }

    #[test]
    fn a_failure_reason_shows_bidi_controls_instead_of_obeying_them() {
        assert_eq!(
            failure_reason("Error: \u{202E}deen on\u{202C}\n", Some(1)),
            "exit code 1: Error: <U+202E>deen on<U+202C>"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(245_000), "4m05s");
        assert_eq!(duration(7_380_000), "2h03m");
    }

    fn summary() -> RunSummary {
        RunSummary {
            run_id: Uuid::nil(),
            repository: "infra".into(),
            event: EventKind::PullRequest,
            pull_request: Some(7),
            head_sha: "0123456789abcdef".into(),
            state: RunPhase::Failed,
            reason: Some("1 of 2 jobs failed, 0 skipped".into()),
            created_ms: 1_000,
            updated_ms: 61_000,
            jobs: BTreeMap::from([("failed".into(), 1), ("succeeded".into(), 1)]),
        }
    }

    #[test]
    fn the_run_list_aligns_columns_and_leads_with_what_matters() {
        let text = render_runs(&[summary()], 121_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("RUN "), "{text}");
        assert!(lines[1].contains("pull-request #7"), "{text}");
        assert!(lines[1].contains("1 failed, 1 succeeded"), "{text}");
        assert!(lines[1].contains("2m00s ago"), "{text}");
        assert_eq!(
            lines[0].find("STATE"),
            lines[1].find("failed"),
            "columns misaligned:\n{text}"
        );
        assert_eq!(render_runs(&[], 0), "No runs yet.\n");
    }

    #[test]
    fn a_run_lists_each_job_with_its_reason_or_note() {
        let job = |unit: &str, state: &str, reason: Option<&str>, note: Option<&str>| JobSummary {
            job_id: Uuid::nil(),
            unit: unit.into(),
            account: "dev".into(),
            action: Action::Apply,
            state: state.parse().expect("a state name"),
            reason: reason.map(Into::into),
            note: note.map(Into::into),
            attempt: 1,
            worker: None,
            exit_code: None,
            duration_ms: Some(1_500),
            log: None,
            resource_changes: None,
            started_ms: None,
            finished_ms: None,
            drift: None,
            requires: Vec::new(),
            approval: None,
            policy: None,
        };
        let detail = RunDetail {
            run: summary(),
            jobs: vec![
                job("net", "failed", Some("exit code 1: Error: boom"), None),
                job("app", "skipped", Some("net apply failed"), None),
                job(
                    "db",
                    "pending",
                    None,
                    Some("waiting for run X to finish db"),
                ),
            ],
        };
        let text = render_run(&detail, 0);
        assert!(text.starts_with("Run 00000000-0000-0000-0000-000000000000 (infra, pull-request #7, head 0123456789ab): failed: 1 of 2 jobs failed, 0 skipped, 1m00s."), "{text}");
        assert!(text.contains("net   dev      apply   failed   1        -       1.5s      -       exit code 1: Error: boom"), "{text}");
        assert!(text.contains("net apply failed"), "{text}");
        assert!(text.contains("waiting for run X to finish db"), "{text}");

        // A unit's path (a pull request's word) and a worker's name and log place (the
        // sender's) neither drive the terminal nor reorder what is read.
        let mut odd = job("dev/\u{202E}ppa", "succeeded", None, None);
        odd.worker = Some("w\u{1b}[2J1".into());
        odd.log = Some("w1:/l\u{1b}]0;title\u{7}.log".into());
        let text = render_run(
            &RunDetail {
                run: summary(),
                jobs: vec![odd],
            },
            0,
        );
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{7}') && !text.contains('\u{202E}'),
            "{text:?}"
        );
        assert!(text.contains("dev/<U+202E>ppa"), "{text}");
        assert!(text.contains("w[2J1"), "{text}");
        assert!(text.contains("w1:/l]0;title.log"), "{text}");
    }

    #[test]
    fn policy_messages_follow_the_table_under_their_unit() {
        let mut detail = RunDetail {
            run: summary(),
            jobs: Vec::new(),
        };
        let job = JobSummary {
            job_id: Uuid::nil(),
            unit: "dev/bucket".into(),
            account: "dev".into(),
            action: Action::Plan,
            state: "failed".parse().unwrap(),
            reason: None,
            note: None,
            attempt: 1,
            worker: None,
            exit_code: None,
            duration_ms: None,
            log: None,
            resource_changes: None,
            started_ms: None,
            finished_ms: None,
            drift: None,
            requires: Vec::new(),
            approval: None,
            policy: Some(proto_types::PolicyReport {
                sets: vec![proto_types::PolicySetResult {
                    name: "security".into(),
                    enforced: true,
                    rules: 1,
                    denies: vec!["terraform_data.b: not allowed".into()],
                    // A plan's value quoted in a message carries a terminal escape.
                    warnings: vec!["mind \u{1b}[2Kprod".into()],
                    error: None,
                    overridable: false,
                    overridden: None,
                }],
            }),
        };
        detail.jobs.push(job);
        let text = render_run(&detail, 0);
        assert!(text.contains("denied (1), 1 warning · 1 rule(s)"), "{text}");
        assert!(
            text.contains("Policy messages:\n  dev/bucket plan: deny [security] terraform_data.b: not allowed\n  dev/bucket plan: warn [security] mind [2Kprod\n"),
            "{text}"
        );
    }

    #[test]
    fn drift_status_lists_drifted_and_failed_units_first() {
        let unit = |name: &str, state: DriftState| DriftUnit {
            repository: "infra".into(),
            unit: name.into(),
            account: "dev".into(),
            state,
            since_ms: 0,
            checked_ms: 60_000,
            run_id: uuid::Uuid::nil(),
            commit: "c".repeat(40),
            resource_changes: (state == DriftState::Drifted).then_some(ResourceCounts {
                add: 1,
                change: 0,
                destroy: 1,
            }),
            resources: Vec::new(),
            more: 0,
            digest: None,
            error: (state == DriftState::Error).then(|| "Initializing\nError: no backend".into()),
        };
        let text = render_drift(
            &[
                unit("dev/a", DriftState::InSync),
                unit("dev/b", DriftState::Error),
                unit("dev/c", DriftState::Drifted),
            ],
            120_000,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("REPOSITORY"), "{text}");
        assert!(
            lines[1].contains("dev/c")
                && lines[1].contains("drifted")
                && lines[1].contains("+1 ~0 -1"),
            "{text}"
        );
        assert!(
            lines[2].contains("dev/b") && lines[2].contains("Error: no backend"),
            "{text}"
        );
        assert!(
            lines[3].contains("dev/a") && lines[3].contains("in-sync"),
            "{text}"
        );
        assert!(
            text.ends_with("3 unit(s): 1 drifted, 1 could not be checked, 1 in sync.\n"),
            "{text}"
        );
        assert!(render_drift(&[], 0).starts_with("No drift check has finished yet"));
    }
}
