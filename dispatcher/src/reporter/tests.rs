//! The reporter against a local fake GitHub (wiremock): runs are made by the real scheduler
//! and stored in a real database, then reported.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto_types::{Action, JobStatus, RunDetail};
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, body_string_contains, method, path, path_regex};
use wiremock::{Mock, MockBuilder, MockServer, Request, ResponseTemplate};

use super::*;
use crate::scheduler::Scheduler;
use crate::store::Store;
use crate::testing::{commit, event, gated, outcome, pr, push, settings};

const SHA: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

/// A database holding runs, and a reporter task over it talking to `github`.
struct World {
    dir: tempfile::TempDir,
    store: Store,
    scheduler: Scheduler,
    now: u64,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        World {
            dir,
            store,
            scheduler: Scheduler::new(settings()),
            now: 1_000_000,
        }
    }

    /// A run of `units` (all one action) at [`SHA`] whose jobs end as `statuses`; its id.
    fn run(
        &mut self,
        trigger: proto_types::Trigger,
        units: &[(&str, Action)],
        statuses: &[JobStatus],
        output: &dyn Fn(&str) -> String,
    ) -> Uuid {
        self.run_on(SHA, trigger, units, statuses, output)
    }

    /// [`World::run`] at the commit `head_sha`.
    fn run_on(
        &mut self,
        head_sha: &str,
        trigger: proto_types::Trigger,
        units: &[(&str, Action)],
        statuses: &[JobStatus],
        output: &dyn Fn(&str) -> String,
    ) -> Uuid {
        let (mut event, plan) = event(trigger, units, &[]);
        event.head_sha = head_sha.to_owned();
        let effects = self.scheduler.accept(&event, &plan, self.now);
        commit(&mut self.store, &self.scheduler, &effects, &[], self.now);
        for (job, status) in effects.publish.iter().zip(statuses) {
            let (_, claimed) = self
                .scheduler
                .claim(job.job_id, 1, "w1", false, None, self.now);
            commit(&mut self.store, &self.scheduler, &claimed, &[], self.now);
            let text = output(&job.unit);
            let finished =
                self.scheduler
                    .finish(job.job_id, 1, "w1", &outcome(*status, &text), self.now);
            commit(
                &mut self.store,
                &self.scheduler,
                &finished,
                &[(job.job_id, text)],
                self.now,
            );
        }
        event.id
    }

    fn task(&self, server: &MockServer, extra: &str) -> Task {
        let text = format!(
            "[[repositories]]\nname = \"infra\"\nurl = \"/srv/infra.git\"\ngithub = \"acme/infra\"\n\
             [[accounts]]\nname = \"dev\"\npaths = [\"**\"]\n\
             [github]\napi_url = \"{}\"\ntoken = \"test-token\"\n{extra}",
            server.uri()
        );
        let config = Config::from_toml(&text).unwrap();
        let github = GitHub::from_config(config.github.as_ref().unwrap()).unwrap();
        Task {
            github,
            config,
            state_dir: self.dir.path().to_owned(),
            store: crate::store::StoreLocation::state_dir(self.dir.path()),
            comments: HashMap::new(),
            approval_comments: HashMap::new(),
            failures: HashMap::new(),
            // Nobody listens: a test that wants retries gives its own channel.
            again: std::sync::Weak::new(),
            first_retry: Duration::from_millis(10),
        }
    }

    /// A push run whose one apply (`dev/app`) succeeded; its id.
    fn succeeded_apply(&mut self) -> Uuid {
        self.run(
            push(),
            &[("dev/app", Action::Apply)],
            &[JobStatus::Succeeded],
            &plan_output,
        )
    }

    fn unreported(&self) -> Vec<Uuid> {
        Store::open(self.dir.path())
            .unwrap()
            .unreported_runs(0, 100)
            .unwrap()
    }

    fn detail(&self, run_id: Uuid) -> (RunDetail, BTreeMap<Uuid, String>) {
        let store = Store::open_read_only(self.dir.path()).unwrap();
        (
            store.run_detail(&run_id.to_string(), self.now).unwrap(),
            store.outputs(run_id).unwrap(),
        )
    }
}

fn ok(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(body)
}

fn created(body: Value) -> ResponseTemplate {
    ResponseTemplate::new(201).set_body_json(body)
}

/// A request the fake GitHub expects: `verb` on exactly `route`.
fn on(verb: &str, route: impl Into<String>) -> MockBuilder {
    Mock::given(method(verb)).and(path(route.into()))
}

async fn mount(server: &MockServer, mock: Mock) {
    mock.mount(server).await;
}

/// The login of the token the tests' reporter uses.
const BOT: &str = "pipelines-bot";

/// A fake GitHub that accepts every commit status for [`SHA`], and says the token is [`BOT`]'s.
async fn fake_github() -> MockServer {
    let server = MockServer::start().await;
    mount(
        &server,
        on("GET", "/user").respond_with(ok(json!({ "login": BOT }))),
    )
    .await;
    mount(
        &server,
        on("POST", format!("/repos/acme/infra/statuses/{SHA}")).respond_with(ok(json!({}))),
    )
    .await;
    server
}

fn body_of(request: &Request) -> Value {
    serde_json::from_slice(&request.body).unwrap()
}

/// The commit statuses written, in order: the commit's first character, the state and the
/// description.
fn statuses(requests: &[Request]) -> Vec<(String, String, String)> {
    requests
        .iter()
        .filter(|r| r.url.path().contains("/statuses/"))
        .map(|r| {
            let body = body_of(r);
            (
                r.url.path().rsplit('/').next().unwrap()[..1].to_owned(),
                body["state"].as_str().unwrap().to_owned(),
                body["description"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn plan_output(unit: &str) -> String {
    format!(
        "$ terraform plan -input=false\n  + null_resource.{} will be created\nPlan: 1 to add, 0 to change, 0 to destroy.\n",
        unit.replace('/', "_")
    )
}

#[tokio::test]
async fn the_first_run_creates_the_comment_and_the_next_updates_it_without_a_duplicate() {
    let server = fake_github().await;
    // No comment at first; later the one we wrote.
    mount(
        &server,
        on("GET", "/repos/acme/infra/issues/7/comments")
            .respond_with(ok(json!([])))
            .up_to_n_times(1)
            .with_priority(1)
            .expect(1),
    )
    .await;
    // A collaborator's comment that copies the marker comes first: it is not ours.
    let ours = json!([
        { "id": 1, "body": "someone else", "user": { "login": "alice" } },
        { "id": 5, "body": format!("{}\nforged", report::COMMENT_MARKER), "user": { "login": "mallory" } },
        { "id": 42, "body": format!("{}\nold", report::COMMENT_MARKER), "user": { "login": BOT } },
    ]);
    mount(
        &server,
        on("GET", "/repos/acme/infra/issues/7/comments")
            .respond_with(ok(ours))
            .expect(1),
    )
    .await;
    mount(
        &server,
        on("POST", "/repos/acme/infra/issues/7/comments")
            .respond_with(created(json!({ "id": 42 })))
            .expect(1),
    )
    .await;
    mount(
        &server,
        on("PATCH", "/repos/acme/infra/issues/comments/42")
            .respond_with(ok(json!({})))
            .expect(2),
    )
    .await;

    let mut world = World::new();
    let units = [("dev/app", Action::Plan), ("dev/db", Action::Plan)];
    let first = world.run(
        pr(7),
        &units,
        &[JobStatus::Succeeded, JobStatus::Succeeded],
        &plan_output,
    );
    let mut task = world.task(&server, "");
    task.report(first).await;
    task.report(first).await;
    // A newer push to the pull request, reported after a dispatcher restart: found by marker.
    let second = world.run(
        pr(7),
        &units,
        &[JobStatus::Succeeded, JobStatus::Failed],
        &plan_output,
    );
    world.task(&server, "").report(second).await;

    let requests = server.received_requests().await.unwrap();
    let edits: Vec<String> = requests
        .iter()
        .filter(|r| r.method.as_str() == "PATCH")
        .map(|r| body_of(r)["body"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        edits[1].contains("### ❌ Pipelines: plan failed")
            && edits[1].contains(&second.to_string()),
        "{}",
        edits[1]
    );
    assert!(
        edits[1].contains("<code>dev/db</code> plan: ❌ failed"),
        "{}",
        edits[1]
    );
    server.verify().await;
}

#[tokio::test]
async fn a_300_unit_run_with_long_outputs_stays_under_the_limit_with_its_table_whole() {
    let server = fake_github().await;
    mount(
        &server,
        on("GET", "/repos/acme/infra/issues/9/comments").respond_with(ok(json!([]))),
    )
    .await;
    mount(
        &server,
        on("POST", "/repos/acme/infra/issues/9/comments")
            .respond_with(created(json!({ "id": 5 })))
            .expect(1),
    )
    .await;

    let mut world = World::new();
    let names: Vec<String> = (0..300).map(|i| format!("dev/service-{i:03}")).collect();
    let units: Vec<(&str, Action)> = names.iter().map(|n| (n.as_str(), Action::Plan)).collect();
    let long = |unit: &str| {
        format!(
            "$ terraform plan\n{}Plan: 1 to add, 0 to change, 0 to destroy.\n",
            format!("  + resource in {unit} with a long attribute line\n").repeat(400)
        )
    };
    let run = world.run(pr(9), &units, &vec![JobStatus::Succeeded; 300], &long);
    world.task(&server, "").report(run).await;

    let requests = server.received_requests().await.unwrap();
    let posted = requests
        .iter()
        .find(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/comments"))
        .unwrap();
    let body = body_of(posted)["body"].as_str().unwrap().to_owned();
    assert!(
        body.chars().count() <= report::MAX_COMMENT_CHARS,
        "{} characters",
        body.chars().count()
    );
    for name in &names {
        assert!(
            body.contains(&format!("| `{name}` | plan | ✅ succeeded")),
            "the row of {name} is missing"
        );
    }
    assert!(
        body.contains("_Outputs were trimmed"),
        "the cut is not said"
    );
    server.verify().await;
}

#[tokio::test]
async fn statuses_conclude_success_for_a_good_plan_and_failure_for_a_failed_apply() {
    let server = MockServer::start().await;
    let status = |state: &str, context: &str| {
        on("POST", format!("/repos/acme/infra/statuses/{SHA}"))
            .and(body_partial_json(
                json!({ "state": state, "context": context }),
            ))
            .respond_with(created(json!({})))
            .expect(1)
    };
    mount(&server, status("success", "pipelines/plan")).await;
    mount(&server, status("failure", "pipelines/apply")).await;
    mount(
        &server,
        on("GET", "/user").respond_with(ok(json!({ "login": BOT }))),
    )
    .await;
    mount(
        &server,
        on("GET", "/repos/acme/infra/issues/3/comments").respond_with(ok(json!([]))),
    )
    .await;
    mount(
        &server,
        on("POST", "/repos/acme/infra/issues/3/comments").respond_with(created(json!({ "id": 1 }))),
    )
    .await;
    mount(
        &server,
        on("GET", format!("/repos/acme/infra/commits/{SHA}/pulls")).respond_with(ok(json!([]))),
    )
    .await;

    let mut world = World::new();
    let planned = world.run(
        pr(3),
        &[("dev/app", Action::Plan)],
        &[JobStatus::Succeeded],
        &plan_output,
    );
    let applied = world.run(
        push(),
        &[("dev/app", Action::Apply)],
        &[JobStatus::Failed],
        &plan_output,
    );
    let mut task = world.task(&server, "");
    for run in [planned, applied] {
        let (detail, outputs) = world.detail(run);
        task.report_run(&detail, &Siblings::default(), &outputs)
            .await
            .unwrap();
    }
    server.verify().await;
}

/// Two pull requests from one branch into two bases have the same head, so GitHub shows both
/// the same status. The second's good plan leaves the first's failure standing (a closed pull
/// request's failure at that head does not count); once the first moves on to another commit,
/// the one it left shows the second's own status, and the first's old run writes none.
#[tokio::test]
async fn pull_requests_with_one_head_show_the_worst_plan_until_one_moves_on() {
    const OTHER: &str = "cccccccccccccccccccccccccccccccccccccccc";
    let server = fake_github().await;
    mount(
        &server,
        Mock::given(method("GET"))
            .and(path_regex(r"^/repos/acme/infra/issues/[234]/comments$"))
            .respond_with(ok(json!([]))),
    )
    .await;
    // What GitHub says of the head: 3 and 4 are open there, 2 was closed.
    let pull = |number: u64, state: &str| json!({ "number": number, "state": state, "head": { "sha": SHA } });
    mount(
        &server,
        on("GET", format!("/repos/acme/infra/commits/{SHA}/pulls")).respond_with(ok(json!([
            pull(2, "closed"),
            pull(3, "open"),
            pull(4, "open")
        ]))),
    )
    .await;
    mount(
        &server,
        Mock::given(method("POST"))
            .and(path_regex(r"^/repos/acme/infra/issues/[234]/comments$"))
            .respond_with(created(json!({ "id": 1 }))),
    )
    .await;
    mount(
        &server,
        on("POST", format!("/repos/acme/infra/statuses/{OTHER}")).respond_with(ok(json!({}))),
    )
    .await;

    let mut world = World::new();
    world.run(
        pr(2),
        &[("dev/old", Action::Plan)],
        &[JobStatus::Failed],
        &plan_output,
    );
    let failed = world.run(
        pr(3),
        &[("dev/app", Action::Plan)],
        &[JobStatus::Failed],
        &plan_output,
    );
    let planned = world.run(
        pr(4),
        &[("dev/db", Action::Plan)],
        &[JobStatus::Succeeded],
        &plan_output,
    );
    let mut task = world.task(&server, "");
    task.report(failed).await;
    task.report(planned).await;
    let requests = server.received_requests().await.unwrap();
    let failure = (
        "b".to_owned(),
        "failure".to_owned(),
        "1 of 1 jobs failed, 0 skipped".to_owned(),
    );
    assert_eq!(
        statuses(&requests),
        [
            failure.clone(),
            (
                "b".into(),
                "failure".into(),
                format!("PR #3: {}", failure.2)
            )
        ],
        "PR 4's good plan must not turn PR 3's failure green"
    );

    // PR 3 is pushed to again: its new run is at another commit.
    let moved = world.run_on(
        OTHER,
        pr(3),
        &[("dev/app", Action::Plan)],
        &[JobStatus::Succeeded],
        &plan_output,
    );
    task.report(moved).await;
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        statuses(&requests)[2..],
        [
            ("c".into(), "success".into(), "1 unit(s) planned".into()),
            ("b".into(), "success".into(), "1 unit(s) planned".into()),
        ],
        "the commit PR 3 left shows PR 4's own status"
    );
    // PR 3's old run, reported again (a late final report, a restart): it writes no status.
    task.report(failed).await;
    let requests = server.received_requests().await.unwrap();
    assert_eq!(statuses(&requests).len(), 4, "{:?}", statuses(&requests));
}

/// Under `[dispatcher.oidc]`, one read of the pull requests open at a run's head answers both
/// whether the run may write its statuses there and which other pull requests' runs at that
/// head still count: pull requests 3 and 4 share a head and each report asks GitHub once; pull
/// request 5's run names that head, which is not 5's, and writes no status there (its comment
/// on pull request 5 still goes out).
#[tokio::test]
async fn with_oidc_a_report_reads_its_heads_pull_requests_once() {
    let server = fake_github().await;
    mount(
        &server,
        Mock::given(method("GET"))
            .and(path_regex(r"^/repos/acme/infra/issues/[345]/comments$"))
            .respond_with(ok(json!([]))),
    )
    .await;
    mount(
        &server,
        Mock::given(method("POST"))
            .and(path_regex(r"^/repos/acme/infra/issues/[345]/comments$"))
            .respond_with(created(json!({ "id": 1 })))
            .expect(3),
    )
    .await;
    let pull = |number: u64| json!({ "number": number, "state": "open", "head": { "sha": SHA } });
    mount(
        &server,
        on("GET", format!("/repos/acme/infra/commits/{SHA}/pulls"))
            .respond_with(ok(json!([pull(3), pull(4)])))
            .expect(3),
    )
    .await;

    let mut world = World::new();
    let failed = world.run(
        pr(3),
        &[("dev/app", Action::Plan)],
        &[JobStatus::Failed],
        &plan_output,
    );
    let planned = world.run(
        pr(4),
        &[("dev/db", Action::Plan)],
        &[JobStatus::Succeeded],
        &plan_output,
    );
    let elsewhere = world.run(
        pr(5),
        &[("dev/web", Action::Plan)],
        &[JobStatus::Succeeded],
        &plan_output,
    );
    let mut task = world.task(
        &server,
        "[dispatcher]\ndeploy_orchestrator_users = [\"deploy\"]\n[dispatcher.oidc]\n",
    );
    for run in [failed, planned, elsewhere] {
        task.report(run).await;
    }
    let requests = server.received_requests().await.unwrap();
    assert_eq!(
        statuses(&requests),
        [
            (
                "b".into(),
                "failure".into(),
                "1 of 1 jobs failed, 0 skipped".into()
            ),
            (
                "b".into(),
                "failure".into(),
                "PR #3: 1 of 1 jobs failed, 0 skipped".into()
            ),
        ],
        "pull request 5's run must not write on pull requests 3 and 4's head"
    );
    server.verify().await;
}

#[tokio::test]
async fn a_502_and_a_rate_limit_are_retried_and_the_report_goes_through() {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let limited = ResponseTemplate::new(403)
        .insert_header("x-ratelimit-remaining", "0")
        .insert_header("x-ratelimit-reset", reset.to_string().as_str())
        .set_body_json(json!({ "message": "API rate limit exceeded" }));
    let server = statuses_answering(vec![
        ResponseTemplate::new(502),
        limited,
        created(json!({})),
    ])
    .await;

    let mut world = World::new();
    let run = world.succeeded_apply();
    let (detail, outputs) = world.detail(run);
    let started = std::time::Instant::now();
    world
        .task(&server, "")
        .report_run(&detail, &Siblings::default(), &outputs)
        .await
        .unwrap();
    let attempts = server.received_requests().await.unwrap().len();
    assert_eq!(attempts, 3, "one 502, one rate limit, one success");
    let waited_until = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        waited_until >= reset,
        "retried before the rate limit reset ({:?} in)",
        started.elapsed()
    );
    server.verify().await;
}

/// [`fake_github`], where [`SHA`] came from pull request 12 (merged; 11 was not), which has
/// no comment yet.
async fn merged_pull_request_12() -> MockServer {
    let server = fake_github().await;
    let pulls = json!([{ "number": 11, "merged_at": null }, { "number": 12, "merged_at": "2026-11-26T00:00:00Z" }]);
    mount(
        &server,
        on("GET", format!("/repos/acme/infra/commits/{SHA}/pulls")).respond_with(ok(pulls)),
    )
    .await;
    mount(
        &server,
        on("GET", "/repos/acme/infra/issues/12/comments").respond_with(ok(json!([]))),
    )
    .await;
    server
}

#[tokio::test]
async fn an_apply_failure_on_the_deploy_branch_reaches_the_merged_pull_request_and_an_issue() {
    let server = merged_pull_request_12().await;
    mount(
        &server,
        on("POST", "/repos/acme/infra/issues/12/comments")
            .and(body_string_contains("pipelines:apply-failure"))
            .respond_with(created(json!({ "id": 9 })))
            .expect(1),
    )
    .await;
    mount(
        &server,
        on("POST", "/repos/acme/infra/issues")
            .and(body_string_contains("failed: 1 unit(s)"))
            .respond_with(created(json!({ "number": 13 })))
            .expect(1),
    )
    .await;

    let mut world = World::new();
    let failing =
        |unit: &str| format!("$ terraform apply tfplan\nError: creating {unit}: AccessDenied\n");
    let run = world.run(
        push(),
        &[("dev/app", Action::Apply)],
        &[JobStatus::Failed],
        &failing,
    );
    world
        .task(&server, "open_issue_on_apply_failure = true\n")
        .report(run)
        .await;
    let requests = server.received_requests().await.unwrap();
    let comment = requests
        .iter()
        .find(|r| {
            r.url.path() == "/repos/acme/infra/issues/12/comments" && r.method.as_str() == "POST"
        })
        .unwrap();
    let body = body_of(comment)["body"].as_str().unwrap().to_owned();
    assert!(
        body.contains("failed after this pull request was merged") && body.contains("AccessDenied"),
        "{body}"
    );
    server.verify().await;
}

/// A fake GitHub whose commit statuses get `answers` in turn, the last one from then on
/// (and expected exactly once).
async fn statuses_answering(answers: Vec<ResponseTemplate>) -> MockServer {
    let server = MockServer::start().await;
    let last = answers.len();
    for (i, answer) in answers.into_iter().enumerate() {
        let mock = Mock::given(method("POST"))
            .and(path(format!("/repos/acme/infra/statuses/{SHA}")))
            .respond_with(answer)
            .with_priority(u8::try_from(i + 1).unwrap());
        let mock = if i + 1 == last {
            mock.expect(1)
        } else {
            mock.up_to_n_times(1)
        };
        mount(&server, mock).await;
    }
    server
}

/// A status GitHub refuses once (401), then accepts.
async fn github_failing_once() -> MockServer {
    statuses_answering(vec![
        // Rate limited for an hour: longer than a call waits, so the report fails for now.
        ResponseTemplate::new(429)
            .insert_header("retry-after", "3600")
            .set_body_json(json!({ "message": "API rate limit exceeded" })),
        created(json!({})),
    ])
    .await
}

/// The retry `task` scheduled for `run` comes, lands (the second status request) and marks it.
async fn retry_lands(
    task: &mut Task,
    retries: &Pending,
    world: &World,
    server: &MockServer,
    run: Uuid,
) {
    tokio::time::timeout(Duration::from_secs(10), retries.notify.notified())
        .await
        .expect("a retry is scheduled");
    assert_eq!(retries.take(), std::collections::BTreeSet::from([run]));
    task.report(run).await;
    assert!(world.unreported().is_empty(), "marked once it landed");
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    server.verify().await;
}

#[tokio::test]
async fn a_failed_final_report_is_tried_again_and_marked_once_it_lands() {
    let server = github_failing_once().await;
    let mut world = World::new();
    let run = world.succeeded_apply();
    let retries = std::sync::Arc::new(Pending::default());
    let mut task = world.task(&server, "");
    task.again = std::sync::Arc::downgrade(&retries);
    task.report(run).await;
    assert_eq!(world.unreported(), vec![run], "not marked while it failed");
    retry_lands(&mut task, &retries, &world, &server, run).await;
}

#[tokio::test]
async fn a_starting_reporter_sends_the_final_reports_that_never_landed() {
    let server = github_failing_once().await;
    let mut world = World::new();
    // Today (a starting reporter looks back one day).
    world.now = crate::clock::now_ms();
    // Finished while the dispatcher's reporter was gone: nobody will say it changed.
    let run = world.succeeded_apply();
    assert_eq!(world.unreported(), vec![run]);
    let retries = std::sync::Arc::new(Pending::default());
    let mut task = world.task(&server, "");
    task.again = std::sync::Arc::downgrade(&retries);
    // What a starting task does first.
    task.catch_up().await;
    // Its first try failed (rate limited); the retry lands and marks it.
    retry_lands(&mut task, &retries, &world, &server, run).await;
}

/// A GitHub that refuses every post (bad credentials), and a finished apply to report.
async fn refused_world() -> (MockServer, World, Uuid) {
    let server = MockServer::start().await;
    mount(
        &server,
        Mock::given(method("POST")).respond_with(
            ResponseTemplate::new(401).set_body_json(json!({ "message": "Bad credentials" })),
        ),
    )
    .await;
    let mut world = World::new();
    let run = world.succeeded_apply();
    (server, world, run)
}

#[tokio::test]
async fn a_github_outage_never_fails_the_report_caller() {
    let (server, world, run) = refused_world().await;
    let mut task = world.task(&server, "");
    let (detail, outputs) = world.detail(run);
    let err = task
        .report_run(&detail, &Siblings::default(), &outputs)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("HTTP 401") && err.contains("Bad credentials"),
        "{err}"
    );
    // The task's own entry point only logs it.
    tokio::time::timeout(Duration::from_secs(5), task.report(run))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_final_report_github_refuses_is_not_retried() {
    let (server, world, run) = refused_world().await;
    let retries = std::sync::Arc::new(Pending::default());
    let mut task = world.task(&server, "");
    task.again = std::sync::Arc::downgrade(&retries);
    task.report(run).await;
    assert!(
        task.failures.is_empty(),
        "no retry counted: {:?}",
        task.failures
    );
    assert_eq!(
        world.unreported(),
        vec![run],
        "not marked: the next start sends it"
    );
    // One request: the client itself does not retry a 401 either.
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_push_waiting_for_an_approval_says_so_on_the_merged_pull_request_then_who_approved() {
    let server = merged_pull_request_12().await;
    mount(
        &server,
        on("POST", "/repos/acme/infra/issues/12/comments")
            .and(body_string_contains("pipelines:approval"))
            .respond_with(created(json!({ "id": 21 })))
            .expect(1),
    )
    .await;
    mount(
        &server,
        on("PATCH", "/repos/acme/infra/issues/comments/21")
            .respond_with(ok(json!({})))
            .expect(1),
    )
    .await;

    let mut world = World::new();
    let (event, plan) = event(push(), &[("prod/db", Action::Apply)], &[]);
    let accepted = world
        .scheduler
        .accept(&event, &gated(plan, &["prod/db"]), world.now);
    commit(
        &mut world.store,
        &world.scheduler,
        &accepted,
        &[],
        world.now,
    );
    let mut task = world.task(&server, "");
    task.report(event.id).await;

    let approved = world
        .scheduler
        .decide_approval(
            event.id,
            dispatcher_core::scheduler::ApprovalScope::Run,
            proto_types::ApprovalVerdict::Approve,
            "alice",
            "CHG-1",
            true,
            world.now,
        )
        .unwrap()
        .1;
    commit(
        &mut world.store,
        &world.scheduler,
        &approved,
        &[],
        world.now,
    );
    let job = &approved.publish[0];
    let claimed = world
        .scheduler
        .claim(job.job_id, 1, "w1", false, None, world.now)
        .1;
    commit(&mut world.store, &world.scheduler, &claimed, &[], world.now);
    let finished = world.scheduler.finish(
        job.job_id,
        1,
        "w1",
        &outcome(JobStatus::Succeeded, "Apply complete!"),
        world.now,
    );
    commit(
        &mut world.store,
        &world.scheduler,
        &finished,
        &[],
        world.now,
    );
    task.report(event.id).await;

    let requests = server.received_requests().await.unwrap();
    let bodies: Vec<String> = requests
        .iter()
        .filter(|r| r.url.path().contains("/comments") && r.method.as_str() != "GET")
        .map(|r| body_of(r)["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies.len(), 2, "one comment, then its update");
    assert!(
        bodies[0].contains("waits for an approval (1 unit(s))")
            && bodies[0].contains("waits for an approval from alice since"),
        "{}",
        bodies[0]
    );
    assert!(
        bodies[1].contains("Pipelines: apply of `bbbbbbbbbbbb` succeeded")
            && bodies[1].contains("approved by alice at"),
        "{}",
        bodies[1]
    );
    server.verify().await;
}

#[tokio::test]
async fn with_a_public_url_the_comment_and_the_status_link_to_the_runs_page() {
    let server = MockServer::start().await;
    let mut world = World::new();
    let planned = world.run(
        pr(3),
        &[("dev/app", Action::Plan)],
        &[JobStatus::Succeeded],
        &plan_output,
    );
    let page = format!("https://pipelines.example.com/runs/{planned}");
    mount(
        &server,
        on("POST", format!("/repos/acme/infra/statuses/{SHA}"))
            .and(body_partial_json(json!({ "target_url": page })))
            .respond_with(created(json!({})))
            .expect(1),
    )
    .await;
    mount(
        &server,
        on("GET", "/user").respond_with(ok(json!({ "login": BOT }))),
    )
    .await;
    mount(
        &server,
        on("GET", "/repos/acme/infra/issues/3/comments").respond_with(ok(json!([]))),
    )
    .await;
    mount(
        &server,
        on("POST", "/repos/acme/infra/issues/3/comments").respond_with(created(json!({ "id": 1 }))),
    )
    .await;
    let mut task = world.task(
        &server,
        "[dispatcher]\npublic_url = \"https://pipelines.example.com/\"\n",
    );
    let (detail, outputs) = world.detail(planned);
    task.report_run(&detail, &Siblings::default(), &outputs)
        .await
        .unwrap();
    server.verify().await;
    let requests = server.received_requests().await.unwrap();
    let comment = requests
        .iter()
        .find(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/comments"))
        .map(body_of)
        .unwrap();
    assert!(
        comment["body"]
            .as_str()
            .unwrap()
            .contains(&format!("[details]({page})")),
        "{comment}"
    );
}
