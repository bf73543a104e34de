//! The dispatcher process reports a pull request's run to a fake GitHub (wiremock): one living
//! comment with the final table, and a commit status that concludes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test code: fail loudly.

use std::time::Duration;

use harness::applies::{Behaviour, Units};
use harness::deployment::Deployment;
use harness::poll_until;
use harness::runs::setup;
use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

#[test]
fn a_pull_request_run_gets_one_living_comment_and_a_concluded_status() {
    let (vhost, sandbox) = setup();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let github = runtime.block_on(MockServer::start());
    for (verb, route, status, body) in [
        (
            "GET",
            r"^/repos/acme/infra/issues/7/comments$",
            200,
            json!([]),
        ),
        (
            "POST",
            r"^/repos/acme/infra/issues/7/comments$",
            201,
            json!({ "id": 77 }),
        ),
        (
            "PATCH",
            r"^/repos/acme/infra/issues/comments/77$",
            200,
            json!({}),
        ),
        (
            "POST",
            r"^/repos/acme/infra/statuses/[0-9a-f]{40}$",
            201,
            json!({}),
        ),
    ] {
        let mock = Mock::given(method(verb))
            .and(path_regex(route))
            .respond_with(ResponseTemplate::new(status).set_body_json(body));
        runtime.block_on(mock.mount(&github));
    }
    let units = Units::new(&sandbox);
    let quick = Behaviour::Succeed { seconds: 0 };
    let c0 = units.readme_only();
    let c1 = units.commit(
        "c1: two units",
        1,
        &[("dev/net", &[], quick), ("dev/app", &["dev/net"], quick)],
    );
    let accounts = "[[accounts]]\nname = \"dev\"\npaths = [\"dev/**\"]\n";
    let extra = format!(
        "\n[github]\napi_url = \"{}\"\ntoken = \"test-token\"\n",
        github.uri()
    );
    let config = sandbox.write_config_with(&vhost.url, accounts, &extra);
    // The repository is known to GitHub as acme/infra.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "deploy_branch = \"main\"",
        "deploy_branch = \"main\"\ngithub = \"acme/infra\"",
    );
    std::fs::write(&config, text).unwrap();
    let mut deployment = Deployment::start(sandbox.path(), &config, &[("dev", 1)]);

    let (status, _) = follow_to_end_pr(&sandbox, &vhost, (&c0, &c1));
    let run_id = status.run_id.to_string();
    // The final report follows the run's end within the coalescing window.
    let (comment, statuses) = poll_until(Duration::from_secs(60), "the final report", || {
        let requests = runtime
            .block_on(github.received_requests())
            .unwrap_or_default();
        let bodies = |verb: &str, needle: &str| -> Vec<Value> {
            requests
                .iter()
                .filter(|r| r.method.as_str() == verb && r.url.path().contains(needle))
                .map(|r| serde_json::from_slice(&r.body).unwrap())
                .collect()
        };
        let mut comments = bodies("POST", "/comments");
        comments.extend(bodies("PATCH", "/comments"));
        let last = comments.last()?.clone();
        let statuses = bodies("POST", "/statuses/");
        let done = last["body"].as_str()?.contains("plan succeeded")
            && statuses.iter().any(|s| s["state"] == "success");
        done.then_some((last, statuses))
    });
    let body = comment["body"].as_str().unwrap();
    assert!(body.starts_with("<!-- pipelines:report -->"), "{body}");
    assert!(
        body.contains(&run_id) && body.contains("| `dev/net` | plan | ✅ succeeded"),
        "{body}"
    );
    assert!(body.contains("<code>dev/app</code> plan"), "{body}");
    let requests = runtime.block_on(github.received_requests()).unwrap();
    let created = requests
        .iter()
        .filter(|r| r.method.as_str() == "POST" && r.url.path().ends_with("/comments"))
        .count();
    assert_eq!(created, 1, "one comment, updated in place");
    assert!(
        statuses.iter().all(|s| s["context"] == "pipelines/plan"),
        "{statuses:?}"
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
