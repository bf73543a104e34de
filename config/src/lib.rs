//! The admin-owned policy file shared by the dispatcher and the executors.
//!
//! It lives with them, never in the infrastructure repository, so that nothing a collaborator
//! commits can change which repositories, accounts or credentials exist. TOML, loaded with
//! figment; `PIPELINES_` environment variables override keys (`PIPELINES_BROKER_URL`,
//! `PIPELINES_EXECUTOR__WORK_DIR`). Every problem is reported at start-up with its key.

mod accounts;
mod approvals;
mod credentials;
mod dispatcher;
mod drift;
mod duration;
mod executor;
mod github;
mod oidc;
mod policies;
mod repositories;
mod timeouts;
mod triggers;
mod urls;
mod web;

use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

use crate::accounts::default_job_timeout;
pub use crate::accounts::{Account, AccountRouter, check_path, compile_glob};
pub use crate::approvals::{ApprovalGates, Approvals};
pub use crate::credentials::{Credentials, CredentialsProvider};
pub use crate::dispatcher::{DispatcherSettings, RetryPolicy};
pub use crate::drift::{DriftSchedule, UnitSelection};
pub use crate::duration::parse_duration;
pub use crate::executor::{DEFAULT_PASS_ENV, ExecutorSettings, ToolUser};
pub use crate::github::GitHub;
pub use crate::oidc::{GITHUB_ACTIONS_ISSUER, OidcSettings};
pub use crate::policies::{
    PolicyMode, PolicyOverride, PolicyScope, PolicySet, PolicySettings, RegoSyntax,
};
pub use crate::repositories::Repository;
pub use crate::timeouts::Timeouts;
pub use crate::triggers::{Trigger, Triggers, UnitTrigger};
pub use crate::urls::{
    REDACTED, git_args_without_credentials, git_credentials_apart, redact_url, url_password,
    url_user, url_vhost, with_password,
};
pub use crate::web::{WebSettings, WebToken};

/// The broker a default local RabbitMQ answers on.
pub const DEFAULT_BROKER_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The RabbitMQ URL. Put the password in `broker_password_file` rather than here or in
    /// the environment: an executor refuses a password from its environment, where the tools
    /// it runs could read it.
    #[serde(default = "default_broker_url")]
    pub broker_url: String,
    /// The nodes of a RabbitMQ cluster, in the order they are tried: when set, it replaces
    /// `broker_url`. A component connects to the first that answers and, when its connection
    /// is lost, to the next. Every URL names the same user and vhost.
    #[serde(default)]
    pub broker_urls: Vec<String>,
    /// A file holding the broker password (a mounted secret), added to `broker_url`'s user.
    #[serde(default)]
    pub broker_password_file: Option<PathBuf>,
    pub repositories: Vec<Repository>,
    pub accounts: Vec<Account>,
    #[serde(default)]
    pub executor: ExecutorSettings,
    #[serde(default)]
    pub dispatcher: DispatcherSettings,
    #[serde(default)]
    pub retry: RetryPolicy,
    #[serde(default)]
    pub triggers: Triggers,
    /// Named identities accounts refer to for plans and for applies.
    #[serde(default)]
    pub credentials: Vec<Credentials>,
    /// Reporting runs to GitHub (pull request comments, commit statuses). Off when absent.
    #[serde(default)]
    pub github: Option<GitHub>,
    /// Deadlines of every edge: nothing waits for ever on a broker, a git server, GitHub or
    /// STS.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Rego policy sets the executors evaluate against every plan they make.
    #[serde(default)]
    pub policies: Vec<PolicySet>,
    /// Limits of every policy evaluation.
    #[serde(default)]
    pub policy: PolicySettings,
    /// Who may approve gated applies, and how long they wait.
    #[serde(default)]
    pub approvals: Approvals,
    /// Drift checks: per repository, a schedule, which units, and what a drift opens.
    #[serde(default)]
    pub drift: Vec<DriftSchedule>,
    /// Who may sign in to the dispatcher's web page and act from it.
    #[serde(default)]
    pub web: WebSettings,
}

/// Secrets never reach a log through `{:?}`: URLs lose their passwords, tokens their values.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("broker_url", &redact_url(&self.broker_url))
            .field("broker_password_file", &self.broker_password_file)
            .field("repositories", &self.repositories)
            .field("accounts", &self.accounts)
            .field("executor", &self.executor)
            .field("dispatcher", &self.dispatcher)
            .field("retry", &self.retry)
            .field("triggers", &self.triggers)
            .field("credentials", &self.credentials)
            .field("github", &self.github)
            .field("timeouts", &self.timeouts)
            .field("policies", &self.policies)
            .field("policy", &self.policy)
            .field("approvals", &self.approvals)
            .field("drift", &self.drift)
            .field("web", &self.web)
            .finish()
    }
}

fn default_broker_url() -> String {
    DEFAULT_BROKER_URL.to_owned()
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

/// The password in the file at `path`, without its trailing newline; empty is an error.
pub fn read_password(path: &Path) -> Result<String, String> {
    let password = std::fs::read_to_string(path)
        .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(password.to_owned())
}

/// [`read_password`] for the config key `key`.
fn read_password_file(key: &str, path: &Path) -> Result<String, ConfigError> {
    read_password(path).map_err(|message| invalid(key, message))
}

/// A log size limit (`max_log_bytes`) is at least 1 MiB: less would cut ordinary plans.
fn check_log_bytes(key: &str, bytes: u64) -> Result<(), ConfigError> {
    if bytes < 1024 * 1024 {
        return Err(invalid(
            key,
            format!("{bytes} is below the minimum of 1 MiB (1048576)"),
        ));
    }
    Ok(())
}

/// A limit on many logs together (`max_run_log_bytes`, `max_total_log_bytes`): 0 for none, or
/// at least 1 MiB, as one log's.
fn check_log_budget(key: &str, bytes: u64) -> Result<(), ConfigError> {
    match bytes {
        0 => Ok(()),
        _ => check_log_bytes(key, bytes),
    }
}

/// `dispatcher.max_run_log_bytes`: sixteen logs at the default `max_log_bytes`.
fn default_max_run_log_bytes() -> u64 {
    2 << 30
}

/// `*.log_keep_free_bytes`: room for the run database, or the next checkout, on a full disk.
fn default_log_keep_free_bytes() -> u64 {
    2 << 30
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
            key == "broker_url"
                || key == "broker_urls"
                || key == "broker_password_file"
                || [
                    "executor",
                    "dispatcher",
                    "github",
                    "timeouts",
                    "policy",
                    "approvals",
                    "web",
                ]
                .iter()
                .any(|section| {
                    key.starts_with(&format!("{section}."))
                        || key.starts_with(&format!("{section}__"))
                })
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
            broker_urls: Vec::new(),
            broker_password_file: None,
            repositories: vec![Repository {
                name: repository.to_owned(),
                url: url.to_owned(),
                deploy_branch: deploy_branch.to_owned(),
                tf_binary: None,
                terragrunt_binary: None,
                github: None,
            }],
            accounts: vec![Account {
                name: "default".to_owned(),
                paths: vec!["**".to_owned()],
                max_concurrent_jobs: 0,
                job_timeout: default_job_timeout(),
                plan_credentials: None,
                apply_credentials: None,
                require_approval: false,
            }],
            executor: ExecutorSettings::default(),
            dispatcher: DispatcherSettings::default(),
            retry: RetryPolicy::default(),
            triggers: Triggers::default(),
            credentials: Vec::new(),
            github: None,
            timeouts: Timeouts::default(),
            policies: Vec::new(),
            policy: PolicySettings::default(),
            approvals: Approvals::default(),
            drift: Vec::new(),
            web: WebSettings::default(),
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

    /// The broker's nodes: `broker_urls`, or `broker_url` alone.
    pub fn broker_nodes(&self) -> Vec<&str> {
        if self.broker_urls.is_empty() {
            vec![self.broker_url.as_str()]
        } else {
            self.broker_urls.iter().map(String::as_str).collect()
        }
    }

    /// The first of [`Config::broker_nodes`]: whose user the components log in as.
    pub fn first_broker_node(&self) -> &str {
        self.broker_nodes()[0]
    }

    /// Every node's URL with the password from `broker_password_file` added.
    pub fn broker_urls_with_password(&self) -> Result<Vec<String>, ConfigError> {
        self.broker_nodes()
            .into_iter()
            .map(|url| self.with_password_file(url))
            .collect()
    }

    fn with_password_file(&self, url: &str) -> Result<String, ConfigError> {
        let Some(path) = &self.broker_password_file else {
            return Ok(url.to_owned());
        };
        let password = read_password_file("broker_password_file", path)?;
        with_password(url, &password).ok_or_else(|| {
            invalid(
                self.broker_key(),
                format!(
                    "{:?} names no user for the password in broker_password_file",
                    redact_url(url)
                ),
            )
        })
    }

    fn broker_key(&self) -> &'static str {
        if self.broker_urls.is_empty() {
            "broker_url"
        } else {
            "broker_urls"
        }
    }

    /// The credentials entry an account uses for `mutates` (apply/destroy) or plans, if any.
    pub fn credentials_for(&self, account: &Account, mutates: bool) -> Option<&Credentials> {
        let name = if mutates {
            &account.apply_credentials
        } else {
            &account.plan_credentials
        };
        name.as_ref()
            .and_then(|name| self.credentials.iter().find(|c| &c.name == name))
    }

    /// Checks every section, naming the key of the first bad value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let first = self.first_broker_node();
        for (i, url) in self.broker_nodes().into_iter().enumerate() {
            let key = if self.broker_urls.is_empty() {
                "broker_url".to_owned()
            } else {
                format!("broker_urls[{i}]")
            };
            if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
                return Err(invalid(
                    key,
                    format!("{:?} is not an amqp:// or amqps:// URL", redact_url(url)),
                ));
            }
            // One identity on every node: permissions, user_id checks and the password file
            // are the same wherever a component lands.
            if url_user(url) != url_user(first) || url_vhost(url) != url_vhost(first) {
                return Err(invalid(
                    key,
                    format!(
                        "{:?} names another user or vhost than {:?}: every node must be the same cluster, logged in as the same user",
                        redact_url(url),
                        redact_url(first)
                    ),
                ));
            }
        }
        repositories::validate(&self.repositories)?;
        self.validate_accounts()?;
        self.validate_credentials()?;
        self.validate_executor()?;
        if let Some(path) = &self.broker_password_file
            && let Some(url) = self
                .broker_nodes()
                .into_iter()
                .find(|url| url_password(url).is_some())
        {
            return Err(invalid(
                "broker_password_file",
                format!(
                    "{} is given, but {} {:?} has a password too: keep only one",
                    path.display(),
                    self.broker_key(),
                    redact_url(url)
                ),
            ));
        }
        dispatcher::validate(&self.dispatcher)?;
        self.validate_github()?;
        oidc::validate(self)?;
        timeouts::validate(&self.timeouts)?;
        dispatcher::validate_retry(&self.retry)?;
        policies::validate(&self.policies, &self.policy, &self.approvals.users)?;
        approvals::validate(self)?;
        drift::validate(self)?;
        web::validate(self)?;
        triggers::validate(&self.triggers)
    }
}

/// What the tests of every section share.
#[cfg(test)]
pub(crate) mod testing {
    use crate::Config;

    pub(crate) const VALID: &str = r#"
        broker_url = "amqp://guest:guest@127.0.0.1:5672/%2f"
        [[repositories]]
        name = "infra"
        url = "/srv/git/infra.git"
        [[accounts]]
        name = "prod"
        paths = ["prod/**"]
    "#;

    /// [`VALID`] with more TOML after it.
    pub(crate) fn with(extra: &str) -> Result<Config, crate::ConfigError> {
        Config::from_toml(&format!("{VALID}\n{extra}"))
    }

    pub(crate) fn error_of(text: &str) -> String {
        Config::from_toml(text).expect_err("refused").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{VALID, error_of};

    #[test]
    fn a_minimal_file_loads_with_defaults() {
        let config = Config::from_toml(VALID).unwrap();
        assert_eq!(config.repositories[0].deploy_branch, "main");
        assert_eq!(config.executor, ExecutorSettings::default());
        assert_eq!(
            config.dispatcher.reserved_apply_slots, 1,
            "merges keep a slot of a capped account"
        );
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
    fn dispatcher_retry_trigger_and_credentials_keys_load_and_validate() {
        let full = format!(
            "{VALID}\nmax_concurrent_jobs = 2\njob_timeout = \"1h30m\"\nplan_credentials = \"prod-plan\"\napply_credentials = \"prod-apply\"\n\
             [[credentials]]\nname = \"prod-plan\"\nprovider = \"command\"\ncommand = [\"creds\", \"plan\"]\n\
             [[credentials]]\nname = \"prod-apply\"\nprovider = \"aws-web-identity\"\nrole_arn = \"arn:aws:iam::1:role/apply\"\ntoken_file = \"/var/run/token\"\n\
             [retry]\nmax_attempts = 4\npatterns = [\"(?i)throttl\"]\n\
             [triggers]\nhcl_changed = \"plan\"\naccounts_requested = {{ unit = \"_global/account-factory\" }}\n\
             [dispatcher]\nlease_seconds = 60\nstate_dir = \"/var/lib/pipelines\"\n"
        );
        let config = Config::from_toml(&full).unwrap();
        let account = &config.accounts[0];
        assert_eq!(
            (account.max_concurrent_jobs, account.job_timeout_secs()),
            (2, 5400)
        );
        assert_eq!(
            config.credentials_for(account, true).unwrap().provider,
            CredentialsProvider::AwsWebIdentity
        );
        assert_eq!(
            config.credentials_for(account, false).unwrap().name,
            "prod-plan"
        );
        assert_eq!(config.triggers.hcl_changed, Trigger::Plan);
        assert_eq!(
            config.triggers.accounts_requested.as_ref().unwrap().unit,
            "_global/account-factory"
        );
        assert_eq!(
            config.dispatcher.state_dir(),
            PathBuf::from("/var/lib/pipelines")
        );

        let unknown = full.replace(
            "apply_credentials = \"prod-apply\"",
            "apply_credentials = \"nope\"",
        );
        assert!(
            error_of(&unknown)
                .contains("`accounts[0].apply_credentials`: \"nope\" is not the name")
        );
        let bad_regex = full.replace("(?i)throttl", "(unclosed");
        assert!(
            error_of(&bad_regex)
                .contains("`retry.patterns[0]`: invalid regular expression \"(unclosed\"")
        );
        let no_role = full.replace("role_arn = \"arn:aws:iam::1:role/apply\"\n", "");
        assert!(error_of(&no_role).contains("`credentials[1].role_arn`"));
        let bad_unit = full.replace("_global/account-factory", "../escape");
        assert!(error_of(&bad_unit).contains("`triggers.accounts_requested.unit`"));
    }

    #[test]
    fn debug_output_never_shows_a_password_or_token() {
        let text = VALID
            .replace("guest:guest@", "guest:hunter2-broker@")
            .replace(
                "url = \"/srv/git/infra.git\"",
                "url = \"https://x-access-token:ghs_repo-secret@github.com/acme/infra.git\"\ngithub = \"acme/infra\"",
            );
        let text = format!("{text}\n[github]\ntoken = \"ghp_token-secret\"\n");
        let debug = format!("{:?}", Config::from_toml(&text).unwrap());
        for secret in ["hunter2-broker", "ghs_repo-secret", "ghp_token-secret"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("github.com/acme/infra.git"), "{debug}");
    }

    #[test]
    fn broker_urls_name_a_clusters_nodes_with_one_user_and_one_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let nodes = "broker_urls = [\"amqp://dispatcher@rabbit-1:5672/pipelines\", \"amqps://dispatcher@rabbit-2:5671/pipelines\"]\n";
        let text = format!(
            "{nodes}broker_password_file = \"{}\"\n{VALID}",
            secret.display()
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.broker_urls_with_password().unwrap(),
            [
                "amqp://dispatcher:s3cret@rabbit-1:5672/pipelines",
                "amqps://dispatcher:s3cret@rabbit-2:5671/pipelines"
            ]
        );
        assert_eq!(url_user(config.first_broker_node()), Some("dispatcher"));
        let other_user = text.replace("amqps://dispatcher@", "amqps://mallory@");
        assert!(
            error_of(&other_user).contains("`broker_urls[1]`")
                && error_of(&other_user).contains("another user or vhost"),
            "{}",
            error_of(&other_user)
        );
        let other_vhost = text.replace("5671/pipelines", "5671/other");
        assert!(error_of(&other_vhost).contains("`broker_urls[1]`"));
        let not_amqp = text.replace("amqps://dispatcher@rabbit-2", "http://dispatcher@rabbit-2");
        assert!(error_of(&not_amqp).contains("`broker_urls[1]`: \"http://"));
        let inline = text.replace("amqps://dispatcher@", "amqps://dispatcher:inline@");
        assert!(error_of(&inline).contains("`broker_password_file`"));
        // Without broker_urls, broker_url is the one node.
        let single = Config::from_toml(VALID).unwrap();
        assert_eq!(single.broker_nodes(), [single.broker_url.as_str()]);
    }

    #[test]
    fn the_broker_password_comes_from_its_file_encoded_and_never_twice() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("password");
        std::fs::write(&secret, "p@ss/w:rd\n").unwrap();
        let text = VALID.replace("guest:guest@", "pipelines-executor-prod-plan@");
        let text = format!("broker_password_file = \"{}\"\n{text}", secret.display());
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.broker_urls_with_password().unwrap()[0],
            "amqp://pipelines-executor-prod-plan:p%40ss%2Fw%3Ard@127.0.0.1:5672/%2f"
        );
        let twice = text.replace("pipelines-executor-prod-plan@", "u:inline@");
        assert!(error_of(&twice).contains("`broker_password_file`"));
        assert_eq!(url_password("amqp://u:inline@h/%2f"), Some("inline"));
        assert_eq!(url_password("amqp://u@h/%2f"), None);
        std::fs::write(&secret, "").unwrap();
        assert!(
            config
                .broker_urls_with_password()
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
    }
}
