//! Text for people: the detection table, per-unit progress lines and the run summary. Pure.
//!
//! Much of it is a pull request's or a worker's word: unit paths and file names (any bytes
//! git allows but NUL and `/`), reasons that quote them, workers' names and log places. Every
//! line and table cell goes through [`printable`], so none of it can drive the terminal or CI
//! log of whoever reads it, start a line of its own, or reorder what they read.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use proto_types::untrusted_text::printable;
use proto_types::{ApprovalGate, ChangeKind, RunState, RunStatus, UnitState, UnitStatus};

use crate::DetectOutcome;

/// `KIND  UNIT  FILE` rows: one per kind and unit, with the first file that caused it.
pub fn detection_table(outcome: &DetectOutcome) -> String {
    let mut grouped: BTreeMap<(ChangeKind, Option<&str>), Vec<&str>> = BTreeMap::new();
    for cause in &outcome.detection.causes {
        grouped
            .entry((cause.kind, cause.unit.as_deref()))
            .or_default()
            .push(&cause.file);
    }
    let rows: Vec<[String; 3]> = grouped
        .into_iter()
        .map(|((kind, unit), files)| {
            let file = match files.len() {
                1 => files[0].to_owned(),
                n => format!("{} (+{} more)", files[0], n - 1),
            };
            [kind.to_string(), unit.unwrap_or("-").to_owned(), file]
        })
        .collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {}..{}: {} unit(s) affected",
        outcome.event,
        short(&outcome.base_sha),
        short(&outcome.head_sha),
        outcome.detection.units().len()
    );
    if !rows.is_empty() {
        out.push_str(&table(&["KIND", "UNIT", "FILE"], &rows));
    }
    for refusal in &outcome.detection.refusals {
        let _ = writeln!(out, "refused: {}", printable(refusal));
    }
    for warning in &outcome.detection.warnings {
        let _ = writeln!(out, "warning: {}", printable(warning));
    }
    out
}

/// One line per unit whose state differs from the previous snapshot. Endings come before the
/// starts they caused, so the lines read in causal order; among endings, a unit that was
/// already running comes before one that started and ended since the last snapshot (a
/// dependent whose start the snapshots skipped). Two units that both started and ended
/// between snapshots keep the run's order: a snapshot has no dependency edges to sort by.
pub fn progress(previous: Option<&RunStatus>, current: &RunStatus) -> Vec<String> {
    if let RunState::Rejected(reason) = &current.state {
        return vec![printable(&format!("run rejected: {reason}"))];
    }
    let done = current.units.iter().filter(|u| u.state.is_final()).count();
    let total = current.units.len();
    let before = |unit: &UnitStatus| {
        previous
            .and_then(|p| p.units.iter().find(|u| u.job_id == unit.job_id))
            .map(|b| &b.state)
    };
    let mut changed: Vec<&UnitStatus> = current
        .units
        .iter()
        .filter(|unit| unit.state != UnitState::Pending)
        .filter(|unit| before(unit) != Some(&unit.state))
        .collect();
    let rank = |state: Option<&UnitState>| match state {
        Some(UnitState::Running) => 0,
        Some(UnitState::Queued) => 1,
        _ => 2,
    };
    changed.sort_by_key(|unit| {
        let now = match unit.state {
            UnitState::Queued => 2,
            UnitState::Running => 1,
            _ => 0,
        };
        // Only endings are reordered by what came before; starts keep the run's order.
        let came_before = if now == 0 { rank(before(unit)) } else { 0 };
        (now, came_before)
    });
    changed
        .into_iter()
        .map(|unit| {
            printable(&format!(
                "[{done:>width$}/{total}] {:<9} {} {} ({}){}",
                unit.state.as_str(),
                unit.action,
                unit.unit,
                unit.account,
                detail(unit),
                width = total.to_string().len()
            ))
        })
        .collect()
}

fn detail(unit: &UnitStatus) -> String {
    match &unit.state {
        UnitState::Succeeded => {
            let changes = unit
                .resource_changes
                .map(|c| format!(" {c}"))
                .unwrap_or_default();
            format!("{changes}{}", duration(unit.duration_ms))
        }
        UnitState::Failed => {
            let code = unit
                .exit_code
                .map(|c| format!(" exit {c}"))
                .unwrap_or_default();
            format!("{code}{}", duration(unit.duration_ms))
        }
        UnitState::Skipped(why) | UnitState::Cancelled(why) => format!(": {why}"),
        UnitState::Running => {
            let on = unit
                .worker
                .as_ref()
                .map(|w| format!(" on {w}"))
                .unwrap_or_default();
            match unit.attempt {
                0 | 1 => on,
                attempt => format!("{on} (attempt {attempt})"),
            }
        }
        UnitState::AwaitingApproval => match &unit.approval {
            Some(ApprovalGate::Waiting { approvers, .. }) => {
                format!(": waits for an approval from {}", approvers.join(" or "))
            }
            _ => String::new(),
        },
        UnitState::Pending | UnitState::Queued => String::new(),
    }
}

fn duration(ms: Option<u64>) -> String {
    ms.map(|ms| format!(" in {:.1}s", ms as f64 / 1000.0))
        .unwrap_or_default()
}

/// The final report: a header, a table of every unit, and the output tail of failures.
pub fn summary(status: &RunStatus) -> String {
    let mut out = String::new();
    let verdict = match &status.state {
        RunState::Running => "running".to_owned(),
        RunState::Succeeded => "succeeded".to_owned(),
        RunState::Failed(reason) => format!("failed: {reason}"),
        RunState::Rejected(reason) => format!("rejected: {reason}"),
        RunState::Cancelled(reason) => format!("cancelled: {reason}"),
    };
    let header = format!(
        "Run {} ({} of {} at {}): {verdict}",
        status.run_id,
        status.event,
        status.repository,
        short(&status.head_sha)
    );
    let _ = writeln!(out, "{}", printable(&header));
    if status.units.is_empty() {
        return out;
    }
    let rows: Vec<[String; 6]> = status
        .units
        .iter()
        .map(|u| {
            let result = match &u.state {
                UnitState::Skipped(why) => format!("skipped ({why})"),
                UnitState::Cancelled(why) => format!("cancelled ({why})"),
                other => other.as_str().to_owned(),
            };
            [
                u.unit.clone(),
                u.action.to_string(),
                u.account.clone(),
                result,
                u.resource_changes
                    .map(|c| c.to_string())
                    .unwrap_or_default(),
                u.duration_ms
                    .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                    .unwrap_or_default(),
            ]
        })
        .collect();
    out.push_str(&table(
        &["UNIT", "ACTION", "ACCOUNT", "RESULT", "CHANGES", "TIME"],
        &rows,
    ));
    for unit in status.units.iter().filter(|u| u.state == UnitState::Failed) {
        if let Some(tail) = &unit.output_tail {
            let whole = unit
                .log
                .as_deref()
                .map(|log| format!("; whole log at {log}"))
                .unwrap_or_default();
            let heading = format!(
                "--- {} ({}) output, last lines{whole} ---",
                unit.unit, unit.action
            );
            let _ = writeln!(out, "\n{}", printable(&heading));
            // Each line marked as the job's and printable: what a plan printed can neither
            // pass for this summary's own lines (another unit's heading), nor move the cursor
            // or recolour the terminal of whoever reads it, nor reorder what they read.
            for line in tail.trim_end().lines() {
                let line: Vec<String> = line.split('\t').map(printable).collect();
                let _ = writeln!(out, "| {}", line.join("\t"));
            }
        }
    }
    out
}

fn table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let rows: Vec<[String; N]> = rows
        .iter()
        .map(|row| row.each_ref().map(|cell| printable(cell)))
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(padded.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

#[cfg(test)]
mod tests {
    use proto_types::{Action, EventKind, ResourceCounts};
    use uuid::Uuid;

    use super::*;

    fn unit(name: &str, state: UnitState) -> UnitStatus {
        UnitStatus {
            unit: name.into(),
            account: "dev".into(),
            action: Action::Apply,
            job_id: Uuid::new_v4(),
            state,
            exit_code: None,
            resource_changes: None,
            duration_ms: None,
            worker: None,
            output_tail: None,
            attempt: 1,
            note: None,
            log: None,
            approval: None,
        }
    }

    fn status(units: Vec<UnitStatus>, state: RunState) -> RunStatus {
        RunStatus {
            run_id: Uuid::nil(),
            repository: "infra".into(),
            event: EventKind::Push,
            head_sha: "0123456789abcdef".into(),
            state,
            units,
        }
    }

    #[test]
    fn the_detection_table_names_kind_unit_and_file() {
        use crate::detect::{Cause, Detection};
        let cause = |kind, unit: Option<&str>, file: &str| Cause {
            kind,
            unit: unit.map(Into::into),
            file: file.into(),
        };
        let outcome = DetectOutcome {
            base_sha: "a".into(),
            head_sha: "b".into(),
            event: EventKind::PullRequest,
            detection: Detection {
                causes: vec![
                    cause(ChangeKind::UnitChanged, Some("dev/app"), "dev/app/main.tf"),
                    cause(ChangeKind::UnitChanged, Some("dev/app"), "dev/app/x.tf"),
                    cause(ChangeKind::HclChanged, Some("dev/app"), "dev/env.hcl"),
                    cause(ChangeKind::AccountsChanged, None, "accounts.yml"),
                ],
                warnings: vec!["dev/x/main.tf:3: syntax error".into()],
                ..Detection::default()
            },
        };
        let text = detection_table(&outcome);
        assert!(
            text.contains("UnitChanged      dev/app  dev/app/main.tf (+1 more)"),
            "{text}"
        );
        assert!(
            text.contains("HclChanged       dev/app  dev/env.hcl"),
            "{text}"
        );
        assert!(
            text.contains("AccountsChanged  -        accounts.yml"),
            "{text}"
        );
        assert!(
            text.contains("warning: dev/x/main.tf:3: syntax error"),
            "{text}"
        );
    }

    #[test]
    fn progress_reports_only_transitions() {
        let mut a = unit("dev/a", UnitState::Running);
        let b = unit("dev/b", UnitState::Pending);
        let before = status(vec![a.clone(), b.clone()], RunState::Running);
        a.state = UnitState::Succeeded;
        a.resource_changes = Some(ResourceCounts {
            add: 1,
            change: 0,
            destroy: 0,
        });
        a.duration_ms = Some(1500);
        let after = status(vec![a, b], RunState::Running);
        assert_eq!(
            progress(Some(&before), &after),
            ["[1/2] succeeded apply dev/a (dev) +1 ~0 -0 in 1.5s"]
        );
    }

    #[test]
    fn endings_are_printed_before_the_starts_they_caused() {
        let net = unit("dev/net", UnitState::Running);
        let app = unit("dev/app", UnitState::Pending);
        let before = status(vec![app.clone(), net.clone()], RunState::Running);
        let after = status(
            vec![
                UnitStatus {
                    state: UnitState::Queued,
                    ..app
                },
                UnitStatus {
                    state: UnitState::Succeeded,
                    ..net
                },
            ],
            RunState::Running,
        );
        let lines = progress(Some(&before), &after);
        assert!(lines[0].contains("succeeded apply dev/net"), "{lines:?}");
        assert!(lines[1].contains("queued    apply dev/app"), "{lines:?}");
    }

    #[test]
    fn a_dependent_that_started_and_ended_between_snapshots_ends_after_its_dependency() {
        // dev/app sorts first by name, but it could start only after dev/db ended.
        let db = unit("dev/db", UnitState::Running);
        let app = unit("dev/app", UnitState::Pending);
        let before = status(vec![app.clone(), db.clone()], RunState::Running);
        let ended = |unit: UnitStatus| UnitStatus {
            state: UnitState::Succeeded,
            ..unit
        };
        let after = status(vec![ended(app), ended(db)], RunState::Running);
        let lines = progress(Some(&before), &after);
        assert!(lines[0].contains("succeeded apply dev/db"), "{lines:?}");
        assert!(lines[1].contains("succeeded apply dev/app"), "{lines:?}");
    }

    #[test]
    fn the_summary_explains_skips_and_shows_failure_output() {
        let mut failed = unit("dev/db", UnitState::Failed);
        failed.output_tail = Some(
            "Error: Invalid block definition\n\u{1b}[2J\u{1b}[1A--- dev/app (plan) output ---\n"
                .into(),
        );
        let skipped = unit("dev/app", UnitState::Skipped("dev/db failed".into()));
        let text = summary(&status(
            vec![failed, skipped],
            RunState::Failed("1 of 2 jobs failed".into()),
        ));
        assert!(text.contains("failed: 1 of 2 jobs failed"), "{text}");
        assert!(text.contains("skipped (dev/db failed)"), "{text}");
        assert!(
            text.contains("\n| Error: Invalid block definition\n"),
            "{text}"
        );
        // The job's lines stay the job's, and none of their escapes reaches the terminal.
        assert!(
            text.contains("\n| [2J[1A--- dev/app (plan) output ---\n"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn failure_output_keeps_its_tabs_and_shows_bidi_controls_instead_of_obeying_them() {
        let mut failed = unit("dev/db", UnitState::Failed);
        failed.output_tail = Some("name\t= \"\u{202E}yortsed\u{202C}\"\n".into());
        let text = summary(&status(
            vec![failed],
            RunState::Failed("1 of 1 jobs failed".into()),
        ));
        assert!(
            text.contains("\n| name\t= \"<U+202E>yortsed<U+202C>\"\n"),
            "{text}"
        );
    }

    /// A unit path, a file name, a worker's name, a log place and a reason can carry what git
    /// or a worker allows: a newline that would start a line of its own (a fake "succeeded"),
    /// terminal escapes, bidi controls.
    #[test]
    fn names_and_reasons_from_a_pull_request_or_a_worker_cannot_drive_the_terminal() {
        use crate::detect::{Cause, Detection};
        let evil = "dev/x\n[1/1] succeeded apply dev/prod (prod)\u{1b}[2K\u{202E}";
        let shown = "dev/x[1/1] succeeded apply dev/prod (prod)[2K<U+202E>";
        let mut running = unit(evil, UnitState::Running);
        running.worker = Some("w1\u{1b}]0;title\u{7}".into());
        let lines = progress(None, &status(vec![running], RunState::Running));
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(
            lines[0],
            format!("[0/1] running   apply {shown} (dev) on w1]0;title")
        );

        let mut failed = unit(evil, UnitState::Failed);
        failed.output_tail = Some("boom\n".into());
        failed.log = Some("w1:/var/log/\u{1b}[31mx.log".into());
        let skipped = unit("dev/y", UnitState::Skipped(format!("{evil} failed")));
        let text = summary(&status(
            vec![failed, skipped],
            RunState::Failed(format!("{evil} failed")),
        ));
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202E}'),
            "{text}"
        );
        assert!(
            text.contains(&format!("failed: {shown} failed\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("skipped ({shown} failed)")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "\n--- {shown} (apply) output, last lines; whole log at w1:/var/log/[31mx.log ---\n"
            )),
            "{text}"
        );
        assert!(
            !text.lines().any(|line| line.starts_with("[1/1]")),
            "no line of its own: {text}"
        );
        let rejected = progress(
            None,
            &status(
                vec![],
                RunState::Rejected(format!("unit {evil} matches no account")),
            ),
        );
        assert_eq!(
            rejected,
            [format!("run rejected: unit {shown} matches no account")]
        );

        let outcome = DetectOutcome {
            base_sha: "a".into(),
            head_sha: "b".into(),
            event: EventKind::PullRequest,
            detection: Detection {
                causes: vec![Cause {
                    kind: ChangeKind::UnitChanged,
                    unit: Some(evil.into()),
                    file: format!("{evil}/main.tf"),
                }],
                warnings: vec![format!("{evil}/main.tf:3: syntax error")],
                ..Detection::default()
            },
        };
        let text = detection_table(&outcome);
        assert!(
            !text.contains('\u{1b}') && !text.contains('\u{202E}'),
            "{text}"
        );
        assert!(text.contains(&format!("{shown}/main.tf")), "{text}");
        assert!(
            text.contains(&format!("warning: {shown}/main.tf:3: syntax error\n")),
            "{text}"
        );
    }
}
