//! The reporter's GitHub edge: the few REST calls it makes, through octocrab (token or GitHub
//! App installation auth), with retries that honour rate limits and back off on 5xx.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use octocrab::Octocrab;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use crate::report::CommitStatus;

/// Attempts per call: the first and five retries.
const MAX_ATTEMPTS: u32 = 6;
/// How long one request may take unless configured (`timeouts.github`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for a rate limit to reset before giving up on the call.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, thiserror::Error)]
pub enum GitHubError {
    /// The configuration cannot make a client (a bad key or URL): fix it and restart.
    #[error("cannot set up the GitHub client: {0}")]
    Setup(String),
    /// The call failed after its retries (network, 5xx, a rate limit too long to wait for):
    /// trying again later may work.
    #[error("GitHub {what} failed: {reason}")]
    Call { what: String, reason: String },
    /// GitHub refused the call (a 4xx other than a rate limit: bad credentials, no permission,
    /// not found): the same call will be refused again, so it is not retried.
    #[error("GitHub refused {what}: HTTP {status}: {reason}")]
    Refused {
        what: String,
        status: u16,
        reason: String,
    },
}

impl GitHubError {
    /// Whether trying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, GitHubError::Call { .. })
    }
}

/// An authenticated client for one GitHub (or GitHub Enterprise) instance.
#[derive(Debug, Clone)]
pub struct GitHub {
    client: Octocrab,
    /// A GitHub App's own client (JWT), for `GET /app`; `None` with a token.
    app: Option<Octocrab>,
    api: String,
    /// The first wait after a 5xx; it doubles.
    backoff: Duration,
    /// How long one request may take (`timeouts.github`).
    timeout: Duration,
    /// Whose comments are ours: configured, or resolved once from the API.
    author: Arc<OnceCell<String>>,
}

impl GitHub {
    /// Must run inside the tokio runtime the client will be used on.
    pub fn from_config(config: &config::GitHub) -> Result<GitHub, GitHubError> {
        let setup = |err: octocrab::Error| GitHubError::Setup(err.to_string());
        let builder = Octocrab::builder()
            .base_uri(config.api_url.as_str())
            .map_err(setup)?;
        let mut app_client = None;
        let client = match (
            &config.token,
            config.app_id,
            &config.private_key_file,
            config.installation_id,
        ) {
            (Some(token), ..) => builder
                .personal_token(token.clone())
                .build()
                .map_err(setup)?,
            (None, Some(app_id), Some(key_file), Some(installation)) => {
                let pem = std::fs::read(key_file).map_err(|err| {
                    GitHubError::Setup(format!(
                        "cannot read the GitHub App key {}: {err}",
                        key_file.display()
                    ))
                })?;
                let app = builder
                    .app_from_rsa_pem(app_id.into(), pem)
                    .map_err(setup)?
                    .build()
                    .map_err(setup)?;
                app_client = Some(app.clone());
                app.installation(installation.into()).map_err(setup)?
            }
            _ => {
                return Err(GitHubError::Setup(
                    "no token and no GitHub App configured".into(),
                ));
            }
        };
        let author = match &config.comment_author {
            Some(login) => OnceCell::new_with(Some(login.clone())),
            None => OnceCell::new(),
        };
        Ok(GitHub {
            client,
            app: app_client,
            api: config.api_url.trim_end_matches('/').to_owned(),
            backoff: Duration::from_secs(1),
            timeout: DEFAULT_TIMEOUT,
            author: Arc::new(author),
        })
    }

    /// Each request may take at most `timeout` (then it counts as a network error: retried,
    /// and in the end reported).
    pub fn with_timeout(mut self, timeout: Duration) -> GitHub {
        self.timeout = timeout;
        self
    }

    /// The first pause after a failed attempt (default 1 s; it doubles).
    pub fn with_backoff(mut self, backoff: Duration) -> GitHub {
        self.backoff = backoff;
        self
    }

    /// The login that writes Pipelines' comments.
    pub async fn comment_author(&self) -> Result<String, GitHubError> {
        self.author
            .get_or_try_init(|| async {
                match &self.app {
                    // An App comments as its bot user.
                    Some(app) => {
                        let me = self
                            .call_on(app, Method::Get, "/app", None, "read the App")
                            .await?;
                        me["slug"]
                            .as_str()
                            .map(|slug| format!("{slug}[bot]"))
                            .ok_or_else(|| GitHubError::Call {
                                what: "read the App".into(),
                                reason: "no slug in the answer (set github.comment_author)".into(),
                            })
                    }
                    None => {
                        let me = self
                            .call(Method::Get, "/user", None, "read the token's user")
                            .await?;
                        me["login"]
                            .as_str()
                            .map(str::to_owned)
                            .ok_or_else(|| GitHubError::Call {
                                what: "read the token's user".into(),
                                reason: "no login in the answer (set github.comment_author)".into(),
                            })
                    }
                }
            })
            .await
            .cloned()
    }

    /// The web root for links (`https://github.com`, or the Enterprise host).
    pub fn web_url(&self) -> String {
        web_url_of(&self.api)
    }

    /// The id of the first comment of an issue or pull request whose body holds `marker` and
    /// whose author is [`Self::comment_author`]: anyone can write the marker.
    pub async fn find_comment(
        &self,
        repo: &str,
        number: u64,
        marker: &str,
    ) -> Result<Option<u64>, GitHubError> {
        let author = self.comment_author().await?;
        for page in 1.. {
            let path = format!("/repos/{repo}/issues/{number}/comments?per_page=100&page={page}");
            let comments = self.call(Method::Get, &path, None, "list comments").await?;
            let comments = comments.as_array().cloned().unwrap_or_default();
            let found = comments.iter().find(|c| {
                c["body"].as_str().is_some_and(|b| b.contains(marker))
                    && c["user"]["login"].as_str() == Some(author.as_str())
            });
            if let Some(comment) = found {
                return Ok(comment["id"].as_u64());
            }
            if comments.len() < 100 {
                break;
            }
        }
        Ok(None)
    }

    pub async fn create_comment(
        &self,
        repo: &str,
        number: u64,
        body: &str,
    ) -> Result<Option<u64>, GitHubError> {
        let path = format!("/repos/{repo}/issues/{number}/comments");
        let created = self
            .call(
                Method::Post,
                &path,
                Some(json!({ "body": body })),
                "create comment",
            )
            .await?;
        Ok(created["id"].as_u64())
    }

    pub async fn update_comment(&self, repo: &str, id: u64, body: &str) -> Result<(), GitHubError> {
        let path = format!("/repos/{repo}/issues/comments/{id}");
        self.call(
            Method::Patch,
            &path,
            Some(json!({ "body": body })),
            "update comment",
        )
        .await?;
        Ok(())
    }

    pub async fn set_status(
        &self,
        repo: &str,
        sha: &str,
        status: &CommitStatus,
        target_url: Option<&str>,
    ) -> Result<(), GitHubError> {
        let mut body = json!({
            "state": status.state.as_str(),
            "context": status.context,
            "description": status.description,
        });
        if let Some(url) = target_url {
            body["target_url"] = json!(url);
        }
        let path = format!("/repos/{repo}/statuses/{sha}");
        self.call(Method::Post, &path, Some(body), "set commit status")
            .await?;
        Ok(())
    }

    /// The pull requests a commit belongs to, merged ones first: `(number, merged)`.
    pub async fn pulls_for_commit(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<Vec<(u64, bool)>, GitHubError> {
        let path = format!("/repos/{repo}/commits/{sha}/pulls");
        let pulls = self
            .call(Method::Get, &path, None, "find the commit's pull requests")
            .await?;
        let mut found: Vec<(u64, bool)> = pulls
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|pull| Some((pull["number"].as_u64()?, !pull["merged_at"].is_null())))
            .collect();
        found.sort_by_key(|(_, merged)| !merged);
        Ok(found)
    }

    /// The open pull requests whose head is `sha`: their numbers.
    pub async fn open_pulls_headed_at(
        &self,
        repo: &str,
        sha: &str,
    ) -> Result<std::collections::BTreeSet<u64>, GitHubError> {
        let path = format!("/repos/{repo}/commits/{sha}/pulls");
        let pulls = self
            .call(Method::Get, &path, None, "find the commit's pull requests")
            .await?;
        Ok(pulls
            .as_array()
            .into_iter()
            .flatten()
            .filter(|pull| pull["state"] == "open" && pull["head"]["sha"] == sha)
            .filter_map(|pull| pull["number"].as_u64())
            .collect())
    }

    /// Opens an issue; its number.
    pub async fn create_issue(
        &self,
        repo: &str,
        title: &str,
        body: &str,
    ) -> Result<Option<u64>, GitHubError> {
        let path = format!("/repos/{repo}/issues");
        let created = self
            .call(
                Method::Post,
                &path,
                Some(json!({ "title": title, "body": body })),
                "open an issue",
            )
            .await?;
        Ok(created["number"].as_u64())
    }

    /// Opens a pull request of `head` into `base`; its number.
    pub async fn create_pull(
        &self,
        repo: &str,
        title: &str,
        head: &str,
        base: &str,
        body: &str,
    ) -> Result<Option<u64>, GitHubError> {
        let path = format!("/repos/{repo}/pulls");
        let created = self
            .call(
                Method::Post,
                &path,
                Some(json!({ "title": title, "head": head, "base": base, "body": body })),
                "open a pull request",
            )
            .await?;
        Ok(created["number"].as_u64())
    }

    /// Rewrites an issue's body, and opens or closes it.
    pub async fn update_issue(
        &self,
        repo: &str,
        number: u64,
        body: &str,
        open: bool,
    ) -> Result<(), GitHubError> {
        let path = format!("/repos/{repo}/issues/{number}");
        let state = if open { "open" } else { "closed" };
        self.call(
            Method::Patch,
            &path,
            Some(json!({ "body": body, "state": state })),
            "update an issue",
        )
        .await?;
        Ok(())
    }

    /// One call with retries: rate limits wait for their reset, 5xx and network errors back
    /// off; other errors are final.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, GitHubError> {
        self.call_on(&self.client, method, path, body, what).await
    }

    async fn call_on(
        &self,
        client: &Octocrab,
        method: Method,
        path: &str,
        body: Option<Value>,
        what: &str,
    ) -> Result<Value, GitHubError> {
        // Relative: octocrab joins it to the base URI (keeping a GitHub Enterprise `/api/v3`),
        // and sends installation tokens only with relative requests.
        let url = path;
        let failed = |reason: String| GitHubError::Call {
            what: what.to_owned(),
            reason,
        };
        let mut backoff = self.backoff;
        for attempt in 1..=MAX_ATTEMPTS {
            let sent = async {
                match method {
                    Method::Get => client._get(url).await,
                    Method::Post => client._post(url, body.as_ref()).await,
                    Method::Patch => client._patch(url, body.as_ref()).await,
                }
            };
            let sent = match tokio::time::timeout(self.timeout, sent).await {
                Ok(sent) => sent.map_err(|err| err.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms (timeouts.github)",
                    self.timeout.as_millis()
                )),
            };
            let response = match sent {
                Ok(response) => response,
                Err(err) if attempt < MAX_ATTEMPTS => {
                    tracing::warn!(%what, error = %err, attempt, "GitHub unreachable; retrying.");
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    continue;
                }
                Err(err) => return Err(failed(err)),
            };
            let status = response.status().as_u16();
            let wait = rate_limit_wait(status, response.headers(), SystemTime::now());
            let text = tokio::time::timeout(self.timeout, client.body_to_string(response))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default();
            if (200..300).contains(&status) {
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            if attempt == MAX_ATTEMPTS {
                return Err(failed(format!(
                    "HTTP {status} after {MAX_ATTEMPTS} attempts: {}",
                    snippet(&text)
                )));
            }
            if let Some(wait) = wait {
                if wait > MAX_RATE_LIMIT_WAIT {
                    return Err(failed(format!(
                        "rate limited for {} s more",
                        wait.as_secs()
                    )));
                }
                tracing::warn!(%what, wait_s = wait.as_secs(), "GitHub rate limit; waiting for the reset.");
                tokio::time::sleep(wait).await;
            } else if status >= 500 {
                tracing::warn!(%what, status, attempt, "GitHub server error; retrying.");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            } else {
                return Err(GitHubError::Refused {
                    what: what.to_owned(),
                    status,
                    reason: snippet(&text),
                });
            }
        }
        Err(failed("no attempt was made".into()))
    }
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Patch,
}

/// How long to wait before retrying a rate-limited response (403 or 429 with `retry-after`,
/// or with no requests left until `x-ratelimit-reset`); `None` when it is not one.
fn rate_limit_wait(status: u16, headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if status != 403 && status != 429 {
        return None;
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(seconds) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(seconds.max(1)));
    }
    if header("x-ratelimit-remaining") == Some("0") {
        let reset = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())?;
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // One second past the reset, so that the retry lands after it.
        return Some(Duration::from_secs(reset.saturating_sub(now) + 1));
    }
    None
}

fn snippet(text: &str) -> String {
    text.chars().take(300).collect()
}

/// The forge's web address for its API address: `https://github.com` for GitHub.com, the
/// host of a GitHub Enterprise Server's `https://host/api/v3`.
pub fn web_url_of(api: &str) -> String {
    let api = api.trim_end_matches('/');
    if api == "https://api.github.com" {
        "https://github.com".to_owned()
    } else {
        api.trim_end_matches("/api/v3").to_owned()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn rate_limits_are_read_from_retry_after_or_the_reset_time() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000);
        let mut headers = HeaderMap::new();
        assert_eq!(
            rate_limit_wait(403, &headers, now),
            None,
            "a plain 403 is a refusal"
        );
        headers.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("1030"));
        assert_eq!(
            rate_limit_wait(403, &headers, now),
            Some(Duration::from_secs(31))
        );
        assert_eq!(rate_limit_wait(500, &headers, now), None);
        let mut secondary = HeaderMap::new();
        secondary.insert("retry-after", HeaderValue::from_static("60"));
        assert_eq!(
            rate_limit_wait(429, &secondary, now),
            Some(Duration::from_secs(60))
        );
    }

    #[tokio::test]
    async fn a_github_that_never_answers_fails_each_call_at_its_deadline() {
        use wiremock::matchers::method;
        use wiremock::{Mock, MockServer, ResponseTemplate};
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(201).set_delay(Duration::from_secs(600)))
            .mount(&server)
            .await;
        let config = config::GitHub {
            api_url: server.uri(),
            token: Some("test-token".into()),
            app_id: None,
            private_key_file: None,
            installation_id: None,
            status_context: "pipelines".into(),
            details_url: None,
            open_issue_on_apply_failure: false,
            comment_author: None,
        };
        let github = GitHub::from_config(&config)
            .unwrap()
            .with_timeout(Duration::from_millis(200))
            .with_backoff(Duration::from_millis(1));
        let status = CommitStatus {
            context: "pipelines/plan".into(),
            state: crate::report::CommitState::Pending,
            description: "planning".into(),
        };
        let outer = Duration::from_secs(60);
        let failed = tokio::time::timeout(
            outer,
            github.set_status("acme/infra", &"a".repeat(40), &status, None),
        )
        .await
        .expect("the call ends by its own deadline")
        .unwrap_err()
        .to_string();
        assert_eq!(
            failed,
            "GitHub set commit status failed: no answer within 200 ms (timeouts.github)"
        );
        // Each attempt was made and abandoned: the reporter goes on with the next update.
        assert_eq!(
            server.received_requests().await.unwrap().len(),
            MAX_ATTEMPTS as usize
        );
    }
}
