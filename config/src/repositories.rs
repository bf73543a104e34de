//! `[[repositories]]`: the only repositories the pipeline acts on, and where they are cloned from.

use std::collections::HashSet;

use serde::Deserialize;

use crate::{ConfigError, invalid, redact_url};

/// A repository the pipeline may act on.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// The name change events use (`--repo-name`).
    pub name: String,
    /// The canonical clone URL executors fetch from (any URL or path `git fetch` accepts).
    pub url: String,
    /// Pushes to this branch apply; nothing else may.
    #[serde(default = "default_deploy_branch")]
    pub deploy_branch: String,
    /// The `terraform` or `tofu` binary for this repository's plain units (a name on PATH or
    /// a path). Default: `executor.tf_binary`.
    #[serde(default)]
    pub tf_binary: Option<String>,
    /// The `terragrunt` binary for this repository's Terragrunt units. Default: `terragrunt`.
    #[serde(default)]
    pub terragrunt_binary: Option<String>,
    /// `owner/name` on GitHub, for reporting (see `[github]`). Default: not reported.
    #[serde(default)]
    pub github: Option<String>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("name", &self.name)
            .field("url", &redact_url(&self.url))
            .field("deploy_branch", &self.deploy_branch)
            .field("tf_binary", &self.tf_binary)
            .field("terragrunt_binary", &self.terragrunt_binary)
            .field("github", &self.github)
            .finish()
    }
}

fn default_deploy_branch() -> String {
    "main".to_owned()
}

pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

/// A conservative subset of git's ref-name rules.
fn is_branch_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(['-', '/'])
        && !name.ends_with(['/', '.'])
        && !name.contains("..")
        && !name.contains("//")
        && !name.contains("@{")
        && name.chars().all(|c| {
            !c.is_control() && !matches!(c, ' ' | '~' | '^' | ':' | '?' | '*' | '[' | '\\')
        })
}

/// At least one repository; unique plain names, a URL and a valid deploy branch each.
pub(crate) fn validate(repositories: &[Repository]) -> Result<(), ConfigError> {
    if repositories.is_empty() {
        return Err(invalid(
            "repositories",
            "at least one [[repositories]] entry is needed",
        ));
    }
    let mut names = HashSet::new();
    for (i, repo) in repositories.iter().enumerate() {
        let key = |field: &str| format!("repositories[{i}].{field}");
        if !is_plain_name(&repo.name) {
            return Err(invalid(
                key("name"),
                format!(
                    "{:?} must be non-empty letters, digits, '-', '_', '.' or '/'",
                    repo.name
                ),
            ));
        }
        if !names.insert(repo.name.as_str()) {
            return Err(invalid(
                key("name"),
                format!("{:?} is listed twice", repo.name),
            ));
        }
        if repo.url.trim().is_empty() {
            return Err(invalid(key("url"), "must not be empty"));
        }
        if !is_branch_name(&repo.deploy_branch) {
            return Err(invalid(
                key("deploy_branch"),
                format!("{:?} is not a valid branch name", repo.deploy_branch),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(name: &str, branch: &str) -> Repository {
        Repository {
            name: name.into(),
            url: "/srv/infra.git".into(),
            deploy_branch: branch.into(),
            tf_binary: None,
            terragrunt_binary: None,
            github: None,
        }
    }

    #[test]
    fn repositories_need_unique_plain_names_and_valid_branches() {
        let err = |repositories: &[Repository]| validate(repositories).unwrap_err().to_string();
        assert!(err(&[]).contains("at least one [[repositories]] entry is needed"));
        let twice = [repository("infra", "main"), repository("infra", "main")];
        assert!(err(&twice).contains("`repositories[1].name`: \"infra\" is listed twice"));
        assert!(err(&[repository("in fra", "main")]).contains("`repositories[0].name`"));
        assert!(
            err(&[repository("infra", "a..b")])
                .contains("`repositories[0].deploy_branch`: \"a..b\" is not a valid branch name")
        );
        assert!(validate(&[repository("acme/infra", "release/1.x")]).is_ok());
    }
}
