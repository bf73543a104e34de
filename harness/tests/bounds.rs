//! Deadlines and limits at the edges, on the real deployment: a git server that never answers
//! fails the job with the deadline named while the worker goes on, and an event too big to run
//! is rejected with the limit named.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use broker::{Broker, Headers, Outgoing, Route};
use harness::deployment::Deployment;
use harness::rabbit;
use harness::runs::{setup, submit, wait_final};
use harness::sandbox::Sandbox;
use proto_types::{Change, ChangeEvent, ChangeKind, Payload, Trigger};
use uuid::Uuid;

/// A repository of one unit whose configured URL is a git server that never answers (it
/// accepts connections, as the kernel does, and never says a word), and a deployment of one
/// worker per role. `timeouts` and `job_timeout` go into the policy.
struct HungGit {
    deployment: Deployment,
    sandbox: Sandbox,
    vhost: harness::rabbit::Vhost,
    commits: (String, String),
    _silent: std::net::TcpListener,
}

fn hung_git(timeouts: &str, job_timeout: &str) -> HungGit {
    let (vhost, sandbox) = setup();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "git://127.0.0.1:{}/infra",
        silent.local_addr().unwrap().port()
    );
    let repo = &sandbox.repo;
    repo.write("README.md", "# infrastructure\n");
    let c0 = repo.commit("c0: readme");
    repo.write(
        "dev/app/main.tf",
        "output \"value\" {\n  value = \"one\"\n}\n",
    );
    repo.write("dev/app/pipelines.hcl", "dependencies = []\n");
    let c1 = repo.commit("c1: dev/app");
    let accounts = format!(
        "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\njob_timeout = \"{job_timeout}\"\n"
    );
    let config = sandbox.write_config_with(
        &vhost.url,
        &accounts,
        &format!("\n[timeouts]\n{timeouts}\n"),
    );
    // The executors fetch from the configured URL: the silent server.
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        &format!("url = \"{}\"", repo.path().display()),
        &format!("url = \"{url}\""),
        1,
    );
    assert!(text.contains(&url), "{text}");
    std::fs::write(&config, text).unwrap();
    let deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);
    HungGit {
        deployment,
        sandbox,
        vhost,
        commits: (c0, c1),
        _silent: silent,
    }
}

#[test]
fn a_git_server_that_never_answers_fails_the_job_at_the_git_deadline_and_the_worker_goes_on() {
    let mut world = hung_git("git = \"2s\"", "4h");
    let (sandbox, vhost) = (&world.sandbox, &world.vhost);
    let (c0, c1) = (&world.commits.0, &world.commits.1);

    for (event, worker) in [("pull-request", "dev-plan-1"), ("push", "dev-1")] {
        let mut extra = vec![];
        if event == "pull-request" {
            extra = vec!["--pr", "5"];
        }
        let run = submit(sandbox, vhost, (c0, c1), event, &extra);
        let detail = wait_final(sandbox, run);
        let job = &detail.jobs[0];
        let reason = job.reason.clone().unwrap_or_default();
        assert_eq!(
            (job.state.as_str(), job.worker.as_deref()),
            ("failed", Some(worker)),
            "{detail:#?}"
        );
        let step = if event == "push" {
            "cannot verify the commit: `git ls-remote"
        } else {
            "checkout failed: `git fetch"
        };
        assert!(reason.contains(step), "{event}: {reason}");
        // The whole message is in the job's log (the status keeps the end of a reason short).
        let log = job.log.as_deref().unwrap_or_default();
        let (_, path) = log
            .split_once(':')
            .unwrap_or_else(|| panic!("no log: {job:#?}"));
        let text = std::fs::read_to_string(path).unwrap();
        assert!(
            text.contains("did not finish within 2 s (timeouts.git) and was stopped"),
            "{event}: {text}"
        );
    }
    // Both workers are still there, and took the second job after the first failed.
    world.deployment.assert_running();
}

#[test]
fn a_job_timeout_stops_a_job_stuck_in_its_checkout() {
    // git alone would wait ten minutes; the job may take three seconds in all.
    let mut world = hung_git("git = \"10m\"", "3s");
    let (sandbox, vhost) = (&world.sandbox, &world.vhost);
    let (c0, c1) = (&world.commits.0, &world.commits.1);
    let run = submit(sandbox, vhost, (c0, c1), "pull-request", &["--pr", "6"]);
    let detail = wait_final(sandbox, run);
    let job = &detail.jobs[0];
    assert_eq!(job.state, "failed", "{detail:#?}");
    assert!(
        job.reason
            .as_deref()
            .unwrap_or_default()
            .contains("the job timed out after 3 s and was stopped"),
        "{job:#?}"
    );
    world.deployment.assert_running();
}

#[test]
fn an_event_of_twenty_thousand_units_is_rejected_naming_the_limit() {
    let vhost = rabbit::vhost();
    let sandbox = Sandbox::new();
    sandbox.repo.write("README.md", "# infrastructure\n");
    sandbox.repo.commit("c0: readme");
    let config = sandbox.write_config(&vhost.url, &[("dev", "dev/**")], "");
    let deployment = Deployment::start(sandbox.path(), &config, &[]);
    let units: Vec<String> = (0..20_000).map(|i| format!("dev/unit-{i:05}")).collect();
    let event = ChangeEvent {
        id: Uuid::new_v4(),
        repository: "infra".into(),
        trigger: Trigger::PullRequest {
            number: Some(20_000),
            base_branch: "main".into(),
            head_branch: "huge".into(),
        },
        base_sha: "a".repeat(40),
        head_sha: "b".repeat(40),
        changes: vec![Change {
            kind: ChangeKind::UnitChanged,
            units,
            files: vec![],
        }],
        dependencies: vec![],
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let broker = runtime
        .block_on(Broker::connect(&vhost.url, "huge-event"))
        .unwrap();
    let body = event.encode();
    let headers = Headers::new();
    runtime
        .block_on(broker.publish(Route::Changes, Outgoing::new(&body, "huge", &headers)))
        .unwrap();
    let detail = wait_final(&sandbox, event.id);
    assert_eq!(detail.run.state, "rejected", "{:#?}", detail.run);
    assert_eq!(
        detail.run.reason.as_deref(),
        Some(
            "the event names 20000 units, more than dispatcher.max_units_per_run (5000): split \
             the change, or raise the limit"
        )
    );
    assert!(detail.jobs.is_empty());
    drop(deployment);
}
