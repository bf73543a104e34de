//! What the GitHub reporter writes: the pull request comment (one per pull request, updated in
//! place), the apply-failure comment, and the commit status. Pure: a run's details and its
//! outputs in, Markdown and short strings out.
//!
//! A comment must fit GitHub's limit of 65,536 characters. The header and the table of units
//! are kept whole; unit outputs share what is left, the largest trimmed first (each keeps its
//! end, where plans summarise and errors show), and the comment says what was cut and where
//! the whole log is.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use proto_types::{
    ApprovalGate, EventKind, JobPhase, JobSummary, PolicyReport, RunDetail, RunPhase,
};
use uuid::Uuid;

/// GitHub's limit on a comment body, in characters.
pub const MAX_COMMENT_CHARS: usize = 65_536;
/// The hidden marker that finds the living comment of a pull request.
pub const COMMENT_MARKER: &str = "<!-- pipelines:report -->";

/// The hidden marker of the comment about a failed apply of `run_id`.
pub fn apply_failure_marker(run_id: Uuid) -> String {
    format!("<!-- pipelines:apply-failure {run_id} -->")
}

/// The hidden marker of the comment, on the merged pull request, about `run_id`'s applies
/// that wait for an approver.
pub fn approval_marker(run_id: Uuid) -> String {
    format!("<!-- pipelines:approval {run_id} -->")
}

/// Whether a push run has jobs that wait or waited for an approver: the merged pull request
/// then gets a comment that says who may approve, and later who did.
pub fn needs_approval_comment(detail: &RunDetail) -> bool {
    detail.run.pull_request.is_none()
        && detail.jobs.iter().any(|job| {
            matches!(
                job.approval,
                Some(ApprovalGate::Waiting { .. } | ApprovalGate::Approved { .. })
            )
        })
}

/// Links the comment and the status carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Links {
    /// The commit on the forge.
    pub commit: Option<String>,
    /// A page about the run (`[github] details_url`).
    pub details: Option<String>,
}

/// A commit status's state, as GitHub names them. Declared from best to worst, so that `Ord`
/// is the order in which a shared commit shows them ([`worst_status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CommitState {
    Success,
    Pending,
    Error,
    Failure,
}

impl CommitState {
    /// The name GitHub's statuses API takes.
    pub fn as_str(self) -> &'static str {
        match self {
            CommitState::Success => "success",
            CommitState::Pending => "pending",
            CommitState::Error => "error",
            CommitState::Failure => "failure",
        }
    }
}

impl std::fmt::Display for CommitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A commit status: a context, its state and a line GitHub shows beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitStatus {
    pub context: String,
    pub state: CommitState,
    pub description: String,
}

/// The status for a run: `<context>/plan` for pull requests, `<context>/apply` for pushes.
pub fn commit_status(detail: &RunDetail, context: &str) -> CommitStatus {
    let run = &detail.run;
    let kind = if run.pull_request.is_some() || run.event == EventKind::PullRequest {
        "plan"
    } else {
        "apply"
    };
    let state = match run.state {
        RunPhase::Running => CommitState::Pending,
        RunPhase::Succeeded => CommitState::Success,
        RunPhase::Failed => CommitState::Failure,
        RunPhase::Rejected | RunPhase::Cancelled => CommitState::Error,
    };
    let total = detail.jobs.len();
    let done = detail
        .jobs
        .iter()
        .filter(|j| j.state == JobPhase::Succeeded)
        .count();
    let awaiting = detail
        .jobs
        .iter()
        .filter(|j| j.state == JobPhase::AwaitingApproval)
        .count();
    let description = match run.state {
        RunPhase::Running if awaiting > 0 => {
            format!("{done} of {total} units done, {awaiting} awaiting approval")
        }
        RunPhase::Running => format!("{done} of {total} units done"),
        RunPhase::Succeeded => format!(
            "{total} unit(s) {}",
            if kind == "plan" { "planned" } else { "applied" }
        ),
        RunPhase::Failed | RunPhase::Rejected | RunPhase::Cancelled => {
            run.reason.clone().unwrap_or_else(|| run.state.to_string())
        }
    };
    CommitStatus {
        context: format!("{context}/{kind}"),
        state,
        description: shorten(&description, 140),
    }
}

/// What a commit shows for a context when other pull requests have it as their head too.
/// GitHub keeps one status per commit and context, and every pull request with that head shows
/// it, so each pull request's newest run writes the worst of them all (failure, then error,
/// then pending, then success): no pull request's plan turns another's failure green. `own`
/// is the reported run's status; `others` those of the other pull requests' newest runs, with
/// their numbers. A worse status of another pull request is written with its number.
pub fn worst_status(own: CommitStatus, others: &[(u64, CommitStatus)]) -> CommitStatus {
    // The worst; on a tie the run's own, then the lowest pull request number.
    match others
        .iter()
        .filter(|(_, other)| other.state > own.state)
        .max_by_key(|(number, other)| (other.state, std::cmp::Reverse(*number)))
    {
        Some((number, other)) => CommitStatus {
            context: own.context,
            state: other.state,
            description: shorten(&format!("PR #{number}: {}", other.description), 140),
        },
        None => own,
    }
}

/// `<context>/policy`: failure when a plan of the run was denied (or its policies could not
/// run), success when every policy-checked plan passed; `None` while no plan was checked.
pub fn policy_status(detail: &RunDetail, context: &str) -> Option<CommitStatus> {
    let reports: Vec<(&JobSummary, &PolicyReport)> = detail
        .jobs
        .iter()
        .filter_map(|job| job.policy.as_ref().map(|report| (job, report)))
        .collect();
    if reports.is_empty() {
        return None;
    }
    let rules: u32 = reports.iter().map(|(_, report)| report.rules()).sum();
    let blocked: Vec<&str> = reports
        .iter()
        .filter(|(_, report)| report.blocks())
        .map(|(job, _)| job.unit.as_str())
        .collect();
    let (state, description) = if blocked.is_empty() {
        (
            if detail.run.state == RunPhase::Running {
                CommitState::Pending
            } else {
                CommitState::Success
            },
            format!(
                "{} plan(s) passed {rules} rule evaluation(s)",
                reports.len()
            ),
        )
    } else {
        (
            CommitState::Failure,
            format!("denied: {}", blocked.join(", ")),
        )
    };
    Some(CommitStatus {
        context: format!("{context}/policy"),
        state,
        description: shorten(&description, 140),
    })
}

/// One job's policy verdict in a few words: `denied (1)`, `passed, 2 warnings`, `error`.
pub fn policy_cell(report: &PolicyReport) -> String {
    policy_verdict(report, proto_types::untrusted_text::printable)
}

/// [`policy_cell`] for the comment's Markdown.
fn policy_cell_markdown(report: &PolicyReport) -> String {
    policy_verdict(report, inert)
}

/// [`policy_cell`], with the override's author (the worker's word) shown by `show`.
fn policy_verdict(report: &PolicyReport, show: fn(&str) -> String) -> String {
    let count = |wanted: &[PolicyMessage]| {
        policy_messages(report)
            .filter(|(_, kind, _)| wanted.contains(kind))
            .count()
    };
    let denies = count(&[PolicyMessage::Deny]);
    let warnings = count(&[PolicyMessage::Warning, PolicyMessage::DenyInWarnMode]);
    let overridden = report.sets.iter().find_map(|set| set.overridden.as_deref());
    let verdict = if report.sets.iter().any(|set| set.error.is_some()) {
        "error".to_owned()
    } else if denies > 0 && report.overridable() {
        format!("denied ({denies}), approvers may override")
    } else if denies > 0 {
        format!("denied ({denies})")
    } else if let Some(by) = overridden {
        // `who: why`, where who may be a web user (`web:alice@example.com`).
        let who = by.split_once(": ").map_or(by, |(who, _)| who);
        format!("denies overridden by {}", show(&shorten(who, 120)))
    } else {
        "passed".to_owned()
    };
    let warnings = match warnings {
        0 => String::new(),
        1 => ", 1 warning".to_owned(),
        n => format!(", {n} warnings"),
    };
    format!("{verdict}{warnings} · {} rule(s)", report.rules())
}

/// What a policy message is, by how it bears on the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyMessage {
    /// The set could not give a verdict.
    Error,
    /// A `deny` of an enforced set.
    Deny,
    /// A `deny` of an enforced set that an approver overrode.
    DenyOverridden,
    /// A `deny` of a set in warn mode: reported, not enforced.
    DenyInWarnMode,
    Warning,
}

/// Every message of a report with its set's name, errors first, then denies, then warnings,
/// set by set.
pub(crate) fn policy_messages(
    report: &PolicyReport,
) -> impl Iterator<Item = (&str, PolicyMessage, &str)> {
    report.sets.iter().flat_map(|set| {
        let deny = match (set.enforced, &set.overridden) {
            (true, None) => PolicyMessage::Deny,
            (true, Some(_)) => PolicyMessage::DenyOverridden,
            (false, _) => PolicyMessage::DenyInWarnMode,
        };
        let name = set.name.as_str();
        set.error
            .iter()
            .map(move |error| (name, PolicyMessage::Error, error.as_str()))
            .chain(set.denies.iter().map(move |m| (name, deny, m.as_str())))
            .chain(
                set.warnings
                    .iter()
                    .map(move |m| (name, PolicyMessage::Warning, m.as_str())),
            )
    })
}

/// Every policy message of the run, under its unit, for the comment.
fn policy_section(detail: &RunDetail) -> String {
    let mut out = String::new();
    for job in &detail.jobs {
        let Some(report) = &job.policy else { continue };
        let lines: Vec<String> = policy_messages(report)
            .map(|(set, kind, text)| {
                let (set, text) = (cell(set), html_code(&shorten(text, 300)));
                match kind {
                    PolicyMessage::Error => format!("- ⛔ **{set}** could not run: {text}"),
                    PolicyMessage::Deny => format!("- ❌ deny **{set}**: {text}"),
                    PolicyMessage::DenyOverridden => {
                        format!("- ☑️ deny (overridden) **{set}**: {text}")
                    }
                    PolicyMessage::DenyInWarnMode => {
                        format!("- ⚠️ warn (deny rule, warn mode) **{set}**: {text}")
                    }
                    PolicyMessage::Warning => format!("- ⚠️ warn **{set}**: {text}"),
                }
            })
            .collect();
        if !lines.is_empty() {
            let _ = writeln!(
                out,
                "**Policy: {}**\n{}\n",
                code(&job.unit),
                lines.join("\n")
            );
        }
    }
    out
}

fn run_icon(state: RunPhase) -> &'static str {
    match state {
        RunPhase::Succeeded => "✅",
        RunPhase::Failed => "❌",
        RunPhase::Running => "⏳",
        RunPhase::Cancelled => "🚫",
        RunPhase::Rejected => "⛔",
    }
}

fn icon(state: JobPhase) -> &'static str {
    match state {
        JobPhase::Succeeded => "✅",
        JobPhase::Failed => "❌",
        JobPhase::Running => "⏳",
        JobPhase::Queued | JobPhase::Pending => "🕒",
        JobPhase::Skipped => "⏭️",
        JobPhase::Cancelled => "🚫",
        JobPhase::AwaitingApproval => "✋",
    }
}

/// What a job's approval gate means for it now, in one sentence; `None` when the gate no
/// longer matters (the job was cancelled or skipped while it waited: its reason says why).
pub fn approval_note(gate: &ApprovalGate, state: JobPhase) -> Option<String> {
    match gate {
        ApprovalGate::AfterMerge => {
            Some("its apply will wait for an approval after the merge".to_owned())
        }
        ApprovalGate::Waiting {
            approvers,
            since_ms,
            expires_ms,
            policy_sets,
        } if state == JobPhase::AwaitingApproval => Some(if policy_sets.is_empty() {
            format!(
                "waits for an approval from {} since {} (cancelled at {} without one)",
                approvers.join(" or "),
                utc(*since_ms),
                utc(*expires_ms)
            )
        } else {
            format!(
                "denied by {}: {} may override the deny (since {}; it stands at {})",
                policy_sets.join(", "),
                approvers.join(" or "),
                utc(*since_ms),
                utc(*expires_ms)
            )
        }),
        ApprovalGate::Waiting { .. } => None,
        ApprovalGate::Approved { by, reason, at_ms } => {
            Some(format!("approved by {by} at {}: {reason}", utc(*at_ms)))
        }
    }
}

/// `2026-12-04 09:44 UTC` from milliseconds since the Unix epoch (the proleptic Gregorian
/// calendar; Howard Hinnant's `civil_from_days`).
pub fn utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02} UTC")
}

/// Every gated unit of the run and where its gate stands, for the comment.
fn approval_section(detail: &RunDetail) -> String {
    let lines: Vec<String> = detail
        .jobs
        .iter()
        .filter_map(|job| {
            let note = approval_note(job.approval.as_ref()?, job.state)?;
            let mark = match job.approval.as_ref()? {
                ApprovalGate::AfterMerge => "🔒",
                ApprovalGate::Waiting { .. } => "✋",
                ApprovalGate::Approved { .. } => "✅",
            };
            Some(format!(
                "- {mark} {} {}: {}",
                code(&job.unit),
                job.action,
                cell(&shorten(&note, 400))
            ))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!("**Approvals**\n{}\n\n", lines.join("\n"))
}

/// The living comment of a pull request for its latest run.
pub fn pull_request_comment(
    detail: &RunDetail,
    outputs: &BTreeMap<Uuid, String>,
    links: &Links,
) -> String {
    let run = &detail.run;
    let title = format!("### {} Pipelines: plan {}", run_icon(run.state), run.state);
    render(COMMENT_MARKER, &title, detail, outputs, links)
}

/// The comment on a merged pull request whose apply failed on the deploy branch.
pub fn apply_failure_comment(
    detail: &RunDetail,
    outputs: &BTreeMap<Uuid, String>,
    links: &Links,
) -> String {
    let title = format!(
        "### ❌ Pipelines: applying `{}` failed after this pull request was merged",
        short(&detail.run.head_sha)
    );
    render(
        &apply_failure_marker(detail.run.run_id),
        &title,
        detail,
        outputs,
        links,
    )
}

/// The comment on the merged pull request of a push whose applies wait for an approver,
/// updated in place until the run ends.
pub fn approval_comment(
    detail: &RunDetail,
    outputs: &BTreeMap<Uuid, String>,
    links: &Links,
) -> String {
    let run = &detail.run;
    let waiting = detail
        .jobs
        .iter()
        .filter(|j| j.state == JobPhase::AwaitingApproval)
        .count();
    let title = if waiting > 0 {
        format!(
            "### ✋ Pipelines: applying `{}` waits for an approval ({waiting} unit(s))",
            short(&run.head_sha)
        )
    } else {
        format!(
            "### {} Pipelines: apply of `{}` {}",
            run_icon(run.state),
            short(&run.head_sha),
            run.state
        )
    };
    render(&approval_marker(run.run_id), &title, detail, outputs, links)
}

/// The title of the issue opened for a failed apply.
pub fn apply_failure_issue_title(detail: &RunDetail) -> String {
    let failed = detail
        .jobs
        .iter()
        .filter(|j| j.state == JobPhase::Failed)
        .count();
    format!(
        "Apply of {} failed: {failed} unit(s)",
        short(&detail.run.head_sha)
    )
}

fn render(
    marker: &str,
    title: &str,
    detail: &RunDetail,
    outputs: &BTreeMap<Uuid, String>,
    links: &Links,
) -> String {
    let summary = summary(marker, title, detail, links);
    // Made safe for their code block before they are measured: revealing a bidirectional
    // character makes it 8 characters, and the comment must still fit.
    let shown: Vec<(&JobSummary, String)> = detail
        .jobs
        .iter()
        .filter_map(|job| {
            let output = outputs.get(&job.job_id)?;
            let shown = interesting_part(output);
            (!shown.trim().is_empty()).then(|| (job, fence_safe(shown)))
        })
        .collect();
    let sections: Vec<Section<'_>> = shown
        .iter()
        .map(|(job, text)| Section { job, text })
        .collect();
    // Room for the footer that says what was cut.
    let budget = MAX_COMMENT_CHARS.saturating_sub(summary.chars().count() + 600);
    let caps = fit(&sections, budget);
    let mut body = summary;
    let mut trimmed = Vec::new();
    let mut left_out = Vec::new();
    for (section, cap) in sections.iter().zip(&caps) {
        match cap {
            Some(cap) => {
                let (text, cut) = keep_end(section.text, *cap);
                if cut > 0 {
                    trimmed.push((section.job, cut));
                }
                body.push_str(&section_markdown(section.job, &text, cut));
            }
            None => left_out.push(section.job),
        }
    }
    if !trimmed.is_empty() || !left_out.is_empty() {
        let _ = writeln!(
            body,
            "\n_Outputs were trimmed to fit GitHub's limit of {MAX_COMMENT_CHARS} characters; the whole logs are on the workers:_"
        );
        let mut lines: Vec<String> = trimmed
            .iter()
            .map(|(job, cut)| {
                format!(
                    "- {}: {cut} characters cut; {}",
                    code(&job.unit),
                    code(job.log.as_deref().unwrap_or("its worker"))
                )
            })
            .collect();
        lines.extend(left_out.iter().map(|job| {
            format!(
                "- {}: output left out; {}",
                code(&job.unit),
                code(job.log.as_deref().unwrap_or("its worker"))
            )
        }));
        // The list itself must fit too: what does not is counted.
        let room = MAX_COMMENT_CHARS.saturating_sub(body.chars().count() + 100);
        let shown = fitting(lines.iter().map(|line| line.chars().count() + 1), room);
        for line in &lines[..shown] {
            body.push_str(line);
            body.push('\n');
        }
        if shown < lines.len() {
            let _ = writeln!(body, "- … and {} more", lines.len() - shown);
        }
    }
    body
}

/// The header and the table of units: always whole (units beyond what fits are counted).
fn summary(marker: &str, title: &str, detail: &RunDetail, links: &Links) -> String {
    let run = &detail.run;
    let mut out = format!("{marker}\n{title}\n\n");
    let commit = match &links.commit {
        Some(url) => format!("[`{}`]({url})", short(&run.head_sha)),
        None => format!("`{}`", short(&run.head_sha)),
    };
    let event = match run.pull_request {
        Some(number) => format!("{} #{number}", run.event),
        None => run.event.to_string(),
    };
    let _ = write!(
        out,
        "**{event}** of `{}` at {commit} · run `{}` · {} unit(s)",
        run.repository,
        run.run_id,
        detail.jobs.len()
    );
    if let Some(details) = &links.details {
        let _ = write!(out, " · [details]({details})");
    }
    out.push_str("\n\n");
    if let Some(reason) = &run.reason {
        // A rejection quotes the paths the pull request named.
        let _ = writeln!(out, "> {}\n", html_code(&shorten(reason, 500)));
    }
    if detail.jobs.is_empty() {
        out.push_str("No units to plan or apply.\n");
        return out;
    }
    out.push_str("| Unit | Action | Status | + | ~ | − | Policy | Duration | Worker | Account |\n|---|---|---|--:|--:|--:|---|--:|---|---|\n");
    // Keep the table under half the limit; the rest is for outputs.
    let table_room = MAX_COMMENT_CHARS / 2;
    let start = out.chars().count();
    for (i, job) in detail.jobs.iter().enumerate() {
        let row = table_row(job);
        if out.chars().count() - start + row.chars().count() > table_room {
            let _ = writeln!(
                out,
                "| … | | {} more unit(s) | | | | | | | |",
                detail.jobs.len() - i
            );
            break;
        }
        out.push_str(&row);
    }
    out.push('\n');
    // Each at most a quarter of the limit, and of what the table and the section before leave
    // (with room for the outputs' footer): the three together could pass the limit, and GitHub
    // refuses a comment over it whole. Approvals: one line of at most ~500 characters per unit.
    let room = |out: &str| {
        MAX_COMMENT_CHARS
            .saturating_sub(out.chars().count() + SUMMARY_FOOTER_ROOM)
            .min(MAX_COMMENT_CHARS / 4)
    };
    out.push_str(&whole_lines(&approval_section(detail), room(&out)));
    let messages = policy_section(detail);
    if !messages.is_empty() {
        // Messages are capped per set by the worker, and here.
        out.push_str(&whole_lines(&messages, room(&out)));
        out.push('\n');
    }
    out
}

/// How many of the first items, whose sizes are `sizes`, fit together in `room`.
pub(crate) fn fitting(sizes: impl IntoIterator<Item = usize>, room: usize) -> usize {
    let mut used = 0;
    sizes
        .into_iter()
        .take_while(|size| {
            used += size;
            used <= room
        })
        .count()
}

/// The whole lines of `text` that fit in `max` characters, then `…` on a line of its own: a
/// cut in the middle of a line could leave an entity or a `<code>` open.
fn whole_lines(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let shown = fitting(
        lines.iter().map(|line| line.chars().count()),
        max.saturating_sub(3),
    );
    let mut kept = lines[..shown].concat();
    if max >= 3 {
        kept.push_str("…\n\n");
    }
    kept
}

/// What the summary leaves of the limit at least, for what follows it when the outputs do not
/// fit: the note that says so, and the list of what was cut.
const SUMMARY_FOOTER_ROOM: usize = 1_000;

fn table_row(job: &JobSummary) -> String {
    let status = match &job.reason {
        Some(reason) => format!(
            "{} {}: {}",
            icon(job.state),
            job.state,
            html_code(&shorten(reason, 120))
        ),
        None => format!("{} {}", icon(job.state), job.state),
    };
    let attempt = if job.attempt > 1 {
        format!(" (attempt {})", job.attempt)
    } else {
        String::new()
    };
    let (add, change, destroy) =
        job.resource_changes
            .map_or(("".into(), "".into(), "".into()), |c| {
                (
                    c.add.to_string(),
                    c.change.to_string(),
                    c.destroy.to_string(),
                )
            });
    let policy = job
        .policy
        .as_ref()
        .map(policy_cell_markdown)
        .unwrap_or_default();
    format!(
        "| {} | {} | {status}{attempt} | {add} | {change} | {destroy} | {policy} | {} | {} | {} |\n",
        code(&job.unit),
        job.action,
        job.duration_ms
            .map_or_else(String::new, crate::status::duration),
        // The worker's name is the sender's word: inert, like every sender's text here.
        inert(job.worker.as_deref().unwrap_or("")),
        cell(&job.account),
    )
}

struct Section<'a> {
    job: &'a JobSummary,
    text: &'a str,
}

fn section_markdown(job: &JobSummary, text: &str, cut: usize) -> String {
    let counts = job
        .resource_changes
        .map(|c| format!(" ({c})"))
        .unwrap_or_default();
    let note = if cut > 0 {
        format!("… {cut} characters cut above …\n")
    } else {
        String::new()
    };
    format!(
        "<details><summary>{} {}: {} {}{counts}</summary>\n\n```\n{note}{}\n```\n</details>\n",
        html_code(&job.unit),
        job.action,
        icon(job.state),
        job.state,
        text.trim_end()
    )
}

/// The least of a section worth showing: below this, a pointer to the log says more.
const MIN_SHOWN: usize = 300;

/// Which sections matter most when not all fit: failures, then plans with changes, then the
/// rest.
fn priority(job: &JobSummary) -> u8 {
    let changes = job
        .resource_changes
        .is_some_and(|c| c.add + c.change + c.destroy > 0);
    match job.state {
        JobPhase::Failed => 0,
        _ if changes => 1,
        _ => 2,
    }
}

/// How many characters of each section to keep, or `None` to leave it out. Sections are
/// admitted by priority while their wrappers and a minimum of text fit; the admitted share
/// the rest of the budget, the largest cut first to a common cap (water-filling).
fn fit(sections: &[Section<'_>], budget: usize) -> Vec<Option<usize>> {
    let lengths: Vec<usize> = sections.iter().map(|s| s.text.chars().count()).collect();
    let overheads: Vec<usize> = sections
        .iter()
        .map(|s| section_markdown(s.job, "", 1).chars().count() + 20)
        .collect();
    let mut order: Vec<usize> = (0..sections.len()).collect();
    order.sort_by_key(|&i| (priority(sections[i].job), lengths[i]));
    let mut admitted = Vec::new();
    let mut used = 0;
    for i in order {
        let cost = overheads[i] + lengths[i].min(MIN_SHOWN);
        if used + cost <= budget {
            used += cost;
            admitted.push(i);
        }
    }
    let mut caps = vec![None; sections.len()];
    let wrappers: usize = admitted.iter().map(|&i| overheads[i]).sum();
    let mut remaining = budget.saturating_sub(wrappers);
    let mut by_length = admitted.clone();
    by_length.sort_by_key(|&i| lengths[i]);
    let mut cap = usize::MAX;
    for (k, &i) in by_length.iter().enumerate() {
        let left = by_length.len() - k;
        if lengths[i] * left <= remaining {
            remaining -= lengths[i];
        } else {
            cap = remaining / left;
            break;
        }
    }
    for i in admitted {
        caps[i] = Some(lengths[i].min(cap));
    }
    caps
}

/// The last `cap` characters of `text` (from a line start when possible), and how many were
/// cut.
fn keep_end(text: &str, cap: usize) -> (String, usize) {
    let total = text.chars().count();
    if total <= cap {
        return (text.to_owned(), 0);
    }
    let skip = total - cap;
    let kept: String = text.chars().skip(skip).collect();
    // Start at a line boundary if one is near, for readability.
    let kept = match kept.find('\n') {
        Some(newline) if newline < 200 && newline + 1 < kept.len() => {
            kept[newline + 1..].to_owned()
        }
        _ => kept,
    };
    let cut = total - kept.chars().count();
    (kept, cut)
}

/// From the plan step on: what reviewers want, without `init`'s chatter.
fn interesting_part(output: &str) -> &str {
    let markers = ["\n$ terraform plan", "\n$ tofu plan", "\n$ terragrunt plan"];
    let from = markers.iter().filter_map(|m| output.rfind(m)).max();
    match from {
        Some(at) => &output[at + 1..],
        None => output,
    }
}

/// Output inside a code fence must not close it, nor reorder what reviewers read in it
/// (bidirectional formatting characters are revealed).
fn fence_safe(text: &str) -> String {
    proto_types::untrusted_text::reveal_bidi(text).replace("```", "`\u{200b}``")
}

/// Text from a repository or a plan (a unit's path, a failure's last line, a policy message
/// quoting planned values), shown verbatim: its Markdown and HTML characters become entities,
/// so that nothing in it becomes a link, an image, a table cell or markup (GitHub parses
/// Markdown between inline HTML tags too). Bidirectional formatting characters, which an
/// entity would not stop, are revealed instead. Shown in a code element ([`html_code`]),
/// where GitHub also makes no mentions, references or emoji of it.
pub(crate) fn inert(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 8);
    for (at, c) in text.char_indices() {
        match c {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '\n' | '\r' => escaped.push(' '),
            c if proto_types::untrusted_text::is_bidi_control(c) => {
                escaped.push_str(&inert(&proto_types::untrusted_text::bidi_marker(c)));
            }
            '|' | '[' | ']' | '(' | ')' | '@' | '`' | '*' | '_' | '~' | '#' | '!' | '\\' | ':' => {
                escaped.push_str(&format!("&#{};", u32::from(c)));
            }
            // GitHub links `www.` and a domain without a scheme (so without a colon).
            'w' | 'W'
                if text
                    .get(at..at + 4)
                    .is_some_and(|start| start.eq_ignore_ascii_case("www.")) =>
            {
                escaped.push_str(&format!("&#{};", u32::from(c)));
            }
            c => escaped.push(c),
        }
    }
    escaped
}

/// A unit's path as code: a Markdown code span, in which nothing renders, when the path
/// cannot end it or split a table cell (the short form keeps a 300-unit table within the
/// comment's limit); else [`inert`] text in an HTML code element.
pub(crate) fn code(text: &str) -> String {
    if text.contains(['`', '|', '\n', '\r'])
        || text
            .chars()
            .any(proto_types::untrusted_text::is_bidi_control)
    {
        html_code(text)
    } else {
        format!("`{text}`")
    }
}

/// [`inert`] text in an HTML code element: what an HTML block shows as code (Markdown does
/// not render there).
pub(crate) fn html_code(text: &str) -> String {
    format!("<code>{}</code>", inert(text))
}

/// A table cell: no pipes or newlines.
pub(crate) fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

pub(crate) fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    if max == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(max - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proto_types::{Action, EventKind, ResourceCounts, RunSummary};

    use super::*;

    fn job(i: usize, state: &str) -> JobSummary {
        JobSummary {
            job_id: Uuid::from_u128(i as u128 + 1),
            unit: format!("prod/region-{}/service-{i:03}", i % 7),
            account: "prod".into(),
            action: Action::Plan,
            state: state.parse().expect("a state name"),
            reason: (state == "skipped").then(|| "prod/net plan failed".into()),
            note: None,
            attempt: 1,
            worker: Some("prod-worker-1".into()),
            exit_code: Some(0),
            duration_ms: Some(12_345),
            log: Some(format!("prod-worker-1:/var/log/pipelines/run/{i}.log")),
            resource_changes: Some(ResourceCounts {
                add: 1,
                change: 2,
                destroy: 0,
            }),
            started_ms: None,
            finished_ms: None,
            approval: None,
            policy: None,
            drift: None,
            requires: Vec::new(),
        }
    }

    fn detail(jobs: Vec<JobSummary>, state: &str) -> RunDetail {
        RunDetail {
            run: RunSummary {
                run_id: Uuid::nil(),
                repository: "infra".into(),
                event: EventKind::PullRequest,
                pull_request: Some(7),
                head_sha: "0123456789abcdef0123456789abcdef01234567".into(),
                state: state.parse().expect("a state name"),
                reason: None,
                created_ms: 0,
                updated_ms: 0,
                jobs: BTreeMap::new(),
            },
            jobs,
        }
    }

    fn plan_output(lines: usize) -> String {
        let mut text = "Initializing the backend...\n$ terraform plan -input=false\n".to_owned();
        for i in 0..lines {
            let _ = writeln!(
                text,
                "  + resource \"aws_thing\" \"t{i}\" {{ name = \"a-fairly-long-resource-name-{i}\" }}"
            );
        }
        text.push_str("Plan: 1 to add, 2 to change, 0 to destroy.\n");
        text
    }

    #[test]
    fn a_small_run_shows_every_output_whole_from_the_plan_step_on() {
        let jobs = vec![job(0, "succeeded"), job(1, "skipped")];
        let outputs = BTreeMap::from([(jobs[0].job_id, plan_output(3))]);
        let links = Links {
            commit: Some("https://github.com/acme/infra/commit/0123".into()),
            details: None,
        };
        let body = pull_request_comment(&detail(jobs, "succeeded"), &outputs, &links);
        assert!(body.starts_with(COMMENT_MARKER), "{body}");
        assert!(body.contains("### ✅ Pipelines: plan succeeded"), "{body}");
        assert!(
            body.contains("[`0123456789ab`](https://github.com/acme/infra/commit/0123)"),
            "{body}"
        );
        assert!(body.contains("| `prod/region-0/service-000` | plan | ✅ succeeded | 1 | 2 | 0 |  | 12.3s | prod-worker-1 | prod |"), "{body}");
        assert!(
            body.contains("⏭️ skipped: <code>prod/net plan failed</code>"),
            "{body}"
        );
        assert!(body.contains("<details><summary><code>prod/region-0/service-000</code> plan: ✅ succeeded (+1 ~2 -0)</summary>"), "{body}");
        assert!(body.contains("$ terraform plan -input=false"), "{body}");
        assert!(
            !body.contains("Initializing the backend"),
            "init chatter is left out: {body}"
        );
        assert!(!body.contains("trimmed"), "{body}");
    }

    #[test]
    fn a_300_unit_run_with_long_outputs_fits_the_limit_and_keeps_the_whole_table() {
        let mut jobs: Vec<JobSummary> = (0..300).map(|i| job(i, "succeeded")).collect();
        // Three failures with enormous outputs; the rest long plans.
        for i in [10, 150, 290] {
            jobs[i].state = JobPhase::Failed;
        }
        let outputs: BTreeMap<Uuid, String> = jobs
            .iter()
            .map(|j| {
                (
                    j.job_id,
                    plan_output(if j.state == "failed" { 5_000 } else { 40 }),
                )
            })
            .collect();
        let body =
            pull_request_comment(&detail(jobs.clone(), "failed"), &outputs, &Links::default());
        assert!(
            body.chars().count() <= MAX_COMMENT_CHARS,
            "{} characters",
            body.chars().count()
        );
        for job in &jobs {
            let icon = if job.state == "failed" { "❌" } else { "✅" };
            let row = format!("| `{}` | plan | {icon} {}", job.unit, job.state);
            assert!(body.contains(&row), "row of {} missing", job.unit);
        }
        // Failures come first, cut from the top: their ends (the summary line) survive.
        for i in [10, 150, 290] {
            let unit = &jobs[i].unit;
            let start = body
                .find(&format!("<details><summary><code>{unit}</code>"))
                .unwrap_or_else(|| panic!("no output for failed {unit}"));
            let section = &body[start..start + body[start..].find("</details>").unwrap()];
            assert!(section.contains("characters cut above"), "{section}");
            assert!(
                section.contains("Plan: 1 to add, 2 to change, 0 to destroy."),
                "{section}"
            );
        }
        assert!(body.contains("_Outputs were trimmed to fit GitHub's limit of 65536 characters"));
        assert!(
            body.contains("characters cut; `prod-worker-1:/var/log/pipelines/run/10.log`"),
            "the note says where the whole log is"
        );
    }

    /// A table at its share of the limit, every unit gated and its note long, every unit's
    /// plan denied with long messages, and outputs: each section stays within its cap, and
    /// together they still fit (a comment over the limit is refused whole).
    #[test]
    fn a_full_table_approvals_and_policy_messages_fit_the_limit_together() {
        let jobs: Vec<JobSummary> = (0..400)
            .map(|i| {
                let mut job = job(i, "succeeded");
                job.unit = format!("prod/{}/service-{i:03}", "x".repeat(60));
                job.approval = Some(ApprovalGate::Approved {
                    by: "alice".into(),
                    reason: "r".repeat(400),
                    at_ms: 0,
                });
                let mut report = denied_report();
                for set in &mut report.sets {
                    set.denies = vec!["d".repeat(300); 5];
                }
                job.policy = Some(report);
                job
            })
            .collect();
        let outputs: BTreeMap<Uuid, String> =
            jobs.iter().map(|j| (j.job_id, plan_output(40))).collect();
        let mut run = detail(jobs, "succeeded");
        run.run.reason = Some("a long reason ".repeat(50));
        let body = pull_request_comment(&run, &outputs, &Links::default());
        assert!(
            body.chars().count() <= MAX_COMMENT_CHARS,
            "{} characters",
            body.chars().count()
        );
        assert!(body.contains("more unit(s)"), "the table is at its share");
        assert!(body.contains("**Approvals**") && body.contains("**Policy: "));
        // Each section cut keeps whole lines: the next starts on a line of its own.
        assert!(body.contains("\n…\n\n**Policy: "), "{body}");
        assert!(
            body.contains("_Outputs were trimmed to fit GitHub's limit"),
            "the outputs' footer is there"
        );
    }

    /// A worker's name and log place are the sender's word: no link, mention or image of
    /// theirs renders, in the table or in the note on trimmed outputs.
    #[test]
    fn what_an_executor_names_stays_inert_in_the_table_and_the_note() {
        let mut failed = job(0, "failed");
        failed.worker = Some("[approve here](https://evil.example) @org/team".into());
        failed.log = Some("w:/l`[log](https://evil.example)".into());
        let outputs = BTreeMap::from([(failed.job_id, "x\n".repeat(40_000))]);
        let body =
            pull_request_comment(&detail(vec![failed], "failed"), &outputs, &Links::default());
        assert!(
            body.contains(
                "| &#91;approve here&#93;&#40;https&#58;//evil.example&#41; &#64;org/team |"
            ),
            "{body}"
        );
        assert!(
            body.contains("characters cut; <code>w&#58;/l&#96;"),
            "{body}"
        );
        assert!(!body.contains("](https://evil.example)"), "{body}");
    }

    #[test]
    fn a_huge_run_still_fits_and_counts_what_it_leaves_out() {
        let jobs: Vec<JobSummary> = (0..3_000).map(|i| job(i, "succeeded")).collect();
        let outputs: BTreeMap<Uuid, String> =
            jobs.iter().map(|j| (j.job_id, plan_output(50))).collect();
        let body = pull_request_comment(&detail(jobs, "succeeded"), &outputs, &Links::default());
        assert!(
            body.chars().count() <= MAX_COMMENT_CHARS,
            "{} characters",
            body.chars().count()
        );
        assert!(
            body.contains("more unit(s)"),
            "the table says how many rows it left out"
        );
    }

    #[test]
    fn outputs_cannot_break_out_of_their_code_block() {
        let jobs = vec![job(0, "failed")];
        let outputs = BTreeMap::from([(jobs[0].job_id, "```\n# injected heading\n".to_owned())]);
        let body = pull_request_comment(&detail(jobs, "failed"), &outputs, &Links::default());
        assert_eq!(body.matches("```").count(), 2, "{body}");
    }

    /// A pull request names its directories and its providers print the failure's last line:
    /// both show as they are, and none of it renders as Markdown or HTML (a link, an image, a
    /// tag, a mention, a cell).
    #[test]
    fn unit_paths_and_failure_reasons_cannot_render_as_markdown() {
        let mut failed = job(0, "failed");
        failed.unit = "dev/a` ![x](https://e.test/x.png) `b</code><img src=y>".into();
        failed.reason = Some("Error: see [docs](https://e.test) @alice | ok, WWW.e.test".into());
        let outputs = BTreeMap::from([(failed.job_id, "Error: boom\n".to_owned())]);
        let body =
            pull_request_comment(&detail(vec![failed], "failed"), &outputs, &Links::default());
        let unit = "<code>dev/a&#96; &#33;&#91;x&#93;&#40;https&#58;//e.test/x.png&#41; &#96;b&lt;/code&gt;&lt;img src=y&gt;</code>";
        assert!(body.contains(&format!("| {unit} | plan | ❌ failed: <code>Error&#58; see &#91;docs&#93;&#40;https&#58;//e.test&#41; &#64;alice &#124; ok, &#87;WW.e.test</code> |")), "{body}");
        assert!(body.contains(&format!("<summary>{unit} plan")), "{body}");
        for live in ["](", "<img", "@alice", "`b", "WWW."] {
            assert!(!body.contains(live), "{live} in {body}");
        }
    }

    /// A value the pull request sets can carry a right-to-left override into the plan's
    /// output: in the comment it shows as its code point and reorders nothing.
    #[test]
    fn bidi_controls_in_outputs_and_reasons_are_shown_and_not_obeyed() {
        let mut failed = job(0, "failed");
        failed.reason = Some("Error: name = \"\u{202E}yortsed\"".into());
        let outputs = BTreeMap::from([(
            failed.job_id,
            "  + tag = \"\u{2067}prod\u{2069}\" # \u{202E}no change\u{202C}\n".to_owned(),
        )]);
        let body =
            pull_request_comment(&detail(vec![failed], "failed"), &outputs, &Links::default());
        assert!(
            body.contains("<code>Error&#58; name = \"&lt;U+202E&gt;yortsed\"</code>"),
            "{body}"
        );
        assert!(
            body.contains("  + tag = \"<U+2067>prod<U+2069>\" # <U+202E>no change<U+202C>\n"),
            "{body}"
        );
        assert!(
            !body
                .chars()
                .any(proto_types::untrusted_text::is_bidi_control),
            "{body}"
        );
    }

    /// Revealed, a bidirectional character is 8 characters: outputs are measured after, so the
    /// comment still fits GitHub's limit; and a unit path with one is revealed too.
    #[test]
    fn a_plan_full_of_bidi_characters_still_fits_and_its_unit_path_is_revealed() {
        let mut failed = job(0, "failed");
        failed.unit = "dev/\u{202E}ppa".into();
        let outputs = BTreeMap::from([(failed.job_id, "\u{202E}".repeat(70_000))]);
        let body =
            pull_request_comment(&detail(vec![failed], "failed"), &outputs, &Links::default());
        assert!(body.chars().count() <= MAX_COMMENT_CHARS, "{}", body.len());
        assert!(
            body.contains("<code>dev/&lt;U+202E&gt;ppa</code>"),
            "{body}"
        );
        assert!(
            !body
                .chars()
                .any(proto_types::untrusted_text::is_bidi_control),
        );
    }

    #[test]
    fn statuses_name_plan_or_apply_and_map_states() {
        let mut run = detail(vec![job(0, "succeeded"), job(1, "running")], "running");
        let status = commit_status(&run, "pipelines");
        assert_eq!(
            (
                status.context.as_str(),
                status.state,
                status.description.as_str()
            ),
            ("pipelines/plan", CommitState::Pending, "1 of 2 units done")
        );
        run.run.state = RunPhase::Failed;
        run.run.reason = Some("1 of 2 jobs failed, 0 skipped".into());
        run.run.pull_request = None;
        run.run.event = EventKind::Push;
        let status = commit_status(&run, "pipelines");
        assert_eq!(
            (
                status.context.as_str(),
                status.state,
                status.description.as_str()
            ),
            (
                "pipelines/apply",
                CommitState::Failure,
                "1 of 2 jobs failed, 0 skipped"
            )
        );
        run.run.state = RunPhase::Succeeded;
        assert_eq!(commit_status(&run, "ci").description, "2 unit(s) applied");
    }

    /// Pull requests with one head share its status: the worst of theirs, named by number when
    /// it is another's; the run's own on a tie; the lowest number among equals.
    #[test]
    fn a_shared_commit_shows_the_worst_status_of_its_pull_requests() {
        let status = |state: CommitState, description: &str| CommitStatus {
            context: "pipelines/plan".into(),
            state,
            description: description.into(),
        };
        let shown = |own: CommitStatus, others: &[(u64, CommitStatus)]| {
            let worst = worst_status(own, others);
            assert_eq!(worst.context, "pipelines/plan");
            (worst.state, worst.description)
        };
        let good = status(CommitState::Success, "2 unit(s) planned");
        let failed = status(CommitState::Failure, "1 of 2 jobs failed");
        assert_eq!(
            shown(good.clone(), &[(7, failed.clone())]),
            (CommitState::Failure, "PR #7: 1 of 2 jobs failed".into())
        );
        assert_eq!(
            shown(failed.clone(), &[(7, good.clone())]),
            (CommitState::Failure, "1 of 2 jobs failed".into())
        );
        assert_eq!(
            shown(
                failed.clone(),
                &[(7, status(CommitState::Failure, "other"))]
            ),
            (CommitState::Failure, "1 of 2 jobs failed".into())
        );
        assert_eq!(
            shown(
                good.clone(),
                &[
                    (9, status(CommitState::Pending, "0 of 1 units done")),
                    (8, status(CommitState::Error, "cancelled")),
                    (7, status(CommitState::Pending, "1 of 3 units done")),
                    (5, status(CommitState::Error, "rejected")),
                ]
            ),
            (CommitState::Error, "PR #5: rejected".into())
        );
        assert_eq!(
            shown(
                good.clone(),
                &[(9, status(CommitState::Pending, "0 of 1 units done"))]
            ),
            (CommitState::Pending, "PR #9: 0 of 1 units done".into())
        );
        assert_eq!(
            shown(good.clone(), &[]),
            (CommitState::Success, "2 unit(s) planned".into())
        );
        let long = status(CommitState::Failure, &"x".repeat(140));
        assert_eq!(shown(good, &[(7, long)]).1.chars().count(), 140);
    }

    fn denied_report() -> PolicyReport {
        PolicyReport {
            sets: vec![
                proto_types::PolicySetResult {
                    name: "security".into(),
                    enforced: true,
                    rules: 2,
                    denies: vec!["terraform_data.bucket: not allowed | here".into()],
                    warnings: vec!["touches prod".into()],
                    error: None,
                    overridable: false,
                    overridden: None,
                },
                proto_types::PolicySetResult {
                    name: "trial".into(),
                    enforced: false,
                    rules: 1,
                    denies: vec!["would be denied".into()],
                    warnings: Vec::new(),
                    error: None,
                    overridable: false,
                    overridden: None,
                },
            ],
        }
    }

    #[test]
    fn policy_verdicts_show_in_the_table_under_the_unit_and_as_a_commit_status() {
        let mut jobs = vec![job(0, "failed"), job(1, "succeeded"), job(2, "succeeded")];
        jobs[0].policy = Some(denied_report());
        jobs[1].policy = Some(PolicyReport {
            sets: vec![proto_types::PolicySetResult {
                name: "security".into(),
                enforced: true,
                rules: 2,
                denies: Vec::new(),
                warnings: Vec::new(),
                error: None,
                overridable: false,
                overridden: None,
            }],
        });
        let detail = detail(jobs, "failed");
        let body = pull_request_comment(&detail, &BTreeMap::new(), &Links::default());
        assert!(
            body.contains("| denied (1), 2 warnings · 3 rule(s) |"),
            "{body}"
        );
        assert!(body.contains("| passed · 2 rule(s) |"), "{body}");
        assert!(
            body.contains("**Policy: `prod/region-0/service-000`**"),
            "{body}"
        );
        assert!(
            body.contains(
                "- ❌ deny **security**: <code>terraform&#95;data.bucket&#58; not allowed &#124; here</code>"
            ),
            "{body}"
        );
        assert!(
            body.contains(
                "- ⚠️ warn (deny rule, warn mode) **trial**: <code>would be denied</code>"
            ),
            "{body}"
        );
        assert!(
            body.contains("- ⚠️ warn **security**: <code>touches prod</code>"),
            "{body}"
        );

        let status = policy_status(&detail, "pipelines").unwrap();
        assert_eq!(status.context, "pipelines/policy");
        assert_eq!(status.state, CommitState::Failure);
        assert_eq!(status.description, "denied: prod/region-0/service-000");

        let mut passing = detail.clone();
        passing.jobs[0].policy = passing.jobs[1].policy.clone();
        passing.run.state = RunPhase::Succeeded;
        assert_eq!(
            policy_status(&passing, "pipelines").unwrap().state,
            CommitState::Success
        );
        let mut unchecked = detail;
        for job in &mut unchecked.jobs {
            job.policy = None;
        }
        assert!(policy_status(&unchecked, "pipelines").is_none());
    }

    #[test]
    fn a_policy_that_could_not_run_is_an_error_never_a_pass() {
        let mut report = denied_report();
        report.sets[0].denies.clear();
        report.sets[0].error = Some("policies/a.rego:3: unexpected token".into());
        assert!(policy_cell(&report).starts_with("error"));
        let mut jobs = vec![job(0, "failed")];
        jobs[0].policy = Some(report);
        let detail = detail(jobs, "failed");
        assert_eq!(
            policy_status(&detail, "p").unwrap().state,
            CommitState::Failure
        );
        let body = pull_request_comment(&detail, &BTreeMap::new(), &Links::default());
        assert!(
            body.contains(
                "- ⛔ **security** could not run: <code>policies/a.rego&#58;3&#58; unexpected token</code>"
            ),
            "{body}"
        );
    }

    #[test]
    fn utc_times_read_as_calendar_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00 UTC");
        assert_eq!(utc(1_796_376_240_000), "2026-12-04 09:24 UTC");
    }

    #[test]
    fn gated_units_say_who_may_approve_since_when_or_who_approved_and_why() {
        let mut waiting = job(0, "awaiting-approval");
        waiting.action = Action::Apply;
        waiting.approval = Some(ApprovalGate::Waiting {
            approvers: vec!["alice".into(), "bob".into()],
            since_ms: 1_796_376_240_000,
            expires_ms: 1_796_462_640_000,
            policy_sets: Vec::new(),
        });
        let mut approved = job(1, "succeeded");
        approved.approval = Some(ApprovalGate::Approved {
            by: "carol".into(),
            reason: "CHG-1 | ok".into(),
            at_ms: 1_796_376_300_000,
        });
        let mut plan = job(2, "succeeded");
        plan.approval = Some(ApprovalGate::AfterMerge);
        let mut rejected = job(3, "cancelled");
        rejected.approval = Some(ApprovalGate::Waiting {
            approvers: vec!["alice".into()],
            since_ms: 0,
            expires_ms: 1,
            policy_sets: Vec::new(),
        });
        let run = detail(vec![waiting, approved, plan, rejected], "running");
        let comment = pull_request_comment(&run, &BTreeMap::new(), &Links::default());
        assert!(comment.contains("| ✋ awaiting-approval |"), "{comment}");
        assert!(
            comment.contains("**Approvals**\n- ✋ `prod/region-0/service-000` apply: waits for an approval from alice or bob since 2026-12-04 09:24 UTC (cancelled at 2026-12-05 09:24 UTC without one)\n"),
            "{comment}"
        );
        assert!(
            comment.contains("- ✅ `prod/region-1/service-001` plan: approved by carol at 2026-12-04 09:25 UTC: CHG-1 \\| ok\n"),
            "{comment}"
        );
        assert!(
            comment.contains("- 🔒 `prod/region-2/service-002` plan: its apply will wait for an approval after the merge\n"),
            "{comment}"
        );
        assert!(
            !comment.contains("service-003` plan: waits"),
            "a gate that no longer matters is not listed: {comment}"
        );
        let status = commit_status(&run, "pipelines");
        assert_eq!(status.description, "2 of 4 units done, 1 awaiting approval");
    }

    #[test]
    fn an_overridable_deny_says_so_and_an_overridden_one_says_by_whom() {
        let mut report = PolicyReport {
            sets: vec![proto_types::PolicySetResult {
                name: "security".into(),
                enforced: true,
                rules: 1,
                denies: vec!["terraform_data.b: needs a sign-off".into()],
                warnings: Vec::new(),
                error: None,
                overridable: true,
                overridden: None,
            }],
        };
        assert_eq!(
            policy_cell(&report),
            "denied (1), approvers may override · 1 rule(s)"
        );
        report.sets[0].overridden = Some("alice: CHG-7".into());
        assert!(!report.blocks());
        assert_eq!(
            policy_cell(&report),
            "denies overridden by alice · 1 rule(s)"
        );
        // A web user's name keeps its prefix; in the comment, what an event says stays inert.
        report.sets[0].overridden = Some("web:lead@example.com: CHG-8".into());
        assert_eq!(
            policy_cell(&report),
            "denies overridden by web:lead@example.com · 1 rule(s)"
        );
        assert_eq!(
            policy_cell_markdown(&report),
            "denies overridden by web&#58;lead&#64;example.com · 1 rule(s)"
        );
        report.sets[0].overridden = Some("[approve](https://evil.example): x".into());
        assert!(
            policy_cell_markdown(&report).starts_with(
                "denies overridden by &#91;approve&#93;&#40;https&#58;//evil.example&#41;"
            ),
            "{}",
            policy_cell_markdown(&report)
        );
        report.sets[0].overridden = Some("alice: CHG-7".into());
        let kinds: Vec<PolicyMessage> = policy_messages(&report).map(|(_, kind, _)| kind).collect();
        assert_eq!(kinds, [PolicyMessage::DenyOverridden]);
        let note = approval_note(
            &ApprovalGate::Waiting {
                approvers: vec!["alice".into()],
                since_ms: 0,
                expires_ms: 3_600_000,
                policy_sets: vec!["security".into()],
            },
            JobPhase::AwaitingApproval,
        );
        assert_eq!(
            note.as_deref(),
            Some(
                "denied by security: alice may override the deny (since 1970-01-01 00:00 UTC; it stands at 1970-01-01 01:00 UTC)"
            )
        );
    }
}
