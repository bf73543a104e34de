//! The dispatcher process reports a pull request's run to a fake GitHub (wiremock): one living
//! comment with the final table, and a commit status that concludes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::github::StandIn;
use harness::runs::setup;
use serde_json::json;
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[test]
fn a_pull_request_run_gets_one_living_comment_and_a_concluded_status() {
    let (vhost, sandbox) = setup();
    let github = StandIn::start(7);
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: two units",
        1,
        &[("dev/net", &[], quick), ("dev/app", &["dev/net"], quick)],
    );
    let accounts = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\n";
    let config = sandbox.write_config_with(&vhost.url, accounts, &github.config_section());
    StandIn::name_repository(&config);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);

    let (status, _) = follow_to_end_pr(&sandbox, &vhost, (&c0, &c1));
    let run_id = status.run_id.to_string();
    let reported = github.wait_for("the final report", |reported| {
        reported
            .comments
            .last()
            .is_some_and(|body| body.contains("### ✅ Pipelines: plan succeeded"))
            && reported.statuses.iter().any(|s| s["state"] == "success")
    });
    let body = reported.comments.last().unwrap();
    assert!(body.starts_with("<!-- pipelines:report -->"), "{body}");
    assert!(
        body.contains(&run_id) && body.contains("| `dev/net` | plan | ✅ succeeded"),
        "{body}"
    );
    assert!(body.contains("<code>dev/app</code> plan"), "{body}");
    let requests = github.requests();
    let created = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/comments"))
        .count();
    assert_eq!(created, 1, "one comment, updated in place");
    assert!(
        reported
            .statuses
            .iter()
            .all(|s| s["context"] == "pipelines/plan"),
        "{:?}",
        reported.statuses
    );
    assert!(requests.iter().all(|r| {
        r.headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap().contains("test-token"))
    }));
    deployment.assert_running();
}

fn follow_to_end_pr(
    sandbox: &harness::sandbox::Sandbox,
    vhost: &harness::rabbit::Vhost,
    range: (&str, &str),
) -> (proto_types::RunStatus, harness::process::Finished) {
    let run = harness::runs::orchestrate(
        sandbox,
        vhost,
        range,
        "pull-request",
        &["--pr", "7", "--wait", "--format", "json"],
    );
    assert_eq!(run.code(), Some(0), "{}", run.transcript());
    (serde_json::from_str(&run.stdout).unwrap(), run)
}

#[test]
fn a_github_app_authenticates_with_its_jwt_then_calls_with_the_installation_token() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("app.pem");
    harness::oidc::new_rsa_key(&key);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let github = runtime.block_on(MockServer::start());
    let token = json!({ "token": "ghs_installation", "expires_at": "2099-01-01T00:00:00Z", "permissions": {} });
    let mocks = [
        Mock::given(method("POST"))
            .and(path_regex("^/app/installations/99/access_tokens$"))
            .respond_with(ResponseTemplate::new(201).set_body_json(token))
            .expect(1),
        Mock::given(method("POST"))
            .and(path_regex("^/repos/acme/infra/statuses/"))
            .and(wiremock::matchers::header(
                "authorization",
                "Bearer ghs_installation",
            ))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({})))
            .expect(2),
    ];
    for mock in mocks {
        runtime.block_on(mock.mount(&github));
    }
    let settings = config::GitHub {
        api_url: github.uri(),
        token: None,
        app_id: Some(1),
        private_key_file: Some(key),
        installation_id: Some(99),
        status_context: "pipelines".into(),
        details_url: None,
        open_issue_on_apply_failure: false,
        comment_author: None,
    };
    // octocrab's client needs the runtime it will run on.
    let _inside = runtime.enter();
    let client = dispatcher::github::GitHub::from_config(&settings).unwrap();
    let status = dispatcher::report::CommitStatus {
        context: "pipelines/plan".into(),
        state: dispatcher::report::CommitState::Success,
        description: "2 unit(s) planned".into(),
    };
    for _ in 0..2 {
        runtime
            .block_on(client.set_status("acme/infra", &"b".repeat(40), &status, None))
            .unwrap();
    }
    let requests = runtime.block_on(github.received_requests()).unwrap();
    let jwt = requests[0]
        .headers
        .get("authorization")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        jwt.starts_with("Bearer ey"),
        "the token request is signed with the App's JWT: {jwt}"
    );
    runtime.block_on(github.verify());
}

/// `orchestrate --pr NUMBER --wait --format json` with `token` as `PIPELINES_ID_TOKEN`.
fn orchestrate_pr(
    sandbox: &harness::sandbox::Sandbox,
    vhost: &harness::rabbit::Vhost,
    range: (&str, &str),
    number: &str,
    token: Option<&str>,
) -> harness::process::Finished {
    let args = [
        "--repo-name",
        "infra",
        "--broker",
        vhost.url.as_str(),
        "--pr",
        number,
        "--wait",
        "--format",
        "json",
    ];
    let mut command =
        sandbox.pipelines_on_range("orchestrate", range.0, range.1, "pull-request", &args);
    if let Some(token) = token {
        command.env("PIPELINES_ID_TOKEN", token);
    }
    harness::process::run(command, std::time::Duration::from_secs(120))
}

/// With `[dispatcher.oidc]`, a pull request's run starts only with a token of that pull
/// request's own workflow run: the CI of pull request 8 (which holds the same orchestrator
/// login) cannot submit a run as pull request 7, nor can a CI job without a token. Refused
/// events end `--wait` with the reason and report nothing to GitHub. Pull request 8's own run
/// naming pull request 7's head writes no status there (GitHub says 7 is open with that head,
/// not 8). The real one runs and is reported on pull request 7.
#[test]
fn with_oidc_a_pull_requests_ci_cannot_submit_runs_for_another() {
    let (vhost, sandbox) = setup();
    let github = StandIn::start(7);
    let issuer = harness::oidc::Issuer::start();
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    let c1 = units.commit("c1: one unit", 1, &[("dev/app", &[], quick)]);
    // GitHub: pull request 7 is open with c1 as its head.
    github.mount(
        Mock::given(method("GET"))
            .and(wiremock::matchers::path(format!(
                "/repos/acme/infra/commits/{c1}/pulls"
            )))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                { "number": 7, "state": "open", "merged_at": null, "head": { "sha": c1 } }
            ])))
            .with_priority(1),
    );
    let accounts = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\n";
    let extra = format!(
        "deploy_orchestrator_users = [\"pipelines-deploy\"]\n{}{}",
        github.config_section(),
        issuer.config_section()
    );
    let config = sandbox.write_config_with(&vhost.url, accounts, &extra);
    StandIn::name_repository(&config);
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);

    let of_pr_8 = issuer.token("acme/infra", "pull_request", "refs/pull/8/merge");
    for (token, reason) in [
        (
            Some(of_pr_8.as_str()),
            "pull request #7's identity token is of the workflow run of \\\"refs/pull/8/merge\\\", not of \\\"refs/pull/7/merge\\\"",
        ),
        (None, "pull request #7's event carries no identity token"),
    ] {
        let refused = orchestrate_pr(&sandbox, &vhost, (&c0, &c1), "7", token);
        assert_eq!(refused.code(), Some(1), "{}", refused.transcript());
        assert!(refused.stdout.contains(reason), "{}", refused.transcript());
    }

    // Pull request 8's own run, naming pull request 7's head: it runs, and once the reporter
    // has turned to its comment (after the statuses), no status was written.
    let own_8 = orchestrate_pr(&sandbox, &vhost, (&c0, &c1), "8", Some(&of_pr_8));
    assert_eq!(own_8.code(), Some(0), "{}", own_8.transcript());
    harness::poll_until(
        std::time::Duration::from_secs(60),
        "pull request 8's report",
        || {
            github
                .requests()
                .iter()
                .any(|r| r.url.path() == "/repos/acme/infra/issues/8/comments")
                .then_some(())
        },
    );
    assert!(
        github.reported().statuses.is_empty(),
        "{:?}",
        github.reported().statuses
    );

    let own = issuer.token("acme/infra", "pull_request", "refs/pull/7/merge");
    let accepted = orchestrate_pr(&sandbox, &vhost, (&c0, &c1), "7", Some(&own));
    assert_eq!(accepted.code(), Some(0), "{}", accepted.transcript());
    let status: proto_types::RunStatus = serde_json::from_str(&accepted.stdout).unwrap();
    let run_id = status.run_id.to_string();
    let reported = github.wait_for("the accepted run's final report", |reported| {
        reported
            .comments
            .last()
            .is_some_and(|body| body.contains("### ✅ Pipelines: plan succeeded"))
            && reported.statuses.iter().any(|s| s["state"] == "success")
    });
    // Only pull request 7's run was reported: its comment, and no failure on the commit.
    assert!(
        reported.comments.iter().all(|body| body.contains(&run_id)),
        "{:?}",
        reported.comments
    );
    assert!(
        reported
            .statuses
            .iter()
            .all(|s| s["state"] == "pending" || s["state"] == "success"),
        "{:?}",
        reported.statuses
    );
    // Read once for the first token; the next ones named the same key.
    assert_eq!(issuer.key_reads(), 1);
    deployment.assert_running();
}
