//! `[github]`: reporting runs to pull requests and commit statuses.

use std::path::PathBuf;

use serde::Deserialize;

use crate::repositories::is_plain_name;
use crate::{Config, ConfigError, REDACTED, invalid, redact_url};

/// How the dispatcher reports to GitHub.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitHub {
    /// The REST API root: `https://api.github.com`, or `https://HOST/api/v3` for GitHub
    /// Enterprise Server.
    #[serde(default = "default_github_api")]
    pub api_url: String,
    /// A token (fine-grained: pull requests, issues and commit statuses, read and write).
    /// Prefer `PIPELINES_GITHUB__TOKEN` over writing it here.
    #[serde(default)]
    pub token: Option<String>,
    /// A GitHub App instead of a token: its id, its private key (PEM) and the installation on
    /// the repositories' owner.
    #[serde(default)]
    pub app_id: Option<u64>,
    #[serde(default)]
    pub private_key_file: Option<PathBuf>,
    #[serde(default)]
    pub installation_id: Option<u64>,
    /// The commit status name; branch protection can require `<context>/plan` and
    /// `<context>/apply`.
    #[serde(default = "default_status_context")]
    pub status_context: String,
    /// A link for the status and the comment, with `{run_id}` replaced (a dashboard, a trace
    /// search). Default: none.
    #[serde(default)]
    pub details_url: Option<String>,
    /// Also open an issue when an apply on the deploy branch fails.
    #[serde(default)]
    pub open_issue_on_apply_failure: bool,
    /// The login whose comments are Pipelines' own: the living comment is the one holding the
    /// marker *and* written by this user, so a collaborator's comment that copies the marker
    /// is ignored. Default: the token's user (`GET /user`), or the App's bot (`<slug>[bot]`).
    #[serde(default)]
    pub comment_author: Option<String>,
}

impl std::fmt::Debug for GitHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitHub")
            .field("api_url", &redact_url(&self.api_url))
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("app_id", &self.app_id)
            .field("private_key_file", &self.private_key_file)
            .field("installation_id", &self.installation_id)
            .field("status_context", &self.status_context)
            .field("details_url", &self.details_url)
            .field(
                "open_issue_on_apply_failure",
                &self.open_issue_on_apply_failure,
            )
            .field("comment_author", &self.comment_author)
            .finish()
    }
}

fn default_github_api() -> String {
    "https://api.github.com".to_owned()
}

fn default_status_context() -> String {
    "pipelines".to_owned()
}

impl Config {
    pub(crate) fn validate_github(&self) -> Result<(), ConfigError> {
        for (i, repo) in self.repositories.iter().enumerate() {
            if let Some(full) = &repo.github {
                let valid = full.split_once('/').is_some_and(|(owner, name)| {
                    !owner.is_empty()
                        && !name.is_empty()
                        && !name.contains('/')
                        && is_plain_name(owner)
                        && is_plain_name(name)
                });
                if !valid {
                    return Err(invalid(
                        format!("repositories[{i}].github"),
                        format!("{full:?} is not owner/name"),
                    ));
                }
            }
        }
        let Some(github) = &self.github else {
            return Ok(());
        };
        if !(github.api_url.starts_with("https://") || github.api_url.starts_with("http://")) {
            return Err(invalid(
                "github.api_url",
                format!("{:?} is not an http(s) URL", github.api_url),
            ));
        }
        let app = [
            github.app_id.is_some(),
            github.private_key_file.is_some(),
            github.installation_id.is_some(),
        ];
        match (github.token.is_some(), app) {
            (true, [false, false, false]) | (false, [true, true, true]) => {}
            (true, _) => {
                return Err(invalid(
                    "github.token",
                    "give a token or a GitHub App (app_id, private_key_file, installation_id), not both",
                ));
            }
            (false, [false, false, false]) => {
                return Err(invalid(
                    "github.token",
                    "reporting needs a token (PIPELINES_GITHUB__TOKEN) or a GitHub App",
                ));
            }
            (false, _) => {
                return Err(invalid(
                    "github.app_id",
                    "a GitHub App needs app_id, private_key_file and installation_id",
                ));
            }
        }
        if github.status_context.is_empty() {
            return Err(invalid("github.status_context", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{VALID, error_of};

    #[test]
    fn github_reporting_needs_one_way_to_authenticate_and_owner_name_repositories() {
        let with = |github: &str| {
            let text = VALID.replace(
                "name = \"infra\"",
                "name = \"infra\"\ngithub = \"acme/infra\"",
            );
            format!("{text}\n[github]\n{github}\n")
        };
        let config = Config::from_toml(&with("token = \"ghp_x\"")).unwrap();
        let github = config.github.as_ref().unwrap();
        assert_eq!(
            (github.api_url.as_str(), github.status_context.as_str()),
            ("https://api.github.com", "pipelines")
        );
        assert_eq!(config.repositories[0].github.as_deref(), Some("acme/infra"));
        let app = "app_id = 1\nprivate_key_file = \"/k.pem\"\ninstallation_id = 2";
        assert!(Config::from_toml(&with(app)).is_ok());
        assert!(error_of(&with("")).contains("`github.token`: reporting needs a token"));
        assert!(error_of(&with(&format!("token = \"x\"\n{app}"))).contains("not both"));
        assert!(error_of(&with("app_id = 1")).contains("`github.app_id`"));
        let bad_repo = with("token = \"x\"").replace("acme/infra", "acme");
        assert!(
            error_of(&bad_repo).contains("`repositories[0].github`: \"acme\" is not owner/name")
        );
    }
}
