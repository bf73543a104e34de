//! A GitHub stand-in (wiremock) for the dispatcher's reporter: it accepts the calls a report
//! makes for the repository `acme/infra` and keeps them, so that tests can read the comments
//! and commit statuses a run produced. GitHub is not reachable from the tests.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use wiremock::matchers::{method, path_regex};
use wiremock::{Mock, MockServer, ResponseTemplate};

/// A stand-in server and the runtime it runs on.
#[derive(Debug)]
pub struct StandIn {
    runtime: tokio::runtime::Runtime,
    pub server: MockServer,
}

/// What a run reported: every comment body posted or updated, and every commit status, in
/// order.
#[derive(Debug, Clone, Default)]
pub struct Reported {
    /// Pull requests opened (number 43).
    pub pulls: Vec<Value>,
    pub comments: Vec<String>,
    pub statuses: Vec<Value>,
    /// Issues opened (`POST`, number 42) and updated (`PATCH`), in order: `(verb, body)`.
    pub issues: Vec<(String, Value)>,
}

impl Reported {
    /// The last commit status of `context` (`pipelines/plan`, `pipelines/policy`, ...).
    pub fn last_status(&self, context: &str) -> Option<&Value> {
        self.statuses
            .iter()
            .rev()
            .find(|status| status["context"] == context)
    }
}

impl StandIn {
    /// Answers as GitHub would for pull request `pr` of `acme/infra`: the token's user, the
    /// pull request's comments (none at first; a new one gets id 77), commit statuses, and
    /// `pr` as the merged pull request of any commit (for reports on pushes).
    pub fn start(pr: u64) -> StandIn {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let server = runtime.block_on(MockServer::start());
        let comments = format!(r"^/repos/acme/infra/issues/{pr}/comments$");
        for (verb, route, status, body) in [
            ("GET", r"^/user$", 200, json!({ "login": "pipelines-bot" })),
            ("GET", comments.as_str(), 200, json!([])),
            ("POST", comments.as_str(), 201, json!({ "id": 77 })),
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
            (
                "POST",
                r"^/repos/acme/infra/issues$",
                201,
                json!({ "number": 42 }),
            ),
            (
                "POST",
                r"^/repos/acme/infra/pulls$",
                201,
                json!({ "number": 43 }),
            ),
            (
                "PATCH",
                r"^/repos/acme/infra/issues/42$",
                200,
                json!({ "number": 42 }),
            ),
            (
                "GET",
                r"^/repos/acme/infra/commits/[0-9a-f]{40}/pulls$",
                200,
                json!([{ "number": pr, "merged_at": "2026-12-01T00:00:00Z" }]),
            ),
        ] {
            let mock = Mock::given(method(verb))
                .and(path_regex(route))
                .respond_with(ResponseTemplate::new(status).set_body_json(body));
            runtime.block_on(mock.mount(&server));
        }
        StandIn { runtime, server }
    }

    /// The `[github]` section pointing the dispatcher here.
    pub fn config_section(&self) -> String {
        format!(
            "\n[github]\napi_url = \"{}\"\ntoken = \"test-token\"\n",
            self.server.uri()
        )
    }

    /// Makes the repository of the sandbox's config (`deploy_branch = "main"`) known to GitHub
    /// as `acme/infra`.
    pub fn name_repository(config: &Path) {
        let text = std::fs::read_to_string(config).unwrap().replace(
            "deploy_branch = \"main\"",
            "deploy_branch = \"main\"\ngithub = \"acme/infra\"",
        );
        std::fs::write(config, text).unwrap();
    }

    /// Adds an answer (give it a priority below 5 to take precedence over the stand-in's).
    pub fn mount(&self, mock: Mock) {
        self.runtime.block_on(mock.mount(&self.server));
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<wiremock::Request> {
        self.runtime
            .block_on(self.server.received_requests())
            .unwrap_or_default()
    }

    /// What has been reported so far.
    pub fn reported(&self) -> Reported {
        let requests = self.requests();
        let bodies = |verb: &str, needle: &str| -> Vec<Value> {
            requests
                .iter()
                .filter(|r| r.method.as_str() == verb && r.url.path().contains(needle))
                .map(|r| serde_json::from_slice(&r.body).unwrap())
                .collect()
        };
        // In the order they arrived: a comment is created once, then updated in place.
        let comments = requests
            .iter()
            .filter(|r| {
                matches!(r.method.as_str(), "POST" | "PATCH") && r.url.path().contains("/comments")
            })
            .map(|r| {
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                body["body"].as_str().unwrap_or_default().to_owned()
            })
            .collect();
        let issues = requests
            .iter()
            .filter(|r| {
                matches!(r.method.as_str(), "POST" | "PATCH")
                    && r.url.path().contains("/issues")
                    && !r.url.path().contains("/comments")
            })
            .map(|r| {
                (
                    r.method.as_str().to_owned(),
                    serde_json::from_slice(&r.body).unwrap(),
                )
            })
            .collect();
        Reported {
            pulls: bodies("POST", "/pulls"),
            comments,
            statuses: bodies("POST", "/statuses/"),
            issues,
        }
    }

    /// Polls until `done` holds for what was reported (the reporter coalesces updates, so the
    /// final report follows a run's end by a moment).
    pub fn wait_for(&self, what: &str, done: impl Fn(&Reported) -> bool) -> Reported {
        crate::poll_until(Duration::from_secs(60), what, || {
            let reported = self.reported();
            done(&reported).then_some(reported)
        })
    }
}
