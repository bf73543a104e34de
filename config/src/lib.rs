//! The admin-owned policy file shared by the dispatcher and the executors.
//!
//! It lives with them, never in the infrastructure repository, so that nothing a collaborator
//! commits can change which repositories, accounts or credentials exist. TOML, loaded with
//! figment; `PIPELINES_` environment variables override keys (`PIPELINES_BROKER_URL`,
//! `PIPELINES_EXECUTOR__WORK_DIR`). Every problem is reported at start-up with its key.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::Deserialize;

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
}

/// How long each kind of outside call may take before it fails with a clear error (durations
/// like `90s`, `5m`, `1h30m`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Opening a connection to RabbitMQ (TCP, TLS and the AMQP handshake).
    #[serde(default = "default_broker_connect_timeout")]
    pub broker_connect: String,
    /// The broker's confirm of a published message.
    #[serde(default = "default_broker_confirm_timeout")]
    pub broker_confirm: String,
    /// One git command of an executor (fetch, ls-remote, checkout).
    #[serde(default = "default_git_timeout")]
    pub git: String,
    /// One request to the GitHub API.
    #[serde(default = "default_github_timeout")]
    pub github: String,
    /// Obtaining a job's credentials (an STS call, a credentials command).
    #[serde(default = "default_credentials_timeout")]
    pub credentials: String,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            broker_connect: default_broker_connect_timeout(),
            broker_confirm: default_broker_confirm_timeout(),
            git: default_git_timeout(),
            github: default_github_timeout(),
            credentials: default_credentials_timeout(),
        }
    }
}

impl Timeouts {
    /// The fields with their keys, for validation.
    fn fields(&self) -> [(&'static str, &str); 5] {
        [
            ("timeouts.broker_connect", &self.broker_connect),
            ("timeouts.broker_confirm", &self.broker_confirm),
            ("timeouts.git", &self.git),
            ("timeouts.github", &self.github),
            ("timeouts.credentials", &self.credentials),
        ]
    }

    pub fn broker_connect(&self) -> std::time::Duration {
        duration_or(&self.broker_connect, 30)
    }

    pub fn broker_confirm(&self) -> std::time::Duration {
        duration_or(&self.broker_confirm, 60)
    }

    pub fn git(&self) -> std::time::Duration {
        duration_or(&self.git, 600)
    }

    pub fn github(&self) -> std::time::Duration {
        duration_or(&self.github, 30)
    }

    pub fn credentials(&self) -> std::time::Duration {
        duration_or(&self.credentials, 60)
    }
}

/// A validated duration, or `default_secs` (validation already refused a bad one).
fn duration_or(text: &str, default_secs: u64) -> std::time::Duration {
    parse_duration(text).unwrap_or(std::time::Duration::from_secs(default_secs))
}

fn default_broker_connect_timeout() -> String {
    "30s".to_owned()
}

fn default_broker_confirm_timeout() -> String {
    "60s".to_owned()
}

fn default_git_timeout() -> String {
    "10m".to_owned()
}

fn default_github_timeout() -> String {
    "30s".to_owned()
}

fn default_credentials_timeout() -> String {
    "60s".to_owned()
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
            .finish()
    }
}

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

/// What a secret shows as in `Debug` output and messages.
pub const REDACTED: &str = "***";

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

/// A cloud account and the units it owns.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Lower-case letters, digits, `-` and `_`: it names the `jobs.<account>` queue.
    pub name: String,
    /// Globs over repo-relative unit paths. `*` stays within one directory; `**` crosses them.
    /// A unit belongs to the first account, in file order, with a matching glob.
    pub paths: Vec<String>,
    /// At most this many of the account's jobs queued or running at once; 0: no limit.
    #[serde(default)]
    pub max_concurrent_jobs: u32,
    /// Jobs running longer are stopped (their whole process group) and reported as failed:
    /// `90s`, `45m`, `4h`, `1h30m`.
    #[serde(default = "default_job_timeout")]
    pub job_timeout: String,
    /// The `[[credentials]]` plans run with (read-only). Default: the executor's environment.
    #[serde(default)]
    pub plan_credentials: Option<String>,
    /// The `[[credentials]]` applies and destroys run with. Default: the executor's environment.
    #[serde(default)]
    pub apply_credentials: Option<String>,
}

impl Account {
    /// The job timeout in seconds (validated when the configuration was loaded).
    pub fn job_timeout_secs(&self) -> u64 {
        parse_duration(&self.job_timeout).map_or(4 * 3600, |d| d.as_secs())
    }
}

/// Settings only the dispatcher reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DispatcherSettings {
    /// Where the run database lives. Default: `$XDG_STATE_HOME/pipelines`, else
    /// `~/.local/state/pipelines`.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// How long a worker's claim on a job lasts without a heartbeat before another worker may
    /// take the job over.
    #[serde(default = "default_lease_seconds")]
    pub lease_seconds: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port`). Default: not served.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// The broker users whose change events start runs (RabbitMQ validates every message's
    /// `user_id`). Empty: any user that may publish to the changes exchange.
    #[serde(default)]
    pub orchestrator_users: Vec<String>,
    /// The most units one change event may name. A bigger event is rejected with this limit
    /// named: its run would hold the dispatcher, the broker and the PR comment hostage.
    #[serde(default = "default_max_units_per_run")]
    pub max_units_per_run: usize,
    /// Finished runs, their jobs and outputs are deleted this many days after they ended
    /// (checked at start and hourly). 0 keeps everything.
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
}

impl Default for DispatcherSettings {
    fn default() -> DispatcherSettings {
        DispatcherSettings {
            state_dir: None,
            lease_seconds: default_lease_seconds(),
            metrics_address: None,
            orchestrator_users: Vec::new(),
            max_units_per_run: default_max_units_per_run(),
            retention_days: default_retention_days(),
        }
    }
}

fn default_max_units_per_run() -> usize {
    5_000
}

fn default_retention_days() -> u64 {
    90
}

impl DispatcherSettings {
    pub fn state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
            (Some(state), _) => PathBuf::from(state).join("pipelines"),
            (None, Some(home)) => PathBuf::from(home).join(".local/state/pipelines"),
            (None, None) => PathBuf::from(".pipelines-state"),
        }
    }
}

/// When a failed job is tried again.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// The wait before the second attempt; it doubles for each further attempt.
    #[serde(default = "default_backoff_seconds")]
    pub backoff_seconds: u64,
    /// Regular expressions over a failed job's output; a match makes the failure retryable.
    /// Any other failure is final.
    #[serde(default = "default_retry_patterns")]
    pub patterns: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: default_max_attempts(),
            backoff_seconds: default_backoff_seconds(),
            patterns: default_retry_patterns(),
        }
    }
}

/// What a kind of change triggers: `default` (plan on pull requests, apply on pushes to the
/// deploy branch; plan-destroy and destroy for deleted units), `plan` (plan even on pushes),
/// `noop` (a job that goes through the whole pipeline but runs nothing), or `none`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trigger {
    #[default]
    Default,
    Plan,
    Noop,
    None,
}

/// A change without units (account requests) runs a unit you name, or nothing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitTrigger {
    /// Repo-relative path of the unit planned on pull requests and applied on pushes.
    pub unit: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default)]
    pub unit_added: Trigger,
    #[serde(default)]
    pub unit_changed: Trigger,
    #[serde(default)]
    pub unit_deleted: Trigger,
    #[serde(default)]
    pub env_common_changed: Trigger,
    #[serde(default)]
    pub hcl_changed: Trigger,
    #[serde(default)]
    pub file_changed: Trigger,
    #[serde(default)]
    pub drift_detected: Trigger,
    /// `_new-account-requests/*.yml` changed. Default: nothing.
    #[serde(default)]
    pub accounts_requested: Option<UnitTrigger>,
    /// `accounts.yml` changed. Default: nothing.
    #[serde(default)]
    pub accounts_changed: Option<UnitTrigger>,
}

/// A named identity for jobs, given to the IaC process's environment and nowhere else.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub name: String,
    pub provider: CredentialsProvider,
    /// aws-web-identity: the role to assume.
    #[serde(default)]
    pub role_arn: Option<String>,
    /// aws-web-identity: the OIDC token file (for example a projected service account token).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// aws-web-identity: the region (and STS region). Default: us-east-1.
    #[serde(default)]
    pub region: Option<String>,
    /// aws-web-identity: session length. Default: 3600.
    #[serde(default)]
    pub session_seconds: Option<u64>,
    /// aws-web-identity: the STS endpoint. Default: `https://sts.<region>.amazonaws.com`.
    #[serde(default)]
    pub sts_endpoint: Option<String>,
    /// command: a program and its arguments that print JSON credentials.
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialsProvider {
    /// The executor's own environment (instance profile, workload identity, ...).
    None,
    /// AWS STS AssumeRoleWithWebIdentity with an OIDC token file.
    AwsWebIdentity,
    /// A command printing `{"env": {"NAME": "value", ...}}` (like Gruntwork's `auth_provider_cmd`).
    Command,
}

/// Settings only executors read.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorSettings {
    /// Where mirrors and per-job checkouts live. Default: a directory per worker under the
    /// system temporary directory.
    pub work_dir: Option<PathBuf>,
    /// `terraform` or `tofu` (a name on PATH or a path). Default: `tofu` when it is on PATH,
    /// else `terraform`.
    pub tf_binary: Option<String>,
    /// Where each job's whole (redacted) log is written, as `<run>/<job>-<attempt>.log`.
    /// Default: `logs` in the work directory.
    pub log_dir: Option<PathBuf>,
    /// On SIGTERM, how long a running job may take to finish before it is stopped and given
    /// back to the queue.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
    /// After asking a job's tool to stop (timeout, cancellation, drain), how long to wait
    /// before killing its whole process group.
    #[serde(default = "default_stop_grace_seconds")]
    pub stop_grace_seconds: u64,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (`host:port`; one port per worker
    /// process). Default: not served.
    #[serde(default)]
    pub metrics_address: Option<String>,
    /// Run every tool (terraform, tofu, terragrunt and what they start) as this user: a name
    /// from /etc/passwd, or `uid:gid`. The tools then cannot read the worker's files (its
    /// configuration, broker password, token files, git mirror). Needs the worker to run as
    /// root or with CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_KILL, CAP_DAC_OVERRIDE and
    /// CAP_FOWNER. Give each worker its own user: leftover processes of this user are killed
    /// after every job. Default: tools run as the worker.
    #[serde(default)]
    pub tool_user: Option<String>,
    /// Variables every tool gets (Terraform settings, proxies), beside PATH, HOME and TMPDIR
    /// inside the job's directory, `pass_env`, and the job's own credentials. Nothing else of
    /// the worker's environment reaches a tool.
    #[serde(default)]
    pub tool_env: BTreeMap<String, String>,
    /// Names of the worker's own environment variables handed to tools unchanged, when set.
    #[serde(default = "default_pass_env")]
    pub pass_env: Vec<String>,
    /// git settings for the worker's own git (`credential.helper`, `http.proxy`, ...). No
    /// other git configuration is read: not the system's, not `~/.gitconfig`, not the mirror's.
    #[serde(default)]
    pub git_config: BTreeMap<String, String>,
}

impl Default for ExecutorSettings {
    fn default() -> ExecutorSettings {
        ExecutorSettings {
            work_dir: None,
            tf_binary: None,
            log_dir: None,
            drain_seconds: default_drain_seconds(),
            stop_grace_seconds: default_stop_grace_seconds(),
            metrics_address: None,
            tool_user: None,
            tool_env: BTreeMap::new(),
            pass_env: default_pass_env(),
            git_config: BTreeMap::new(),
        }
    }
}

/// Worker variables tools may see by default: where Terraform's CLI configuration is, and
/// proxies. Never credentials: those come from `[[credentials]]`, per job and role.
pub const DEFAULT_PASS_ENV: &[&str] = &[
    "TF_CLI_CONFIG_FILE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

fn default_pass_env() -> Vec<String> {
    DEFAULT_PASS_ENV
        .iter()
        .map(|name| (*name).to_owned())
        .collect()
}

/// Variables the worker sets for every tool itself, which configuration may not override.
const WORKER_SET_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "TF_IN_AUTOMATION", "TF_INPUT"];

/// A user tools run as: numeric ids, resolved from a name once at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolUser {
    pub uid: u32,
    pub gid: u32,
}

impl ExecutorSettings {
    /// `tool_user` as ids: `uid:gid` as written, a name through `passwd` (the text of
    /// /etc/passwd). `Ok(None)` when tools run as the worker.
    pub fn tool_user(&self, passwd: &str) -> Result<Option<ToolUser>, String> {
        let Some(spec) = &self.tool_user else {
            return Ok(None);
        };
        if let Some((uid, gid)) = spec.split_once(':') {
            return match (uid.parse(), gid.parse()) {
                (Ok(uid), Ok(gid)) => Ok(Some(ToolUser { uid, gid })),
                _ => Err(format!("{spec:?} is not uid:gid (numbers) or a user name")),
            };
        }
        passwd
            .lines()
            .map(|line| line.split(':').collect::<Vec<_>>())
            .find(|fields| fields.len() >= 4 && fields[0] == spec)
            .and_then(|fields| {
                Some(ToolUser {
                    uid: fields[2].parse().ok()?,
                    gid: fields[3].parse().ok()?,
                })
            })
            .map(Some)
            .ok_or_else(|| format!("user {spec:?} is not in /etc/passwd (or give uid:gid)"))
    }
}

fn default_broker_url() -> String {
    DEFAULT_BROKER_URL.to_owned()
}

fn default_deploy_branch() -> String {
    "main".to_owned()
}

fn default_github_api() -> String {
    "https://api.github.com".to_owned()
}

fn default_status_context() -> String {
    "pipelines".to_owned()
}

fn default_job_timeout() -> String {
    "4h".to_owned()
}

fn default_drain_seconds() -> u64 {
    600
}

fn default_stop_grace_seconds() -> u64 {
    30
}

/// `90s`, `45m`, `4h`, `1h30m`, `2h15m30s`: a positive duration with a unit on every number.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => {
                return Err(format!(
                    "{text:?} is not a duration like 90s, 45m, 4h or 1h30m"
                ));
            }
        };
        let value: u64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a duration like 90s, 45m, 4h or 1h30m"))?;
        total = total.saturating_add(value.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() {
        return Err(format!("{text:?} needs a unit: 90s, 45m, 4h or 1h30m"));
    }
    if total == 0 {
        return Err(format!("{text:?} is not a positive duration"));
    }
    Ok(std::time::Duration::from_secs(total))
}

fn default_lease_seconds() -> u64 {
    120
}

fn default_max_attempts() -> u32 {
    3
}

fn default_backoff_seconds() -> u64 {
    30
}

/// Failures that are usually transient: state locks, provider API throttling, network blips.
fn default_retry_patterns() -> Vec<String> {
    [
        "Error acquiring the state lock",
        "(?i)rate exceeded|throttl|RequestLimitExceeded|TooManyRequests",
        "(?i)connection reset by peer|i/o timeout|TLS handshake timeout|timeout while waiting for plugin",
        "(?i)failed to install provider|could not query provider registry",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
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
            key == "broker_url"
                || key == "broker_password_file"
                || ["executor", "dispatcher", "github", "timeouts"]
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
            }],
            executor: ExecutorSettings::default(),
            dispatcher: DispatcherSettings::default(),
            retry: RetryPolicy::default(),
            triggers: Triggers::default(),
            credentials: Vec::new(),
            github: None,
            timeouts: Timeouts::default(),
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

    fn validate_credentials(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for (i, credentials) in self.credentials.iter().enumerate() {
            let key = |field: &str| format!("credentials[{i}].{field}");
            if !is_plain_name(&credentials.name) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} must be non-empty letters, digits, '-', '_', '.' or '/'",
                        credentials.name
                    ),
                ));
            }
            if !names.insert(credentials.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!("{:?} is listed twice", credentials.name),
                ));
            }
            match credentials.provider {
                CredentialsProvider::None => {}
                CredentialsProvider::AwsWebIdentity => {
                    if credentials
                        .role_arn
                        .as_deref()
                        .is_none_or(|arn| !arn.starts_with("arn:"))
                    {
                        return Err(invalid(
                            key("role_arn"),
                            "aws-web-identity needs role_arn = \"arn:aws:iam::<account>:role/<name>\"",
                        ));
                    }
                    if credentials.token_file.is_none() {
                        return Err(invalid(
                            key("token_file"),
                            "aws-web-identity needs the path of the OIDC token file",
                        ));
                    }
                }
                CredentialsProvider::Command => {
                    if credentials.command.as_ref().is_none_or(Vec::is_empty) {
                        return Err(invalid(
                            key("command"),
                            "the command provider needs command = [\"program\", \"args\"...]",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn validate_github(&self) -> Result<(), ConfigError> {
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

    /// Why an account's plan identity is not apart from its apply identity, if it is not: the
    /// same entry, the same token file or the same role. Plans run pull requests' code.
    fn roles_apart(&self, account: &Account) -> Result<(), String> {
        let (Some(plan), Some(apply)) = (
            self.credentials_for(account, false),
            self.credentials_for(account, true),
        ) else {
            return Ok(());
        };
        let why = if plan.name == apply.name {
            format!("{:?} is also the apply_credentials", plan.name)
        } else if plan.token_file.is_some() && plan.token_file == apply.token_file {
            format!(
                "{:?} reads the apply credentials' token file too",
                plan.name
            )
        } else if plan.role_arn.is_some() && plan.role_arn == apply.role_arn {
            format!("{:?} assumes the apply credentials' role too", plan.name)
        } else if plan.command.is_some() && plan.command == apply.command {
            format!("{:?} runs the apply credentials' command too", plan.name)
        } else {
            return Ok(());
        };
        Err(format!(
            "{why}: plans run code from pull requests, so give them their own read-only identity"
        ))
    }

    fn validate_executor(&self) -> Result<(), ConfigError> {
        let executor = &self.executor;
        if let Some(user) = &executor.tool_user
            && (user.is_empty() || user == "root" || user == "0:0" || user.starts_with("0:"))
        {
            return Err(invalid(
                "executor.tool_user",
                format!("{user:?} would run tools as root: name an unprivileged user"),
            ));
        }
        for name in executor.tool_env.keys() {
            if !is_env_name(name) {
                return Err(invalid(
                    format!("executor.tool_env.{name}"),
                    "is not a valid environment variable name",
                ));
            }
            if WORKER_SET_ENV.contains(&name.as_str()) || name.starts_with("PIPELINES_") {
                return Err(invalid(
                    format!("executor.tool_env.{name}"),
                    "is set by the worker itself and cannot be configured",
                ));
            }
        }
        for (i, name) in executor.pass_env.iter().enumerate() {
            if !is_env_name(name)
                || WORKER_SET_ENV.contains(&name.as_str())
                || name.starts_with("PIPELINES_")
            {
                return Err(invalid(
                    format!("executor.pass_env[{i}]"),
                    format!(
                        "{name:?} cannot be passed to tools (not a variable name, set by the worker, or the worker's own)"
                    ),
                ));
            }
        }
        for key in executor.git_config.keys() {
            let valid = key.contains('.')
                && !key.starts_with('.')
                && !key.ends_with('.')
                && key.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'/' | b':')
                });
            let forced =
                ["core.hookspath", "core.fsmonitor"].contains(&key.to_ascii_lowercase().as_str());
            if !valid || forced {
                return Err(invalid(
                    format!("executor.git_config.{key}"),
                    "is not a git setting this worker lets you set (section.name; hooks and fsmonitor stay off)",
                ));
            }
        }
        Ok(())
    }

    /// The broker URL with the password from `broker_password_file` added, when there is one.
    pub fn broker_url_with_password(&self) -> Result<String, ConfigError> {
        let Some(path) = &self.broker_password_file else {
            return Ok(self.broker_url.clone());
        };
        let password = std::fs::read_to_string(path).map_err(|err| {
            invalid(
                "broker_password_file",
                format!("cannot read {}: {err}", path.display()),
            )
        })?;
        let password = password.trim_end_matches(['\n', '\r']);
        if password.is_empty() {
            return Err(invalid(
                "broker_password_file",
                format!("{} is empty", path.display()),
            ));
        }
        with_password(&self.broker_url, password).ok_or_else(|| {
            invalid(
                "broker_url",
                format!(
                    "{:?} names no user for the password in broker_password_file",
                    redact_url(&self.broker_url)
                ),
            )
        })
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

    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.broker_url.starts_with("amqp://") || self.broker_url.starts_with("amqps://")) {
            return Err(invalid(
                "broker_url",
                format!(
                    "{:?} is not an amqp:// or amqps:// URL",
                    redact_url(&self.broker_url)
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
            if let Err(err) = parse_duration(&account.job_timeout) {
                return Err(invalid(key("job_timeout"), err));
            }
            for (field, reference) in [
                ("plan_credentials", &account.plan_credentials),
                ("apply_credentials", &account.apply_credentials),
            ] {
                if let Some(name) = reference
                    && !self.credentials.iter().any(|c| &c.name == name)
                {
                    return Err(invalid(
                        key(field),
                        format!("{name:?} is not the name of any [[credentials]] entry"),
                    ));
                }
            }
            if let Err(reason) = self.roles_apart(account) {
                return Err(invalid(key("plan_credentials"), reason));
            }
        }
        self.validate_credentials()?;
        self.validate_executor()?;
        if let Some(path) = &self.broker_password_file
            && url_password(&self.broker_url).is_some()
        {
            return Err(invalid(
                "broker_password_file",
                format!(
                    "{} is given, but broker_url {:?} has a password too: keep only one",
                    path.display(),
                    redact_url(&self.broker_url)
                ),
            ));
        }
        for (key, address) in [
            (
                "dispatcher.metrics_address",
                &self.dispatcher.metrics_address,
            ),
            ("executor.metrics_address", &self.executor.metrics_address),
        ] {
            if let Some(address) = address
                && address.parse::<std::net::SocketAddr>().is_err()
            {
                return Err(invalid(
                    key,
                    format!("{address:?} is not a host:port address like 0.0.0.0:9464"),
                ));
            }
        }
        self.validate_github()?;
        for (key, value) in self.timeouts.fields() {
            if let Err(err) = parse_duration(value) {
                return Err(invalid(key, err));
            }
        }
        if self.dispatcher.max_units_per_run == 0 {
            return Err(invalid(
                "dispatcher.max_units_per_run",
                "must be at least 1",
            ));
        }
        if self.dispatcher.lease_seconds < 10 {
            return Err(invalid(
                "dispatcher.lease_seconds",
                format!(
                    "{} is below the minimum of 10",
                    self.dispatcher.lease_seconds
                ),
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(invalid(
                "retry.max_attempts",
                "must be at least 1 (1 disables retries)",
            ));
        }
        for (i, pattern) in self.retry.patterns.iter().enumerate() {
            if let Err(err) = regex::Regex::new(pattern) {
                return Err(invalid(
                    format!("retry.patterns[{i}]"),
                    format!("invalid regular expression {pattern:?}: {err}"),
                ));
            }
        }
        for (name, trigger) in [
            (
                "triggers.accounts_requested",
                &self.triggers.accounts_requested,
            ),
            ("triggers.accounts_changed", &self.triggers.accounts_changed),
        ] {
            if let Some(trigger) = trigger
                && (trigger.unit.is_empty()
                    || trigger.unit.starts_with('/')
                    || trigger
                        .unit
                        .split('/')
                        .any(|part| matches!(part, "" | "." | "..")))
            {
                return Err(invalid(
                    format!("{name}.unit"),
                    format!("{:?} is not a relative, normalized unit path", trigger.unit),
                ));
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

fn is_env_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The password of a URL's user information, if it has one.
pub fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo.split_once(':').map(|(_, password)| password)
}

/// `url` with `password` (percent-encoded) after its user; `None` without a user.
fn with_password(url: &str, password: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let (user, host) = rest.split_once('@')?;
    if user.is_empty() || user.contains(':') {
        return None;
    }
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    Some(format!("{scheme}://{user}:{encoded}@{host}"))
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

/// A URL without its secret: `scheme://user:***@host/...` when it has a password, and
/// `scheme://***@host/...` when its only user information is a token
/// (`https://ghp_x@github.com/...`). Anything else is returned as it is.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last '@' before the path.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some((userinfo, host)) = rest[..authority_end].rsplit_once('@') else {
        return url.to_owned();
    };
    let tail = &rest[authority_end..];
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:{REDACTED}@{host}{tail}"),
        None => format!("{scheme}://{REDACTED}@{host}{tail}"),
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

    #[test]
    fn durations_need_a_unit_on_every_number() {
        let secs = |text| parse_duration(text).map(|d| d.as_secs());
        assert_eq!(secs("90s"), Ok(90));
        assert_eq!(secs("45m"), Ok(2700));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs(" 2h15m30s "), Ok(8130));
        assert!(secs("90").unwrap_err().contains("needs a unit"));
        assert!(secs("4 hours").is_err());
        assert!(secs("0s").unwrap_err().contains("not a positive duration"));
        let text = format!("{VALID}\njob_timeout = \"forever\"\n");
        assert!(
            error_of(&text).contains("`accounts[0].job_timeout`: \"forever\" is not a duration")
        );
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
    fn timeouts_default_and_validate_with_their_key() {
        let config = Config::from_toml(VALID).unwrap();
        assert_eq!(config.timeouts.git(), std::time::Duration::from_secs(600));
        assert_eq!(
            config.timeouts.broker_confirm(),
            std::time::Duration::from_secs(60)
        );
        let text = format!("{VALID}\n[timeouts]\ngit = \"90s\"\ngithub = \"5s\"\n");
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(config.timeouts.git(), std::time::Duration::from_secs(90));
        assert_eq!(config.timeouts.github(), std::time::Duration::from_secs(5));
        let bad = format!("{VALID}\n[timeouts]\nbroker_connect = \"soon\"\n");
        assert!(
            error_of(&bad).contains("`timeouts.broker_connect`: \"soon\" is not a duration"),
            "{}",
            error_of(&bad)
        );
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
    fn urls_lose_passwords_and_tokens_but_keep_the_rest() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("https://ghp_abc@github.com/a/b.git"),
            "https://***@github.com/a/b.git"
        );
        assert_eq!(
            redact_url("https://github.com/a/b@c.git"),
            "https://github.com/a/b@c.git"
        );
        assert_eq!(redact_url("/srv/git/infra.git"), "/srv/git/infra.git");
    }

    #[test]
    fn a_plan_identity_must_be_apart_from_the_apply_identity() {
        let with = |plan: &str, apply: &str| {
            format!(
                "{VALID}\nplan_credentials = \"p\"\napply_credentials = \"a\"\n\
                 [[credentials]]\nname = \"p\"\nprovider = \"aws-web-identity\"\n{plan}\n\
                 [[credentials]]\nname = \"a\"\nprovider = \"aws-web-identity\"\n{apply}\n"
            )
        };
        let apart = with(
            "role_arn = \"arn:aws:iam::1:role/plan\"\ntoken_file = \"/var/run/plan/token\"",
            "role_arn = \"arn:aws:iam::1:role/apply\"\ntoken_file = \"/var/run/apply/token\"",
        );
        assert!(Config::from_toml(&apart).is_ok());
        let same_token = with(
            "role_arn = \"arn:aws:iam::1:role/plan\"\ntoken_file = \"/var/run/token\"",
            "role_arn = \"arn:aws:iam::1:role/apply\"\ntoken_file = \"/var/run/token\"",
        );
        assert!(
            error_of(&same_token).contains(
                "`accounts[0].plan_credentials`: \"p\" reads the apply credentials' token file too"
            ),
            "{}",
            error_of(&same_token)
        );
        let same_role = with(
            "role_arn = \"arn:aws:iam::1:role/x\"\ntoken_file = \"/a\"",
            "role_arn = \"arn:aws:iam::1:role/x\"\ntoken_file = \"/b\"",
        );
        assert!(error_of(&same_role).contains("assumes the apply credentials' role too"));
        let same_entry = apart.replace("apply_credentials = \"a\"", "apply_credentials = \"p\"");
        assert!(error_of(&same_entry).contains("\"p\" is also the apply_credentials"));
    }

    #[test]
    fn tool_settings_are_checked_and_the_tool_user_resolves() {
        let config = Config::from_toml(VALID).unwrap();
        assert!(
            config
                .executor
                .pass_env
                .contains(&"TF_CLI_CONFIG_FILE".to_owned())
        );
        assert_eq!(config.executor.tool_user(""), Ok(None));
        let text = |section: &str| format!("{VALID}\n[executor]\n{section}\n");
        let named = Config::from_toml(&text("tool_user = \"pipelines-tool\"")).unwrap();
        let passwd =
            "root:x:0:0::/root:/bin/sh\npipelines-tool:x:10001:10002::/nonexistent:/bin/false\n";
        assert_eq!(
            named.executor.tool_user(passwd),
            Ok(Some(ToolUser {
                uid: 10001,
                gid: 10002
            }))
        );
        assert!(
            named
                .executor
                .tool_user("")
                .unwrap_err()
                .contains("not in /etc/passwd")
        );
        let ids = Config::from_toml(&text("tool_user = \"61001:61001\"")).unwrap();
        assert_eq!(
            ids.executor.tool_user(""),
            Ok(Some(ToolUser {
                uid: 61001,
                gid: 61001
            }))
        );
        assert!(error_of(&text("tool_user = \"root\"")).contains("`executor.tool_user`"));
        assert!(
            error_of(&text("tool_env = { HOME = \"/root\" }"))
                .contains("`executor.tool_env.HOME`: is set by the worker")
        );
        assert!(
            error_of(&text("pass_env = [\"PIPELINES_BROKER_URL\"]"))
                .contains("`executor.pass_env[0]`")
        );
        assert!(
            error_of(&text("git_config = { \"core.hooksPath\" = \"/tmp/h\" }"))
                .contains("`executor.git_config.core.hooksPath`")
        );
        let fine = text(
            "tool_env = { TF_PLUGIN_CACHE_DIR = \"/cache\" }\ngit_config = { \"credential.helper\" = \"store\" }",
        );
        assert!(Config::from_toml(&fine).is_ok());
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
            config.broker_url_with_password().unwrap(),
            "amqp://pipelines-executor-prod-plan:p%40ss%2Fw%3Ard@127.0.0.1:5672/%2f"
        );
        let twice = text.replace("pipelines-executor-prod-plan@", "u:inline@");
        assert!(error_of(&twice).contains("`broker_password_file`"));
        assert_eq!(url_password("amqp://u:inline@h/%2f"), Some("inline"));
        assert_eq!(url_password("amqp://u@h/%2f"), None);
        std::fs::write(&secret, "").unwrap();
        assert!(
            config
                .broker_url_with_password()
                .unwrap_err()
                .to_string()
                .contains("is empty")
        );
    }

    #[test]
    fn globs_do_not_cross_directories_unless_doubled() {
        assert!(compile_glob("prod/*").unwrap().is_match("prod/app"));
        assert!(!compile_glob("prod/*").unwrap().is_match("prod/eu/app"));
        assert!(compile_glob("prod/**").unwrap().is_match("prod/eu/app"));
    }
}
