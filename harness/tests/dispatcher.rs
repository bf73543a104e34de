//! The dispatcher over the real RabbitMQ with real terraform: applies of one unit serialized
//! across runs, superseded pull-request runs cancelled, a `kill -9` survived, rejections with
//! their reasons, retries, and a vanished worker's job taken over. Every service is a separate
//! OS process; `null_resource` units log when each apply starts and ends. The scenarios of run
//! state run on both run databases, SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::collections::BTreeMap;
use std::time::Duration;

use broker::{Broker, Headers, Outgoing, REASON_HEADER, Route};
use dispatcher::store::Store;
use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::process;
use harness::rabbit;
use harness::runs::{self, assert_job, job, setup_on, status, status_json, submit, wait_final};
use harness::sandbox::{Engine, Sandbox};
use harness::{poll_until, summary_rows};
use proto_types::{
    Change, ChangeEvent, ChangeKind, ClaimReply, ClaimVerdict, Job, JobEvent, JobEventKind,
    Payload, RunState, RunStatus, RunSummary, Trigger,
};
use uuid::Uuid;

const DEADLINE: Duration = runs::DEADLINE;

/// Each scenario named runs once per run database: `sqlite::name` and `postgres::name`.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Sqlite);
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                super::$name(super::Engine::Postgres);
            })*
        }
    };
}

on_both_stores!(
    two_pushes_touching_one_unit_apply_it_in_arrival_order_and_never_overlap,
    a_newer_pull_request_run_cancels_what_the_older_has_not_started_and_completes,
    a_dispatcher_killed_mid_run_takes_it_up_again_and_applies_each_unit_once_in_order,
    a_transient_failure_is_retried_after_its_backoff_and_status_shows_attempts_and_reasons,
    a_job_whose_worker_vanished_is_taken_over_once_the_lease_runs_out_and_runs_once,
);

fn two_pushes_touching_one_unit_apply_it_in_arrival_order_and_never_overlap(engine: Engine) {
    let (vhost, sandbox) = setup_on(engine);
    let units = Units::new(&sandbox);
    let slow = Behaviour::Succeed { seconds: 2 };
    let c0 = units.readme_only();
    let c1 = units.commit("c1: app v1", 1, &[("dev/app", &[], slow)]);
    let c2 = units.commit("c2: app v2", 2, &[("dev/app", &[], slow)]);
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    // Three workers, and no state locking (as with a backend that has none): only the
    // dispatcher's per-unit FIFO keeps the two applies apart.
    let no_locks = [
        ("TF_CLI_ARGS_plan", "-lock=false"),
        ("TF_CLI_ARGS_apply", "-lock=false"),
    ];
    let mut deployment =
        Deployment::start_with_executor_env(sandbox.path(), &config, &[("dev", 3)], &no_locks);

    let first = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);
    let second = submit(&sandbox, &vhost, (&c1, &c2), "push", &[]);
    for run in [first, second] {
        let detail = wait_final(&sandbox, run);
        assert_eq!(
            detail.run.state,
            "succeeded",
            "{detail:#?}\n{}",
            deployment.dispatcher_log()
        );
    }

    let applies = units.log.applies();
    let order: Vec<(&str, u32)> = applies
        .iter()
        .map(|a| (a.unit.as_str(), a.version))
        .collect();
    assert_eq!(
        order,
        [("dev/app", 1), ("dev/app", 2)],
        "applies out of arrival order:\n{}",
        units.log.text()
    );
    units.log.assert_no_overlap_per_unit();
    deployment.assert_running();
}

fn a_newer_pull_request_run_cancels_what_the_older_has_not_started_and_completes(engine: Engine) {
    let (vhost, sandbox) = setup_on(engine);
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let chain: [(&str, &[&str], Behaviour); 3] = [
        ("dev/a", &[], quick),
        ("dev/b", &["dev/a"], quick),
        ("dev/c", &["dev/b"], quick),
    ];
    let c0 = units.readme_only();
    let c1 = units.commit("c1: a chain", 1, &chain);
    let c2 = units.commit("c2: the chain again", 2, &chain);
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    // No workers yet: the older run cannot get past its first job.
    let mut deployment = Deployment::start(sandbox.path(), &config, &[]);

    let older = submit(&sandbox, &vhost, (&c0, &c1), "pull-request", &["--pr", "7"]);
    poll_until(DEADLINE, "the older run's first job to be queued", || {
        status(&sandbox, older).filter(|detail| job(detail, "dev/a").state == "queued")
    });
    let newer = submit(&sandbox, &vhost, (&c0, &c2), "pull-request", &["--pr", "7"]);

    let cancelled = wait_final(&sandbox, older);
    let why = format!("superseded by run {newer}");
    assert_eq!(cancelled.run.state, "cancelled", "{cancelled:#?}");
    assert!(
        cancelled
            .run
            .reason
            .as_deref()
            .unwrap_or_default()
            .contains(&why),
        "{cancelled:#?}"
    );
    for job in &cancelled.jobs {
        assert_eq!(
            (job.state.as_str(), job.reason.as_deref()),
            ("cancelled", Some(why.as_str())),
            "{job:#?}"
        );
        assert_eq!(job.worker, None, "a cancelled job ran: {job:#?}");
    }

    // Pull requests are planned by plan workers.
    deployment.start_executor("dev:plan", "dev-plan-1");
    let completed = wait_final(&sandbox, newer);
    assert_eq!(completed.run.state, "succeeded", "{completed:#?}");
    assert!(
        completed
            .jobs
            .iter()
            .all(|j| j.state == "succeeded" && j.worker.as_deref() == Some("dev-plan-1"))
    );
    // The older run's first job was already on the queue: the worker asked, and was told no.
    let executor = deployment.executor_log("dev-plan-1");
    assert!(
        executor.contains("the job is already cancelled"),
        "{executor}"
    );
    assert!(
        units.log.applies().is_empty(),
        "a pull request applied something:\n{}",
        units.log.text()
    );
    deployment.assert_running();
}

fn a_dispatcher_killed_mid_run_takes_it_up_again_and_applies_each_unit_once_in_order(
    engine: Engine,
) {
    let (vhost, sandbox) = setup_on(engine);
    let units = Units::new(&sandbox);
    let second = Behaviour::Succeed { seconds: 1 };
    // Four layers across two accounts.
    let layout: [(&str, &[&str], Behaviour); 5] = [
        ("dev/net", &[], second),
        ("dev/db", &["dev/net"], second),
        ("prod/cache", &["dev/net"], second),
        ("prod/app", &["dev/db", "prod/cache"], second),
        ("dev/edge", &["prod/app"], second),
    ];
    let c0 = units.readme_only();
    let c1 = units.commit("c1: five units", 1, &layout);
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**"), ("prod", "prod/**")],
        "lease_seconds = 10\n",
    );
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2), ("prod", 2)]);

    // The waiting orchestrator follows the run across both crashes.
    let waiter = {
        let command = sandbox.pipelines_on_range(
            "orchestrate",
            &c0,
            &c1,
            "push",
            &["--repo-name", "infra", "--broker", &vhost.url, "--wait"],
        );
        std::thread::spawn(move || process::run(command, DEADLINE))
    };
    // Once with the first layer done and the second about to start; once in the middle of the
    // third layer, which only the restarted dispatcher can have started.
    for milestone in ["end dev/net", "start prod/app"] {
        poll_until(DEADLINE, milestone, || {
            units.log.text().contains(milestone).then_some(())
        });
        deployment.kill_dispatcher();
        // Work waits for the restarted dispatcher: the workers' reports and claims pile up in
        // the queues, or, when the kill came between a commit and its publish, the next jobs
        // wait in the database's outbox.
        poll_until(
            DEADLINE,
            "job events or claims in the queues, or jobs in the outbox",
            || {
                let depths: BTreeMap<String, u64> =
                    rabbit::queue_depths(&vhost).into_iter().collect();
                let waiting = ["pipelines.job-events", "pipelines.claims"]
                    .iter()
                    .map(|queue| depths.get(*queue).copied().unwrap_or(0))
                    .sum::<u64>();
                let unpublished = Store::connect_read_only(&sandbox.store_location())
                    .and_then(|store| store.outbox(10))
                    .map_or(0, |outbox| outbox.len());
                (waiting > 0 || unpublished > 0).then_some(())
            },
        );
        deployment.start_dispatcher();
    }
    let run = waiter.join().unwrap();
    assert_eq!(
        run.code(),
        Some(0),
        "{}\n{}",
        run.transcript(),
        deployment.dispatcher_log()
    );
    let rows = summary_rows(&run.stdout);
    for (unit, _, _) in &layout {
        assert_eq!(
            rows.get(*unit).map(|r| r.2.as_str()),
            Some("succeeded"),
            "{}",
            run.stdout
        );
    }

    let order: Vec<(&str, &[&str])> = layout.iter().map(|(u, d, _)| (*u, *d)).collect();
    units.log.assert_applied_once_in_order(&order);
    units.log.assert_no_overlap_per_unit();
    let log = deployment.dispatcher_log();
    assert_eq!(log.matches("Restored the active runs.").count(), 2, "{log}");
    deployment.assert_running();
}

#[test]
fn rejected_events_are_dead_lettered_and_reported_with_their_reasons() {
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    let repo = &sandbox.repo;
    repo.write("README.md", "# infrastructure\n");
    let c0 = repo.commit("c0: readme");
    repo.write("dev/app/main.tf", "output \"x\" {\n  value = 1\n}\n");
    repo.write("dev/app/pipelines.hcl", "");
    let c1 = repo.commit("c1: a dev unit");
    repo.write("staging/app/main.tf", "output \"x\" {\n  value = 1\n}\n");
    repo.write("staging/app/pipelines.hcl", "");
    let c2 = repo.commit("c2: a unit no account owns");
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[]);

    let mut expected = Vec::new();
    for (range, extra, reason) in [
        (
            (&c0, &c1),
            vec!["--repo-name", "other"],
            "unknown repository \"other\": it is not in the dispatcher's configuration",
        ),
        (
            (&c0, &c1),
            vec!["--branch", "feature"],
            "push to branch \"feature\" of \"infra\": only pushes to its deploy branch \"main\" may apply",
        ),
        (
            (&c1, &c2),
            vec![],
            "unit \"staging/app\" matches no account's paths",
        ),
    ] {
        let mut args = extra.clone();
        args.push("--wait");
        let mut command = sandbox.pipelines_on_range(
            "orchestrate",
            range.0,
            range.1,
            "push",
            &[&["--broker", vhost.url.as_str()][..], &args].concat(),
        );
        if !extra.contains(&"--repo-name") {
            command.args(["--repo-name", "infra"]);
        }
        let rejected = process::run(command, DEADLINE);
        assert_eq!(rejected.code(), Some(1), "{}", rejected.transcript());
        assert!(
            rejected.stdout.contains(&format!("rejected: {reason}")),
            "{}",
            rejected.transcript()
        );
        expected.push(reason.to_owned());
    }

    // A `..` path cannot come out of `orchestrate`: forge the event.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let escape = runtime.block_on(async {
        let broker = Broker::connect(&vhost.url, "forger").await.unwrap();
        let event = ChangeEvent {
            id: Uuid::new_v4(),
            repository: "infra".into(),
            trigger: Trigger::PullRequest {
                number: Some(1),
                base_branch: "main".into(),
                head_branch: "x".into(),
            },
            base_sha: c0.clone(),
            head_sha: c1.clone(),
            changes: vec![Change {
                kind: ChangeKind::UnitChanged,
                units: vec!["dev/../../etc".into()],
                files: vec![],
            }],
            dependencies: vec![],
        };
        let mut follower = broker.follow_run(event.id).await.unwrap();
        let body = event.encode();
        let id = event.id.to_string();
        broker
            .publish(Route::Changes, Outgoing::new(&body, &id, &Headers::new()))
            .await
            .unwrap();
        let delivery = tokio::time::timeout(DEADLINE, follower.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let status = RunStatus::decode(&delivery.body).unwrap();
        broker.close().await;
        status
    });
    let RunState::Rejected(reason) = &escape.state else {
        panic!("a path with .. was not rejected: {escape:#?}");
    };
    assert_eq!(
        reason,
        "path \"dev/../../etc\" is not normalized (contains . or ..)"
    );
    expected.push(reason.clone());

    // Every rejected event waits in the dead-letter queue with its reason.
    let reasons = runtime.block_on(async {
        let broker = Broker::connect(&vhost.url, "operator").await.unwrap();
        let mut dead = broker.consume("dead.pipelines.changes", 10).await.unwrap();
        let mut reasons = Vec::new();
        while reasons.len() < expected.len() {
            let delivery = tokio::time::timeout(DEADLINE, dead.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            reasons.push(
                delivery
                    .headers
                    .get(REASON_HEADER)
                    .cloned()
                    .unwrap_or_default(),
            );
            delivery.ack().await.unwrap();
        }
        broker.close().await;
        reasons
    });
    let expected_reasons: Vec<String> = expected.iter().map(|r| format!("rejected: {r}")).collect();
    assert_eq!(reasons, expected_reasons);

    // And `pipelines status` lists each as rejected, saying why.
    let runs: Vec<RunSummary> =
        serde_json::from_str(&status_json(&sandbox, None).unwrap()).unwrap();
    let mut listed: Vec<(String, String)> = runs
        .iter()
        .map(|r| (r.state.to_string(), r.reason.clone().unwrap_or_default()))
        .collect();
    listed.reverse();
    let wanted: Vec<(String, String)> = expected
        .iter()
        .map(|r| ("rejected".to_owned(), r.clone()))
        .collect();
    assert_eq!(listed, wanted);
    deployment.assert_running();
}

fn a_transient_failure_is_retried_after_its_backoff_and_status_shows_attempts_and_reasons(
    engine: Engine,
) {
    let (vhost, sandbox) = setup_on(engine);
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: a flaky, a broken and a dependent unit",
        1,
        &[
            ("dev/flaky", &[], Behaviour::FailOnceWithStateLock),
            ("dev/broken", &[], Behaviour::AlwaysFail),
            (
                "dev/after",
                &["dev/broken"],
                Behaviour::Succeed { seconds: 0 },
            ),
        ],
    );
    let config = sandbox.write_config(
        &vhost.url,
        &[("dev", "dev/**")],
        "\n[retry]\nbackoff_seconds = 1\n",
    );
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 2)]);

    let (run_status, _) = runs::follow_to_end(&sandbox, &vhost, (&c0, &c1), "push", 1);
    let detail = status(&sandbox, run_status.run_id).unwrap();

    let flaky = job(&detail, "dev/flaky");
    assert_eq!(
        (flaky.state.as_str(), flaky.attempt),
        ("succeeded", 2),
        "{detail:#?}"
    );
    let broken = job(&detail, "dev/broken");
    assert_eq!(
        (broken.state.as_str(), broken.attempt),
        ("failed", 1),
        "not retried: {detail:#?}"
    );
    let reason = broken.reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("exit code 1: Error: local-exec provisioner error"),
        "{reason}"
    );
    let after = job(&detail, "dev/after");
    assert_eq!(
        (after.state.as_str(), after.reason.as_deref()),
        ("skipped", Some("dev/broken apply failed"))
    );
    assert!(
        units.log.by_unit()["dev/flaky"].len() == 2,
        "{}",
        units.log.text()
    );

    // The text view has the same facts, one job per line.
    let id = run_status.run_id.to_string();
    let store = sandbox.store_args();
    let mut args = vec!["status", &id[..8]];
    args.extend(store.iter().map(String::as_str));
    let text = process::run(sandbox.pipelines(&args), Duration::from_secs(30));
    assert_eq!(text.code(), Some(0), "{}", text.transcript());
    let line = |unit: &str| {
        text.stdout
            .lines()
            .find(|l| l.starts_with(unit))
            .unwrap_or_else(|| panic!("{}", text.stdout))
            .to_owned()
    };
    assert!(
        line("dev/flaky").contains("succeeded  2"),
        "{}",
        text.stdout
    );
    assert!(
        line("dev/after").ends_with("dev/broken apply failed"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.starts_with(&format!("Run {id} (infra, push")),
        "{}",
        text.stdout
    );
    deployment.assert_running();
}

/// Sends `claim` as a worker does, on a reply queue of its own, and returns the answer.
async fn claim_and_answer(broker: &Broker, claim: &JobEvent) -> ClaimReply {
    let mut replies = broker.reply_queue().await.unwrap();
    let body = claim.encode();
    let headers = Headers::new();
    let message = Outgoing {
        reply_to: Some(replies.queue()),
        ..Outgoing::new(&body, "claim", &headers)
    };
    broker.publish(Route::JobEvents, message).await.unwrap();
    let answer = tokio::time::timeout(DEADLINE, replies.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    ClaimReply::decode(&answer.body).unwrap()
}

/// A worker's heartbeats keep its lease while the job runs past the lease's length: a second
/// worker asking for the job then is told to wait, and the job runs once.
#[test]
fn a_job_running_past_its_lease_keeps_it_by_heartbeats_and_no_other_worker_is_granted_it() {
    let (vhost, sandbox) = setup_on(Engine::Sqlite);
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    // Longer than the lease: without heartbeats the lease would run out mid-apply.
    let c1 = units.commit(
        "c1: one slow unit",
        1,
        &[("dev/app", &[], Behaviour::Succeed { seconds: 16 })],
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "lease_seconds = 10\n");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);

    let granted = poll_until(DEADLINE, "dev/app to be granted to a worker", || {
        let detail = status(&sandbox, run)?;
        let app = job(&detail, "dev/app");
        Some((app.job_id, app.attempt, app.started_ms?))
    });
    let (job_id, attempt, started_ms) = granted;
    // Past the lease the grant gave (10 s), with the job still running (16 s).
    let past_the_first_lease = started_ms + 12_000;
    poll_until(DEADLINE, "the first lease's end to pass", || {
        (dispatcher::clock::now_ms() >= past_the_first_lease).then_some(())
    });
    let reply = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let broker = Broker::connect(&vhost.url, "second-worker").await.unwrap();
        let claim = JobEvent {
            job_id,
            run_id: run,
            attempt,
            worker: "second-worker".into(),
            kind: JobEventKind::Started { redelivered: true },
        };
        let reply = claim_and_answer(&broker, &claim).await;
        broker.close().await;
        reply
    });
    match &reply.verdict {
        ClaimVerdict::Denied {
            reason,
            retry: true,
        } => assert!(reason.starts_with("running on dev-1"), "{reason}"),
        other => panic!("the lease was not kept by heartbeats: {other:?}"),
    }

    let detail = wait_final(&sandbox, run);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    assert_job(&detail, "dev/app", "succeeded", "dev-1", 1);
    let log = units.log.text();
    assert_eq!(units.log.by_unit()["dev/app"].len(), 1, "{log}");
    deployment.assert_running();
}

fn a_job_whose_worker_vanished_is_taken_over_once_the_lease_runs_out_and_runs_once(engine: Engine) {
    let (vhost, sandbox) = setup_on(engine);
    let units = Units::new(&sandbox);
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: one unit",
        1,
        &[("dev/app", &[], Behaviour::Succeed { seconds: 1 })],
    );
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "lease_seconds = 10\n");
    let mut deployment = Deployment::start(sandbox.path(), &config, &[]);
    let run = submit(&sandbox, &vhost, (&c0, &c1), "push", &[]);

    // A worker takes the job, is granted it, and vanishes without a word.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let broker = Broker::connect(&vhost.url, "vanishing-worker")
            .await
            .unwrap();
        let mut jobs = broker.consume("jobs.dev.apply", 1).await.unwrap();
        let delivery = tokio::time::timeout(DEADLINE, jobs.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let job = Job::decode(&delivery.body).unwrap();
        let claim = JobEvent {
            job_id: job.job_id,
            run_id: job.run_id,
            attempt: job.attempt,
            worker: "vanishing-worker".into(),
            kind: JobEventKind::Started { redelivered: false },
        };
        let reply = claim_and_answer(&broker, &claim).await;
        assert!(
            matches!(reply.verdict, ClaimVerdict::Granted { lease_secs: 10 }),
            "{reply:?}"
        );
        drop(delivery);
        broker.close().await;
    });
    let held = status(&sandbox, run).unwrap();
    assert_eq!(
        job(&held, "dev/app").worker.as_deref(),
        Some("vanishing-worker")
    );
    assert_eq!(job(&held, "dev/app").state, "running");

    deployment.start_executor("dev", "dev-1");
    let detail = wait_final(&sandbox, run);
    assert_eq!(detail.run.state, "succeeded", "{detail:#?}");
    assert_job(&detail, "dev/app", "succeeded", "dev-1", 1);
    // The redelivered job waited for the lease to run out rather than running beside a holder
    // that might still be alive.
    let executor = deployment.executor_log("dev-1");
    assert!(
        executor.contains("Job held by another worker; asking again."),
        "{executor}"
    );
    assert_eq!(
        units.log.by_unit()["dev/app"].len(),
        1,
        "{}",
        units.log.text()
    );
    deployment.assert_running();
}
