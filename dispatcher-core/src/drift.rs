//! Drift: what a drift check's outcome says about its unit, when the drift report must be
//! told again and what it says, and when a drift schedule is due. Pure: time is an input.

use chrono::{DateTime, Utc};
use croner::Cron;
use proto_types::{Action, DriftHistoryEntry, DriftState, DriftUnit, UnitState};

use crate::report::{cell, code, fitting, html_code, shorten, utc};
use crate::scheduler::{Run, RunJob};

/// The title of a repository's living drift issue.
pub const ISSUE_TITLE: &str = "Drift report";

/// What a final drift check says about its unit, given what the last check said: `None` when
/// it says nothing (skipped or cancelled before it planned).
pub fn observe(
    previous: Option<&DriftUnit>,
    run: &Run,
    job: &RunJob,
    now: u64,
) -> Option<DriftUnit> {
    if job.job.action != Action::DriftPlan {
        return None;
    }
    let (state, error) = match &job.state {
        UnitState::Succeeded => {
            let drifted = job
                .drift
                .as_ref()
                .map_or(job.exit_code == Some(2), |found| found.drifted);
            let state = if drifted {
                DriftState::Drifted
            } else {
                DriftState::InSync
            };
            (state, None)
        }
        UnitState::Failed => {
            let tail = job.output_tail.as_deref().unwrap_or("the check failed");
            (DriftState::Error, Some(last_lines(tail, 5, 600)))
        }
        _ => return None,
    };
    let findings = job.drift.clone().unwrap_or_default();
    Some(DriftUnit {
        repository: run.repository.clone(),
        unit: job.job.unit.clone(),
        account: job.job.account.clone(),
        state,
        // A unit that stays drifted has drifted since the first check that saw it.
        since_ms: match previous {
            Some(previous) if previous.state == state => previous.since_ms,
            _ => now,
        },
        checked_ms: now,
        run_id: run.run_id,
        commit: run.head_sha.clone(),
        resource_changes: (state == DriftState::Drifted)
            .then_some(job.resource_changes)
            .flatten(),
        resources: if state == DriftState::Drifted {
            findings.resources
        } else {
            Vec::new()
        },
        more: if state == DriftState::Drifted {
            findings.more
        } else {
            0
        },
        digest: (state == DriftState::Drifted && !findings.digest.is_empty())
            .then_some(findings.digest),
        error,
    })
}

/// The end of an output: its last `lines` non-empty lines, at most `max` characters.
fn last_lines(text: &str, lines: usize, max: usize) -> String {
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|line| !line.is_empty())
        .collect();
    let from = kept.len().saturating_sub(lines);
    shorten(&kept[from..].join("\n"), max)
}

/// What the drift report says, reduced to what must re-notify when it changes: which units
/// drifted and how (their digests), and which could not be checked. The same drift seen
/// again, or a unit that stays in sync, changes nothing.
pub fn fingerprint(units: &[DriftUnit]) -> String {
    let mut parts: Vec<String> = units
        .iter()
        .filter_map(|unit| match unit.state {
            DriftState::InSync => None,
            DriftState::Drifted => Some(format!(
                "drifted {} {}",
                unit.unit,
                unit.digest.as_deref().unwrap_or("?")
            )),
            DriftState::Error => Some(format!("error {}", unit.unit)),
        })
        .collect();
    parts.sort();
    parts.join("\n")
}

/// The drift issue of a repository: its body, and whether it stays open (something drifted
/// or could not be checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftIssue {
    pub title: &'static str,
    pub body: String,
    pub open: bool,
}

/// The marker that finds a repository's drift issue again.
pub fn issue_marker(repository: &str) -> String {
    format!("<!-- pipelines:drift {repository} -->")
}

/// The living drift issue for `units` (the last finding of every unit of the repository);
/// `pull_request`: the drift pull request opened for them, if one was.
pub fn issue(
    repository: &str,
    units: &[DriftUnit],
    now: u64,
    pull_request: Option<u64>,
) -> DriftIssue {
    let drifted: Vec<&DriftUnit> = units
        .iter()
        .filter(|u| u.state == DriftState::Drifted)
        .collect();
    let errors: Vec<&DriftUnit> = units
        .iter()
        .filter(|u| u.state == DriftState::Error)
        .collect();
    let in_sync = units.len() - drifted.len() - errors.len();
    let header = format!(
        "{}\n## Drift report: {}\n\n{} unit(s) checked: **{} drifted**, {} could not be checked, {in_sync} in sync (as of {}).\n\n",
        issue_marker(repository),
        cell(repository),
        units.len(),
        drifted.len(),
        errors.len(),
        utc(now),
    );
    let mut drifted_table = String::new();
    if !drifted.is_empty() {
        drifted_table.push_str(
            "### Drifted\n\n| unit | account | drifted since | plan |\n|---|---|---|---|\n",
        );
        let rows = drifted.iter().map(|unit| {
            format!(
                "| {} | {} | {} | {} |\n",
                html_code(&unit.unit),
                html_code(&unit.account),
                utc(unit.since_ms),
                unit.resource_changes
                    .map_or_else(|| "changes".to_owned(), |c| c.to_string()),
            )
        });
        push_rows(&mut drifted_table, rows, DRIFTED_TABLE_BYTES);
        drifted_table.push('\n');
    }
    let mut errors_table = String::new();
    if !errors.is_empty() {
        errors_table.push_str(
            "### Could not be checked\n\n| unit | account | since | error |\n|---|---|---|---|\n",
        );
        let rows = errors.iter().map(|unit| {
            format!(
                "| {} | {} | {} | {} |\n",
                html_code(&unit.unit),
                html_code(&unit.account),
                utc(unit.since_ms),
                html_code(&shorten(unit.error.as_deref().unwrap_or("failed"), 300)),
            )
        });
        push_rows(&mut errors_table, rows, ERROR_TABLE_BYTES);
        errors_table.push('\n');
    }
    let open = !drifted.is_empty() || !errors.is_empty();
    let mut footer = String::new();
    if let Some(number) = pull_request.filter(|_| !drifted.is_empty()) {
        footer.push_str(&format!(
            "Pull request #{number} records this drift in the units' `.drift-history.json`: \
             merging it applies them again.\n\n"
        ));
    }
    footer.push_str(if open {
        "Bring the infrastructure back by merging a change that records the drift in the \
         units' `.drift-history.json` (a `DriftDetected` change applies them again), or by \
         undoing the out-of-band change. The next drift run updates this issue, and closes it \
         when every unit is back in sync.\n"
    } else {
        "Every unit is back in sync.\n"
    });
    // What the plans would change, unit by unit, in what the rest leaves of the body.
    let room = MAX_BODY_BYTES
        .saturating_sub(header.len() + drifted_table.len() + errors_table.len() + footer.len())
        .saturating_sub(LEFT_OUT_LINE_BYTES);
    let listed: Vec<&&DriftUnit> = drifted
        .iter()
        .filter(|unit| !unit.resources.is_empty())
        .collect();
    let mut details = String::new();
    let mut shown = 0;
    const TAIL: &str = "\n</details>\n\n";
    // Room for the block's last lines: what was left out of it, and its end.
    let ending = TAIL.len() + LEFT_OUT_LINE_BYTES;
    for unit in listed.iter().take(MAX_DETAILS) {
        let mut block = format!(
            "<details><summary><code>{}</code>: what the plan would change</summary>\n\n",
            html(&unit.unit)
        );
        if details.len() + block.len() + ending > room {
            break;
        }
        // A unit's resources are listed while they fit; the rest are counted.
        let mut more = u64::from(unit.more);
        for (i, resource) in unit.resources.iter().enumerate() {
            let line = format!("- {}\n", html_code(resource));
            if details.len() + block.len() + line.len() + ending > room {
                more += (unit.resources.len() - i) as u64;
                break;
            }
            block.push_str(&line);
        }
        if more > 0 {
            block.push_str(&format!("- and {more} more\n"));
        }
        block.push_str(TAIL);
        details.push_str(&block);
        shown += 1;
    }
    if shown < listed.len() {
        details.push_str(&format!(
            "What the plans of {} more drifted unit(s) would change is left out here \
             (`pipelines drift status` lists it).\n\n",
            listed.len() - shown
        ));
    }
    let body = [header, drifted_table, details, errors_table, footer].concat();
    DriftIssue {
        title: ISSUE_TITLE,
        body,
        open,
    }
}

/// The drift pull request's branch: one per repository, pushed again (forced) whenever what
/// drifted changes, so that its open pull request follows instead of a new one piling up.
pub const BRANCH: &str = "pipelines/drift";

/// A pull request that records a drift: merging it is a `DriftDetected` change of each drifted
/// unit, which applies the unit again through the push path (and its approval gate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftPullRequest {
    pub branch: String,
    pub title: String,
    /// The commit message.
    pub message: String,
    pub body: String,
    /// Per drifted unit, its `.drift-history.json` and the entry to append to it.
    pub entries: Vec<(String, DriftHistoryEntry)>,
}

/// The pull request for the drifted units of `units`; `None` when none drifted.
pub fn pull_request(repository: &str, units: &[DriftUnit]) -> Option<DriftPullRequest> {
    let drifted: Vec<&DriftUnit> = units
        .iter()
        .filter(|u| u.state == DriftState::Drifted)
        .collect();
    let latest = drifted.iter().max_by_key(|u| u.checked_ms)?;
    let entries: Vec<(String, DriftHistoryEntry)> = drifted
        .iter()
        .map(|unit| {
            let counts = unit.resource_changes.unwrap_or_default();
            (
                format!("{}/.drift-history.json", unit.unit),
                DriftHistoryEntry {
                    since: utc(unit.since_ms),
                    run_id: unit.run_id,
                    commit: unit.commit.clone(),
                    add: counts.add,
                    change: counts.change,
                    destroy: counts.destroy,
                },
            )
        })
        .collect();
    // The commit message is plain text; the pull request's body is Markdown, where a unit's
    // path (a directory a pull request named) must stay inert.
    let lines = |show: fn(&str) -> String| -> Vec<String> {
        drifted
            .iter()
            .map(|unit| {
                format!(
                    "- {} ({}): {}",
                    show(&unit.unit),
                    show(&unit.account),
                    unit.resource_changes
                        .map_or_else(|| "changes".to_owned(), |c| c.to_string())
                )
            })
            .collect()
    };
    let title = format!(
        "Drift: apply {} unit(s) of {repository} again",
        drifted.len()
    );
    // The body lists what fits in it; the change itself holds every unit.
    let all = lines(code);
    let listed = &all[..fitting(
        all.iter().map(|line| line.len() + 1),
        MAX_BODY_BYTES - PULL_REQUEST_TEXT_BYTES,
    )];
    let more = all.len() - listed.len();
    let more = if more > 0 {
        format!("\n- … and {more} more: each has its `.drift-history.json` in this change")
    } else {
        String::new()
    };
    Some(DriftPullRequest {
        branch: BRANCH.to_owned(),
        message: format!(
            "Record the drift of {} unit(s) found by drift run {}\n\n{}\n",
            drifted.len(),
            latest.run_id,
            lines(str::to_owned).join("\n")
        ),
        body: format!(
            "Drift run `{}` found these units no longer matching their code:\n\n{}{more}\n\n\
             This change only records the drift in each unit's `.drift-history.json`. Merging \
             it is a `DriftDetected` change: the units are applied again from the deploy \
             branch, through the normal push path and its approval gates. Close it instead if \
             the change made outside the code should stay, and bring the code to it.\n",
            latest.run_id,
            listed.join("\n")
        ),
        title,
        entries,
    })
}

/// Rows of each table, and units with their resources listed, at most.
const MAX_ROWS: usize = 300;
const MAX_DETAILS: usize = 30;

/// What a drift issue's or drift pull request's body may take, in bytes (each character is at
/// least one): GitHub refuses a body over 65,536 characters, and a refused update would leave
/// the issue as it was at every later run, however many units drift or fail, and whatever their
/// names, errors and resources.
const MAX_BODY_BYTES: usize = 60_000;
/// The tables' shares of it; what the plans would change gets what they and the rest leave.
const DRIFTED_TABLE_BYTES: usize = 20_000;
const ERROR_TABLE_BYTES: usize = 20_000;
/// Room kept in a drift pull request's body for its text around the list of units.
const PULL_REQUEST_TEXT_BYTES: usize = 2_000;
/// Room kept for a line that says what was left out.
const LEFT_OUT_LINE_BYTES: usize = 200;

/// Appends the rows of a table of `rows.len()` while it stays within `budget` bytes and
/// [`MAX_ROWS`] rows; then says how many were left out.
fn push_rows(table: &mut String, rows: impl ExactSizeIterator<Item = String>, budget: usize) {
    let total = rows.len();
    let rows: Vec<String> = rows.take(MAX_ROWS).collect();
    let room = budget
        .saturating_sub(LEFT_OUT_LINE_BYTES)
        .saturating_sub(table.len());
    let shown = fitting(rows.iter().map(String::len), room);
    table.push_str(&rows[..shown].concat());
    if shown < total {
        table.push_str(&format!(
            "\n… and {} more (`pipelines drift status` lists every unit).\n",
            total - shown
        ));
    }
}

fn html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn datetime(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// The first slot of `cron` strictly after `after_ms`, in ms since the epoch.
pub fn next_slot(cron: &Cron, after_ms: u64) -> Option<u64> {
    let next = cron
        .find_next_occurrence(&datetime(after_ms)?, false)
        .ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

/// Whether a slot of `cron` passed in `(last_ms, now_ms]` without a drift run: the dispatcher
/// was down then. However many passed, the answer is one run, now.
pub fn missed(cron: &Cron, last_ms: u64, now_ms: u64) -> bool {
    next_slot(cron, last_ms).is_some_and(|slot| slot <= now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto_types::{DriftFindings, ExecutorRole, Job, ResourceCounts};
    use uuid::Uuid;

    fn run_and_job(state: UnitState, drift: Option<DriftFindings>) -> (Run, RunJob) {
        let run_id = Uuid::new_v4();
        let job = RunJob {
            job: Job {
                job_id: Uuid::new_v4(),
                run_id,
                repository: "infra".into(),
                account: "dev".into(),
                commit: "c".repeat(40),
                unit: "dev/app".into(),
                action: Action::DriftPlan,
                source_commit: None,
                attempt: 1,
                timeout_secs: 0,
                role: ExecutorRole::Plan,
                policy_override: None,
            },
            requires: Vec::new(),
            state,
            note: None,
            not_before_ms: 0,
            lease: None,
            exit_code: Some(0),
            resource_changes: Some(ResourceCounts {
                add: 1,
                change: 0,
                destroy: 1,
            }),
            policy: None,
            duration_ms: Some(10),
            worker: None,
            output_tail: Some("Initializing...\n\nError: backend unreachable\n".into()),
            started_ms: None,
            finished_ms: None,
            log: None,
            cancel_requested: None,
            approval: None,
            drift,
        };
        let run = Run {
            seq: 1,
            run_id,
            repository: "infra".into(),
            event: proto_types::EventKind::Drift,
            head_sha: "c".repeat(40),
            base_sha: "c".repeat(40),
            pull_request: None,
            created_ms: 0,
            rejected: None,
            cancelled: None,
            trace: None,
            jobs: Vec::new(),
            open_non_destroy: 0,
        };
        (run, job)
    }

    fn found(digest: &str) -> Option<DriftFindings> {
        Some(DriftFindings {
            drifted: true,
            digest: digest.into(),
            resources: vec!["null_resource.x (delete, create)".into()],
            more: 0,
        })
    }

    #[test]
    fn a_check_reports_drift_keeps_its_start_and_errors_apart() {
        let (run, job) = run_and_job(UnitState::Succeeded, found("d1"));
        let first = observe(None, &run, &job, 100).unwrap();
        assert_eq!(first.state, DriftState::Drifted);
        assert_eq!((first.since_ms, first.checked_ms), (100, 100));
        assert_eq!(first.digest.as_deref(), Some("d1"));
        assert_eq!(first.resources, ["null_resource.x (delete, create)"]);

        // Still drifted later: drifted since the first sighting.
        let again = observe(Some(&first), &run, &job, 200).unwrap();
        assert_eq!((again.since_ms, again.checked_ms), (100, 200));

        let (run, in_sync) = run_and_job(
            UnitState::Succeeded,
            Some(DriftFindings {
                drifted: false,
                ..DriftFindings::default()
            }),
        );
        let back = observe(Some(&again), &run, &in_sync, 300).unwrap();
        assert_eq!(back.state, DriftState::InSync);
        assert_eq!(back.since_ms, 300);
        assert!(back.resource_changes.is_none() && back.digest.is_none());

        let (run, failed) = run_and_job(UnitState::Failed, None);
        let error = observe(Some(&back), &run, &failed, 400).unwrap();
        assert_eq!(error.state, DriftState::Error);
        assert_eq!(
            error.error.as_deref(),
            Some("Initializing...\nError: backend unreachable")
        );

        let (run, skipped) = run_and_job(UnitState::Cancelled("superseded".into()), None);
        assert!(observe(Some(&error), &run, &skipped, 500).is_none());
    }

    #[test]
    fn the_same_drift_does_not_renotify_and_a_new_one_does() {
        let (run, job) = run_and_job(UnitState::Succeeded, found("d1"));
        let one = observe(None, &run, &job, 100).unwrap();
        let mut in_sync = one.clone();
        in_sync.unit = "dev/other".into();
        in_sync.state = DriftState::InSync;
        in_sync.digest = None;
        let before = fingerprint(&[one.clone(), in_sync.clone()]);
        let later = observe(Some(&one), &run, &job, 900).unwrap();
        assert_eq!(fingerprint(&[later, in_sync.clone()]), before);

        let (run, changed) = run_and_job(UnitState::Succeeded, found("d2"));
        let other = observe(Some(&one), &run, &changed, 900).unwrap();
        assert_ne!(fingerprint(&[other, in_sync.clone()]), before);
        assert_eq!(fingerprint(&[in_sync]), "");
    }

    #[test]
    fn the_issue_lists_drift_and_errors_apart_and_closes_when_all_is_in_sync() {
        let (run, job) = run_and_job(UnitState::Succeeded, found("d1"));
        let mut drifted = observe(None, &run, &job, 0).unwrap();
        drifted.unit = "dev/a|b<x>".into();
        let (run, failed) = run_and_job(UnitState::Failed, None);
        let mut error = observe(None, &run, &failed, 0).unwrap();
        error.unit = "dev/broken".into();
        let issue = issue("infra", &[drifted.clone(), error.clone()], 0, Some(43));
        assert!(issue.body.contains("Pull request #43 records this drift"));
        assert!(issue.open);
        assert!(issue.body.starts_with("<!-- pipelines:drift infra -->"));
        assert!(
            issue
                .body
                .contains("2 unit(s) checked: **1 drifted**, 1 could not be checked, 0 in sync")
        );
        assert!(
            issue.body.contains(
                "| <code>dev/a&#124;b&lt;x&gt;</code> | <code>dev</code> | 1970-01-01 00:00 UTC | +1 ~0 -1 |"
            ),
            "{}",
            issue.body
        );
        assert!(
            issue
                .body
                .contains("<summary><code>dev/a|b&lt;x&gt;</code>")
        );
        assert!(
            issue
                .body
                .contains("- <code>null&#95;resource.x &#40;delete, create&#41;</code>")
        );
        assert!(issue.body.contains("### Could not be checked"));
        assert!(issue.body.contains("Error&#58; backend unreachable"));

        let mut synced = drifted;
        synced.state = DriftState::InSync;
        let closed = super::issue("infra", &[synced], 0, Some(43));
        assert!(!closed.body.contains("#43"));
        assert!(!closed.open);
        assert!(closed.body.contains("Every unit is back in sync."));
    }

    #[test]
    fn the_issue_stays_small_and_shows_names_verbatim_however_many_units_fail() {
        let (run, failed) = run_and_job(UnitState::Failed, None);
        let error = observe(None, &run, &failed, 0).unwrap();
        let units: Vec<DriftUnit> = (0..5_000)
            .map(|i| DriftUnit {
                unit: format!("dev/[click](https://evil.example)-@team-`{i}`"),
                ..error.clone()
            })
            .collect();
        let issue = issue("infra", &units, 0, None);
        assert!(issue.body.chars().count() < 65_536, "{}", issue.body.len());
        let rows = issue.body.matches("\n| <code>dev/").count();
        assert!((1..=MAX_ROWS).contains(&rows), "{rows}");
        assert!(
            issue.body.contains(&format!("… and {} more", 5_000 - rows)),
            "{}",
            issue.body
        );
        assert!(
            issue
                .body
                .contains("<code>dev/&#91;click&#93;&#40;https&#58;//evil.example&#41;-&#64;team-&#96;0&#96;</code>")
        );
    }

    /// Honest findings at their largest: hundreds of units drifted, each with the most
    /// resources a check lists, and hundreds failing with long errors. GitHub refuses a body
    /// over 65,536 characters (and a refused update leaves the issue stale for good): the
    /// issue and the pull request say what they leave out instead, and the change keeps every
    /// unit.
    #[test]
    fn the_issue_and_the_pull_request_fit_githubs_limit_with_every_finding_at_its_largest() {
        let (run, job) = run_and_job(UnitState::Succeeded, found("d1"));
        let drifted = observe(None, &run, &job, 0).unwrap();
        let (run, failed) = run_and_job(UnitState::Failed, None);
        let error = observe(None, &run, &failed, 0).unwrap();
        let mut units: Vec<DriftUnit> = (0..2_000)
            .map(|i| DriftUnit {
                unit: format!("prod/eu-west-1/service-{i:04}/<app>"),
                resources: (0..DriftFindings::MAX_RESOURCES)
                    .map(|r| {
                        format!(
                            "module.app.aws_route_table.private[\"eu-west-1{r}\"] (update) {}",
                            "&".repeat(60)
                        )
                    })
                    .collect(),
                more: 7,
                ..drifted.clone()
            })
            .collect();
        units.extend((0..2_000).map(|i| DriftUnit {
            unit: format!("dev/eu-west-1/service-{i:04}"),
            error: Some(format!("Error: {}", "credentials expired <".repeat(40))),
            ..error.clone()
        }));

        let issue = issue("infra", &units, 0, Some(9));
        let body = &issue.body;
        assert!(body.chars().count() <= 65_536, "{}", body.chars().count());
        let drifted_rows = body.matches("\n| <code>prod/").count();
        let error_rows = body.matches("\n| <code>dev/").count();
        let details = body.matches("<details>").count();
        assert!(drifted_rows > 0 && error_rows > 0 && details > 0, "{body}");
        for left_out in [
            format!("… and {} more", 2_000 - drifted_rows),
            format!("… and {} more", 2_000 - error_rows),
            format!(
                "What the plans of {} more drifted unit(s) would change is left out",
                2_000 - details
            ),
        ] {
            assert!(body.contains(&left_out), "{left_out}: {body}");
        }
        assert!(body.contains("Pull request #9 records this drift"));
        assert!(body.ends_with("when every unit is back in sync.\n"));

        let pull = pull_request("infra", &units).unwrap();
        assert!(pull.body.chars().count() <= 65_536, "{}", pull.body.len());
        assert_eq!(pull.entries.len(), 2_000, "the change records every unit");
        let listed = pull.body.matches("\n- `prod/").count();
        assert!(listed > 0);
        assert!(
            pull.body.contains(&format!(
                "- … and {} more: each has its `.drift-history.json` in this change",
                2_000 - listed
            )),
            "{}",
            pull.body
        );
        assert!(
            pull.body.ends_with("and bring the code to it.\n"),
            "{}",
            pull.body
        );
    }

    #[test]
    fn the_pull_request_records_each_drifted_unit_and_nothing_else() {
        let (run, job) = run_and_job(UnitState::Succeeded, found("d1"));
        let drifted = observe(None, &run, &job, 60_000).unwrap();
        let mut in_sync = drifted.clone();
        in_sync.unit = "dev/fine".into();
        in_sync.state = DriftState::InSync;
        let pull = pull_request("infra", &[drifted.clone(), in_sync.clone()]).unwrap();
        assert_eq!(pull.branch, "pipelines/drift");
        assert_eq!(pull.entries.len(), 1);
        let (path, entry) = &pull.entries[0];
        assert_eq!(path, "dev/app/.drift-history.json");
        assert_eq!((entry.add, entry.destroy, entry.run_id), (1, 1, run.run_id));
        assert_eq!(entry.since, "1970-01-01 00:01 UTC");
        assert!(
            pull.body.contains("- `dev/app` (`dev`): +1 ~0 -1"),
            "{}",
            pull.body
        );
        assert!(pull.title.contains("1 unit(s)"));
        assert!(pull_request("infra", &[in_sync]).is_none());
    }

    #[test]
    fn a_missed_slot_fires_once_and_the_next_slot_is_strictly_later() {
        let hourly: Cron = "0 * * * *".parse().unwrap();
        let hour = 3_600_000;
        assert_eq!(next_slot(&hourly, 10 * hour), Some(11 * hour));
        assert_eq!(next_slot(&hourly, 10 * hour + 1), Some(11 * hour));
        // Down from 10:30 to 13:10: three slots passed, one answer.
        assert!(missed(&hourly, 10 * hour + hour / 2, 13 * hour + hour / 6));
        assert!(!missed(
            &hourly,
            10 * hour + hour / 2,
            10 * hour + hour * 3 / 4
        ));
        let every_two_seconds: Cron = "*/2 * * * * *".parse().unwrap();
        assert_eq!(next_slot(&every_two_seconds, 1_000), Some(2_000));
    }
}
