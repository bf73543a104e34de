//! The web page's HTML: the list of runs, one run (its dependency graph and job table, the part
//! that updates live) and one job (its details and log viewer). Pure: plain data in, markup
//! out. maud escapes every value, so unit names, reasons and output from the repository can
//! never become markup, and every page shows bidirectional formatting characters as their
//! code points ([`bidi_revealed`]); the page's script only ever inserts server-rendered HTML
//! or text.

use std::collections::BTreeMap;

use maud::{DOCTYPE, Markup, PreEscaped, html};
use proto_types::{EventKind, JobSummary, RunDetail, RunPhase, RunSummary};
use uuid::Uuid;

use crate::graph;
use crate::report::{policy_cell, utc};
use crate::scheduler::ShownJob;
use crate::status::duration;

/// Who is looking, and what they may do: decides which buttons the page shows. (The server
/// checks again on every action; a hidden button is a courtesy, not the control.)
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Viewer {
    /// The signed-in user, if any.
    pub user: Option<String>,
    pub may_cancel: bool,
    pub may_approve: bool,
    /// The token every form of this viewer carries (CSRF); `None` when nobody may act.
    pub csrf: Option<String>,
    /// Whether the page offers a sign-in form (static tokens are configured).
    pub sign_in: bool,
}

/// Where a repository's commits and pull requests are on the forge: `repository →
/// https://github.com/org/infra`.
pub type ForgeLinks = BTreeMap<String, String>;

/// The runs list's filter, as the form sends it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunsFilter {
    pub repository: Option<String>,
    pub event: Option<EventKind>,
    pub state: Option<String>,
    pub pull_request: Option<u64>,
}

/// One log of a job, as the job page lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub attempt: u32,
    /// When its worker began it (tells apart two runs of one attempt on one worker).
    pub stream: u64,
    pub worker: String,
    pub bytes: u64,
    /// `complete`, `truncated`, `cut` (its job ended without its end) or `streaming`.
    pub state: &'static str,
}

const RUN_STATES: [&str; 5] = ["running", "succeeded", "failed", "rejected", "cancelled"];

/// A whole page around `body`.
fn page(title: &str, viewer: &Viewer, body: Markup) -> String {
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Pipelines" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body {
                header {
                    a.brand href="/" { "Pipelines" }
                    span.who {
                        @if let Some(user) = &viewer.user {
                            "Signed in as " strong { (user) }
                        } @else if viewer.sign_in {
                            a href="/sign-in" { "Sign in" }
                        } @else {
                            "Read-only"
                        }
                    }
                }
                main { (body) }
            }
        }
    }
    .into_string();
    bidi_revealed(html)
}

/// `html` with every bidirectional formatting character (the "Trojan Source" set) shown as
/// its code point, `&lt;U+202E&gt;`: a unit's path, a branch, a reason or a worker's name,
/// which a pull request or a worker chose, cannot reorder what the reader sees (`prod/` then
/// U+202E then `ppa/ved` reads `prod/dev/app`). maud escapes markup but keeps these, and none
/// of the page's own markup has one, so the whole page is done at once and no new field can
/// be missed.
fn bidi_revealed(html: String) -> String {
    use proto_types::untrusted_text::{bidi_marker, is_bidi_control};
    if !html.chars().any(is_bidi_control) {
        return html;
    }
    let mut shown = String::with_capacity(html.len() + 64);
    for c in html.chars() {
        if is_bidi_control(c) {
            shown.push_str(&bidi_marker(c).replace('<', "&lt;").replace('>', "&gt;"));
        } else {
            shown.push(c);
        }
    }
    shown
}

/// `/`: the most recent runs that pass `filter`, newest first.
pub fn runs_page(
    runs: &[RunSummary],
    filter: &RunsFilter,
    repositories: &[String],
    viewer: &Viewer,
    links: &ForgeLinks,
    now: u64,
) -> String {
    let selected = |value: &str, chosen: Option<&str>| chosen == Some(value);
    let body = html! {
        h1 { "Runs" }
        form.filters method="get" action="/" {
            label { "Repository "
                select name="repository" {
                    option value="" { "any" }
                    @for repository in repositories {
                        option value=(repository) selected[selected(repository, filter.repository.as_deref())] { (repository) }
                    }
                }
            }
            label { "Event "
                select name="event" {
                    option value="" { "any" }
                    @for event in [EventKind::PullRequest, EventKind::Push, EventKind::Drift] {
                        option value=(event.as_str()) selected[filter.event == Some(event)] { (event.as_str()) }
                    }
                }
            }
            label { "State "
                select name="state" {
                    option value="" { "any" }
                    @for state in RUN_STATES {
                        option value=(state) selected[selected(state, filter.state.as_deref())] { (state) }
                    }
                }
            }
            label { "PR "
                input type="number" name="pr" min="1" value=[filter.pull_request] size="6";
            }
            button type="submit" { "Filter" }
        }
        @if runs.is_empty() {
            p.empty { "No runs match." }
        } @else {
            table.runs {
                thead { tr {
                    th { "Run" } th { "Repository" } th { "Event" } th { "State" }
                    th { "Jobs" } th { "Duration" } th { "Commit" } th { "Started" }
                } }
                tbody {
                    @for run in runs {
                        tr {
                            td { a href={ "/runs/" (run.run_id) } { code { (short_id(run.run_id)) } } }
                            td { (run.repository) }
                            td { (event_cell(run, links)) }
                            td { span class={ "state " (run.state.as_str()) } { (run.state.as_str()) }
                                 @if let Some(reason) = &run.reason { div.reason { (reason) } } }
                            td { (counts(&run.jobs)) }
                            td { (run_duration(run, now)) }
                            td { (commit_link(run, links)) }
                            td { (utc(run.created_ms)) }
                        }
                    }
                }
            }
        }
    };
    page("Runs", viewer, body)
}

/// `/runs/<id>`: the run, whose live part updates while it goes on.
pub fn run_page(detail: &RunDetail, viewer: &Viewer, links: &ForgeLinks, now: u64) -> String {
    let run = &detail.run;
    let awaiting: Vec<(&JobSummary, ShownJob)> = detail
        .jobs
        .iter()
        .filter_map(|job| Some((job, ShownJob::waiting(job)?)))
        .collect();
    let body = html! {
        h1 { "Run " code { (short_id(run.run_id)) } }
        p.meta {
            (run.repository) " · " (event_cell(run, links)) " · " (commit_link(run, links))
            " · started " (utc(run.created_ms))
        }
        @if run.state == RunPhase::Running {
            div #actions .actions {
                @if let (true, Some(csrf)) = (viewer.may_cancel, &viewer.csrf) {
                    form method="post" action={ "/runs/" (run.run_id) "/cancel" } {
                        input type="hidden" name="csrf" value=(csrf);
                        input type="text" name="reason" placeholder="Why cancel?" required;
                        button #cancel type="submit" class="danger" { "Cancel run" }
                    }
                }
                @if let (false, true, Some(csrf)) = (awaiting.is_empty(), viewer.may_approve, &viewer.csrf) {
                    // Each job in the wait shown: the verdict is for these alone, not for what
                    // begins to wait after the page was loaded.
                    form #approval .approval method="post" action={ "/runs/" (run.run_id) "/approve" } {
                        input type="hidden" name="csrf" value=(csrf);
                        span.label { "Waiting:" }
                        @for (job, wait) in &awaiting {
                            label.choice {
                                input type="checkbox" name="job" value=(wait) checked;
                                " " (job.unit) " " small { (job.action.as_str()) ", attempt " (job.attempt) }
                            }
                        }
                        input type="text" name="reason" placeholder="Why?" required;
                        button type="submit" name="verdict" value="approve" { "Approve chosen" }
                        button type="submit" name="verdict" value="reject" class="danger" { "Reject chosen" }
                        p #approval-stale .note hidden {}
                    }
                }
            }
        }
        div #live data-events=(format!("/runs/{}/events", run.run_id))
            data-final=(run.state != RunPhase::Running) {
            (PreEscaped(run_live(detail, now)))
        }
    };
    page(&format!("Run {}", short_id(run.run_id)), viewer, body)
}

/// The part of a run's page that changes while it runs: state, graph, jobs. (The actions stay
/// outside it, so that an update never wipes what a user is typing; the script removes them
/// when the run ends.)
pub fn run_live(detail: &RunDetail, now: u64) -> String {
    let run = &detail.run;
    let live = html! {
        div.summary {
            span #run-state class={ "state " (run.state.as_str()) } { (run.state.as_str()) }
            " " span.counts { (counts(&run.jobs)) }
            " · " (run_duration(run, now))
            @if let Some(reason) = &run.reason { div.reason { (reason) } }
        }
        h2 { "Graph" }
        div.graph { (graph::svg(detail)) }
        h2 { "Jobs" }
        (job_table(detail))
    };
    bidi_revealed(live.into_string())
}

fn job_table(detail: &RunDetail) -> Markup {
    html! {
        table.jobs {
            thead { tr {
                th { "Unit" } th { "Account" } th { "Action" } th { "State" } th { "Attempt" }
                th { "Worker" } th { "Duration" } th { "Resources" } th { "Policy" }
            } }
            tbody {
                @for job in &detail.jobs {
                    tr id={ "job-" (job.job_id) }
                        data-waiting=[ShownJob::waiting(job)] {
                        td { a href={ "/jobs/" (job.job_id) } { (job.unit) } }
                        td { (job.account) }
                        td { (job.action.as_str()) }
                        td {
                            span class={ "state " (job.state.as_str()) } { (job.state.as_str()) }
                            @if let Some(why) = graph::why(detail, job) { div.reason { (why) } }
                        }
                        td { (job.attempt) }
                        td { (job.worker.as_deref().unwrap_or("")) }
                        td { (job.duration_ms.map(duration).unwrap_or_default()) }
                        td { (resources(job)) }
                        td { (job.policy.as_ref().map(policy_cell).unwrap_or_default()) }
                    }
                }
            }
        }
    }
}

/// `/jobs/<id>`: a job, and the viewer of its newest log.
pub fn job_page(
    detail: &RunDetail,
    job: &JobSummary,
    logs: &[LogEntry],
    viewer: &Viewer,
) -> String {
    let run = &detail.run;
    let body = html! {
        p.crumbs { a href={ "/runs/" (run.run_id) } { "Run " code { (short_id(run.run_id)) } } }
        h1 { (job.unit) " " small { (job.action.as_str()) } }
        table.facts {
            tr { th { "State" } td { span #job-state class={ "state " (job.state.as_str()) } { (job.state.as_str()) }
                @if let Some(why) = graph::why(detail, job) { div.reason { (why) } } } }
            tr { th { "Account" } td { (job.account) } }
            tr { th { "Attempt" } td { (job.attempt) } }
            tr { th { "Worker" } td { (job.worker.as_deref().unwrap_or("not started")) } }
            tr { th { "Duration" } td { (job.duration_ms.map(duration).unwrap_or_default()) } }
            tr { th { "Resources" } td { (resources(job)) } }
            @if let Some(policy) = &job.policy { tr { th { "Policy" } td { (policy_cell(policy)) } } }
            @if let Some(code) = job.exit_code { tr { th { "Exit code" } td { (code) } } }
        }
        h2 { "Log" }
        @if logs.len() > 1 {
            ul.logs {
                @for log in logs {
                    li { a href={ "/jobs/" (job.job_id) "/logs/" (log.attempt) "/" (log.stream) "/" (log.worker) } {
                        "attempt " (log.attempt) " on " (log.worker) } " · " (log.bytes) " bytes · " (log.state) }
                }
            }
        }
        @if logs.is_empty() && job.state.is_final() {
            p.empty { "This job has no log here (it never started, or its worker does not stream logs)." }
        } @else {
            p.logstate { span #log-state { "loading…" } @if let Some(log) = logs.last() {
                " · " a href={ "/jobs/" (job.job_id) "/logs/" (log.attempt) "/" (log.stream) "/" (log.worker) } { "raw" } } }
            p #log-trimmed.note hidden {}
            pre #log data-stream=(format!("/jobs/{}/stream", job.job_id)) {}
        }
    };
    page(&job.unit, viewer, body)
}

/// `/sign-in`: a token form (static tokens).
pub fn sign_in_page(error: Option<&str>, viewer: &Viewer) -> String {
    let body = html! {
        h1 { "Sign in" }
        @if let Some(error) = error { p.error { (error) } }
        form method="post" action="/sign-in" {
            label { "Token " input type="password" name="token" autocomplete="current-password" required; }
            button #sign-in type="submit" { "Sign in" }
        }
    };
    page("Sign in", viewer, body)
}

/// A short page for errors (404, 403).
pub fn message_page(title: &str, message: &str, viewer: &Viewer) -> String {
    page(title, viewer, html! { h1 { (title) } p { (message) } })
}

fn resources(job: &JobSummary) -> String {
    let mut text = job
        .resource_changes
        .map(|counts| counts.to_string())
        .unwrap_or_default();
    if let Some(drift) = &job.drift {
        text = if drift.drifted {
            format!("drifted {text}")
        } else {
            "in sync".to_owned()
        };
    }
    text
}

fn short_id(id: Uuid) -> String {
    id.to_string()[..8].to_owned()
}

fn counts(jobs: &BTreeMap<String, u32>) -> String {
    let total: u32 = jobs.values().sum();
    let parts: Vec<String> = jobs
        .iter()
        .map(|(state, count)| format!("{count} {state}"))
        .collect();
    format!("{total} jobs: {}", parts.join(", "))
}

fn run_duration(run: &RunSummary, now: u64) -> String {
    let end = if run.state == RunPhase::Running {
        now
    } else {
        run.updated_ms
    };
    duration(end.saturating_sub(run.created_ms))
}

fn event_cell(run: &RunSummary, links: &ForgeLinks) -> Markup {
    match (run.pull_request, links.get(&run.repository)) {
        (Some(number), Some(base)) => html! {
            (run.event.as_str()) " " a href=(format!("{base}/pull/{number}")) { "#" (number) }
        },
        (Some(number), None) => html! { (run.event.as_str()) " #" (number) },
        (None, _) => html! { (run.event.as_str()) },
    }
}

fn commit_link(run: &RunSummary, links: &ForgeLinks) -> Markup {
    // Cut by characters: a rejected event's sha is as it was sent, not necessarily hex, and
    // only a real sha becomes a link.
    let short: String = run.head_sha.chars().take(8).collect();
    match links.get(&run.repository) {
        Some(base) if crate::policy::is_commit_sha(&run.head_sha) => {
            html! { a href=(format!("{base}/commit/{}", run.head_sha)) { code { (short) } } }
        }
        _ => html! { code { (short) } },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run_detail;

    #[test]
    fn repository_text_is_escaped_everywhere() {
        let evil = "dev/<script>alert(1)</script>";
        let mut detail = run_detail(&[(evil, "failed"), ("dev/b\"onmouseover=\"x", "skipped")]);
        detail.jobs[0].reason = Some("<img src=x onerror=alert(2)>".into());
        let viewer = Viewer::default();
        let html = run_page(&detail, &viewer, &ForgeLinks::new(), 0);
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(!html.contains("<img src=x"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("b\"onmouseover"), "{html}");
        let job = job_page(&detail, &detail.jobs[0], &[], &viewer);
        assert!(!job.contains("<script>alert"), "{job}");
    }

    /// What a pull request or a worker named cannot reorder the page: each bidirectional
    /// formatting character shows as its code point, in a unit's path (cell, graph, title), a
    /// reason, a sha as sent and a worker's name, on every page and in the live part.
    #[test]
    fn bidi_controls_anywhere_on_a_page_are_shown_and_not_obeyed() {
        let unit = "prod/\u{202E}ppa/ved";
        let mut detail = run_detail(&[(unit, "failed"), ("dev/a", "succeeded")]);
        detail.jobs[0].reason = Some("exit 1: \u{2066}fine\u{2069}".into());
        detail.jobs[0].worker = Some("w\u{200F}1".into());
        detail.run.reason = Some("\u{061C}1 failed".into());
        // A rejected event's sha is kept as it was sent.
        detail.run.head_sha = "\u{202D}bad".into();
        let viewer = Viewer::default();
        let links = ForgeLinks::new();
        let pages = [
            run_page(&detail, &viewer, &links, 0),
            run_live(&detail, 0),
            job_page(&detail, &detail.jobs[0], &[], &viewer),
            runs_page(
                &[detail.run.clone()],
                &RunsFilter::default(),
                &[],
                &viewer,
                &links,
                0,
            ),
        ];
        for (page, shown) in pages.iter().zip([
            &["202E", "2066", "2069", "200F", "061C", "202D"][..],
            &["202E", "2066", "200F", "061C"],
            &["202E", "2066", "200F"],
            &["061C", "202D"],
        ]) {
            assert!(
                !page
                    .chars()
                    .any(proto_types::untrusted_text::is_bidi_control),
                "{page}"
            );
            for code in shown {
                assert!(
                    page.contains(&format!("&lt;U+{code}&gt;")),
                    "U+{code}: {page}"
                );
            }
        }
        assert!(
            pages[0].contains("prod/&lt;U+202E&gt;ppa/ved"),
            "{}",
            pages[0]
        );
    }

    /// A rejected event's sha is stored as it was sent: the page cuts it by characters (a
    /// byte slice would panic inside a multi-byte one) and links only a real sha.
    #[test]
    fn a_sha_that_is_none_shows_cut_and_links_nowhere() {
        let links = ForgeLinks::from([(
            "infra".to_owned(),
            "https://github.com/acme/infra".to_owned(),
        )]);
        let mut detail = run_detail(&[]);
        detail.run.head_sha = "ééééééééé/../../../evil".into();
        let html = run_page(&detail, &Viewer::default(), &links, 0);
        assert!(html.contains("<code>éééééééé</code>"), "{html}");
        assert!(!html.contains("/commit/"), "{html}");
        detail.run.head_sha = "c0ffee".repeat(6) + "c0ff";
        let html = run_page(&detail, &Viewer::default(), &links, 0);
        assert!(
            html.contains(&format!(
                "href=\"https://github.com/acme/infra/commit/{}\"",
                detail.run.head_sha
            )),
            "{html}"
        );
    }

    #[test]
    fn actions_show_only_for_viewers_who_may_act() {
        let detail = run_detail(&[("dev/a", "running")]);
        let read_only = run_page(&detail, &Viewer::default(), &ForgeLinks::new(), 0);
        assert!(!read_only.contains("Cancel run"));
        let operator = Viewer {
            user: Some("alice".into()),
            may_cancel: true,
            csrf: Some("token-123".into()),
            ..Viewer::default()
        };
        let html = run_page(&detail, &operator, &ForgeLinks::new(), 0);
        assert!(html.contains("Cancel run"));
        assert!(
            !run_live(&detail, 0).contains("Cancel run"),
            "live updates never replace a form being filled in"
        );
        assert!(html.contains(r#"name="csrf" value="token-123""#), "{html}");
        assert!(!html.contains("Approve"), "nothing waits for an approval");
    }

    /// The approval form names each waiting job's wait (attempt, since when), and the live part
    /// marks the waiting ones the same way, so the page can tell when more wait than its form
    /// offers.
    #[test]
    fn the_approval_form_names_each_waiting_jobs_wait() {
        let mut detail = run_detail(&[
            ("prod/db", "awaiting-approval"),
            ("prod/app", "running"),
            ("prod/web", "awaiting-approval"),
        ]);
        detail.jobs[2].attempt = 3;
        for (job, since_ms) in [(0, 5), (2, 9)] {
            detail.jobs[job].approval = Some(proto_types::ApprovalGate::Waiting {
                approvers: vec!["lead".into()],
                since_ms,
                expires_ms: 100,
                policy_sets: Vec::new(),
            });
        }
        let approver = Viewer {
            user: Some("lead".into()),
            may_approve: true,
            csrf: Some("token-123".into()),
            ..Viewer::default()
        };
        let html = run_page(&detail, &approver, &ForgeLinks::new(), 0);
        let offered: Vec<&str> = html
            .split(r#"name="job" value=""#)
            .skip(1)
            .map(|rest| &rest[..rest.find('"').unwrap()])
            .collect();
        let first = Uuid::from_u128(1);
        let third = Uuid::from_u128(3);
        assert_eq!(offered, [format!("{first}:1:5"), format!("{third}:3:9")]);
        assert!(html.contains("Approve chosen"), "{html}");
        let live = run_live(&detail, 0);
        assert!(
            live.contains(&format!(r#"data-waiting="{third}:3:9""#)),
            "{live}"
        );
        assert_eq!(live.matches("data-waiting=").count(), 2, "{live}");
        let read_only = run_page(&detail, &Viewer::default(), &ForgeLinks::new(), 0);
        assert!(!read_only.contains(r#"name="job""#), "{read_only}");
    }

    #[test]
    fn the_runs_list_keeps_its_filter_and_links_to_the_forge() {
        let detail = run_detail(&[("dev/a", "succeeded")]);
        let mut run = detail.run.clone();
        run.pull_request = Some(42);
        run.event = EventKind::PullRequest;
        let links = ForgeLinks::from([(
            run.repository.clone(),
            "https://github.com/org/infra".into(),
        )]);
        let filter = RunsFilter {
            state: Some("failed".into()),
            ..RunsFilter::default()
        };
        let html = runs_page(
            &[run.clone()],
            &filter,
            &[run.repository.clone()],
            &Viewer::default(),
            &links,
            0,
        );
        assert!(
            html.contains(r#"<option value="failed" selected>"#),
            "{html}"
        );
        assert!(html.contains("https://github.com/org/infra/pull/42"));
        assert!(html.contains(&format!(
            "https://github.com/org/infra/commit/{}",
            run.head_sha
        )));
        assert!(html.contains(&format!("/runs/{}", run.run_id)));
    }
}
