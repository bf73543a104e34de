//! The admin-owned policy file shared by the dispatcher and the executors.
//!
//! It lives with them, never in the infrastructure repository, so that nothing a collaborator
//! commits can change which repositories, accounts or credentials exist. TOML, loaded with
//! figment; `PIPELINES_` environment variables override keys (`PIPELINES_BROKER_URL`,
//! `PIPELINES_EXECUTOR__WORK_DIR`). Every problem is reported at start-up with its key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

/// The broker a default local RabbitMQ answers on.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default = "default_broker_url")]
    pub broker_url: String,
    pub repositories: Vec<Repository>,
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub executor: ExecutorSettings,
}

/// A repository the pipeline may act on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// The name change events use (`--repo-name`).
    pub name: String,
    /// The canonical clone URL executors fetch from (any URL or path `git fetch` accepts).
    pub url: String,
    /// Pushes to this branch apply; nothing else may.
    #[serde(default = "default_deploy_branch")]
    pub deploy_branch: String,
}

/// A cloud account and the units it owns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Lower-case letters, digits, `-` and `_`: it names the `jobs.<account>` queue.
    pub name: String,
    /// Globs over repo-relative unit paths. `*` stays within one directory; `**` crosses them.
    /// A unit belongs to the first account, in file order, with a matching glob.
    pub paths: Vec<String>,
}

/// Settings only executors read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSettings {
    /// Where mirrors and per-job checkouts live. Default: a directory per worker under the
    /// system temporary directory.
    pub work_dir: Option<PathBuf>,
    /// `terraform` or `tofu` (a name on PATH or a path). Default: `tofu` when it is on PATH,
    /// else `terraform`.
    pub tf_binary: Option<String>,
}

fn default_broker_url() -> String {
    DEFAULT_BROKER_URL.to_owned()
}

fn default_deploy_branch() -> String {
    "main".to_owned()
}

/// Why a configuration was refused. Always fatal at start-up: fix the file and restart.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist", .0.display())]
    Missing(PathBuf),
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Loads and validates `path`, with `PIPELINES_*` environment overrides.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        if !path.is_file() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        // Only keys the file format knows are taken from the environment, so unrelated
        // PIPELINES_* variables (PIPELINES_TELEMETRY_OPT_OUT, ...) do not trip validation.
        let env = Env::prefixed("PIPELINES_").split("__").filter(|key| {
            let key = key.as_str().to_ascii_lowercase();
            key == "broker_url" || key.starts_with("executor.") || key.starts_with("executor__")
        });
        let config: Config = Figment::new()
            .merge(Toml::file_exact(path))
            .merge(env)
            .extract()
            .map_err(|err| ConfigError::Parse {
                path: path.to_owned(),
                message: err.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text (no environment), for tests and `config check`.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|err| ConfigError::Parse {
                path: PathBuf::from("<inline>"),
                message: err.to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The policy embedded mode uses when no file is given: the local repository, deployable
    /// from `deploy_branch`, and one account owning every unit.
    pub fn embedded(repository: &str, url: &str, deploy_branch: &str) -> Config {
        Config {
            broker_url: String::new(),
            repositories: vec![Repository {
                name: repository.to_owned(),
                url: url.to_owned(),
                deploy_branch: deploy_branch.to_owned(),
            }],
            accounts: vec![Account {
                name: "default".to_owned(),
                paths: vec!["**".to_owned()],
            }],
            executor: ExecutorSettings::default(),
        }
    }

    pub fn repository(&self, name: &str) -> Option<&Repository> {
        self.repositories.iter().find(|repo| repo.name == name)
    }

    pub fn account(&self, name: &str) -> Option<&Account> {
        self.accounts.iter().find(|account| account.name == name)
    }

    pub fn account_names(&self) -> Vec<String> {
        self.accounts
            .iter()
            .map(|account| account.name.clone())
            .collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.broker_url.starts_with("amqp://") || self.broker_url.starts_with("amqps://")) {
            return Err(invalid(
                "broker_url",
                format!(
                    "{:?} is not an amqp:// or amqps:// URL",
                    redact(&self.broker_url)
                ),
            ));
        }
        if self.repositories.is_empty() {
            return Err(invalid(
                "repositories",
                "at least one [[repositories]] entry is needed",
            ));
        }
        let mut names = HashSet::new();
        for (i, repo) in self.repositories.iter().enumerate() {
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
        if self.accounts.is_empty() {
            return Err(invalid(
                "accounts",
                "at least one [[accounts]] entry is needed",
            ));
        }
        let mut names = HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = |field: &str| format!("accounts[{i}].{field}");
            if !is_account_name(&account.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} must be 1-64 lower-case letters, digits, '-' or '_' (it names a queue)",
                        account.name
                    ),
                ));
            }
            if !names.insert(account.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is listed twice", account.name),
                ));
            }
            if account.paths.is_empty() {
                return Err(invalid(key("paths"), "at least one glob is needed"));
            }
            for (j, glob) in account.paths.iter().enumerate() {
                if let Err(err) = compile_glob(glob) {
                    return Err(invalid(format!("accounts[{i}].paths[{j}]"), err));
                }
            }
        }
        Ok(())
    }
}

/// Compiles an account path glob with the documented semantics.
pub fn compile_glob(glob: &str) -> Result<globset::GlobMatcher, String> {
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|err| format!("invalid glob {glob:?}: {err}"))
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'))
}

fn is_account_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
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

fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        broker_url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [[repositories]]
        name = "infra"
        url = "/srv/git/infra.git"
        [[accounts]]
        name = "prod"
        paths = ["prod/**"]
    "#;

    fn error_of(text: &str) -> String {
        Config::from_toml(text).expect_err("refused").to_string()
    }

    #[test]
    fn a_minimal_file_loads_with_defaults() {
        let config = Config::from_toml(VALID).unwrap();
        assert_eq!(config.repositories[0].deploy_branch, "main");
        assert_eq!(config.executor, ExecutorSettings::default());
    }

    #[test]
    fn errors_name_the_offending_key_and_value() {
        let bad_glob = VALID.replace("prod/**", "prod/[");
        assert!(
            error_of(&bad_glob)
                .starts_with("config key `accounts[0].paths[0]`: invalid glob \"prod/[\"")
        );
        let bad_account = VALID.replace("name = \"prod\"", "name = \"Prod.EU\"");
        assert!(error_of(&bad_account).contains("`accounts[0].name`: \"Prod.EU\""));
        let bad_url = VALID.replace("amqp://guest:guest@", "http://guest:guest@");
        let message = error_of(&bad_url);
        assert!(
            message.contains("`broker_url`") && !message.contains("guest:guest"),
            "{message}"
        );
        let bad_branch = VALID.replace("url = \"/srv", "deploy_branch = \"a..b\"\nurl = \"/srv");
        assert!(error_of(&bad_branch).contains("`repositories[0].deploy_branch`: \"a..b\""));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let typo = VALID.replace("paths =", "path =");
        assert!(error_of(&typo).contains("path"), "{}", error_of(&typo));
    }

    #[test]
    fn a_missing_file_is_named() {
        let err = Config::load(Path::new("/nonexistent/pipelines.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config file /nonexistent/pipelines.toml does not exist"
        );
    }

    #[test]
    fn a_file_loads_from_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipelines.toml");
        std::fs::write(&path, VALID).unwrap();
        assert_eq!(Config::load(&path).unwrap().accounts[0].name, "prod");
    }

    #[test]
    fn globs_do_not_cross_directories_unless_doubled() {
        assert!(compile_glob("prod/*").unwrap().is_match("prod/app"));
        assert!(!compile_glob("prod/*").unwrap().is_match("prod/eu/app"));
        assert!(compile_glob("prod/**").unwrap().is_match("prod/eu/app"));
    }
}
